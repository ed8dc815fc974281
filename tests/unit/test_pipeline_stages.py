"""The run's stage machinery on small real files: skip, recompute, force, failure, resume, lock."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from opcircuits.errors import OpcircuitsError
from opcircuits.files import sha256_file
from opcircuits.pipeline.engine import (
    Hasher,
    Stage,
    StageError,
    StageRunner,
    exclusive,
    prepare_run_dir,
)
from opcircuits.report.render import headline


def upper_stage(src: Path, dst: Path, calls: list[str], *, suffix: str = ""):
    def action() -> None:
        calls.append("ran")
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(src.read_text().upper() + suffix)

    return Stage(
        name="upper",
        action=action,
        inputs={"text": src, "tool": "upper-v1"},
        options={"suffix": suffix},
        outputs={"out": dst},
    )


def runner(run_dir: Path, force: bool = False) -> StageRunner:
    return StageRunner(run_dir, Hasher(run_dir / ".hashcache.json"), force, None)


def test_skip_when_unchanged_and_recompute_on_any_change(tmp_path):
    src, dst, calls = tmp_path / "in.txt", tmp_path / "run" / "out.txt", []
    src.write_text("abc")
    run_dir = tmp_path / "run"

    def once(**kw):
        r = runner(run_dir, kw.pop("force", False))
        r.run(upper_stage(src, dst, calls, **kw), 1, 1)
        return r.outcomes[-1][1]

    assert once() == "ran" and dst.read_text() == "ABC"
    assert once() == "skipped"
    record = json.loads((run_dir / "stages" / "upper.json").read_text())
    assert record["outputs"]["out"] == {"path": "out.txt", "sha256": sha256_file(dst)}
    assert record["key"]["inputs"]["text"]["sha256"] == sha256_file(src)
    assert record["key"]["inputs"]["tool"] == {"id": "upper-v1"}
    assert not (run_dir / "stages" / "upper.started.json").exists()

    src.write_text("abcd")  # changed input
    assert once() == "ran" and dst.read_text() == "ABCD"
    assert once(suffix="!") == "ran" and dst.read_text() == "ABCD!"  # changed option
    assert once(suffix="!") == "skipped"
    dst.write_text("tampered")  # an output that no longer matches its record is recomputed
    assert once(suffix="!") == "ran" and dst.read_text() == "ABCD!"
    dst.unlink()
    assert once(suffix="!") == "ran"
    assert once(suffix="!", force=True) == "ran"
    assert calls == ["ran"] * 6


def test_a_failing_stage_names_itself_and_leaves_nothing_trusted(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    def boom() -> None:
        raise ValueError("disk on fire")

    stage = Stage("extract", boom, {}, {}, {"store": run_dir / "store"})
    handler = logging.FileHandler(run_dir / "run.log")
    with pytest.raises(StageError, match=r"stage 'extract' failed: ValueError: disk on fire \("):
        StageRunner(run_dir, Hasher(), False, handler).run(stage, 1, 1)
    handler.close()
    trace = (run_dir / "run.log").read_text()
    assert "stage 'extract' crashed:" in trace and 'raise ValueError("disk on fire")' in trace
    assert not (run_dir / "stages" / "extract.json").exists()
    assert (run_dir / "stages" / "extract.started.json").exists()

    def user_error() -> None:
        raise OpcircuitsError("layer 99 is beyond the model's 4 layers", field="layers")

    stage = Stage("extract", user_error, {}, {}, {"store": run_dir / "store"})
    with pytest.raises(StageError) as info:
        runner(run_dir).run(stage, 1, 1)
    assert str(info.value) == (
        "stage 'extract' failed: field 'layers': layer 99 is beyond the model's 4 layers"
    )
    # A stage that "succeeds" without writing its output is a failure too.
    stage = Stage("extract", lambda: None, {}, {}, {"store": run_dir / "store"})
    with pytest.raises(StageError, match="finished without its output"):
        runner(run_dir).run(stage, 1, 1)
    assert not (run_dir / "stages" / "extract.json").exists()


def test_interrupted_stage_resumes_its_partial_output_unless_its_key_changed(tmp_path):
    src, run_dir = tmp_path / "in.txt", tmp_path / "run"
    src.write_text("abc")
    partial = run_dir / "store"
    seen: list[bool] = []

    def stage(suffix: str) -> Stage:
        def action() -> None:
            seen.append((partial / "shard-0").exists())  # resumable work found?
            partial.mkdir(parents=True, exist_ok=True)
            (partial / "shard-0").write_text("0")
            if suffix == "crash":
                raise KeyboardInterrupt
            (partial / "shard-1").write_text("1")

        def clear(forced: bool) -> None:
            for shard in partial.glob("shard-*"):
                shard.unlink()

        return Stage(
            "extract", action, {"text": src}, {"s": suffix}, {"store": partial}, clear=clear
        )

    with pytest.raises(KeyboardInterrupt):
        runner(run_dir).run(stage("crash"), 1, 1)
    # Same key as the interrupted attempt → its shard is kept and resumed.
    with pytest.raises(KeyboardInterrupt):
        runner(run_dir).run(stage("crash"), 1, 1)
    assert seen == [False, True]
    # A different key → the stale partial output is cleared first.
    runner(run_dir).run(stage("other"), 1, 1)
    assert seen == [False, True, False]
    assert sorted(p.name for p in partial.iterdir()) == ["shard-0", "shard-1"]


def test_tree_hash_ignores_temporary_dotfiles_and_the_cache_tracks_changes(tmp_path):
    tree = tmp_path / "store"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.bin").write_bytes(b"a")
    (tree / "sub" / "b.bin").write_bytes(b"b")
    hasher = Hasher(tmp_path / "cache.json")
    digest = hasher.tree(tree)
    (tree / ".a.bin.123.tmp").write_bytes(b"half-written")
    assert hasher.tree(tree) == digest
    hasher.save()
    reloaded = Hasher(tmp_path / "cache.json")
    assert reloaded.cache == hasher.cache and reloaded.tree(tree) == digest
    (tree / "sub" / "b.bin").write_bytes(b"bb")
    changed = reloaded.tree(tree)
    assert changed != digest and changed == Hasher().tree(tree)
    (tree / "sub" / "b.bin").rename(tree / "sub" / "c.bin")
    assert Hasher().tree(tree) != changed  # names count, not just contents


def test_run_dir_under_a_regular_file_is_a_clear_error(tmp_path):
    blocker = tmp_path / "somefile"
    blocker.write_text("not a folder")
    with pytest.raises(OpcircuitsError, match="cannot write the run directory") as info:
        prepare_run_dir(blocker / "sub")
    assert info.value.path == str(blocker / "sub")


@pytest.mark.skipif(os.name != "posix", reason="advisory locks are POSIX-only")
def test_one_run_per_directory(tmp_path):
    with exclusive(tmp_path), pytest.raises(OpcircuitsError, match="another `opcircuits run`"):
        with exclusive(tmp_path):
            pass
    with exclusive(tmp_path):  # released afterwards
        pass


def test_headline_reads_the_report_contract():
    report = {
        "probes": [
            {
                "view": "mean",
                "view_kind": "main",
                "probe": "logreg",
                "accuracy": 0.8,
                "ci_low": 0.7,
                "ci_high": 0.9,
                "p_value": 0.005,
                "p_family": 0.01,
                "gain_over_baseline": {
                    "control": "question_text",
                    "value": 0.25,
                    "ci_low": 0.1,
                    "ci_high": 0.4,
                },
            },
            {"view": "first", "view_kind": "main", "probe": "mlp", "accuracy": 0.6},
            {"view": "bot", "view_kind": "position", "probe": "logreg", "accuracy": 0.95},
        ],
        "controls": [{"name": "question_text", "accuracy": 0.55, "ci_low": 0.5, "ci_high": 0.6}],
        "token_layer_map": [{"position": "latent_1", "layer": 8, "accuracy": 0.75}],
        "model": {"answer_accuracy": [{"category": "all", "n": 60, "correct": 6, "accuracy": 0.1}]},
    }
    assert headline(report) == [
        "best probe: logreg on mean: accuracy 0.800 (95% CI 0.700 to 0.900), "
        "family-wise permutation p = 0.01",
        "gain over the best control (question_text): +0.250 (95% CI +0.100 to +0.400)",
        "best control: question_text: accuracy 0.550 (95% CI 0.500 to 0.600)",
        "best token x layer cell: latent_1 @ layer 8: 0.750",
        "model answer accuracy: 0.100 (6/60)",
    ]
    assert headline({}) == []


def test_force_clears_outputs_kept_outside_the_run_dir_only_through_their_own_hook(tmp_path):
    run_dir, outside = tmp_path / "run", tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "keep.txt").write_text("user's file")
    cleared: list[str] = []

    def action() -> None:
        (outside / "out.txt").write_text("x")

    def stage() -> Stage:
        return Stage("extract", action, {}, {}, {"out": outside / "out.txt"},
                     clear=lambda forced: cleared.append(forced))  # fmt: skip

    runner(run_dir).run(stage(), 1, 1)
    runner(run_dir).run(stage(), 1, 1)
    assert cleared == []
    runner(run_dir, force=True).run(stage(), 1, 1)
    assert cleared == [True] and (outside / "keep.txt").exists()
