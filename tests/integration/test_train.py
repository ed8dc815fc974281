"""CODI training on a tiny LLaMA built in the test: the loss goes down, a checkpoint resumes to
exactly the uninterrupted run, and two accelerate CPU processes train."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from accelerate_cmd import accelerate_launch
from safetensors.torch import load_file

from opcircuits.codi.training.base import build_demo_base
from opcircuits.codi.training.examples import read_train_problems, teacher_cot, tokenize_example
from opcircuits.codi.training.loop import TrainOptions, train
from opcircuits.codi.training.objective import layer_distill_loss
from opcircuits.errors import OpcircuitsError
from opcircuits.options import NewBaseOptions


@pytest.fixture(scope="module")
def tiny_base(gsm8k_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("base")
    return build_demo_base(
        NewBaseOptions(
            out=out,
            data=str(gsm8k_dir / "train.jsonl"),
            vocab_size=400,
            hidden_size=32,
            num_layers=2,
            num_heads=2,
            intermediate_size=64,
            max_positions=512,
        )
    )


def _options(base: Path, gsm8k_dir: Path, out: Path, **kw) -> TrainOptions:
    defaults = dict(
        out=out,
        base=str(base),
        data=str(gsm8k_dir / "train.jsonl"),
        from_scratch=True,
        lora_r=0,
        prj_dim=48,
        num_latent=2,
        limit=8,
        batch_size=4,
        max_steps=4,
        lr=3e-3,
        warmup_ratio=0.0,
        save_every=100,
        seed=1,
        threads=1,
        prj_dropout=0.1,
    )
    defaults.update(kw)
    return TrainOptions(**defaults)


def _log(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]


def test_training_examples_match_codi_format(gsm8k_dir: Path, tiny_base: Path) -> None:
    from transformers import AutoTokenizer

    ex = read_train_problems(gsm8k_dir / "train.jsonl")[0]
    assert ex.cot == "<<48/2=24>> <<48+24=72>>" and ex.answer == "The answer is: 72"
    tok = AutoTokenizer.from_pretrained(tiny_base)
    v = len(tok)
    t = tokenize_example(ex, tok, v + 1, v + 2)
    assert t.encoder_ids[0] == tok.bos_token_id and t.encoder_ids[-1] == v + 1
    assert t.decoder_ids[0] == v + 2 and t.decoder_ids[-1] == tok.eos_token_id
    # the distillation position predicts the answer's first digit in both tasks
    assert tok.decode(t.teacher_ids[t.teacher_pos + 1]) == "7"
    assert tok.decode(t.decoder_ids[t.student_pos + 1]) == "7"
    assert t.teacher_ids[-len(t.decoder_ids) + 1 :] == t.decoder_ids[1:]
    assert all(x == -100 for x in t.teacher_labels[: len(t.encoder_ids) - 1])


def _teacher_parts(tok, t) -> tuple[list[int], list[int], list[int]]:
    """Split a teacher sequence into (prefix, chain of thought, answer + EOS) by the known
    lengths of the encoder prefix and the decoder's answer."""
    prefix = t.encoder_ids[:-1]  # [BOS] question (encoder minus bot)
    answer = t.decoder_ids[1:]  # answer EOS (decoder minus eot)
    assert t.teacher_ids[: len(prefix)] == prefix
    assert t.teacher_ids[len(t.teacher_ids) - len(answer) :] == answer
    return prefix, t.teacher_ids[len(prefix) : len(t.teacher_ids) - len(answer)], answer


