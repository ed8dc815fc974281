"""Each step's operation, probed where it lives: a store whose step-1 operation is written into
`latent_1` and step-2 operation into `latent_2` (nothing at `bot`, nothing in the question) must
be reported decoded at each step's own thought and not at `bot`; the same store without the
signal must claim nothing of the kind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from synthetic_store import FAST, FILLER

from opcircuits.analysis.compute import compute_report
from opcircuits.data.annotations import category_of, step_operators
from opcircuits.options import AnalyzeOptions
from opcircuits.report.findings import findings
from opcircuits.store import write_store

POSITIONS = ["bot", "latent_1", "latent_2", "latent_3"]
LAYERS = [1, 2]
N, D = 150, 32


def _store(path: Path, planted: bool, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    steps = rng.choice(["+", "*"], size=(N, 3))
    n_steps = rng.integers(2, 4, size=N)  # 2 or 3 steps
    hidden = rng.standard_normal((N, len(POSITIONS), len(LAYERS), D)).astype(np.float32)
    if planted:
        for j in (0, 1):  # step j+1's operation at latent_{j+1}, layer 2
            hidden[:, 1 + j, 1, :2] += 5.0 * (steps[:, j, None] == "*")
    recs = []
    for i in range(N):
        ops = [str(o) for o in steps[i, : n_steps[i]]]
        recs.append(
            {
                "id": f"test_{i}",
                "category": category_of(set(ops)),
                "question": " ".join(rng.choice(FILLER, size=10)) + "?",
                "gold": float(i),
                "n_steps": int(n_steps[i]),
                "ops_used": sorted(set(ops)),
                "step_ops": ops,
            }
        )
    write_store(path, hidden, recs, LAYERS, POSITIONS, model="synthetic", store_dtype="float32")
    return path


@pytest.mark.parametrize("planted", [True, False])
def test_each_steps_operation_is_found_at_its_own_thought(tmp_path: Path, planted: bool) -> None:
    # 10 folds: the own-thought-vs-bot comparison is one of many families in the pooled procedure
    opts = AnalyzeOptions(**{**FAST, "folds": 5, "repeats": 2})
    report = compute_report(_store(tmp_path / "s", planted), opts)
    entries = {e["step"]: e for e in report["step_operations"]}
    assert sorted(entries) == [1, 2, 3]
    assert entries[1]["n_problems"] == entries[2]["n_problems"] == N
    assert 0 < entries[3]["n_problems"] < N
    claims = report["inference"]["claims"]
    decoded = {c.split(": ", 1)[1] for c in claims if c.startswith("step_operations: ")}
    own = {c.split(": ", 1)[1] for c in claims if c.startswith("step_op_own_thought_vs_bot: ")}
    text = " ".join(s for sec in findings(report) for s in sec["sentences"])
    if planted:
        assert decoded == {"step1/logreg:latent_1", "step2/logreg:latent_2"}
        assert own == {"step1/logreg:latent_1", "step2/logreg:latent_2"}
        row = next(r for r in entries[1]["positions"] if r["view"] == "latent_1")
        assert row["accuracy"] > 0.85 and row["minus_bot"]["ci_low"] > 0.2
        assert "better there than at `bot`, and not demonstrably at `bot`: 1, 2 of 3." in text
    else:
        assert not decoded and not own
        assert "No step's operation is decoded at its own thought" in text


def test_step_operators_need_one_operation_per_step() -> None:
    assert step_operators({"steps": [{"expr": "4*2", "result": "8"}, {"expr": "8-3"}]}) == [
        "*",
        "-",
    ]
    assert step_operators({"steps": [{"expr": "4*2+1", "result": "9"}]}) is None
    assert step_operators({"answer": "She has <<3+4=7>>7 then <<7/7=1>>1.\n#### 1"}) == ["+", "/"]
    assert step_operators({"answer": "no annotations\n#### 1"}) is None
