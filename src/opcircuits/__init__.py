"""opcircuits: do a CODI model's continuous thoughts encode which operations a problem needs?"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("opcircuits")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.1.0"

__all__ = ["__version__"]
