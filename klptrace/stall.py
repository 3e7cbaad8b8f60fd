"""Why a livepatch transition is stalled: which tasks, where, since when (the analysis).

klptrace/kernel/stall.py reads the running kernel (/proc/<tid>/patch_state,
/proc/<tid>/stack, /sys/kernel/livepatch, the kernel log); this module, pure,
says what that means: the reason each task has not switched (the way
klp_check_and_switch_task() would see it, or its own verdict when BPF
recorded it), the transition's story try by try (story.py), what a person
can do next, and the report as text. The report itself is stall_report.py's.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence

from klptrace import story
from klptrace.events import REASONS, SIGNALS_TIMEOUT, Direction, Event, EventKind, Reason
from klptrace.stall_report import Source, StallReport, StallStep

#: a task whose stack was never read for sure is said to be so, never given a guessed reason
UNSTABLE = Reason.UNSTABLE
_FRAME = re.compile(r"^\[<[0-9a-f]+>\] ([\w.]+)\+0x[0-9a-f]+/0x[0-9a-f]+")


def stack_functions(stack: Sequence[str]) -> list[str]:
    """Function names of /proc/<tid>/stack lines."""
    return [m[1] for m in map(_FRAME.match, stack) if m]


def classify(stack: Sequence[str], state: str, funcs: set[str]) -> tuple[Reason, str]:
    """(reason, function) the way klp_check_and_switch_task() would see the task."""
    for fn in stack_functions(stack):
        if fn in funcs:
            return Reason.SLEEPING_ON_FUNCTION, fn
    if state == "R":
        return Reason.RUNNING, ""
    return Reason.OTHER, ""


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


def merge_bpf(rep: StallReport, events: Sequence[Event], now_ns: int) -> None:
    """Add what BPF saw until now_ns (CLOCK_MONOTONIC, the events' clock): the kernel's own
    reason per task, tries, the timeline."""
    if not events:
        return
    sto = story.of(events)
    stalled = {t.tid: t for t in sto.stalled}
    for t in rep.tasks:
        seen = stalled.get(t.tid)
        if seen is None:
            continue
        t.reason = seen.reason or f"other ({seen.last.ret})"
        t.function = seen.last.object or t.function
        t.source = Source.BPF
        if t.blocking_s is None:
            t.blocking_s = round((now_ns - seen.events[0].ts_ns) / 1e9, 3)
    tries = [m.event for m in sto.moments.get(rep.patch, ()) if m.tried is not None]
    if tries and tries[-1].ret is not None:
        rep.tries = tries[-1].ret + 1
    rep.forced = rep.forced or any(t.forced for t in sto.transitions)
    rep.timeline = timeline(events, rep.patch)


def timeline(events: Sequence[Event], patch: str,
             attached_ns: int | None = None) -> list[StallStep]:
    """The transition's story: start, each try with the tasks left, signals, the end.

    Times are from the start; when klptrace attached after the start
    (attached_ns), from that moment instead, which the first entry says.
    """
    moments = story.of(events).moments.get(patch, ())
    out: list[StallStep] = []
    t0: int | None = None
    if attached_ns is not None and not any(
            m.event.kind == EventKind.TRANSITION_START for m in moments):
        t0 = attached_ns
        out.append(StallStep(0.0, "klptrace attached (the transition had started)"))
    for m in moments:
        e = m.event
        if e.kind in (EventKind.TRANSITION_START, EventKind.TRANSITION_REVERSED):
            t0 = e.ts_ns if t0 is None else t0
        if t0 is None:
            continue
        t = round((e.ts_ns - t0) / 1e9, 3)
        if e.kind == EventKind.TRANSITION_START:
            out.append(StallStep(t, f"start ({'patching' if e.state else 'unpatching'})"))
        elif m.tried is not None:
            blocked = m.tried.blocked
            out.append(StallStep(t, f"try {m.tried.number}", len(blocked), [
                f"{b.comm}:{b.tid} {REASONS.get(b.ret or 0, 'other')}"
                + (f" {b.object}" if b.object else "") for b in blocked] if blocked else None))
            if m.tried.signals:
                out.append(StallStep(t, "fake signals to the remaining tasks"))
        elif e.kind == EventKind.TRANSITION_REVERSE:
            out.append(StallStep(t, "reversed"))
        elif e.kind == EventKind.TRANSITION_FORCE:
            out.append(StallStep(t, "forced"))
        elif e.kind == EventKind.TRANSITION_DONE:
            out.append(StallStep(t, f"complete ({'patching' if e.state else 'unpatching'})"))
    return out


def timeline_line(step: StallStep, tasks: bool = False) -> str:
    """One moment of a transition's story as text (tasks: with the tasks left, named)."""
    left = f", {step.tasks_left} task(s) left" if step.tasks_left is not None else ""
    who = f": {'; '.join(step.tasks)}" if tasks and step.tasks else ""
    return f"{step.t_s:8.3f} s  {step.what}{left}{who}"


def next_steps(rep: StallReport) -> list[str]:
    """What a person can do about each kind of blocker."""
    steps = []
    p = rep.patch
    kthreads = [t for t in rep.tasks if t.kthread and t.reason == Reason.SLEEPING_ON_FUNCTION]
    users = [t for t in rep.tasks if not t.kthread and t.reason == Reason.SLEEPING_ON_FUNCTION]
    running = [t for t in rep.tasks if t.reason == Reason.RUNNING]
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
    back = 0 if rep.direction == Direction.PATCHING else 1
    steps.append(f"To give up, reverse the transition: echo {back} > /sys/kernel/livepatch/{p}/"
                 f"enabled. Tasks that never switched are already in the state it reverses to.")
    steps.append(f"echo 1 > /sys/kernel/livepatch/{p}/force marks every task switched without "
                 f"checking its stack: a task still inside an old function may then run old and "
                 f"new code together, and the patch module can never be removed. klptrace never "
                 f"does this for you.")
    return steps


def render_text(rep: StallReport | None) -> str:
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
        out += [f"  {timeline_line(item)}" for item in rep.timeline]
    out.append("next steps:")
    out += [f"  - {s}" for s in rep.next_steps]
    return "\n".join(out) + "\n"
