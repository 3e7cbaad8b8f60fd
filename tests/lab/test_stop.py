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


def test_stop_ends_a_group_of_sleeps(tmp_path: Path) -> None:
    # vng's group with children and no QEMU pid yet (mid-boot): SIGTERM to the group does it
    ready = tmp_path / "ready"
    group = subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300 & touch " +
                              shlex.quote(str(ready)) + "; wait"], start_new_session=True)
    assert until(ready.exists, 10)
    assert until(lambda: len(stop.group_left(group.pid)) == 3, 10)
    members = stop.group_left(group.pid)
    t0 = time.monotonic()
    assert stop.guest(group, tmp_path / "no-qemu.pid", str(tmp_path / "run"), grace=2) == []
    assert time.monotonic() - t0 < 3
    assert group.returncode == -signal.SIGTERM
    assert not any(_alive(p) for p in members)
    assert stop.group_left(group.pid) == []


def test_a_stop_that_fails_names_what_is_left(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # a process that even SIGKILL does not end (in D state, say) is named, with what to do
    group = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        monkeypatch.setattr(stop, "group_left", lambda pgid: [pgid, 4242])
        assert stop.guest(group, tmp_path / "qemu.pid", "m", grace=0.2) == [group.pid, 4242]
    finally:
        group.kill()
        group.wait()
    note = stop.left_note([group.pid, 4242])
    assert note == (f"but processes of the guest did not stop (pids {group.pid} 4242): "
                    f"kill -9 {group.pid} 4242")


def test_our_qemu_is_read_from_the_pid_file_and_checked(tmp_path: Path) -> None:
    marker = str(tmp_path / "run")
    pid_file = tmp_path / "qemu.pid"
    assert stop.our_qemu(pid_file, marker) is None  # no file yet
    pid_file.write_text("not a pid\n")
    assert stop.our_qemu(pid_file, marker) is None
    ours = subprocess.Popen(["sh", "-c", "sleep 300", marker])
    try:
        pid_file.write_text(f"{ours.pid}\n")
        assert until(lambda: stop.our_qemu(pid_file, marker) == ours.pid, 5)
        assert stop.our_qemu(pid_file, str(tmp_path / "other")) is None  # not our run's
        ours.kill()
        assert until(lambda: stop.proc_state(ours.pid) == ("Z", os.getpgrp()), 5)
        assert stop.our_qemu(pid_file, marker) is None  # a zombie is done
    finally:
        ours.kill()
        ours.wait()
    assert stop.proc_state(ours.pid) is None  # reaped: gone


def test_a_signal_as_the_guest_finishes_goes_to_the_handler_from_before() -> None:
    # noted but never acted on (the pump had returned): re-raised on the way out
    got: list[int] = []
    old = signal.signal(signal.SIGTERM, lambda signum, _frame: got.append(signum))
    try:
        with stop.Signals() as sigs:
            sigs.raising = False
            os.kill(os.getpid(), signal.SIGTERM)
            assert select.select([sigs.fileno()], [], [], 5)[0] == [sigs.fileno()]
            assert sigs.name() == "SIGTERM" and got == []
        assert got == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) is not None
    finally:
        signal.signal(signal.SIGTERM, old)


def test_a_signal_that_was_raised_is_not_raised_again() -> None:
    got: list[int] = []
    old = signal.signal(signal.SIGINT, lambda signum, _frame: got.append(signum))
    try:
        with pytest.raises(Interrupted), stop.Signals() as sigs:
            sigs.raising = False
            os.kill(os.getpid(), signal.SIGINT)
            select.select([sigs.fileno()], [], [], 5)
            raise sigs.interrupted("the guest was stopped")
        assert got == []
    finally:
        signal.signal(signal.SIGINT, old)