def test_teacher_drops_the_last_cot_step(gsm8k_dir: Path, tiny_base: Path) -> None:
    """Official CODI (`include_last_cot=False`): the teacher sees every calculator step but the
    last; a one-step problem has an empty chain of thought. `include_last_cot` keeps it."""
    from transformers import AutoTokenizer

    problems = read_train_problems(gsm8k_dir / "train.jsonl")
    two, one = problems[0], problems[35]  # Natalia's clips (2 steps), Mr. Sanchez (1 step)
    assert two.steps == ("<<48/2=24>>", "<<48+24=72>>") and two.answer == "The answer is: 72"
    assert one.steps == ("<<60*60/100=36>>",) and one.answer == "The answer is: 36"
    assert teacher_cot(two) == "<<48/2=24>>"
    assert teacher_cot(two, include_last_cot=True) == "<<48/2=24>> <<48+24=72>>"
    assert teacher_cot(one) == ""
    assert teacher_cot(one, include_last_cot=True) == "<<60*60/100=36>>"
    assert TrainOptions(out=Path("x"), base="b").include_last_cot is False

    tok = AutoTokenizer.from_pretrained(tiny_base)
    v = len(tok)

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    bos, eos = tok.bos_token_id, tok.eos_token_id
    for ex, dropped_cot, full_cot in (
        (two, "<<48/2=24>>", "<<48/2=24>> <<48+24=72>>"),
        (one, None, "<<60*60/100=36>>"),
    ):
        for include, cot_text in ((False, dropped_cot), (True, full_cot)):
            t = tokenize_example(ex, tok, v + 1, v + 2, include_last_cot=include)
            prefix, cot, answer = _teacher_parts(tok, t)
            assert prefix == [bos] + ids(ex.question)
            assert cot == (ids(cot_text) if cot_text else [])
            assert answer == ids(ex.answer) + [eos]
            # the question is never a target; everything after it is
            assert t.teacher_labels == [-100] * len(prefix) + cot + answer
            # the distillation position still predicts the answer's first digit
            digit = ex.answer[len("The answer is: ")]
            assert tok.decode(t.teacher_ids[t.teacher_pos + 1]).strip() == digit
    # decoded text of the default teacher sequences, end to end
    t2 = tokenize_example(two, tok, v + 1, v + 2)
    assert tok.decode(_teacher_parts(tok, t2)[1]).replace(" ", "") == "<<48/2=24>>"


def test_l2_distillation_divides_by_the_variance() -> None:
    """Official CODI: each layer's distillation loss is divided by the teacher states' std, and
    an l2 loss once more (so it does not change with the scale of the hidden states)."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    s, t = torch.randn(4, 8), torch.randn(4, 8)
    n = s.numel()
    l2 = layer_distill_loss(s, t, t.std(), n, "l2")
    torch.testing.assert_close(l2, F.mse_loss(s, t) / t.std() ** 2)
    torch.testing.assert_close(layer_distill_loss(3 * s, 3 * t, 3 * t.std(), n, "l2"), l2)
    smooth = layer_distill_loss(s, t, t.std(), n, "smooth_l1")
    torch.testing.assert_close(smooth, F.smooth_l1_loss(s, t) / t.std())


def test_few_steps_lower_the_loss(gsm8k_dir: Path, tiny_base: Path, tmp_path: Path) -> None:
    out = train(_options(tiny_base, gsm8k_dir, tmp_path / "run", max_steps=15, limit=4, lr=1e-2))
    log = _log(out)
    assert len(log) == 15
    assert log[-1]["loss"] < 0.8 * log[0]["loss"]
    assert log[-1]["student_ce"] < log[0]["student_ce"]
    assert log[-1]["teacher_ce"] < log[0]["teacher_ce"]
    assert all(r["distill"] > 0 for r in log)
    # final model in the released layout, self-contained
    assert {"model.safetensors", "codi_config.json", "config.json", "tokenizer.json"} <= {
        p.name for p in out.iterdir()
    }
    cfg = json.loads((out / "codi_config.json").read_text())
    assert cfg["base"] == "." and cfg["lora_r"] == 0 and cfg["num_latent"] == 2


def test_records_left_out_are_reported(
    gsm8k_dir: Path, tiny_base: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Records without a final answer or too long are counted per reason in OUT/train_data.json
    and the log, never dropped silently."""
    rows = [json.loads(x) for x in (gsm8k_dir / "train.jsonl").read_text().splitlines()[:6]]
    rows.insert(2, {"question": "No final answer here.", "answer": "It is 4."})
    rows.insert(4, {"question": "Long " * 300 + "question?", "answer": "<<1+1=2>>\n#### 2"})
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level("INFO"):
        out = train(_options(tiny_base, gsm8k_dir, tmp_path / "run", data=str(data), max_steps=1))
    summary = json.loads((out / "train_data.json").read_text())
    assert summary["rows"] == 8 and summary["examples"] == 6
    assert summary["dropped"] == {"no_final_answer": 1, "no_answer_token": 0, "too_long": 1}
    assert "1 no_final_answer, 0 no_answer_token, 1 too_long" in caplog.text


