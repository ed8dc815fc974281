"""`opcircuits doctor` on tiny checkpoints built here: what it says was loaded from where, and
each suspicious case produced and named (exit code 1), a clean model exiting 0."""

from __future__ import annotations

import hashlib
import json
import shutil

import torch
from cli_runner import run_cli
from codi_factory import build_tiny_codi
from safetensors.torch import load_file, save_file

from opcircuits.codi.checkpoint import load_codi
from opcircuits.codi.model import alias_groups

torch.set_num_threads(1)

EMB = "codi.base_model.model.model.embed_tokens.weight"  # tiny LLaMA's keys
HEAD = "codi.base_model.model.lm_head.weight"
LORA = "codi.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"


def _doctor(checkpoint, base, out):
    code, stdout, stderr = run_cli(
        "doctor", "--model", str(checkpoint), "--base", str(base), "--device", "cpu",
        "--json", str(out),
    )  # fmt: skip
    assert not stderr.startswith("error"), stderr
    return code, stdout, json.loads(out.read_text())


def _variant(tiny, directory, edit):
    """The tiny checkpoint with its state edited, saved as model.safetensors."""
    state = dict(load_file(str(tiny.checkpoint / "model.safetensors")))
    edit(state)
    directory.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"))
    shutil.copy(tiny.checkpoint / "codi_config.json", directory)
    return directory


def _kinds(report):
    return [f["kind"] for f in report["suspicious"]]


