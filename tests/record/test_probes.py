"""klptrace.record.probes offline: the grace-period setting, and detaching (at once, or by
a child once klptrace has exited) from a stand-in for what bcc attached."""

from __future__ import annotations

import ctypes
import os
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from util import DATA

from klptrace.events import Event, EventKind
from klptrace.kernel import kernelfs, kmsg
from klptrace.record import btf, callers, kprobes, probes


@pytest.fixture(autouse=True)
def _writable_knob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The setting's writes go through kernelfs: let it write this test's files."""
    monkeypatch.setattr(kernelfs, "WRITABLE", (f"{tmp_path}/*",))


def test_expedites_and_puts_back(tmp_path: Path) -> None:
    knob = tmp_path / "rcu_expedited"
    knob.write_text("0\n")
    with probes.expedited_grace_periods(str(knob)):
        assert knob.read_text() == "1"
    assert knob.read_text() == "0"


def test_puts_back_after_an_error(tmp_path: Path) -> None:
    knob = tmp_path / "rcu_expedited"
    knob.write_text("0\n")
    with pytest.raises(KeyboardInterrupt), probes.expedited_grace_periods(str(knob)):
        raise KeyboardInterrupt
    assert knob.read_text() == "0"


def test_leaves_an_expedited_kernel_alone(tmp_path: Path) -> None:
    knob = tmp_path / "rcu_expedited"
    knob.write_text("1\n")
    with probes.expedited_grace_periods(str(knob)):
        pass
    assert knob.read_text() == "1\n"  # not rewritten at all


def test_no_setting_is_no_error(tmp_path: Path) -> None:
    with probes.expedited_grace_periods(str(tmp_path / "absent")):
        pass
    assert not (tmp_path / "absent").exists()


# -- detaching: at once, or by a child once klptrace has exited -------------------------


class _Log:
    """The kernel log the armed check reads (kmsg.KernelLog): lines since the last read."""

    closed = False

    def __init__(self) -> None:
        self.lines: list[str] = []

    def read(self) -> list[str]:
        out, self.lines = self.lines, []
        return out

    def close(self) -> None:
        self.closed = True


class _Attached:
    """What bcc's BPF object is to Probes once attached: cleanup() detaches it all."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def cleanup(self) -> None:
        self.marker.write_text(f"cleaned up by pid {os.getpid()}")


EVENTS = ["klptrace/p0_0_acme_prepare", "klptrace/r0_0_acme_prepare"]


@pytest.fixture
def tracefs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """kprobe_events and rcu_expedited in a fake tree, both "0" or empty."""
    events = tmp_path / "kprobe_events"
    events.write_text("")
    (tmp_path / "rcu_expedited").write_text("0\n")
    monkeypatch.setattr(kprobes, "KPROBE_EVENTS", str(events))
    monkeypatch.setattr(probes, "RCU_EXPEDITED", str(tmp_path / "rcu_expedited"))
    return events


def _attached(tmp_path: Path) -> tuple[probes.Probes, _Log]:
    p = probes.Probes()
    log = _Log()
    p._armed.read_log(log)
    p._bpf = _Attached(tmp_path / "cleaned")
    p._events_written = list(EVENTS)
    return p, log


