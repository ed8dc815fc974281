"""The one number grammar (`data.numbers`), pinned on a table of strings, and its three users:
GSM8K's final answers, training answers and the answer extracted from decoded text."""

from __future__ import annotations

import pytest

from opcircuits.codi.latent import extract_number
from opcircuits.codi.training.examples import format_aug_problem, format_problem
from opcircuits.data.gsm8k import parse_final_answer
from opcircuits.data.numbers import is_number, last_number, read_number
from opcircuits.errors import OpcircuitsError

# text → its value as a whole number (None: not a number), and the last number in it.
TABLE = [
    ("2,125", 2125, 2125.0),
    ("-3", -3, -3.0),
    ("+5", 5, 5.0),
    (".5", 0.5, 0.5),
    ("-.5", -0.5, -0.5),
    ("5.", 5.0, 5.0),
    ("12.50", 12.5, 12.5),
    ("1,2,3", 123, 123.0),  # commas removed wherever they are, as CODI's scoring does
    ("1e3", None, 3.0),
    ("$5", None, 5.0),
    ("5%", None, 5.0),
    ("--5", None, -5.0),
    ("", None, None),
    ("five", None, None),
    ("The answer is: 18", None, 18.0),
    ("3 - 5", None, 5.0),
    ("3-5", None, -5.0),
]


@pytest.mark.parametrize(("text", "value", "last"), TABLE)
def test_grammar(text: str, value: float | None, last: float | None) -> None:
    got = read_number(text)
    assert got == value and type(got) is type(value)  # an int unless there is a decimal point
    assert is_number(text) == (value is not None)
    assert last_number(text) == last
    assert extract_number(text) == last


@pytest.mark.parametrize(("text", "value", "_"), [row for row in TABLE if row[1] is not None])
def test_the_three_readers_agree(text: str, value: float, _) -> None:
    assert parse_final_answer(f"steps\n#### {text}") == (text.replace(",", ""), value)
    ex = format_problem("p", "Q?", f"<<1+1=2>>\n#### {text}")
    assert ex is not None and ex.answer == "The answer is: " + text.replace(",", "")
    aug = format_aug_problem("p", "Q?", "<<1+1=2>>", text)
    assert aug is not None and aug.answer == ex.answer


@pytest.mark.parametrize("text", [row[0] for row in TABLE if row[1] is None])
def test_the_three_readers_reject_alike(text: str) -> None:
    with pytest.raises(OpcircuitsError, match="not a number|no '####'"):
        parse_final_answer(f"steps\n#### {text}")
    assert format_problem("p", "Q?", f"<<1+1=2>>\n#### {text}") is None
    if " " not in text:  # GSM8k-Aug reads the last word only
        assert format_aug_problem("p", "Q?", "<<1+1=2>>", text) is None
