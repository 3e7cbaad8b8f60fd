"""Stopping a guest: the signals that ask for it, and finding and ending our processes.

vng, virtme-run and QEMU run in vng's process group; QEMU also writes its pid
(lab/vng.py's wrapper). Only processes of that group, and a QEMU whose command
line names the run's private directory, are ever signalled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from klptrace.errors import Interrupted
from klptrace.kernel import proc

# SIGHUP too: a closed terminal must not leave a 4 GiB QEMU behind.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Signals:
    """SIGINT, SIGTERM and SIGHUP while vm.run() runs: they stop the guest, then unwind.

    Until vng is started a signal raises Interrupted at once. From then on it is
    only noted and wakes the pump through a pipe: an exception raised inside
    Popen (vng started, its pid unknown) or in the middle of a stop would leave
    QEMU running. The handlers are installed even over an inherited SIG_IGN:
    a shell without job control starts background jobs with SIGINT ignored,
    and the children then inherit it, so `kill -INT` did nothing until the
    guest ended. SIGHUP ignored (nohup) stays ignored. signal.signal works only
    in the main thread; elsewhere the caller's handling applies.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.raising = True
        self._raised = False
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old: dict[int, signal.Handlers | Callable[..., object] | int] = {}

    def __enter__(self) -> Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in _STOP_SIGNALS:
                if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
                    continue
                old = signal.signal(sig, self._note)
                self._old[sig] = signal.SIG_DFL if old is None else old
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        os.close(self._r)
        os.close(self._w)
        if self.signum is not None and not self._raised:
            # it came as the guest finished: the handler from before gets it
            signal.raise_signal(self.signum)

    def fileno(self) -> int:
        """Readable once a signal came."""
        return self._r

    def _note(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
        if self.raising:
            raise self.interrupted("no guest was started")
        try:
            os.write(self._w, b"\0")
        except BlockingIOError:
            pass

    def name(self) -> str:
        """The name of the signal that came (SIGINT, SIGTERM, SIGHUP)."""
        return signal.Signals(self.signum or signal.SIGINT).name

    def interrupted(self, done: str) -> Interrupted:
        """The Interrupted to raise for the signal that came."""
        signum = self.signum or signal.SIGINT
        self._raised = True
        return Interrupted(signum, self.name(), done)


def proc_state(pid: int) -> tuple[str, int] | None:
    """(state, process group) of a process, from /proc; None when it is gone."""
    st = proc.stat(pid)
    return None if st is None else (st.state, st.pgrp)


def group_left(pgid: int) -> list[int]:
    """Processes of group pgid that still run (zombies are done)."""
    left = []
    for pid in proc.pids():
        st = proc.stat(pid)
        if st is not None and st.pgrp == pgid and st.state != "Z":
            left.append(pid)
    return left


def our_qemu(pid_file: Path, marker: str) -> int | None:
    """QEMU's pid from the wrapper's pid file, while that process runs and is ours.

    Ours means marker (the run's private directory) is in its command line, so
    a pid the system reused for another process is never signalled.
    """
    try:
        pid = int(pid_file.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    st = proc_state(pid)
    if st is None or st[0] == "Z" or marker.encode() not in cmdline:
        return None
    return pid


#: seconds a stop waits after SIGTERM, then after SIGKILL
STOP_GRACE = 5.0


def guest(proc: subprocess.Popen[bytes], pid_file: Path, marker: str,
          grace: float | None = None) -> list[int]:
    """Stop the guest: QEMU, vng's process group, QEMU by its pid if still there; pids left.

    vng, virtme-run and QEMU share vng's group. QEMU gets the first SIGTERM
    alone, so that virtme-run, its parent, reaps it: sent to the group,
    SIGTERM makes virtme-run exit at once (its handler), and the orphaned QEMU
    stays a zombie until init reaps it. Then the group gets SIGTERM (vng, and a
    QEMU mid-boot whose pid is not known yet), and what is left after grace
    seconds gets SIGKILL. vng is reaped only at the end: while it is a zombie
    its pid, and so the group id, cannot be reused by a stranger.
    """
    wait = STOP_GRACE if grace is None else grace

    def left() -> list[int]:
        pids = group_left(proc.pid)
        qemu = our_qemu(pid_file, marker)
        return pids if qemu is None or qemu in pids else [*pids, qemu]

    def settle(what: Callable[[], list[int]]) -> list[int]:
        end = time.monotonic() + wait
        while (pids := what()) and time.monotonic() < end:
            time.sleep(0.05)
        return pids

    def qemu_left() -> list[int]:
        qemu = our_qemu(pid_file, marker)
        return [] if qemu is None else [qemu]

    def send(pid: int, sig: int, group: bool = False) -> None:
        try:
            (os.killpg if group else os.kill)(pid, sig)
        except ProcessLookupError:
            pass

    def unreaped(pid: int) -> Callable[[], list[int]]:
        return lambda: [pid] if proc_state(pid) is not None else []

    sigs = [signal.SIGTERM, signal.SIGKILL]
    for qemu in qemu_left():
        send(qemu, signal.SIGTERM)
        if settle(qemu_left):
            sigs = [signal.SIGKILL]  # it ignores SIGTERM
        else:
            settle(unreaped(qemu))  # its parent reaps it before it gets a signal itself
    pids: list[int] = []
    for sig in sigs:
        send(proc.pid, sig, group=True)
        for qemu in qemu_left():
            send(qemu, sig)
        pids = settle(left)
        if not pids:
            break
    try:
        proc.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        pass
    return pids


def left_note(left: list[int]) -> str:
    """What a stop that failed left, and what to do about it."""
    pids = " ".join(map(str, left))
    return f"but processes of the guest did not stop (pids {pids}): kill -9 {pids}"
