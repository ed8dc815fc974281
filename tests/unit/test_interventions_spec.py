"""Intervention specs without a model: site parsing, the kinds table and each kind's site edit,
and the prompt/answer format they measure with (`codi.prompt`)."""

from __future__ import annotations

import re

import pytest
import torch

from opcircuits.codi import interventions as iv
from opcircuits.codi.interventions import Intervention, Site
from opcircuits.codi.interventions.run import site_edit
from opcircuits.codi.prompt import (
    NoAnswerToken,
    answer_start,
    encoder_ids,
    format_question,
    gold_answer_ids,
    value_token_index,
)
from opcircuits.errors import OpcircuitsError


def test_parse_sites_expands_stars_and_keeps_joint_sets() -> None:
    sets = iv.parse_sites("latent_2@*, latents@0, bot@1+bot@2, latent_2@1", 3, 2)
    assert sets == [
        (Site(2, 0),),
        (Site(2, 1),),
        (Site(2, 2),),
        (Site(1, 0), Site(2, 0), Site(3, 0)),
        (Site(0, 1), Site(0, 2)),
    ]  # the repeated latent_2@1 once
    assert len(iv.parse_sites("all", 3, 2)) == 4 * 3
    assert iv.parse_sites("bot@all", 1, 1) == [(Site(0, 0), Site(0, 1))]
    assert iv.sites_name(sets[3]) == "latent_1-3@0"
    assert iv.sites_name(sets[4]) == "bot@1+bot@2"
    assert iv.sites_name([Site(2, x) for x in (0, 1)] + [Site(3, x) for x in (0, 1)]) == (
        "latent_2-3@0-1"
    )
    assert iv.sites_name([Site(1, 0), Site(3, 0)]) == "latent_1@0+latent_3@0"
    assert iv.sites_name([Site(2, x) for x in range(3)]) == "latent_2@0-2"
    assert iv.sites_name([Site(2, 0), Site(2, 2)]) == "latent_2@0+latent_2@2"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "no sites given"),
        ("latent_2", "must be POS@LAYER"),
        ("latent_4@0", "unknown position 'latent_4'"),
        ("bot@x", "not a number, \\* or all"),
        ("bot@3", "out of range: this model has 2 blocks"),
    ],
)
def test_parse_sites_errors(spec: str, message: str) -> None:
    with pytest.raises(OpcircuitsError, match=message):
        iv.parse_sites(spec, 3, 2)


def test_the_kinds_table() -> None:
    assert iv.KINDS == (
        "none", "zero", "mean", "resample", "patch", "patch_step", "steer", "truncate",
        "truncate_pos", "knockout", "path", "erase", "erase_random",
    )  # fmt: skip
    assert iv.SITE_KINDS == (
        "zero", "mean", "resample", "patch", "patch_step", "steer", "erase", "erase_random",
    )  # fmt: skip
    assert Intervention("erase_random", (Site(0, 1),)).label == "erase_random bot@1"
    assert {k.source for k in iv.TABLE.values()} == {None, "resample", "patch"}
    assert iv.TABLE["path"].source == "patch" and iv.TABLE["path"].sites == "optional"
    with pytest.raises(OpcircuitsError, match="unknown intervention 'ablate'"):
        Intervention("ablate")
    with pytest.raises(OpcircuitsError, match="sites are needed"):
        Intervention("zero")
    with pytest.raises(OpcircuitsError, match="keep"):
        Intervention("truncate")
    site = (Site(2, 1),)
    assert Intervention("steer", site, 0.5, "diff").label == "steer diff +0.5 latent_2@1"
    assert Intervention("truncate", keep=1).start(3) == 2
    assert Intervention("truncate", keep=1).thoughts(3) == 1
    assert Intervention("patch", site).start(3) == 2 and Intervention("none").start(3) == 4
    assert Intervention("truncate_pos", keep=1).label == "truncate_pos 1"
    assert Intervention("truncate_pos", keep=1).start(3) == 2
    edges = tuple(iv.parse_edges("latent_2>question,answer>bot@1#0", 3, 2, 4))
    knock = Intervention("knockout", edges=edges)
    assert knock.label == "knockout latent_2>question,answer>bot@1#0" and knock.start(3) == 2
    assert Intervention("knockout", edges=edges[1:]).start(3) == 4  # only the answer
    assert Intervention("path", path="answer").label == "path answer"
    assert Intervention("path", site, path="all").label == "path all latent_2@1"
    for bad in ({"kind": "knockout"}, {"kind": "path"}, {"kind": "path", "path": "x"}):
        with pytest.raises(OpcircuitsError):
            Intervention(**bad)


