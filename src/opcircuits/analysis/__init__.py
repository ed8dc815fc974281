"""Analysis of a thought store: numbers only (numpy/scikit-learn). It returns dicts and never
imports `opcircuits.report`, where figures and text are made."""
