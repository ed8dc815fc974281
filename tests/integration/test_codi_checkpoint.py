"""Loading CODI checkpoints: released layout, strictness, tied weights, LoRA merge, configs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from codi_factory import build_tiny_codi
from safetensors.torch import load_file, save_file

from opcircuits.codi.checkpoint import load_codi
from opcircuits.codi.config import CodiConfig
from opcircuits.codi.latent import run_batch
from opcircuits.codi.model import CodiModel
from opcircuits.errors import OpcircuitsError

torch.set_num_threads(1)  # tiny models; threads only contend on a shared machine

QUESTIONS = [
    "Tom has 3 apples and buys 4 more. How many apples does he have?",
    "A robe takes 2 bolts of blue fiber and half that much white fiber.  How many bolts?",
]


def _file_state(tiny) -> dict[str, torch.Tensor]:
    path = tiny.checkpoint / "model.safetensors"
    if path.exists():
        return load_file(str(path))
    return torch.load(tiny.checkpoint / "pytorch_model.bin", weights_only=True)


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
def test_every_weight_comes_from_the_file(name, request):
    tiny = request.getfixturevalue(name)
    model, tokenizer = load_codi(tiny.checkpoint, base=tiny.base, device="cpu", merge=False)
    file_state = _file_state(tiny)
    state = model.state_dict()
    # The released key names: peft-wrapped base under `codi.`, projection under `prj.`.
    assert any(k.startswith("codi.base_model.model.") and ".lora_A.default." in k for k in state)
    assert {"prj.1.weight", "prj.3.bias", "prj.ln.weight"} <= set(state)
    for key, value in file_state.items():
        assert torch.equal(state[key], value.float()), key
    # Tied head: the LM head is the (resized) embedding matrix, V + 3 rows.
    emb = model.lm.get_input_embeddings().weight
    assert model.lm.get_output_embeddings().weight.data_ptr() == emb.data_ptr()
    assert emb.shape[0] == tiny.vocab_size + 3
    assert (model.pad_id, model.bot_id, model.eot_id) == (
        tiny.vocab_size,
        tiny.vocab_size + 1,
        tiny.vocab_size + 2,
    )
    assert model.config.prj_dim == tiny.config.prj_dim and model.config.lora_r == 4
    assert not model.training


def test_safetensors_without_the_tied_alias_loads(tiny_gpt2, tmp_path):
    """safetensors cannot store shared tensors twice: a file with only the head's name loads."""
    state = torch.load(tiny_gpt2.checkpoint / "pytorch_model.bin", weights_only=True)
    emb_key = "codi.base_model.model.transformer.wte.weight"
    head_key = "codi.base_model.model.lm_head.weight"
    assert torch.equal(state[emb_key], state[head_key])
    emb = state.pop(emb_key)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    shutil.copy(tiny_gpt2.checkpoint / "codi_config.json", tmp_path)
    model, _ = load_codi(tmp_path, base=tiny_gpt2.base, device="cpu", merge=False)
    assert torch.equal(model.lm.get_input_embeddings().weight, emb)


def _write_variant(tiny, directory, edit):
    state = dict(load_file(str(tiny.checkpoint / "model.safetensors")))
    edit(state)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(state, str(directory / "model.safetensors"))
    shutil.copy(tiny.checkpoint / "codi_config.json", directory)
    return directory


def test_missing_lora_weight_is_an_error_naming_it(tiny_llama, tmp_path):
    key = "codi.base_model.model.model.layers.1.self_attn.v_proj.lora_B.default.weight"
    ckpt = _write_variant(tiny_llama, tmp_path / "c", lambda s: s.pop(key))
    with pytest.raises(OpcircuitsError, match="missing") as err:
        load_codi(ckpt, base=tiny_llama.base, device="cpu")
    assert key in str(err.value)


def test_missing_projection_weight_is_an_error(tiny_llama, tmp_path):
    ckpt = _write_variant(tiny_llama, tmp_path / "c", lambda s: s.pop("prj.3.bias"))
    with pytest.raises(OpcircuitsError, match=r"prj\.3\.bias"):
        load_codi(ckpt, base=tiny_llama.base, device="cpu")


