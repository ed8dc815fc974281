"""The experiment config of `opcircuits run`: strict keys, types, CLI precedence, round trip."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from opcircuits.cli import main
from opcircuits.errors import OpcircuitsError
from opcircuits.pipeline.config import TABLES, default_schema, dump_toml, example_toml, resolve

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def schema():
    return default_schema()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_example_lists_every_option_with_its_default(schema):
    example = REPO / "experiment.toml"
    shipped = resolve(example, schema=schema)
    defaults = resolve(None, schema=schema)
    assert shipped.tables == defaults.tables  # the example documents, it does not change defaults
    text = example.read_text(encoding="utf-8")
    for table in TABLES:
        body = re.search(rf"^\[{table}\]\n(.*?)(?=^\[|\Z)", text, re.S | re.M)
        assert body, f"[{table}] missing from experiment.toml"
        for key in schema[table]:
            assert re.search(rf"^#? ?{key} = ", body.group(1), re.M), (
                f"[{table}] {key} undocumented"
            )


def test_shipped_example_is_generated_from_the_options(schema):
    """Every key of experiment.toml exists in the schema and vice versa, with the help texts and
    defaults of the option dataclasses (regenerate it with the command in its header)."""
    shipped = (REPO / "experiment.toml").read_text(encoding="utf-8")
    assert shipped == example_toml(schema), "experiment.toml is stale: regenerate it"
    keys = {t: set(tomllib.loads(shipped).get(t, {})) for t in TABLES}
    commented = {
        t: set(re.findall(r"^# (\w+) = ", body, re.M))
        for t, body in re.findall(r"^\[(\w+)\]\n(.*?)(?=^\[|\Z)", shipped, re.S | re.M)
    }
    for table in TABLES:
        assert keys[table] | commented[table] == set(schema[table]), table


def test_flags_of_run_are_the_stage_options_reused(schema):
    """`run` offers each config key as a flag generated from the same field (no re-declaration):
    the same help text as the stage command's option."""
    from opcircuits.cli_options import plan
    from opcircuits.pipeline.config import RUN_GROUPS

    params = plan(RUN_GROUPS, overrides=True)
    flags = {p.flag for p in params if p.alias_of is None}
    assert {"--data", "--layers", "--analyze-layers", "--checkpoint", "--seed", "--force"} <= flags
    assert "--source" in {p.flag for p in params if p.alias_of is not None}
    n_keys = sum(len(keys) for keys in schema.values())
    # every key but [analyze] seed (set by --seed) is a flag; force and config are flags only
    assert len(flags) == n_keys - 1 + 2


def test_typo_in_a_key_names_file_table_key_and_suggests(tmp_path, schema):
    path = write(tmp_path, '[run]\nmode = "full"\n\n[extract]\nmodel = "demo"\nbatch_szie = 8\n')
    with pytest.raises(OpcircuitsError) as info:
        resolve(path, schema=schema)
    err = info.value
    assert err.path == str(path) and err.line == 6 and err.field == "extract.batch_szie"
    assert "unknown key 'batch_szie' in [extract]" in str(err)
    assert "did you mean 'batch_size'?" in str(err)


def test_key_in_the_wrong_table_says_where_it_belongs(tmp_path, schema):
    path = write(tmp_path, "[data]\nbatch_size = 8\n")
    with pytest.raises(OpcircuitsError, match=r"'batch_size' belongs in \[extract\]"):
        resolve(path, schema=schema)


def test_unknown_table_and_top_level_key(tmp_path, schema):
    with pytest.raises(OpcircuitsError, match=r"unknown table \[extact\]; did you mean 'extract'"):
        resolve(write(tmp_path, "[extact]\nbatch_size = 8\n"), schema=schema)
    with pytest.raises(OpcircuitsError, match=r"'folds' belongs in \[analyze\]") as info:
        resolve(write(tmp_path, "folds = 3\n"), schema=schema)
    assert info.value.line == 1


def test_paths_the_run_owns_cannot_be_set(tmp_path, schema):
    with pytest.raises(OpcircuitsError, match="set by the run itself"):
        resolve(write(tmp_path, '[extract]\ndataset = "x.jsonl"\n'), schema=schema)
    # [data] is made of several option groups: each one's run-owned keys are named as such
    for key in ("in_path", "synth_split"):
        with pytest.raises(OpcircuitsError, match=f"'{key}' in \\[data\\] is set by the run"):
            resolve(write(tmp_path, f'[data]\n{key} = "x"\n'), schema=schema)


def test_unknown_mode_from_file_and_from_the_command_line(tmp_path, schema):
    path = write(tmp_path, '[run]\nmode = "protoype"\n')
    with pytest.raises(
        OpcircuitsError, match="unknown mode 'protoype'; did you mean 'prototype'"
    ) as info:
        resolve(path, schema=schema)
    assert info.value.path == str(path) and info.value.line == 2
    with pytest.raises(OpcircuitsError, match="unknown mode 'analysis'"):
        resolve(path, {"run": {"mode": "analysis"}}, schema=schema)
    # The flag overrides the file's bad value.
    assert resolve(path, {"run": {"mode": "full"}}, schema=schema).mode == "full"


