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
import time
from collections.abc import Iterator

from klptrace.errors import signals_deferred
from klptrace.kernel import kernelfs, settings
from klptrace.oops import Oops, find_oops

DYNDBG = "/sys/kernel/debug/dynamic_debug/control"
_QUERY = "file kernel/livepatch/*"

def parse_record(raw: bytes) -> tuple[int, float, str]:
    """(facility, timestamp in s, message) of one /dev/kmsg record
    ("pri,seq,usec,flags;message\n KEY=value...")."""
    text = raw.decode("utf-8", "replace")
    head, sep, msg = text.partition(";")
    if not sep:
        return 0, 0.0, text.strip()
    fields = head.split(",")
    fac = int(fields[0]) >> 3 if fields[0].isdigit() else 0
    usec = int(fields[2]) if len(fields) > 2 and fields[2].isdigit() else 0
    return fac, usec / 1e6, msg.split("\n", 1)[0]


class KernelLog:
    """Reads the kernel log (/dev/kmsg): from the moment it is opened, or all that the
    buffer still holds (from_start). The one reader of the kernel log in klptrace."""

    def __init__(self, from_start: bool = False, path: str = "/dev/kmsg") -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        if not from_start:
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
        return [(fac, msg) for fac, _ts, msg in self.entries()]

    def entries(self) -> list[tuple[int, float, str]]:
        """(facility, timestamp in s, message) of each record since the last read."""
        out: list[tuple[int, float, str]] = []
        while True:
            try:
                raw = os.read(self._fd, 8192)
            except OSError as e:
                if e.errno == errno.EPIPE:  # overwritten before we read it: records lost
                    out.append((0, 0.0, "klptrace: kernel log records were overwritten"))
                    continue
                if e.errno == errno.EAGAIN:
                    return out
                raise
            if not raw:
                return out
            out.append(parse_record(raw))

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
    """One dynamic debug query; OSError with the kernel's errno when it is refused."""
    err = kernelfs.write(DYNDBG, query)
    if err:
        raise OSError(err, os.strerror(err))


# --- oopses ------------------------------------------------------------------


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
