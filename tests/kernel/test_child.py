"""klptrace.kernel.child: a child that may sleep in the kernel for good holds nothing of
anyone's, ignores the signals klptrace decides about, and exits without the parent's code."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from klptrace.kernel import child


def _wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_the_child_holds_only_what_it_keeps(tmp_path: Path) -> None:
    report_r, report_w = os.pipe()
    other_r, other_w = os.pipe()  # a caller's pipe: the child must not hold it
    kept = tmp_path / "kept"
    kept.write_text("")
    kept_fd = os.open(kept, os.O_RDONLY)

    def body() -> None:
        fds = {}
        for n in os.listdir("/proc/self/fd"):
            try:
                fds[int(n)] = os.readlink(f"/proc/self/fd/{n}")
            except OSError:
                pass  # the listing's own descriptor, gone
        state = {"fds": {str(k): v for k, v in fds.items() if k not in (report_w, kept_fd)},
                 "kept": [report_w in fds, kept_fd in fds],
                 "sigint": signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
                 "sigterm": signal.getsignal(signal.SIGTERM) == signal.SIG_IGN}
        os.write(report_w, json.dumps(state).encode())

    try:
        pid = child.fork(body, keep=(report_w,),
                         keep_target=lambda target: target == str(kept))
        os.close(report_w)
        got = json.loads(os.read(report_r, 65536))
        assert _wait(pid) == 0
    finally:
        for fd in (report_r, other_r, other_w, kept_fd):
            os.close(fd)
    assert got["kept"] == [True, True]
    # stdio is /dev/null, and nothing else is left: not the caller's pipe, not the file
    assert got["fds"] == {"0": "/dev/null", "1": "/dev/null", "2": "/dev/null"}
    assert got["sigint"] and got["sigterm"]


def test_the_child_sees_eof_once_the_parent_lets_go() -> None:
    # the parent's copy of a pipe's write end is not the child's to keep open
    r, w = os.pipe()
    report_r, report_w = os.pipe()

    def body() -> None:
        while os.read(r, 1):
            pass
        os.write(report_w, b"eof")

    pid = child.fork(body, keep=(r, report_w))
    os.close(r)
    os.close(report_w)
    os.write(w, b"x")
    os.close(w)
    assert os.read(report_r, 16) == b"eof"
    os.close(report_r)
    assert _wait(pid) == 0


def test_a_body_that_raises_exits_1_and_never_returns_to_the_caller(tmp_path: Path) -> None:
    marker = tmp_path / "returned"

    def body() -> None:
        raise RuntimeError("in the child")

    pid = child.fork(body)
    if pid == 0:  # the child came back into the test: the helper failed
        marker.write_text("yes")
        os._exit(0)
    assert _wait(pid) == 1 and not marker.exists()


def test_the_child_ignores_sigterm(tmp_path: Path) -> None:
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()

    def body() -> None:
        os.write(ready_w, b"r")
        os.read(r, 1)

    pid = child.fork(body, keep=(r, ready_w))
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"r"
    os.kill(pid, signal.SIGTERM)
    os.kill(pid, signal.SIGINT)
    os.write(w, b"go")
    assert _wait(pid) == 0  # not killed: it went on to the end
    for fd in (r, w, ready_r):
        os.close(fd)


# -- the child's set-up, in this process (a forked child's lines are not measured) -------


def test_every_descriptor_not_kept_is_closed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("")
    closed = os.open(victim, os.O_RDONLY)
    by_number = os.open(victim, os.O_RDONLY)
    try:
        # keep everything of this process but the victim: pytest's descriptors too
        child._close_all_but(keep=(by_number,), keep_target=lambda t: t != str(victim))
        with pytest.raises(OSError):
            os.fstat(closed)
        os.fstat(by_number)  # kept by its number, whatever it is
    finally:
        os.close(by_number)


def test_stdio_becomes_dev_null() -> None:
    saved = [os.dup(fd) for fd in (0, 1, 2)]
    before = set(os.listdir("/proc/self/fd"))
    try:
        child._null_stdio()
        targets = [os.readlink(f"/proc/self/fd/{fd}") for fd in (0, 1, 2)]
        after = set(os.listdir("/proc/self/fd"))
    finally:
        for fd, copy in zip((0, 1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)
    assert targets == ["/dev/null"] * 3
    assert after == before  # /dev/null's own descriptor is not left open
