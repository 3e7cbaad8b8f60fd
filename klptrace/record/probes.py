"""The BPF side: compile bpf/klptrace.bpf.c with bcc, attach it, read its events.

This is the only module that imports bcc, and it does so lazily, so that the
rest of klptrace runs (and is tested) on machines without bcc or root.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import os
import re
import signal
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from klptrace import assets
from klptrace.errors import KlptraceError, NotSupported, check_interrupted
from klptrace.events import Callback, Event, EventKind, carries_ret, carries_state
from klptrace.kernel import kernelfs, kmod, kmsg, settings
from klptrace.lab import defaults
from klptrace.record import btf, elf

#: the BPF C (klptrace.bpf.c), its header and the stand-in kernel headers for bcc
BPF_DIR = assets.bpf_dir()
KPROBE_EVENTS = kmod.KPROBE_EVENTS
#: every registered kprobe (kernel/kprobes.c, report_probe())
KPROBES_LIST = "/sys/kernel/debug/kprobes/list"
RCU_EXPEDITED = "/sys/kernel/rcu_expedited"
GROUP = "klptrace"

# struct klpt_event (bpf/klptrace.h)
_EVENT = struct.Struct("<QQIIIiiIII16s56s56s")
F_LIVEPATCH = 1

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
#: the core's transition globals whose addresses the BPF reads
GLOBALS = {"ADDR_KLP_TRANSITION_PATCH": "klp_transition_patch",
           "ADDR_KLP_TARGET_STATE": "klp_target_state",
           "ADDR_KLP_SIGNALS_CNT": "klp_signals_cnt"}


class ProbeError(KlptraceError):
    """The BPF programs could not be compiled or a probe could not be set up."""


@dataclasses.dataclass
class ProbeStatus:
    """One probe: where it is, and whether it is attached (else the kernel's reason).

    armed is for a probe in a module: None until the module has come while
    klptrace traced, then whether the kernel armed it (if not, ok is False).
    """

    name: str
    target: str
    ok: bool
    reason: str = ""
    armed: bool | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "target": self.target, "ok": self.ok,
                             "reason": self.reason}
        if self.armed is not None:
            d["armed"] = self.armed
        return d


@dataclasses.dataclass
class ModuleProbe:
    """A kprobe event on a function of a module, and how the kernel shows it."""

    event: str  # the event's name, as trace_kprobe's messages give it
    kind: str  # "k" or "r", as /sys/kernel/debug/kprobes/list gives it
    module: str
    symbol: str
    status: ProbeStatus


#: what trace_kprobe logs for each probe registered on a module not loaded yet
DEFERRED_MESSAGE = "trace_kprobe: This probe might be able to register after target module"

_LIST_LINE = re.compile(r"^\S+\s+([kr])\s+(\S+)\+0x[0-9a-f]+\s+([^\s\[]\S*)")
_REARM_FAILED = re.compile(
    r"^trace_kprobe: Failed to re-register probe (?P<ev>\S+) on (?P<mod>\S+): (?P<err>-?\d+)$")


def registered_kprobes(text: str) -> collections.Counter[tuple[str, str, str]]:
    """(k or r, module, symbol) of each kprobe in /sys/kernel/debug/kprobes/list.

    A line is "ADDR  k|r  SYM+0xOFF  MODULE [GONE][DISABLED]..." (no MODULE
    for vmlinux). A probe on a module that went away stays listed, [GONE], but
    as a bare address once the module is freed: the listing names a module's
    probes only while it is loaded.
    """
    found: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for line in text.splitlines():
        m = _LIST_LINE.match(line)
        if m:
            found[(m[1], m[3], m[2])] += 1
    return found


def rearm_failures(messages: Sequence[str]) -> dict[str, str]:
    """Event name -> the kernel's words, for each kprobe event it failed to arm.

    trace_kprobe_module_callback() logs "Failed to re-register probe EV on
    MOD: ERR" for each one, after the reason that __register_trace_kprobe()
    may have logged just before (e.g. "Could not probe notrace function ...").
    """
    out: dict[str, str] = {}
    for i, msg in enumerate(messages):
        m = _REARM_FAILED.match(msg)
        if not m:
            continue
        err = int(m["err"])
        words = msg.removeprefix("trace_kprobe: ")
        name = errno.errorcode.get(-err)
        if name:
            words += f" ({name})"
        before = messages[i - 1] if i else ""
        if (before.startswith("trace_kprobe: ") and not _REARM_FAILED.match(before)
                and not before.startswith(DEFERRED_MESSAGE)):
            words = before.removeprefix("trace_kprobe: ") + "; " + words
        out.setdefault(m["ev"], words)
    return out


def event_name(kind: str, ko_index: int, sym_index: int, sym: str) -> str:
    """A kprobe event name for a module's function (the kernel allows [A-Za-z0-9_] only)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", f"{kind}{ko_index}_{sym_index}_{sym}")[:60]


def check_kernel() -> None:
    """Raise NotSupported unless this kernel can be traced: root, livepatch, kprobes."""
    problem = kmod.unsupported()
    if problem is not None:
        raise problem


def decode(raw: bytes) -> Event:
    """A struct klpt_event from the ring buffer as an Event."""
    ts, _ip, pid, tid, kind, ret, state, cb, flags, _pad, comm, patch, obj = _EVENT.unpack_from(raw)
    k = EventKind(kind)
    return Event(
        kind=k, ts_ns=ts, pid=pid, tid=tid,
        comm=_s(comm), patch=_s(patch), object=_s(obj),
        callback=Callback(cb) if cb else None,
        state=state if carries_state(k) else None,
        ret=ret if carries_ret(k, cb) else None,
        livepatch=bool(flags & F_LIVEPATCH),
    )


def _s(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


def _kallsyms(names: Iterable[str], path: str = "/proc/kallsyms") -> dict[str, int]:
    """Addresses of vmlinux symbols (not a module's, which have a [module] column)."""
    with open(path, "rb") as f:
        data = f.read()
    found: dict[str, int] = {}
    for name in names:
        # "ADDR TYPE NAME\n"; a module's lines end in "\t[MODULE]". bytes.find,
        # not a multi-line regex: under emulation that took 1.6 s, this 10 ms.
        needle = b" " + name.encode() + b"\n"
        at = data.find(needle)
        while at >= 0:
            line = data[data.rfind(b"\n", 0, at) + 1:at].split()
            if len(line) == 2 and len(line[1]) == 1:
                found[name] = int(line[0], 16)
                break
            at = data.find(needle, at + 1)
    return found


def cflags() -> list[str]:
    """-D and -I flags for this kernel: field offsets from BTF, globals from kallsyms."""
    # -g0: bcc compiles with -g to give the programs BTF, which klptrace does
    # not need (kprobes, plain maps); without it the compile is ~0.5 s (12%)
    # shorter in the emulated guest. -Oz: bcc optimises at -O2, and LLVM's
    # optimisation is most of what the compile spends on klptrace's own code
    # (a one-kprobe program takes 2.2 s of the 7.1-8.3 s); at -Oz the whole
    # compile took 5.5 s on 6.1 under TCG, and the verifier takes every program
    # (the kernel suites load them all, on 6.1 and the newest kernel).
    flags = [f"-I{BPF_DIR}", "-Wno-duplicate-decl-specifier", "-Wno-ignored-attributes", "-g0",
             "-Oz"]
    flags += [f"-D{k}={v}" for k, v in btf.cached_layout(defaults.cache_dir()).items()]
    addrs = _kallsyms(GLOBALS.values())
    for define, sym in GLOBALS.items():
        if not addrs.get(sym):
            raise ProbeError(f"kernel symbol {sym} not found in /proc/kallsyms",
                             "klptrace needs CONFIG_KALLSYMS_ALL=y and root")
        flags.append(f"-D{define}={addrs[sym]:#x}")
    return flags


def _preload(soname: str) -> None:
    """Load a shared library (and what it links) without holding the GIL.

    CPython 3.11's ctypes.CDLL holds the GIL in dlopen(); for libbcc, which
    brings libclang-cpp and libLLVM, that stopped every other thread for
    1.75 s in the emulated guest. A call through ctypes releases the GIL, so
    libc's dlopen is called that way; bcc's own CDLL then finds the library
    loaded. Any failure is left for bcc's import to report.
    """
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        libc.dlopen.restype = ctypes.c_void_p
        libc.dlopen.argtypes = [ctypes.c_char_p, ctypes.c_int]
        libc.dlopen(soname.encode(), os.RTLD_NOW | os.RTLD_LOCAL)
    except (OSError, AttributeError):
        pass


class Build:
    """Import bcc and compile klptrace's BPF in a background thread.

    The slow parts, loading libbcc (and clang and LLVM with it) and compiling,
    run in C without the GIL, so they overlap with what the caller does
    meanwhile: first the BTF and kallsyms layout that the compile needs
    (computed in the caller's thread, pure Python), then whatever the caller
    does before it calls result(). Nothing is attached: a Build that is
    dropped leaves nothing in the kernel.
    """

    def __init__(self) -> None:
        check_kernel()
        self.import_s = 0.0  # loading bcc (libbcc, libclang-cpp, libLLVM)
        self.layout_s = 0.0  # BTF offsets and kallsyms addresses
        self.compile_s = 0.0  # clang and LLVM, in bcc
        self._flags: list[str] | None = None
        self._flags_ready = threading.Event()
        self._error: BaseException | None = None
        self._BPF: Any = None
        self._bpf: Any = None
        self._thread = threading.Thread(target=self._work, name="klptrace-build", daemon=True)
        self._thread.start()
        t0 = time.monotonic()
        try:
            self._flags = cflags()
        except BaseException as e:
            self._error = e
            raise
        finally:
            self._flags_ready.set()
            self.layout_s = time.monotonic() - t0

    def _work(self) -> None:
        t0 = time.monotonic()
        os.environ["BCC_KERNEL_SOURCE"] = str(BPF_DIR)
        _preload("libbcc.so.0")
        try:
            from bcc import BPF
        except ImportError as e:
            self._error = NotSupported(
                "bcc's Python bindings are not importable",
                "install Debian's python3-bpfcc and use /usr/bin/python3 "
                "(or a venv made with --system-site-packages)")
            self._error.__cause__ = e
            return
        self._BPF = BPF
        self.import_s = time.monotonic() - t0
        self._flags_ready.wait()
        if self._flags is None:
            return
        t1 = time.monotonic()
        try:
            self._bpf = BPF(src_file=str(BPF_DIR / "klptrace.bpf.c").encode(), cflags=self._flags)
        except Exception as e:  # bcc raises bare Exception
            self._error = ProbeError(f"compiling the BPF programs failed: {e}",
                                     "run with BCC_DEBUG=1 for clang's output")
            self._error.__cause__ = e
        self.compile_s = time.monotonic() - t1

    def result(self) -> tuple[Any, Any]:
        """bcc's BPF class and the compiled module, once the thread is done."""
        while self._thread.is_alive():
            self._thread.join(0.1)  # a short wait: signals are handled between them
            check_interrupted()  # a safe point: nothing is in the kernel yet
        if self._error is not None:
            raise self._error
        return self._BPF, self._bpf


class Probes:
    """Compiled and attached BPF programs; use as a context manager."""

    def __init__(self, livepatch_modules: Iterable[str] = (), build: Build | None = None) -> None:
        """livepatch_modules: .ko paths whose callbacks are traced, loaded or not.
        build: a Build started earlier, else open() starts one."""
        self._ko = list(livepatch_modules)
        self._build = build
        self._bpf: Any = None
        self._events_written: list[str] = []
        self.status: list[ProbeStatus] = []
        self.attach_s = 0.0
        self._sink: Callable[[Event], None] | None = None
        #: module name -> its kprobe events, to check once it has come
        self.module_probes: dict[str, list[ModuleProbe]] = {}
        # module -> how many times it came or was freed: a listing of its probes
        # read after either is not the one its MODULE_INIT was about
        self._changes: collections.Counter[str] = collections.Counter()
        self._pending: list[tuple[str, int]] = []  # (module, its changes then)
        self._klog: kmsg.KernelLog | None = None
        self._klog_last: list[str] = []  # the last record read, for the next one's reason
        self._not_armed: dict[str, str] = {}  # event -> the kernel's words

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
            if self._ko:
                # from before the first event: the kernel's reasons for not arming one
                self._klog = kmsg.KernelLog()
            self._attach_callbacks()
            self._bpf["events"].open_ring_buffer(self._on_event)
        except BaseException:
            self.close()
            raise
        self.attach_s = time.monotonic() - t3

    def _attach_core(self) -> None:
        b = self._bpf
        for sym, (entry, ret) in CORE_PROBES.items():
            for fn, is_ret in ((entry, False), (ret, True)):
                if fn is None:
                    continue
                name = f"{'kretprobe' if is_ret else 'kprobe'}:{sym}"
                try:
                    if is_ret:
                        b.attach_kretprobe(event=sym, fn_name=fn)
                    else:
                        b.attach_kprobe(event=sym, fn_name=fn)
                except Exception as e:
                    reason = str(e)
                    if self._BPF.ksymname(sym) < 0:
                        reason = f"{sym} is not in this kernel's symbols (inlined or absent)"
                    self.status.append(ProbeStatus(name, sym, False, reason))
                else:
                    self.status.append(ProbeStatus(name, sym, True))

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
        b.load_func("callback_entry", self._BPF.KPROBE)
        b.load_func("callback_return", self._BPF.KPROBE)
        for i, ko in enumerate(self._ko):
            mod = elf.read_module(ko)
            for j, sym in enumerate(mod.callback_candidates):
                for kind, fn in (("p", "callback_entry"), ("r", "callback_return")):
                    ev = event_name(kind, i, j, sym)
                    target = f"{mod.name}:{sym}"
                    name = f"{'kprobe' if kind == 'p' else 'kretprobe'}:{target}"
                    try:
                        self._write_event(f"{kind}:{GROUP}/{ev} {target}")
                        b.attach_tracepoint(tp=f"{GROUP}:{ev}", fn_name=fn)
                    except (OSError, Exception) as e:
                        self.status.append(ProbeStatus(name, target, False, _reason(e)))
                        continue
                    st = ProbeStatus(name, target, True)
                    self.status.append(st)
                    self.module_probes.setdefault(mod.name, []).append(
                        ModuleProbe(ev, "k" if kind == "p" else "r", mod.name, sym, st))

    def _write_event(self, line: str) -> None:
        _kprobe_events(line)
        self._events_written.append(line.split()[0].split(":", 1)[1])

    def _on_event(self, _ctx: Any, data: Any, size: int) -> None:
        import ctypes

        ev = decode(ctypes.string_at(data, size))
        if ev.object in self.module_probes:
            if ev.kind in (EventKind.MODULE_COMING, EventKind.MODULE_FREE):
                self._changes[ev.object] += 1
            elif ev.kind == EventKind.MODULE_INIT:
                self._pending.append((ev.object, self._changes[ev.object]))
        if self._sink is not None:
            self._sink(ev)

    # -- armed-probe check --------------------------------------------------
    def _check_armed(self) -> None:
        """Check the probes of each traced module that came since the last check.

        A module's deferred probes are armed (or fail, and the kernel logs why)
        by trace_kprobe's notifier for MODULE_STATE_COMING, which
        prepare_coming_module() runs after klp_module_coming() and before
        do_init_module(): when the MODULE_INIT event is read, that is over and
        its log lines are in the log. The listing of kprobes is only trusted if
        the module was neither freed (its probes are then listed by address,
        not by name) nor loaded again (which unregisters and re-registers its
        probes, and is checked at its own MODULE_INIT) before it was read: the
        events of either are sent before that happens, so they are in the ring
        buffer once the listing has been read.
        """
        while self._pending:
            mod, changes = self._pending.pop(0)
            listing = _read_text(KPROBES_LIST)
            self._bpf.ring_buffer_consume()
            self._read_log()
            listed = registered_kprobes(listing) if listing is not None else None
            if self._changes[mod] != changes:
                listed = None
            for mp in self.module_probes[mod]:
                _judge(mp, self._not_armed.get(mp.event), listed)

    def _read_log(self) -> None:
        """Collect the kernel's failures to arm a probe from the log read so far."""
        if self._klog is None:
            return
        new = self._klog.read()
        for ev, words in rearm_failures(self._klog_last + new).items():
            self._not_armed.setdefault(ev, words)
        self._klog_last = new[-1:] or self._klog_last

    # -- running ------------------------------------------------------------

    def poll(self, timeout_ms: int = 100) -> None:
        """Deliver pending events to the sink, waiting up to timeout_ms for one."""
        if self._bpf is not None:
            self._bpf.ring_buffer_poll(timeout_ms)
            self._check_armed()

    def drain(self) -> None:
        """Deliver every event already in the ring buffer."""
        if self._bpf is not None:
            self._bpf.ring_buffer_consume()
            self._check_armed()

    def lost(self) -> int:
        """Events the BPF side could not send (ring buffer full)."""
        if self._bpf is None:
            return 0
        return int(sum(v.value for v in self._bpf["lost"].values()))

    def close(self, expedite: bool = True) -> list[str]:
        """Detach everything; return what could not be removed, as commands that would."""
        leftovers: list[str] = []
        if self._klog is not None:
            self._klog.close()
            self._klog = None
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
                    _kprobe_events(f"-:{ev}")
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
        done_r, done_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):  # hold no one's pipe while stuck in the kernel
                    os.dup2(null, fd)
                _keep_only_probes(done_r)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                while os.read(done_r, 1):  # EOF: klptrace has exited
                    pass
                self.close(expedite=False)
            finally:
                os._exit(0)
        os.close(done_r)
        os.set_inheritable(done_w, False)  # closed when klptrace exits, not before
        self._bpf = None  # this process only drops its references, at exit
        self._events_written = []
        return pid


def _kprobe_events(line: str) -> None:
    """Add or remove a kprobe event; OSError with the kernel's errno when it refuses."""
    err = kernelfs.write(KPROBE_EVENTS, line + "\n", append=True)
    if err:
        raise OSError(err, os.strerror(err))


def _keep_only_probes(keep: int) -> None:
    """Close every descriptor but 0-2, keep, and the BPF and perf event ones.

    What else a forked child holds (the kernel actor's request pipe, the
    kernel log, a caller's pipes) would keep others waiting for its end.
    """
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd <= 2 or fd == keep:
            continue
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the directory's own descriptor, gone
        if not target.startswith(("anon_inode:bpf", "anon_inode:[perf_event]")):
            with contextlib.suppress(OSError):
                os.close(fd)


@contextlib.contextmanager
def expedited_grace_periods(path: str = RCU_EXPEDITED) -> Iterator[None]:
    """Expedite RCU grace periods while probes are removed, then put the setting back.

    Removing one probe waits for several grace periods: closing its perf
    event runs tracepoint_synchronize_unregister() and removing the kprobe
    runs synchronize_rcu() (kernel/trace/trace_event_perf.c, kernel/kprobes.c).
    Under emulation that is about 0.1 s a probe, 5 s for klptrace's 62 on
    6.1; expedited, 1.8 s. Nothing changes if the setting is already on or
    cannot be written (rcupdate.rcu_normal, no sysfs).
    """
    with settings.changed(path, "0", "1"):
        yield


def _judge(mp: ModuleProbe, kernel_words: str | None,
           listed: collections.Counter[tuple[str, str, str]] | None) -> None:
    """Mark one module probe armed or not, from the kernel's log and its kprobe list."""
    st = mp.status
    if st.armed is False:
        return  # the first reason stays
    if kernel_words is not None:
        why = f"the kernel did not arm it when {mp.module} came: {kernel_words}"
    elif listed is not None and listed[(mp.kind, mp.module, mp.symbol)] == 0:
        why = (f"the kernel did not arm it when {mp.module} came: it is not in "
               f"{KPROBES_LIST} (no reason in the kernel log)")
    else:
        # armed (or, without a trusted listing, no failure logged)
        if listed is not None:
            st.armed = True
        return
    st.ok, st.armed, st.reason = False, False, why


def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def leftover_events() -> list[str]:
    """klptrace's kprobe events still registered in the kernel (for cleanup checks)."""
    try:
        with open(KPROBE_EVENTS) as f:
            names = [line.split()[0] for line in f if line.split()]
        return [n for n in names if f":{GROUP}/" in n]
    except OSError:
        return []
