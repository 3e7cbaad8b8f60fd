"""Stopping a guest (lab/stop.py): the stop signals, and ending a process group and a QEMU
that left it, on real processes of this host (no VM)."""

from __future__ import annotations

import os
import select
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from util import until

from klptrace.errors import Interrupted
from klptrace.lab import stop


def _alive(pid: int) -> bool:
    """Does pid run (a zombie does not)?"""
    st = stop.proc_state(pid)
    return st is not None and st[0] != "Z"


def test_stop_ends_the_group_then_qemu_outside_it(tmp_path: Path) -> None:
    # vng's group: a shell and a child that ignores SIGTERM; QEMU has left the group
    # (setsid) and ignores SIGTERM too: only its pid reaches it, then SIGKILL.
    marker = str(tmp_path / "run")
    ready = tmp_path / "ready"
    stubborn = "trap '' TERM; sleep 300 & touch " + shlex.quote(str(ready)) + "; wait"
    group = subprocess.Popen(["sh", "-c", stubborn], start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # the stand-in says it is ready once its trap is set: a SIGTERM before that would end it
    qemu_ready = tmp_path / "qemu-ready"
    qemu = subprocess.Popen(["sh", "-c", "trap '' TERM; touch " + shlex.quote(str(qemu_ready))
                             + "; while :; do sleep 0.1; done", marker], start_new_session=True)
    pid_file = tmp_path / "qemu.pid"
    pid_file.write_text(f"{qemu.pid}\n")
    assert until(ready.exists, 10) and until(qemu_ready.exists, 10)
    members = stop.group_left(group.pid)
    assert group.pid in members and len(members) == 2
    t0 = time.monotonic()
    try:
        left = stop.guest(group, pid_file, marker, grace=0.5)
    finally:
        qemu.poll()
    assert left == []
    assert time.monotonic() - t0 < 3
    assert group.returncode == -signal.SIGKILL
    assert not any(_alive(p) for p in (*members, qemu.pid))
    assert qemu.wait(5) == -signal.SIGKILL


def test_stop_lets_qemus_parent_reap_it(tmp_path: Path) -> None:
    # like virtme-run: QEMU's parent exits at once on SIGTERM; QEMU, signalled
    # first and alone, is reaped by it rather than left a zombie for init
    marker = str(tmp_path / "run")
    pid_file, reaped = tmp_path / "qemu.pid", tmp_path / "reaped"
    # SIGTERM is held and looked at between polls, so that what comes first decides:
    # a SIGTERM before QEMU's end makes it exit without reaping, as virtme-run does
    parent = f"""import os, signal, sys, time
signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGTERM}})
pid = os.fork()
if pid == 0:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {{signal.SIGTERM}})
    os.execv("/bin/sh", ["sh", "-c", 'echo $$ > "$1"; while :; do sleep 0.1; done',
                         {marker!r}, {str(pid_file)!r}])
while True:
    if signal.SIGTERM in signal.sigpending():
        sys.exit(1)
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        open({str(reaped)!r}, "w").write(str(status))
        sys.exit(0)
    time.sleep(0.01)
"""
    group = subprocess.Popen([sys.executable, "-c", parent], start_new_session=True)
    assert until(lambda: stop.our_qemu(pid_file, marker), 10)
    assert stop.guest(group, pid_file, marker, grace=2) == []
    assert reaped.read_text() == str(signal.SIGTERM)  # killed by SIGTERM, reaped by its parent
    assert group.returncode == 0


def test_stop_never_signals_a_pid_that_is_not_ours(tmp_path: Path) -> None:
    # the pid file names a process whose command line lacks the run's directory
    # (a reused pid): the stop leaves it alone
    stranger = subprocess.Popen(["sleep", "300"])
    group = subprocess.Popen(["sleep", "300"], start_new_session=True)
    pid_file = tmp_path / "qemu.pid"
    pid_file.write_text(f"{stranger.pid}\n")
    try:
        assert stop.guest(group, pid_file, str(tmp_path / "run"), grace=0.5) == []
        assert group.returncode == -signal.SIGTERM
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_signals_raise_at_once_before_the_guest_then_only_wake() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as err, stop.Signals():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # not reached: the handler raises in the next bytecode
    assert (err.value.status, err.value.name, err.value.done) == (
        143, "SIGTERM", "no guest was started")
    assert signal.getsignal(signal.SIGTERM) == before
    with stop.Signals() as sigs:
        sigs.raising = False
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)  # during the stop: changes nothing
        assert select.select([sigs.fileno()], [], [], 5)[0] == [sigs.fileno()]
        assert sigs.signum == signal.SIGINT
        exc = sigs.interrupted("the guest was stopped")
    assert (exc.status, exc.name, exc.done) == (130, "SIGINT", "the guest was stopped")


def test_signals_override_an_inherited_sigint_ignore_but_not_nohup() -> None:
    # A shell without job control starts `klptrace vm ... &` with SIGINT ignored
    # (the reason `kill -INT` did nothing); nohup's ignored SIGHUP is the user's wish.
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    old_hup = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with stop.Signals():
            assert callable(signal.getsignal(signal.SIGINT))
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGHUP, old_hup)


def test_signals_outside_the_main_thread_install_nothing() -> None:
    seen: list[object] = []

    def body() -> None:
        with stop.Signals():
            seen.append(signal.getsignal(signal.SIGTERM))

    before = signal.getsignal(signal.SIGTERM)
    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen == [before]
