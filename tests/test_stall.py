"""The pure parts of `klptrace stall`: reading stacks, the kernel log, the timeline."""

import json

import pytest

from klptrace import stall, story
from klptrace.events import Event, EventKind
from klptrace.fields import RecordingError
from klptrace.kernel import stall as live
from klptrace.stall_report import StallReport, StallStep, StallTask

STACK = [
    "[<0>] msleep+0x2d/0x40",
    "[<0>] klptrace_busy_work_func+0x3f/0x70 [klptrace_busy]",
    "[<0>] process_one_work+0x1c7/0x380",
    "[<0>] worker_thread+0x4d/0x380",
]


def test_stack_functions_and_classify() -> None:
    assert stall.stack_functions(STACK)[:2] == ["msleep", "klptrace_busy_work_func"]
    funcs = {"klptrace_busy_work_func", "cmdline_proc_show"}
    assert stall.classify(STACK, "D", funcs) == ("sleeping on function", "klptrace_busy_work_func")
    assert stall.classify(STACK[2:], "R", funcs) == ("running", "")
    assert stall.classify(STACK[2:], "S", funcs) == ("other", "")


def test_log_facts_take_the_last_transition() -> None:
    log = [(1.0, "livepatch: 'p': starting patching transition"),
           (2.0, "livepatch: signaling remaining tasks"),
           (5.0, "livepatch: 'q': starting patching transition"),
           (9.0, "livepatch: 'p': reversing transition from patching to unpatching"),
           (9.5, "livepatch: forcing remaining tasks to the patched state")]
    f = stall.log_facts("p", log)
    assert f.started_at == 9.0 and f.signalled_at is None and f.forced
    f = stall.log_facts("p", log[:3])
    assert f.started_at == 1.0 and f.signalled_at == 2.0 and not f.forced


def _ev(kind: EventKind, ts: int, **kw) -> Event:  # type: ignore[no-untyped-def]
    return Event(kind, ts, **{"patch": "p", **kw})


def test_timeline_counts_tasks_per_try_and_signals() -> None:
    s = 1_000_000_000
    evs = [
        _ev(EventKind.TRANSITION_START, 0, state=1),
        _ev(EventKind.TRANSITION_TRY, 1, ret=0),
        _ev(EventKind.TASK_BLOCKED, 2, tid=7, comm="kworker/0:1", ret=-98,
            object="klptrace_busy_work_func"),
        _ev(EventKind.TASK_BLOCKED, 3, tid=8, comm="sh", ret=-16),
        _ev(EventKind.TRANSITION_TRY, 15 * s, ret=15),
        _ev(EventKind.TASK_BLOCKED, 15 * s + 1, tid=7, comm="kworker/0:1", ret=-98,
            object="klptrace_busy_work_func"),
        _ev(EventKind.TRANSITION_REVERSE, 16 * s, state=1),
        _ev(EventKind.TRANSITION_DONE, 17 * s, state=0),
    ]
    tl = stall.timeline(evs, "p")
    assert [i.what for i in tl] == ["start (patching)", "try 1", "try 16",
                                    "fake signals to the remaining tasks", "reversed",
                                    "complete (unpatching)"]
    assert tl[1].tasks_left == 2 and tl[2].tasks_left == 1
    assert tl[1].tasks is not None
    assert tl[1].tasks[0] == "kworker/0:1:7 sleeping on function klptrace_busy_work_func"
    assert tl[-1].t_s == 17.0
    # a try that left no task names none; the other moments carry no count
    assert (tl[0].tasks_left, tl[0].tasks) == (None, None)
    assert tl[1].to_json()["tasks_left"] == 2 and "tasks" not in tl[0].to_json()
    assert stall.timeline_line(tl[1]) == "   0.000 s  try 1, 2 task(s) left"
    assert stall.timeline_line(tl[2], tasks=True) == (
        "  15.000 s  try 16, 1 task(s) left: kworker/0:1:7 sleeping on function "
        "klptrace_busy_work_func")
    assert stall.timeline_line(StallStep(1.5, "try 2", 0, None), tasks=True) == (
        "   1.500 s  try 2, 0 task(s) left")


def test_timeline_when_attached_late() -> None:
    evs = [_ev(EventKind.TRANSITION_TRY, 3_000_000_000, ret=4),
           _ev(EventKind.TRANSITION_DONE, 4_000_000_000, state=1)]
    tl = stall.timeline(evs, "p", attached_ns=2_000_000_000)
    assert tl[0].what.startswith("klptrace attached")
    assert [i.t_s for i in tl] == [0.0, 1.0, 2.0]


