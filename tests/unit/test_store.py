"""The thought store: round trips, resumable sharded writing, sharding (no GSM8K needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from opcircuits.errors import OpcircuitsError
from opcircuits.store import (
    RECORD_COLUMNS,
    StoreWriter,
    open_store,
    shard_name,
    write_store,
)

P, L, D, K = 4, 3, 16, 3
LAYERS = [2, 5, 7]
POSITIONS = ["bot", "latent_1", "latent_2", "latent_3"]


def _records(n: int) -> list[dict]:
    """Records shaped like extraction's (every column filled, some nulls, non-ASCII text)."""
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        gold = float(3 * i + 2)
        predicted = None if i % 4 == 3 else gold + (i % 2)
        probs = rng.dirichlet(np.ones(3), size=P).astype(np.float32)
        out.append(
            {
                "id": f"test_{i}",
                "category": ["pure_addition", "pure_multiplication", "mixed"][i % 3],
                "question": f"Zoë has {i} apples and buys {2 * i + 2} more. How many now? ✓",
                "gold": gold,
                "answer_text": None if predicted is None else f"The answer is {predicted}",
                "predicted": predicted,
                "correct": predicted == gold,
                "n_steps": 1 + i % 3,
                "ops_used": ["+", "*"][: 1 + i % 2],
                "lens_top_ids": rng.integers(0, 100, size=(P, 3)).tolist(),
                "lens_top_tokens": [[f"t{j}" for j in range(3)] for _ in range(P)],
                "lens_top_probs": probs.tolist(),
            }
        )
    return out


def _arrays(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.normal(scale=3.0, size=(n, P, L, D)).astype(np.float32),
        rng.normal(size=(n, K, D)).astype(np.float32),
    )


def _manifest(**kw) -> dict:
    m = dict(
        model="tiny",
        checkpoint="ckpt",
        weights_sha256="ab" * 32,
        base="tiny-base",
        num_latent=K,
        layers=LAYERS,
        positions=POSITIONS,
        dtype="float32",
        store_dtype="float16",
        hidden_size=D,
        dataset="data/x.jsonl",
        dataset_sha256="cd" * 32,
    )
    m.update(kw)
    return m


def _files(path: Path) -> dict[str, bytes]:
    """Every data file of a store (the manifest differs only in its creation time)."""
    return {
        p.name: p.read_bytes()
        for p in sorted(path.iterdir())
        if p.is_file() and p.name != "manifest.json"
    }


# --- round trip -----------------------------------------------------------------------------------


