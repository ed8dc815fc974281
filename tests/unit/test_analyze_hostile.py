"""Hostile inputs to `analyze` (issue 25): a damaged sweep file and too few problems for the folds
are refused before any work; an output inside the store is refused; SIGTERM cleans up as Ctrl-C
does, and the scratch folders of a killed run are removed by the next one."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cli_runner import run_cli

from opcircuits.analysis.causal_check import check_result
from opcircuits.errors import OpcircuitsError
from opcircuits.options import AnalyzeOptions
from opcircuits.report.analyze import analyze
from opcircuits.scratch import owner_tag as _owner_tag
from opcircuits.store import write_store

CATS = ["pure_addition", "pure_multiplication", "mixed"]
QUICK = dict(folds=2, repeats=1, permutations=0, seed=0, jobs=1)


def small_store(path: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    records = [
        {"id": f"test_{i}", "category": CATS[i % 3], "question": f"Q{i} w{i % 5}: how many?",
         "n_steps": 2 + i % 2}
        for i in range(n)
    ]  # fmt: skip
    hidden = rng.normal(size=(n, 2, 2, 8)).astype(np.float32)
    write_store(path, hidden, records, [1, 2], ["bot", "latent_1"], store_dtype="float32")
    return path


@pytest.fixture
def no_work(monkeypatch):
    """The refusal must come before the analysis' fits start."""

    def fail(*args, **kwargs):
        raise AssertionError("the analysis started before its inputs were checked")

    monkeypatch.setattr("opcircuits.analysis.tasks.run", fail)


RESULT = {
    "provenance": {"weights_sha256": "a", "data_sha256": "b"},
    "options": {"bootstrap": 100},
    "num_latent": 2,
    "num_layers": 2,
    "positions": ["bot", "latent_1", "latent_2"],
    "categories": ["mixed", "pure_addition"],
    "clean": {
        c: {"n": 3, "accuracy": 0.5, "ci": [0.1, 0.9]} for c in ("all", "mixed", "pure_addition")
    },  # fmt: skip
    "thoughts": [
        {
            "thoughts": 0,
            "category": "all",
            "positions": "natural",
            "n": 6,
            "accuracy": 0.5,
            "ci": [0.2, 0.8],
        }
    ],  # fmt: skip
    "effects": [
        {
            "intervention": "zero bot@0",
            "category": "all",
            "kind": "zero",
            "n": 6,
            "drop": 0.1,
            "drop_ci": [0.0, 0.2],
            "logp_drop": 0.3,
            "logp_drop_ci": [0, 1],
            "changed": 0.2,
            "follows_source": None,
            "follows_source_ci": [None, None],
            "position": "bot",
            "layer": 0,
            "alpha": None,
            "thoughts": 2,
            "sites": "bot@0",
            "drop_p_family": 0.5,
            "drop_no_effect": False,
        }
    ],  # fmt: skip
    "interactions": [
        {
            "intervention": "zero bot@0",
            "a": "mixed",
            "b": "pure_addition",
            "drop": 0.0,
            "drop_ci": [0.0, 0.0],
            "drop_claimed": False,
            "drop_crossover": [],
        }
    ],  # fmt: skip
    "routing": {"dispensable_delta": 0.02, "recovery": [], "position_effect": []},
    "notes": [],
    "methods": {"effects": "…"},
}


def test_a_well_formed_result_passes_the_checks():
    check_result(copy.deepcopy(RESULT), "interventions.json")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda r: r["effects"][0].update(intervention=3), "effects[0].intervention"),
        (lambda r: r["effects"][0].update(drop="0.1"), "effects[0].drop"),
        (lambda r: r["effects"][0].update(drop_ci=[0.1]), "effects[0].drop_ci"),
        (lambda r: r["effects"][0].pop("kind"), "effects[0] must be an object with kind"),
        (lambda r: r.update(effects={"a": 1}), "effects must be a list"),
        (lambda r: r.update(num_latent="2"), "num_latent"),
        (lambda r: r["clean"].pop("mixed"), "clean.mixed"),
        (lambda r: r["interactions"][0].update(drop_claimed="yes"), "drop_claimed"),
        (lambda r: r["thoughts"].append(7), "thoughts[1] must be an object"),
        (lambda r: r["routing"].update(recovery=[{"intervention": "x"}]), "routing.recovery[0]"),
    ],
)
def test_a_wrong_typed_sweep_file_stops_analyze_before_any_work(tmp_path, no_work, change, field):
    store = small_store(tmp_path / "store", 18)
    result = copy.deepcopy(RESULT)
    change(result)
    file = tmp_path / "sweep" / "interventions.json"
    file.parent.mkdir()
    file.write_text(json.dumps(result))
    opts = AnalyzeOptions(**QUICK, interventions=file.parent)
    with pytest.raises(OpcircuitsError, match=r"not an interventions\.json") as err:
        analyze(store, tmp_path / "out", opts)
    assert field in str(err.value) and err.value.path == str(file)
    assert not (tmp_path / "out").exists()


def test_a_sweep_file_that_is_no_json_stops_analyze_before_any_work(tmp_path, no_work):
    store = small_store(tmp_path / "store", 18)
    file = tmp_path / "interventions.json"
    file.write_bytes(b"PAR1\x00\x01 not json")
    code, _, err = run_cli("analyze", "--store", str(store), "--out", str(tmp_path / "out"),
                           "--folds", "2", "--repeats", "1", "--permutations", "0", "--jobs", "1",
                           "--interventions", str(file))  # fmt: skip
    assert code == 2 and err.strip().startswith(f"error: {file}") and len(err.splitlines()) == 1


