"""Where things are in a scenario file's text, found without parsing it: its top-level
keys, where each step starts, how deep it nests (tomllib gives no positions); and how an
error line shows a file's name and a value from it. scenario.py's errors use these.
"""

from __future__ import annotations

import dataclasses
import json
import re
import unicodedata
from pathlib import Path
from typing import Any

# One token of the text for layout(): a newline (looking ahead at what starts the next
# line: a [table] header or a key), a comment, a whole string, a bracket.
_TOKEN = re.compile(
    r"\n(?=[ \t]*(?:(?P<header>\[\[?)[ \t]*(?P<table>[^\]\n]*?)[ \t]*\]"
    r"|(?:\"(?P<qkey>[^\"\\\n]*)\"|'(?P<lkey>[^'\n]*)'|(?P<key>[A-Za-z0-9_-]+))"
    r"[ \t]*(?P<sep>[=.])))?"
    r"|#[^\n]*"
    r"|\"\"\"(?:[^\"\\]|\\.|\"(?!\"\"))*(?:\"{3,5})?"  # the alternatives of a string are
    r"|'''(?:[^']|'(?!''))*(?:'{3,5})?"               # disjoint and its end optional: it
    r"|\"(?:[^\"\\\n]|\\[^\n])*\"?"                    # never backtracks; one left open
    r"|'[^'\n]*'?"                                     # ends its line (tomllib says why)
    r"|[\[\]{}]",
    re.S)


@dataclasses.dataclass
class Layout:
    """Where things are in a scenario file's text, found without parsing it."""

    text: str
    keys: dict[str, int] = dataclasses.field(default_factory=dict)  # top-level key: line
    steps: list[int] = dataclasses.field(default_factory=list)  # the line each step starts on
    depth: int = 0  # of [ and { outside strings and comments
    deep_line: int = 0  # where depth went past the limit


def layout(text: str, max_depth: int) -> Layout:
    """One pass over the text: its top-level keys, where each step starts, how deep it nests."""
    out = Layout(text)
    stack: list[bool] = []  # an open [ or {: whether it is the steps array
    table = ""  # the [table] the lines are in ('' at the top)
    steps_next = False  # `steps =` was seen: its value's [ is the steps array
    line = 0
    for m in _TOKEN.finditer("\n" + text):  # a newline first: line 1 starts like the others
        c = m.group()[0]
        if c == "\n":
            line += 1
            if stack:
                continue
            steps_next = False
            if m.group("header"):
                table = m.group("table")
                if m.group("header") == "[[" and table == "steps":
                    out.steps.append(line)
            elif m.group("sep") and not table:
                key = m.group("qkey") or m.group("lkey") or m.group("key") or ""
                out.keys.setdefault(key, line)
                steps_next = key == "steps" and m.group("sep") == "="
        elif c in "\"'":
            line += m.group().count("\n")
        elif c in "[{":
            if len(stack) == 1 and stack[0]:
                out.steps.append(line)
            stack.append(steps_next and not stack)
            steps_next = False
            if len(stack) > out.depth:
                out.depth = len(stack)
                if out.depth > max_depth:
                    out.deep_line = line
                    break
        elif c in "]}" and stack:
            stack.pop()
    return out


class Where:
    """The file:line prefix of an error about part of one file."""

    def __init__(self, path: str, layout: Layout) -> None:
        self.path = path_text(path)
        self.layout = layout
        self._lines: list[str] | None = None

    def at(self, line: int | None) -> str:
        return f"{self.path}:{line}" if line else self.path

    def key(self, key: str) -> str:
        """Where a top-level key is set."""
        return self.at(self.layout.keys.get(key))

    def step(self, i: int, key: str | None = None) -> str:
        """Where step i begins, or the line of its key (a [[steps]] table spans lines)."""
        steps = self.layout.steps
        if i >= len(steps):
            return self.key("steps")
        line = steps[i]
        if key is not None:
            if self._lines is None:
                self._lines = self.layout.text.splitlines()
            # a step ends where the next begins; a [[steps]] table is a few lines at most
            end = min(steps[i + 1] if i + 1 < len(steps) else line + 100, line + 100)
            lines = self._lines[line - 1:end - 1]
            pat = re.compile(rf"(^|[{{,\s]){re.escape(key)}\s*=")
            line += next((n for n, text in enumerate(lines) if pat.search(text)), 0)
        return self.at(line)


def path_text(path: str | Path) -> str:
    """A file's name as an error line shows it: as it is, or quoted and escaped if it holds
    a character that is not printable (a newline in a name must not end the line)."""
    text = str(path)
    return text if text.isprintable() else json.dumps(text)


def quoted(value: str) -> str:
    """A value from the file in an error line: always quoted, escaped and cut."""
    return json.dumps(value[:80] + ("..." if len(value) > 80 else ""))


def type_name(value: Any) -> str:
    """The TOML name of a parsed value's type."""
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
             list: "an array", dict: "a table"}
    return names.get(type(value), "a date or time")


def control(text: str, allowed: str = "") -> str:
    """The first control character in text (other than those allowed), or ''. U+2028 and
    U+2029 count: they end a line for str.splitlines() as a newline does."""
    return next((c for c in text
                 if c not in allowed and unicodedata.category(c) in ("Cc", "Zl", "Zp")), "")
