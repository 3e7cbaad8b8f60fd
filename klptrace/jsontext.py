"""JSON text from outside, parsed strictly: what json.loads lets through, refused by name.

Python's json module reads NaN, Infinity and -Infinity (not JSON), turns 1e400 into
inf, raises a bare ValueError for an integer of more than 4300 digits and
RecursionError for deep nesting, and keeps a lone surrogate (\\udc80) that no
output can encode. loads() refuses each of these with where it is, so that what
follows can trust every number to be finite and within 64 bits, every string to
be text and every document to be shallow.
"""

from __future__ import annotations

import json
import math
from typing import Any

from klptrace.errors import KlptraceError

#: the deepest nesting accepted: a matrix's stall report's task's stack is 7 levels down
MAX_DEPTH = 32
#: the largest magnitude of an integer: the kernel's clock is a u64
INT_MAX = 2**64 - 1
_INT_DIGITS = len(str(INT_MAX))
_HINT = "was the file edited, or written by another program?"


class _Refused:
    """A value the parser stood in for, to be named with its place (its why)."""

    def __init__(self, why: str) -> None:
        self.why = why


def _constant(name: str) -> _Refused:
    return _Refused(f"is {name}, which is not a JSON number")


def _integer(text: str) -> int | _Refused:
    digits = len(text) - text.startswith("-")
    # said before int(): Python refuses more than 4300 digits with its own ValueError
    if digits > _INT_DIGITS or abs(v := int(text)) > INT_MAX:
        return _Refused(f"is an integer of {digits} digits, larger than 64 bits")
    return v


def _float(text: str) -> float | _Refused:
    v = float(text)
    if not math.isfinite(v):
        return _Refused(f"is {text[:24]}{'...' if len(text) > 24 else ''}, "
                        "too large for a number")
    return v


def loads(text: str, where: str, error: type[KlptraceError]) -> Any:
    """The JSON document in text (from where), strictly; error names what is wrong."""
    try:
        doc = json.loads(text, parse_constant=_constant, parse_int=_integer,
                         parse_float=_float)
    except json.JSONDecodeError as e:
        hint = ("was the file truncated?" if e.pos >= len(text.rstrip())
                else "is it the right file?")
        raise error(f"{where}: not JSON (line {e.lineno}, column {e.colno}): {e.msg}",
                    hint) from None
    except RecursionError:
        raise error(f"{where}: nested deeper than {MAX_DEPTH} levels", _HINT) from None
    _check_tree(doc, where, error)
    return doc


def _check_tree(doc: Any, where: str, error: type[KlptraceError]) -> None:
    """Raise error for the first refused value, string that is not text, or level too deep."""
    todo: list[tuple[Any, int, tuple[str | int, ...]]] = [(doc, 0, ())]
    while todo:
        v, depth, path = todo.pop()
        why = ""
        if isinstance(v, _Refused):
            why = v.why
        elif isinstance(v, str):
            why = _not_text(v)
        elif depth >= MAX_DEPTH and isinstance(v, (dict, list)):
            why = f"is nested deeper than {MAX_DEPTH} levels"
        elif isinstance(v, dict):
            bad = next((k for k in v if _not_text(k)), None)
            if bad is not None:
                why = f"has a key that {_not_text(bad)}"
            todo += reversed([(x, depth + 1, (*path, k)) for k, x in v.items()])
        elif isinstance(v, list):
            todo += reversed([(x, depth + 1, (*path, i)) for i, x in enumerate(v)])
        if why:
            raise error(f"{where}: {_place(path)} {why}", _HINT)


def _not_text(s: str) -> str:
    """Why s cannot be written as UTF-8 ('' when it can)."""
    if s.isascii():
        return ""
    try:
        s.encode()
    except UnicodeEncodeError as e:
        return f"holds a lone surrogate ({s[e.start]!r}), which is not text"
    return ""


def _place(path: tuple[str | int, ...]) -> str:
    """A value's place in the document: scenarios[3].duration_s."""
    if not path:
        return "the document"
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p.isidentifier():
            out += f".{p}" if out else p
        else:
            out += f"[{p[:40]!r}]"
    return out
