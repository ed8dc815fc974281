"""scikit-learn's logistic regression fitted on many label vectors of one design at once (the
permutation family's refits: the same span coordinates, P permuted labellings).

What it reproduces: `LogisticRegression(C=C, tol=tol, max_iter=max_iter)` with the lbfgs solver,
i.e. scikit-learn's objective, the mean multinomial log-loss (binomial for two classes, one
coefficient row as scikit-learn has) plus ||W||² / (2·C·n) with the intercept unpenalised,
minimized by L-BFGS-B's iteration as scipy runs it for scikit-learn: from zero, memory 10, a
first step of 1/||g||, the Moré–Thuente line search (ftol 1e-3, gtol 0.9, xtol 0.1, at most 50
evaluations), stopping when max|gradient| ≤ tol, when the relative decrease is ≤ 64·eps, or after
max_iter iterations. Without bounds L-BFGS-B's step is the L-BFGS step, so the two-loop recursion
used here gives the same iterates up to rounding.

Why scikit-learn's path and not the exact optimum: at tol 1e-4 scikit-learn stops a few percent
short of the optimum on these designs (coefficients 2-7 % away after about 9 iterations), enough to
change the held-out accuracy of about half the refits. The permutation null must come from the
procedure that produced the observed statistic, so the batch follows that path (a warm start
would change it; `warm_start` exists for callers that want the optimum, not the probe).

What is batched: every function evaluation of all label vectors is one product X @ [W_1 … W_P]
and one back; the L-BFGS bookkeeping is vectorized over label vectors. A line search whose first
trial step fails the Wolfe conditions (the first iteration's, mostly) continues with scipy's port
of MINPACK-2's dcsrch per label vector, its evaluations still batched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.optimize._dcsrch import DCSRCH  # the line search L-BFGS-B calls (MINPACK-2 dcsrch)
from scipy.special import expit

log = logging.getLogger(__name__)

MEMORY = 10  # scipy's maxcor
MAX_LS = 50  # scikit-learn's maxls
LS_FTOL, LS_GTOL, LS_XTOL, STPMAX = 1e-3, 0.9, 0.1, 1e10  # lnsrlb's constants
EPS = float(np.finfo(np.float64).eps)
FTOL = 64 * EPS  # scikit-learn's ftol for lbfgs
# The pairs are stored in float32: half the memory traffic of the two-loop recursion, and
# rounding of the same order as scikit-learn's own float32 arithmetic (the tests show no change).
MEMORY_DTYPE = np.float32
CHUNK = 256  # label vectors per batch: bounds the L-BFGS memory ([10, chunk, K·(d+1)] × 2)


@dataclass
class BatchFit:
    """P fitted models: coefficients as scikit-learn stores them (one row for two classes)."""

    coef: np.ndarray  # [P, k, d], k = 1 for two classes, else the number of classes
    intercept: np.ndarray  # [P, k]
    classes: np.ndarray  # [classes]
    n_iter: np.ndarray  # [P]
    converged: np.ndarray  # [P] bool (False: max_iter reached or the line search failed)

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """[P, n, k] scores, in X's dtype as scikit-learn computes them (coef_ has X's dtype)."""
        X = np.asarray(X)
        dt = X.dtype if X.dtype in (np.float32, np.float64) else np.float64
        coef, icpt = self.coef.astype(dt), self.intercept.astype(dt)
        return np.einsum("nd,pkd->pnk", X.astype(dt), coef) + icpt[:, None, :]

    def predict(self, X: np.ndarray) -> np.ndarray:
        """[P, n] predicted labels (ties go to the first class, as np.argmax does)."""
        scores = self.decision_function(X)
        if scores.shape[-1] == 1:
            return self.classes[(scores[..., 0] > 0).astype(np.int64)]
        return self.classes[np.argmax(scores, axis=-1)]


class _Objective:
    """scikit-learn's loss and gradient for label vectors `rows` at parameters w [b, k·(d+1)]
    (per class: d coefficients, then the intercept, as scikit-learn orders them)."""

    def __init__(self, X: np.ndarray, codes: np.ndarray, k: int, C: float) -> None:
        # scikit-learn computes in the features' dtype (float32 here: the span coordinates):
        # the coefficients are cast to it for the products, the per-sample losses and gradients
        # are kept in it; only the penalty and the iteration are float64.
        X = np.asarray(X)
        self.dt = np.float32 if X.dtype == np.float32 else np.float64
        self.X = np.ascontiguousarray(X, dtype=self.dt)
        self.XT = np.ascontiguousarray(self.X.T)
        n = X.shape[0]
        self.k = k
        self.l2 = 1.0 / (C * n)
        # Class-major layouts ([n, k, P]): reductions over classes are then over whole rows.
        if k == 1:
            self.target = codes.T.astype(self.dt)[:, None, :]
        else:
            self.target = np.zeros((n, k, len(codes)), dtype=self.dt)
            np.put_along_axis(self.target, codes.T[:, None, :], 1.0, axis=1)

    def __call__(self, w: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        (n, d), dt = self.X.shape, self.dt
        b, k = len(rows), self.k
        w = w.reshape(b, k, d + 1)
        coef = w[:, :, :d]
        lhs = np.ascontiguousarray(coef.transpose(1, 0, 2), dtype=dt).reshape(k * b, d)
        raw = (self.X @ lhs.T).reshape(n, k, b)
        raw += w[:, :, d].T.astype(dt)
        target = self.target[:, :, rows] if b < self.target.shape[2] else self.target
        if k == 1:
            loss = (np.logaddexp(0.0, raw) - target * raw)[:, 0]
            grad = expit(raw) - target
        else:
            top = np.max(raw, axis=1)
            e = np.exp(raw - top[:, None])
            s = e.sum(axis=1)
            loss = top + np.log(s) - (raw * target).sum(axis=1)
            grad = e / s[:, None] - target
        per = np.ascontiguousarray(loss.T)  # summed per label vector, as one sample vector
        f = (per.sum(axis=1) / dt(n)).astype(np.float64)
        f += 0.5 * self.l2 * np.einsum("bkd,bkd->b", coef, coef)
        grad /= dt(n)
        g = np.empty((b, k, d + 1))
        prod = self.XT @ grad.reshape(n, k * b)  # [d, k·b]
        g[:, :, :d] = prod.reshape(d, k, b).transpose(2, 1, 0)
        g[:, :, :d] += self.l2 * coef
        g[:, :, d] = grad.sum(axis=0).T
        return f, g.reshape(b, -1)


def fit_multinomial_batch(
    X: np.ndarray,
    Y: np.ndarray,
    C: float = 1.0,
    tol: float = 1e-4,
    max_iter: int = 100,
    warm_start: np.ndarray | None = None,
) -> BatchFit:
    """Fit scikit-learn's lbfgs logistic regression of X [n, d] on every row of Y [P, n].

    Every row must hold the same classes (ValueError otherwise: fit those one by one).
    `warm_start` [k, d + 1] (coefficients, then the intercept) starts every fit there instead of
    at zero; scikit-learn's path, and so its answers at a loose tol, start at zero."""
    Y = np.asarray(Y)
    if Y.ndim != 2 or Y.shape[1] != len(X):
        raise ValueError(f"labels {Y.shape} do not match the design {np.shape(X)}")
    classes = np.unique(Y)
    if len(classes) < 2 or any(len(np.unique(row)) != len(classes) for row in Y):
        raise ValueError("every label vector must hold the same two or more classes")
    codes = np.searchsorted(classes, Y).astype(np.intp)
    k = 1 if len(classes) == 2 else len(classes)
    objective = _Objective(X, codes, k, C)
    d = objective.X.shape[1]
    start = np.zeros(k * (d + 1)) if warm_start is None else np.ravel(warm_start).astype(float)
    parts = [
        _lbfgs(objective, np.arange(i, min(i + CHUNK, len(Y))), start, tol, max_iter)
        for i in range(0, len(Y), CHUNK)
    ]
    w = np.concatenate([p[0] for p in parts]).reshape(len(Y), k, d + 1)
    return BatchFit(
        coef=w[:, :, :d],
        intercept=w[:, :, d],
        classes=classes,
        n_iter=np.concatenate([p[1] for p in parts]),
        converged=np.concatenate([p[2] for p in parts]),
    )


