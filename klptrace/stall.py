"""Why a livepatch transition is stalled: which tasks, where, since when.

The first answer comes from /proc and sysfs alone, in well under a second and
with no BPF: /proc/<tid>/patch_state says which tasks have not switched,
/proc/<tid>/stack where they are, /sys/kernel/livepatch/<patch>/<obj>/<func>
which functions the patch changes, and the kernel log when the transition
started, when remaining tasks were signalled and whether force was used.
With BPF (--watch, and `klptrace run`), the kernel's own verdict on each task
at each try is recorded too (klp_check_and_switch_task), and the timeline.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from klptrace.events import KLP_PATCHED, Event, EventKind
from klptrace.kernel import kmod, kmsg

#: where the tasks are read (a directory of the same shape in tests)
PROC = "/proc"
# klp_check_and_switch_task() results (kernel/livepatch/transition.c)
REASONS = {-16: "running", -22: "unreliable stack", -98: "sleeping on function"}
SIGNALS_TIMEOUT = 15  # tries between fake signals (transition.c)
_FRAME = re.compile(r"^\[<[0-9a-f]+>\] ([\w.]+)\+0x[0-9a-f]+/0x[0-9a-f]+")


@dataclasses.dataclass
class Task:
    """A task that has not switched to the transition's target state."""

    pid: int
    tid: int
    comm: str
    reason: str
    function: str
    kthread: bool
    state: str
    stack: list[str]
    blocking_s: float | None = None
    source: str = "proc"


@dataclasses.dataclass
class Report:
    """The state of one livepatch transition."""

    patch: str
    direction: str  # patching or unpatching
    tasks: list[Task] = dataclasses.field(default_factory=list)
    in_transition_s: float | None = None
    tries: int | None = None
    signals: list[str] = dataclasses.field(default_factory=list)
    forced: bool = False
    timeline: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    next_steps: list[str] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The report as JSON; in_transition tells it from the no-transition answer."""
        d = dataclasses.asdict(self)
        return {"patch": d.pop("patch"), "direction": d.pop("direction"), "in_transition": True,
                **d}


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


def stack_functions(stack: Sequence[str]) -> list[str]:
    """Function names of /proc/<tid>/stack lines."""
    return [m[1] for m in map(_FRAME.match, stack) if m]


def classify(stack: Sequence[str], state: str, funcs: set[str]) -> tuple[str, str]:
    """(reason, function) the way klp_check_and_switch_task() would see the task."""
    for fn in stack_functions(stack):
        if fn in funcs:
            return "sleeping on function", fn
    if state == "R":
        return "running", ""
    return "other", ""


def _read(path: str) -> str:
    try:
        with open(path) as f:
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
UNSTABLE = "could not read a stable stack"


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
    is reported as such, never with a guessed reason.
    """
    running_every_time = True
    last = StackRead("?", [], False)
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
        last = StackRead(after[0], stack, False)
        sleep(0.002 * (i + 1))
    if running_every_time:
        return StackRead("R", [], True)
    return last


def task_info(pid: int, tid: int, funcs: set[str]) -> Task:
    """What /proc says of one pending task."""
    base = f"{PROC}/{pid}/task/{tid}"
    stat = _read(f"{base}/stat")
    comm = _read(f"{base}/comm").strip()
    flags = int(stat.rsplit(")", 1)[1].split()[6]) if ")" in stat else 0
    got = read_stack(base)
    reason, fn = classify(got.stack, got.state, funcs) if got.stable else (UNSTABLE, "")
    return Task(pid, tid, comm, reason, fn, bool(flags & 0x00200000), got.state,  # PF_KTHREAD
                got.stack)


@dataclasses.dataclass
class LogFacts:
    started_at: float | None = None  # CLOCK_MONOTONIC seconds (printk's clock, near enough)
    signalled_at: float | None = None
    forced: bool = False


def log_facts(patch: str, records: Iterable[tuple[float, str]]) -> LogFacts:
    """When the patch's last transition started, was signalled, forced: from the kernel log."""
    facts = LogFacts()
    start = re.compile(rf"^livepatch: '{re.escape(patch)}': (starting|reversing) ")
    for ts, msg in records:
        if start.match(msg):
            facts = LogFacts(started_at=ts)
        elif msg == "livepatch: signaling remaining tasks" and facts.started_at is not None:
            facts.signalled_at = ts
        elif msg.startswith("livepatch: forcing remaining tasks") and facts.started_at is not None:
            facts.forced = True
    return facts


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


