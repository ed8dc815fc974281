"""Controls scored on the same folds as the probes.

- `majority`: predict the training fold's most frequent category.
- `shuffled_labels`: the logistic-regression probe on the `mean` view trained on shuffled labels
  (fitted in probes.fit_fold, because it shares that fold's scaler and span).
- `question_text`: TF-IDF (word 1–2-grams) + logistic regression on the question text alone; its
  C is chosen by a grid search over the whole pipeline (an inner stratified 3-fold CV on the
  training fold, the vocabulary refitted in every inner fold), so the control is no straw man.
- `confound`: logistic regression on cubic polynomial terms of the number of solution steps and
  the question length (words) alone.
- `step_lookup`: for each `n_steps` value, the training fold's most frequent category there: the
  best any function of the step count alone can do (unseen values: the overall majority).
- `pre_thought`: the logistic-regression probe on the `bot` position (before any latent step),
  computed as the `bot` position view.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import clone
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import PolynomialFeatures, StandardScaler

from opcircuits.analysis.scoring import Scores, make_folds, score
from opcircuits.analysis.workers import one_blas_thread

TEXT_CS = (0.1, 1.0, 10.0, 100.0)
INNER_FOLDS = 3  # the question-text control's inner split, on each training fold


def text_control_fits(y: np.ndarray, folds: list) -> bool:
    """Whether the question-text control's inner stratified split can run on every training
    fold: some category needs `INNER_FOLDS` problems there (or scikit-learn refuses the split),
    and two categories need 2 (or an inner training fold could hold a single category)."""
    for f in folds:
        counts = np.bincount(y[f.train])
        if counts.max() < INNER_FOLDS or int((counts >= 2).sum()) < 2:
            return False
    return True


def text_pipeline(seed: int) -> GridSearchCV:
    # TF-IDF rows are L2-normalized: that normalization is this pipeline's scaler. The grid search
    # wraps the whole pipeline, so each inner fold builds its own vocabulary.
    pipe = Pipeline(
        [
            ("tfidf", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, lowercase=True)),
            ("clf", LogisticRegression(max_iter=1000, random_state=seed)),
        ]
    )
    inner = StratifiedKFold(n_splits=INNER_FOLDS, shuffle=True, random_state=seed)
    return GridSearchCV(pipe, {"clf__C": list(TEXT_CS)}, cv=inner, scoring="accuracy", n_jobs=1)


def confound_expansion() -> Pipeline:
    """Cubic terms of the confound features, standardized (fitted on a training fold)."""
    return Pipeline(
        [("poly", PolynomialFeatures(degree=3, include_bias=False)), ("scale", StandardScaler())]
    )


def confound_pipeline(seed: int) -> Pipeline:
    # Cubic terms let a linear model draw non-linear boundaries in these two features.
    return Pipeline(
        [*confound_expansion().steps, ("clf", LogisticRegression(max_iter=2000, random_state=seed))]
    )


def majority_predict(y: np.ndarray, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    counts = np.bincount(y[train])
    return np.full(len(test), int(np.argmax(counts)), dtype=y.dtype)


def step_lookup_predict(
    n_steps: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray
) -> np.ndarray:
    fallback = int(np.argmax(np.bincount(y[train])))
    best = {
        int(s): int(np.argmax(np.bincount(y[train][n_steps[train] == s])))
        for s in np.unique(n_steps[train])
    }
    return np.array([best.get(int(s), fallback) for s in n_steps[test]], dtype=y.dtype)


def text_fold(
    questions: list[str], y: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int
) -> np.ndarray:
    """`text_pipeline(seed)` fitted on the training questions, predicting the test ones.

    The grid search is done here as GridSearchCV does it (the same inner splits, accuracy, the
    first C of the highest mean score, a refit on the whole training fold), with one TF-IDF fit
    per inner split shared by the four C values instead of one per C: the same predictions
    (tests/unit/test_analysis_fast.py checks them against `text_pipeline`), a third of the cost."""
    texts = [questions[i] for i in train]
    with one_blas_thread():
        c = _best_text_c(texts, y[train], seed)
        pipe = text_pipeline(seed).estimator.set_params(clf__C=c)
        return pipe.fit(texts, y[train]).predict([questions[i] for i in test])


def _best_text_c(texts: list[str], y: np.ndarray, seed: int) -> float:
    search = text_pipeline(seed)
    scores = np.zeros((len(TEXT_CS), search.cv.get_n_splits()))
    for j, (a, b) in enumerate(search.cv.split(texts, y)):
        tfidf = clone(search.estimator.named_steps["tfidf"])
        xa = tfidf.fit_transform([texts[i] for i in a])
        xb = tfidf.transform([texts[i] for i in b])
        for i, c in enumerate(TEXT_CS):
            clf = clone(search.estimator.named_steps["clf"]).set_params(C=c).fit(xa, y[a])
            scores[i, j] = accuracy_score(y[b], clf.predict(xb))
    # GridSearchCV's choice: rank by mean score (ties share the lowest rank), take the first.
    return TEXT_CS[int(np.argmax(np.average(scores, axis=1)))]


def confound_fold(
    features: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int
) -> np.ndarray:
    with one_blas_thread():
        return confound_pipeline(seed).fit(features[train], y[train]).predict(features[test])


def question_text_scores(
    questions: list[str], y: np.ndarray, folds: int = 5, repeats: int = 1, seed: int = 0
) -> Scores:
    """The question-text control on its own, as the analysis runs it (the same stratified folds,
    `text_fold` on each): how well the question's words alone predict the labels `y` (0..k−1).
    Used to check that a data set's questions do not give its labels away."""
    fold_list = make_folds(y, folds, repeats, seed)
    preds = [text_fold(questions, y, f.train, f.test, seed) for f in fold_list]
    return score(y, fold_list, preds, int(y.max()) + 1)
