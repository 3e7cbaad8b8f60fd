"""Attaching klptrace's BPF programs, reading their events, and detaching them.

compiler.py builds the programs (and is the one module that imports bcc);
kprobes.py writes the kprobe events on livepatch modules and checks that the
kernel armed them. Probes attaches what was built, hands every event to a
sink, and removes it all at the end, or leaves that to a child process once
the kernel is wedged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from klptrace.events import (
    OPS,
    Callback,
    Event,
    EventKind,
    ShadowOp,
    StateOp,
    carries_ret,
    carries_state,
)
from klptrace.kernel import child, kmsg, settings
from klptrace.record import btf, elf
from klptrace.record.callers import Callers

# Build and check_kernel are what the commands start a recording with
from klptrace.record.compiler import Build as Build
from klptrace.record.compiler import check_kernel as check_kernel
from klptrace.record.kprobes import (
    GROUP,
    KPROBE_EVENTS,
    ArmedCheck,
    ModuleProbe,
    event_name,
    write_event,
)
from klptrace.results import Probe

RCU_EXPEDITED = "/sys/kernel/rcu_expedited"

# struct klpt_event (bpf/klptrace.h)
_EVENT = struct.Struct("<QQIIIiiIII16s56s56sQQQQII")
F_LIVEPATCH, F_FOUND, F_CB_TAILCALL = 1, 2, 4
_KLP_DATA = (EventKind.STATE, EventKind.SHADOW, EventKind.STATE_DECLARED)

#: symbol -> (entry program, return program); all on vmlinux
CORE_PROBES: dict[str, tuple[str | None, str | None]] = {
    "klp_enable_patch": ("klp_enable_patch_entry", "klp_enable_patch_return"),
    "klp_init_transition": ("klp_init_transition_entry", None),
    "klp_start_transition": ("klp_start_transition_entry", None),
    "klp_try_complete_transition": ("klp_try_complete_transition_entry", None),
    "klp_complete_transition": ("klp_complete_transition_entry", "klp_complete_transition_return"),
    "klp_cancel_transition": ("klp_cancel_transition_entry", None),
    "klp_reverse_transition": ("klp_reverse_transition_entry", "klp_reverse_transition_return"),
    "klp_force_transition": ("klp_force_transition_entry", None),
    "klp_check_and_switch_task": ("klp_check_and_switch_task_entry",
                                  "klp_check_and_switch_task_return"),
    "klp_patch_object": ("klp_patch_object_entry", "klp_patch_object_return"),
    "klp_unpatch_object": ("klp_unpatch_object_entry", None),
    "klp_unpatch_objects": ("klp_unpatch_objects_entry", None),
    "klp_module_coming": ("klp_module_coming_entry", "klp_module_coming_return"),
    "klp_module_going": ("klp_module_going_entry", None),
    "do_init_module": ("do_init_module_entry", "do_init_module_return"),
    "free_module": ("free_module_entry", None),
    "devkmsg_write": ("devkmsg_write_entry", None),
}

#: the state and shadow functions (kernel/livepatch/state.c, shadow.c): symbol -> entry
#: program; each returns through klp_api_ret. The state ones read struct klp_state.
STATE_PROBES = {"klp_get_state": "klp_get_state_entry",
                "klp_get_prev_state": "klp_get_prev_state_entry"}
SHADOW_PROBES = {"klp_shadow_alloc": "klp_shadow_alloc_entry",
                 "klp_shadow_get_or_alloc": "klp_shadow_get_or_alloc_entry",
                 "klp_shadow_get": "klp_shadow_get_entry",
                 "klp_shadow_free": "klp_shadow_free_entry",
                 "klp_shadow_free_all": "klp_shadow_free_all_entry"}
API_RETURN = "klp_api_ret"


def state_support(shape: int | None) -> str:
    """Why the state probes cannot be attached on a kernel whose struct klp_state is
    shape (btf.state_layout's KLPT_STATE_SHAPE), or "" when they can."""
    if shape == btf.STATE_OK:
        return ""
    if shape == btf.STATE_ABSENT:
        return ("not attached: this kernel's BTF has no struct klp_state or klp_patch.states "
                "(they came in v5.5, commit 73727f4dafae \"livepatch: Basic API to track "
                "system state changes\")")
    if shape == btf.STATE_OTHER_SHAPE:
        return ("not attached: this kernel's struct klp_state is not the shape klptrace reads "
                "(an unsigned long id, an unsigned int version, klp_patch.states a pointer)")
    return "not attached: this kernel's struct klp_state was not read from BTF"


def decode(raw: bytes, callers: Callers | None = None) -> Event:
    """A struct klpt_event from the ring buffer as an Event.

    callers, given every event in the kernel's order, names the callers of the state and
    shadow functions (and learns the modules' text from their do_init_module events)."""
    (ts, ip, pid, tid, kind, ret, state, cb, flags, _pad, comm, patch, obj,
     addr, obj_addr, ident, size, op, version) = _EVENT.unpack_from(raw)
    k = EventKind(kind)
    ev = Event(
        kind=k, ts_ns=ts, pid=pid, tid=tid,
        comm=_s(comm), patch=_s(patch), object=_s(obj),
        callback=Callback(cb) if cb else None,
        state=state if carries_state(k) and k not in _KLP_DATA else None,
        ret=ret if carries_ret(k, cb) else None,
        livepatch=bool(flags & F_LIVEPATCH),
    )
    if callers is not None:
        if k == EventKind.MODULE_INIT:
            callers.loaded(ev.object, (addr, size), (obj_addr, ident))
        elif k == EventKind.MODULE_INIT_RET:
            callers.init_done(ev.object)
        elif k == EventKind.MODULE_FREE:
            callers.freed(ev.object)
    if k not in _KLP_DATA:
        return ev
    found = bool(flags & F_FOUND)
    if k == EventKind.STATE_DECLARED:
        return dataclasses.replace(ev, state_id=ident, version=version)
    the_op = OPS.get(op)
    caller = callers.resolve(ip) if callers is not None else ""
    if k == EventKind.STATE:
        return dataclasses.replace(
            ev, op=the_op if isinstance(the_op, StateOp) else None, state_id=ident,
            version=version if found else None, caller=caller)
    shadow = the_op if isinstance(the_op, ShadowOp) else None
    return dataclasses.replace(
        ev, op=shadow, obj=obj_addr if shadow != ShadowOp.FREE_ALL else None, shadow_id=ident,
        size=size if shadow in (ShadowOp.ALLOC, ShadowOp.GET_OR_ALLOC) else None,
        addr=addr or None, caller=caller)


def _s(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


class Probes:
    """Compiled and attached BPF programs; use as a context manager."""

    def __init__(self, livepatch_modules: Iterable[str] = (), build: Build | None = None) -> None:
        """livepatch_modules: .ko paths whose callbacks are traced, loaded or not.
        build: a Build started earlier, else open() starts one."""
        self._ko = list(livepatch_modules)
        self._build = build
        self._bpf: Any = None
        self._events_written: list[str] = []
        self.status: list[Probe] = []
        self.attach_s = 0.0
        self._sink: Callable[[Event], None] | None = None
        self._armed = ArmedCheck()
        self._callers = Callers()
        #: after hand_off(): the pipe whose end, at klptrace's exit, starts the detaching
        self.exited_w: int | None = None

    # the build's timings (0 before open())
    @property
    def import_s(self) -> float:
        return self._build.import_s if self._build else 0.0

    @property
    def layout_s(self) -> float:
        return self._build.layout_s if self._build else 0.0

    @property
    def compile_s(self) -> float:
        return self._build.compile_s if self._build else 0.0

    # -- set up -------------------------------------------------------------
    def open(self, sink: Callable[[Event], None]) -> None:
        """Compile (Build checks the kernel first), attach, and send every event to sink."""
        self._sink = sink
        if self._build is None:
            self._build = Build()
        self._BPF, self._bpf = self._build.result()
        t3 = time.monotonic()
        try:
            self._attach_core()
            self._attach_state_and_shadow()
            # after attaching: a module loaded since sends its text in do_init_module
            self._callers = Callers.snapshot()
            if self._ko:
                # from before the first event: the kernel's reasons for not arming one
                self._armed.read_log(kmsg.KernelLog())
            self._attach_callbacks()
            self._bpf[b"events"].open_ring_buffer(self._on_event)
        except BaseException:
            self.close()
            raise
        self.attach_s = time.monotonic() - t3

    def _attach_core(self) -> None:
        for sym, (entry, ret) in CORE_PROBES.items():
            for fn, is_ret in ((entry, False), (ret, True)):
                if fn is not None:
                    self._attach_one(sym, fn, is_ret)

    def _attach_state_and_shadow(self) -> None:
        """The state and shadow functions: an entry and a return probe each, the state
        ones only where this kernel's struct klp_state is the shape the BPF reads."""
        assert self._build is not None
        why_not = state_support(self._build.define("KLPT_STATE_SHAPE"))
        for probes_, not_attached in ((STATE_PROBES, why_not), (SHADOW_PROBES, "")):
            for sym, entry in probes_.items():
                if not_attached:
                    for how in ("kprobe", "kretprobe"):
                        self.status.append(Probe(f"{how}:{sym}", sym, False, not_attached))
                    continue
                self._attach_one(sym, entry, False)
                self._attach_one(sym, API_RETURN, True)

    def _attach_one(self, sym: str, fn: str, is_ret: bool) -> None:
        b = self._bpf
        name = f"{'kretprobe' if is_ret else 'kprobe'}:{sym}"
        try:
            if is_ret:
                b.attach_kretprobe(event=sym.encode(), fn_name=fn.encode())
            else:
                b.attach_kprobe(event=sym.encode(), fn_name=fn.encode())
        except Exception as e:
            reason = str(e)
            if self._BPF.ksymname(sym.encode()) < 0:
                reason = f"{sym} is not in this kernel's symbols (inlined or absent)"
            self.status.append(Probe(name, sym, False, reason))
        else:
            self.status.append(Probe(name, sym, True))

    def _attach_callbacks(self) -> None:
        """kprobe events on each livepatch module's possible callbacks, armed at its load.

        Only functions whose address the module's data holds can be callbacks
        (elf.ModuleFile.callback_candidates); padding and split parts are never
        probed: the kernel refuses them, or accepts a deferred probe on one and
        never arms it. Each event writes "This probe might be able to register
        after target module is loaded" to the kernel log if the module is not
        loaded yet: that happens here, before the workload starts.
        """
        b = self._bpf
        b.load_func(b"callback_entry", self._BPF.KPROBE)
        b.load_func(b"callback_return", self._BPF.KPROBE)
        for i, ko in enumerate(self._ko):
            mod = elf.read_module(ko)
            for j, sym in enumerate(mod.callback_candidates):
                for kind, fn in (("p", "callback_entry"), ("r", "callback_return")):
                    ev = event_name(kind, i, j, sym)
                    target = f"{mod.name}:{sym}"
                    name = f"{'kprobe' if kind == 'p' else 'kretprobe'}:{target}"
                    try:
                        self._write_event(f"{kind}:{GROUP}/{ev} {target}")
                        b.attach_tracepoint(tp=f"{GROUP}:{ev}".encode(), fn_name=fn.encode())
                    except (OSError, Exception) as e:
                        self.status.append(Probe(name, target, False, _reason(e)))
                        continue
                    st = Probe(name, target, True)
                    self.status.append(st)
                    self._armed.add(ModuleProbe(ev, "k" if kind == "p" else "r", mod.name,
                                                sym, st))

    def _write_event(self, line: str) -> None:
        write_event(line)
        self._events_written.append(line.split()[0].split(":", 1)[1])

    def _on_event(self, _ctx: Any, data: Any, size: int) -> None:
        import ctypes

        ev = decode(ctypes.string_at(data, size), self._callers)
        self._armed.saw(ev)
        if self._sink is not None:
            self._sink(ev)

    # -- running ------------------------------------------------------------

    def poll(self, timeout_ms: int = 100) -> None:
        """Deliver pending events to the sink, waiting up to timeout_ms for one."""
        if self._bpf is not None:
            self._bpf.ring_buffer_poll(timeout_ms)
            self._armed.check(self._bpf.ring_buffer_consume)

    def drain(self) -> None:
        """Deliver every event already in the ring buffer."""
        if self._bpf is not None:
            self._bpf.ring_buffer_consume()
            self._armed.check(self._bpf.ring_buffer_consume)

    def lost(self) -> int:
        """Events the BPF side could not send (ring buffer full)."""
        if self._bpf is None:
            return 0
        return int(sum(v.value for v in self._bpf[b"lost"].values()))

    def close(self, expedite: bool = True) -> list[str]:
        """Detach everything; return what could not be removed, as commands that would."""
        leftovers: list[str] = []
        self._armed.close()
        if self._bpf is None and not self._events_written:
            return leftovers
        with expedited_grace_periods() if expedite else contextlib.nullcontext():
            if self._bpf is not None:
                try:
                    self._bpf.cleanup()
                except Exception:
                    pass
                self._bpf = None
            for ev in reversed(self._events_written):
                try:
                    write_event(f"-:{ev}")
                except OSError as e:
                    if e.errno != errno.ENOENT:
                        leftovers.append(f"echo '-:{ev}' >> {KPROBE_EVENTS}  # {e.strerror}")
            self._events_written = []
        return leftovers

    def hand_off(self) -> int:
        """Leave the detaching to a child process, once this one has exited; its pid.

        After an oops the kernel may never finish removing a probe: an ftrace
        probe's removal waits for work on every CPU (synchronize_rcu_tasks_rude()
        -> schedule_on_each_cpu() in kernel/rcu/tasks.h), and a kworker that
        died in a callback leaves its CPU's worker pool busy for good. That
        wait would happen in whichever process closes the last reference to a
        probe; made in a child that outlives klptrace, it can only strand the
        child. The child detaches as close() does once klptrace's copies of the
        descriptors are gone, without expediting RCU (which uses workqueues too).
        """
        # the kernel log is read no more: closed here, the child holds nothing of it
        self._armed.close()
        done_r, done_w = os.pipe()

        def detach() -> None:
            while os.read(done_r, 1):  # EOF: klptrace has exited
                pass
            self.close(expedite=False)

        pid = child.fork(detach, keep=(done_r,), keep_target=_is_probe)
        os.close(done_r)
        os.set_inheritable(done_w, False)
        self.exited_w = done_w  # closed when klptrace exits, not before
        self._bpf = None  # this process only drops its references, at exit
        self._events_written = []
        return pid


def _is_probe(target: str) -> bool:
    """Whether a descriptor (as /proc/self/fd shows it) is a BPF program, map or perf
    event: what the detaching child keeps of klptrace's (the kernel actor's request
    pipe, the kernel log, a caller's pipes would keep others waiting for its end)."""
    return target.startswith(("anon_inode:bpf", "anon_inode:[perf_event]"))


@contextlib.contextmanager
def expedited_grace_periods(path: str | None = None) -> Iterator[None]:
    """Expedite RCU grace periods while probes are removed, then put the setting back.

    Removing one probe waits for several grace periods: closing its perf
    event runs tracepoint_synchronize_unregister() and removing the kprobe
    runs synchronize_rcu() (kernel/trace/trace_event_perf.c, kernel/kprobes.c).
    Under emulation that is about 0.1 s a probe, 5 s for klptrace's 62 on
    6.1; expedited, 1.8 s. Nothing changes if the setting is already on or
    cannot be written (rcupdate.rcu_normal, no sysfs).
    """
    with settings.changed(path or RCU_EXPEDITED, "0", "1"):
        yield


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__