def snapshot(patch: str | None = None, events: Sequence[Event] = ()) -> Report | None:
    """The transition's state now, or None when no transition is in progress."""
    patch = patch or transition_patch()
    if not patch or kmod.patch_attr(patch, "transition") != "1":
        return None
    enabled = kmod.patch_attr(patch, "enabled") == "1"
    target = KLP_PATCHED if enabled else 0
    funcs = patched_functions(patch)
    tasks = [task_info(pid, tid, funcs) for pid, tid in pending_tasks(target)]
    facts = log_facts(patch, kernel_log())
    now = time.clock_gettime(time.CLOCK_MONOTONIC)
    rep = Report(patch, "patching" if enabled else "unpatching", tasks)
    if facts.started_at is not None:
        rep.in_transition_s = round(now - facts.started_at, 3)
        for t in tasks:  # not switched since the start: blocking all along
            t.blocking_s = rep.in_transition_s
    if facts.signalled_at is not None:
        rep.signals.append(f"fake signals sent to the remaining tasks "
                           f"{now - facts.signalled_at:.0f} s ago (the kernel does so every "
                           f"{SIGNALS_TIMEOUT} tries)")
    rep.forced = facts.forced
    merge_bpf(rep, events)
    rep.next_steps = next_steps(rep)
    return rep


def merge_bpf(rep: Report, events: Sequence[Event]) -> None:
    """Add what BPF saw: the kernel's own reason per task, tries, the timeline."""
    if not events:
        return
    last: dict[int, Event] = {}
    for e in events:
        if e.kind == EventKind.TASK_BLOCKED:
            last[e.tid] = e
    first = {}
    for e in events:
        if e.kind == EventKind.TASK_BLOCKED and e.tid not in first:
            first[e.tid] = e
    now = time.monotonic_ns()
    for t in rep.tasks:
        seen = last.get(t.tid)
        if seen is not None:
            t.reason = REASONS.get(seen.ret or 0, f"other ({seen.ret})")
            t.function = seen.object or t.function
            t.source = "bpf"
        if t.tid in first and t.blocking_s is None:
            t.blocking_s = round((now - first[t.tid].ts_ns) / 1e9, 3)
    tries = [e for e in events if e.kind == EventKind.TRANSITION_TRY and e.patch == rep.patch]
    if tries and tries[-1].ret is not None:
        rep.tries = tries[-1].ret + 1
    rep.forced = rep.forced or any(e.kind == EventKind.TRANSITION_FORCE for e in events)
    rep.timeline = timeline(events, rep.patch)


def timeline(events: Sequence[Event], patch: str,
             attached_ns: int | None = None) -> list[dict[str, Any]]:
    """The transition's story: start, each try with the tasks left, signals, the end.

    Times are from the start; when klptrace attached after the start
    (attached_ns), from that moment instead, which the first entry says.
    """
    out: list[dict[str, Any]] = []
    t0: int | None = None
    if attached_ns is not None and not any(
            e.kind == EventKind.TRANSITION_START and e.patch == patch for e in events):
        t0 = attached_ns
        out.append({"t_s": 0.0, "what": "klptrace attached (the transition had started)"})
    blocked_in_try: dict[int, set[int]] = {}
    current: dict[str, Any] | None = None
    for e in events:
        if e.patch and e.patch != patch and e.kind != EventKind.TASK_BLOCKED:
            continue
        if e.kind in (EventKind.TRANSITION_START, EventKind.TRANSITION_REVERSED):
            t0 = e.ts_ns if t0 is None else t0
        if t0 is None:
            continue
        t = round((e.ts_ns - t0) / 1e9, 3)
        if e.kind == EventKind.TRANSITION_START:
            out.append({"t_s": t, "what": f"start ({'patching' if e.state else 'unpatching'})"})
        elif e.kind == EventKind.TRANSITION_TRY:
            n = (e.ret or 0) + 1
            current = {"t_s": t, "what": f"try {n}", "tasks_left": 0}
            blocked_in_try[id(current)] = set()
            out.append(current)
            if e.ret and e.ret % SIGNALS_TIMEOUT == 0:
                out.append({"t_s": t, "what": "fake signals to the remaining tasks"})
        elif e.kind == EventKind.TASK_BLOCKED and current is not None:
            seen = blocked_in_try[id(current)]
            if e.tid not in seen:
                seen.add(e.tid)
                current["tasks_left"] = len(seen)
                current.setdefault("tasks", []).append(
                    f"{e.comm}:{e.tid} {REASONS.get(e.ret or 0, 'other')}"
                    + (f" {e.object}" if e.object else ""))
        elif e.kind == EventKind.TRANSITION_REVERSE:
            out.append({"t_s": t, "what": "reversed"})
        elif e.kind == EventKind.TRANSITION_FORCE:
            out.append({"t_s": t, "what": "forced"})
        elif e.kind == EventKind.TRANSITION_DONE:
            out.append({"t_s": t, "what": f"complete ({'patching' if e.state else 'unpatching'})"})
    return out


