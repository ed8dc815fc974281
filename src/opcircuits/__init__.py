"""opcircuits: do a CODI model's continuous thoughts encode which operations a problem needs?

The front door (`import opcircuits` stays light: each name is imported on first use, so torch
loads only when you touch a model):

    from opcircuits import load_codi, run_batch            # a CODI model, its latent loop
    from opcircuits import extract, ExtractOptions         # problems → a thought store
    from opcircuits import open_store, write_store         # read / write thought stores
    from opcircuits import analyze, AnalyzeOptions         # a store → probes, controls, report
    from opcircuits import run                             # the whole experiment
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import Any

from opcircuits.versions import __version__

# name → the module that defines it
_LAZY = {
    "load_codi": "opcircuits.codi.checkpoint",
    "run_batch": "opcircuits.codi.latent",
    "CodiModel": "opcircuits.codi.model",
    "extract": "opcircuits.extract",
    "ExtractOptions": "opcircuits.options",
    "open_store": "opcircuits.store",
    "write_store": "opcircuits.store",
    "analyze": "opcircuits.report.analyze",
    "AnalyzeOptions": "opcircuits.options",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'opcircuits' has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name]), name)
    if name != "extract":  # opcircuits.extract is also a module; see extract.py's end
        globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


def run(config: str | Path | None = None, *, force: bool = False, **tables: dict[str, Any]) -> Any:
    """Run (or resume) the experiment as `opcircuits run` does: `config` an experiment TOML (or
    None for the defaults), `tables` overrides per table, e.g.
    `run(run={"mode": "prototype"}, data={"source": "../shared/data/gsm8k"})`.
    Returns the pipeline's `RunResult` (run directory, report paths, headline)."""
    from opcircuits.pipeline.config import resolve
    from opcircuits.pipeline.runner import run as run_pipeline

    return run_pipeline(resolve(config, tables), force=force, command=["opcircuits.run"])


__all__ = ["__version__", "run", *_LAZY]
