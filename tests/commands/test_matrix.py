"""commands/matrix.py: how many guests at once, each kernel's child `run --vm`, and what a
child that left no document becomes; the children are small Python scripts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_commands_offline import _CHILD, _run, _scenarios, fake_lab

from klptrace.commands import matrix
from klptrace.commands.run import RunOptions
from klptrace.lab import defaults, kernels, vm

__all__ = ["fake_lab"]  # the fixture, for the tests below


def test_available_memory_is_read_from_meminfo(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       32000000 kB\nMemFree:  1 kB\n"
                       "MemAvailable:   20971520 kB\n")
    real_open = open
    monkeypatch.setattr(matrix, "open", lambda path, *a: real_open(meminfo, *a), raising=False)
    assert matrix._available_mib() == 20 * 1024
    meminfo.write_text("MemTotal: 1 kB\n")  # a kernel before 3.14 says no MemAvailable
    assert matrix._available_mib() == 4096
    meminfo.unlink()
    assert matrix._available_mib() == 4096


def test_default_jobs_are_at_least_one_and_at_most_the_kernels(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(matrix.os, "cpu_count", lambda: None)  # unknown: one core
    monkeypatch.setattr(matrix, "_available_mib", lambda: 100)
    jobs, why = matrix.default_jobs(5, 4, 4096)
    assert jobs == 1
    assert why == ("--jobs 1: 1 cores for guests of 4 vCPU(s), 0 GiB available for guests "
                   "of 4096M; --jobs N overrides")
    monkeypatch.setattr(matrix.os, "cpu_count", lambda: 64)
    monkeypatch.setattr(matrix, "_available_mib", lambda: 1024 * 1024)
    assert matrix.default_jobs(3, 1, 512)[0] == 3  # no more guests than kernels


def _children(monkeypatch: pytest.MonkeyPatch, seen: list[list[str]]) -> None:
    """Each kernel's child: _CHILD, as test_commands_offline's matrix runs it."""
    def argv(self: Any, spec: str, out: Path) -> list[str]:
        seen.append(matrix._Children._real_argv(self, spec, out))
        return [sys.executable, "-c", _CHILD, spec, str(out)]

    monkeypatch.setattr(matrix._Children, "_real_argv", matrix._Children._argv, raising=False)
    monkeypatch.setattr(matrix._Children, "_argv", argv)
    monkeypatch.setattr(kernels, "parse_spec", lambda text: kernels.KernelSpec("track", text))


def test_without_jobs_the_host_decides_and_says_so(
        tmp_path: Path, fake_lab: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[list[str]] = []
    _children(monkeypatch, seen)
    asked: list[tuple[int, int, int]] = []

    def jobs(kernels: int, cpus: int, memory_mib: int) -> tuple[int, str]:
        asked.append((kernels, cpus, memory_mib))
        return 1, "--jobs 1: as the test says"

    monkeypatch.setattr(matrix, "default_jobs", jobs)
    d, out = _scenarios(tmp_path / "s", ("a",)), tmp_path / "m.json"
    code, err = _run(["run", "--vm", "--kernel", "a", "--kernel", "c", "--kernel", "a",
                      "--scenarios", str(d), "--format", "json", "-o", str(out)], capsys)
    assert code == 0
    # a kernel given twice runs once; the guests of the default size
    assert asked == [(2, defaults.CPUS, vm.parse_memory(defaults.MEMORY))]
    assert "klptrace: --jobs 1: as the test says" in err
    assert [r["kernel"] for r in json.loads(out.read_text())["runs"]] == ["a", "c"]
    # each child is this run's `run --vm` on its kernel, the guest's size spelled out
    for argv, spec in zip(seen, ("a", "c"), strict=True):
        assert argv[:4] == [sys.executable, "-m", "klptrace", "run"]
        assert argv[argv.index("--kernel") + 1] == spec
        assert argv[argv.index("--cpus") + 1] == str(defaults.CPUS)
        assert argv[argv.index("--memory") + 1] == defaults.MEMORY
        assert argv[-1] == "--"  # no ids: every scenario


def test_a_child_that_left_no_document_errs_each_scenario_repeated(
        tmp_path: Path, fake_lab: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[list[str]] = []
    _children(monkeypatch, seen)
    d, out = _scenarios(tmp_path / "s", ("a", "b")), tmp_path / "m.json"
    code, err = _run(["run", "--vm", "--kernel", "broken", "--kernel", "x", "--jobs", "1",
                      "--repeat", "2", "--cpus", "1", "--memory", "1G", "--scenarios", str(d),
                      "--format", "json", "-o", str(out)], capsys)
    doc = json.loads(out.read_text())
    assert code == 1
    broken = doc["runs"][0]
    assert broken["kernel"] == "broken"
    assert [s["id"] for s in broken["scenarios"]] == ["a", "b", "a", "b"]
    assert {s["status"] for s in broken["scenarios"]} == {"error"}
    assert broken["scenarios"][0]["explanation"] == (
        "klptrace run --vm --kernel broken ended with exit status 1 and no results (see its "
        "lines above)")
    assert "[broken] booting broken" in err and "[x] booting x" in err
    assert all(a[a.index("--cpus") + 1] == "1" and a[a.index("--memory") + 1] == "1G"
               and a[a.index("--repeat") + 1] == "2" for a in seen)


def _sleeper(seconds: float) -> list[str]:
    return [sys.executable, "-c", f"import time; time.sleep({seconds})"]


def test_a_signal_is_passed_on_to_each_child_still_running(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kids = matrix._Children(RunOptions(), ["a", "b"], tmp_path, 2)
    live = subprocess.Popen(_sleeper(60))
    ended = subprocess.Popen(_sleeper(0))
    ended.wait()
    kids.procs = {"a": live, "b": ended}
    got: list[int] = []
    monkeypatch.setattr(matrix, "interrupt", lambda signum, frame: got.append(signum))
    kids._forward(signal.SIGTERM, None)
    assert live.wait(30) == -signal.SIGTERM and ended.returncode == 0
    assert got == [signal.SIGTERM]  # and klptrace unwinds as for any signal


class _Interrupted:
    """_Children._done whose wait() is where Ctrl-C lands."""

    def wait(self, timeout: float) -> bool:
        raise KeyboardInterrupt

    def clear(self) -> None:
        pass

    def set(self) -> None:
        pass


@pytest.mark.parametrize("stuck", [False, True])
def test_after_ctrl_c_the_children_are_waited_for_or_killed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stuck: bool) -> None:
    kids = matrix._Children(RunOptions(), ["a"], tmp_path, 1)
    monkeypatch.setattr(kids, "_argv", lambda spec, out: _sleeper(60 if stuck else 0.2))
    kids._done = _Interrupted()  # type: ignore[assignment]
    real_wait = subprocess.Popen.wait

    def wait(self: subprocess.Popen[bytes], timeout: float | None = None) -> int:
        if timeout == 60 and stuck:  # a child that does not stop its guest in a minute
            raise subprocess.TimeoutExpired(self.args, timeout)
        return real_wait(self, timeout)

    monkeypatch.setattr(subprocess.Popen, "wait", wait)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(KeyboardInterrupt):
        kids.run()
    assert kids.procs["a"].wait(30) == (-signal.SIGKILL if stuck else 0)
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # put back
