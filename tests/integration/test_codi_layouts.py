"""The checkpoint layouts researchers have, each saved from a tiny model and loaded strictly
through `load_codi` (the CLI's resolution), answering exactly as the model it was saved from."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from codi_factory import build_tiny_codi
from safetensors.torch import load_file, save_file

from opcircuits.codi.checkpoint import load_codi
from opcircuits.codi.latent import run_batch
from opcircuits.codi.model import unique_state_dict
from opcircuits.codi.resolve import weights_sha256
from opcircuits.errors import OpcircuitsError
from opcircuits.files import sha256_file

torch.set_num_threads(1)

QUESTIONS = [
    "Tom has 3 apples and buys 4 more. How many apples does he have?",
    "A robe takes 2 bolts of blue fiber and half that much white fiber.  How many bolts?",
]
LAYERS = [0, 2]


def answers(model_dir, base, **kw):
    """The loaded model's thoughts and greedy answers on two questions."""
    model, tok = load_codi(model_dir, base=base, device="cpu", **kw)
    out = run_batch(model, tok, QUESTIONS, layers=LAYERS, max_new_tokens=6)
    return out.hidden, out.answer_ids


def assert_same(got, want):
    assert torch.equal(got[0], want[0])
    assert got[1] == want[1]


@pytest.fixture(scope="module")
def llama_ref(tiny_llama):
    return answers(tiny_llama.checkpoint, tiny_llama.base)


def _state(tiny) -> dict[str, torch.Tensor]:
    return dict(load_file(str(tiny.checkpoint / "model.safetensors")))


def _with_config(tiny, directory):
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny.checkpoint / "codi_config.json", directory)
    return directory


# --- sharded: model-0000k-of-0000n.safetensors + model.safetensors.index.json -------------------


def _write_sharded(state, directory, fmt="safetensors"):
    """The sharded layout as huggingface_hub's splitter names and indexes it."""
    from huggingface_hub import split_torch_state_dict_into_shards

    pattern = "model{suffix}.safetensors" if fmt == "safetensors" else "pytorch_model{suffix}.bin"
    split = split_torch_state_dict_into_shards(
        state, filename_pattern=pattern, max_shard_size=40_000
    )
    assert split.is_sharded and len(split.filename_to_tensors) >= 3
    for name, keys in split.filename_to_tensors.items():
        shard = {k: state[k].contiguous() for k in keys}
        if fmt == "safetensors":
            save_file(shard, str(directory / name))
        else:
            torch.save(shard, directory / name)
    index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
    (directory / (pattern.format(suffix="") + ".index.json")).write_text(json.dumps(index))
    return split


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_sharded_checkpoint_answers_as_the_single_file(fmt, tiny_llama, llama_ref, tmp_path):
    ckpt = _with_config(tiny_llama, tmp_path / "c")
    split = _write_sharded(_state(tiny_llama), ckpt, fmt)
    index = "model.safetensors" if fmt == "safetensors" else "pytorch_model.bin"
    assert f"{index.split('.')[0]}-00001-of-" in sorted(split.filename_to_tensors)[0]
    assert_same(answers(ckpt, tiny_llama.base), llama_ref)
    model, _ = load_codi(ckpt, base=tiny_llama.base, device="cpu")
    files = {p.name for p in model.source.weight_files}
    assert files == {index + ".index.json", *split.filename_to_tensors}
    # what a store records as the weights' identity covers every shard
    before = weights_sha256(model.source)
    last = ckpt / sorted(split.filename_to_tensors)[-1]
    last.write_bytes(last.read_bytes() + b" ")
    assert weights_sha256(model.source) != before
    one, _ = load_codi(tiny_llama.checkpoint, base=tiny_llama.base, device="cpu")
    assert weights_sha256(one.source) == sha256_file(tiny_llama.checkpoint / "model.safetensors")