def test_merge_bpf_takes_the_kernel_s_verdict() -> None:
    s = 1_000_000_000
    evs = [_ev(EventKind.TRANSITION_START, 0, state=1),
           _ev(EventKind.TRANSITION_TRY, s, state=1, ret=2),
           _ev(EventKind.TASK_BLOCKED, s + 1, tid=7, comm="kworker/0:1", ret=-98, object="g"),
           _ev(EventKind.TASK_BLOCKED, 2 * s, tid=8, comm="sh", ret=-5),
           _ev(EventKind.TRANSITION_FORCE, 3 * s, state=1)]
    rep = StallReport("p", stall.Direction.PATCHING, [
        StallTask(1, 7, "kworker/0:1", stall.Reason.OTHER, "f", True, "D", STACK),
        StallTask(2, 8, "sh", stall.Reason.RUNNING, "", False, "R", [], blocking_s=9.0),
        StallTask(3, 9, "cat", stall.Reason.RUNNING, "", False, "R", [])])
    stall.merge_bpf(rep, evs, now_ns=4 * s)
    worker, sh, cat = rep.tasks
    assert (worker.reason, worker.function, worker.source) == ("sleeping on function", "g",
                                                               "bpf")
    assert worker.blocking_s == 3.0  # since BPF first saw it
    assert (sh.reason, sh.source, sh.blocking_s) == ("other (-5)", "bpf", 9.0)
    assert (cat.reason, cat.source, cat.blocking_s) == ("running", "proc", None)
    assert rep.tries == 3 and rep.forced
    assert [i.what for i in rep.timeline] == ["start (patching)", "try 3", "forced"]
    assert json.loads(json.dumps(rep.to_json()))["tasks"][1]["source"] == "bpf"


def test_next_steps_for_a_kthread_never_suggest_signals_help() -> None:
    rep = StallReport("p", stall.Direction.PATCHING, [StallTask(
        1, 7, "kworker/0:1", stall.Reason.SLEEPING_ON_FUNCTION, "f", True, "D", STACK)])
    steps = stall.next_steps(rep)
    assert "kernel thread" in steps[0] and "will go back to sleep" in steps[0]
    assert any("echo 0 > /sys/kernel/livepatch/p/enabled" in s for s in steps)
    assert any("/force" in s and "never does this" in s for s in steps)
    text = stall.render_text(rep)
    assert "kworker/0:1:7 (kthread) sleeping on function f()" in text


def _status(state: str, switches: int) -> str:
    return (f"Name:\tkworker/1:1\nState:\t{state} (x)\nvoluntary_ctxt_switches:\t{switches}\n"
            f"nonvoluntary_ctxt_switches:\t0\n")


class _FakeProc:
    """A task whose /proc files change between reads, as a worker waking every 20 ms does."""

    def __init__(self, reads: list[tuple[str, int, list[str], str, int]]) -> None:
        # one (state, switches) before, the stack, (state, switches) after, per try
        self.script = [item for r in reads for item in
                       (_status(r[0], r[1]), "\n".join(r[2]), _status(r[3], r[4]))]
        self.sleeps: list[float] = []

    def read(self, path: str) -> str:
        want = "stack" if path.endswith("/stack") else "status"
        text = self.script.pop(0)
        assert ("State:" not in text) == (want == "stack"), path
        return text


def test_read_stack_retries_while_the_task_runs() -> None:
    # try 1: woke and ran while read (empty stack, the switch count moved);
    # try 2: still running; try 3: asleep throughout: that one counts
    fake = _FakeProc([("D", 5, [], "D", 6), ("R", 6, [], "R", 6), ("D", 7, STACK, "D", 7)])
    got = live.read_stack("/proc/1/task/2", fake.read, fake.sleeps.append)
    assert got == live.StackRead("D", STACK, True)
    assert len(fake.sleeps) == 2 and not fake.script


def test_read_stack_never_guesses() -> None:
    # a stack read while the task switched is not trusted, however often
    reads = [("D", n, STACK[1:], "D", n + 1) for n in range(3)]
    fake = _FakeProc(reads)
    got = live.read_stack("/proc/1/task/2", fake.read, fake.sleeps.append, tries=3)
    assert not got.stable
    task_reason = stall.classify(got.stack, got.state, set()) if got.stable else stall.UNSTABLE
    assert task_reason == "could not read a stable stack"