@pytest.mark.parametrize(
    ("table", "key", "value", "message"),
    [
        ("extract", "batch_size", 0, "must be at least 1, got 0"),
        ("extract", "batch_size", "32", "expected int, got str"),
        ("extract", "shard_size", -4, "must be at least 1"),
        ("data", "per_category", 0, "must be at least 1"),
        ("data", "match_steps", 1, "expected bool, got int"),
        ("analyze", "folds", 1, "must be at least 2"),
        ("analyze", "permutations", -1, "must be at least 0"),
        ("extract", "layers", "4,x", "expected comma-separated integers or 'all', got '4,x'"),
        ("extract", "dtype", "float8", "must be one of float32, bfloat16, float16"),
        ("analyze", "jobs", 0, "must be ≥ 1 or -1"),
    ],
)
def test_bad_values_are_rejected_from_file_and_flags(tmp_path, schema, table, key, value, message):
    literal = f'"{value}"' if isinstance(value, str) else str(value).lower()
    path = write(tmp_path, f"[{table}]\n{key} = {literal}\n")
    with pytest.raises(OpcircuitsError, match=message) as info:
        resolve(path, schema=schema)
    assert info.value.field == f"{table}.{key}" and info.value.line == 2
    with pytest.raises(OpcircuitsError, match=message) as info:
        resolve(None, {table: {key: value}}, schema=schema)
    assert "the command line" in str(info.value)


def test_command_line_overrides_the_file_and_none_means_not_given(tmp_path, schema):
    path = write(tmp_path, "[extract]\nbatch_size = 8\nshard_size = 16\n[data]\nseed = 7\n")
    cfg = resolve(path, {"extract": {"batch_size": 4, "shard_size": None}}, schema=schema)
    assert cfg.tables["extract"]["batch_size"] == 4
    assert cfg.tables["extract"]["shard_size"] == 16
    assert cfg.tables["data"]["seed"] == 7
    assert cfg.overridden == {"extract": ["batch_size"]}


def test_invalid_toml_is_a_user_error(tmp_path, schema):
    path = write(tmp_path, "[extract\nbatch_size = 8\n")
    with pytest.raises(OpcircuitsError, match="not valid TOML") as info:
        resolve(path, schema=schema)
    assert info.value.path == str(path)
    with pytest.raises(OpcircuitsError, match="config file not found"):
        resolve(tmp_path / "missing.toml", schema=schema)


def test_resolved_config_round_trips_through_toml(tmp_path, schema):
    path = write(
        tmp_path,
        '[run]\nmode = "full"\nout = "runs/x y"\n[data]\nsource = "C:\\\\data\\\\gsm \\"8k\\""\n'
        "[extract]\nlayers = [1, 2]\nbatch_size = 3\n[analyze]\nfolds = 2\npermutations = 0\n",
    )
    first = resolve(path, {"analyze": {"repeats": 1}}, schema=schema)
    assert first.tables["data"]["source"] == 'C:\\data\\gsm "8k"'
    again_path = tmp_path / "resolved.toml"
    again_path.write_text(first.to_toml(), encoding="utf-8")
    again = resolve(again_path, schema=schema)
    assert again.tables == first.tables
    assert again.tables["run"]["out"] == Path("runs/x y")


def test_dump_toml_writes_none_as_a_comment_and_is_parseable():
    text = dump_toml({"t": {"a": None, "b": [1, 2], "c": 0.5, "d": True, "e": "é\n"}})
    assert "# a = " in text
    assert tomllib.loads(text) == {"t": {"b": [1, 2], "c": 0.5, "d": True, "e": "é\n"}}


def test_cli_reports_a_config_typo_in_one_line_with_exit_code_2(tmp_path, monkeypatch, capsys):
    path = write(tmp_path, "[analyze]\nfold = 3\n")
    monkeypatch.setattr("sys.argv", ["opcircuits", "run", "--config", str(path)])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert (
        f"{path}:2: field 'analyze.fold': unknown key 'fold' in [analyze]; did you mean 'folds'?"
        in err
    )


def test_cli_rejects_an_unknown_mode(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["opcircuits", "run", "--mode", "fulll"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    assert "unknown mode 'fulll'; did you mean 'full'?" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("batch_size", "32", "expected int, got str"),
        ("batch_size", 0, "must be at least 1, got 0"),
        ("merge", 1, "expected bool, got int"),
        ("dtype", "float8", "must be one of float32, bfloat16, float16, got 'float8'"),
        ("layers", "4,x", "expected comma-separated integers or 'all', got '4,x'"),
    ],
)
def test_config_and_options_classes_check_values_with_one_engine(
    tmp_path, schema, key, value, message
):
    """The same wrong value gives the same message from an options class (Python, CLI) and from
    the config file, which adds only where it came from."""
    from opcircuits.options import ExtractOptions

    with pytest.raises(OpcircuitsError) as direct:
        ExtractOptions(dataset=Path("d.jsonl"), out=Path("s"), **{key: value})
    assert direct.value.message == message and direct.value.field == key
    literal = f'"{value}"' if isinstance(value, str) else str(value).lower()
    path = write(tmp_path, f"[extract]\n{key} = {literal}\n")
    with pytest.raises(OpcircuitsError) as from_file:
        resolve(path, schema=schema)
    assert from_file.value.message == f"{message} (from the config file)"