def test_unexpected_key_is_an_error_naming_it(tiny_llama, tmp_path):
    def rename(state):  # key names drifted (the bug strict=False hid)
        state["coconut.q_proj.lora_A.weight"] = state.pop(
            "codi.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
        )

    ckpt = _write_variant(tiny_llama, tmp_path / "c", rename)
    with pytest.raises(OpcircuitsError) as err:
        load_codi(ckpt, base=tiny_llama.base, device="cpu")
    assert "coconut.q_proj.lora_A.weight" in str(err.value)


def test_declared_config_that_contradicts_the_weights_is_an_error(tiny_llama):
    with pytest.raises(OpcircuitsError, match="wrong shape"):
        load_codi(tiny_llama.checkpoint, base=tiny_llama.base, device="cpu", prj_dim=32)
    with pytest.raises(OpcircuitsError, match="match nothing"):
        load_codi(tiny_llama.checkpoint, base=tiny_llama.base, device="cpu", lora_r=0)


def test_partial_checkpoint_takes_base_weights_from_the_base(tiny_texts, tmp_path):
    tiny = build_tiny_codi(tmp_path, "llama", tiny_texts, partial=True)
    from transformers import AutoModelForCausalLM

    pretrained = AutoModelForCausalLM.from_pretrained(tiny.base).state_dict()
    model, _ = load_codi(tiny.checkpoint, base=tiny.base, device="cpu", merge=False)
    state = model.state_dict()
    key = "model.layers.2.mlp.down_proj.weight"
    loaded = state["codi.base_model.model." + key.replace(".weight", ".base_layer.weight")]
    assert torch.equal(loaded, pretrained[key])
    for k, v in load_file(str(tiny.checkpoint / "model.safetensors")).items():
        assert torch.equal(state[k], v), k


def test_merged_and_unmerged_lora_agree_and_lora_matters(tiny_llama):
    merged, tok = load_codi(tiny_llama.checkpoint, base=tiny_llama.base, device="cpu")
    plain, _ = load_codi(tiny_llama.checkpoint, base=tiny_llama.base, device="cpu", merge=False)
    assert merged.merged and not plain.merged
    a = run_batch(merged, tok, QUESTIONS, layers=[0, 2, 4], max_new_tokens=6)
    b = run_batch(plain, tok, QUESTIONS, layers=[0, 2, 4], max_new_tokens=6)
    assert torch.allclose(a.hidden, b.hidden, atol=1e-4, rtol=0)
    assert torch.allclose(a.latent_inputs, b.latent_inputs, atol=1e-4, rtol=0)
    assert a.answer_ids == b.answer_ids
    # The adapters were really applied: switching them off changes the thoughts.
    with plain.codi.disable_adapter():
        c = run_batch(plain, tok, QUESTIONS, layers=[0, 2, 4], max_new_tokens=6)
    assert (c.hidden[:, :, -1] - b.hidden[:, :, -1]).abs().max() > 1e-2


def test_dtype_and_bad_options(tiny_gpt2):
    model, _ = load_codi(tiny_gpt2.checkpoint, base=tiny_gpt2.base, device="cpu", dtype="bfloat16")
    assert model.prj[1].weight.dtype == torch.bfloat16
    assert model.lm.get_input_embeddings().weight.dtype == torch.bfloat16
    with pytest.raises(OpcircuitsError, match="dtype"):
        load_codi(tiny_gpt2.checkpoint, base=tiny_gpt2.base, dtype="int8")
    with pytest.raises(OpcircuitsError, match="checkpoint dir not found"):
        load_codi("demo", checkpoint=tiny_gpt2.checkpoint / "nope", base=tiny_gpt2.base)
    with pytest.raises(OpcircuitsError, match="--base"):
        load_codi(tiny_gpt2.checkpoint)  # released checkpoints name no base


