"""Analysis of a thought store: numpy/scikit-learn only (plots live in analysis/plots.py)."""