def test_round_trip_values_records_and_selection(tmp_path):
    records = _records(11)
    hidden, lat = _arrays(11)
    store = write_store(
        tmp_path / "s",
        hidden,
        records,
        LAYERS,
        POSITIONS,
        lat,
        shard_size=4,
        model="tiny",
        layer_names=["a", "b", "c"],
    )
    again = open_store(tmp_path / "s")
    assert again.manifest == store.manifest
    m = again.manifest
    assert (m["format_version"], m["complete"]) == (2, True)
    assert (m["n_problems"], m["shard_size"]) == (11, 4)
    assert (m["hidden_size"], m["num_latent"], m["store_dtype"]) == (D, K, "float16")
    assert set(m["versions"]) == {"opcircuits", "torch", "transformers"}
    assert sorted(p.name for p in (tmp_path / "s").glob("hidden-*")) == [
        shard_name(i) for i in range(3)
    ]
    assert not (tmp_path / "s" / "parts").exists()
    assert again.layers == LAYERS and again.positions == POSITIONS

    got = again.hidden()
    assert got.dtype == np.float32 and got.shape == (11, P, L, D)
    np.testing.assert_allclose(got, hidden, rtol=1e-3, atol=1e-3)  # fp16 storage
    np.testing.assert_array_equal(got, hidden.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(again.latent_inputs(), lat.astype(np.float16).astype(np.float32))

    # selection by names, indices, layer numbers and layer names, in the order asked
    sel = again.hidden(positions=["latent_3", 0], layers=[7, "a"])
    np.testing.assert_array_equal(sel, got[:, [3, 0]][:, :, [2, 0]])
    np.testing.assert_array_equal(again.hidden("latent_1", 5), got[:, [1]][:, :, [1]])
    np.testing.assert_array_equal(again.hidden(layers=["5"]), got[:, :, [1]])
    with pytest.raises(OpcircuitsError, match="unknown position 'latent_9'"):
        again.hidden(positions=["latent_9"])
    with pytest.raises(OpcircuitsError, match=r"unknown layer 4; this store has layers \[2, 5, 7"):
        again.hidden(layers=[4])
    with pytest.raises(OpcircuitsError, match="field 'layers': select at least one position"):
        again.hidden(layers=[])

    df = again.records
    assert list(df.columns) == list(RECORD_COLUMNS)
    assert df["id"].tolist() == [r["id"] for r in records]
    assert df["question"].tolist() == [r["question"] for r in records]
    assert df["gold"].tolist() == [r["gold"] for r in records]
    assert df["predicted"].isna().tolist() == [r["predicted"] is None for r in records]
    assert df["correct"].tolist() == [r["correct"] for r in records]
    assert [list(x) for x in df["ops_used"]] == [r["ops_used"] for r in records]
    assert [[list(t) for t in x] for x in df["lens_top_ids"]] == [
        r["lens_top_ids"] for r in records
    ]
    np.testing.assert_allclose(
        np.stack([np.stack(x) for x in df["lens_top_probs"]]),
        np.array([r["lens_top_probs"] for r in records]),
        rtol=1e-6,
    )


def test_float32_store_is_exact_and_dataframe_records_round_trip(tmp_path):
    hidden, lat = _arrays(5)
    first = write_store(
        tmp_path / "a",
        hidden,
        _records(5),
        LAYERS,
        POSITIONS,
        lat,
        store_dtype="float32",
    )
    np.testing.assert_array_equal(first.hidden(), hidden)
    # the DataFrame a store gives back is accepted as records, and stores the same table
    second = write_store(
        tmp_path / "b", first.hidden(), first.records, LAYERS, POSITIONS, lat, store_dtype="float32"
    )
    np.testing.assert_array_equal(second.hidden(), hidden)
    assert (tmp_path / "a" / "records.parquet").read_bytes() == (
        tmp_path / "b" / "records.parquet"
    ).read_bytes()


def test_minimal_records_from_another_model_get_null_columns(tmp_path):
    hidden = np.ones((3, 2, 1, 4), dtype=np.float32)
    records = pd.DataFrame(
        {"id": ["a", "b", "c"], "category": ["x", None, "y"], "source": ["m1", "m1", "m2"]}
    )
    store = write_store(tmp_path / "s", hidden, records, [0], ["bot", "latent_1"])
    df = store.records
    assert list(df.columns) == [*RECORD_COLUMNS, "source"]
    assert df["gold"].isna().all() and df["lens_top_ids"].isna().all()
    assert df["category"].isna().tolist() == [False, True, False]
    assert df["source"].tolist() == ["m1", "m1", "m2"]
    with pytest.raises(OpcircuitsError, match="holds no latent_inputs"):
        store.latent_inputs()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            dict(hidden=np.zeros((5, P, L + 1, D))),
            r"hidden has shape \[5, 4, 4, 16\], expected "
            r"\[5, 4, 3, D\]",
        ),
        (dict(hidden=np.zeros((4, P, L, D))), r"expected \[5, 4, 3, D\] \(5 records"),
        (dict(latent_inputs=np.zeros((5, K, D + 1))), r"latent_inputs has shape"),
        (dict(records=[{"category": "x"}] * 5), "lack the required column 'id'"),
        (dict(records=[{"id": "a", "category": "x"}] * 5), r"ids repeat: \['a'\]"),
        (
            dict(records=[{"id": str(i), "category": "x", "gold": "ten"} for i in range(5)]),
            "field 'gold': cannot store values as double",
        ),
        (dict(layers=[1, 1, 2]), "layers repeat"),
        (dict(positions=["bot", "bot", "x", "y"]), "positions repeat"),
        (dict(store_dtype="bfloat16"), "store_dtype 'bfloat16' is not one of"),
        (
            dict(hidden=np.full((5, P, L, D), 1e6, dtype=np.float32)),
            "beyond float16's range; use store_dtype float32",
        ),
    ],
)
def test_write_store_validates_with_clear_errors(tmp_path, change, message):
    args = dict(
        hidden=np.zeros((5, P, L, D), dtype=np.float32),
        records=[{"id": str(i), "category": "x"} for i in range(5)],
        layers=LAYERS,
        positions=POSITIONS,
        latent_inputs=np.zeros((5, K, D), dtype=np.float32),
    )
    args.update(change)
    with pytest.raises(OpcircuitsError, match=message):
        write_store(tmp_path / "s", **args)


