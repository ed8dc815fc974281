"""Controls scored on the same folds as the probes.

- `majority`: predict the training fold's most frequent category.
- `shuffled_labels`: the logistic-regression probe on the `mean` view trained on shuffled labels
  (fitted in probes.fit_fold, because it shares that fold's scaler and span).
- `question_text`: TF-IDF (word 1–2-grams) + logistic regression on the question text alone; its
  C is chosen by an inner 3-fold CV on the training fold, so the text control is no straw man.
- `confound`: logistic regression on cubic polynomial terms of the number of solution steps and
  the question length (words) alone.
- `pre_thought`: the logistic-regression probe on the `bot` position (before any latent step),
  computed as the `bot` position view.
"""

from __future__ import annotations

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import PolynomialFeatures, StandardScaler
from threadpoolctl import threadpool_limits

TEXT_CS = (0.1, 1.0, 10.0, 100.0)


def text_pipeline(seed: int) -> Pipeline:
    # TF-IDF rows are L2-normalized: that normalization is this pipeline's scaler.
    return Pipeline(
        [
            ("tfidf", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, lowercase=True)),
            (
                "clf",
                LogisticRegressionCV(
                    Cs=list(TEXT_CS),
                    cv=3,
                    max_iter=1000,
                    random_state=seed,
                    l1_ratios=(0.0,),
                    scoring="accuracy",
                    use_legacy_attributes=False,
                ),
            ),
        ]
    )


def confound_pipeline(seed: int) -> Pipeline:
    # Cubic terms let a linear model draw non-linear boundaries in these two features.
    return Pipeline(
        [
            ("poly", PolynomialFeatures(degree=3, include_bias=False)),
            ("scale", StandardScaler()),
            ("clf", LogisticRegression(C=1.0, max_iter=2000, random_state=seed)),
        ]
    )


def confound_features(n_steps: np.ndarray, questions: list[str]) -> np.ndarray:
    words = np.array([len(q.split()) for q in questions], dtype=np.float64)
    return np.column_stack([np.asarray(n_steps, dtype=np.float64), words])


def majority_predict(y: np.ndarray, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    counts = np.bincount(y[train])
    return np.full(len(test), int(np.argmax(counts)), dtype=y.dtype)


def text_fold(
    questions: list[str], y: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int
) -> np.ndarray:
    with threadpool_limits(1):
        pipe = text_pipeline(seed).fit([questions[i] for i in train], y[train])
        return pipe.predict([questions[i] for i in test])


def confound_fold(
    features: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int
) -> np.ndarray:
    with threadpool_limits(1):
        return confound_pipeline(seed).fit(features[train], y[train]).predict(features[test])
