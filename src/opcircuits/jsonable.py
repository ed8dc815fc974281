"""Plain JSON values from what numpy, pandas and our dataclasses hand around.

One converter for every file we write as JSON (reports, stage records, store manifests and
records): a value that `json.dumps` would reject or write as a non-standard token (`NaN`,
`Infinity`) is turned into its plain equivalent here, once.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import numpy as np


def jsonable(value: Any, *, digits: int | None = None) -> Any:
    """`value` as plain Python: dicts (keys as str), lists, str, int, float, bool, None.

    numpy arrays and scalars → lists and Python scalars; dataclass instances → dicts; paths →
    str; NaN, ±inf, `pd.NA` and `pd.NaT` → None. `digits` rounds floats (and turns -0.0 into 0.0),
    so reports do not change with the last bits of a float. Anything else is returned as is
    (json.dumps then names it).
    """
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, digits=digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v, digits=digits) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist(), digits=digits)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value), digits=digits)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or _is_pandas_missing(value):
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return value if digits is None else round(value, digits) + 0.0
    return value


def _is_pandas_missing(value: Any) -> bool:
    # pandas is imported only by the modules that use it; if it is not loaded, no value is pd.NA.
    pd = sys.modules.get("pandas")
    return pd is not None and (value is pd.NA or value is pd.NaT)
