"""The pure parts of `klptrace stall`: reading stacks, the kernel log, the timeline."""

import json

from klptrace import stall
from klptrace.events import Event, EventKind
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