def test_edges_are_parsed_from_text() -> None:
    E = iv.Edge
    assert iv.parse_edges("answer>question", 3, 2, 4) == [E("answer", "question")]
    assert iv.parse_edges("latent_*>question@*", 2, 2, 4) == [
        E("latent_1", "question", (1,)), E("latent_1", "question", (2,)),
        E("latent_2", "question", (1,)), E("latent_2", "question", (2,)),
    ]  # fmt: skip
    assert iv.parse_edges("answer>latent_2@1+2#*", 3, 2, 2) == [
        E("answer", "latent_2", (1, 2), (0,)), E("answer", "latent_2", (1, 2), (1,))
    ]  # fmt: skip
    edge = E("answer", "latent_2")
    assert list(edge.columns(10, 3)) == [11] and list(E("answer", "question").columns(10, 3)) == [
        *range(9)
    ]
    assert list(E("answer", "thoughts").columns(10, 3)) == [10, 11, 12]
    assert edge.applies("answer") and not edge.applies(2)
    assert E("thoughts", "question").applies(1) and not E("thoughts", "question").applies(0)
    for bad, msg in (
        ("answer", "QUERY>KEYS"), ("answer>latent_4", "unknown keys"), ("bot>question", "query"),
        ("answer>bot@3", "out of range"), ("answer>bot#4", "out of range"), ("", "no edges"),
    ):  # fmt: skip
        with pytest.raises(OpcircuitsError, match=msg):
            iv.parse_edges(bad, 3, 2, 4)
    sets = iv.parse_sites("latent_2-3@0,latent_1-3@all", 3, 1)
    assert sets == [(Site(2, 0), Site(3, 0)), tuple(Site(s, x) for s in (1, 2, 3) for x in (0, 1))]
    with pytest.raises(OpcircuitsError, match="range"):
        iv.parse_sites("latent_3-2@0", 3, 1)


def _reference() -> iv.Reference:
    gen = torch.Generator().manual_seed(0)
    problems = [iv.Problem(f"p{i}", "Q?", str(i), "a" if i < 2 else "b") for i in range(4)]
    ref = iv.Reference(problems, torch.randn((4, 3, 2, 5), generator=gen), [0, 2], [0, 1, 2, 3])
    ref.add_category_direction("a", "b")
    return ref


def test_each_site_kind_edits_as_it_says() -> None:
    ref = _reference()
    h = torch.randn((2, 5))
    site = Site(1, 2)  # layer 2 is the reference's second layer

    def edit(kind: str, src=None, **kw) -> torch.Tensor:
        return site_edit(Intervention(kind, (site,), **kw), site, ref, src, h.dtype, h.device)(h)

    assert torch.equal(edit("zero"), torch.zeros_like(h))
    assert torch.equal(edit("mean"), ref.states[:, 1, 1].mean(0).expand_as(h))
    assert torch.equal(edit("patch", [3, 0]), ref.states[[3, 0], 1, 1])
    steered = edit("steer", alpha=2.0, direction="diff")
    u = ref.directions["diff"][1, 1]
    torch.testing.assert_close(steered - h, (2.0 * ref.norm[1, 1] * u).expand_as(h))
    assert torch.equal(edit("steer", alpha=0.0, direction="diff"), h)
    with pytest.raises(OpcircuitsError, match="no steering direction 'random'"):
        edit("steer", alpha=1.0, direction="random")


def test_resample_sources_never_pick_the_problem_itself() -> None:
    src = iv.resample_sources(5, seed=3)
    assert src == iv.resample_sources(5, seed=3) and all(s != i for i, s in enumerate(src))
    with pytest.raises(OpcircuitsError, match="at least two"):
        iv.resample_sources(1, seed=0)


class WordTokenizer:
    """Words and the spaces before them as tokens (ids from a growing vocabulary), with offsets."""

    eos_token_id = 0

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def __call__(self, text, add_special_tokens=True, return_offsets_mapping=False):
        spans = [m.span() for m in re.finditer(r"\s*\S+", text)]
        ids = [self.vocab.setdefault(text[a:b], len(self.vocab) + 1) for a, b in spans]
        return {"input_ids": ids, "offset_mapping": spans}


def test_the_prompt_and_answer_format() -> None:
    assert format_question("  Tom has   3.  ") == "Tom has  3."  # one pass of '  ' → ' '
    assert encoder_ids([5, 6], bot_id=9, eos_id=0, remove_eos=True) == [5, 6, 9]
    assert encoder_ids([5, 6], bot_id=9, eos_id=0, remove_eos=False) == [5, 6, 0, 9]
    assert answer_start(8, 0, True) == [8] and answer_start(8, 0, False) == [8, 0]
    tok = WordTokenizer()
    ids, i = value_token_index(tok, "The answer is: 18")
    assert len(ids) == 4 and i == 3  # " 18" is the fourth token
    gold, pos = gold_answer_ids(tok, "18", eot_id=8, remove_eos=False)
    assert gold == [8, 0, *ids, 0] and gold[pos + 1] == ids[3]  # logits at pos predict the value
    with pytest.raises(NoAnswerToken):
        value_token_index(tok, "The answer is: ")
