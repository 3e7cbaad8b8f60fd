"""Reading a saved document's fields, saying where one is wrong.

results.py builds its typed model from a saved run with these: each reader takes a JSON
object, a key and where the object is, and returns the field as its type or raises
RecordingError naming the place. Past them, the model can trust its types.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypeVar

from klptrace.errors import KlptraceError
from klptrace.events import Event
from klptrace.jsontext import INT_MAX


class RecordingError(KlptraceError):
    """A saved recording or run document that cannot be read."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint or "klptrace does not write it so: was the file "
                         "edited, or written by another program?")


#: the longest time a saved run may say anything took (about 31 years): sums stay finite
MAX_SECONDS = 1e9
# an event's integers: the kernel's u64 clock, a u32 pid, a long return value, an int state
_EVENT_RANGES = {"ts_ns": (0, INT_MAX), "pid": (0, 2**32 - 1), "tid": (0, 2**32 - 1),
                 "ret": (-2**63, 2**63 - 1), "state": (-2**31, 2**31 - 1),
                 # issue 21: unsigned long ids and sizes, struct klp_state's unsigned version
                 "shadow_id": (0, 2**64 - 1), "state_id": (0, 2**64 - 1),
                 "size": (0, 2**64 - 1), "version": (0, 2**32 - 1)}
# as the runner writes it: datetime.isoformat(timespec="milliseconds") in UTC
_START_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)")


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def obj(d: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(d, dict):
        raise RecordingError(f"{where}: expected a JSON object")
    return d


def count(d: Mapping[str, Any], key: str, where: str, default: int = 0) -> int:
    v = d.get(key, default)
    if not is_int(v) or not 0 <= v <= INT_MAX:
        raise RecordingError(f"{where}: '{key}' must be a non-negative integer (64 bits)")
    return int(v)


def seconds(d: Mapping[str, Any], key: str, where: str) -> float:
    v = d.get(key, 0.0)
    if not is_num(v) or not 0 <= v <= MAX_SECONDS:
        raise RecordingError(f"{where}: '{key}' must be a number of seconds from 0 to "
                             f"{MAX_SECONDS:g}")
    return float(v)


def start_time(d: Mapping[str, Any], key: str, where: str) -> str:
    """A wall-clock time as the runner writes it (ISO 8601 with its offset), or ''."""
    v = text(d, key, where)
    if v and not _START_TIME.fullmatch(v):
        raise RecordingError(f"{where}: '{key}' must be a date and time such as "
                             "2025-12-01T10:00:00.250+00:00")
    if v:
        try:
            datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            raise RecordingError(f"{where}: '{key}' is not a real date and time") from None
    return v


def text(d: Mapping[str, Any], key: str, where: str) -> str:
    v = d.get(key, "")
    if not isinstance(v, str):
        raise RecordingError(f"{where}: '{key}' must be a string")
    return v


_Word = TypeVar("_Word", bound=enum.StrEnum)


def choice(d: Mapping[str, Any], key: str, kind: type[_Word], where: str) -> _Word:
    """d[key], one of the words of kind (an enum of the kernel's or klptrace's words)."""
    v = d.get(key)
    if not isinstance(v, str) or v not in kind.__members__.values():
        raise RecordingError(f"{where}: '{key}' must be "
                             + " or ".join(repr(str(w)) for w in kind))
    return kind(v)


def lines(d: Mapping[str, Any], key: str, where: str) -> list[str]:
    v = d.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise RecordingError(f"{where}: '{key}' must be a list of strings")
    return list(v)


def objects(d: Mapping[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    v = d.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        raise RecordingError(f"{where}: '{key}' must be a list of objects")
    return list(v)


def why(e: BaseException) -> str:
    """What is wrong with a malformed value, in at most about 200 characters."""
    out = f"missing or unknown {e.args[0]!r}" if isinstance(e, KeyError) else str(e)
    return out if len(out) <= 200 else out[:200] + "..."  # it may quote a whole value


def events(d: Mapping[str, Any], key: str, where: str) -> list[Event]:
    """A list of saved events, each as event() reads it."""
    raw = d.get(key)
    if not isinstance(raw, list):
        raise RecordingError(f"{where}: '{key}' must be a list")
    out = []
    for i, ev in enumerate(raw):
        try:
            out.append(event(ev))
        except (KeyError, ValueError, TypeError) as e:
            raise RecordingError(f"{where}: {key}[{i}] is malformed: {why(e)}") from None
    return out


def event(ev: Any) -> Event:
    """One saved event; its integers within what the kernel's types hold."""
    e = Event.from_json(ev)
    for field, (lo, hi) in _EVENT_RANGES.items():
        v = getattr(e, field)
        if v is not None and not lo <= v <= hi:
            raise ValueError(f"{field} {v} is out of its range {lo}..{hi}")
    return e


_KINDS: dict[str, tuple[str, Any]] = {  # kind: (what it must be, the test)
    "str": ("a string", lambda v: isinstance(v, str)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "count": ("a non-negative integer (64 bits)", lambda v: is_int(v) and 0 <= v <= INT_MAX),
    "seconds": (f"a number of seconds within {MAX_SECONDS:g}",
                lambda v: is_num(v) and abs(v) <= MAX_SECONDS),
    "strs": ("a list of strings", lambda v: isinstance(v, list)
             and all(isinstance(x, str) for x in v)),
    "objects": ("a list of objects", lambda v: isinstance(v, list)
                and all(isinstance(x, dict) for x in v)),
}


def shaped(o: Any, fields: Mapping[str, str], where: str) -> dict[str, Any]:
    """o, an object whose fields (where present) are of their kinds; a kind ending in
    '?' may also be null. Other fields are not read."""
    if not isinstance(o, dict):
        raise RecordingError(f"{where}: expected a JSON object")
    for key, kind in fields.items():
        v = o.get(key)
        if key not in o or (v is None and kind.endswith("?")):
            continue
        what, fits = _KINDS[kind.rstrip("?")]
        if not fits(v):
            raise RecordingError(f"{where}: {key!r} must be {what}")
    return o
