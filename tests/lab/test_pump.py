"""The output pump (lab/pump.py): copying a child's output, and each way it ends."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from klptrace.lab import pump


def test_panic_line() -> None:
    log = "[ 1.0] x\n[ 10.1] Kernel panic - not syncing: sysrq triggered crash\n[ 10.2] CPU: 0\n"
    assert pump.panic_line(log) == "Kernel panic - not syncing: sysrq triggered crash"
    assert pump.panic_line("[ 1.0] all well\n") is None


def test_panic_line_of_an_early_exception() -> None:
    # an exception before the kernel's handlers are up: it halts, no "Kernel panic"
    log = "[ 0.0] Linux version 7.3\nPANIC: early exception 0x06 IP 10:ffffffffaee1e1db error 0\n"
    assert pump.panic_line(log) == "PANIC: early exception 0x06 IP 10:ffffffffaee1e1db error 0"


class _FakeProc:
    """A stand-in for vng's Popen: two pipes we write, and an exit status we set."""

    def __init__(self) -> None:
        out_r, self.out_w = os.pipe()
        err_r, self.err_w = os.pipe()
        self.stdout = os.fdopen(out_r, "rb")
        self.stderr = os.fdopen(err_r, "rb")
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode

    def end_output(self) -> None:
        os.close(self.out_w)
        os.close(self.err_w)

    def close(self) -> None:
        self.stdout.close()
        self.stderr.close()


@pytest.fixture
def wake() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    os.close(r)
    os.close(w)


def _pump(proc: object, wake: int, timeout: float = 30.0, err_tail: bytearray | None = None,
          **kw: Any) -> tuple[pump.Outcome, float]:
    t0 = time.monotonic()
    how = pump.pump(proc, t0 + timeout, wake,  # type: ignore[arg-type]
                    bytearray() if err_tail is None else err_tail, **kw)
    return how, time.monotonic() - t0


def test_a_child_that_exits_is_copied_whole(wake: tuple[int, int],
                                            capfd: pytest.CaptureFixture[str]) -> None:
    child = subprocess.Popen(["sh", "-c", "echo out; echo err >&2; echo more; exit 3"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tail = bytearray()
    try:
        how, _ = _pump(child, wake[0], err_tail=tail)
    finally:
        child.stdout.close()  # type: ignore[union-attr]
        child.stderr.close()  # type: ignore[union-attr]
    assert how is pump.Outcome.EXITED and child.wait(5) == 3
    out, err = capfd.readouterr()
    assert (out, err) == ("out\nmore\n", "err\n")
    assert tail == b"err\n"


def test_stderr_keeps_only_its_tail(wake: tuple[int, int],
                                    capfd: pytest.CaptureFixture[str]) -> None:
    # 70000 bytes of stderr: the last 64 KiB are kept (QEMU's abort line is at the end)
    child = subprocess.Popen([sys.executable, "-c",
                              "import sys; sys.stderr.write('a' * 69990 + 'LAST-LINE\\n')"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tail = bytearray()
    try:
        assert _pump(child, wake[0], err_tail=tail)[0] is pump.Outcome.EXITED
    finally:
        child.stdout.close()  # type: ignore[union-attr]
        child.stderr.close()  # type: ignore[union-attr]
        child.wait(5)
    assert len(tail) == 65536 and tail.endswith(b"a" * 10 + b"LAST-LINE\n")
    assert len(capfd.readouterr().err) == 70000  # all of it was passed on


def test_pipes_at_their_end_wait_for_the_exit(wake: tuple[int, int]) -> None:
    # vng closes its output before it exits: the pump waits for the exit, polling
    proc = _FakeProc()
    proc.end_output()
    threading.Timer(0.3, lambda: setattr(proc, "returncode", 0)).start()
    try:
        how, took = _pump(proc, wake[0])
    finally:
        proc.close()
    assert how is pump.Outcome.EXITED and 0.25 < took < 5


def test_a_child_that_runs_past_the_deadline_times_out(wake: tuple[int, int]) -> None:
    proc = _FakeProc()
    try:
        how, took = _pump(proc, wake[0], timeout=0.3)
    finally:
        proc.end_output()
        proc.close()
    assert how is pump.Outcome.TIMEOUT and took < 5


def test_the_wake_fd_is_a_signal(wake: tuple[int, int]) -> None:
    proc = _FakeProc()
    threading.Timer(0.2, lambda: os.write(wake[1], b"\0")).start()
    try:
        how, took = _pump(proc, wake[0])
    finally:
        proc.end_output()
        proc.close()
    assert how is pump.Outcome.SIGNAL and took < 5


def test_a_panic_on_the_console_ends_the_pump(wake: tuple[int, int], tmp_path: Path) -> None:
    # QEMU creates the console log only once it runs: a missing log is no panic yet
    console = tmp_path / "console.log"
    proc = _FakeProc()

    def panic() -> None:
        console.write_text("[ 1.0] booting\n[ 2.0] Kernel panic - not sync")
        time.sleep(0.2)  # the line split between two reads still counts
        with console.open("a") as f:
            f.write("ing: Attempted to kill init!\n")

    threading.Timer(0.2, panic).start()
    try:
        how, took = _pump(proc, wake[0], console=console)
    finally:
        proc.end_output()
        proc.close()
    assert how is pump.Outcome.PANIC and took < 10


def test_work_done_in_a_guest_that_never_exits(wake: tuple[int, int],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pump, "DONE_GRACE_S", 0.3)
    polls: list[float] = []

    def done() -> bool:
        polls.append(time.monotonic())
        return len(polls) >= 2  # done from the second look on

    proc = _FakeProc()
    try:
        how, took = _pump(proc, wake[0], done=done)
    finally:
        proc.end_output()
        proc.close()
    assert how is pump.Outcome.DONE and 0.3 < took < 10
    assert len(polls) == 2  # once it was done, done() is not asked again


def test_output_after_done_still_flows(wake: tuple[int, int],
                                       capfd: pytest.CaptureFixture[str]) -> None:
    # done() only starts the grace period: a guest that powers off within it exits normally
    child = subprocess.Popen(["sh", "-c", "sleep 0.3; echo late"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        how, _ = _pump(child, wake[0], done=lambda: True)
    finally:
        child.stdout.close()  # type: ignore[union-attr]
        child.stderr.close()  # type: ignore[union-attr]
        child.wait(5)
    assert how is pump.Outcome.EXITED
    assert capfd.readouterr().out == "late\n"


def test_outcomes_keep_their_words() -> None:
    assert [o.value for o in pump.Outcome] == ["exited", "timeout", "signal", "panic", "done"]