def test_sharded_index_and_shards_that_disagree_are_errors_naming_the_file(tiny_llama, tmp_path):
    ckpt = _with_config(tiny_llama, tmp_path / "c")
    split = _write_sharded(_state(tiny_llama), ckpt)
    index_path = ckpt / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    names = sorted(split.filename_to_tensors)
    # a key the index puts in a later shard than the one holding it (read first)
    source = next(n for n in names if len(split.filename_to_tensors[n]) > 1)
    moved = split.filename_to_tensors[source][0]
    index["weight_map"][moved] = names[-1]
    index_path.write_text(json.dumps(index))
    with pytest.raises(OpcircuitsError, match="puts elsewhere") as err:
        load_codi(ckpt, base=tiny_llama.base, device="cpu")
    assert moved in str(err.value) and err.value.path == str(ckpt / source)
    # a key the index puts in a shard that lacks it
    index["weight_map"][moved] = source
    index["weight_map"]["prj.9.weight"] = source
    index_path.write_text(json.dumps(index))
    with pytest.raises(OpcircuitsError, match="lacks") as err:
        load_codi(ckpt, base=tiny_llama.base, device="cpu")
    assert "prj.9.weight" in str(err.value) and err.value.path == str(ckpt / source)
    # an index naming a shard that is not there
    del index["weight_map"]["prj.9.weight"]
    index_path.write_text(json.dumps(index))
    (ckpt / names[-1]).unlink()
    with pytest.raises(OpcircuitsError, match="missing") as err:
        load_codi(ckpt, base=tiny_llama.base, device="cpu")
    assert names[-1] in str(err.value) and err.value.path == str(index_path)


# --- pytorch_model.bin: weights only ---------------------------------------------------------


class _Payload:
    """What a crafted .bin could hold besides tensors (unpickling would build it)."""


def test_bin_answers_as_safetensors_and_objects_are_never_unpickled(tiny_gpt2, tmp_path):
    state = torch.load(tiny_gpt2.checkpoint / "pytorch_model.bin", weights_only=True)
    st = _with_config(tiny_gpt2, tmp_path / "st")
    save_file(unique_state_dict(state), str(st / "model.safetensors"))
    assert_same(answers(st, tiny_gpt2.base), answers(tiny_gpt2.checkpoint, tiny_gpt2.base))
    crafted = _with_config(tiny_gpt2, tmp_path / "crafted")
    torch.save({**state, "payload": _Payload()}, crafted / "pytorch_model.bin")
    with pytest.raises(OpcircuitsError, match="cannot read weights") as err:
        load_codi(crafted, base=tiny_gpt2.base, device="cpu")
    assert err.value.path == str(crafted / "pytorch_model.bin")


# --- config.json in the CODI repo: 0 bytes or missing ----------------------------------------


def test_empty_or_missing_config_json_uses_the_base_one_said_once(
    tiny_llama, llama_ref, tmp_path, caplog
):
    ckpt = _with_config(tiny_llama, tmp_path / "c")
    shutil.copy(tiny_llama.checkpoint / "model.safetensors", ckpt)
    (ckpt / "config.json").write_bytes(b"")  # as in hub repos of released checkpoints
    with caplog.at_level(logging.INFO, logger="opcircuits.codi.resolve"):
        got = answers(ckpt, tiny_llama.base)
    assert_same(got, llama_ref)
    said = [r.getMessage() for r in caplog.records if "config.json" in r.getMessage()]
    assert said == [
        f"the checkpoint's config.json is empty (0 bytes); using the base's "
        f"{tiny_llama.base / 'config.json'}"
    ]
    caplog.clear()
    (ckpt / "config.json").unlink()
    with caplog.at_level(logging.INFO, logger="opcircuits.codi.resolve"):
        assert_same(answers(ckpt, tiny_llama.base), llama_ref)
    assert "config.json is missing" in caplog.text
    # the checkpoint as its own base ("."): its empty config.json is a one-line error
    (ckpt / "config.json").write_bytes(b"")
    with pytest.raises(OpcircuitsError, match="empty file") as err:
        load_codi(ckpt, base=ckpt, device="cpu")
    assert err.value.path == str(ckpt / "config.json") and "\n" not in str(err.value)


# --- LoRA adapters saved by peft, beside the projection ----------------------------------------


def _peft_layout(tiny, directory):
    """What peft's save_pretrained writes for the adapter, plus the rest of CODI's own weights
    (projection, resized embedding) in model.safetensors; base weights stay in the base."""
    model, _ = load_codi(tiny.checkpoint, base=tiny.base, device="cpu", merge=False)
    directory.mkdir(parents=True, exist_ok=True)
    model.codi.save_pretrained(directory)
    adapter = load_file(str(directory / "adapter_model.safetensors"))
    lora = [k for k in adapter if ".lora_" in k]
    assert lora and not any(".default." in k for k in lora)
    # peft saves the resized embedding too (it sees the vocabulary grew): not again beside it
    assert "base_model.model.model.embed_tokens.weight" in adapter
    own = {k: v for k, v in model.state_dict().items() if k.startswith("prj.")}
    save_file(own, str(directory / "model.safetensors"))
    (directory / "codi_config.json").write_text(json.dumps({"num_latent": 6, "remove_eos": True}))
    return directory


