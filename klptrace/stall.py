"""Why a livepatch transition is stalled: which tasks, where, since when (the analysis).

klptrace/kernel/stall.py reads the running kernel (/proc/<tid>/patch_state,
/proc/<tid>/stack, /sys/kernel/livepatch, the kernel log); this module, pure,
says what that means: the reason each task has not switched (the way
klp_check_and_switch_task() would see it, or its own verdict when BPF
recorded it), the transition's story try by try (story.py), what a person
can do next, and the report as text. The report itself is stall_report.py's.

What to do next depends on what the kernel does about each kind of blocked
task (kernel/livepatch/transition.c): every SIGNALS_TIMEOUT (15) tries
klp_send_signals() wakes kernel threads that sleep TASK_INTERRUPTIBLE and sends
every other pending task a fake signal (set_notify_signal(), since Linux kernel
commit 8df1947c71ee ("livepatch: Replace the fake signal sending with
TIF_NOTIFY_SIGNAL infrastructure") (in v5.13); signal_wake_up() before), which
wakes only an interruptible sleep; a user task switches on its way back to user
space; nothing wakes an uninterruptible sleep; and the scheduler switches a task
outside the patched functions in cond_resched() or __schedule(), depending on the
kernel (sched_path_of(), told by symbol).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Iterable, Sequence

from klptrace import stall_expect, story
from klptrace.events import REASONS, SIGNALS_TIMEOUT, Direction, Event, EventKind, Reason
from klptrace.stall_report import (
    Kind,
    SchedPath,
    Sleep,
    Source,
    StallReport,
    StallStep,
    StallTask,
)

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
    nxt = next_signal(try_times(events, rep.patch), now_ns)
    if nxt is not None:
        rep.next_signal_try, rep.next_signal_in_s = nxt


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
            if m.tried.signals and blocked:  # a try that completed sends none
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


# --- what moves each task ---------------------------------------------------------------

#: /proc state letters (fs/proc/array.c's task_state_array) as the signal round sees them.
#: I (TASK_IDLE) is TASK_UNINTERRUPTIBLE | TASK_NOLOAD; P (TASK_PARKED), T (stopped) and
#: t (traced) lack TASK_INTERRUPTIBLE too, so neither wake of a round reaches them: what
#: moves them is kthread_unpark(), SIGCONT or the tracer, never livepatch. Z, X and ?
#: (gone, or never read) are no sleep: None.
_SLEEPS = {"R": Sleep.RUNNING, "S": Sleep.INTERRUPTIBLE, "D": Sleep.UNINTERRUPTIBLE,
           "I": Sleep.UNINTERRUPTIBLE, "P": Sleep.UNINTERRUPTIBLE, "T": Sleep.UNINTERRUPTIBLE,
           "t": Sleep.UNINTERRUPTIBLE}


def sleep_of(state: str) -> Sleep | None:
    """How a task sleeps, from its /proc state letter (None: a letter of no sleep)."""
    return _SLEEPS.get(state)


#: kallsyms names that tell the scheduler-side switch apart (sched_path_of())
SCHED_SYMBOLS = ("__klp_sched_try_switch", "sched_dynamic_klp_enable", "klp_cond_resched",
                 "__ksymtab___klp_sched_try_switch")


def sched_path_of(names: set[str]) -> SchedPath:
    """Where the running kernel's scheduler switches tasks, from which of SCHED_SYMBOLS
    its /proc/kallsyms holds.

    Linux kernel commit e3ff7c609f39 ("livepatch,sched: Add livepatch task switching
    to cond_resched()") (in v6.4) added __klp_sched_try_switch(), called from
    cond_resched(): through the cond_resched static call that
    sched_dynamic_klp_enable() points at klp_cond_resched() (PREEMPT_DYNAMIC), or
    else inline, which is why it was exported for modules. Commit 676e8cf70cb0
    ("sched,livepatch: Untangle cond_resched() and live-patching") (in v6.16)
    removed all three (the export too) and calls it from __schedule() for a task
    going to sleep with TASK_FREEZABLE.
    """
    if "__klp_sched_try_switch" not in names:
        return SchedPath.NONE
    if names & {"sched_dynamic_klp_enable", "klp_cond_resched",
                "__ksymtab___klp_sched_try_switch"}:
        return SchedPath.COND_RESCHED
    return SchedPath.SCHEDULE


def next_signal_try(tries: int) -> int:
    """The try at whose end the kernel sends the next signal round, after `tries` tries.

    klp_try_complete_transition() sends them when klp_signals_cnt, the tries
    before this one, is a non-zero multiple of SIGNALS_TIMEOUT: at the end of try
    16, 31, 46... (counting from 1, as the timeline does), if tasks are left.
    """
    return SIGNALS_TIMEOUT * ((max(tries, 1) - 1) // SIGNALS_TIMEOUT + 1) + 1


#: klp_transition_work is rescheduled round_jiffies_relative(HZ) after each try that
#: left tasks (transition.c): about a second, on a whole second
TRY_PERIOD_S = 1.0


def try_times(events: Sequence[Event], patch: str) -> list[tuple[int, int]]:
    """(number, ts_ns) of the patch's latest tries in one count (klp_start_transition()
    and so a reversal start it again at 1)."""
    tries = [(m.tried.number, m.event.ts_ns) for m in story.of(events).moments.get(patch, ())
             if m.tried is not None]
    run: list[tuple[int, int]] = []
    for t in reversed(tries):
        if run and t[0] != run[-1][0] - 1:
            break
        run.append(t)
    return run[::-1]


def next_signal(tries: Sequence[tuple[int, int]], now_ns: int) -> tuple[int, float] | None:
    """(try, seconds from now) of the next signal round, from the tries so far (their
    spacing, or TRY_PERIOD_S with fewer than two); None when no try is known."""
    if not tries:
        return None
    number, last = tries[-1]
    gaps = sorted(b[1] - a[1] for a, b in itertools.pairwise(tries))
    period = gaps[len(gaps) // 2] / 1e9 if gaps else TRY_PERIOD_S
    at = next_signal_try(number)
    return at, round(max(0.0, last / 1e9 + (at - number) * period - now_ns / 1e9), 1)


def signal_rounds(events: Sequence[Event], patch: str) -> list[tuple[int, int]]:
    """(try number, ts_ns) of each signal round the kernel sent in the recording: a try
    of a signalling number that left tasks (klp_send_signals() runs only then)."""
    return [(m.tried.number, m.event.ts_ns) for m in story.of(events).moments.get(patch, ())
            if m.tried is not None and m.tried.signals and m.tried.blocked]


_INTERNAL = ("schedule", "__schedule", "schedule_timeout", "schedule_preempt_disabled",
             "do_nanosleep", "hrtimer_nanosleep")
#: what a few well-known waits wait for
_WAITS = {"msleep": "a timer", "msleep_interruptible": "a timer", "usleep_range_state": "a timer",
          "schedule_hrtimeout_range": "a timer", "wait_for_completion": "a completion",
          "wait_for_completion_interruptible": "a completion", "mutex_lock": "a mutex",
          "down": "a semaphore", "down_read": "a semaphore", "down_write": "a semaphore",
          "io_schedule": "I/O", "folio_wait_bit_common": "I/O (a page)",
          "futex_wait_queue": "a futex", "pipe_read": "data in a pipe"}


def waits_in(stack: Sequence[str], fn: str) -> str:
    """What a task sleeping in fn() waits in, from the frames its stack shows above fn."""
    names = stack_functions(stack)
    above = names[:names.index(fn)] if fn in names else []
    above = [n for n in above if n not in _INTERNAL]
    if not above:
        return (f"it waits in {fn}() itself (a wait loop there; the scheduler's frames are "
                f"not in /proc/<tid>/stack)")
    what = next((_WAITS[n] for n in above if n in _WAITS), "")
    return (f"it waits in {above[0]}()" + (f" for {what}" if what else "")
            + f", called from {fn}()")


def _round(rep: StallReport) -> str:
    """The next signal round, as precisely as it is known."""
    if rep.next_signal_try is None:
        return (f"the next signal round (every {SIGNALS_TIMEOUT} tries, a try about every "
                f"second; which try is next is unknown without BPF: --watch counts them)")
    when = (f" (in about {rep.next_signal_in_s:.0f} s)" if rep.next_signal_in_s is not None
            else "")
    return f"the signal round at the end of try {rep.next_signal_try}{when}"


_SCHED_SWITCH = {
    SchedPath.SCHEDULE: "when it next sleeps freezably outside the patched functions "
    "(klp_sched_try_switch() in __schedule(), since 676e8cf70cb0, v6.16; cond_resched() "
    "no longer switches it, so a kernel thread that never sleeps holds the transition)",
    SchedPath.COND_RESCHED: "at its next cond_resched() outside the patched functions "
    "(klp_sched_try_switch(), since e3ff7c609f39, v6.4)",
    SchedPath.NONE: "only when a try finds it off the CPU: this kernel's scheduler switches "
    "no task (no __klp_sched_try_switch: before e3ff7c609f39, v6.4), so a CPU-bound kernel "
    "thread holds the transition until it sleeps",
    SchedPath.UNKNOWN: "when it next schedules outside the patched functions or a try finds "
    "it off the CPU",
}


def advise(t: StallTask, rep: StallReport) -> str:
    """The one next step that fits this task on this kernel, with the kernel fact behind it."""
    kind = t.kind or (Kind.KTHREAD if t.kthread else Kind.USER)
    sleep = t.sleep or sleep_of(t.state)
    fn, sched = t.function, rep.sched or SchedPath.UNKNOWN
    if t.reason == Reason.SLEEPING_ON_FUNCTION and sleep == Sleep.UNINTERRUPTIBLE:
        why = (f"only {fn}() returning moves it: {waits_in(t.stack, fn)}. End that "
               f"(for a test module, what releases it), or reverse the transition.")
        if kind == Kind.KTHREAD:
            return (f"a kernel thread sleeping uninterruptibly in {fn}(), which this patch "
                    f"changes: nothing the kernel does moves it (a signal round wakes only "
                    f"kernel threads that sleep interruptibly: wake_up_state(task, "
                    f"TASK_INTERRUPTIBLE) in klp_send_signals(), transition.c), and if "
                    f"{fn}() loops it will go back to sleep there; {why}")
        return (f"a user task sleeping uninterruptibly in {fn}(): signal rounds do nothing "
                f"for it (set_notify_signal() wakes only TASK_INTERRUPTIBLE, "
                f"klp_send_signals() in transition.c); {why}")
    if t.reason == Reason.SLEEPING_ON_FUNCTION and sleep == Sleep.INTERRUPTIBLE:
        if kind == Kind.KTHREAD:
            return (f"do not count on {_round(rep)}: it wakes the thread (wake_up_state(task, "
                    f"TASK_INTERRUPTIBLE) in klp_send_signals(), transition.c), but a kernel "
                    f"thread gets no fake signal and never returns to user space: it "
                    f"switches only when a try or the scheduler finds it outside the "
                    f"patched functions, so if its loop sleeps in {fn}() again it stays. "
                    f"End what it loops on, or reverse the transition.")
        return (f"wait for {_round(rep)}, which the kernel sends itself: the fake signal "
                f"(set_notify_signal() in klp_send_signals(), transition.c) wakes its "
                f"interruptible sleep, and if {fn}() gives up its wait on a pending signal "
                f"the task switches on its way back to user space (klp_update_patch_state()).")
    if t.reason == Reason.SLEEPING_ON_FUNCTION:
        return (f"found in {fn}(), {sleep or 'in an unknown state'} now: it switches once "
                f"{fn}() has returned, at the next try (every second) or "
                + ("on its way back to user space." if kind == Kind.USER
                   else _SCHED_SWITCH[sched] + "."))
    if t.reason == Reason.RUNNING or sleep == Sleep.RUNNING:
        if kind == Kind.USER:
            return ("wait: a running user task switches on its next way back to user space "
                    "(klp_update_patch_state() on exit to user mode, after any interrupt), "
                    "usually within a timer tick; a signal round also kicks it "
                    "(kick_process() in set_notify_signal()).")
        return f"wait: a running kernel thread switches {_SCHED_SWITCH[sched]}."
    if t.reason == Reason.UNRELIABLE_STACK:
        return ("wait: the kernel could not walk its stack reliably "
                "(stack_trace_save_tsk_reliable() failed in klp_check_stack(), transition.c); "
                "each try, every second, walks it again"
                + (f", and {_round(rep)} sends it back through user space, where it switches."
                   if kind == Kind.USER else ", until it sleeps with a stack it can trust."))
    if t.reason == Reason.OTHER:
        return ("wait: it sleeps outside the patched functions, so the next try (within "
                "about a second) should switch it; if it stays, `klptrace stall --watch` "
                "records the kernel's own reason.")
    if t.reason == UNSTABLE:
        return ("run `klptrace stall --watch`: klptrace could not read one stable stack of "
                "it (it kept running while read); the watch records the kernel's own reason "
                "at each try.")
    return (f"wait: the kernel gave a reason klptrace does not know ({t.reason}); each try, "
            f"every second, checks it again.")


def next_steps(rep: StallReport) -> list[str]:
    """What a person can do: each task's step (the same step named once, for up to three
    tasks), then the two ways out the kernel offers, and why klptrace takes neither."""
    steps: dict[str, list[str]] = {}
    for t in rep.tasks:
        steps.setdefault(t.next_step or advise(t, rep), []).append(f"{t.comm}:{t.tid}")
    out = []
    for step, who in list(steps.items())[:5]:
        more = f" and {len(who) - 3} more" if len(who) > 3 else ""
        out.append(f"{', '.join(who[:3])}{more}: {step}")
    p = rep.patch
    back = 0 if rep.direction == Direction.PATCHING else 1
    out.append(f"To give up, reverse the transition: echo {back} > /sys/kernel/livepatch/{p}/"
               f"enabled. Tasks that never switched are already in the state it reverses to.")
    out.append(f"echo 1 > /sys/kernel/livepatch/{p}/force marks every task switched without "
               f"checking its stack: a task still inside an old function may then run old and "
               f"new code together, and the patch module can never be removed. klptrace never "
               f"does this for you.")
    return out


def next_signal_line(rep: StallReport) -> str:
    """When the next signal round comes, or that it is not known and why."""
    if rep.next_signal_try is not None:
        when = (f", in about {rep.next_signal_in_s:.0f} s" if rep.next_signal_in_s is not None
                else "")
        return f"next signal round: at the end of try {rep.next_signal_try}{when}"
    return ("next signal round: unknown without BPF (the kernel counts its tries itself; "
            "--watch records them): every 15 tries, a try about every second")


def _head(rep: StallReport) -> str:
    """A report's first line: the patch, its direction, for how long, how many tries."""
    return (f"{rep.patch}: {rep.direction} transition in progress"
            + (f" for {rep.in_transition_s:.1f} s" if rep.in_transition_s is not None else "")
            + (f", {rep.tries} {'try' if rep.tries == 1 else 'tries'}"
               if rep.tries is not None else "")
            + (", FORCED" if rep.forced else ""))


