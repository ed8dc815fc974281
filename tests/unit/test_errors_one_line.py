"""Every error the CLI prints is one line (issue 25 item 4): a message of several lines (a
library's, a value holding a newline) has its lines joined, a line break in a path or a key is
shown as \\n, and a failing stage shows its cause's first line and where the rest is."""

from __future__ import annotations

from pathlib import Path

from cli_runner import one_error_line, run_cli

from opcircuits.errors import OpcircuitsError
from opcircuits.pipeline.engine import StageError


def test_a_message_of_several_lines_is_printed_as_one():
    exc = OpcircuitsError("cannot load the base model:\n  first reason\n\nsecond", path="a\nb")
    assert str(exc) == "a\\nb: cannot load the base model: first reason second"
    assert exc.message == "cannot load the base model: first reason second"
    assert "\n" not in str(OpcircuitsError("x", field="run.\nmode"))


def test_a_failing_stage_shows_the_first_line_of_its_cause_and_where_the_rest_is(tmp_path):
    log = tmp_path / "run.log"
    exc = StageError("extract", ValueError("shapes differ:\n  (2, 3)\n  (3, 2)"), log)
    assert str(exc) == f"stage 'extract' failed: ValueError: shapes differ: … (traceback in {log})"
    wrapped = StageError("extract", OpcircuitsError("one\ntwo", path=tmp_path))
    assert str(wrapped) == f"stage 'extract' failed: {tmp_path}: one two"


def test_a_path_holding_a_newline_is_one_line(tmp_path):
    code, _, err = run_cli("store", "info", str(tmp_path / "my\nstore"))
    assert code == 2
    line = one_error_line(err)
    assert line == f"error: {tmp_path}/my\\nstore: not a thought store (no manifest.json)"


def test_a_value_holding_a_newline_is_one_line(tmp_path):
    code, _, err = run_cli("run", "--mode", "proto\ntype", "--out", str(tmp_path / "r"))
    assert code == 2 and "unknown mode 'proto type'" in one_error_line(err)
    config = tmp_path / "x.toml"
    config.write_text('[extract]\n"batch\\nsize" = 3\n')
    code, _, err = run_cli("run", "--config", str(config), "--out", str(tmp_path / "r"))
    assert code == 2 and "field 'extract.batch\\nsize'" in one_error_line(err)
    assert not Path(tmp_path / "r").exists()
