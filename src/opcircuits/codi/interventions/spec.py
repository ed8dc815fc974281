"""What an intervention is: its sites, its kind and parameters, and the problems it runs on.

A *site* is a (position, layer) pair: positions `bot` (step 0) and `latent_1 … latent_K` (steps
1…K), layers as in the thought store (Hugging Face `hidden_states` indices: 0 = the input of block
1, l = the output of block l, the last layer the final hidden state after the final norm).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opcircuits.codi.interventions.edges import Edge
from opcircuits.codi.interventions.kinds import KINDS, TABLE
from opcircuits.codi.prompt import extract_number
from opcircuits.errors import OpcircuitsError


def position_name(step: int) -> str:
    return "bot" if step == 0 else f"latent_{step}"


def position_step(name: str, num_latent: int) -> int:
    """`bot` → 0, `latent_k` → k (1 ≤ k ≤ K)."""
    if name == "bot":
        return 0
    m = re.fullmatch(r"latent_(\d+)", name)
    if m and 1 <= int(m.group(1)) <= num_latent:
        return int(m.group(1))
    raise OpcircuitsError(
        f"unknown position {name!r}: positions are bot, latent_1 .. latent_{num_latent}",
        field="sites",
    )


@dataclass(frozen=True, order=True)
class Site:
    step: int  # 0 = bot, k = latent_k
    layer: int  # hidden_states index: 0 = block input, l = block l output, n = final (normed)

    @property
    def name(self) -> str:
        return f"{position_name(self.step)}@{self.layer}"


def parse_sites(spec: str, num_latent: int, num_layers: int) -> list[tuple[Site, ...]]:
    """Site sets from text: comma-separated items, each `POS@LAYER` or several joined by `+` (one
    intervention on all of them). POS is `bot`, `latent_k`, `latents` (every latent step at once),
    `latent_a-b` (latent_a … latent_b at once) or `*` (each position in turn); LAYER is a number,
    `*` (each layer in turn) or `all` (every layer at once). `all` alone = every single site.
    Example: `latent_3@*,latents@0,bot@2+bot@3,latent_2-6@all`."""
    out: list[tuple[Site, ...]] = []
    for item in (x.strip() for x in spec.split(",")):
        if not item:
            continue
        if item == "all":
            item = "*@*"
        for variant in _expand(item, num_latent, num_layers):
            key = _site_set(variant, item, num_latent, num_layers)
            if key not in out:
                out.append(key)
    if not out:
        raise OpcircuitsError("no sites given", field="sites")
    return out


def _expand(item: str, num_latent: int, num_layers: int) -> list[list[str]]:
    """`*` expanded into one variant per value; `latents` / `all` stay joint within a variant."""
    positions = [position_name(s) for s in range(num_latent + 1)]
    variants: list[list[str]] = [[]]
    for part in item.split("+"):
        if "@" not in part:
            raise OpcircuitsError(
                f"site {part!r} must be POS@LAYER (e.g. latent_3@2)", field="sites"
            )
        pos, layer = (p.strip() for p in part.split("@", 1))
        choices = [
            f"{p}@{lay}"
            for p in (positions if pos == "*" else [pos])
            for lay in (range(num_layers + 1) if layer == "*" else [layer])
        ]
        variants = [v + [c] for v in variants for c in choices]
    return variants


def _site_set(parts: list[str], item: str, num_latent: int, num_layers: int) -> tuple[Site, ...]:
    """The sorted sites of one variant (`POS@LAYER` parts, no `*`)."""
    sites: set[Site] = set()
    for part in parts:
        pos, layer = part.split("@", 1)
        steps = _steps(pos, num_latent)
        if layer == "all":
            layers = list(range(num_layers + 1))
        else:
            try:
                layers = [int(layer)]
            except ValueError:
                raise OpcircuitsError(
                    f"layer {layer!r} in {item!r} is not a number, * or all", field="sites"
                ) from None
            if not 0 <= layers[0] <= num_layers:
                raise OpcircuitsError(
                    f"layer {layers[0]} in {item!r} out of range: this model has "
                    f"{num_layers} blocks, so layers are 0 .. {num_layers}",
                    field="sites",
                )
        sites.update(Site(s, lay) for s in steps for lay in layers)
    return tuple(sorted(sites))


def _steps(pos: str, num_latent: int) -> list[int]:
    """The steps of a position: `latents` every thought, `latent_a-b` a range, else one."""
    if pos == "latents":
        return list(range(1, num_latent + 1))
    m = re.fullmatch(r"latent_(\d+)-(\d+)", pos)
    if m:
        a, b = int(m.group(1)), int(m.group(2))
        if not 1 <= a <= b <= num_latent:
            raise OpcircuitsError(
                f"position range {pos!r}: need 1 <= a <= b <= {num_latent}", field="sites"
            )
        return list(range(a, b + 1))
    return [position_step(pos, num_latent)]


def joint_name(first: int, last: int) -> str:
    """The position of latent_first … latent_last together (`latents` for all of them)."""
    return f"latent_{first}" if first == last else f"latent_{first}-{last}"


def sites_name(sites: Sequence[Site]) -> str:
    """`latent_3@2`, `bot@1+latent_2@3`; a block of consecutive thoughts at the same layers is
    written as a range: `latent_2-6@0`, `latent_2-6@0-4` (layers 0 to 4), `latent_6@0-4`."""
    steps = sorted({s.step for s in sites})
    layers = sorted({s.layer for s in sites})
    block = len(sites) > 1 and steps[0] >= 1 and steps == list(range(steps[0], steps[-1] + 1))
    if block and len(sites) == len(steps) * len(layers):
        if len(layers) == 1 or layers == list(range(layers[0], layers[-1] + 1)):
            where = str(layers[0]) if len(layers) == 1 else f"{layers[0]}-{layers[-1]}"
            return f"{joint_name(steps[0], steps[-1])}@{where}"
    return "+".join(s.name for s in sites)


@dataclass(frozen=True)
class Intervention:
    """One intervention, applied to every problem of a run. See the module docstring."""

    kind: str
    sites: tuple[Site, ...] = ()
    alpha: float = 0.0  # steer: multiples of the site's mean state norm
    direction: str = ""  # steer: "diff", "random" or a key of Reference.directions
    keep: int | None = None  # truncate, truncate_pos: the number of thoughts kept (0 … K-1)
    edges: tuple[Edge, ...] = ()  # knockout: the attention edges cut
    path: str = ""  # path: which segments read the partner's prompt (thoughts, answer, all)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise OpcircuitsError(
                f"unknown intervention {self.kind!r}; one of {', '.join(KINDS)}", field="kinds"
            )
        sites = TABLE[self.kind].sites
        if (sites == "required" and not self.sites) or (sites == "none" and self.sites):
            needs = [k for k, v in TABLE.items() if v.sites == "required"]
            raise OpcircuitsError(f"{self.kind}: sites are needed for {needs} only")
        if self.kind in ("truncate", "truncate_pos") and (self.keep is None or self.keep < 0):
            raise OpcircuitsError(f"{self.kind} needs keep >= 0", field="keep")
        if (self.kind == "knockout") != bool(self.edges):
            raise OpcircuitsError("edges are for knockout, and knockout needs them", field="edges")
        if (self.kind == "path") != (self.path in PATHS):
            raise OpcircuitsError(f"path needs path = one of {PATHS}", field="path")
        if self.kind == "steer" and not self.direction:
            raise OpcircuitsError("steer needs a direction", field="direction")

    @property
    def label(self) -> str:
        """A unique, readable name (the `intervention` column)."""
        if self.kind == "none":
            return "none"
        if self.kind in ("truncate", "truncate_pos"):
            return f"{self.kind} {self.keep}"
        if self.kind == "knockout":
            return "knockout " + ",".join(e.name for e in self.edges)
        if self.kind == "path":
            return f"path {self.path}" + (f" {sites_name(self.sites)}" if self.sites else "")
        if self.kind == "steer":
            return f"steer {self.direction} {self.alpha:+g} {sites_name(self.sites)}"
        return f"{self.kind} {sites_name(self.sites)}"

    def start(self, num_latent: int) -> int:
        """The first step this intervention changes (K + 1 = only the answer)."""
        if self.kind in ("truncate", "truncate_pos"):
            return min(self.keep, num_latent) + 1  # type: ignore[type-var]
        if self.kind == "none":
            return num_latent + 1
        if self.kind == "knockout":
            return min(e.first_step(num_latent) for e in self.edges)
        if self.kind == "path":
            return 0  # the whole loop again, beside the partner's prompt
        return min(s.step for s in self.sites)

    def thoughts(self, num_latent: int) -> int:
        if self.kind in ("truncate", "truncate_pos"):
            return min(self.keep, num_latent)  # type: ignore[type-var]
        return num_latent


# What `path` patches: the partner's prompt (question + bot keys and values, and bot's final
# state, which the first thought's input is made from) as read by the thoughts only, by the
# answer only, or by every segment (then at the partner's own position ids: the partner's run
# unless sites are patched too).
PATHS = ("thoughts", "answer", "all")


@dataclass
class Problem:
    """What the loop needs of one problem record."""

    id: str
    question: str
    gold: str  # the final answer as written after "The answer is: " in training
    category: str | None = None
    changed_step: int | None = None  # the step a counterfactual pair's partners differ at

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Problem:
        gold = record.get("final_answer")
        if gold is None and record.get("final_value") is not None:
            value = record["final_value"]
            gold = str(int(value)) if float(value).is_integer() else str(value)
        if not isinstance(gold, str) or not gold.strip():
            raise OpcircuitsError("no final answer", field="final_answer")
        question = record.get("question")
        if not isinstance(question, str) or not question.strip():
            raise OpcircuitsError("empty question", field="question")
        step = record.get("changed_step")
        return cls(
            str(record["id"]), question, gold.strip(), record.get("category"),
            int(step) if step is not None else None,
        )  # fmt: skip

    @property
    def gold_value(self) -> float | None:
        return extract_number(self.gold)
