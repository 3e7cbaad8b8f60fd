"""`klptrace stall` on a transition that klptrace_busy really stalls."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from util import until

from klptrace import stall
from klptrace.kernel import kmod
from klptrace.kernel import stall as live


@pytest.fixture
def stalled(module_dir: Path) -> Iterator[Path]:
    """klptrace_busy blocking, klptrace_lp loaded without waiting: patching stalls."""
    assert kmod.load(str(module_dir / "klptrace_busy.ko"), "block_transition=Y") == 0
    assert kmod.load(str(module_dir / "klptrace_lp.ko")) == 0
    assert until(lambda: kmod.patch_attr("klptrace_lp", "transition") == "1")
    try:
        yield module_dir
    finally:
        kmod.write("/sys/module/klptrace_busy/parameters/block_transition", "0")
        until(lambda: kmod.patch_attr("klptrace_lp", "transition") != "1")
        kmod.write("/sys/kernel/livepatch/klptrace_lp/enabled", "0")
        until(lambda: kmod.unload("klptrace_lp") == 0)
        until(lambda: kmod.unload("klptrace_busy") == 0)
    assert not [m for m in kmod.loaded_modules() if m.startswith("klptrace_")]


def _klptrace(*args: str, **kw) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run([sys.executable, "-m", "klptrace", *args], capture_output=True,
                          text=True, **kw)


def test_stall_names_the_blocking_worker(stalled: Path) -> None:
    # how fast is for bench/ to measure, not for a timed test
    p = _klptrace("stall", "--format", "json")
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert rep["patch"] == "klptrace_lp" and rep["direction"] == "patching"
    blockers = [t for t in rep["tasks"] if t["function"] == "klptrace_busy_work_func"]
    assert blockers, rep["tasks"]
    t = blockers[0]
    assert t["comm"].startswith("kworker") and t["kthread"]
    assert t["reason"] == "sleeping on function"
    assert any("klptrace_busy_work_func" in line for line in t["stack"])
    assert t["blocking_s"] is not None and t["blocking_s"] >= 0
    assert any("kernel thread" in s for s in rep["next_steps"])


def test_every_snapshot_names_the_function_or_says_it_could_not(stalled: Path) -> None:
    """The worker wakes from msleep(20) all the time: a stack read while it runs
    reads empty. Snapshots taken back to back hit that window again and again;
    none may give a wrong reason for the worker."""
    worker = None
    named = 0
    for _ in range(80):
        rep = live.snapshot("klptrace_lp")
        assert rep is not None and rep.direction == "patching"
        if worker is None:
            found = [t for t in rep.tasks if t.function == "klptrace_busy_work_func"]
            if found:
                worker = found[0].tid
            continue
        mine = [t for t in rep.tasks if t.tid == worker]
        assert len(mine) == 1, rep.tasks  # it cannot switch while it blocks
        t = mine[0]
        if t.reason == stall.UNSTABLE:
            assert t.function == "", t
        else:
            assert (t.reason, t.function) == ("sleeping on function",
                                              "klptrace_busy_work_func"), t
            assert any("klptrace_busy_work_func" in line for line in t.stack), t
            named += 1
    assert worker is not None
    assert named > 0


def test_stall_watch_follows_the_transition_to_its_end(stalled: Path) -> None:
    watch = subprocess.Popen([sys.executable, "-m", "klptrace", "stall", "--watch", "--format",
                              "json", "--timeout", "300"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        # lift the block once the watcher is attached and has seen a try
        deadline = time.monotonic() + 240
        err = ""
        while time.monotonic() < deadline and "Watching" not in err:
            line = watch.stderr.readline()  # type: ignore[union-attr]
            if not line:
                break
            err += line
        assert "Watching" in err, err
        time.sleep(2.5)
        assert kmod.write("/sys/module/klptrace_busy/parameters/block_transition", "0") == 0
        out, rest = watch.communicate(timeout=120)
    finally:
        if watch.poll() is None:
            watch.kill()
    assert watch.returncode == 0, err + rest
    summary = json.loads(out)
    assert summary["completed"] and summary["patch"] == "klptrace_lp"
    whats = [i["what"] for i in summary["timeline"]]
    assert any(w.startswith("try ") for w in whats), whats
    assert whats[-1] == "complete (patching)", whats
    worker = [t for t in summary["tasks"] if t["function"] == "klptrace_busy_work_func"]
    assert worker and worker[0]["reason"] == "sleeping on function"
    assert worker[0]["switch_latency_s"] is not None


def test_no_transition_says_so(module_dir: Path) -> None:
    p = _klptrace("stall")
    assert p.returncode == 0 and "no livepatch transition in progress" in p.stdout