def test_write_store_refuses_to_overwrite_unless_asked(tmp_path):
    hidden = np.zeros((2, 1, 1, 4), dtype=np.float32)
    recs = [{"id": "a", "category": "x"}, {"id": "b", "category": "y"}]
    write_store(tmp_path / "s", hidden, recs, [0], ["bot"])
    with pytest.raises(OpcircuitsError, match="a store already exists here"):
        write_store(tmp_path / "s", hidden + 1, recs, [0], ["bot"])
    store = write_store(
        tmp_path / "s", hidden + 1, recs[:1] + recs[:0] + recs[1:], [0], ["bot"], overwrite=True
    )
    assert store.hidden().min() == 1.0
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(OpcircuitsError, match="not empty and holds no store manifest"):
        write_store(tmp_path / "other", hidden, recs, [0], ["bot"])


# --- resumable writing ----------------------------------------------------------------------------


def _write(writer: StoreWriter, shards, hidden, lat, records) -> None:
    for i in shards:
        a, b = writer.shard_bounds(i)
        writer.write_shard(i, hidden[a:b], lat[a:b], records[a:b])


def test_writer_resumes_after_a_crash_and_equals_an_uninterrupted_run(tmp_path):
    n, size = 13, 3  # 5 shards, the last one short
    records = _records(n)
    hidden, lat = _arrays(n)

    whole = StoreWriter(tmp_path / "whole", _manifest(), n, size)
    assert whole.pending_shards() == [0, 1, 2, 3, 4]
    _write(whole, whole.pending_shards(), hidden, lat, records)
    whole.finalize()

    path = tmp_path / "resumed"
    first = StoreWriter(path, _manifest(), n, size)
    _write(first, [0, 1], hidden, lat, records)
    # "crash" in shard 2: its records part got written, its hidden file did not
    a, b = first.shard_bounds(2)
    first.write_shard(2, hidden[a:b], lat[a:b], records[a:b])
    (path / shard_name(2)).unlink()
    # and a crash inside shard 3 leaves only a temporary file behind
    (path / f".{shard_name(3)}.xyz.tmp").write_bytes(b"partial")
    with pytest.raises(OpcircuitsError, match="extraction not finished; rerun the extract"):
        open_store(path)
    partial = open_store(path, allow_incomplete=True)
    assert len(partial) == 6 and partial.hidden().shape == (6, P, L, D)
    np.testing.assert_array_equal(partial.hidden(), whole.finalize().hidden()[:6])
    assert partial.records["id"].tolist() == [f"test_{i}" for i in range(6)]

    second = StoreWriter(path, _manifest(), n, size)
    assert second.pending_shards() == [2, 3, 4]
    with pytest.raises(OpcircuitsError, match=r"cannot finalize: shards 2, 3, 4 not written"):
        second.finalize()
    _write(second, second.pending_shards(), hidden, lat, records)
    store = second.finalize()
    (path / f".{shard_name(3)}.xyz.tmp").unlink()

    assert _files(path) == _files(tmp_path / "whole")
    np.testing.assert_array_equal(store.hidden(), open_store(tmp_path / "whole").hidden())
    # rerunning on a finished store has nothing to do
    third = StoreWriter(path, _manifest(), n, size)
    assert third.pending_shards() == [] and third.finalize().manifest["complete"] is True