def test_hub_unreachable_says_how_to_use_local_dirs(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OpcircuitsError, match="--checkpoint DIR"):
        load_codi("nobody-here/no-such-codi", device="cpu")


def test_codi_config_json_supplies_defaults_and_flags_override(tiny_llama, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(
        (tiny_llama.checkpoint / "model.safetensors").read_bytes()
    )
    config = {
        "base": str(tiny_llama.base),
        "num_latent": 3,
        "layers": [1, 3],
        "lora_r": 4,
        "lora_alpha": 32,
        "remove_eos": True,
    }
    (ckpt / "codi_config.json").write_text(json.dumps(config))
    model, _ = load_codi(ckpt, device="cpu")
    assert model.config.num_latent == 3 and model.config.layers == [1, 3]
    model, _ = load_codi(ckpt, device="cpu", num_latent=5)
    assert model.config.num_latent == 5
    (ckpt / "codi_config.json").write_text(json.dumps({**config, "latents": 2}))
    with pytest.raises(OpcircuitsError, match="latents"):
        load_codi(ckpt, device="cpu")


def test_full_model_without_lora_round_trips_through_save_pretrained(tiny_llama, tmp_path):
    """lora_r=0 (the demo's layout): keys `codi.<base keys>`, base "." = the checkpoint dir."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_llama.base))
    tok = AutoTokenizer.from_pretrained(tiny_llama.base)
    config = CodiConfig(base=".", lora_r=0, prj_dim=40, num_latent=4, layers=[0, 2])
    model = CodiModel.from_base(config, base)
    assert "codi.model.layers.0.self_attn.q_proj.weight" in model.state_dict()
    model.save_pretrained(tmp_path / "demo", tokenizer=tok)
    saved = json.loads((tmp_path / "demo" / "config.json").read_text())
    assert saved["vocab_size"] == tiny_llama.vocab_size  # V, not V + 3

    loaded, tok2 = load_codi(tmp_path / "demo", device="cpu")
    assert loaded.config.layers == [0, 2] and loaded.config.num_latent == 4
    want = model.state_dict()
    got = loaded.state_dict()
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert tok2("3 + 4")["input_ids"] == tok("3 + 4")["input_ids"]


# --- every parameter comes from a file (issue 9 item 3, issue 13 item 3) ----------------------


def _weights_only(tiny, directory):
    """The checkpoint's weights file alone, as released (no codi_config.json)."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny.checkpoint / "model.safetensors", directory)
    return directory


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_checkpoint_without_codi_rows_is_an_error_naming_them(tiny_texts, tmp_path):
    """The resized embedding holds pad, bot and eot, which no base has: a checkpoint of LoRA and
    projection only must not load with those rows left random (even with a base holding the
    rest)."""
    tiny = build_tiny_codi(tmp_path, "llama", tiny_texts, partial=True)
    key = "codi.base_model.model.model.embed_tokens.weight"
    ckpt = _write_variant(tiny, tmp_path / "c", lambda s: s.pop(key))
    with pytest.raises(OpcircuitsError, match="CODI's own weights") as err:
        load_codi(ckpt, base=tiny.base, device="cpu")
    assert key in str(err.value) and "model.safetensors" in str(err.value)


def test_base_weight_found_nowhere_is_an_error_naming_it(tiny_texts, tmp_path):
    """A base weight the checkpoint lacks is taken from the base only when the base holds it."""
    tiny = build_tiny_codi(tmp_path, "llama", tiny_texts, partial=True)
    base = dict(load_file(str(tiny.base / "model.safetensors")))
    del base["model.layers.1.mlp.up_proj.weight"]
    save_file(base, str(tiny.base / "model.safetensors"))
    with pytest.raises(OpcircuitsError, match="neither the checkpoint nor the base") as err:
        load_codi(tiny.checkpoint, base=tiny.base, device="cpu")
    assert "model.layers.1.mlp.up_proj.base_layer.weight" in str(err.value)
    assert "model.layers.0.mlp.up_proj" not in str(err.value)  # only the one found nowhere


def test_base_without_weights_cannot_fill_a_partial_checkpoint(tiny_texts, tiny_llama, tmp_path):
    tiny = build_tiny_codi(tmp_path, "llama", tiny_texts, partial=True)
    # tiny_llama's base folder holds config and tokenizer only
    with pytest.raises(OpcircuitsError, match="holds no weights") as err:
        load_codi(tiny.checkpoint, base=tiny_llama.base, device="cpu")
    assert "down_proj" in str(err.value)


def test_two_loads_of_the_same_files_are_identical(tiny_texts, tmp_path, caplog):
    tiny = build_tiny_codi(tmp_path, "llama", tiny_texts, partial=True)
    with caplog.at_level("INFO", logger="opcircuits.codi.checkpoint"):
        a, _ = load_codi(tiny.checkpoint, base=tiny.base, device="cpu", merge=False)
    n_base = 4 * 9 + 1  # per block: 7 projections (LoRA base layers) + 2 norms; the final norm
    assert f"{n_base} base weights taken from the pretrained base" in caplog.text
    b, _ = load_codi(tiny.checkpoint, base=tiny.base, device="cpu", merge=False)
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_undeclared_settings_are_required(tiny_llama, tmp_path):
    """Not a preset and no codi_config.json: K, remove_eos and alpha are not guessed."""
    ckpt = _weights_only(tiny_llama, tmp_path / "c")
    with pytest.raises(OpcircuitsError) as err:
        load_codi(ckpt, base=tiny_llama.base, device="cpu")
    for name in ("num_latent", "remove_eos", "lora_alpha", "codi_config.json"):
        assert name in str(err.value)
    # the same checkpoint given to the demo preset's slot: the demo's settings live in its dir
    with pytest.raises(OpcircuitsError, match="num_latent"):
        load_codi("demo", checkpoint=ckpt, base=tiny_llama.base, device="cpu")
    model, _ = load_codi(
        ckpt, base=tiny_llama.base, device="cpu", num_latent=6, remove_eos=True, lora_alpha=32
    )
    assert model.config.num_latent == 6
    (ckpt / "codi_config.json").write_text(json.dumps({"num_latent": 6, "remove_eos": True}))
    with pytest.raises(OpcircuitsError, match="lora_alpha") as err:
        load_codi(ckpt, base=tiny_llama.base, device="cpu")
    assert "num_latent" not in str(err.value)


def test_extract_takes_the_undeclared_settings_as_flags(tiny_llama, tiny_problems, tmp_path):
    """`opcircuits extract` on a bare weights file: refused naming the settings and their flags,
    then run with --num-latent/--remove-eos/--lora-alpha, which the store records."""
    from cli_runner import run_cli

    from opcircuits.store import open_store

    ckpt = _weights_only(tiny_llama, tmp_path / "c")
    out = tmp_path / "store"
    common = ["extract", "--data", str(tiny_problems), "--model", str(ckpt), "--base",
              str(tiny_llama.base), "--device", "cpu", "--layers", "0,2", "--max-new-tokens",
              "2", "--out", str(out)]  # fmt: skip
    code, _, err = run_cli(*common)
    assert code == 2 and "--num-latent" in err and "--lora-alpha" in err, err
    assert not out.exists()
    code, _, err = run_cli(*common, "--num-latent", "3", "--remove-eos", "--lora-alpha", "32")
    assert code == 0, err
    store = open_store(out)
    assert store.manifest["num_latent"] == 3
    assert store.positions[-1] == "latent_3"


# --- refusals: non-finite weights, files of the wrong kind (issue 13 items 4, 9) ---------------


def test_non_finite_weights_are_an_error_naming_the_tensor(tiny_llama, tiny_texts, tmp_path):
    def poison(state):
        state["prj.1.weight"][0, 0] = float("nan")

    ckpt = _write_variant(tiny_llama, tmp_path / "c", poison)
    with pytest.raises(OpcircuitsError, match="NaN or inf") as err:
        load_codi(ckpt, base=tiny_llama.base, device="cpu")
    assert "prj.1.weight" in str(err.value) and "model.safetensors" in str(err.value)
    # a base weight filled from the base is checked too
    tiny = build_tiny_codi(tmp_path / "p", "llama", tiny_texts, partial=True)
    base = dict(load_file(str(tiny.base / "model.safetensors")))
    base["model.norm.weight"][3] = float("inf")
    save_file(base, str(tiny.base / "model.safetensors"))
    with pytest.raises(OpcircuitsError, match="model.norm.weight") as err:
        load_codi(tiny.checkpoint, base=tiny.base, device="cpu")
    assert str(tiny.base) in str(err.value)


def test_config_values_of_the_wrong_type_name_file_and_field(tiny_llama, tmp_path):
    ckpt = _write_variant(tiny_llama, tmp_path / "c", lambda s: None)
    config = json.loads((ckpt / "codi_config.json").read_text())
    (ckpt / "codi_config.json").write_text(json.dumps({**config, "num_latent": "six"}))
    with pytest.raises(OpcircuitsError) as err:
        load_codi(ckpt, base=tiny_llama.base, device="cpu")
    assert err.value.field == "num_latent" and err.value.path.endswith("codi_config.json")
    (ckpt / "codi_config.json").write_text(json.dumps({**config, "remove_eos": "yes"}))
    with pytest.raises(OpcircuitsError, match="true or false") as err:
        load_codi(ckpt, base=tiny_llama.base, device="cpu")
    assert err.value.field == "remove_eos"

    base = tmp_path / "base"
    shutil.copytree(tiny_llama.base, base)
    hf = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**hf, "hidden_size": "big"}))
    with pytest.raises(OpcircuitsError) as err:
        load_codi(tiny_llama.checkpoint, base=base, device="cpu")
    assert err.value.field == "hidden_size" and err.value.path == str(base / "config.json")
    assert "\n" not in str(err.value)