def test_read_stack_of_a_task_that_always_runs() -> None:
    fake = _FakeProc([("R", 3, [], "R", 3)] * 4)
    got = live.read_stack("/proc/1/task/2", fake.read, fake.sleeps.append, tries=4)
    assert got == live.StackRead("R", [], True)
    assert stall.classify(got.stack, got.state, {"f"}) == ("running", "")


def test_read_stack_of_a_task_that_exited() -> None:
    got = live.read_stack("/proc/1/task/2", lambda _p: "", lambda _s: None)
    assert got == live.StackRead("?", [], False)


# --- what moves each task (issue 22) ----------------------------------------------------

Kind, Sleep, SchedPath = stall.Kind, stall.Sleep, stall.SchedPath


def test_sleep_of_each_state_letter() -> None:
    assert [stall.sleep_of(c) for c in "RSD"] == ["running", "interruptible",
                                                 "uninterruptible"]
    # TASK_IDLE, parked, stopped, traced: no wake of a signal round reaches them
    assert {stall.sleep_of(c) for c in "IPTt"} == {Sleep.UNINTERRUPTIBLE}
    assert [stall.sleep_of(c) for c in ("Z", "X", "?", "")] == [None] * 4


def test_the_scheduler_path_is_told_by_symbol() -> None:
    assert stall.sched_path_of(set()) == SchedPath.NONE  # before v6.4
    key = {"__klp_sched_try_switch"}
    assert stall.sched_path_of(key) == SchedPath.SCHEDULE  # since 676e8cf70cb0
    for older in ("sched_dynamic_klp_enable", "klp_cond_resched",
                  "__ksymtab___klp_sched_try_switch"):  # what 676e8cf70cb0 removed
        assert stall.sched_path_of(key | {older}) == SchedPath.COND_RESCHED, older
    assert set(stall.SCHED_SYMBOLS) >= {"__klp_sched_try_switch", "sched_dynamic_klp_enable"}


def test_the_next_signal_round_is_at_the_end_of_try_16_31_46() -> None:
    # klp_send_signals() runs when klp_signals_cnt (the tries before) is 15, 30, ...
    assert [stall.next_signal_try(n) for n in (0, 1, 15, 16, 17, 30, 31)] == [
        16, 16, 16, 31, 31, 31, 46]
    # the kernel's own count, as the timeline shows it: try 16 is the signalling one
    assert story.Try(0, 16).signals and not story.Try(0, 15).signals


def test_when_the_next_round_comes_from_the_tries_spacing() -> None:
    s = 1_000_000_000
    assert stall.next_signal([], 0) is None  # no try known: unknown
    # one try: the kernel's own second (round_jiffies_relative(HZ))
    assert stall.next_signal([(1, 10 * s)], 10 * s) == (16, 15.0)
    # tries 2 s apart (a busy system): 2 tries to go after try 14
    tries = [(12, 0), (13, 2 * s), (14, 4 * s)]
    assert stall.next_signal(tries, 5 * s) == (16, 3.0)
    assert stall.next_signal([(16, 0)], 100 * s) == (31, 0.0)  # overdue: never negative


def _try(ts: int, number: int, *blocked: int) -> list[Event]:
    out = [_ev(EventKind.TRANSITION_TRY, ts, state=1, ret=number - 1)]
    out += [_ev(EventKind.TASK_BLOCKED, ts + 1 + i, tid=tid, comm="t", ret=-98, object="f")
            for i, tid in enumerate(blocked)]
    return out


def test_try_times_restart_with_a_reversal_and_rounds_need_tasks_left() -> None:
    s = 1_000_000_000
    evs = [_ev(EventKind.TRANSITION_START, 0, state=1)]
    for n in range(1, 17):
        evs += _try(n * s, n, 7)
    evs += _try(17 * s, 17)  # found every task switched: the kernel sends nothing
    assert stall.signal_rounds(evs, "p") == [(16, 16 * s)]
    rev = [*evs[:-1], _ev(EventKind.TRANSITION_REVERSE, 17 * s, state=1),
           *_try(18 * s, 1, 7), *_try(19 * s, 2, 7)]
    assert stall.try_times(rev, "p") == [(1, 18 * s), (2, 19 * s)]
    # try 16 that completed the transition: no round (klp_send_signals() only if tasks left)
    done = [*evs[:-2], *_try(16 * s, 16)]
    assert stall.signal_rounds(done, "p") == []


