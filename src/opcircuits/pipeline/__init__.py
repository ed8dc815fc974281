"""`opcircuits run`: the experiment config (`config`: reading and resolving it, with its keys in
`schema` and the TOML it writes in `toml_write`), its stages (`stages`), the run that executes them
in a run directory (`runner`) and the caching engine that skips, recomputes and resumes them
(`engine`)."""

from opcircuits.pipeline.config import resolve
from opcircuits.pipeline.runner import run

__all__ = ["resolve", "run"]
