"""The Recorder: drives probes.Probes and keeps klptrace's own step markers beside the
kernel's events; recording() hands out a results.Recording, plain data."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable
from typing import Any

from klptrace.errors import check_interrupted, signals_deferred
from klptrace.events import Event, EventKind
from klptrace.kernel.wedge import Wedge
from klptrace.results import Recording


class Recorder:
    """Records kernel events with BPF, plus klptrace's own step markers."""

    def __init__(self, livepatch_modules: Iterable[str] = (), build: Any = None,
                 wedge: Wedge | None = None) -> None:
        """build: a probes.Build started earlier, to overlap the compile with other work;
        wedge: whether the kernel is wedged (the kernel actor's), read as the recorder
        ends: the probes are then handed off."""
        from klptrace.record.probes import Probes

        self.probes = Probes(livepatch_modules, build)
        self.events: list[Event] = []
        self.wedge = wedge if wedge is not None else Wedge()
        #: what could not be removed from the kernel, known once the recorder has ended
        self.leftovers: list[str] = []

    def __enter__(self) -> Recorder:
        self.probes.open(self.events.append)
        return self

    def __exit__(self, *exc: object) -> None:
        with signals_deferred():
            if self.wedge:
                pid = self.probes.hand_off()
                self.leftovers = [f"{self.wedge.reason}, after which removing probes can hang in "
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
        # copies: the probes' own go on changing as the kernel arms them
        return Recording(evs, self.probes.lost(),
                         [dataclasses.replace(p) for p in self.probes.status])

