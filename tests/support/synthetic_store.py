"""Small synthetic stores with known structure (planted signal, pure noise, text-only signal,
legacy records), written with the public `write_store`: the analysis tests' inputs, and the store
other tests analyze beside their own results (e.g. `analyze --attribution`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from opcircuits.store import write_store

CATS = ["pure_addition", "pure_multiplication", "mixed"]
POSITIONS = ["bot", "latent_1", "latent_2"]
LAYERS = [2, 5]
N, D = 120, 48
FILLER = [
    "Sam",
    "Ana",
    "has",
    "buys",
    "apples",
    "pens",
    "the",
    "store",
    "week",
    "then",
    "some",
    "boxes",
    "cups",
    "of",
    "tea",
    "on",
    "Monday",
    "gives",
    "friend",
    "book",
]
KEYWORDS = {0: ["more", "altogether"], 1: ["times", "double"], 2: ["left", "remaining"]}
OPS = {0: ["+"], 1: ["*"], 2: ["+", "*", "-"]}
FAST = dict(folds=3, repeats=2, permutations=20, seed=0, jobs=1)


def _questions(rng: np.random.Generator, y: np.ndarray, informative: float) -> list[str]:
    """Random filler; with probability `informative` the category's keywords, else another's."""
    out = []
    for i, c in enumerate(y):
        words = list(rng.choice(FILLER, size=8))
        k = int(c) if rng.random() < informative else int(rng.integers(0, 3))
        words.insert(int(rng.integers(0, 8)), rng.choice(KEYWORDS[k]))
        out.append(f"Q{i}: " + " ".join(words) + f" {int(rng.integers(2, 99))}?")
    return out


def _records(y: np.ndarray, questions: list[str], rng: np.random.Generator) -> list[dict]:
    lens_vocab = [" +", " *", "5", " the", "12", "×", " -"]
    recs = []
    for i, c in enumerate(y):
        toks = [[str(rng.choice(lens_vocab)), "a"] for _ in POSITIONS]
        recs.append(
            {
                "id": f"test_{i}",
                "category": CATS[c],
                "question": questions[i],
                "gold": float(i),
                "predicted": float(i) if rng.random() < 0.7 else float(i + 1),
                "correct": None,
                "n_steps": int(rng.integers(2, 6)),
                "ops_used": OPS[int(c)],
                "lens_top_tokens": toks,
                "answer_truncated": i % 40 == 0,  # 3 of 120 answers hit the decoding limit
            }
        )
        recs[-1]["correct"] = recs[-1]["predicted"] == recs[-1]["gold"]
    return recs


def make_store(path: Path, kind: str, seed: int = 0) -> Path:
    """kind: 'planted' (category written into latent_1 @ layer 5), 'noise', 'text', 'legacy'."""
    rng = np.random.default_rng(seed)
    y = np.arange(N) % 3
    rng.shuffle(y)
    hidden = rng.standard_normal((N, len(POSITIONS), len(LAYERS), D)).astype(np.float32)
    questions = _questions(rng, y, informative=0.8 if kind == "text" else 0.0)
    if kind == "planted":
        hidden[:, 1, 1, :6] += 4.0 * np.repeat(np.eye(3, dtype=np.float32), 2, axis=1)[y]
    if kind == "text":
        # Thoughts are a fixed linear function of the question's bag of words (plus tiny noise).
        vocab = sorted({w for q in questions for w in q.split()[1:-1]})
        bow = np.array([[q.split().count(w) for w in vocab] for q in questions], dtype=np.float32)
        for p in range(len(POSITIONS)):
            for li in range(len(LAYERS)):
                proj = rng.standard_normal((len(vocab), D)).astype(np.float32)
                hidden[:, p, li] = bow @ proj + 0.01 * hidden[:, p, li]
    recs = _records(y, questions, rng)
    if kind == "legacy":
        recs = [{"id": r["id"], "category": r["category"]} for r in recs]
    write_store(
        path, hidden, recs, LAYERS, POSITIONS, model=f"synthetic-{kind}", store_dtype="float32"
    )
    return path
