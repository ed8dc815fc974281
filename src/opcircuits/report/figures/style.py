"""What every figure shares: the palette, the resolution, names as shown, the PNG writer."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt

from opcircuits.files import atomic_path

OKABE_ITO = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000"]
DPI = 110


def label_of(name: str) -> str:
    return name.replace("_", " ")


def save(fig: plt.Figure, out_dir: Path, name: str, title: str, caption: str) -> dict:
    with atomic_path(out_dir / name) as tmp:
        # No metadata: the PNG bytes depend only on the numbers.
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return {"file": name, "title": title, "caption": caption}


def with_bad(name: str):
    """A colour map that shows cells not measured in light grey (not as a value)."""
    return matplotlib.colormaps[name].with_extremes(bad="#d9d9d9")
