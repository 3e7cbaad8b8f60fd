"""Child processes that may end up asleep in the kernel for good.

The kernel actor (kmod.Actor) makes the syscalls that run livepatch code, and
the detaching child (probes.Probes.hand_off) removes probes after an oops:
either may never return from the kernel. Such a child must hold nothing of
anyone else's, or whoever waits for that to close (a pipe's reader, a shell
reading klptrace's output) waits with it, and must leave it to klptrace to
decide what stops.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Collection


def fork(body: Callable[[], object], keep: Collection[int] = (),
         keep_target: Callable[[str], bool] = lambda _target: False) -> int:
    """Fork a child that runs body() and exits; its pid, in the parent.

    In the child, SIGINT and SIGTERM are ignored (Ctrl-C reaches the whole
    process group: klptrace itself decides what stops), stdin, stdout and
    stderr are /dev/null, and every other descriptor is closed but those in
    keep and those whose target (as /proc/self/fd shows it) keep_target
    accepts. The child exits with os._exit(): 0 once body() returns, 1 if it
    raised, without running anything of the parent's at exit.
    """
    pid = os.fork()
    if pid:
        return pid
    status = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _null_stdio()
        _close_all_but(keep, keep_target)
        body()
        status = 0
    finally:
        os._exit(status)


def _null_stdio() -> None:
    """/dev/null as stdin, stdout and stderr."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)


def _close_all_but(keep: Collection[int], keep_target: Callable[[str], bool]) -> None:
    """Close every descriptor above 2 but those kept (see fork())."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd <= 2 or fd in keep:
            continue
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the directory's own descriptor, gone
        if not keep_target(target):
            with contextlib.suppress(OSError):
                os.close(fd)
