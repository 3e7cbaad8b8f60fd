"""The kernel actor: syscalls in a child, a call that never returns is abandoned."""

from __future__ import annotations

import errno
import os
import select
import signal
import threading
from pathlib import Path

import pytest

from klptrace import errors
from klptrace.kernel import kernelfs, kmod


@pytest.fixture
def actor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    # its writes go through kernelfs, which then takes this test's files (and no others)
    monkeypatch.setattr(kernelfs, "WRITABLE", (f"{tmp_path}/*",))
    a = kmod.Actor()
    yield a
    a.close()


def test_errno_comes_back(actor: kmod.Actor, tmp_path: Path) -> None:
    assert actor.write(str(tmp_path / "absent"), "1", timeout=10) == errno.ENOENT
    f = tmp_path / "knob"
    f.write_text("0")
    assert actor.write(str(f), "1", timeout=10) == 0
    assert f.read_text() == "1"
    assert actor.load(str(tmp_path / "none.ko"), "", timeout=10) == errno.ENOENT


def test_a_call_that_never_returns_is_abandoned(actor: kmod.Actor, tmp_path: Path) -> None:
    # opening a FIFO for writing blocks until someone reads it: a sysfs write that
    # sleeps in the kernel for good, as on a wedged livepatch core
    fifo = tmp_path / "enabled"
    os.mkfifo(fifo)
    idled: list[int] = []
    with pytest.raises(kmod.Abandoned) as e:
        actor.write(str(fifo), "0", timeout=0.5, idle=lambda: idled.append(1))
    assert f"`echo 0 > {fifo}` did not return within 0.5 s" in e.value.message
    assert idled  # klptrace kept working (events, oops watch) while it waited
    assert actor.wedge.stuck == f"`echo 0 > {fifo}`"
    with pytest.raises(kmod.Abandoned, match="not tried: the kernel never returned from"):
        actor.write(str(tmp_path / "other"), "1", timeout=5)
    # let the child go (a real wedged kernel would keep it)
    with open(fifo) as f:
        f.read()


def test_idle_may_stop_the_wait(actor: kmod.Actor, tmp_path: Path) -> None:
    fifo = tmp_path / "enabled"
    os.mkfifo(fifo)

    class Oops(Exception):
        pass

    def idle() -> None:
        raise Oops

    with pytest.raises(Oops):
        actor.write(str(fifo), "0", timeout=30, idle=idle)
    assert actor.wedge.stuck  # the call is still in the kernel
    with open(fifo) as f:
        f.read()


def test_an_interrupted_wait_does_not_lose_the_next_reply(actor: kmod.Actor,
                                                          tmp_path: Path) -> None:
    # SIGINT during a call: the wait ends, the call finishes in the child, and the
    # cleanup's next call gets its own reply, not the stale one
    fifo = tmp_path / "slow"
    os.mkfifo(fifo)

    def interrupt() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        actor.write(str(fifo), "0", timeout=30, idle=interrupt)
    assert not actor.wedge.stuck
    reader = threading.Thread(target=lambda: open(fifo).read())
    reader.start()
    knob = tmp_path / "knob"
    knob.write_text("0")
    assert actor.write(str(knob), "1", timeout=30) == 0
    reader.join(10)
    assert knob.read_text() == "1"


def test_the_child_holds_no_pipe_of_ours(actor: kmod.Actor, tmp_path: Path) -> None:
    # a child stuck in the kernel must not keep a reader of klptrace's output waiting
    actor.write(str(tmp_path / "absent"), "1", timeout=10)  # it serves: its setup is done
    fds = os.listdir(f"/proc/{actor.pid}/fd")
    targets = {os.readlink(f"/proc/{actor.pid}/fd/{fd}") for fd in fds}
    assert {os.readlink(f"/proc/{actor.pid}/fd/{fd}") for fd in ("0", "1", "2")} == \
        {"/dev/null"}
    assert len(targets - {"/dev/null"}) == 2  # its request and reply pipes


def test_a_signal_lets_the_call_in_flight_finish_first(actor: kmod.Actor,
                                                       tmp_path: Path) -> None:
    # a real SIGINT, handled as `klptrace run` handles it, while the child's call is in
    # the kernel: the cleanup that follows must see what the call did (a module loaded),
    # so the signal unwinds only once the call has returned, and its reply was taken
    fifo = tmp_path / "enabled"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    idled: list[int] = []

    def idle() -> None:
        idled.append(1)
        if len(idled) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        if len(idled) == 3:
            reader.start()  # the kernel gets on with the write only now
        errors.check_interrupted()  # the recorder's poll: no safe point inside a call

    old = {s: signal.signal(s, errors.interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(errors.Interrupted), errors.signals_checked():
            actor.write(str(fifo), "0", timeout=30, idle=idle)
            pytest.fail("the signal did not unwind as the call returned")
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    reader.join(10)
    assert got == ["0"] and not actor.wedge.stuck and len(idled) >= 3
    # its reply came, and was taken, before the signal went on: none is left to read
    assert select.select([actor._rep], [], [], 0.5)[0] == [] and actor._buf == b""


def test_a_signal_as_the_reply_is_read_loses_nothing(actor: kmod.Actor, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # The race of a SIGTERM to `klptrace run` on a busy 1-vCPU guest: the actor's reply
    # and the signal come together, the signal is delivered as read(2) returns, and
    # Python runs its handler before the next line. Raised there, the reply was read
    # and dropped: klptrace waited out its timeout, called the module load stuck, and
    # left it loaded. The signal now unwinds once the call has returned.
    real_read = os.read

    def read_then_signal(fd: int, n: int) -> bytes:
        data = real_read(fd, n)
        if fd == actor._rep:
            os.kill(os.getpid(), signal.SIGTERM)
        return data

    knob = tmp_path / "knob"
    knob.write_text("0")
    monkeypatch.setattr(kmod.os, "read", read_then_signal)
    old = {s: signal.signal(s, errors.interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(errors.Interrupted), errors.signals_checked():
            actor.write(str(knob), "1", timeout=5)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    assert not actor.wedge.stuck and knob.read_text() == "1"
