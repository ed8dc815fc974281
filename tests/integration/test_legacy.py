"""Import of the earlier scripts' thoughts JSON into a store (`opcircuits.store.legacy`), from
real GSM8K solutions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from opcircuits.cli import app
from opcircuits.errors import OpcircuitsError
from opcircuits.store import open_store
from opcircuits.store.legacy import ImportLegacyOptions, import_legacy, parse_gold


def _gsm8k(gsm8k_dir: Path, n: int) -> list[dict]:
    with open(gsm8k_dir / "test.jsonl", encoding="utf-8") as fh:
        return [json.loads(next(fh)) for _ in range(n)]


def _legacy_items(gsm8k_dir: Path, n: int, d: int = 8) -> list[dict]:
    rng = np.random.default_rng(3)
    items = []
    for i, row in enumerate(_gsm8k(gsm8k_dir, n)):
        items.append(
            {
                "id": i,
                "question": row["question"],
                "answer": row["answer"],
                "operation_type": ["pure_addition", "mixed"][i % 2],
                "thoughts": {
                    name: rng.normal(size=(6, d)).round(4).tolist()
                    for name in ("early", "middle", "late")
                },
            }
        )
    return items


def test_import_legacy(tmp_path, gsm8k_dir):
    items = _legacy_items(gsm8k_dir, 7)
    src = tmp_path / "continuous_thoughts_test.json"
    src.write_text(json.dumps(items, indent=1))
    store = import_legacy(ImportLegacyOptions(file=src, out=tmp_path / "s", layers="3,6,10"))
    assert store.layers == [3, 6, 10] and store.layer_names == ["early", "middle", "late"]
    assert store.positions == ["bot", "latent_1", "latent_2", "latent_3", "latent_4", "latent_5"]
    assert store.manifest["dataset_sha256"] and store.manifest["source"] == "legacy"
    want = np.array([[it["thoughts"][k] for k in ("early", "middle", "late")] for it in items])
    np.testing.assert_allclose(store.hidden(), want.transpose(0, 2, 1, 3), atol=2e-3)
    np.testing.assert_array_equal(store.hidden(layers=["late"])[:, :, 0], store.hidden()[:, :, 2])
    df = store.records
    assert df["id"].tolist() == [str(i) for i in range(7)]
    assert df["category"].tolist() == [it["operation_type"] for it in items]
    golds = [float(it["answer"].split("####")[1].replace(",", "")) for it in items]
    assert df["gold"].tolist() == golds
    assert df["n_steps"].tolist() == [it["answer"].count("<<") for it in items]
    # first GSM8K test problem (Janet's ducks): 16-3-4=9, 9*2=18
    assert list(df["ops_used"][0]) == ["-", "*"]
    assert list(df["step_results"][0]) == [9.0, 18.0]
    assert df["predicted"].isna().all() and df["answer_text"].isna().all()


def test_parse_gold():
    assert parse_gold("so 5+5=10\n#### 1,234") == 1234.0
    assert parse_gold("#### -3.5") == -3.5
    with pytest.raises(OpcircuitsError, match="x.json:3: field 'answer': final answer '\\$12'"):
        parse_gold("#### $12", path=Path("x.json"), line=3)
    assert parse_gold("no marker 12") is None


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda items: {"x": items}, r"expected a JSON list"),
        (lambda items: [*items[:2], 5], r"item 2: expected an object, got int"),
        (
            lambda items: [items[0], {**items[1], "question": None}],
            r"field 'question': item 1: has type NoneType",
        ),
        (
            lambda items: [items[0], {k: v for k, v in items[1].items() if k != "thoughts"}],
            r"field 'thoughts': item 1: missing",
        ),
        (
            lambda items: [items[0], {**items[1], "thoughts": {"early": [], "late": []}}],
            r"field 'thoughts': item 1: layers \['early', 'late'\] do not match",
        ),
        (
            lambda items: [
                items[0],
                {**items[1], "thoughts": {**items[1]["thoughts"], "middle": [[1.0] * 8] * 5}},
            ],
            r"field 'thoughts.middle': item 1: shape \[5, 8\] differs from the first item's",
        ),
        (
            lambda items: [
                items[0],
                {**items[1], "thoughts": {**items[1]["thoughts"], "late": [[1.0] * 8, [1.0] * 7]}},
            ],
            r"field 'thoughts.late': item 1: not a list of equal-length number lists",
        ),
        (lambda items: [items[0], {**items[1], "id": 0}], r"ids repeat: \['0'\]"),
        (lambda items: [], "the list holds no items"),
        (
            lambda items: [items[0], {**items[1], "answer": "so #### ten"}],
            r"field 'answer': item 1: final answer 'ten' after '####' is not a number",
        ),
    ],
)
def test_import_legacy_rejects_malformed_input(tmp_path, gsm8k_dir, mutate, message):
    src = tmp_path / "bad.json"
    src.write_text(json.dumps(mutate(_legacy_items(gsm8k_dir, 3)), indent=1))
    with pytest.raises(OpcircuitsError, match=message) as info:
        import_legacy(ImportLegacyOptions(file=src, out=tmp_path / "s"))
    assert str(src) in str(info.value)
    assert not (tmp_path / "s").exists()


def test_import_legacy_reports_the_line_of_broken_json(tmp_path, gsm8k_dir):
    text = json.dumps(_legacy_items(gsm8k_dir, 3), indent=1)
    cut = text.index('"operation_type"', text.index('"id": 2'))
    src = tmp_path / "broken.json"
    src.write_text(text[:cut] + "oops" + text[cut:])
    line = text[:cut].count("\n") + 1
    with pytest.raises(OpcircuitsError, match=rf"broken.json:{line}: item 2: not valid JSON"):
        import_legacy(ImportLegacyOptions(file=src, out=tmp_path / "s"))
    with pytest.raises(OpcircuitsError, match="3 layer names"):
        import_legacy(ImportLegacyOptions(file=src, out=tmp_path / "s", layers="1,2"))


def test_cli_import_legacy_and_info(tmp_path, gsm8k_dir):
    src = tmp_path / "continuous_thoughts.json"
    src.write_text(json.dumps(_legacy_items(gsm8k_dir, 4)))
    runner = CliRunner()
    out = tmp_path / "store"
    result = runner.invoke(
        app,
        [
            "store",
            "import-legacy",
            str(src),
            "--out",
            str(out),
            "--layers",
            "1,2,3",
            "--store-dtype",
            "float32",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "4 problems" in result.output
    result = runner.invoke(app, ["store", "info", str(out)])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["shapes"] == {"hidden": [4, 6, 3, 8]}
    assert info["manifest"]["layers"] == [1, 2, 3]
    assert info["manifest"]["store_dtype"] == "float32"
    # a second import onto the same store needs --overwrite
    result = runner.invoke(app, ["store", "import-legacy", str(src), "--out", str(out)])
    assert isinstance(result.exception, OpcircuitsError)
    result = runner.invoke(
        app, ["store", "import-legacy", str(src), "--out", str(out), "--overwrite"]
    )
    assert result.exit_code == 0, result.output
    assert open_store(out).layers == [4, 8, 14]