def render_text(rep: StallReport | None) -> str:
    """A report as lines for a person."""
    if rep is None:
        return "no livepatch transition in progress\n"
    out = [_head(rep)]
    out += [f"  {s}" for s in rep.signals]
    if rep.sched is not None:
        out.append(f"  {next_signal_line(rep)}")
    out.append(f"{len(rep.tasks)} task(s) not switched yet:")
    for t in rep.tasks:
        kind = "kthread" if t.kthread else "task"
        where = f" {t.function}()" if t.function else ""
        since = f", blocking {t.blocking_s:.1f} s" if t.blocking_s is not None else ""
        out.append(f"  {t.comm}:{t.tid} ({kind}) {t.reason}{where}{since}")
        if t.sleep is not None:
            out.append(f"      {t.sleep} ({t.state})")
        if t.next_step:
            out.append(f"      next step: {t.next_step}")
        out += [f"      {line}" for line in t.stack[:8]]
    if rep.timeline:
        out.append("timeline:")
        out += [f"  {timeline_line(item)}" for item in rep.timeline]
    out.append("next steps:")
    out += [f"  - {s}" for s in rep.next_steps]
    return "\n".join(out) + "\n"


def brief_lines(rep: StallReport | None, recorded: Sequence[str] = ()) -> list[str]:
    """A stalling scenario's stall report as a short block of lines, the one that KTAP and
    JUnit diagnostics and a KCIDB log excerpt carry: the transition, each task holding it
    (who, what kind, how it sleeps, the kernel's reason, where), the next steps, and the
    stall lines of its recorded transcript (recorded: the scenario's, stall_expect.py).
    No stacks and no timeline: `klptrace stall` and the html lane show those.

    Every line starts with words of klptrace's, never with a value from the kernel (a
    comm is its task's own to choose), so a format that gives each line a prefix of its
    own (KTAP's `# `) keeps every line what it says it is; line breaks in a value are
    the format's to escape."""
    out: list[str] = []
    if rep is not None:
        out.append(f"stall report: {_head(rep)}")
        out += [f"  {s}" for s in rep.signals]
        if rep.sched is not None:
            out.append(f"  {next_signal_line(rep)}")
        for t in rep.tasks:
            kind = t.kind or (Kind.KTHREAD if t.kthread else Kind.USER)
            sleep = t.sleep or sleep_of(t.state) or "not sleeping"
            where = f" {t.function}()" if t.function else ""
            since = f", blocking {t.blocking_s:.1f} s" if t.blocking_s is not None else ""
            out.append(f"task {t.comm} (pid {t.pid}, tid {t.tid}): {kind}, {sleep}"
                       f" ({t.state or '?'}); {t.reason}{where}{since}")
        if rep.next_steps:
            out.append("next steps:")
            out += [f"  - {s}" for s in rep.next_steps]
    out += [f"recorded {line}" for line in recorded if line.startswith(stall_expect.PREFIX)]
    return out
