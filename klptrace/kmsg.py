"""The kernel log as a second witness, and livepatch dynamic debug.

The livepatch core's transition messages are pr_debug: with dynamic debug on
for kernel/livepatch/*, dmesg carries the same lines the transcript renders
from BPF events, so the two can be compared. Step lines are written to
/dev/kmsg, as the kernel selftests' helpers do.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
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