def test_incomplete_store_without_hidden_size_learns_it_from_its_shards(tmp_path):
    w = StoreWriter(tmp_path / "s", _manifest(hidden_size=None), 4, 2)
    hidden, lat = _arrays(4)
    _write(w, [1], hidden, lat, [{"id": f"p{i}", "category": "x"} for i in range(4)])
    partial = open_store(tmp_path / "s", allow_incomplete=True)
    assert partial.hidden_size == D and partial.records["id"].tolist() == ["p2", "p3"]
    np.testing.assert_array_equal(partial.hidden(), hidden[2:].astype(np.float16))
    assert partial.manifest["complete"] is False


def test_a_shard_whose_records_do_not_match_its_hidden_file_is_redone(tmp_path):
    records = _records(4)
    hidden, lat = _arrays(4)
    w = StoreWriter(tmp_path / "s", _manifest(), 4, 2)
    _write(w, [0, 1], hidden, lat, records)
    part = tmp_path / "s" / "parts" / "records-00001.parquet"
    part.write_bytes(part.read_bytes() + b"x")
    assert w.pending_shards() == [1]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model", "other"),
        ("checkpoint", "ckpt2"),
        ("dataset_sha256", "ef" * 32),
        ("layers", [2, 5, 8]),
        ("positions", ["bot", "latent_1", "latent_2", "latent_x"]),
        ("num_latent", 4),
        ("store_dtype", "float32"),
    ],
)
def test_existing_store_with_other_settings_is_an_error(tmp_path, field, value):
    w = StoreWriter(tmp_path / "s", _manifest(), 4, 2)
    hidden, lat = _arrays(4)
    _write(w, [0], hidden, lat, [{"id": f"p{i}", "category": "x"} for i in range(4)])
    with pytest.raises(OpcircuitsError) as info:
        StoreWriter(tmp_path / "s", _manifest(**{field: value}), 4, 2)
    assert f"{field}: store has" in str(info.value) and "Differences" in str(info.value)
    # more than one difference: all are listed
    with pytest.raises(OpcircuitsError, match=r"model: .*shard_size: store has 2, run has 3"):
        StoreWriter(tmp_path / "s", _manifest(model="m2"), 4, 3)
    # nothing was touched
    assert (tmp_path / "s" / shard_name(0)).is_file()
    assert not (tmp_path / "s" / shard_name(1)).exists()


def test_manifest_values_are_normalized_as_json_so_a_rerun_matches(tmp_path):
    m = _manifest(layers=(2, 5, 7), dataset=tmp_path / "x.jsonl", extra={"targets": ("q", "v")})
    w = StoreWriter(tmp_path / "s", m, 2, 2)
    assert w.manifest["dataset"] == str(tmp_path / "x.jsonl")
    assert w.manifest["extra"] == {"targets": ["q", "v"]}
    assert StoreWriter(tmp_path / "s", m, 2, 2).pending_shards() == [0]
    with pytest.raises(OpcircuitsError, match="manifest is not JSON-serialisable"):
        StoreWriter(tmp_path / "t", _manifest(bad=object()), 2, 2)


def test_write_shard_checks_shapes_and_counts(tmp_path):
    w = StoreWriter(tmp_path / "s", _manifest(), 5, 2)
    hidden, lat = _arrays(5)
    recs = [{"id": f"p{i}", "category": "x"} for i in range(5)]
    with pytest.raises(OpcircuitsError, match=r"hidden has shape \[3, 4, 3, 16\], expected"):
        w.write_shard(0, hidden[:3], lat[:3], recs[:3])
    with pytest.raises(OpcircuitsError, match=r"shard 2: 2 records for 1 problems"):
        w.write_shard(2, hidden[4:], lat[4:], recs[3:])
    with pytest.raises(OpcircuitsError, match=r"latent_inputs has shape \[1, 2, 16\]"):
        w.write_shard(2, hidden[4:], lat[4:, :2], recs[4:])
    with pytest.raises(OpcircuitsError, match="hidden size 8, manifest says 16"):
        w.write_shard(2, hidden[4:, ..., :8], lat[4:, :, :8], recs[4:])
    with pytest.raises(OpcircuitsError, match="shard 3 out of range"):
        w.write_shard(3, hidden[4:], lat[4:], recs[4:])
    assert w.pending_shards() == [0, 1, 2]


