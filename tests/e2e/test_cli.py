"""The console entry point: how user errors, usage errors and interrupts end a command."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from typer.testing import CliRunner


def _opcircuits(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "opcircuits", *args], capture_output=True, text=True, timeout=120
    )


def test_unknown_option_is_a_usage_error_without_traceback():
    res = _opcircuits("extract", "--bogus")
    assert res.returncode == 2
    assert "No such option: --bogus" in res.stderr
    assert "Traceback" not in res.stderr


def test_bad_option_value_names_the_option():
    res = _opcircuits("data", "classify", "--per-category", "x")
    assert res.returncode == 2
    assert "--per-category" in res.stderr
    assert "Traceback" not in res.stderr


def test_user_error_is_one_line_naming_the_field():
    res = _opcircuits("run", "--mode", "nope")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "error: field 'mode': unknown mode 'nope'; choose one of prototype, full, analysis_only"
    ]


# --- the same names for the same things in every command -----------------------------------------

# commands that run (doctor: load) a CODI model
MODEL_COMMANDS = {
    "extract", "run", "evaluate", "intervene", "attribute", "doctor", "lens train", "das",
}  # fmt: skip
DATA_IN = {
    "data download", "data classify", "data prototype", "extract", "run", "train", "evaluate",
    "new-base", "intervene", "attribute", "das",
}  # fmt: skip
STORE_IN = {"analyze", "store info", "store verify", "store import-legacy", "run", "lens train"}
OLD_SPELLINGS = {"--dataset", "--in", "--source", "--input", "--output", "--out-dir"}


def _commands() -> dict[str, Any]:
    from typer.main import get_command

    from opcircuits.cli import app

    found: dict[str, Any] = {}

    def walk(cmd: Any, path: list[str]) -> None:
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                walk(sub, [*path, name])
        else:
            found[" ".join(path)] = cmd

    walk(get_command(app), [])
    return found


def _visible(cmd: Any) -> set[str]:
    return {o for p in cmd.params if not p.hidden for o in (*p.opts, *p.secondary_opts)}


def test_every_command_spells_the_same_things_the_same_way():
    from opcircuits.cli import app

    commands = _commands()
    assert set(commands) == DATA_IN | STORE_IN | {"data synth", "doctor"}
    runner = CliRunner()
    for name, cmd in commands.items():
        flags = _visible(cmd)
        assert not flags & OLD_SPELLINGS, name
        assert ("--data" in flags) == (name in DATA_IN), name
        assert ("--store" in flags) == (name in STORE_IN), name
        # the commands that only report: doctor's optional copy of its screen is --json
        assert ("--out" in flags) == (name not in ("store info", "store verify", "doctor")), name
        assert ({"--device", "--dtype"} <= flags) == (name in MODEL_COMMANDS), name
        if name in MODEL_COMMANDS:
            assert "--model" in flags, name
        # no visible positional argument: inputs are named options (old positionals are hidden)
        assert all(p.hidden for p in cmd.params if not p.opts[0].startswith("-")), name
        text = runner.invoke(app, [*name.split(), "--help"], env={"COLUMNS": "200"}).output
        for flag in flags - {"--help"}:
            assert flag in text, (name, flag)
        for old in OLD_SPELLINGS:
            assert f"{old} " not in text, (name, old)


def test_lists_are_comma_or_repeated_the_same_way_everywhere():
    from opcircuits.options import EvaluateOptions, ExtractOptions, split_list

    assert split_list("4,8,14") == split_list(["4,8", "14"]) == split_list([4, 8, 14]) == [4, 8, 14]
    assert split_list("all") is None and split_list(None) is None
    assert EvaluateOptions(num_latent="6, 0").num_latent == [6, 0]
    assert ExtractOptions(dataset="d", out="o", layers="all").layers == "all"
    assert ExtractOptions(dataset="d", out="o", layers=["1,2", "3"]).layers == [1, 2, 3]
    res = _opcircuits("evaluate", "--num-latent", "6,x")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "error: field 'num_latent': expected comma-separated integers or 'all', got '6,x'"
    ]


# --- commands without tests elsewhere -------------------------------------------------------------


def _invoke(*args: str) -> str:
    from opcircuits.cli import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_evaluate_reproduces_the_demo_reference_answers(gsm8k_dir, tmp_path):
    """The shipped demo's student answers (recorded with max_new_tokens 24 when it was built)
    come back through `evaluate`, K given as repeated options; K = 0 is measured too."""
    from opcircuits.codi.config import demo_dir
    from opcircuits.codi.evaluate import REFERENCE_NAME

    ref = json.loads((demo_dir() / REFERENCE_NAME).read_text())
    n = 5
    out = tmp_path / "acc.json"
    printed = _invoke(
        "evaluate", "--model", "demo", "--data", str(gsm8k_dir / "test.jsonl"),
        "--limit", str(n), "--num-latent", "6", "--num-latent", "0", "--no-teacher",
        "--max-new-tokens", str(ref["max_new_tokens"]), "--device", "cpu", "--dtype", "float32",
        "--out", str(out),
    )  # fmt: skip
    result = json.loads(out.read_text())
    expected = ref["problems"][:n]
    assert result["n_problems"] == n and result["ids"] == [p["id"] for p in expected]
    assert set(result["accuracy"]) == {"student_k6", "student_k0"}
    assert result["answers"]["student_k6"] == [p["answer_text"] for p in expected]
    correct = sum(p["predicted"] == p["gold"] for p in expected)
    assert result["accuracy"]["student_k6"] == correct / n
    assert len(result["answers"]["student_k0"]) == n
    assert f"student_k6: {correct / n:.4f} ({n} problems" in printed


def test_new_base_writes_a_llama_config_and_a_digit_splitting_tokenizer(gsm8k_dir, tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    out = tmp_path / "base"
    printed = _invoke(
        "new-base", "--out", str(out), "--data", str(gsm8k_dir / "train.jsonl"),
        "--vocab-size", "400", "--hidden-size", "32", "--num-layers", "2", "--num-heads", "2",
        "--intermediate-size", "64", "--max-positions", "128",
    )  # fmt: skip
    assert printed.strip() == str(out)
    config = AutoConfig.from_pretrained(out)
    assert config.model_type == "llama"
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (32, 2, 2)
    assert (config.intermediate_size, config.max_position_embeddings) == (64, 128)
    assert not any(out.glob("*.safetensors"))  # a base to train from scratch: no weights
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == config.vocab_size <= 400
    ids = tok("It costs 1234 dollars.")["input_ids"]
    assert ids[0] == tok.bos_token_id
    pieces = [tok.decode([i]) for i in ids[1:]]
    assert [p for p in pieces if p.strip().isdigit()] == ["1", "2", "3", "4"]


def test_store_info_by_option_and_by_old_positional(tmp_path):
    import numpy as np

    from opcircuits.store import write_store

    hidden = np.arange(4 * 2 * 3 * 8, dtype=np.float32).reshape(4, 2, 3, 8) / 100
    records = [{"id": f"p{i}", "category": ["a", "b"][i % 2]} for i in range(4)]
    store = tmp_path / "s"
    write_store(store, hidden, records, layers=[1, 2, 3], positions=["bot", "latent_1"])
    info = json.loads(_invoke("store", "info", "--store", str(store)))
    assert info["path"] == str(store) and info["n_shards"] == 1
    assert info["shapes"]["hidden"] == [4, 2, 3, 8]
    assert info["manifest"]["layers"] == [1, 2, 3] and info["manifest"]["n_problems"] == 4
    assert info["manifest"]["positions"] == ["bot", "latent_1"]
    assert json.loads(_invoke("store", "info", str(store))) == info  # the old spelling
