"""The shared file helpers every command writes through: atomic folders that replace only what
opcircuits wrote, outputs that may not be inputs, UTF-8 input, one-line disk errors."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from cli_runner import tree

from opcircuits.errors import OpcircuitsError
from opcircuits.files import (
    OWNED_LIST,
    atomic_dir,
    atomic_path,
    check_replaceable,
    read_json_object,
    read_text,
    refuse_same_files,
    remove_owned,
    text_lines,
    write_text_atomic,
)


def write_report(folder: Path, text: str) -> None:
    with atomic_dir(folder) as scratch:
        (scratch / "figs").mkdir()
        (scratch / "figs" / "a.png").write_bytes(b"png")
        write_text_atomic(scratch / "report.html", text)


def test_atomic_dir_lists_what_it_wrote_and_replaces_only_its_own_folder(tmp_path):
    out = tmp_path / "analysis"
    write_report(out, "v1")
    assert tree(out)["report.html"] == b"v1"
    assert read_json_object(out / OWNED_LIST) == {"files": ["figs/a.png", "report.html"]}
    write_report(out, "v2")  # ours: replaced whole
    assert tree(out)["report.html"] == b"v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["analysis"]  # no scratch left

    (out / "figs" / "notes.txt").write_text("mine")
    before = tree(out)
    with pytest.raises(OpcircuitsError, match="not written by opcircuits") as info:
        write_report(out, "v3")
    assert info.value.path == str(out / "figs" / "notes.txt")
    assert tree(out) == before
    with pytest.raises(OpcircuitsError, match="not written by opcircuits"):
        remove_owned(out)
    assert tree(out) == before
    (out / "figs" / "notes.txt").unlink()
    remove_owned(out)
    assert not out.exists()


def test_a_folder_opcircuits_did_not_write_is_never_replaced(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(OpcircuitsError, match="nothing was changed") as info:
        check_replaceable(mine)
    assert info.value.path == str(mine / "thesis.tex")
    empty = tmp_path / "empty"
    empty.mkdir()
    write_report(empty, "ok")  # an empty folder holds nothing to lose
    a_file = tmp_path / "report"
    a_file.write_text("x")
    with pytest.raises(OpcircuitsError, match="exists and is not a folder"):
        write_report(a_file, "x")
    assert a_file.read_text() == "x"


def test_a_failure_half_way_leaves_the_previous_folder_and_no_scratch(tmp_path):
    out = tmp_path / "analysis"
    write_report(out, "old")
    before = tree(out)
    with pytest.raises(RuntimeError), atomic_dir(out) as scratch:
        (scratch / "report.html").write_text("new")
        raise RuntimeError("crash half-way")
    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["analysis"]


def test_atomic_dir_through_a_symlink_replaces_the_real_folder(tmp_path):
    real, link = tmp_path / "real", tmp_path / "link"
    write_report(real, "v1")
    link.symlink_to(real)
    write_report(link, "v2")
    assert link.is_symlink() and (real / "report.html").read_text() == "v2"


def test_disk_full_while_writing_is_one_line_naming_the_file_and_the_space(tmp_path, monkeypatch):
    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    target = tmp_path / "out" / "report.html"
    with pytest.raises(OpcircuitsError) as info:
        write_text_atomic(target, "x" * 5000)
    assert info.value.path == str(target)
    assert info.value.message.startswith("no space left on the disk (needs 4.9 KB, ")
    assert info.value.message.endswith(" free)")
    assert not target.exists() and os.listdir(target.parent) == []


def test_permission_denied_names_the_path(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("opcircuits.files.tempfile.mkstemp", denied)
    with pytest.raises(OpcircuitsError) as info, atomic_path(tmp_path / "x.json"):
        pass
    assert str(info.value) == f"{tmp_path / 'x.json'}: permission denied"
    monkeypatch.setattr("opcircuits.files.tempfile.mkdtemp", denied)
    with pytest.raises(OpcircuitsError, match="permission denied"), atomic_dir(tmp_path / "d"):
        pass


def test_other_os_errors_are_not_disguised_as_user_errors(tmp_path):
    with pytest.raises(OSError) as info, atomic_path(tmp_path / "x"):
        raise OSError(errno.EIO, "I/O error")
    assert not isinstance(info.value, OpcircuitsError)


@pytest.mark.parametrize("spelling", ["same", "dot", "symlink", "hardlink"])
def test_an_output_that_is_an_input_is_refused_however_it_is_spelled(tmp_path, spelling):
    src = tmp_path / "problems.jsonl"
    src.write_text("{}\n")
    out = {
        "same": src,
        "dot": tmp_path / "." / "problems.jsonl",
        "symlink": tmp_path / "link.jsonl",
        "hardlink": tmp_path / "hard.jsonl",
    }[spelling]
    if spelling == "symlink":
        out.symlink_to(src)
    if spelling == "hardlink":
        os.link(src, out)
    with pytest.raises(OpcircuitsError, match="would overwrite the input --data") as info:
        refuse_same_files({"out": out}, {"--data": src})
    assert info.value.field == "out"
    # A folder output holding an input would be replaced with it; distinct paths pass.
    with pytest.raises(OpcircuitsError, match="input --store"):
        refuse_same_files({"out": tmp_path}, {"--store": src})
    refuse_same_files({"out": tmp_path / "other.jsonl"}, {"--data": src, "--none": None})


def test_bytes_that_are_not_utf8_name_the_file_line_and_column(tmp_path):
    bad = tmp_path / "problems.jsonl"
    bad.write_bytes(b'{"id": "a"}\n{"id": "caf\xe9"}\n')
    with pytest.raises(OpcircuitsError) as info:
        read_text(bad)
    assert str(info.value) == f"{bad}:2: not UTF-8 text: byte 0xe9 at column 12"
    lines = text_lines(bad)
    assert next(lines) == (1, '{"id": "a"}\n')
    with pytest.raises(OpcircuitsError) as info:
        next(lines)
    assert str(info.value) == f"{bad}:2: not UTF-8 text: byte 0xe9 at column 12"
    manifest = tmp_path / "manifest.json"
    manifest.write_bytes(b'{"model": "\xff"}')
    with pytest.raises(OpcircuitsError, match=r"manifest.json:1: not UTF-8 text: byte 0xff"):
        read_json_object(manifest)


def test_sweep_stale_removes_only_our_interrupted_writes_and_only_old_ones(tmp_path):
    import time

    from opcircuits.scratch import sweep_stale

    old = time.time() - 3600
    ours = [tmp_path / ".x.jsonl.ab_cd12z.tmp", tmp_path / "sub" / ".m.json.00aa11bb.tmp"]
    folders = [tmp_path / ".analysis.q1w2e3r4.tmp", tmp_path / ".analysis.0a1b2c3d.old"]
    others = [tmp_path / "x.tmp", tmp_path / ".notes.tmp", tmp_path / ".a.toolongname.tmp"]
    for path in ours + others + [f / "inner.txt" for f in folders]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    for path in ours + folders:
        os.utime(path, (old, old))
    fresh = tmp_path / ".y.jsonl.fresh123.tmp"
    fresh.write_text("being written")
    assert sweep_stale(tmp_path, older_than=600) == 3  # not recursive: sub/ keeps its file
    assert (tmp_path / "sub" / ".m.json.00aa11bb.tmp").exists()
    assert sweep_stale(tmp_path, older_than=600, recursive=True) == 1
    assert not any(p.exists() for p in ours + folders)
    assert all(p.exists() for p in others) and fresh.exists()
    assert sweep_stale(tmp_path) == 1 and not fresh.exists()  # age 0: a locked folder
