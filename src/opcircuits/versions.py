"""This package's version, and which versions of Python and of the packages that shape the
numbers produced a result. Importable from any layer (`data/` records the version in manifests)
without going through the package's front door."""

from __future__ import annotations

import platform
from collections.abc import Iterable
from importlib import metadata

try:
    __version__ = metadata.version("opcircuits")
except metadata.PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.1.0"

# What a store's numbers depend on (recorded in its manifest).
STORE_PACKAGES = ("opcircuits", "torch", "transformers")
# What a run's numbers may depend on (recorded in run.json).
RUN_PACKAGES = (
    *STORE_PACKAGES,
    "peft",
    "safetensors",
    "numpy",
    "pandas",
    "pyarrow",
    "scikit-learn",
)


def package_versions(
    names: Iterable[str] = STORE_PACKAGES, *, with_python: bool = False
) -> dict[str, str | None]:
    """Installed version of each package (None when absent), read without importing any of them;
    `with_python` adds the interpreter's version and the platform."""
    found: dict[str, str | None] = {}
    if with_python:
        found.update(python=platform.python_version(), platform=platform.platform())
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found
