"""The stall scenarios of issue 22 on this kernel: each stalls a patching transition its
own way and ends it the way the kernel promises, as its [[stall]] table states. Every
wait is on a kernel state (a parameter, a try recorded by BPF, sysfs), never a sleep."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from klptrace import scenario
from klptrace.kernel import kmod

STALLS = [s.id for s in scenario.load_dir() if s.stalls]
SPIN = Path(__file__).resolve().parent.parent / "data" / "stall-scenarios"
REPEAT = 2


def _run(module_dir: Path, out: Path, *args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "klptrace", "run", *args, "--format", "json",
                           "-o", str(out), "--modules", str(module_dir)],
                          stderr=subprocess.PIPE, text=True)
    sys.stderr.write(proc.stderr)
    doc: dict[str, Any] = json.loads(out.read_text())
    doc["_status"] = proc.returncode
    return doc


@pytest.fixture(scope="module")
def run(module_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("stalls") / "run.json"
    return _run(module_dir, out, "--repeat", str(REPEAT), *STALLS)


def test_there_are_the_three_stall_scenarios() -> None:
    assert STALLS == ["stall-reader-signal-round", "stall-reader-uninterruptible",
                      "stall-sleeping-kthread"]


def test_every_stall_scenario_passes_each_time(run: dict[str, Any]) -> None:
    bad = {s["id"]: s["explanation"] for s in run["scenarios"] if s["status"] != "pass"}
    assert not bad
    assert [s["id"] for s in run["scenarios"]] == STALLS * REPEAT
    assert run["_status"] == 0 and run["lost_events"] == 0
    for s in run["scenarios"]:  # the stall line was compared: it is the last of both
        assert s["recorded"][-1] == s["expected"][-1]
        assert s["recorded"][-1].startswith("stall: "), s["id"]


def _report(run: dict[str, Any], sid: str) -> dict[str, Any]:
    return next(s["stall"] for s in run["scenarios"] if s["id"] == sid)


@pytest.mark.parametrize(("sid", "comm", "function", "kthread", "state"), [
    ("stall-reader-signal-round", "cat", "klptrace_stall_read_interruptible", False, "S"),
    ("stall-reader-uninterruptible", "cat", "klptrace_stall_read_uninterruptible", False, "D"),
    ("stall-sleeping-kthread", "klptrace_stalld", "klptrace_stall_kthread_wait", True, "S"),
])
def test_the_stall_report_names_the_task_its_kind_and_its_sleep(
        run: dict[str, Any], sid: str, comm: str, function: str, kthread: bool,
        state: str) -> None:
    """Taken when the transition first reads 1: the task sleeps in its function, as /proc
    shows it, and BPF saw the kernel's own reason."""
    rep = _report(run, sid)
    assert rep["patch"] == "klptrace_stall_lp" and rep["direction"] == "patching"
    [task] = [t for t in rep["tasks"] if t["comm"] == comm]
    assert (task["function"], task["kthread"], task["state"]) == (function, kthread, state)
    assert task["reason"] == "sleeping on function" and task["source"] == "bpf"


def test_the_signal_round_comes_at_the_16th_try(run: dict[str, Any]) -> None:
    """Nothing but the round at the end of the 16th try (klp_signals_cnt 15) moves the
    reader of the first scenario: the transition reached that try, with the reader
    found not switched from the first try on."""
    for s in run["scenarios"]:
        if s["id"] != "stall-reader-signal-round":
            continue
        tries = [e for e in s["events"] if e["kind"] == "transition_try"]
        assert tries[0]["ret"] == 0
        cat = [e for e in s["events"] if e["kind"] == "task_blocked" and e["comm"] == "cat"]
        assert len({e["tid"] for e in cat}) == 1
        assert cat[0]["ts_ns"] < tries[1]["ts_ns"]  # found by the first try already
        assert any(t["ret"] == 15 for t in tries)


def test_a_cpu_bound_kthread_is_running_or_preempted_in_its_function(
        module_dir: Path, tmp_path: Path) -> None:
    """What an emulated guest can show of a CPU-bound task: with one vCPU it is never on
    a CPU when the try's kworker checks it (-EADDRINUSE every time, /proc R); with more
    it may be (-EBUSY). Which one a try sees is timing, so only that holds."""
    doc = _run(module_dir, tmp_path / "spin.json", "--scenarios", str(SPIN))
    [s] = doc["scenarios"]
    assert s["status"] == "pass", s["explanation"]
    seen = [e["ret"] for e in s["events"]
            if e["kind"] == "task_blocked" and e["comm"] == "klptrace_spind"]
    assert seen and set(seen) <= {-errno.EBUSY, -errno.EADDRINUSE}, seen
    if len(os.sched_getaffinity(0)) == 1:
        assert set(seen) == {-errno.EADDRINUSE}, seen
        [task] = [t for t in s["stall"]["tasks"] if t["comm"] == "klptrace_spind"]
        assert task["kthread"] and task["function"] == "klptrace_stall_spin"


def test_nothing_is_left_behind(run: dict[str, Any]) -> None:
    assert not [m for m in kmod.loaded_modules() if m.startswith("klptrace_")]
    assert not [p for p in kmod.patches() if p.startswith("klptrace_")]
