"""Options of `opcircuits doctor`: the model is named as `extract` names it (the same fields,
declared once there), plus where the JSON copy of the report goes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opcircuits.options.core import check_fields, opt
from opcircuits.options.experiment import ExtractOptions


def _as_extract(name: str) -> Any:
    """The field `name` of ExtractOptions (default, help, limits), so both commands read a
    model the same way."""
    found = {f.name: f for f in dataclasses.fields(ExtractOptions)}[name]
    return dataclasses.field(default=found.default, metadata=found.metadata)


@dataclass
class DoctorOptions:
    """`opcircuits doctor`."""

    model: str = _as_extract("model")
    checkpoint: Path | None = _as_extract("checkpoint")
    base: str | None = _as_extract("base")
    num_latent: int | None = _as_extract("num_latent")
    remove_eos: bool | None = _as_extract("remove_eos")
    lora_alpha: int | None = _as_extract("lora_alpha")
    dtype: str = _as_extract("dtype")
    device: str = _as_extract("device")
    json: Path | None = opt(
        None,
        help="Also write the report as JSON here (for bug reports); an existing file must be an "
        "earlier doctor report.",
    )

    def __post_init__(self) -> None:
        check_fields(self)
