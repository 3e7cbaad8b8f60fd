"""klptrace.record.recorder offline, over a stand-in for the probes: klptrace's marks beside
the kernel's events, and the end of a recording on a kernel that is wedged or not."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from klptrace.events import Event, EventKind
from klptrace.kernel.wedge import Wedge
from klptrace.record import probes
from klptrace.record.recorder import Recorder
from klptrace.results import Probe


class _Probes:
    """probes.Probes with no BPF: the kernel's events are sent by the test."""

    def __init__(self, livepatch_modules: Any = (), build: Any = None) -> None:
        self.kos = list(livepatch_modules)
        self.sink: Callable[[Event], None] | None = None
        self.ended = ""
        self.drained = 0
        self.status: list[Probe] = [
            Probe("kprobe:klp_enable_patch", "klp_enable_patch", True)]

    def open(self, sink: Callable[[Event], None]) -> None:
        self.sink = sink

    def poll(self, timeout_ms: int = 100) -> None:
        pass

    def drain(self) -> None:
        self.drained += 1

    def lost(self) -> int:
        return 3

    def close(self, expedite: bool = True) -> list[str]:
        self.ended = "closed"
        return ["echo '-:klptrace/p0_0_x' >> /sys/kernel/tracing/kprobe_events  # Busy"]

    def hand_off(self) -> int:
        self.ended = "handed off"
        return 4242


@pytest.fixture(autouse=True)
def _fake_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probes, "Probes", _Probes)


def test_leftovers_are_known_once_the_recorder_ends() -> None:
    rec = Recorder(["lp.ko"])
    assert rec.leftovers == [] and not rec.wedge
    with rec:
        assert rec.leftovers == []
    p: Any = rec.probes
    assert p.kos == ["lp.ko"] and p.ended == "closed"
    assert rec.leftovers == [
        "echo '-:klptrace/p0_0_x' >> /sys/kernel/tracing/kprobe_events  # Busy"]


def test_on_a_wedged_kernel_the_probes_are_handed_off() -> None:
    wedge = Wedge()  # the kernel actor's
    with Recorder(wedge=wedge) as rec:
        wedge.never_returned("`rmmod lp`")  # the recorder reads it, nobody copies it
    assert rec.wedge is wedge and rec.probes.ended == "handed off"  # type: ignore[attr-defined]
    assert rec.leftovers == [
        "the kernel never returned from `rmmod lp`, after which removing probes can hang in "
        "the kernel: pid 4242 removes them once klptrace has exited (it may never finish "
        "before a reboot)"]


def test_an_oops_seen_by_the_caller_hands_the_probes_off() -> None:
    with Recorder() as rec:
        rec.wedge.oopsed()  # as `klptrace trace` notes an oops
    assert rec.leftovers[0].startswith("the kernel oopsed, after which removing probes")


def test_marks_sit_beside_the_kernel_s_events() -> None:
    with Recorder() as rec:
        start = rec.now()
        p: Any = rec.probes
        p.sink(Event(EventKind.ENABLE, rec.now(), patch="lp"))
        ev = rec.mark(EventKind.STEP, "insmod lp.ko")
        assert (ev.comm, ev.detail, ev.kind) == ("klptrace", "insmod lp.ko", EventKind.STEP)
        assert p.drained == 1  # the kernel's events up to now are in before the mark
        rec.poll(0)
        got = rec.recording(start)
        assert [e.kind for e in got.events] == [EventKind.ENABLE, EventKind.STEP]
        assert got.lost == 3 and rec.lost() == 3
        assert [p.to_json() for p in got.probes] == [
            {"name": "kprobe:klp_enable_patch", "target": "klp_enable_patch", "ok": True,
             "reason": ""}]
        rec.probes.status[0].ok = False  # the kernel refused to arm it, later
        assert got.probes[0].ok, "a past recording's probes changed with the live ones"
        assert rec.recording(start, start).events == []