def test_too_few_problems_per_category_for_the_folds_is_refused_before_the_work(tmp_path, no_work):
    """3 problems per category and --folds 2: a training fold holds 1-2 of each, too few for the
    question-text control's inner 3-fold split (scikit-learn failed after most of the work)."""
    store = small_store(tmp_path / "store", 9)
    with pytest.raises(OpcircuitsError, match="too few problems per category for --folds 2") as e:
        analyze(store, tmp_path / "out", AnalyzeOptions(**QUICK))
    assert e.value.field == "folds" and "6 problems per category always suffice" in str(e.value)
    # A companion store is checked before the main analysis too.
    main = small_store(tmp_path / "main", 18)
    with pytest.raises(OpcircuitsError, match="too few problems") as e:
        analyze(main, tmp_path / "out", AnalyzeOptions(**QUICK, matched_store=store))
    assert e.value.path == str(store)


def test_enough_problems_for_the_folds_analyze(tmp_path):
    report = analyze(small_store(tmp_path / "store", 18), tmp_path / "out", AnalyzeOptions(**QUICK))
    assert report["data"]["n_problems"] == 18


def test_a_primary_probe_the_permutations_do_not_test_is_refused_before_the_work(tmp_path, no_work):
    store = small_store(tmp_path / "store", 18)
    for primary, why in (("mlp:mean", "permute-all-probes"), ("logreg:nowhere", "logreg:mean"),
                         ("logreg:mean", "--permutations 0")):  # fmt: skip
        opts = {**QUICK, "permutations": 0 if "0" in why else 4, "primary": primary}
        with pytest.raises(OpcircuitsError, match="not a permutation-tested probe") as err:
            analyze(store, tmp_path / "out", AnalyzeOptions(**opts))
        assert why in str(err.value) and err.value.field == "primary"


def test_the_members_checked_up_front_are_the_ones_the_claims_test(tmp_path):
    from opcircuits.analysis import tasks
    from opcircuits.analysis.inputs import load_input
    from opcircuits.store import open_store

    store = small_store(tmp_path / "store", 18)
    for extra in ({}, {"permute_all_probes": True}):
        opts = AnalyzeOptions(**{**QUICK, "permutations": 3, **extra})
        report = analyze(store, tmp_path / "out", opts)
        tested = {f"{t['probe']}:{t['view']}" for t in report["permutation_tests"]}
        plan = tasks.plan(load_input(open_store(store), opts), opts)
        assert tasks.permutation_members(plan) == tested


def test_a_random_model_store_of_other_problems_is_refused_before_the_work(tmp_path, no_work):
    store = small_store(tmp_path / "store", 18)
    other = small_store(tmp_path / "other", 21)
    with pytest.raises(OpcircuitsError, match="holds other problems") as err:
        analyze(store, tmp_path / "out", AnalyzeOptions(**QUICK, random_store=other))
    assert err.value.path == str(other)


def test_more_jobs_than_cpus_run_as_many_workers_as_cpus(tmp_path, monkeypatch):
    import joblib

    from opcircuits.analysis import tasks

    seen = []
    real = tasks.run
    monkeypatch.setattr(tasks, "run", lambda plan, inp, jobs, *a: seen.append(jobs) or real(
        plan, inp, 1, *a))  # fmt: skip
    analyze(small_store(tmp_path / "store", 18), tmp_path / "out",
            AnalyzeOptions(**{**QUICK, "jobs": 1000}))  # fmt: skip
    assert seen == [joblib.cpu_count()]


def test_an_output_inside_the_store_is_refused(tmp_path):
    store = small_store(tmp_path / "store", 18)
    before = sorted(p.name for p in store.rglob("*"))
    for out in (store / "analysis", store / "parts" / "x"):
        with pytest.raises(OpcircuitsError, match=r"inside the input --store") as err:
            analyze(store, out, AnalyzeOptions(**QUICK))
        assert err.value.field == "out"
    assert sorted(p.name for p in store.rglob("*")) == before


def test_the_scratch_of_a_killed_run_is_removed_by_the_next(tmp_path):
    store = small_store(tmp_path / "store", 18)
    out = tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    stale = tmp_path / f".out.{_owner_tag(int(dead.stdout))}_k1ll3d.tmp"
    live = tmp_path / f".out.{_owner_tag()}_running.tmp"  # this process's: still running
    other = tmp_path / ".out.notmine.tmp"  # not our naming
    for folder in (stale, live, other):
        folder.mkdir()
        (folder / "analysis_report.json").write_text("{}")
    analyze(store, out, AnalyzeOptions(**QUICK))
    assert not stale.exists() and live.is_dir() and other.is_dir()
    assert (out / "analysis_report.json").is_file()


@pytest.mark.slow
def test_sigterm_while_analyze_writes_cleans_up_as_ctrl_c_does(tmp_path):
    """SIGTERM while the report is written into its scratch folder: the scratch is removed, the
    exit is the interrupted one (it was killed outright, leaving `.out.*.tmp` behind)."""
    store = small_store(tmp_path / "store", 60)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "opcircuits", "analyze", "--store", str(store), "--out", str(out),
         "--folds", "2", "--repeats", "1", "--permutations", "0", "--jobs", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if any(p.name.startswith(".out.") for p in tmp_path.iterdir()):
                break  # the scratch folder exists: the figures are being drawn into it
            time.sleep(0.02)
        assert proc.poll() is None, "the analysis ended before its scratch folder was seen"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert "interrupted; rerun the same command" in err and "Traceback" not in err
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")] == []
    assert not out.exists()