def test_a_clean_model_says_where_everything_came_from(tiny_llama, tmp_path):
    code, stdout, report = _doctor(tiny_llama.checkpoint, tiny_llama.base, tmp_path / "d.json")
    assert code == 0 and report["suspicious"] == []
    assert "nothing suspicious (exit code 0)" in stdout
    weights = tiny_llama.checkpoint / "model.safetensors"
    entry = next(f for f in report["files"] if f["name"] == "model.safetensors")
    assert entry["folder"] == "checkpoint" and entry["bytes"] == weights.stat().st_size
    assert entry["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert entry["sha256"][:16] in stdout
    assert {f["name"] for f in report["files"] if f["folder"] == "base"} >= {"config.json"}
    config = report["config"]
    assert config["num_latent"] == {"value": 6, "from": "codi_config.json"}
    assert config["remove_eos"] == {"value": True, "from": "codi_config.json"}
    assert config["prj_dim"] == {"value": tiny_llama.config.prj_dim, "from": "weights"}
    assert config["base"]["from"] == "flag" and config["prj_dropout"]["from"] == "default"
    n_file = len(load_file(str(weights)))
    assert report["keys"]["from_checkpoint"]["count"] == n_file
    assert report["keys"]["from_base"]["count"] == 0
    assert report["weights"]["dtypes"] == {"float32": n_file}
    assert report["keys"]["vocab"] == {
        "base_config": tiny_llama.vocab_size,
        "embedding_rows": tiny_llama.vocab_size + 3,
        "head_rows": None,  # tied: the file holds the embedding only
        "tokenizer": tiny_llama.vocab_size,
    }
    assert report["versions"]["torch"] == torch.__version__
    assert report["load"]["loaded"] and report["dtype"] == "float32"
    # rewriting an earlier report is allowed; the next run replaces it
    assert _doctor(tiny_llama.checkpoint, tiny_llama.base, tmp_path / "d.json")[0] == 0


def test_base_weights_the_checkpoint_lacks_are_counted_as_from_the_base(tiny_texts, tmp_path):
    tiny = build_tiny_codi(tmp_path / "m", "llama", tiny_texts, partial=True)
    code, _, report = _doctor(tiny.checkpoint, tiny.base, tmp_path / "d.json")
    assert code == 0, report["suspicious"]
    keys = report["keys"]
    file_keys = set(load_file(str(tiny.checkpoint / "model.safetensors")))
    assert keys["from_checkpoint"]["count"] == len(file_keys)
    assert keys["from_base"]["count"] > 0
    assert not set(keys["from_base"]["first"]) & file_keys
    assert all(".base_layer." in k or "norm" in k for k in keys["from_base"]["first"])
    # every weight of the loaded module is one of the two
    model, _ = load_codi(tiny.checkpoint, base=tiny.base, device="cpu", merge=False)
    groups = alias_groups(model.state_dict())
    assert keys["from_checkpoint"]["count"] + keys["from_base"]["count"] == len(groups)


def test_a_non_finite_weight_is_named_not_only_refused(tiny_llama, tmp_path):
    def poison(state):
        state[LORA] = state[LORA].clone()
        state[LORA][0, :2] = torch.tensor([float("nan"), float("inf")])

    ckpt = _variant(tiny_llama, tmp_path / "nan", poison)
    code, stdout, report = _doctor(ckpt, tiny_llama.base, tmp_path / "d.json")
    assert code == 1
    assert report["weights"]["non_finite"] == [
        {"key": LORA, "nan": 1, "inf": 1, "numel": report["weights"]["non_finite"][0]["numel"]}
    ]
    assert _kinds(report) == ["non_finite", "loader_refuses"]
    assert f"✗ non_finite: {LORA} holds 1 NaN and 1 inf values" in stdout
    assert "suspicious: 2 (exit code 1)" in stdout


def test_an_untied_head_where_the_base_ties_it(tiny_llama, tmp_path):
    def untie(state):
        state[HEAD] = state[EMB] + 0.01

    ckpt = _variant(tiny_llama, tmp_path / "untied", untie)
    code, stdout, report = _doctor(ckpt, tiny_llama.base, tmp_path / "d.json")
    assert code == 1 and _kinds(report) == ["head_untied"]
    assert f"LM head {HEAD} differs from its embedding {EMB}" in stdout
    assert report["load"]["loaded"]  # the loader accepts it, keeping one of the two


def test_a_tied_head_where_the_base_unties_it(tiny_llama, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(tiny_llama.base, base)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    ckpt = _variant(tiny_llama, tmp_path / "tied", lambda s: s.update({HEAD: s[EMB].clone()}))
    code, stdout, report = _doctor(ckpt, base, tmp_path / "d.json")
    assert code == 1 and _kinds(report) == ["head_tied"]
    assert f"LM head {HEAD} equals its embedding {EMB}" in stdout
    assert report["keys"]["head"]["base_ties"] is False


def test_an_unexpected_vocabulary_size_names_rows_and_tokenizer(tiny_llama, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(tiny_llama.base, base)
    config = json.loads((base / "config.json").read_text())
    v = tiny_llama.vocab_size
    (base / "config.json").write_text(json.dumps({**config, "vocab_size": v - 4}))
    code, stdout, report = _doctor(tiny_llama.checkpoint, base, tmp_path / "d.json")
    assert code == 1
    assert _kinds(report) == ["vocab", "vocab", "loader_refuses"]
    assert f"{EMB} has {v + 3} rows; the base's config.json gives vocab_size {v - 4}" in stdout
    assert f"the tokenizer has {v} tokens but the base's vocab_size is {v - 4}" in stdout


def test_a_zero_byte_config_json_is_reported(tiny_gpt2, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_gpt2.checkpoint, ckpt)
    (ckpt / "config.json").write_bytes(b"")  # as in some hub repos of CODI checkpoints
    code, stdout, report = _doctor(ckpt, tiny_gpt2.base, tmp_path / "d.json")
    assert code == 1 and _kinds(report) == ["empty_config"]
    assert f"{ckpt / 'config.json'} (checkpoint) is a 0-byte file" in stdout
    assert report["load"]["loaded"]  # the base's config is the one read
    assert next(f for f in report["files"] if f["name"] == "pytorch_model.bin")["bytes"] > 0


def test_json_never_replaces_a_foreign_file_and_an_unknown_model_is_reported(tmp_path):
    foreign = tmp_path / "notes.json"
    foreign.write_text('{"mine": 1}')
    code, _, stderr = run_cli("doctor", "--model", "demo", "--json", str(foreign))
    assert code == 2 and "not an `opcircuits doctor` report" in stderr
    assert foreign.read_text() == '{"mine": 1}'
    missing = tmp_path / "no" / "such" / "model"
    code, stdout, report = _doctor(missing, tmp_path, tmp_path / "d.json")
    assert code == 1 and _kinds(report) == ["unresolved"]
    assert "✗ unresolved:" in stdout


def test_keys_matching_nothing_and_a_module_that_cannot_be_built_are_reported(tiny_llama, tmp_path):
    extra = _variant(tiny_llama, tmp_path / "extra", lambda s: s.update(stray=torch.ones(2)))
    code, stdout, report = _doctor(extra, tiny_llama.base, tmp_path / "d.json")
    assert code == 1 and _kinds(report) == ["loader_refuses"]
    assert report["keys"]["unknown"] == {"count": 1, "first": ["stray"]}
    assert "matching nothing in the module: 1 (stray)" in stdout
    assert "1 keys in the checkpoint match nothing in the CODI module" in stdout
    # LoRA on modules the base does not have: peft's refusal is a finding, not a traceback
    bad = tmp_path / "targets"
    shutil.copytree(tiny_llama.checkpoint, bad)
    config = json.loads((bad / "codi_config.json").read_text())
    (bad / "codi_config.json").write_text(json.dumps({**config, "lora_targets": ["no_such"]}))
    code, stdout, report = _doctor(bad, tiny_llama.base, tmp_path / "d.json")
    assert code == 1 and _kinds(report) == ["structure", "loader_refuses"]
    structure = report["suspicious"][0]["message"]
    assert (
        report["keys"] is None and "no_such" in structure and f"✗ structure: {structure}" in stdout
    )
    assert report["config"]["lora_targets"] == {"value": ["no_such"], "from": "codi_config.json"}
