"""`klptrace stall` (no BPF) on each kind of task klptrace_stall holds: it names the task,
its kind and sleep, the patched function, the kernel's reason and the next step that fits.

Each stall is set up directly, with no `klptrace run`: klptrace_stall holds the task,
the test waits for it inside its function (`sleepers`, a kernel count), loads
klptrace_stall_lp and waits for its transition to read 1. Every wait is on a kernel
state, never a sleep; whatever fails, the fixture releases the task and removes the
modules.

The kernel moves a user task that sleeps interruptibly by itself, with the signal
round after its 16th try (about 16 s in). Rather than race that round, the test
stops the kernel's tries before it looks: it loads klptrace_stall_gate, whose
klp_object's pre_patch callback (klptrace_stall_lp) waits under klp_mutex, the
mutex every try takes first (see klptrace_stall_gate.c). The report is taken
while the transition is paused, however long `klptrace stall` takes.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from util import until

from klptrace import stall
from klptrace.kernel import kmod
from klptrace.kernel import stall as live
from klptrace.stall_report import SchedPath

TARGET = "klptrace_stall"
PATCH = "klptrace_stall_lp"
DEBUGFS = Path("/sys/kernel/debug/klptrace_stall")
GATE = "klptrace_stall_gate"


class Kind(NamedTuple):
    """One kind of stalled task: how klptrace_stall holds it and what the report says."""

    load: str  # klptrace_stall's parameters at load
    reader: str  # the debugfs file a user process reads ("" for the kthread)
    hold: str  # the parameter that releases it
    comm: str
    kind: str
    sleep: str
    function: str
    step: str  # words of the next step that only the right advice has


KINDS = {
    # the fake signal wakes the read and the task switches on its way back to user space
    "user-interruptible": Kind("", "interruptible", "hold_interruptible", "cat", "user",
                               "interruptible", "klptrace_stall_read_interruptible",
                               "signal round"),
    # a killable wait: signal rounds do nothing, only the function returning moves it
    "user-uninterruptible": Kind("", "uninterruptible", "hold_uninterruptible", "cat", "user",
                                 "uninterruptible", "klptrace_stall_read_uninterruptible",
                                 "returning"),
    # woken by the round, it sleeps in its function again: the round does not help
    "kthread-interruptible": Kind("kthread=Y", "", "hold_kthread", "klptrace_stalld",
                                  "kthread", "interruptible", "klptrace_stall_kthread_wait",
                                  "again it stays"),
    # runnable in its function: only leaving it moves it (see _cpu_bound_on_another_cpu())
    "kthread-cpu-bound": Kind("spin=Y", "", "hold_spin", "klptrace_spind", "kthread",
                              "running", "klptrace_stall_spin", "has returned"),
}


def _on_another_cpu(k: Kind, t: dict[str, Any]) -> bool:
    """A CPU-bound kthread that was on another vCPU while /proc was read: its stack reads
    empty there (the unwinder refuses a task running elsewhere), so /proc can only say it
    runs, in no function it can name. With one vCPU it is never on the CPU while
    `klptrace stall` is, and is read preempted in its function; with more, which of the
    two a read sees is the scheduler's timing, and both are right."""
    return (k.sleep == "running" and len(os.sched_getaffinity(0)) > 1
            and t["reason"] == "running" and t["function"] == "" and not t["stack"])


def _param(name: str) -> str:
    return f"/sys/module/{TARGET}/parameters/{name}"


def _gone(reader: subprocess.Popen[bytes] | None) -> None:
    """The reader ended: released, it exits; one still holding after that is killed."""
    if reader is None:
        return
    try:
        reader.wait(60)
    except subprocess.TimeoutExpired:
        reader.kill()
        reader.wait()


@contextlib.contextmanager
def _paused(module_dir: Path) -> Iterator[None]:
    """The transition's tries paused: klptrace_stall_gate is loading, and its pre_patch
    callback holds klp_mutex until hold_gate is cleared."""
    gate = subprocess.Popen(["insmod", str(module_dir / f"{GATE}.ko")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert until(lambda: kmod.param(PATCH, "gate_waiting") == "1"), "the gate never shut"
        yield
    finally:
        kmod.write(f"/sys/module/{PATCH}/parameters/hold_gate", "0")
        _, err = gate.communicate(timeout=90)
        assert gate.returncode == 0, err


@contextlib.contextmanager
def _stalled(module_dir: Path, k: Kind) -> Iterator[None]:
    """klptrace_stall holding a task of kind k, klptrace_stall_lp's transition stalled on
    it and paused. Ends it by releasing the task and removes the modules."""
    reader: subprocess.Popen[bytes] | None = None
    try:
        assert kmod.load(str(module_dir / f"{TARGET}.ko"), k.load) == 0
        if k.reader:
            reader = subprocess.Popen(["cat", str(DEBUGFS / k.reader)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # in its function before the patch comes, so the first try finds it there
        assert until(lambda: kmod.param(TARGET, "sleepers") == "1"), "the task never slept"
        assert kmod.load(str(module_dir / f"{PATCH}.ko")) == 0
        assert until(lambda: kmod.patch_attr(PATCH, "transition") == "1")
        with _paused(module_dir):
            # the pause came before the first signal round (two module loads after the
            # start, against the 16 tries of about a second each the kernel waits)
            assert stall.log_facts(PATCH, live.kernel_log()).signalled_at is None, \
                "the kernel's signal round came before the transition was paused"
            yield
    finally:
        kmod.write(_param(k.hold), "0")
        _gone(reader)
        until(lambda: kmod.patch_attr(PATCH, "transition") != "1")
        kmod.write(f"/sys/kernel/livepatch/{PATCH}/enabled", "0")
        until(lambda: kmod.patch_attr(PATCH, "transition") != "1")
        until(lambda: kmod.unload(PATCH) == 0)
        kmod.unload(GATE)
        until(lambda: kmod.unload(TARGET) == 0)


def _klptrace_stall() -> dict[str, Any]:
    p = subprocess.run([sys.executable, "-m", "klptrace", "stall", "--format", "json"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    doc: dict[str, Any] = json.loads(p.stdout)
    return doc


@pytest.mark.parametrize("name", list(KINDS))
def test_stall_names_the_task_its_reason_and_the_next_step(clean_kernel: Path,
                                                            name: str) -> None:
    k = KINDS[name]
    with _stalled(clean_kernel, k):
        rep = _klptrace_stall()
    assert rep["in_transition"] and rep["patch"] == PATCH and rep["direction"] == "patching"
    assert rep["sched"] in {s.value for s in SchedPath} and rep["sched"] != SchedPath.UNKNOWN
    assert not rep.get("signals"), rep.get("signals")  # paused before the kernel's first round
    [t] = [t for t in rep["tasks"] if t["comm"] == k.comm]
    assert (t["comm"], t["kind"], t["sleep"]) == (k.comm, k.kind, k.sleep), t
    assert t["kthread"] == (k.kind == "kthread") and t["source"] == "proc"
    if _on_another_cpu(k, t):
        assert "running kernel thread" in t["next_step"], t["next_step"]
        return
    assert (t["reason"], t["function"]) == ("sleeping on function", k.function), t
    assert any(k.function in line for line in t["stack"]), t["stack"]
    assert k.step in t["next_step"], t["next_step"]
    # the advice for another kind would not pass ("signal round" excepted: the other
    # kinds' advice names the round too, to say it will not help)
    others = [o.step for o in KINDS.values() if o.step not in (k.step, "signal round")]
    assert not [w for w in others if w in t["next_step"]], t["next_step"]
