"""A livepatch transition in the running kernel, read at once: its pending tasks.

The first answer comes from /proc and sysfs alone, in well under a second and
with no BPF: /proc/<tid>/patch_state says which tasks have not switched,
/proc/<tid>/stack where they are, /sys/kernel/livepatch/<patch>/<obj>/<func>
which functions the patch changes, /proc/<tid>/stat and status what kind of task
each is and how it sleeps, /proc/kallsyms where this kernel's scheduler switches
tasks, and the kernel log when the transition started, when remaining tasks were
signalled and whether force was used.
With BPF (--watch, and `klptrace run`), the kernel's own verdict on each task
at each try is recorded too (klp_check_and_switch_task), and the timeline.
What it all means is klptrace/stall.py's (pure).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Sequence

from klptrace import stall
from klptrace.events import KLP_PATCHED, KLP_UNPATCHED, SIGNALS_TIMEOUT, Direction, Event
from klptrace.kernel import kallsyms, kmod, kmsg, proc
from klptrace.stall_report import Kind, SchedPath, StallReport, StallTask

#: where the tasks are read (a directory of the same shape in tests)
PROC = "/proc"
PF_KTHREAD = 0x00200000  # include/linux/sched.h


def transition_patch() -> str | None:
    """The livepatch in transition, if any (the kernel allows one at a time)."""
    for p in kmod.patches():
        if kmod.patch_attr(p, "transition") == "1":
            return p
    return None


def patched_functions(patch: str) -> set[str]:
    """Functions the patch changes: /sys/kernel/livepatch/<patch>/<object>/<func,sympos>."""
    funcs: set[str] = set()
    root = kmod.LIVEPATCH_SYSFS / patch
    try:
        for obj in root.iterdir():
            if obj.is_dir():
                funcs.update(f.name.split(",")[0] for f in obj.iterdir() if f.is_dir())
    except OSError:
        pass
    return funcs


def _read(path: str) -> str:
    """A /proc or sysfs file's text; "" when it cannot be read. A task names itself
    (prctl(PR_SET_NAME) takes any bytes), so its comm, which stat holds too, may not be
    UTF-8: such bytes read as U+FFFD."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def pending_tasks(target: int) -> list[tuple[int, int]]:
    """(pid, tid) of every task whose patch_state is not the target state yet."""
    out = []
    for pid_s in os.listdir(PROC):
        if not pid_s.isdigit():
            continue
        try:
            tids = os.listdir(f"{PROC}/{pid_s}/task")
        except OSError:
            continue
        for tid_s in tids:
            st = _read(f"{PROC}/{pid_s}/task/{tid_s}/patch_state").strip()
            if st and st != "-1" and int(st) != target:
                out.append((int(pid_s), int(tid_s)))
    return out


#: how many times a task's stack is read before klptrace gives up on a stable one
STABLE_TRIES = 12


def _sched_point(status: str) -> tuple[str, int] | None:
    """(state letter, context switches so far) from /proc/<tid>/status text; None if gone."""
    state, switches = "", 0
    for line in status.splitlines():
        if line.startswith("State:"):
            state = line.split()[1] if len(line.split()) > 1 else "?"
        elif line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
            switches += int(line.split()[1])
    return (state, switches) if state else None


@dataclasses.dataclass
class StackRead:
    """A task's state and kernel stack, and whether they belong together."""

    state: str
    stack: list[str]
    stable: bool


