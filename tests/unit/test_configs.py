"""The recipes in configs/ are checked like experiment.toml: each resolves strictly (an unknown
table or key is an error there), sets what its name says, and every `configs/...` path the README
and the docs mention exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from opcircuits.pipeline.config import resolve

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("*.toml"))
GSM8K = "../shared/data/gsm8k"

# What each recipe's name promises, as {table: {key: value}} of the resolved config.
PROMISES = {
    "prototype": {
        "run": {"mode": "prototype", "out": Path("runs/prototype")},
        "data": {"source": GSM8K},
    },
    "full": {
        "run": {"mode": "full", "out": Path("runs/full")},
        "data": {"source": GSM8K},
        "extract": {"model": "demo"},
    },
    "organism": {
        "run": {"mode": "full", "out": Path("runs/organism-full")},
        "data": {"source": "synthetic"},
        "extract": {"model": "demo-arith"},
    },
    "causal-sweep": {
        "run": {"mode": "full", "out": Path("runs/causal-sweep")},
        "data": {"source": "synthetic"},
        "extract": {"model": "demo-arith"},
        "intervene": {"enabled": "on"},
    },
}


def test_the_documented_recipes_exist():
    assert {p.stem for p in CONFIGS} == set(PROMISES)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_recipe_resolves_strictly_and_sets_what_its_name_says(path: Path):
    config = resolve(path)
    for table, values in PROMISES[path.stem].items():
        for key, value in values.items():
            assert config.tables[table][key] == value, f"{path.name}: [{table}] {key}"


def test_an_unknown_key_in_a_recipe_is_an_error(tmp_path: Path):
    from opcircuits.errors import OpcircuitsError

    bad = tmp_path / "bad.toml"
    bad.write_text((REPO / "configs" / "full.toml").read_text() + "\n[analyze]\nfold = 3\n")
    with pytest.raises(OpcircuitsError, match="fold"):
        resolve(bad)


def test_every_configs_path_the_docs_mention_exists():
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    mentioned = {
        m for page in pages for m in re.findall(r"configs/[\w.-]+\.toml", page.read_text("utf-8"))
    }
    assert mentioned, "the docs show the recipes"
    missing = sorted(m for m in mentioned if not (REPO / m).is_file())
    assert not missing, missing
