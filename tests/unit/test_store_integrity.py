"""Stores that were tampered with, mixed or damaged are refused with one line naming the file and
field (issue 13 items 4, 5, 6, 9): each test is an attack on a real store, built in the test."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from opcircuits.cli import main
from opcircuits.errors import OpcircuitsError
from opcircuits.files import sha256_file
from opcircuits.store import StoreWriter, open_store, shard_name, verify_store, write_store

P, D, K = 3, 8, 2
LAYERS = [1, 2, 3, 4]
POSITIONS = ["bot", "latent_1", "latent_2"]
N, SIZE = 6, 2  # 3 shards


def _arrays(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(N, P, len(LAYERS), D)).astype(np.float32),
        rng.normal(size=(N, K, D)).astype(np.float32),
    )


def _records(prefix: str = "gsm") -> list[dict]:
    cats = ["pure_addition", "pure_multiplication", "mixed"]
    return [{"id": f"{prefix}_{i}", "category": cats[i % 3]} for i in range(N)]


def _manifest(**kw) -> dict:
    m = dict(
        model="tiny",
        weights_sha256="ab" * 32,
        num_latent=K,
        layers=LAYERS,
        positions=POSITIONS,
        hidden_size=D,
        dataset_sha256="cd" * 32,
    )
    m.update(kw)
    return m


def _partial(path: Path, shards: list[int], *, seed: int = 0, prefix: str = "gsm", **kw) -> None:
    """A store whose writing stopped after `shards` (as if the run was killed)."""
    hidden, lat = _arrays(seed)
    records = _records(prefix)
    w = StoreWriter(path, _manifest(**kw), N, SIZE)
    for i in shards:
        a, b = w.shard_bounds(i)
        w.write_shard(i, hidden[a:b], lat[a:b], records[a:b])


def _store(path: Path, *, seed: int = 0, prefix: str = "gsm", **kw) -> Path:
    _partial(path, [0, 1, 2], seed=seed, prefix=prefix, **kw)
    StoreWriter(path, _manifest(**kw), N, SIZE).finalize()
    return path


def _edit_manifest(path: Path, **changes) -> None:
    m = json.loads((path / "manifest.json").read_text())
    m.update(changes)
    (path / "manifest.json").write_text(json.dumps(m))


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """`opcircuits ARGS` in this process, through the console entry point (exit codes as a
    user sees them)."""
    monkeypatch.setattr(sys, "argv", ["opcircuits", *args])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


# --- issue 13 item 5: shards of another run -------------------------------------------------------


@pytest.mark.parametrize(
    ("other", "field"),
    [
        (dict(model="other-model"), "run_sha256"),  # another model, same problems
        (dict(dataset_sha256="ef" * 32, prefix="other"), "run_sha256"),  # another dataset
        (dict(prefix="other"), "ids"),  # the same settings, other problems
        (dict(layers=[1, 2, 3, 9]), "layers"),
    ],
)
def test_a_shard_copied_from_another_run_into_a_finished_store_is_refused(tmp_path, other, field):
    store = _store(tmp_path / "mine")
    kw = {k: v for k, v in other.items() if k != "prefix"}
    theirs = _store(tmp_path / "theirs", seed=1, prefix=other.get("prefix", "gsm"), **kw)
    shutil.copy(theirs / shard_name(1), store / shard_name(1))
    with pytest.raises(OpcircuitsError) as info:
        open_store(store)
    assert str(info.value).startswith(f"{store / shard_name(1)}: field '{field}': ")
    with pytest.raises(OpcircuitsError, match=field):
        verify_store(store)


def test_a_shard_and_records_part_from_another_dataset_are_refused_on_resume(tmp_path):
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    _partial(mine, [0])
    _partial(theirs, [0, 1], seed=1, prefix="other", dataset_sha256="ef" * 32)
    for f in [*theirs.glob("*00001*"), *(theirs / "parts").glob("*00001*")]:
        shutil.copy(f, mine / f.relative_to(theirs))
    with pytest.raises(OpcircuitsError) as info:
        StoreWriter(mine, _manifest(), N, SIZE)
    assert str(info.value).startswith(f"{mine / shard_name(1)}: field 'run_sha256': ")
    # the same with a problem list: a kept shard of other problems is named
    _partial(tmp_path / "same-settings", [0, 1], seed=1, prefix="other")
    for f in (tmp_path / "same-settings").rglob("*00001*"):
        shutil.copy(f, mine / f.relative_to(tmp_path / "same-settings"))
    ids = [r["id"] for r in _records()]
    with pytest.raises(OpcircuitsError, match=r"field 'ids': row 2 is problem 'gsm_2' in the"):
        StoreWriter(mine, _manifest(), N, SIZE, ids=ids)


def test_write_shard_refuses_records_of_other_problems_than_the_problem_list(tmp_path):
    hidden, lat = _arrays()
    w = StoreWriter(tmp_path / "s", _manifest(), N, SIZE, ids=[r["id"] for r in _records()])
    with pytest.raises(OpcircuitsError, match=r"shard 1: row 2 holds problem 'x_2', the problem"):
        w.write_shard(1, hidden[2:4], lat[2:4], _records("x")[2:4])


# --- flipped bytes: verify (and resume) catch them, open does not ---------------------------------


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # inside the last tensor's data: the header still parses
    path.write_bytes(bytes(data))


def test_flipped_bytes_inside_a_shard_are_found_by_verify_not_by_open(
    tmp_path, monkeypatch, capsys
):
    store = _store(tmp_path / "s")
    code, out, err = _cli(monkeypatch, capsys, "store", "verify", "--store", str(store))
    assert (code, err) == (0, "") and out.startswith(f"ok: {store}: 6 problems")
    before = open_store(store).hidden()
    _flip_last_byte(store / shard_name(2))
    # open reads headers only: the changed value goes unnoticed (documented in the README)
    assert not np.array_equal(open_store(store).latent_inputs(), _arrays()[1].astype(np.float16))
    np.testing.assert_array_equal(open_store(store).hidden(), before)
    with pytest.raises(OpcircuitsError) as info:
        verify_store(store)
    assert str(info.value).startswith(f"{store / shard_name(2)}: field 'sha256': the file changed")
    code, out, err = _cli(monkeypatch, capsys, "store", "verify", str(store))  # positional alias
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [f"error: {info.value}"]


def test_flipped_bytes_inside_a_kept_shard_are_found_on_resume(tmp_path):
    path = tmp_path / "s"
    _partial(path, [0, 1])
    _flip_last_byte(path / shard_name(0))
    with pytest.raises(OpcircuitsError) as info:
        StoreWriter(path, _manifest(), N, SIZE)
    assert str(info.value).startswith(f"{path / shard_name(0)}: field 'sha256': the file changed")
    # deleting the damaged shard has it written again, and the store completes
    (path / shard_name(0)).unlink()
    w = StoreWriter(path, _manifest(), N, SIZE)
    assert w.pending_shards() == [0, 2]
    hidden, lat = _arrays()
    for i in w.pending_shards():
        a, b = w.shard_bounds(i)
        w.write_shard(i, hidden[a:b], lat[a:b], _records()[a:b])
    assert verify_store(w.finalize().path).records["id"].tolist() == [r["id"] for r in _records()]


# --- issue 13 item 6: the manifest and records must not relabel the data --------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (dict(layers=[1, 2, 3, 9]), "layers"),
        (dict(positions=["latent_1", "bot", "latent_2"]), "positions"),
    ],
)
def test_layers_or_positions_relabelled_in_the_manifest_are_refused(tmp_path, change, field):
    store = _store(tmp_path / "s")
    _edit_manifest(store, **change)
    with pytest.raises(OpcircuitsError) as info:
        open_store(store)
    assert str(info.value).startswith(f"{store / shard_name(0)}: field '{field}': shard holds ")


def test_reordered_records_are_refused(tmp_path):
    store = _store(tmp_path / "s")
    rpath = store / "records.parquet"
    table = pq.read_table(rpath)
    pq.write_table(table.take(pa.array([1, 0, 2, 3, 4, 5])), rpath)
    with pytest.raises(OpcircuitsError, match=r"records.parquet: field 'records_sha256': the file"):
        open_store(store)
    # and when the manifest's hash is brought up to date too, the shards' ids still disagree
    _edit_manifest(store, records_sha256=sha256_file(rpath))
    with pytest.raises(OpcircuitsError) as info:
        open_store(store)
    assert str(info.value) == (
        f"{store / shard_name(0)}: field 'ids': row 0 is problem 'gsm_1' in records.parquet but "
        "'gsm_0' in the shard (records reordered, or a shard of other problems)"
    )


# --- issue 13 item 4: no NaN or inf in a store ----------------------------------------------------


def test_write_store_refuses_non_finite_states_naming_problems_and_sites(tmp_path):
    hidden, lat = _arrays()
    hidden[3, 1, 2, 5] = np.nan
    hidden[5, 0, 0, 0] = np.inf
    with pytest.raises(OpcircuitsError) as info:
        write_store(tmp_path / "s", hidden, _records(), LAYERS, POSITIONS, lat)
    assert str(info.value).startswith(
        "field 'hidden': hidden holds NaN or inf for 2 problem(s) ['gsm_3', 'gsm_5'] at 2 "
        "site(s) ['bot@1', 'latent_1@3']; a store refuses non-finite states"
    )
    assert not (tmp_path / "s").exists()  # nothing written
    hidden, lat = _arrays()
    lat[4, 1, 0] = -np.inf
    with pytest.raises(OpcircuitsError, match=r"\['gsm_4'\] at 1 site\(s\) \['latent_inputs\[1\]'"):
        write_store(tmp_path / "s", hidden, _records(), LAYERS, POSITIONS, lat)


def test_write_shard_refuses_non_finite_states(tmp_path):
    hidden, lat = _arrays()
    hidden[2, 2, 3, :] = np.nan
    w = StoreWriter(tmp_path / "s", _manifest(), N, SIZE)
    with pytest.raises(OpcircuitsError) as info:
        w.write_shard(1, hidden[2:4], lat[2:4], _records()[2:4])
    assert "shard 1: hidden holds NaN or inf for 1 problem(s) ['gsm_2'] at 1 site(s) " in str(
        info.value
    )
    assert "['latent_2@4']" in str(info.value)
    assert not (tmp_path / "s" / shard_name(1)).exists()
    assert w.pending_shards() == [0, 1, 2]


# --- issue 13 item 9: damaged files are one-line errors naming the file, exit 2 -------------------


def _wrong_type(store: Path) -> Path:
    rpath = store / "records.parquet"
    table = pq.read_table(rpath)
    i = table.column_names.index("gold")
    gold = pa.array([str(x) for x in range(N)])
    pq.write_table(table.set_column(i, "gold", gold), rpath)
    _edit_manifest(store, records_sha256=sha256_file(rpath))
    return rpath


def _truncated_records(store: Path) -> Path:
    rpath = store / "records.parquet"
    rpath.write_bytes(rpath.read_bytes()[:-100])
    _edit_manifest(store, records_sha256=sha256_file(rpath))
    return rpath


def _truncated_shard(store: Path) -> Path:
    spath = store / shard_name(1)
    spath.write_bytes(spath.read_bytes()[:-7])
    return spath


def _not_json(store: Path) -> Path:
    (store / "manifest.json").write_text('{"layers": [1, 2,\n')
    return store / "manifest.json"


def _wrong_manifest_type(store: Path) -> Path:
    _edit_manifest(store, n_problems="six")
    return store / "manifest.json"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_wrong_type, "field 'gold': column has type string, expected double"),
        (_truncated_records, "not a readable parquet file, truncated or corrupt"),
        (_truncated_shard, "unreadable shard, truncated or not a safetensors file"),
        (_not_json, "not valid JSON"),
        (_wrong_manifest_type, "field 'n_problems': must be an integer >= 0, got 'six'"),
    ],
)
def test_damaged_store_files_are_one_line_errors_naming_the_file(
    tmp_path, monkeypatch, capsys, damage, message
):
    store = _store(tmp_path / "s")
    path = damage(store)
    with pytest.raises(OpcircuitsError) as info:
        open_store(store)
    assert str(info.value).startswith(f"{path}") and message in str(info.value)
    for command in ("info", "verify"):
        code, out, err = _cli(monkeypatch, capsys, "store", command, str(store))
        assert (code, out) == (2, "")
        assert err.strip().splitlines() == [f"error: {info.value}"]
