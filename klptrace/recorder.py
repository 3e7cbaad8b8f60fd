"""A Recording: the events of a run, what was lost, and how the probes fared.

Recorder drives probes.Probes; Recording is plain data that can be saved,
loaded and checked offline.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable
from typing import Any

from klptrace.errors import KlptraceError, check_interrupted, signals_deferred
from klptrace.events import Event, EventKind

FORMAT_VERSION = 1


class RecordingError(KlptraceError):
    """A saved recording that cannot be read."""


@dataclasses.dataclass
class Recording:
    """Events in the order the kernel produced them, plus integrity facts."""

    events: list[Event] = dataclasses.field(default_factory=list)
    lost: int = 0
    probes: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def failed_probes(self) -> list[dict[str, Any]]:
        """Probes that did not attach."""
        return [p for p in self.probes if not p.get("ok")]

    def to_json(self) -> dict[str, Any]:
        return {
            "lost_events": self.lost,
            "probes": self.probes,
            "events": [e.to_json() for e in self.events],
        }

    @classmethod
    def from_json(cls, d: Any, where: str = "recording") -> Recording:
        """Parse; a malformed input raises RecordingError saying where."""
        if not isinstance(d, dict):
            raise RecordingError(f"{where}: expected a JSON object")
        evs_raw = d.get("events")
        if not isinstance(evs_raw, list):
            raise RecordingError(f"{where}: 'events' must be a list")
        events = []
        for i, raw in enumerate(evs_raw):
            try:
                events.append(Event.from_json(raw))
            except (KeyError, ValueError, TypeError) as e:
                raise RecordingError(f"{where}: events[{i}] is malformed: {_why(e)}") from None
        lost = d.get("lost_events", 0)
        if isinstance(lost, bool) or not isinstance(lost, int) or lost < 0:
            raise RecordingError(f"{where}: 'lost_events' must be a non-negative integer")
        probes = d.get("probes", [])
        if not isinstance(probes, list) or not all(isinstance(p, dict) for p in probes):
            raise RecordingError(f"{where}: 'probes' must be a list of objects")
        return cls(events, lost, probes)


def _why(e: BaseException) -> str:
    if isinstance(e, KeyError):
        return f"missing or unknown {e.args[0]!r}"
    return str(e)


class Recorder:
    """Records kernel events with BPF, plus klptrace's own step markers."""

    def __init__(self, livepatch_modules: Iterable[str] = (), build: Any = None) -> None:
        """build: a probes.Build started earlier, to overlap the compile with other work."""
        from klptrace.probes import Probes

        self.probes = Probes(livepatch_modules, build)
        self.events: list[Event] = []
        #: why the kernel is wedged ('' if it is not): the probes are then handed off
        self.wedged = ""

    def __enter__(self) -> Recorder:
        self.probes.open(self.events.append)
        return self

    def __exit__(self, *exc: object) -> None:
        with signals_deferred():
            if self.wedged:
                pid = self.probes.hand_off()
                self.leftovers = [f"{self.wedged}, after which removing probes can hang in "
                                  f"the kernel: pid {pid} removes them once klptrace has "
                                  "exited (it may never finish before a reboot)"]
            else:
                self.leftovers = self.probes.close()

    def mark(self, kind: EventKind, detail: str, ret: int | None = None) -> Event:
        """Insert a klptrace event (a step starts or fails) at the current time."""
        self.probes.drain()
        ev = Event(kind=kind, ts_ns=time.monotonic_ns(), pid=os.getpid(), tid=os.getpid(),
                   comm="klptrace", detail=detail, ret=ret)
        self.events.append(ev)
        return ev

    def poll(self, timeout_ms: int = 50) -> None:
        self.probes.poll(timeout_ms)
        check_interrupted()

    def drain(self) -> None:
        self.probes.drain()
        check_interrupted()

    def now(self) -> int:
        return time.monotonic_ns()

    def lost(self) -> int:
        self.drain()
        return self.probes.lost()

    def recording(self, start_ns: int = 0, end_ns: int | None = None) -> Recording:
        """What was recorded between two times (all by default)."""
        self.drain()
        end = end_ns if end_ns is not None else time.monotonic_ns()
        evs = [e for e in self.events if start_ns <= e.ts_ns <= end]
        return Recording(evs, self.probes.lost(), [p.to_json() for p in self.probes.status])