def read_stack(base: str, read: Callable[[str], str] = _read,
               sleep: Callable[[float], None] = time.sleep,
               tries: int = STABLE_TRIES) -> StackRead:
    """The task's state and stack, read so that the stack is one the task really had.

    /proc/<tid>/stack of a task running on another CPU reads empty (the
    unwinder refuses it: task_on_another_cpu() in arch/x86/kernel/unwind_orc.c),
    and a task that runs while its stack is read may have moved on. So the
    state and the context-switch counts are read before and after the stack,
    and the read is kept only when the task slept throughout (same counts, not
    R) with a non-empty stack. Otherwise it is read again, a little later each
    time (a worker that wakes every 20 ms is caught asleep within a few tries).
    A task seen running at every try is running; one never read consistently
    is reported as such, never with a guessed reason. A task that is runnable but
    off the CPU (R, preempted: a CPU-bound loop, found between its time slices)
    runs between reads, so its counts always move; it is read right when two
    tries in a row find it R with the same non-empty stack: preempted at the same
    place twice, which is what the kernel's own try reads of such a task
    (klp_check_stack() of a task that is not task_curr(), transition.c).
    """
    running_every_time = True
    last = StackRead("?", [], False)
    preempted: list[str] = []  # the previous try's stack, if it found the task R off the CPU
    for i in range(tries):
        before = _sched_point(read(f"{base}/status"))
        stack = [line for line in read(f"{base}/stack").splitlines() if line.strip()]
        after = _sched_point(read(f"{base}/status"))
        if before is None or after is None:
            return StackRead("?", [], False)  # the task exited
        quiet = before == after
        running_every_time = running_every_time and after[0] == "R" and not stack
        if quiet and stack and after[0] != "R":
            return StackRead(after[0], stack, True)
        runnable = before[0] == after[0] == "R" and bool(stack)
        if runnable and stack == preempted:
            return StackRead("R", stack, True)
        preempted = stack if runnable else []
        last = StackRead(after[0], stack, False)
        sleep(0.002 * (i + 1))
    if running_every_time:
        return StackRead("R", [], True)
    return last


def task_info(pid: int, tid: int, funcs: set[str]) -> StallTask:
    """What /proc says of one pending task."""
    base = f"{PROC}/{pid}/task/{tid}"
    try:
        flags = proc.Stat.parse(_read(f"{base}/stat")).flags
    except ValueError:  # gone, or unreadable
        flags = 0
    comm = _read(f"{base}/comm").strip()
    got = read_stack(base)
    reason, fn = (stall.classify(got.stack, got.state, funcs) if got.stable
                  else (stall.UNSTABLE, ""))
    kthread = bool(flags & PF_KTHREAD)
    return StallTask(pid, tid, comm, reason, fn, kthread, got.state, got.stack,
                     kind=Kind.KTHREAD if kthread else Kind.USER, sleep=stall.sleep_of(got.state))


def sched_path() -> SchedPath:
    """Where this kernel's scheduler switches tasks (stall.sched_path_of()), from the
    names in /proc/kallsyms, which it shows without root (the addresses it hides)."""
    return _sched_path(f"{PROC}/kallsyms")


@functools.cache
def _sched_path(path: str) -> SchedPath:
    """sched_path() read once per process (a watch takes a snapshot every second, and the
    kernel does not change under it)."""
    try:
        found = kallsyms.addresses(stall.SCHED_SYMBOLS, path)
    except OSError:
        return SchedPath.UNKNOWN
    return stall.sched_path_of(set(found))


def kernel_log() -> list[tuple[float, str]]:
    """(timestamp s, message) of every record the kernel log buffer still holds."""
    try:
        log = kmsg.KernelLog(from_start=True)
    except OSError:
        return []
    try:
        return [(ts, msg) for _fac, ts, msg in log.entries()]
    finally:
        log.close()


def snapshot(patch: str | None = None, events: Sequence[Event] = ()) -> StallReport | None:
    """The transition's state now, or None when no transition is in progress."""
    patch = patch or transition_patch()
    if not patch or kmod.patch_attr(patch, "transition") != "1":
        return None
    enabled = kmod.patch_attr(patch, "enabled") == "1"
    target = KLP_PATCHED if enabled else KLP_UNPATCHED
    funcs = patched_functions(patch)
    tasks = [task_info(pid, tid, funcs) for pid, tid in pending_tasks(target)]
    facts = stall.log_facts(patch, kernel_log())
    now = time.clock_gettime(time.CLOCK_MONOTONIC)
    rep = StallReport(patch, Direction.PATCHING if enabled else Direction.UNPATCHING, tasks)
    if facts.started_at is not None:
        rep.in_transition_s = round(now - facts.started_at, 3)
        for t in tasks:  # not switched since the start: blocking all along
            t.blocking_s = rep.in_transition_s
    if facts.signalled_at is not None:
        rep.signals.append(f"fake signals sent to the remaining tasks "
                           f"{now - facts.signalled_at:.0f} s ago (the kernel does so every "
                           f"{SIGNALS_TIMEOUT} tries)")
    rep.forced = facts.forced
    rep.sched = sched_path()
    stall.merge_bpf(rep, events, time.monotonic_ns())
    for t in tasks:
        t.next_step = stall.advise(t, rep)
    rep.next_steps = stall.next_steps(rep)
    return rep