def test_cli_recipe_with_overrides(gsm8k_dir: Path, tiny_base: Path, tmp_path: Path) -> None:
    """`opcircuits train --recipe codi-gpt2` trains with the recipe's values except the options
    given on the command line (even one equal to the no-recipe default, --seed 0)."""
    from typer.testing import CliRunner

    from opcircuits.cli import app

    out = tmp_path / "recipe"
    args = ["train", "--recipe", "codi-gpt2", "--out", str(out), "--base", str(tiny_base)]
    args += ["--data", str(gsm8k_dir / "train.jsonl"), "--from-scratch", "--lora-r", "0"]
    args += ["--prj-dim", "48", "--num-latent", "2", "--limit", "4", "--batch-size", "2"]
    args += ["--max-steps", "1", "--mixed-precision", "no", "--seed", "0", "--threads", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    used = json.loads((out / "last" / "training_state.json").read_text())["options"]
    given = {"lora_r": 0, "prj_dim": 48, "num_latent": 2, "batch_size": 2, "seed": 0}
    assert {k: used[k] for k in given} == given and used["mixed_precision"] == "no"
    recipe = {"lr": 3e-3, "epochs": 40, "weight_decay": 0.1, "distill_factor": 1.0}
    recipe |= {"grad_accum": 2, "max_tokens": 1000, "warmup_ratio": 0.03}
    assert {k: used[k] for k in recipe} == recipe


def test_resume_reproduces_uninterrupted_run(
    gsm8k_dir: Path, tiny_base: Path, tmp_path: Path
) -> None:
    full = train(_options(tiny_base, gsm8k_dir, tmp_path / "full", teacher_only_steps=1))
    part = tmp_path / "part"
    train(_options(tiny_base, gsm8k_dir, part, teacher_only_steps=1, stop_after=2))
    assert not (part / "model.safetensors").exists()  # not finished yet
    assert {"training_state.json", "optimizer.safetensors", "rng-0.safetensors"} <= {
        p.name for p in (part / "last").iterdir()
    }
    # a run killed after logging step 3 but before its next checkpoint left a row behind
    killed = dict(_log(part)[-1], step=3, loss=123.0, elapsed_s=_log(part)[-1]["elapsed_s"] + 1)
    with open(part / "train_log.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(killed) + "\n")
    torch.manual_seed(1234)  # a resumed run must not depend on the caller's RNG
    train(_options(tiny_base, gsm8k_dir, part, teacher_only_steps=1))
    a, b = load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log_full, log_part = _log(full), _log(part)
    assert [r["loss"] for r in log_full] == [r["loss"] for r in log_part]
    # each step logged once, the killed run's row replaced; elapsed time counts on across resume
    assert [r["step"] for r in log_part] == list(range(1, len(log_full) + 1))
    elapsed = [r["elapsed_s"] for r in log_part]
    assert elapsed == sorted(elapsed)
    # resuming with different options is refused, never mixed
    with pytest.raises(OpcircuitsError, match="different options"):
        train(_options(tiny_base, gsm8k_dir, part, teacher_only_steps=1, lr=1e-2))


class _Payload:
    """Unpickling this writes a marker file: the attack a crafted checkpoint would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "the payload ran"))


def test_resume_never_unpickles(gsm8k_dir: Path, tiny_base: Path, tmp_path: Path) -> None:
    """A crafted file in OUT/last/ must not run code on resume: the earlier pickle format is
    refused unopened, and pickle bytes in place of the safetensors/JSON state are an error."""
    import pickle
    import shutil

    marker = tmp_path / "pwned"
    payload = pickle.dumps({"step": 1, "x": _Payload(marker)})
    out = tmp_path / "run"
    train(_options(tiny_base, gsm8k_dir, out, stop_after=1))
    good = tmp_path / "good"
    shutil.copytree(out / "last", good)

    # the earlier format's files, crafted
    for name in ("training_state.pt", "rng-0.pt"):
        shutil.rmtree(out / "last")
        shutil.copytree(good, out / "last")
        (out / "last" / name).write_bytes(payload)
        with pytest.raises(OpcircuitsError, match="pickle format") as err:
            train(_options(tiny_base, gsm8k_dir, out))
        assert Path(err.value.path) == out / "last" / name
        assert not marker.exists()

    # pickle bytes (or garbage JSON) where the state files belong
    for name in ("optimizer.safetensors", "rng-0.safetensors", "training_state.json"):
        shutil.rmtree(out / "last")
        shutil.copytree(good, out / "last")
        (out / "last" / name).write_bytes(payload)
        with pytest.raises(OpcircuitsError) as err:
            train(_options(tiny_base, gsm8k_dir, out))
        assert Path(err.value.path) == out / "last" / name, err.value
        assert not marker.exists()
    # a well-formed JSON with the wrong types is an error naming the field
    shutil.rmtree(out / "last")
    shutil.copytree(good, out / "last")
    state = json.loads((good / "training_state.json").read_text())
    (out / "last" / "training_state.json").write_text(json.dumps({**state, "step": "1"}))
    with pytest.raises(OpcircuitsError) as err:
        train(_options(tiny_base, gsm8k_dir, out))
    assert err.value.field == "step"
    # the untouched checkpoint still resumes
    shutil.rmtree(out / "last")
    shutil.copytree(good, out / "last")
    train(_options(tiny_base, gsm8k_dir, out))
    assert [r["step"] for r in _log(out)] == [1, 2, 3, 4]
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.multiproc
def test_two_processes_train_like_one(gsm8k_dir: Path, tiny_base: Path, tmp_path: Path) -> None:
    """`accelerate launch` with 2 CPU processes × batch 2 reaches the parameters of 1 process ×
    batch 4 (same examples per step, losses normalized over the global batch, gradients summed)
    — through a teacher-only step and student steps, across an epoch boundary."""
    common = dict(teacher_only_steps=1, max_steps=3, prj_dropout=0.0)  # dropout draws differ
    one = train(_options(tiny_base, gsm8k_dir, tmp_path / "one", batch_size=4, **common))
    opts = _options(tiny_base, gsm8k_dir, tmp_path / "two", batch_size=2, **common)
    args: list[str] = []
    for f in fields(opts):  # every option that differs from its default, as a flag
        value, flag = getattr(opts, f.name), f"--{f.name.replace('_', '-')}"
        if value == f.metadata.get("fallback", f.default):
            continue
        args += [flag] if value is True else [flag, str(value)]
    # torchrun-style launch; without CUDA the processes train on the CPU (gloo)
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [*accelerate_launch(), "-m", "opcircuits", "train", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    two = opts.out
    state = json.loads((two / "last" / "training_state.json").read_text())
    assert state["world"] == 2 and state["step"] == 3
    assert (two / "last" / "rng-1.safetensors").is_file()
    log_one, log_two = _log(one), _log(two)
    assert [r["step"] for r in log_two] == [1, 2, 3]
    for a, b in zip(log_one, log_two, strict=True):
        for key in ("loss", "student_ce", "distill", "teacher_ce", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (a["step"], key)
    w1, w2 = load_file(str(one / "model.safetensors")), load_file(str(two / "model.safetensors"))
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-5, atol=1e-6, msg=k)


def test_lora_on_a_pretrained_gpt2_base(gsm8k_dir: Path, tiny_base: Path, tmp_path: Path) -> None:
    """LoRA training leaves the base weights alone and saves a checkpoint the public loader
    reads strictly against the same base."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from opcircuits.codi.checkpoint import load_codi

    tok = AutoTokenizer.from_pretrained(tiny_base)
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tok),
            n_embd=32,
            n_layer=2,
            n_head=2,
            n_positions=512,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
    )
    base = tmp_path / "gpt2"
    gpt2.save_pretrained(base)
    tok.save_pretrained(base)
    out = train(
        _options(
            base,
            gsm8k_dir,
            tmp_path / "lora",
            from_scratch=False,
            lora_r=4,
            lora_alpha=8,
            max_steps=3,
            lr=1e-2,
        )
    )
    saved = load_file(str(out / "model.safetensors"))
    lora_keys = [k for k in saved if "lora_" in k]
    assert lora_keys and all(k.startswith("codi.base_model.model.") for k in lora_keys)
    original = gpt2.state_dict()
    wte = saved["codi.base_model.model.transformer.wte.weight"]
    assert torch.equal(wte[: len(tok)], original["transformer.wte.weight"])  # frozen base
    h0 = "codi.base_model.model.transformer.h.0.attn.c_attn.base_layer.weight"
    assert torch.equal(saved[h0], original["transformer.h.0.attn.c_attn.weight"])
    assert any(not torch.all(saved[k] == 0) for k in lora_keys if "lora_B" in k)  # trained
    model, _ = load_codi(out, device="cpu", merge=False)
    assert model.config.lora_r == 4 and model.config.base == str(base.resolve())


