"""`opcircuits data download`: all of GSM8K from a local copy (JSONL or parquet), and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from opcircuits.cli import main
from opcircuits.data.gsm8k import download, load_local
from opcircuits.errors import OpcircuitsError


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """The real console entry point, in process; returns its exit code."""
    monkeypatch.setattr(sys, "argv", ["opcircuits", *args])
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture(scope="module")
def records(gsm8k_dir: Path) -> list[dict]:
    return load_local(gsm8k_dir)


def test_all_problems_in_order(records: list[dict], gsm8k_dir: Path) -> None:
    assert len(records) == 1319 + 7473
    test = [r for r in records if r["split"] == "test"]
    train = [r for r in records if r["split"] == "train"]
    assert len(test) == 1319 and len(train) == 7473
    assert records[:1319] == test  # test first, then train
    assert [r["id"] for r in test] == [f"test_{i}" for i in range(1319)]
    assert [r["id"] for r in train] == [f"train_{i}" for i in range(7473)]
    # Original order and text: compare with the release file line by line.
    with open(gsm8k_dir / "train.jsonl", encoding="utf-8") as fh:
        originals = [json.loads(line) for line in fh]
    assert [(r["question"], r["answer"]) for r in train] == [
        (o["question"], o["answer"]) for o in originals
    ]
    first = records[0]
    assert first["question"].startswith("Janet")
    assert first["final_answer"] == "18" and first["final_value"] == 18
    assert first["steps"] == [{"expr": "16-3-4", "result": "9"}, {"expr": "9*2", "result": "18"}]
    assert list(first) == [
        "id",
        "split",
        "question",
        "answer",
        "final_answer",
        "final_value",
        "steps",
    ]
    for r in records:
        assert "," not in r["final_answer"]
        assert float(r["final_answer"]) == r["final_value"]
        assert len(r["steps"]) == r["answer"].count("<<")


def test_download_cli_writes_jsonl(
    tmp_path: Path, gsm8k_dir: Path, records: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "data" / "gsm8k_full.jsonl"
    assert (
        run_cli(["data", "download", "--source", str(gsm8k_dir), "--out", str(out)], monkeypatch)
        == 0
    )
    # Split on "\n" only: questions contain U+2028, which str.splitlines() also breaks on.
    lines = out.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""
    assert [json.loads(line) for line in lines[:-1]] == records
    # and the manifest that proves the file is ours, so a later download may replace it
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "gsm8k_full.jsonl",
        "gsm8k_full.manifest.json",
    ]


def test_parquet_source_matches_jsonl(tmp_path: Path, records: list[dict]) -> None:
    # The hub's layout: one folder per config, shards named {split}-0000N-of-0000M.parquet.
    for config in ("main", "socratic"):
        for split in ("train", "test"):
            rows = [r for r in records if r["split"] == split]
            if split == "train":  # two shards, to check ids run on across them
                shards = [rows[:4000], rows[4000:]]
            else:
                shards = [rows]
            for k, part in enumerate(shards):
                table = pa.table(
                    {
                        "question": [r["question"] for r in part],
                        "answer": [r["answer"] + ("" if config == "main" else " ") for r in part],
                    }
                )
                path = tmp_path / config / f"{split}-{k:05d}-of-{len(shards):05d}.parquet"
                path.parent.mkdir(exist_ok=True)
                pq.write_table(table, path)
    assert load_local(tmp_path) == records


def write_split(folder: Path, lines: list[str]) -> None:
    """A local copy whose test.jsonl is `lines` (train.jsonl: its first real problem)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")


GOOD = json.dumps({"question": "What is 2+3?", "answer": "2+3=<<2+3=5>>5\n#### 5"})


@pytest.mark.parametrize(
    ("bad", "field", "words"),
    [
        ('{"question": "What is 2+3?", "answer": ', None, "malformed JSON"),
        (json.dumps({"question": "What is 2+3?"}), "answer", "missing field"),
        (json.dumps({"answer": "5\n#### 5"}), "question", "missing field"),
        (json.dumps({"question": "Q?", "answer": "2+3=<<2+3=5>>5"}), "answer", "'####'"),
        (
            json.dumps({"question": "Q?", "answer": "<<2+3=5>>5\n#### five"}),
            "answer",
            "not a number",
        ),
        (
            json.dumps({"question": "Q?", "answer": "<<2+3=5>>5\n#### 5/2"}),
            "answer",
            "not a number",
        ),
        ("[1, 2]", None, "expected a JSON object"),
    ],
)
def test_bad_input_names_file_line_field(
    tmp_path: Path,
    gsm8k_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    bad: str,
    field: str | None,
    words: str,
) -> None:
    src = tmp_path / "src"
    write_split(src, [GOOD, GOOD, bad, GOOD])
    (src / "train.jsonl").write_text(
        (gsm8k_dir / "train.jsonl").read_text(encoding="utf-8").splitlines()[0] + "\n",
        encoding="utf-8",
    )
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code = run_cli(
        ["data", "download", "--source", str(src), "--out", str(out_dir / "g.jsonl")], monkeypatch
    )
    err = capsys.readouterr().err
    assert code == 2
    assert f"{src / 'test.jsonl'}:3: " in err
    if field:
        assert f"field '{field}'" in err
    assert words in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert list(out_dir.iterdir()) == []  # no output, no temporary file left behind


def test_failed_download_keeps_previous_output(tmp_path: Path, gsm8k_dir: Path) -> None:
    out = tmp_path / "g.jsonl"
    download(str(gsm8k_dir), out)  # an earlier download of ours
    previous = out.read_bytes()
    write_split(tmp_path / "src", [GOOD])
    with pytest.raises(OpcircuitsError, match="train"):
        download(str(tmp_path / "src"), out)  # no train split
    assert out.read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.jsonl", "g.manifest.json", "src"]


def test_download_never_overwrites_a_file_it_did_not_write(tmp_path: Path, gsm8k_dir: Path) -> None:
    out = tmp_path / "g.jsonl"
    out.write_text("the user's own notes\n", encoding="utf-8")
    with pytest.raises(OpcircuitsError, match="nothing was changed") as err:
        download(str(gsm8k_dir), out)
    assert err.value.path == str(out)
    assert out.read_text(encoding="utf-8") == "the user's own notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.jsonl"]
    out.unlink()
    download(str(gsm8k_dir), out)
    download(str(gsm8k_dir), out)  # its own output, recorded in the manifest: replaced
    assert out.read_text(encoding="utf-8").count("\n") == 8792  # U+2028 is no line break here


def test_missing_source_folder(tmp_path: Path) -> None:
    with pytest.raises(OpcircuitsError, match="--source"):
        download(str(tmp_path / "nowhere"), tmp_path / "g.jsonl")


def test_offline_hub_says_how_to_use_a_local_copy(tmp_path: Path) -> None:
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf")
    )
    out = tmp_path / "g.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "opcircuits", "data", "download", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "openai/gsm8k" in proc.stderr and "--source ../shared/data/gsm8k" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()