@dataclass
class _State:
    """The label vectors still being fitted (finished ones leave it, so nothing is indexed)."""

    rows: np.ndarray  # [b] label vectors (into the objective's labels)
    pos: np.ndarray  # [b] their places in this chunk's output
    x: np.ndarray  # [b, D]
    f: np.ndarray  # [b]
    g: np.ndarray  # [b, D]
    S: np.ndarray  # [m, b, D] steps, oldest first
    Yd: np.ndarray  # [m, b, D] gradient differences
    rho: np.ndarray  # [m, b] 1 / s'y (0: empty slot)
    col: np.ndarray  # [b] pairs held
    n_iter: np.ndarray  # [b]

    def keep(self, mask: np.ndarray) -> None:
        for name in ("rows", "pos", "x", "f", "g", "col", "n_iter"):
            setattr(self, name, getattr(self, name)[mask])
        used = int(self.col.max()) if len(self.col) else 0  # copy only the pairs held
        for name in ("S", "Yd"):
            old = getattr(self, name)
            new = np.zeros((MEMORY, len(self.col), old.shape[2]), MEMORY_DTYPE)
            new[:used] = old[:used, mask]
            setattr(self, name, new)
        self.rho = self.rho[:, mask]


def _lbfgs(
    objective: _Objective, rows: np.ndarray, start: np.ndarray, tol: float, max_iter: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    b, D = len(rows), start.size
    out_x, out_iter, out_conv = np.empty((b, D)), np.zeros(b, np.int64), np.zeros(b, bool)
    x = np.tile(start, (b, 1))
    f, g = objective(x, rows)
    pairs = [np.zeros((MEMORY, b, D), MEMORY_DTYPE) for _ in range(2)]
    st = _State(
        rows, np.arange(b), x, f, g, *pairs, np.zeros((MEMORY, b)), np.zeros(b, dtype=np.int64),
        np.zeros(b, dtype=np.int64),
    )  # fmt: skip
    done = np.abs(g).max(axis=1) <= tol
    conv = done.copy()
    while True:
        if done.any():
            i = st.pos[done]
            out_x[i], out_iter[i], out_conv[i] = st.x[done], st.n_iter[done], conv[done]
            st.keep(~done)
        if not len(st.rows):
            return out_x, out_iter, out_conv
        done, conv = np.zeros(len(st.rows), bool), np.zeros(len(st.rows), bool)
        d = _direction(st)
        gd = np.einsum("bi,bi->b", st.g, d)
        # lnsrlb: the first iteration tries a step of length 1, later ones the full step.
        stp = np.where(st.n_iter == 0, np.minimum(1.0 / np.linalg.norm(d, axis=1), STPMAX), 1.0)
        ok = gd < 0  # else L-BFGS-B's info = -4: not a descent direction
        f, g = st.f, st.g
        if ok.all():  # slices, not copies, in the usual case
            ok, stp, f, g = _line_search(objective, st, slice(None), d, gd, stp)
        elif ok.any():
            f, g = f.copy(), g.copy()
            i = np.flatnonzero(ok)
            ok[i], stp[i], f[i], g[i] = _line_search(objective, st, i, d[i], gd[i], stp[i])
        # A failed line search: L-BFGS-B forgets its memory and retries from steepest descent,
        # or stops (abnormally) when the memory was already empty.
        stop = ~ok & (st.col == 0)
        done |= stop
        st.n_iter[stop] += 1
        reset = ~ok & (st.col > 0)
        st.col[reset], st.rho[:, reset] = 0, 0.0
        st.S[:, reset], st.Yd[:, reset] = 0.0, 0.0
        idx = np.flatnonzero(ok)
        a = slice(None) if len(idx) == len(ok) else idx
        s = stp[a, None] * d[a]
        y = g[a] - st.g[a]
        f_old = st.f[a].copy()
        st.x[a] += s
        st.f[a], st.g[a] = f[a], g[a]
        st.n_iter[a] += 1
        stop_iter = st.n_iter[a] >= max_iter  # scipy's driver stops before the tests below
        small = np.abs(g[a]).max(axis=1) <= tol
        flat = (f_old - f[a]) <= FTOL * np.maximum(np.maximum(np.abs(f_old), np.abs(f[a])), 1.0)
        done[a] = stop_iter | small | flat
        conv[a] = ~stop_iter & (small | flat)
        sy = np.einsum("bi,bi->b", s, y)
        update = ~done[a] & (sy > EPS * (-gd[a] * stp[a]))  # else L-BFGS-B skips the update
        if update.all():
            _push(st, idx, s, y, sy)
        else:
            _push(st, idx[update], s[update], y[update], sy[update])


def _direction(st: _State) -> np.ndarray:
    """-H g by the two-loop recursion, H0 = (s'y / y'y of the newest pair) I (L-BFGS-B's 1/θ)."""
    q = -st.g
    used = int(st.col.max())
    alpha = np.zeros((used, len(q)))
    tmp = np.empty_like(q)
    for j in range(used - 1, -1, -1):
        alpha[j] = st.rho[j] * np.einsum("bi,bi->b", st.S[j], q)
        q -= np.multiply(st.Yd[j], alpha[j, :, None], out=tmp)
    if used:
        held = st.col > 0
        newest = np.maximum(st.col - 1, 0)
        cols = np.arange(len(q))
        y_new = st.Yd[newest, cols]
        sy = np.where(held, 1.0 / np.where(held, st.rho[newest, cols], 1.0), 1.0)
        yy = np.where(held, np.einsum("bi,bi->b", y_new, y_new), 1.0)
        q *= (sy / yy)[:, None]
    for j in range(used):
        beta = st.rho[j] * np.einsum("bi,bi->b", st.Yd[j], q)
        q += np.multiply(st.S[j], (alpha[j] - beta)[:, None], out=tmp)
    return q


def _push(st: _State, a: np.ndarray, s: np.ndarray, y: np.ndarray, sy: np.ndarray) -> None:
    """Append (s, y), dropping the oldest pair of a full memory."""
    full = a[st.col[a] == MEMORY]
    if len(full):
        st.S[:-1, full], st.Yd[:-1, full] = st.S[1:, full], st.Yd[1:, full]
        st.rho[:-1, full] = st.rho[1:, full]
    slot = np.minimum(st.col[a], MEMORY - 1)
    if len(a) == len(st.col) and (slot == slot[0]).all():  # the usual case: no fancy scatter
        st.S[slot[0]], st.Yd[slot[0]], st.rho[slot[0]] = s, y, 1.0 / sy
    else:
        st.S[slot, a], st.Yd[slot, a], st.rho[slot, a] = s, y, 1.0 / sy
    st.col[a] = np.minimum(st.col[a] + 1, MEMORY)


def _line_search(
    objective: _Objective,
    st: _State,
    a: np.ndarray | slice,
    d: np.ndarray,
    gd0: np.ndarray,
    stp: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Moré–Thuente from `stp` along d for label vectors a: (accepted, step, f, g at the step)."""
    x0, f0 = st.x[a], st.f[a]
    f, g = objective(x0 + stp[:, None] * d, st.rows[a])
    gd = np.einsum("bi,bi->b", g, d)
    # dcsrch's first test (no interval yet): sufficient decrease and the strong curvature bound.
    ok = (f <= f0 + stp * LS_FTOL * gd0) & (np.abs(gd) <= LS_GTOL * -gd0)
    pending: dict[int, DCSRCH] = {}
    for i in np.flatnonzero(~ok):
        search = DCSRCH(None, None, LS_FTOL, LS_GTOL, LS_XTOL, 0.0, STPMAX)
        _, _, _, task = search._iterate(stp[i], f0[i], gd0[i], b"START")
        if task[:2] == b"FG":
            pending[i] = search
    evals = 1
    while pending:
        idx = np.fromiter(pending, dtype=np.int64)
        if evals > 1:
            fi, gi = objective(x0[idx] + stp[idx, None] * d[idx], st.rows[a][idx])
            f[idx], g[idx], gd[idx] = fi, gi, np.einsum("bi,bi->b", gi, d[idx])
        for i in idx:
            step, _, _, task = pending[i]._iterate(stp[i], f[i], gd[i], b"FG")
            if task[:2] == b"FG":
                stp[i] = step
            else:
                ok[i] = task[:4] in (b"CONV", b"WARN")
                del pending[i]
        if evals >= MAX_LS:  # L-BFGS-B refuses a 51st evaluation: the search failed
            break
        evals += 1
    return ok, stp, f, g