def next_steps(rep: Report) -> list[str]:
    """What a person can do about each kind of blocker."""
    steps = []
    p = rep.patch
    kthreads = [t for t in rep.tasks if t.kthread and t.reason == "sleeping on function"]
    users = [t for t in rep.tasks if not t.kthread and t.reason == "sleeping on function"]
    running = [t for t in rep.tasks if t.reason == "running"]
    if kthreads:
        t = kthreads[0]
        steps.append(
            f"{t.comm}:{t.tid} is a kernel thread sleeping in {t.function}(), which this patch "
            f"changes: fake signals only wake kernel threads, and it will go back to sleep "
            f"there. It switches only when it leaves {t.function}(): end whatever keeps it "
            f"there (for a work item, the condition it loops on).")
    if users:
        steps.append(
            f"{len(users)} user task(s) sleep in patched functions: the kernel sends them a "
            f"fake signal every {SIGNALS_TIMEOUT} tries, which makes them switch on their way "
            f"back to user space unless they sleep uninterruptibly.")
    if running:
        steps.append(f"{len(running)} task(s) were running when checked: the kernel retries "
                     f"every second; this usually clears by itself.")
    back = 0 if rep.direction == "patching" else 1
    steps.append(f"To give up, reverse the transition: echo {back} > /sys/kernel/livepatch/{p}/"
                 f"enabled. Tasks that never switched are already in the state it reverses to.")
    steps.append(f"echo 1 > /sys/kernel/livepatch/{p}/force marks every task switched without "
                 f"checking its stack: a task still inside an old function may then run old and "
                 f"new code together, and the patch module can never be removed. klptrace never "
                 f"does this for you.")
    return steps


def render_text(rep: Report | None) -> str:
    """A report as lines for a person."""
    if rep is None:
        return "no livepatch transition in progress\n"
    out = [f"{rep.patch}: {rep.direction} transition in progress"
           + (f" for {rep.in_transition_s:.1f} s" if rep.in_transition_s is not None else "")
           + (f", {rep.tries} tries" if rep.tries is not None else "")
           + (", FORCED" if rep.forced else "")]
    out += [f"  {s}" for s in rep.signals]
    out.append(f"{len(rep.tasks)} task(s) not switched yet:")
    for t in rep.tasks:
        kind = "kthread" if t.kthread else "task"
        where = f" {t.function}()" if t.function else ""
        since = f", blocking {t.blocking_s:.1f} s" if t.blocking_s is not None else ""
        out.append(f"  {t.comm}:{t.tid} ({kind}) {t.reason}{where}{since}")
        out += [f"      {line}" for line in t.stack[:8]]
    if rep.timeline:
        out.append("timeline:")
        for item in rep.timeline:
            left = f", {item['tasks_left']} task(s) left" if "tasks_left" in item else ""
            out.append(f"  {item['t_s']:8.3f} s  {item['what']}{left}")
    out.append("next steps:")
    out += [f"  - {s}" for s in rep.next_steps]
    return "\n".join(out) + "\n"