def test_close_detaches_and_removes_the_events_expedited(tmp_path: Path, tracefs: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    p, log = _attached(tmp_path)
    seen: list[str] = []
    real = kprobes.write_event

    def write_event(line: str) -> None:  # what rcu_expedited reads meanwhile
        seen.append((tmp_path / "rcu_expedited").read_text())
        real(line)

    monkeypatch.setattr(probes, "write_event", write_event)
    assert p.close() == []
    assert log.closed and (tmp_path / "cleaned").read_text().endswith(str(os.getpid()))
    assert tracefs.read_text() == "".join(f"-:{ev}\n" for ev in reversed(EVENTS))
    assert seen == ["1", "1"] and (tmp_path / "rcu_expedited").read_text() == "0"
    assert p.close() == []  # nothing left to do


def test_close_names_what_it_could_not_remove(tmp_path: Path, tracefs: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    p, _ = _attached(tmp_path)
    monkeypatch.setattr(kernelfs, "WRITABLE", ())  # every write refused: EPERM
    assert p.close(expedite=False) == [
        f"echo '-:{ev}' >> /sys/kernel/tracing/kprobe_events  # Operation not permitted"
        for ev in reversed(EVENTS)]
    # an event already gone (ENOENT) is no leftover
    p._events_written = list(EVENTS)
    tracefs.unlink()
    monkeypatch.setattr(kernelfs, "WRITABLE", (f"{tmp_path}/*",))
    assert p.close(expedite=False) == []


def test_the_detaching_child_waits_for_klptrace_to_exit(tmp_path: Path, tracefs: Path) -> None:
    p, _ = _attached(tmp_path)
    kmsg_file = tmp_path / "kmsg"
    kmsg_file.write_text("")
    log = kmsg.KernelLog(path=str(kmsg_file))  # a real one: its descriptor is the child's too
    p._armed.read_log(log)
    pid = p.hand_off()
    # this process drops its references only; the kernel log is closed here, not left
    # to the child, which closes what it holds of it at once and then failed to close
    # the log again, before removing anything
    assert p._bpf is None and p._events_written == []
    assert p.close() == []
    time.sleep(0.3)
    assert tracefs.read_text() == "" and not (tmp_path / "cleaned").exists()
    assert p.exited_w is not None
    os.close(p.exited_w)  # as klptrace's exit does
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert (tmp_path / "cleaned").read_text() == f"cleaned up by pid {pid}"
    assert tracefs.read_text() == "".join(f"-:{ev}\n" for ev in reversed(EVENTS))
    assert (tmp_path / "rcu_expedited").read_text() == "0\n"  # not expedited: untouched
    with pytest.raises(OSError):
        os.fstat(log._fd)  # closed in this process


def test_the_detaching_child_keeps_only_probes() -> None:
    assert probes._is_probe("anon_inode:bpf-prog") and probes._is_probe("anon_inode:bpf-map")
    assert probes._is_probe("anon_inode:[perf_event]")
    assert not probes._is_probe("pipe:[1234]") and not probes._is_probe("/dev/kmsg")


# -- attaching, over a stand-in for bcc's compiled BPF ----------------------------------

KO = str(DATA / "modules" / "acme_lp-7.3-gcc14.ko")  # acme_lp, six possible callbacks


def _names(*names: bytes) -> list[str]:
    """bcc's names are bytes: a str is deprecated (a DeprecationWarning per call)."""
    assert all(isinstance(n, bytes) for n in names), f"not bytes, as bcc wants: {names}"
    return [n.decode() for n in names]


class _BPF:
    """bcc's BPF class as Probes uses it: ksymname(), KPROBE."""

    KPROBE = 2
    ABSENT = frozenset({"klp_force_transition"})

    @staticmethod
    def ksymname(sym: bytes) -> int:
        return -1 if _names(sym)[0] in _BPF.ABSENT else 0xffffffff81000000


class _Map:
    def __init__(self) -> None:
        self.callback: Callable[[Any, Any, int], None] | None = None

    def open_ring_buffer(self, callback: Callable[[Any, Any, int], None]) -> None:
        self.callback = callback

    def values(self) -> list[Any]:
        return [types.SimpleNamespace(value=2), types.SimpleNamespace(value=5)]


class _Compiled:
    """A compiled module: records what is attached, sends the events it is given."""

    def __init__(self) -> None:
        self.refuse: dict[str, BaseException] = {}  # target -> what attaching raises
        self.attached: list[tuple[str, str, str]] = []
        self.loaded: list[str] = []
        self.maps = {"events": _Map(), "lost": _Map()}
        self.queue: list[bytes] = []
        self.cleaned = False

    def _attach(self, how: str, target_b: bytes, fn_b: bytes) -> None:
        target, fn = _names(target_b, fn_b)
        if target in self.refuse:
            raise self.refuse[target]
        self.attached.append((how, target, fn))

    def attach_kprobe(self, event: bytes, fn_name: bytes) -> None:
        self._attach("kprobe", event, fn_name)

    def attach_kretprobe(self, event: bytes, fn_name: bytes) -> None:
        self._attach("kretprobe", event, fn_name)

    def attach_tracepoint(self, tp: bytes, fn_name: bytes) -> None:
        self._attach("tracepoint", tp, fn_name)

    def load_func(self, name: bytes, kind: int) -> None:
        assert kind == _BPF.KPROBE
        self.loaded += _names(name)

    def __getitem__(self, name: bytes) -> _Map:
        return self.maps[_names(name)[0]]

    def ring_buffer_consume(self) -> None:
        while self.queue:
            buf = ctypes.create_string_buffer(self.queue.pop(0))
            cb = self.maps["events"].callback
            assert cb is not None
            cb(None, ctypes.addressof(buf), len(buf.raw))

    def ring_buffer_poll(self, timeout_ms: int) -> None:
        self.ring_buffer_consume()

    def cleanup(self) -> None:
        self.cleaned = True
        raise Exception("bcc's cleanup may fail: nothing is left to do about it")


class _Build:
    import_s, layout_s, compile_s = 1.5, 0.25, 5.5

    def __init__(self, bpf: _Compiled, state_shape: int = btf.STATE_OK) -> None:
        self.bpf = bpf
        self.state_shape = state_shape

    def define(self, name: str) -> int | None:
        return {"KLPT_STATE_SHAPE": self.state_shape}.get(name)

    def result(self) -> tuple[Any, Any]:
        return _BPF, self.bpf


def _raw(kind: EventKind, obj: str = "acme_lp", ts: int = 1, ip: int = 0, addr: int = 0,
         obj_addr: int = 0, ident: int = 0, size: int = 0, op: int = 0) -> bytes:
    return probes._EVENT.pack(ts, ip, 7, 7, kind, 0, 0, 0, 0, 0, b"insmod", b"acme_lp",
                              obj.encode(), addr, obj_addr, ident, size, op, 0)


@pytest.fixture
def attach(tmp_path: Path, tracefs: Path,
           monkeypatch: pytest.MonkeyPatch) -> tuple[probes.Probes, _Compiled, _Log]:
    """Probes on acme_lp, over a compiled module that refuses two core probes."""
    bpf = _Compiled()
    bpf.refuse = {"klp_force_transition": Exception("cannot attach kprobe"),
                  "klp_cancel_transition": Exception("Failed to attach BPF program "
                                                     "klp_cancel_transition_entry")}
    log = _Log()
    monkeypatch.setattr(kmsg, "KernelLog", lambda: log)
    monkeypatch.setattr(kprobes, "KPROBES_LIST", str(tmp_path / "list"))
    return probes.Probes([KO], _Build(bpf)), bpf, log  # type: ignore[arg-type]


def test_open_attaches_the_core_and_each_module_s_callbacks(
        attach: tuple[probes.Probes, _Compiled, _Log], tracefs: Path) -> None:
    p, bpf, _log = attach
    assert (p.import_s, p.layout_s, p.compile_s, p.attach_s) == (1.5, 0.25, 5.5, 0.0)
    got: list[Event] = []
    p.open(got.append)
    assert p.attach_s > 0
    status = {s.name: s for s in p.status}
    assert status["kprobe:klp_enable_patch"].ok and status["kretprobe:klp_enable_patch"].ok
    force, cancel = status["kprobe:klp_force_transition"], status["kprobe:klp_cancel_transition"]
    assert (force.ok, force.reason) == (
        False, "klp_force_transition is not in this kernel's symbols (inlined or absent)")
    assert (cancel.ok, cancel.reason) == (
        False, "Failed to attach BPF program klp_cancel_transition_entry")
    assert len([a for a in bpf.attached if a[0] != "tracepoint"]) == sum(
        (e is not None) + (r is not None) for e, r in probes.CORE_PROBES.values()) - 2 + 2 * (
        len(probes.STATE_PROBES) + len(probes.SHADOW_PROBES))
    # each state and shadow function: its own entry program, the shared return one
    assert ("kprobe", "klp_shadow_free", "klp_shadow_free_entry") in bpf.attached
    assert ("kretprobe", "klp_get_prev_state", "klp_api_ret") in bpf.attached
    # an entry and a return kprobe event on each possible callback, as the kernel takes them
    assert bpf.loaded == ["callback_entry", "callback_return"]
    written = tracefs.read_text().splitlines()
    assert written[:2] == ["p:klptrace/p0_0_acme_activate acme_lp:acme_activate",
                           "r:klptrace/r0_0_acme_activate acme_lp:acme_activate"]
    assert len(written) == 12 and ("tracepoint", "klptrace:r0_5_acme_release",
                                   "callback_return") in bpf.attached
    assert status["kretprobe:acme_lp:acme_release"].target == "acme_lp:acme_release"


def test_events_reach_the_sink_and_the_armed_check(
        attach: tuple[probes.Probes, _Compiled, _Log], tmp_path: Path) -> None:
    p, bpf, log = attach
    got: list[Event] = []
    p.open(got.append)
    (tmp_path / "list").write_text((DATA / "kprobes" / "7.3" / "list-loaded.txt").read_text())
    log.lines = ["trace_kprobe: Could not probe notrace function acme_quiesce [acme_lp]",
                 "trace_kprobe: Failed to re-register probe p0_4_acme_quiesce on acme_lp: -22"]
    bpf.queue = [_raw(EventKind.MODULE_COMING, ts=1), _raw(EventKind.MODULE_INIT, ts=2)]
    p.poll(0)
    assert [(e.kind, e.ts_ns, e.object) for e in got] == [
        (EventKind.MODULE_COMING, 1, "acme_lp"), (EventKind.MODULE_INIT, 2, "acme_lp")]
    status = {s.name: s for s in p.status}
    assert status["kprobe:acme_lp:acme_prepare"].armed is True
    quiesce = status["kprobe:acme_lp:acme_quiesce"]
    assert (quiesce.ok, quiesce.armed) == (False, False)
    assert quiesce.reason == (
        "the kernel did not arm it when acme_lp came: Could not probe notrace function "
        "acme_quiesce [acme_lp]; Failed to re-register probe p0_4_acme_quiesce on acme_lp: "
        "-22 (EINVAL)")
    # not in the listing, and no word from the kernel: not armed either
    assert status["kprobe:acme_lp:acme_activate"].armed is False
    bpf.queue = [_raw(EventKind.ENABLE, obj="", ts=3)]
    p.drain()
    assert got[-1].kind == EventKind.ENABLE and p.lost() == 7


def test_close_after_open_detaches_everything(attach: tuple[probes.Probes, _Compiled, _Log],
                                              tracefs: Path) -> None:
    p, bpf, log = attach
    p.open(lambda _ev: None)
    assert p.close() == []  # cleanup's failure is no leftover: the events are removed
    assert bpf.cleaned and log.closed
    lines = tracefs.read_text().splitlines()
    assert lines[12:] == [f"-:{line.split()[0].split(':', 1)[1]}" for line in
                          reversed(lines[:12])]
    assert p.lost() == 0  # nothing attached any more
    p.poll(0)
    p.drain()


def test_an_attach_cut_short_removes_what_it_wrote(attach: tuple[probes.Probes, _Compiled, _Log],
                                                   tracefs: Path) -> None:
    p, bpf, log = attach
    bpf.refuse["klptrace:p0_1_acme_answer_get"] = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        p.open(lambda _ev: None)
    assert tracefs.read_text().splitlines() == [
        "p:klptrace/p0_0_acme_activate acme_lp:acme_activate",
        "r:klptrace/r0_0_acme_activate acme_lp:acme_activate",
        "p:klptrace/p0_1_acme_answer_get acme_lp:acme_answer_get",
        "-:klptrace/p0_1_acme_answer_get", "-:klptrace/r0_0_acme_activate",
        "-:klptrace/p0_0_acme_activate"]
    assert bpf.cleaned and log.closed


def test_a_refused_kprobe_event_is_a_probe_with_the_kernel_s_reason(
        attach: tuple[probes.Probes, _Compiled, _Log], tracefs: Path) -> None:
    p, _bpf, _log = attach
    tracefs.unlink()  # no kprobe events: each write fails with ENOENT
    p.open(lambda _ev: None)
    mine = [s for s in p.status if s.target.startswith("acme_lp:")]
    assert len(mine) == 12 and {(s.ok, s.reason) for s in mine} == {
        (False, "No such file or directory")}
    assert p.close() == []  # nothing of it to remove


# -- the state and shadow functions -----------------------------------------------------


@pytest.mark.parametrize("shape", [btf.STATE_ABSENT, btf.STATE_OTHER_SHAPE, None])
def test_a_kernel_without_klp_state_gets_no_state_probes(
        attach: tuple[probes.Probes, _Compiled, _Log], shape: int | None) -> None:
    """Where struct klp_state is missing or not the shape the BPF reads, the state probes
    are not attached (never a wrong read) and their status says why; the shadow ones are."""
    p, bpf, _log = attach
    assert p._build is not None
    p._build.state_shape = shape  # type: ignore[attr-defined]
    p.open(lambda _ev: None)
    status = {s.name: s for s in p.status}
    for sym in probes.STATE_PROBES:
        for how in ("kprobe", "kretprobe"):
            st = status[f"{how}:{sym}"]
            assert not st.ok and st.reason.startswith("not attached: "), st
            assert not any(a[1] == sym for a in bpf.attached)
    assert ("73727f4dafae" in status["kprobe:klp_get_state"].reason) == (
        shape == btf.STATE_ABSENT)
    for sym in probes.SHADOW_PROBES:
        assert status[f"kprobe:{sym}"].ok and status[f"kretprobe:{sym}"].ok


def test_a_caller_is_named_though_its_module_is_gone_when_read(
        attach: tuple[probes.Probes, _Compiled, _Log], monkeypatch: pytest.MonkeyPatch) -> None:
    """A post_unpatch callback frees a shadow variable, then the module is removed: by
    the time klptrace reads the ring buffer the module's text is gone from the kernel
    (and from /proc/kallsyms), but its do_init_module event came first and its
    free_module event after the call: the call is still the module's."""
    p, bpf, _log = attach
    monkeypatch.setattr(callers.Callers, "snapshot",
                        classmethod(lambda cls: cls((0xffffffff81000000, 0xffffffff82000000))))
    got: list[Event] = []
    p.open(got.append)
    text, init = 0xffffffffc0a00000, 0xffffffffc0b00000
    free, get = 6, 5  # KLPT_OP_SHADOW_FREE, _GET
    bpf.queue = [
        _raw(EventKind.MODULE_INIT, obj="acme_lp", ts=1, addr=text, size=0x3000,
             obj_addr=init, ident=0x1000),
        _raw(EventKind.SHADOW, ts=2, ip=init + 0x10, obj_addr=0xffff888003c1e000, ident=7,
             op=get),  # from its init
        _raw(EventKind.MODULE_INIT_RET, obj="acme_lp", ts=3),
        _raw(EventKind.SHADOW, ts=4, ip=text + 0x2ff0, obj_addr=0xffff888003c1e000, ident=7,
             op=free),
        _raw(EventKind.SHADOW, ts=5, ip=0xffffffff81234567, ident=7, op=get),  # vmlinux
        _raw(EventKind.MODULE_FREE, obj="acme_lp", ts=6),
        # the same addresses, reused after the free: not acme_lp's any more
        _raw(EventKind.SHADOW, ts=7, ip=text + 0x10, ident=7, op=get),
        _raw(EventKind.SHADOW, ts=8, ip=init + 0x10, ident=7, op=get),
    ]
    p.poll(0)
    shadow = [e for e in got if e.kind == EventKind.SHADOW]
    assert [(e.ts_ns, e.caller) for e in shadow] == [
        (2, "acme_lp"), (4, "acme_lp"), (5, "vmlinux"), (7, ""), (8, "")]
    assert shadow[1].obj == 0xffff888003c1e000 and shadow[1].shadow_id == 7
