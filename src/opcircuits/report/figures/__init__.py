"""Every figure (matplotlib, Agg backend), drawn from the numbers of a report.

Colour-blind-safe throughout: categories use the Okabe–Ito palette, heatmaps use viridis/cividis.
Each function writes one PNG atomically and returns {file, title, caption} for the report.

- `analysis`: the analysis report's figures (`draw_all`)
- `causal`: the causal tests' figures, from interventions.json (`draw_causal`)
- `tuned_lens`: held-out KL per layer, tuned lens against logit lens (`tuned_lens_kl`)
- `intermediate`: where each step's result is decoded (lens and value probes)
- `cards`: the model cards' training curves and accuracy against the number of thoughts
- `style`: the palette, names as shown, and the one PNG writer
"""

from __future__ import annotations

import matplotlib

# Before any submodule imports pyplot (a package runs its __init__ before its submodules).
matplotlib.use("Agg")

from opcircuits.report.figures.analysis import (  # noqa: E402
    confusion,
    draw_all,
    layer_sweep,
    logit_lens,
    model_accuracy,
    pca_scatter,
    pre_thought,
    probes_vs_controls,
    similarity,
    token_layer_map,
)
from opcircuits.report.figures.cards import accuracy_vs_thoughts, training_curves  # noqa: E402
from opcircuits.report.figures.causal import (  # noqa: E402
    causal_map,
    causal_patching,
    causal_steering,
    causal_thoughts,
    draw_causal,
)
from opcircuits.report.figures.intermediate import intermediate_values  # noqa: E402
from opcircuits.report.figures.style import DPI, OKABE_ITO  # noqa: E402
from opcircuits.report.figures.tuned_lens import tuned_lens_kl  # noqa: E402

__all__ = [
    "DPI",
    "OKABE_ITO",
    "accuracy_vs_thoughts",
    "causal_map",
    "causal_patching",
    "causal_steering",
    "causal_thoughts",
    "confusion",
    "draw_all",
    "draw_causal",
    "intermediate_values",
    "layer_sweep",
    "logit_lens",
    "model_accuracy",
    "pca_scatter",
    "pre_thought",
    "probes_vs_controls",
    "similarity",
    "token_layer_map",
    "training_curves",
    "tuned_lens_kl",
]
