"""Attention knockouts: edges (query segment → key set) whose attention logits are set to −inf.

The engine runs each segment of the loop as its own forward over the KV cache: `bot` (step 0),
each thought (steps 1…K), and the answer (eot and the answer tokens: the verified drafts and the
token-by-token decoding). An edge names which segment's queries lose which keys:

- queries: `answer`, `thoughts` (every thought step), `latent_k` (one thought step);
- keys: `question` (the prompt before bot), `bot`, `prompt` (question + bot), `thoughts` (every
  thought), `latent_k`;
- where: every layer (default), or `@L` / `@L1+L2` (blocks 1…n, as site layers count them:
  layer l = block l's attention), and every head (default) or `#h` / `#h1+h2`.

Text form `QUERY>KEYS[@LAYERS][#HEADS]`, comma-separated; `latent_*` expands into one edge per
thought, `@*` into one per layer, `#*` into one per head. Example:
`answer>question,answer>latent_*,latent_*>question@*`.

One mechanism serves every edge (`hooks.Hooks` applies it): a pre-hook on each block's attention
module rewrites the [B, 1, q, k] mask it receives (additive or boolean) for the forward of a
matching segment — to [B, H, q, k] when heads are named. Named variants are only edges.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from opcircuits.errors import OpcircuitsError

QUERIES = ("answer", "thoughts")  # and latent_k
KEYS = ("question", "bot", "prompt", "thoughts")  # and latent_k


@dataclass(frozen=True, order=True)
class Edge:
    """Queries of segment `query` may not read keys `keys`, in `layers` (blocks; () = all) and
    `heads` (() = all)."""

    query: str
    keys: str
    layers: tuple[int, ...] = ()
    heads: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        where = f"@{'+'.join(map(str, self.layers))}" if self.layers else ""
        heads = f"#{'+'.join(map(str, self.heads))}" if self.heads else ""
        return f"{self.query}>{self.keys}{where}{heads}"

    def applies(self, segment: int | str) -> bool:
        """Whether the forward of `segment` (a step number, or "answer") has these queries."""
        if self.query == "answer":
            return segment == "answer"
        if isinstance(segment, str):
            return False
        if self.query == "thoughts":
            return segment >= 1
        return segment == _step(self.query)

    def first_step(self, num_latent: int) -> int:
        """The first step whose forward this edge changes (K + 1 = only the answer)."""
        if self.query == "answer":
            return num_latent + 1
        return 1 if self.query == "thoughts" else _step(self.query)

    def columns(self, T: int, num_latent: int) -> range:
        """Cache indices of the keys: the prompt (question + bot) is 0 … T-1, bot at T-1,
        thought k at T-1+k."""
        if self.keys == "question":
            return range(0, T - 1)
        if self.keys == "bot":
            return range(T - 1, T)
        if self.keys == "prompt":
            return range(0, T)
        if self.keys == "thoughts":
            return range(T, T + num_latent)
        k = _step(self.keys)
        return range(T - 1 + k, T + k)


def _step(name: str) -> int:
    return int(name.split("_")[1])


def _names(part: str, choices: tuple[str, ...], num_latent: int, what: str) -> list[str]:
    if part == "latent_*":
        return [f"latent_{k}" for k in range(1, num_latent + 1)]
    m = re.fullmatch(r"latent_(\d+)", part)
    if part in choices or (m and 1 <= int(m.group(1)) <= num_latent):
        return [part]
    raise OpcircuitsError(
        f"unknown {what} {part!r}: one of {', '.join(choices)}, latent_1 .. latent_{num_latent}"
        " or latent_*",
        field="edges",
    )


def _numbers(text: str, low: int, high: int, what: str) -> list[tuple[int, ...]]:
    """`*` → each value in turn; `all` → () (all); `a+b` → (a, b)."""
    if text == "all":
        return [()]
    if text == "*":
        return [(v,) for v in range(low, high + 1)]
    try:
        values = tuple(sorted({int(v) for v in text.split("+")}))
    except ValueError:
        raise OpcircuitsError(f"{what} {text!r} is not a number, * or all", field="edges") from None
    bad = [v for v in values if not low <= v <= high]
    if bad:
        raise OpcircuitsError(f"{what} {bad[0]} out of range {low} .. {high}", field="edges")
    return [values]


def parse_edges(spec: str, num_latent: int, num_layers: int, num_heads: int) -> list[Edge]:
    """Edges from text (see the module docstring), in order, each once."""
    out: list[Edge] = []
    for item in (x.strip() for x in spec.split(",")):
        if not item:
            continue
        m = re.fullmatch(r"([\w*]+)>([\w*]+)(?:@([\d+*]+|all))?(?:#([\d+*]+|all))?", item)
        if not m:
            raise OpcircuitsError(
                f"edge {item!r} must be QUERY>KEYS[@LAYERS][#HEADS] (e.g. answer>question@2)",
                field="edges",
            )
        queries = _names(m.group(1), QUERIES, num_latent, "query")
        keys = _names(m.group(2), KEYS, num_latent, "keys")
        layers = _numbers(m.group(3) or "all", 1, num_layers, "layer")
        heads = _numbers(m.group(4) or "all", 0, num_heads - 1, "head")
        for q in queries:
            for k in keys:
                for lay in layers:
                    for h in heads:
                        edge = Edge(q, k, lay, h)
                        if edge not in out:
                            out.append(edge)
    if not out:
        raise OpcircuitsError("no edges given", field="edges")
    return out


# The sweep's default knockouts: the answer's attention to the question, to bot, to each
# thought and to all thoughts; each thought's and all thoughts' attention to the question.
DEFAULT_EDGES = (
    "answer>question,answer>bot,answer>prompt,answer>thoughts,answer>latent_*,"
    "latent_*>question,thoughts>question"
)
