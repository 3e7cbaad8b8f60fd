"""A shadow variable a scenario leaks on purpose, as a line of its transcript.

The same design as stall_expect.py: a scenario file states each leak it causes in a
`[[shadow_leak]]` table (scenario.py validates it), the expectation gets one line per
table, `shadow leak: id <shadow_id> allocated by <module>`, and the checker adds to the
recorded transcript the same line for each one the ledger (ledger.py) found left behind,
or the line with ": none left" when none was. A leak that no line expects is a problem of
the result (an error), as a leak is wherever nobody said it would happen (`trace` too).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

from klptrace.ledger import Ledger

PREFIX = "shadow leak: "
_LINE = re.compile(r"shadow leak: id (\d{1,20}) allocated by (\S+)")
#: the largest shadow id: the kernel's `unsigned long id`
MAX_ID = 2**64 - 1


@dataclasses.dataclass(frozen=True)
class ExpectedLeak:
    """One `[[shadow_leak]]` table of a scenario file."""

    shadow_id: int
    allocated_by: str

    def line(self) -> str:
        """The expected transcript line."""
        return line(self.shadow_id, self.allocated_by)


def line(shadow_id: int, allocated_by: str) -> str:
    """`shadow leak: id <shadow_id> allocated by <module>`."""
    return f"{PREFIX}id {shadow_id} allocated by {allocated_by}"


def _expected(expected: Sequence[str]) -> list[tuple[int, str]]:
    return [(int(m[1]), m[2]) for x in expected if (m := _LINE.fullmatch(x))]


def recorded(expected: Sequence[str], ledger: Ledger) -> list[str]:
    """For each leak line of expected, the same line as the recording tells it."""
    left = {(k.shadow_id, k.allocated_by) for k in ledger.leaks}
    return [line(sid, who) + ("" if (sid, who) in left else ": none left")
            for sid, who in _expected(expected)]


def unexpected(expected: Sequence[str], ledger: Ledger) -> list[str]:
    """The leaks that no line of expected states, as problems: one per shadow id and
    allocating module (a livepatch leaks one variable per object it hangs them on, and
    hundreds of lines would crowd out every report; the leaks themselves are listed)."""
    said = set(_expected(expected))
    groups: dict[tuple[int, str], list[str]] = {}
    for k in ledger.leaks:
        if (k.shadow_id, k.allocated_by) not in said:
            groups.setdefault((k.shadow_id, k.allocated_by), []).append(
                ledger.names.get(k.obj, hex(k.obj)))
    out = []
    for (shadow_id, module), objs in groups.items():
        shown = ", ".join(objs[:NAMED_OBJS]) + (
            f" and {len(objs) - NAMED_OBJS} more" if len(objs) > NAMED_OBJS else "")
        what = "shadow variable" if len(objs) == 1 else f"{len(objs)} shadow variables"
        out.append(f"{what} of id {shadow_id} allocated by {module} never freed ({shown}): "
                   f"{module} is gone and no installed livepatch declares state {shadow_id} "
                   f"(a leak; `{line(shadow_id, module)}` expects it)")
    return out


#: objects a leak problem names before "and N more"
NAMED_OBJS = 5


def leak_lines(ledger: Ledger) -> list[str]:
    """The leak lines of a recording, one per id and module (what `trace` prints)."""
    return list(dict.fromkeys(line(k.shadow_id, k.allocated_by) for k in ledger.leaks))


MAX_LEAKS = 64
_KEYS = ("shadow_id", "allocated_by")


def tables(raw: Any, where: str) -> tuple[ExpectedLeak, ...]:
    """A scenario's `[[shadow_leak]]` tables, their types checked (scenario.py checks that
    allocated_by is a module's name); ValueError says what is wrong."""
    if not isinstance(raw, list) or len(raw) > MAX_LEAKS:
        raise ValueError(f"{where}: `shadow_leak` must be an array of at most {MAX_LEAKS} "
                         "tables ([[shadow_leak]])")
    out = []
    for n, t in enumerate(raw):
        at = f"{where}: shadow_leak[{n}]"
        if not isinstance(t, dict):
            raise ValueError(f"{at}: must be a table, not {type(t).__name__}")
        for key in t:
            if key not in _KEYS:
                raise ValueError(f"{at}: unknown key {key!r} (expected one of "
                                 f"{', '.join(_KEYS)})")
        sid, who = t.get("shadow_id"), t.get("allocated_by")
        if type(sid) is not int or not 0 <= sid <= MAX_ID:
            raise ValueError(f"{at}: shadow_id must be an integer from 0 to 2**64 - 1 (the "
                             "kernel's unsigned long id)")
        if not isinstance(who, str):
            raise ValueError(f"{at}: allocated_by must be a string (a module name)")
        out.append(ExpectedLeak(sid, who))
    return tuple(out)
