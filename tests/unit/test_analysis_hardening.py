"""Hostile inputs to `analyze`: non-finite states in a store's shard, names that are markup or
mathtext, and a killed parent whose worker processes must not live on."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from markdown_it import MarkdownIt
from synthetic_store import LAYERS, make_store

from opcircuits.errors import OpcircuitsError
from opcircuits.options import AnalyzeOptions
from opcircuits.report.analyze import analyze
from opcircuits.store import open_store, write_store

QUICK = dict(folds=3, repeats=1, permutations=0, seed=0, jobs=1)


def _poke_nan(store: Path, row: int, position: int, layer: int) -> None:
    """Overwrite one stored value with NaN in place, as a flipped byte on disk would."""
    shard = store / "hidden-00000.safetensors"
    raw = bytearray(shard.read_bytes())
    (size,) = struct.unpack("<Q", raw[:8])
    entry = json.loads(raw[8 : 8 + size])["hidden"]
    assert entry["dtype"] == "F32"
    _, n_pos, n_lay, dim = entry["shape"]
    index = ((row * n_pos + position) * n_lay + layer) * dim
    at = 8 + size + entry["data_offsets"][0] + 4 * index
    raw[at : at + 4] = struct.pack("<f", float("nan"))
    shard.write_bytes(bytes(raw))


def test_non_finite_states_are_an_error_naming_problems_and_sites(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", "noise")
    _poke_nan(store, row=7, position=1, layer=1)
    with pytest.raises(OpcircuitsError) as err:
        analyze(store, tmp_path / "out", AnalyzeOptions(**QUICK))
    message = str(err.value)
    assert "non-finite" in message and "test_7" in message and "latent_1@5" in message
    assert not (tmp_path / "out" / "analysis_report.json").exists()
    # Positions or layers without the bad value analyze as usual.
    rep = analyze(store, tmp_path / "ok", AnalyzeOptions(**{**QUICK, "layers": [2]}))
    assert rep["data"]["layers"] == [2]


def _renamed(base: Path, positions: list[str], mixed: str, model: str) -> tuple[Path, dict]:
    """The planted store with other position, category and model names, analyzed."""
    src = open_store(make_store(base / "src", "planted"))
    recs = src.records.copy()
    recs["category"] = recs["category"].replace({"mixed": mixed})
    store = base / "store"
    write_store(store, src.hidden(), recs, LAYERS, positions, model=model, store_dtype="float32")
    return base / "out", analyze(store, base / "out", AnalyzeOptions(**QUICK))


def test_mathtext_in_names_does_not_break_the_figures(tmp_path: Path) -> None:
    positions = ["bot", r"latent_$\oops{$", "latent_2"]
    out, report = _renamed(tmp_path, positions, r"$x^$ mixed", "m")
    assert {f["file"] for f in report["figures"]} >= {"token_layer_map.png", "pca.png"}
    for f in report["figures"]:
        assert (out / f["file"]).read_bytes()[:4] == b"\x89PNG"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A store whose model, position and category names are Markdown and HTML."""
    positions = ["bot", "latent_<img src=x onerror=alert(1)>", "latent_`|2` # x"]
    model = "<script>alert('m')</script> *model* | `x`"
    return _renamed(tmp_path_factory.mktemp("hostile"), positions, "**mixed** <b>bold</b>", model)


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_summary_markdown_shows_names_as_text(hostile: tuple[Path, dict]) -> None:
    out, _ = hostile
    md = (out / "ANALYSIS_SUMMARY.md").read_text(encoding="utf-8")
    parser = MarkdownIt("commonmark").enable("table")
    html = parser.render(md)
    tags = _Tags()
    tags.feed(html)
    # Only the structure the template writes: no tag, heading or emphasis from the data.
    allowed = {"h1", "h2", "ul", "li", "p", "code", "a", "table", "thead", "tbody", "tr", "th"}
    assert tags.tags <= allowed | {"td"}, tags.tags - allowed
    text = "".join(tags.text)
    assert "<script>alert('m')</script> *model* | `x`" in text
    assert "latent_<img src=x onerror=alert(1)>" in text
    assert "latent_`|2` # x" in text
    assert "**mixed** <b>bold</b>" in text
    # A `|` in a name does not split a table cell: every row has its header's columns.
    tables: list[list[int]] = []
    for tok in parser.parse(md):
        if tok.type == "table_open":
            tables.append([])
        elif tok.type == "tr_open":
            tables[-1].append(0)
        elif tok.type in ("th_open", "td_open"):
            tables[-1][-1] += 1
    assert len(tables) == 3  # probes, controls, token × layer map
    for rows in tables:
        assert len(set(rows)) == 1, rows


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent has not collected it


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_workers_end_when_the_analysing_process_is_killed(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", "planted")
    # Enough work that the workers are busy when their parent is killed.
    opts = "folds=3, repeats=3, permutations=3000, jobs=2"
    code = (
        "from opcircuits.report.analyze import analyze\n"
        "from opcircuits.options import AnalyzeOptions\n"
        f"analyze({str(store)!r}, {str(tmp_path / 'out')!r}, AnalyzeOptions({opts}))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            workers = [
                c
                for c in _children(proc.pid)
                if b"loky" in Path(f"/proc/{c}/cmdline").read_bytes()
                and b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes()
            ]
            if len(workers) >= 2:
                break
            time.sleep(0.2)
        assert len(workers) >= 2, "the analysis never started its worker processes"
        time.sleep(5)  # let them start on their tasks
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        # A worker still starting (imports are slow on a loaded machine) notices once started;
        # without the watch they would wait for tasks for loky's 300 s idle timeout.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.2)
        assert not [w for w in workers if _alive(w)], "worker processes outlived their parent"
    finally:
        if proc.poll() is None:
            proc.kill()
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)