def test_peft_adapter_beside_the_projection_answers_as_the_full_file(tiny_texts, tmp_path):
    tiny = build_tiny_codi(tmp_path / "t", "llama", tiny_texts, partial=True)
    ckpt = _peft_layout(tiny, tmp_path / "adapter")
    assert_same(answers(ckpt, tiny.base), answers(tiny.checkpoint, tiny.base))
    model, _ = load_codi(ckpt, base=tiny.base, device="cpu")
    # r, alpha and the targets came from adapter_config.json (codi_config.json gives neither)
    assert (model.config.lora_r, model.config.lora_alpha) == (4, 32)
    assert "adapter_model.safetensors" in {p.name for p in model.source.weight_files}
    # strictly: an adapter weight missing is an error naming it in the module's spelling
    adapter = dict(load_file(str(ckpt / "adapter_model.safetensors")))
    dropped = sorted(k for k in adapter if ".lora_B." in k)[0]
    del adapter[dropped]
    save_file(adapter, str(ckpt / "adapter_model.safetensors"))
    with pytest.raises(OpcircuitsError, match="missing") as err:
        load_codi(ckpt, base=tiny.base, device="cpu")
    want = "codi." + dropped.replace(".weight", ".default.weight")
    assert want in str(err.value)


def test_peft_settings_a_codi_module_cannot_compute_are_refused(tiny_texts, tmp_path):
    tiny = build_tiny_codi(tmp_path / "t", "llama", tiny_texts, partial=True)
    ckpt = _peft_layout(tiny, tmp_path / "adapter")
    path = ckpt / "adapter_config.json"
    config = json.loads(path.read_text())
    refused = [
        ("use_dora", True),
        ("use_rslora", True),
        ("rank_pattern", {"q_proj": 8}),
        ("modules_to_save", ["lm_head"]),
        ("target_modules", ".*proj"),  # a regex: which layers it meant cannot be checked
        ("peft_type", "PREFIX_TUNING"),
        ("r", "4"),
    ]
    for field, value in refused:
        path.write_text(json.dumps({**config, field: value}))
        with pytest.raises(OpcircuitsError) as err:
            load_codi(ckpt, base=tiny.base, device="cpu")
        assert err.value.field == field and err.value.path == str(path), field
    path.write_text(json.dumps(config))
    # a weight in both files is not silently taken from either
    own = dict(load_file(str(ckpt / "model.safetensors")))
    adapter = load_file(str(ckpt / "adapter_model.safetensors"))
    own["codi.base_model.model.model.embed_tokens.weight"] = adapter[
        "base_model.model.model.embed_tokens.weight"
    ]
    save_file(own, str(ckpt / "model.safetensors"))
    with pytest.raises(OpcircuitsError, match="both here and in") as err:
        load_codi(ckpt, base=tiny.base, device="cpu")
    assert "embed_tokens" in str(err.value) and "model.safetensors" in str(err.value)
    # the adapter's settings without its weights
    (ckpt / "adapter_model.safetensors").unlink()
    with pytest.raises(OpcircuitsError, match="without its weights") as err:
        load_codi(ckpt, base=tiny.base, device="cpu")
    assert err.value.path == str(path)


# --- the official training script's key spellings -------------------------------------------


def _respelled(state, rename):
    return {rename(k): v for k, v in state.items()}


SPELLINGS = {
    # the module's earlier name in the official code
    "coconut": lambda k: "coconut." + k[len("codi.") :] if k.startswith("codi.") else k,
    # peft < 0.7.0: a LoRA-wrapped layer's own weight without `base_layer`
    "peft<0.7": lambda k: k.replace(".base_layer.", "."),
    # LoRA keys without the adapter name
    "no .default": lambda k: k.replace(".default.", "."),
}


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_official_key_spellings_load_strictly_and_answer_alike(
    spelling, tiny_llama, llama_ref, tmp_path
):
    state = _respelled(_state(tiny_llama), SPELLINGS[spelling])
    assert state.keys() != _state(tiny_llama).keys()
    ckpt = _with_config(tiny_llama, tmp_path / "c")
    save_file(state, str(ckpt / "model.safetensors"))
    assert_same(answers(ckpt, tiny_llama.base), llama_ref)


