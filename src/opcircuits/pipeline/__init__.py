"""`opcircuits run`: the experiment config (`config`), its stages (`stages`) and the caching
engine that skips, recomputes and resumes them (`engine`)."""

from opcircuits.pipeline.config import resolve
from opcircuits.pipeline.stages import run

__all__ = ["resolve", "run"]
