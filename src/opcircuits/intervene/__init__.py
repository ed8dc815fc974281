"""`opcircuits intervene`: the causal-test sweep over a problem file, resumable and crash-safe.

For every problem of `--data`: the clean run and every intervention of the sweep (zero / mean /
resample / patch at each site, steering along a category direction and a random one at each
strength, truncation at every k < K), measured as `codi.interventions` describes. Output folder:

    OUT/
      manifest.json           what is being computed (options, model and data hashes), the
                              sha256 of every finished part; `complete`
      parts/part-00000.parquet  the rows of problems [0, shard_size), … (written atomically; its
                              metadata names the sweep and problems: a rerun keeps the parts
                              that prove to be this sweep's and computes the others)
      parts/.manifest.lock    while several processes (`accelerate launch`) share the sweep:
                              they record their parts in the manifest under it
      interventions.parquet   one row per problem × intervention, in data order (all parts)
      interventions.json      options, provenance, per-category effects with bootstrap CIs,
                              interactions, findings, figure list
      *.png                   the figures (see `report.figures.draw_causal`)

A rerun with other options, model or data is refused with the fields that differ (the output is
never mixed); inputs count by content (the same file by another path is the same data). Every
refusal comes before the first write; `--out` must not be an input.

Modules: `sweep` (the command: interventions, model, manifest, running the parts), `partners`
(problems, partners, patch sources), `parts` (the folder's layout, parts, merging), `outputs`
(interventions.json and the figures).
"""

from __future__ import annotations

from opcircuits.intervene.outputs import finalize, summarize
from opcircuits.intervene.partners import default_pairs, patch_sources
from opcircuits.intervene.parts import (
    FORMAT,
    MANIFEST,
    PARTS,
    RESULT,
    SCHEMA,
    SPEED_ONLY,
    TABLE,
    is_intervene_file,
    part_name,
    remove_interventions,
    write_parquet,
)
from opcircuits.intervene.sweep import build_sweep, intervene

# The part writer, looked up here each time a part is written: tests patch it to crash a sweep.
_write_parquet = write_parquet

__all__ = [
    "FORMAT",
    "MANIFEST",
    "PARTS",
    "RESULT",
    "SCHEMA",
    "SPEED_ONLY",
    "TABLE",
    "build_sweep",
    "default_pairs",
    "finalize",
    "intervene",
    "is_intervene_file",
    "part_name",
    "patch_sources",
    "remove_interventions",
    "summarize",
    "write_parquet",
]