def _task(kind: Kind, state: str, reason: str, fn: str = "f",
          stack: list[str] | None = None) -> StallTask:
    return StallTask(1, 7, "x", stall.Reason(reason) if reason in set(stall.Reason) else reason,
                     fn, kind == Kind.KTHREAD, state,
                     STACK if stack is None else stack, kind=kind,
                     sleep=stall.sleep_of(state))


def _rep(sched: SchedPath = SchedPath.SCHEDULE, next_try: int | None = 31,
         in_s: float | None = 14.0) -> StallReport:
    return StallReport("p", stall.Direction.PATCHING, sched=sched, next_signal_try=next_try,
                       next_signal_in_s=in_s)


ON = "sleeping on function"


@pytest.mark.parametrize(("kind", "state", "reason", "sched", "want", "never"), [
    # 1: a user task in an interruptible sleep: the kernel's round, nothing sooner
    (Kind.USER, "S", ON, SchedPath.SCHEDULE,
     ["wait for the signal round at the end of try 31 (in about 14 s), which the kernel "
      "sends itself", "set_notify_signal()", "way back to user space"], []),
    # 2: uninterruptible, either kind: only the function returning
    (Kind.USER, "D", ON, SchedPath.SCHEDULE,
     ["signal rounds do nothing", "only klptrace_busy_work_func() returning",
      "it waits in msleep() for a timer, called from klptrace_busy_work_func()"], ["wait for"]),
    (Kind.KTHREAD, "D", ON, SchedPath.NONE,
     ["kernel thread", "nothing the kernel does moves it", "will go back to sleep",
      "only klptrace_busy_work_func() returning"], []),
    # 3: a kernel thread in an interruptible sleep: woken, but it sleeps there again
    (Kind.KTHREAD, "S", ON, SchedPath.SCHEDULE,
     ["do not count on the signal round at the end of try 31 (in about 14 s): it wakes",
      "wake_up_state(task, TASK_INTERRUPTIBLE)",
      "gets no fake signal", "sleeps in klptrace_busy_work_func() again it stays"], []),
    # 4: running: where the scheduler switches it, on this kernel
    (Kind.KTHREAD, "R", "running", SchedPath.SCHEDULE,
     ["__schedule()", "676e8cf70cb0", "never sleeps holds the transition"], []),
    (Kind.KTHREAD, "R", "running", SchedPath.COND_RESCHED,
     ["next cond_resched()", "e3ff7c609f39"], ["__schedule"]),
    (Kind.KTHREAD, "R", "running", SchedPath.NONE,
     ["switches no task", "before e3ff7c609f39"], []),
    (Kind.USER, "R", "running", SchedPath.NONE, ["exit to user mode"], ["cond_resched"]),
    (Kind.USER, "S", "unreliable stack", SchedPath.SCHEDULE,
     ["stack_trace_save_tsk_reliable()", "try 31"], []),
    (Kind.KTHREAD, "S", "unreliable stack", SchedPath.SCHEDULE,
     ["until it sleeps with a stack it can trust"], ["try 31"]),
    (Kind.USER, "S", "other", SchedPath.SCHEDULE, ["outside the patched functions"], []),
    (Kind.USER, "?", "could not read a stable stack", SchedPath.SCHEDULE,
     ["`klptrace stall --watch`"], []),
    (Kind.USER, "S", "other (-5)", SchedPath.SCHEDULE, ["does not know (other (-5))"], []),
])
def test_the_one_next_step_per_kind_sleep_reason_and_scheduler_path(
        kind: Kind, state: str, reason: str, sched: SchedPath, want: list[str],
        never: list[str]) -> None:
    fn = "klptrace_busy_work_func" if reason == ON else ""
    step = stall.advise(_task(kind, state, reason, fn), _rep(sched))
    for w in want:
        assert w in step, (w, step)
    # force is the report's, with why it is unsafe; and nothing can ask for a signal
    # round (the patch's signal attribute is gone since 0b3d52790e1c, v5.1)
    for n in [*never, "force", "--signal", "/signal"]:
        assert n not in step, (n, step)


def test_without_bpf_the_next_round_is_unknown_and_said_so() -> None:
    step = stall.advise(_task(Kind.USER, "S", ON, "klptrace_busy_work_func"),
                        _rep(next_try=None, in_s=None))
    assert "which try is next is unknown without BPF" in step
    assert stall.next_signal_line(_rep(next_try=None, in_s=None)).startswith(
        "next signal round: unknown without BPF")
    assert stall.next_signal_line(_rep()) == "next signal round: at the end of try 31, in " \
                                             "about 14 s"


