"""Named errors: each says what went wrong and what to do next."""

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType


class KlptraceError(Exception):
    """An error a user can act on; the CLI prints it without a traceback."""

    #: exit status the CLI uses for this error
    status = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class NotSupported(KlptraceError):
    """This machine cannot run what was asked (no root, no livepatch, ...): a skip."""

    status = 4


class UsageError(KlptraceError):
    """The command line asks for something that does not exist (exit 2, like argparse)."""

    status = 2


_pending_signal: list[int] = []
#: depth of signals_deferred() blocks: a signal raises nothing inside them
_deferring: list[bool] = []
#: depth of signals_checked() blocks: a signal raises only at check_interrupted()
_checking: list[bool] = []


def interrupt(signum: int, frame: FrameType | None = None) -> None:
    """A handler for SIGINT and SIGTERM: unwind now, or at the next safe point.

    Python runs a handler between any two bytecodes, so an exception raised
    here can land between a syscall and the line that records what it did.
    Inside signals_checked() and signals_deferred() the signal is therefore
    only remembered, and check_interrupted() raises it where klptrace's record
    of what it did in the kernel is complete. An exception raised inside a
    ctypes callback (bcc's ring buffer callback) is printed and dropped, so
    there too the signal is only remembered.
    """
    # one signal is enough: ignore the next ones so that cleanup can finish
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _pending_signal.append(signum)
    if _deferring or _checking:
        return
    f = frame
    while f is not None:
        if "/bcc/" in f.f_code.co_filename:
            return
        f = f.f_back
    check_interrupted()


def check_interrupted() -> None:
    """Raise Interrupted if a signal came in and was held (a safe point), unless inside
    signals_deferred(): a cleanup runs to its end first."""
    if _pending_signal and not _deferring:
        signum = _pending_signal[-1]
        _pending_signal.clear()
        raise Interrupted(signum, signal.Signals(signum).name)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: unwinds like Ctrl-C so that every cleanup runs.

    done says what was cleaned up, for the CLI's last line.
    """

    def __init__(
        self, signum: int, name: str, done: str = "cleaned up (anything left is named above)"
    ) -> None:
        super().__init__(name)
        self.status = 128 + signum
        self.name = name
        self.done = done


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, so that what it does (a cleanup, a
    call into the kernel and the record of its result) runs to its end; a signal that
    came meanwhile is raised as the block ends, unless an enclosing block holds it (it
    then replaces an exception on its way out: a signal decides the exit status)."""
    _deferring.append(True)
    try:
        yield
    finally:
        _deferring.pop()
        check_interrupted()


@contextlib.contextmanager
def signals_checked() -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM raise Interrupted only at the safe points
    that call check_interrupted() (and as a signals_deferred() block ends), never
    between a change to the kernel and klptrace's record of it; one that came
    meanwhile is raised as the block ends at the latest."""
    _checking.append(True)
    try:
        yield
    finally:
        _checking.pop()
        check_interrupted()