def test_official_key_spellings_of_gpt2_in_pytorch_model_bin(tiny_gpt2, tmp_path):
    """GPT-2 (Conv1D layers with biases, both tied names in the .bin), all spellings at once."""
    state = torch.load(tiny_gpt2.checkpoint / "pytorch_model.bin", weights_only=True)
    for rename in SPELLINGS.values():
        state = _respelled(state, rename)
    assert "coconut.base_model.model.transformer.h.0.attn.c_attn.bias" in state
    ckpt = _with_config(tiny_gpt2, tmp_path / "c")
    torch.save(state, ckpt / "pytorch_model.bin")
    assert_same(answers(ckpt, tiny_gpt2.base), answers(tiny_gpt2.checkpoint, tiny_gpt2.base))


def test_a_key_no_rule_maps_is_an_error_naming_it_as_spelled(tiny_llama, tmp_path):
    state = _respelled(_state(tiny_llama), SPELLINGS["coconut"])
    state["coconut.extra.lora_A.weight"] = torch.zeros(2, 2)
    ckpt = _with_config(tiny_llama, tmp_path / "c")
    save_file(state, str(ckpt / "model.safetensors"))
    with pytest.raises(OpcircuitsError, match="match nothing") as err:
        load_codi(ckpt, base=tiny_llama.base, device="cpu")
    assert "coconut.extra.lora_A.weight" in str(err.value)
    # two spellings of one weight in a file: neither is picked
    state = _state(tiny_llama)
    key = "codi.base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"
    state[key.replace(".base_layer.", ".")] = state[key].clone()
    save_file(state, str(ckpt / "model.safetensors"))
    with pytest.raises(OpcircuitsError, match="the same weight") as err:
        load_codi(ckpt, base=tiny_llama.base, device="cpu")
    assert key in str(err.value)


def test_differing_tied_aliases_resolve_as_the_official_loading_does(tiny_gpt2, tmp_path, caplog):
    """An LM head saved untied from its (tied) embedding: the official test.py's
    `load_state_dict(strict=False)` then `tie_weights()` keeps the head's values; so do we."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from opcircuits.codi.model import CodiModel

    state = torch.load(tiny_gpt2.checkpoint / "pytorch_model.bin", weights_only=True)
    head = "codi.base_model.model.lm_head.weight"
    state[head] = state[head] + 0.5
    ckpt = _with_config(tiny_gpt2, tmp_path / "c")
    torch.save(state, ckpt / "pytorch_model.bin")
    with caplog.at_level(logging.WARNING, logger="opcircuits.codi.strict"):
        ours, tok = load_codi(ckpt, base=tiny_gpt2.base, device="cpu", merge=False)
    assert "differs from its tied alias" in caplog.text
    base = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_gpt2.base))
    official = CodiModel.from_base(tiny_gpt2.config, base, mean_resizing=False)
    official.load_state_dict(state, strict=False)
    official.codi.tie_weights()
    official.eval()
    assert torch.equal(official.lm.get_input_embeddings().weight, state[head])
    assert torch.equal(ours.lm.get_input_embeddings().weight, state[head])
    got = run_batch(ours, tok, QUESTIONS, layers=LAYERS, max_new_tokens=6)
    want = run_batch(official, tok, QUESTIONS, layers=LAYERS, max_new_tokens=6)
    # within fp32 rounding: our loader runs GPT-2's gelu_new as torch's fused tanh GELU
    assert (got.hidden - want.hidden).abs().max() <= 1e-4 and got.answer_ids == want.answer_ids


# --- the official code's attention-mask flag ---------------------------------------------------


def test_the_official_attention_mask_flag_is_refused_naming_it(tiny_llama, tmp_path):
    ckpt = _with_config(tiny_llama, tmp_path / "c")
    shutil.copy(tiny_llama.checkpoint / "model.safetensors", ckpt)
    config = json.loads((ckpt / "codi_config.json").read_text())
    for value in (True, False):  # either value: the flag means nothing at inference here
        (ckpt / "codi_config.json").write_text(json.dumps({**config, "fix_attn_mask": value}))
        with pytest.raises(OpcircuitsError, match="not reproduced") as err:
            load_codi(ckpt, base=tiny_llama.base, device="cpu")
        assert err.value.field == "fix_attn_mask" and "\n" not in str(err.value)
        assert err.value.path == str(ckpt / "codi_config.json")
    with pytest.raises(OpcircuitsError, match="fix_attn_mask"):
        load_codi(tiny_llama.checkpoint, base=tiny_llama.base, device="cpu", fix_attn_mask=True)