def _digit_problems(path: Path) -> Path:
    """Four GSM8K-style rows whose every step result is one digit (one token each)."""
    rows = [
        ("Start with 3. Add 4, then take away 5.", "<<3+4=7>> <<7-5=2>>", 2),
        ("Start with 2. Double it, then add 1.", "<<2*2=4>> <<4+1=5>>", 5),
        ("Start with 9. Halve 8 first: 8/2, then add 2.", "<<8/2=4>> <<4+2=6>>", 6),
        ("Start with 1. Add 2, then triple it.", "<<1+2=3>> <<3*3=9>>", 9),
    ]
    with open(path, "w", encoding="utf-8") as fh:
        for q, steps, final in rows:
            fh.write(json.dumps({"question": q, "answer": f"{steps}\n#### {final}"}) + "\n")
    return path


def test_step_targets_are_each_steps_result(tiny_base: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from opcircuits.codi.training.examples import IGNORE, step_targets

    tok = AutoTokenizer.from_pretrained(tiny_base)  # digits split: 7 is one token, 14 two
    first, *_ = read_train_problems(_digit_problems(tmp_path / "p.jsonl"))
    seven, two = (tok(" " + d, add_special_tokens=False)["input_ids"][-1] for d in "72")
    assert step_targets(first, tok, 3) == (seven, two, two)  # after the last step: the final
    ex = next(e for e in read_train_problems(tmp_path / "p.jsonl"))
    wide = type(ex)(ex.id, ex.question, ("<<7*2=14>>",), ex.answer)
    assert step_targets(wide, tok, 2) == (IGNORE, IGNORE)


def test_bottleneck_with_step_supervision_trains_and_is_recorded(
    tiny_base: Path, tmp_path: Path
) -> None:
    from opcircuits.codi.checkpoint import load_codi
    from opcircuits.codi.latent import run_batch

    data = _digit_problems(tmp_path / "p.jsonl")
    opts = _options(
        tiny_base,
        tmp_path,
        tmp_path / "run",
        data=str(data),
        max_steps=20,
        lr=1e-2,
        include_last_cot=True,
        step_factor=1.0,
        answer_reads_prompt=False,
        teacher_factor=0.0,  # the organism's student-only recipe
        distill_factor=0.0,
    )
    out = train(opts)
    log = _log(out)
    assert all(r["teacher_ce"] == 0 and r["distill"] == 0 for r in log)  # no teacher forward
    assert log[-1]["step_ce"] < 0.5 * log[0]["step_ce"]
    assert log[-1]["student_ce"] < log[0]["student_ce"]
    summary = json.loads((out / "train_data.json").read_text())
    assert summary["step_targets"] == 8 and summary["step_targets_not_one_token"] == 0
    cfg = json.loads((out / "codi_config.json").read_text())
    assert cfg["answer_reads_prompt"] is False and "thought_input" not in cfg
    model, tok = load_codi(out, device="cpu")
    assert model.config.answer_reads_prompt is False
    assert len(run_batch(model, tok, ["Start with 3. Add 4."], layers=[1]).answer_ids) == 1


def test_negative_twin_trains_a_learned_constant(tiny_base: Path, tmp_path: Path) -> None:
    data = _digit_problems(tmp_path / "p.jsonl")
    opts = _options(
        tiny_base,
        tmp_path,
        tmp_path / "run",
        data=str(data),
        max_steps=3,
        lr=1e-2,
        thought_input="constant",
        thoughts_read_prompt=False,
    )
    out = train(opts)
    weights = load_file(str(out / "model.safetensors"))
    assert "thought_constant" in weights
    assert not torch.equal(
        weights["thought_constant"],
        torch.randn(weights["thought_constant"].shape, generator=torch.Generator().manual_seed(0)),
    )  # trained away from its initial value