def test_a_broken_tokenizer_or_a_folder_that_is_no_model_is_named(tiny_llama, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(tiny_llama.base, base)
    (base / "tokenizer.json").write_text("")
    with pytest.raises(OpcircuitsError, match="empty") as err:
        load_codi(tiny_llama.checkpoint, base=base, device="cpu")
    assert err.value.path == str(base / "tokenizer.json")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("not a model")
    with pytest.raises(OpcircuitsError, match="not a model folder") as err:
        load_codi(tiny_llama.checkpoint, base=notes, device="cpu")
    assert err.value.path == str(notes) and err.value.field == "base"


def test_the_model_module_does_not_import_its_loader():
    """codi/model.py is the module; loading it from files is checkpoint.py's (and its parts')."""
    import ast
    import inspect

    import opcircuits.codi.model as model_module

    tree = ast.parse(inspect.getsource(model_module))
    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    ours = {name for name in imported if name and name.startswith("opcircuits")}
    assert ours <= {"opcircuits.codi.config", "opcircuits.errors", "opcircuits.files"}


def test_tied_weights_are_one_group_saved_once(tiny_gpt2):
    from opcircuits.codi.model import alias_groups, unique_state_dict

    model, _ = load_codi(tiny_gpt2.checkpoint, base=tiny_gpt2.base, device="cpu", merge=False)
    state = model.state_dict()
    emb_key = "codi.base_model.model.transformer.wte.weight"
    head_key = "codi.base_model.model.lm_head.weight"
    tied = [group for group in alias_groups(state) if len(group) > 1]
    assert [sorted(group) for group in tied] == [sorted([emb_key, head_key])]
    unique = unique_state_dict(state)
    assert (emb_key in unique) != (head_key in unique)
    assert len(unique) == len(state) - 1


def test_dtype_names_are_the_options_own():
    from opcircuits.codi.checkpoint import DTYPES, resolve_dtype
    from opcircuits.options import DTYPES as NAMES

    assert tuple(DTYPES) == NAMES
    assert resolve_dtype("bfloat16") is torch.bfloat16
