"""klptrace's kprobe events (tracefs kprobe_events), and whether the kernel armed them.

A livepatch module's callbacks are probed with kprobe events written before the
module is loaded: the kernel defers them, then arms them when the module comes,
or logs why not. armed() decides, from what the kernel's kprobe list and its log
say, with no kernel at hand; ArmedCheck reads those as the recording goes on.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from klptrace.events import Event, EventKind
from klptrace.kernel import kernelfs, kmod
from klptrace.results import Probe

KPROBE_EVENTS = kmod.KPROBE_EVENTS
#: every registered kprobe (kernel/kprobes.c, report_probe())
KPROBES_LIST = "/sys/kernel/debug/kprobes/list"
GROUP = "klptrace"


@dataclasses.dataclass
class ModuleProbe:
    """A kprobe event on a function of a module, and how the kernel shows it."""

    event: str  # the event's name, as trace_kprobe's messages give it
    kind: str  # "k" or "r", as /sys/kernel/debug/kprobes/list gives it
    module: str
    symbol: str
    status: Probe


#: what trace_kprobe logs for each probe registered on a module not loaded yet
DEFERRED_MESSAGE = "trace_kprobe: This probe might be able to register after target module"

_LIST_LINE = re.compile(r"^\S+\s+([kr])\s+(\S+)\+0x[0-9a-f]+\s+([^\s\[]\S*)")
_REARM_FAILED = re.compile(
    r"^trace_kprobe: Failed to re-register probe (?P<ev>\S+) on (?P<mod>\S+): (?P<err>-?\d+)$")


def event_name(kind: str, ko_index: int, sym_index: int, sym: str) -> str:
    """A kprobe event name for a module's function (the kernel allows [A-Za-z0-9_] only)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", f"{kind}{ko_index}_{sym_index}_{sym}")[:60]


def write_event(line: str) -> None:
    """Add or remove a kprobe event; OSError with the kernel's errno when it refuses."""
    err = kernelfs.write(KPROBE_EVENTS, line + "\n", append=True)
    if err:
        raise OSError(err, os.strerror(err))


def leftover_events() -> list[str]:
    """klptrace's kprobe events still registered in the kernel (for cleanup checks)."""
    try:
        with open(KPROBE_EVENTS) as f:
            names = [line.split()[0] for line in f if line.split()]
        return [n for n in names if f":{GROUP}/" in n]
    except OSError:
        return []


# --- what the kernel says about a module's probes ------------------------------------


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


def armed(mp: ModuleProbe, kernel_words: str | None,
          listed: collections.Counter[tuple[str, str, str]] | None) -> tuple[bool | None, str]:
    """Whether the kernel armed one module probe when its module came, and why not.

    kernel_words: its failure to arm it, from the log (rearm_failures());
    listed: its kprobe list read while the module was loaded (registered_kprobes()),
    None when no such listing could be trusted. (None, "") when nothing is known.
    """
    if kernel_words is not None:
        return False, f"the kernel did not arm it when {mp.module} came: {kernel_words}"
    if listed is None:
        return None, ""  # no trusted listing, and no failure logged
    if listed[(mp.kind, mp.module, mp.symbol)] == 0:
        return False, (f"the kernel did not arm it when {mp.module} came: it is not in "
                       f"{KPROBES_LIST} (no reason in the kernel log)")
    return True, ""


def judge(mp: ModuleProbe, kernel_words: str | None,
          listed: collections.Counter[tuple[str, str, str]] | None) -> None:
    """Mark one module probe armed or not (see armed()); the first reason stays."""
    st = mp.status
    if st.armed is False:
        return
    verdict, why = armed(mp, kernel_words, listed)
    if verdict is False:
        st.ok, st.armed, st.reason = False, False, why
    elif verdict:
        st.armed = True


class LogReader(Protocol):
    """What ArmedCheck reads the kernel's reasons from (kmsg.KernelLog, or a fake)."""

    def read(self) -> list[str]: ...
    def close(self) -> None: ...


class ArmedCheck:
    """Whether the kernel armed each traced module's probes, checked as it comes."""

    def __init__(self, listing: str | None = None) -> None:
        """listing: the kernel's list of kprobes (KPROBES_LIST; a fake tree's in tests)."""
        self._listing = listing or KPROBES_LIST
        #: module name -> its kprobe events, to check once it has come
        self.module_probes: dict[str, list[ModuleProbe]] = {}
        # module -> how many times it came or was freed: a listing of its probes
        # read after either is not the one its MODULE_INIT was about
        self._changes: collections.Counter[str] = collections.Counter()
        self._pending: list[tuple[str, int]] = []  # (module, its changes then)
        self._klog: LogReader | None = None
        self._klog_last: list[str] = []  # the last record read, for the next one's reason
        self._not_armed: dict[str, str] = {}  # event -> the kernel's words

    def read_log(self, klog: LogReader) -> None:
        """Take the kernel's reasons for not arming a probe from klog, opened before the
        first probe was written (the check closes it)."""
        self._klog = klog

    def add(self, mp: ModuleProbe) -> None:
        """A module probe to check when its module comes."""
        self.module_probes.setdefault(mp.module, []).append(mp)

    def saw(self, ev: Event) -> None:
        """Follow a kernel event: a traced module that came, was freed or ran its init."""
        if ev.object in self.module_probes:
            if ev.kind in (EventKind.MODULE_COMING, EventKind.MODULE_FREE):
                self._changes[ev.object] += 1
            elif ev.kind == EventKind.MODULE_INIT:
                self._pending.append((ev.object, self._changes[ev.object]))

    def check(self, consume: Callable[[], object]) -> None:
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
        buffer once the listing has been read. consume: deliver those events
        (to saw()).
        """
        while self._pending:
            mod, changes = self._pending.pop(0)
            listing = _read_text(self._listing)
            consume()
            self._read_log()
            listed = registered_kprobes(listing) if listing is not None else None
            if self._changes[mod] != changes:
                listed = None
            judge_all(self.module_probes[mod], self._not_armed, listed)

    def _read_log(self) -> None:
        """Collect the kernel's failures to arm a probe from the log read so far."""
        if self._klog is None:
            return
        new = self._klog.read()
        for ev, words in rearm_failures(self._klog_last + new).items():
            self._not_armed.setdefault(ev, words)
        self._klog_last = new[-1:] or self._klog_last

    def close(self) -> None:
        """Stop reading the kernel log."""
        if self._klog is not None:
            self._klog.close()
            self._klog = None


def judge_all(probes: Sequence[ModuleProbe], not_armed: Mapping[str, str],
              listed: collections.Counter[tuple[str, str, str]] | None) -> None:
    """judge() each of a module's probes from the kernel's failures (event -> words)."""
    for mp in probes:
        judge(mp, not_armed.get(mp.event), listed)


def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None