def test_what_a_task_waits_in() -> None:
    assert stall.waits_in(STACK, "klptrace_busy_work_func") == (
        "it waits in msleep() for a timer, called from klptrace_busy_work_func()")
    assert stall.waits_in(STACK[1:], "klptrace_busy_work_func").startswith(
        "it waits in klptrace_busy_work_func() itself")


def test_a_saved_report_without_the_new_fields_writes_out_as_it_was() -> None:
    saved = json.loads(json.dumps(StallReport("p", stall.Direction.PATCHING, [StallTask(
        1, 7, "kworker/0:1", stall.Reason.SLEEPING_ON_FUNCTION, "f", True, "D",
        STACK)]).to_json()))
    assert "sched" not in saved and not {"kind", "sleep", "next_step"} & set(saved["tasks"][0])
    assert StallReport.from_json(saved, "x").to_json() == saved
    rep = StallReport.from_json(saved, "x")
    rep.sched, rep.next_signal_try, rep.next_signal_in_s = SchedPath.SCHEDULE, 16, 3.0
    t = rep.tasks[0]
    t.kind, t.sleep, t.next_step = Kind.KTHREAD, Sleep.UNINTERRUPTIBLE, "wait"
    doc = json.loads(json.dumps(rep.to_json()))
    assert (doc["sched"], doc["next_signal_try"], doc["next_signal_in_s"]) == (
        "__schedule", 16, 3.0)
    assert {k: doc["tasks"][0][k] for k in ("kind", "sleep", "next_step")} == {
        "kind": "kthread", "sleep": "uninterruptible", "next_step": "wait"}
    assert StallReport.from_json(doc, "x").to_json() == doc
    doc["tasks"][0]["sleep"] = "dozing"
    with pytest.raises(RecordingError, match="'sleep' must be"):
        StallReport.from_json(doc, "saved")


def test_the_text_report_says_how_each_task_sleeps_and_what_next() -> None:
    rep = _rep(next_try=None, in_s=None)
    t = _task(Kind.KTHREAD, "D", ON, "klptrace_busy_work_func")
    rep.tasks.append(t)
    t.next_step = stall.advise(t, rep)
    rep.next_steps = stall.next_steps(rep)
    text = stall.render_text(rep)
    assert "  next signal round: unknown without BPF" in text
    assert "x:7 (kthread) sleeping on function klptrace_busy_work_func()\n" \
           "      uninterruptible (D)\n      next step: a kernel thread sleeping" in text
    assert rep.next_steps[0].startswith("x:7: a kernel thread sleeping uninterruptibly")


def test_read_stack_of_a_task_preempted_in_a_function_twice() -> None:
    # a CPU-bound kthread on a busy CPU: runnable (R), off the CPU when read, running in
    # between (its counts move); the same stack twice in a row is where it runs
    spin = ["[<0>] __cond_resched+0x1/0x2", "[<0>] f+0x3f/0x70 [m]", "[<0>] kthread+0x1/0x2"]
    fake = _FakeProc([("R", 3, spin[1:], "R", 4), ("R", 5, spin, "R", 6),
                      ("R", 7, spin, "R", 8)])
    got = live.read_stack("/proc/1/task/2", fake.read, fake.sleeps.append)
    assert got == live.StackRead("R", spin, True) and not fake.script
    assert stall.classify(got.stack, got.state, {"f"}) == ("sleeping on function", "f")
    # different places each time, or asleep in between: not read right
    fake = _FakeProc([("R", 3, spin, "R", 4), ("R", 5, spin[1:], "R", 6),
                      ("R", 7, spin, "S", 8), ("S", 8, spin, "R", 9)])
    assert not live.read_stack("/proc/1/task/2", fake.read, fake.sleeps.append, tries=4).stable


def test_a_16th_try_that_completes_sends_no_signals() -> None:
    # klp_try_complete_transition() signals only when tasks are left (transition.c)
    s = 1_000_000_000
    evs = [_ev(EventKind.TRANSITION_START, 0, state=1),
           _ev(EventKind.TRANSITION_TRY, 1, ret=0),
           _ev(EventKind.TASK_BLOCKED, 2, tid=7, comm="cat", ret=-98, object="f"),
           _ev(EventKind.TRANSITION_TRY, 15 * s, ret=15),
           _ev(EventKind.TRANSITION_DONE, 15 * s + 5, state=1)]
    assert [i.what for i in stall.timeline(evs, "p")] == [
        "start (patching)", "try 1", "try 16", "complete (patching)"]
    assert stall.signal_rounds(evs, "p") == []
