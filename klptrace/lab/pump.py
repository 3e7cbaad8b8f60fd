"""The output pump: vng's stdout and stderr copied to ours while the guest runs, and what
ended it (the Outcome): vng's exit, the timeout, a signal, a panic on the kernel's
console, or work that is done in a guest that does not power off."""

from __future__ import annotations

import enum
import os
import re
import selectors
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


class Outcome(enum.StrEnum):
    """Why pump() returned."""

    EXITED = "exited"  # vng exited and both its pipes are at their end
    TIMEOUT = "timeout"  # the deadline passed
    SIGNAL = "signal"  # the wake fd became readable (a stop signal came)
    PANIC = "panic"  # the kernel's console shows a panic
    DONE = "done"  # done() held for DONE_GRACE_S and the guest still runs


# A panic; or an exception before the kernel's own handlers are up ("PANIC: early
# exception 0x06 IP ..." from early_fixup_exception()), after which it halts for good.
_PANIC_RE = re.compile(r"Kernel panic - not syncing:.*|PANIC: early exception.*")


def panic_line(console: str) -> str | None:
    """The kernel's panic message in a console log, if it panicked."""
    m = _PANIC_RE.search(console)
    return m.group(0).strip() if m else None


#: how long a guest may take to power off once its caller says the command is done
DONE_GRACE_S = 30.0


class _ConsoleWatch:
    """Reads the kernel's console log as it grows (QEMU creates it), for a panic line."""

    def __init__(self, path: Path | None) -> None:
        self.path, self.tail = path, ""
        self.file: BinaryIO | None = None

    def panicked(self) -> bool:
        if self.file is None and self.path is not None:
            try:
                self.file = open(self.path, "rb")  # closed by close()
            except OSError:
                return False
        if self.file is None:
            return False
        text = self.tail + self.file.read().decode(errors="replace")
        self.tail = text[-4096:]  # a line split between two reads
        return panic_line(text) is not None

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def pump(proc: subprocess.Popen[bytes], deadline: float, wake: int,
         err_tail: bytearray, done: Callable[[], bool] | None = None,
         console: Path | None = None) -> Outcome:
    """Copy the child's stdout/stderr to ours until it exits, keeping stderr's tail.

    Returns EXITED, TIMEOUT, SIGNAL once wake is readable, PANIC once the kernel's
    console log shows a panic (an early one halts the guest, which then never exits),
    or DONE when done() has been true for DONE_GRACE_S and the guest still runs.
    """
    watch = _ConsoleWatch(console)
    done_at: float | None = None
    assert proc.stdout is not None and proc.stderr is not None
    sel = selectors.DefaultSelector()
    outs = {proc.stdout.fileno(): sys.stdout, proc.stderr.fileno(): sys.stderr}
    for fd in outs:
        sel.register(fd, selectors.EVENT_READ)
    sel.register(wake, selectors.EVENT_READ)
    try:
        while len(sel.get_map()) > 1 or proc.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return Outcome.TIMEOUT
            if done_at is None and done is not None and done():
                done_at = time.monotonic()
            if done_at is not None and time.monotonic() - done_at > DONE_GRACE_S:
                return Outcome.DONE
            if watch.panicked():
                return Outcome.PANIC
            # once both pipes are at their end, vng is about to exit
            tick = 1.0 if len(sel.get_map()) > 1 else 0.05
            for key, _ in sel.select(timeout=min(left, tick)):
                if key.fd == wake:
                    return Outcome.SIGNAL
                data = os.read(key.fd, 65536)
                if not data:
                    sel.unregister(key.fd)
                    continue
                if key.fd == proc.stderr.fileno():
                    err_tail += data
                    del err_tail[:-65536]
                out = outs[key.fd]
                out.flush()
                out.buffer.write(data)
                out.flush()
    finally:
        sel.close()
        watch.close()
    return Outcome.EXITED