def test_two_processes_write_the_same_bytes_as_one(tmp_path):
    n, size = 10, 3  # 4 shards: rank 0 takes 0 and 2, rank 1 takes 1 and 3
    records = _records(n)
    hidden, lat = _arrays(n)
    one = StoreWriter(tmp_path / "one", _manifest(), n, size)
    _write(one, one.pending_shards(), hidden, lat, records)
    one.finalize()

    path = tmp_path / "two"
    ranks = [StoreWriter(path, _manifest(), n, size, rank=r, world_size=2) for r in (0, 1)]
    assert [w.pending_shards() for w in ranks] == [[0, 2], [1, 3]]
    _write(ranks[1], ranks[1].pending_shards(), hidden, lat, records)
    with pytest.raises(OpcircuitsError, match="shards 0, 2 not written"):
        ranks[0].finalize()
    _write(ranks[0], ranks[0].pending_shards(), hidden, lat, records)
    ranks[0].finalize()
    assert _files(path) == _files(tmp_path / "one")
    assert open_store(path).records.equals(open_store(tmp_path / "one").records)


def test_a_rank_creating_the_store_does_not_make_its_sibling_refuse_it(tmp_path):
    """Ranks started together race to create the store: one may list the directory while the
    other's manifest is still a temporary file (the once-flaky two-process test). Only files
    that are not the store's own make a directory "not empty"."""
    path = tmp_path / "s"
    path.mkdir()
    (path / ".manifest.json.k2x9q1.tmp").write_text("{")  # another rank's, half-written
    w = StoreWriter(path, _manifest(), 4, 2, rank=1, world_size=2)
    assert w.pending_shards() == [1]
    assert json.loads((path / "manifest.json").read_text())["n_problems"] == 4


_RANK_SCRIPT = """
import json, sys
import numpy as np
from opcircuits.store import StoreWriter
data = np.load(sys.argv[1])
args = json.loads(open(sys.argv[2]).read())
w = StoreWriter(args["path"], args["manifest"], args["n"], args["size"], rank=int(sys.argv[3]),
                world_size=2)
for i in w.pending_shards():
    a, b = w.shard_bounds(i)
    w.write_shard(i, data["hidden"][a:b], data["lat"][a:b], args["records"][a:b])
print(w.pending_shards(rank=0, world_size=1))
"""


@pytest.mark.multiproc
def test_two_real_processes_started_together_write_one_store(tmp_path):
    n, size = 7, 2
    records = _records(n)
    hidden, lat = _arrays(n)
    one = StoreWriter(tmp_path / "one", _manifest(), n, size)
    _write(one, one.pending_shards(), hidden, lat, records)
    one.finalize()

    np.savez(tmp_path / "arrays.npz", hidden=hidden, lat=lat)
    spec = dict(path=str(tmp_path / "two"), manifest=_manifest(), n=n, size=size, records=records)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "rank.py").write_text(_RANK_SCRIPT)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(tmp_path / "rank.py"),
                str(tmp_path / "arrays.npz"),
                str(tmp_path / "spec.json"),
                str(rank),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    StoreWriter(tmp_path / "two", _manifest(), n, size).finalize()
    assert _files(tmp_path / "two") == _files(tmp_path / "one")


def test_open_store_errors(tmp_path):
    with pytest.raises(OpcircuitsError, match=r"not a thought store \(no manifest.json\)"):
        open_store(tmp_path)
    store = write_store(
        tmp_path / "s",
        np.zeros((2, 1, 1, 4), np.float32),
        [{"id": "a", "category": "x"}, {"id": "b", "category": "y"}],
        [0],
        ["bot"],
    )
    (store.path / shard_name(0)).unlink()
    with pytest.raises(OpcircuitsError, match="shard hidden-00000.safetensors is missing"):
        open_store(store.path)
    m = json.loads((store.path / "manifest.json").read_text())
    m["format_version"] = 1
    (store.path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(OpcircuitsError, match="format_version 1 is not supported .* earlier"):
        open_store(store.path)


# --- CLI ------------------------------------------------------------------------------------------


def test_cli_store_info_error_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "opcircuits", "store", "info", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {tmp_path}: not a thought store (no manifest.json)"
