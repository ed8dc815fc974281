"""Markdown-safe text for names we did not choose (models, positions, layers, categories, paths,
questions): in ANALYSIS_SUMMARY.md they must read as text, never as markup or raw HTML.

`code` wraps a name in a code span (nothing inside one is interpreted); `escape` backslash-escapes
prose; `cell` makes either safe inside a table cell, where a `|` would end the cell even within a
code span.
"""

from __future__ import annotations

import re

# CommonMark: any ASCII punctuation character may be backslash-escaped.
_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")
_BACKTICKS = re.compile(r"`+")


def _one_line(text: object) -> str:
    # A line break could end the list item or paragraph the text sits in.
    return " ".join(str(text).split())


def code(text: object) -> str:
    """`text` as an inline code span, fenced with more backticks than it contains."""
    s = _one_line(text)
    longest = max((len(m) for m in _BACKTICKS.findall(s)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if s.startswith("`") or s.endswith("`") or not s else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def escape(text: object) -> str:
    """Prose shown literally: every ASCII punctuation character backslash-escaped."""
    return _PUNCTUATION.sub(r"\\\1", _one_line(text))


def cell(markdown: str) -> str:
    """Markdown (already safe) inside a table cell: `|` escaped (GFM tables split on it)."""
    return markdown.replace("|", "\\|")


def name(text: object) -> str:
    """A name as is when it is a plain word (letters, digits, inner `_` and `-`, which Markdown
    leaves alone), else as a code span."""
    s = str(text)
    return s if re.fullmatch(r"[A-Za-z0-9][\w-]*", s, flags=re.ASCII) else code(s)


def plain_label(text: object) -> str:
    """A category-like name for a sentence: `pure_addition` → "pure addition"; a name holding
    anything but letters, digits, spaces, `_` and `-` is shown as a code span instead."""
    s = str(text)
    return s.replace("_", " ") if re.fullmatch(r"[\w -]+", s, flags=re.ASCII) else code(s)
