"""The one number grammar: how a final answer (GSM8K's `#### N`, a training answer) and a decoded
answer are read as numbers.

A number is an optional sign (`-`, or `+`, which changes nothing), then digits with an optional
decimal part (`12`, `12.5`, `5.`) or a decimal part alone (`.5` = 0.5). Commas are removed before
reading, wherever they are: GSM8K writes thousands as `2,125`, and CODI's official scoring
removes every comma before it looks for numbers, so `1,2,3` reads 123 here too (a stricter
thousands rule would score some answers differently from the published numbers). Nothing else is
part of a number: no exponent (`1e3` is 1, then 3), no currency or unit (`$5` holds the number 5,
but is not one).

Before this module, GSM8K reading accepted `+5` and `.5`, training rejected `+5`, and answer
extraction read `.5` as 5 (CODI's `-?\\d+\\.?\\d*`); every GSM8K final answer is a plain integer,
so the GSM8K values are the same under all of them.
"""

from __future__ import annotations

import re

NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")
# Longer is no number (Python refuses to convert integers of over 4,300 digits).
MAX_DIGITS = 100


def remove_commas(text: str) -> str:
    return text.replace(",", "")


def read_number(text: str) -> int | float | None:
    """The value of `text` when the whole of it (commas removed) is one number, else None: an int
    when it has no decimal point, a float otherwise."""
    text = remove_commas(text)
    if len(text) > MAX_DIGITS or not NUMBER.fullmatch(text):  # no answer has so many digits
        return None
    return float(text) if "." in text else int(text)


def is_number(text: str) -> bool:
    """Whether the whole of `text` (commas removed) is one number."""
    return read_number(text) is not None


def last_number(text: str) -> float | None:
    """The last number in a text (commas removed), as a float; None when there is none."""
    found = NUMBER.findall(remove_commas(text))
    return float(found[-1]) if found else None
