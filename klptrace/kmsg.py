"""The kernel log as a second witness, and livepatch dynamic debug.

The livepatch core's transition messages are pr_debug: with dynamic debug on
for kernel/livepatch/*, dmesg carries the same lines the transcript renders
from BPF events, so the two can be compared. Step lines are written to
/dev/kmsg, as the kernel selftests' helpers do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import re
import time
from collections.abc import Iterator, Sequence

from klptrace import settings
from klptrace.errors import signals_deferred

DYNDBG = "/sys/kernel/debug/dynamic_debug/control"
_QUERY = "file kernel/livepatch/*"

# transcript lines that the kernel itself logs (klptrace's own "% step" lines
# are written to the log for people to read, but prove nothing about the kernel)
_WITNESSED = re.compile(
    r"^(livepatch: (?!klp_try_switch_task: |signaling remaining tasks).*"
    r"|\S+: (pre|post)_(un)?patch_callback: .*"
    r"|(?P<m>\S+): (?P=m)_(init|exit))$")


def witnessed(lines: Sequence[str]) -> list[str]:
    """The lines of a transcript (or of dmesg) that both BPF and dmesg can show."""
    return [line for line in lines if _WITNESSED.match(line)]


def parse_record(raw: bytes) -> str:
    """The message of one /dev/kmsg record ("pri,seq,usec,flags;message\\n...")."""
    text = raw.decode("utf-8", "replace")
    head, _, msg = text.partition(";")
    return msg.split("\n", 1)[0] if head else text.strip()


class KernelLog:
    """Reads the kernel log from the moment it is opened."""

    def __init__(self) -> None:
        self._fd = os.open("/dev/kmsg", os.O_RDWR | os.O_NONBLOCK)
        os.lseek(self._fd, 0, os.SEEK_END)

    def write(self, line: str) -> None:
        """Put a line into the kernel log (as the selftests log their commands)."""
        with contextlib.suppress(OSError):
            os.write(self._fd, line.encode())

    def read(self) -> list[str]:
        """Messages logged since the last read."""
        return [msg for _fac, msg in self.records()]

    def records(self) -> list[tuple[int, str]]:
        """(facility, message) of each record logged since the last read; 0 is the kernel."""
        out: list[tuple[int, str]] = []
        while True:
            try:
                raw = os.read(self._fd, 8192)
            except OSError as e:
                if e.errno == errno.EPIPE:  # overwritten before we read it: records lost
                    out.append((0, "klptrace: kernel log records were overwritten"))
                    continue
                if e.errno == errno.EAGAIN:
                    return out
                raise
            if not raw:
                return out
            head = raw.split(b",", 1)[0]
            fac = int(head) >> 3 if head.isdigit() else 0
            out.append((fac, parse_record(raw)))

    def close(self) -> None:
        os.close(self._fd)


DEVKMSG = "/proc/sys/kernel/printk_devkmsg"


@contextlib.contextmanager
def devkmsg_unlimited() -> Iterator[None]:
    """Let klptrace's step lines into the log: writes to /dev/kmsg are rate limited
    (10 per 5 s) unless printk_devkmsg is "on". The old value is put back after."""
    with settings.changed(DEVKMSG, "ratelimit", "on"):
        yield


@contextlib.contextmanager
def livepatch_debug() -> Iterator[bool]:
    """Turn on pr_debug for kernel/livepatch/* and restore the old flags after.

    Yields whether dynamic debug could be used at all.
    """
    try:
        with open(DYNDBG) as f:
            before = [line for line in f if line.startswith("kernel/livepatch/")]
    except OSError:
        yield False
        return
    try:
        _control(f"{_QUERY} +p")
    except OSError:
        yield False
        return
    try:
        yield True
    finally:
        # put back the lines that did not print before
        with signals_deferred():
            for line in before:
                m = re.match(r"^(\S+):(\d+) \S+ =(\S*)", line)
                if m and "p" not in m[3]:
                    with contextlib.suppress(OSError):
                        _control(f"file {m[1]} line {m[2]} -p")


def _control(query: str) -> None:
    fd = os.open(DYNDBG, os.O_WRONLY)
    try:
        os.write(fd, query.encode())
    finally:
        os.close(fd)


# --- oopses ------------------------------------------------------------------

# The line __die() prints (arch/x86/kernel/dumpstack.c): "Oops: 0002 [#1] PREEMPT SMP NOPTI",
# "general protection fault, ...: 0000 [#1] ...", "invalid opcode: 0000 [#1] ..."
_DIE = re.compile(r"^[\w ,:-]*: [0-9a-f]{4} \[#\d+\]")
_OOPS_START = re.compile(r"^(BUG: |kernel BUG at |Kernel panic - not syncing)")
# what names the oops: the task (lib/dump_stack.c; "UID: n" since v6.10) and where
_OOPS_KEY = re.compile(r"^(BUG: |kernel BUG at |Kernel panic - not syncing|CPU: \d+ .*PID: \d+ "
                       r"Comm: |RIP: [0-9a-f]{4}:[\w.]+\+0x)")  # a kernel RIP names a function
_OOPS_END = re.compile(r"^---\[ end (trace|Kernel panic)")


@dataclasses.dataclass
class Oops:
    """An oops (or panic) in the kernel log: its first lines and whether it was all read."""

    lines: list[str]
    complete: bool

    @property
    def summary(self) -> list[str]:
        """The lines that say what and where: the BUG, the die line, the task, the RIP."""
        return [line for line in self.lines if _OOPS_KEY.match(line) or _DIE.match(line)][:6]


def find_oops(messages: Sequence[str]) -> Oops | None:
    """The first oops or panic among kernel log messages (kernel facility), if any.

    It starts at a "BUG:" / "kernel BUG at" / panic line or at __die()'s
    "...: 0000 [#1]" line and ends at the "---[ end trace" marker the kernel
    prints when the oops handler is done (oops_exit()).
    """
    start = next((i for i, m in enumerate(messages) if _OOPS_START.match(m) or _DIE.match(m)),
                 None)
    if start is None:
        return None
    block = list(messages[start:])
    end = next((i for i, m in enumerate(block) if _OOPS_END.match(m)), None)
    if end is not None:
        return Oops(block[:end + 1], True)
    return Oops(block, False)


class OopsWatch:
    """Watches the kernel log for an oops or panic from the moment it is made."""

    #: how long to wait for the rest of an oops once its first line is seen
    COMPLETE_S = 2.0

    def __init__(self, log: KernelLog | None = None) -> None:
        self._log = log or KernelLog()
        self._seen: list[str] = []
        self.oops: Oops | None = None

    def check(self) -> Oops | None:
        """The oops logged since the watch began, once it has been read to its end
        (or COMPLETE_S after its first line); None while there is none."""
        if self.oops is not None:
            return self.oops
        self._seen += [m for fac, m in self._log.records() if fac == 0]
        found = find_oops(self._seen)
        if found is None:
            self._seen = self._seen[-4:]  # a "BUG:" line may precede the die line
            return None
        deadline = time.monotonic() + self.COMPLETE_S
        while not found.complete and time.monotonic() < deadline:
            time.sleep(0.05)  # the oops handler is still printing on another CPU
            self._seen += [m for fac, m in self._log.records() if fac == 0]
            found = find_oops(self._seen) or found
        self.oops = found
        return found

    def close(self) -> None:
        self._log.close()
