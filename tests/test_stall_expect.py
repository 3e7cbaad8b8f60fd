"""A scenario's [[stall]] tables: the schema, and the lines the checker compares, read
from recordings made up try by try as transition.c makes them."""

from __future__ import annotations

import pytest

from klptrace import checker, scenario, stall_expect
from klptrace.events import KLP_PATCHED, Event, EventKind
from klptrace.results import Recording, Status

P = "klptrace_stall_lp"
FN = "klptrace_stall_read_interruptible"


class _Clock:
    def __init__(self) -> None:
        self.t = 0

    def ev(self, kind: EventKind, **kw: object) -> Event:
        self.t += 1000
        return Event(kind, self.t, **kw)  # type: ignore[arg-type]


def _tries(c: _Clock, first: int, last: int, blocked: dict[str, int]) -> list[Event]:
    """Tries first..last (numbered from 1, as the kernel counts), each finding the tasks
    in blocked (comm -> tid) not switched."""
    out = []
    for n in range(first, last + 1):
        out.append(c.ev(EventKind.TRANSITION_TRY, patch=P, state=KLP_PATCHED, ret=n - 1))
        out += [c.ev(EventKind.TASK_BLOCKED, pid=tid, tid=tid, comm=comm, patch=P,
                     state=KLP_PATCHED, ret=-98, object=FN) for comm, tid in blocked.items()]
    return out


def _start(c: _Clock) -> list[Event]:
    return [c.ev(EventKind.TRANSITION_INIT, patch=P, state=KLP_PATCHED),
            c.ev(EventKind.TRANSITION_START, patch=P, state=KLP_PATCHED)]


def _done(c: _Clock, n: int) -> list[Event]:
    return [c.ev(EventKind.TRANSITION_TRY, patch=P, state=KLP_PATCHED, ret=n - 1),
            c.ev(EventKind.TRANSITION_COMPLETE, patch=P, state=KLP_PATCHED),
            c.ev(EventKind.TRANSITION_DONE, patch=P, state=KLP_PATCHED)]


def _line(ended: str, after: bool | None = None, task: str = "cat") -> str:
    return stall_expect.ExpectedStall(task, stall_expect.Reason.SLEEPING_ON_FUNCTION,
                                      stall_expect.Ended(ended), FN, after).line()


def test_the_16th_try_signal_round_ends_a_stall_as_signal() -> None:
    c = _Clock()
    evs = _start(c) + _tries(c, 1, 16, {"cat": 7}) + _done(c, 17)
    assert _line("signal") == f"stall: cat: sleeping on function {FN}(); ended: signal"
    assert stall_expect.recorded([_line("signal")], evs) == [_line("signal")]
    # the round's wake-up came after the 16th try found it: not "after a signal"
    assert stall_expect.recorded([_line("signal", False)], evs) == [_line("signal", False)]


def test_a_task_found_again_after_the_round_then_released_returned() -> None:
    c = _Clock()
    evs = (_start(c) + _tries(c, 1, 17, {"kt": 9})
           + [c.ev(EventKind.STEP, detail="echo N > /sys/module/m/parameters/hold")]
           + _done(c, 18))
    assert stall_expect.recorded([_line("returned", True, "kt")], evs) == [
        _line("returned", True, "kt")]


def test_a_slow_switch_after_the_round_is_still_the_signal() -> None:
    """Woken at the 16th try's end but not yet back in user space at the 17th: the
    round is still the last thing that happened to it before it switched."""
    c = _Clock()
    evs = _start(c) + _tries(c, 1, 17, {"cat": 7}) + _done(c, 18)
    assert stall_expect.recorded([_line("signal")], evs) == [_line("signal")]


def test_a_reversed_leg_that_never_switched_the_task() -> None:
    c = _Clock()
    evs = (_start(c) + _tries(c, 1, 17, {"cat": 7})
           + [c.ev(EventKind.STEP, detail=f"echo 0 > /sys/kernel/livepatch/{P}/enabled"),
              c.ev(EventKind.TRANSITION_REVERSE, patch=P, state=KLP_PATCHED),
              c.ev(EventKind.TRANSITION_REVERSED, patch=P, state=0),
              c.ev(EventKind.TRANSITION_TRY, patch=P, state=0, ret=0),
              c.ev(EventKind.TRANSITION_COMPLETE, patch=P, state=0),
              c.ev(EventKind.TRANSITION_DONE, patch=P, state=0)])
    assert stall_expect.recorded([_line("reversed", True)], evs) == [_line("reversed", True)]


def test_what_the_recording_says_when_it_differs() -> None:
    c = _Clock()
    evs = _start(c) + _tries(c, 1, 3, {"cat": 7})
    # still blocked at the end, never signalled
    assert stall_expect.recorded([_line("signal", True)], evs) == [
        f"stall: cat: sleeping on function {FN}(); not blocked after a signal; ended: never"]
    assert stall_expect.recorded([_line("signal", task="dd")], evs) == [
        "stall: dd: never found blocked"]
    assert stall_expect.recorded(["% insmod a.ko"], evs) == []


def test_the_checker_fails_a_stall_that_ended_otherwise() -> None:
    c = _Clock()
    evs = (_start(c) + _tries(c, 1, 3, {"cat": 7})
           + [c.ev(EventKind.STEP, detail="echo N > /sys/module/m/parameters/hold")]
           + _done(c, 4))
    expected = ["livepatch: 'klptrace_stall_lp': initializing patching transition",
                "livepatch: 'klptrace_stall_lp': starting patching transition",
                "% echo N > /sys/module/m/parameters/hold",
                "livepatch: 'klptrace_stall_lp': completing patching transition",
                "livepatch: 'klptrace_stall_lp': patching complete"]
    ok = checker.judge([*expected, _line("returned")], Recording(evs))
    assert ok.status == Status.PASS, ok.explanation
    bad = checker.judge([*expected, _line("signal")], Recording(evs))
    assert bad.status == Status.FAIL and bad.divergence == 6
    assert bad.recorded[-1] == _line("returned")
    assert "how the transition's stall held cat" in bad.explanation


HEAD = 'id = "x"\ntitle = "t"\ndoc = "d"\nexpect = "% insmod a.ko"\n'
STEPS = 'steps = [{ load = "a" }]\n'


def test_the_schema_takes_a_stall_and_ends_the_expectation_with_it() -> None:
    sc = scenario.parse(HEAD + STEPS + f'[[stall]]\ntask = "cat"\nreason = '
                        f'"sleeping on function"\nfunction = "{FN}"\nended = "signal"\n'
                        'after_signal = false\n', "f.toml")
    assert sc.expect == ("% insmod a.ko", _line("signal", False))
    assert sc.stalls[0].ended == stall_expect.Ended.SIGNAL


@pytest.mark.parametrize(("stall", "says"), [
    ('task = "a b"\nreason = "running"\nended = "signal"', 'task "a b" is not valid'),
    ('task = "cat"\nreason = "asleep"\nended = "signal"', "reason must be one of running, "
     "unreliable stack, sleeping on function"),
    ('task = "cat"\nreason = "running"\nended = "never"', "ended must be one of signal, "
     "returned, reversed, forced"),
    ('task = "cat"\nreason = "sleeping on function"\nended = "signal"', "needs function"),
    ('task = "cat"\nreason = "running"\nfunction = "f"\nended = "signal"',
     "only a task sleeping on a function names a function"),
    ('task = "cat"\nreason = "running"\nended = "signal"\nafter_signal = 1',
     "after_signal must be true or false, not an integer"),
    ('task = "cat"\nreason = "running"\nended = "signal"\nwhy = 1', 'unknown key "why"'),
])
def test_the_schema_refuses_a_bad_stall(stall: str, says: str) -> None:
    with pytest.raises(scenario.ScenarioError) as e:
        scenario.parse(HEAD + STEPS + "[[stall]]\n" + stall + "\n", "f.toml")
    assert e.value.message.startswith("f.toml: stall[0]: "), e.value.message
    assert says in e.value.message, e.value.message


@pytest.mark.parametrize(("steps", "says"), [
    ('{ spawn = "r", read = "a/f" }', 'read "a/f" is not a file of a module an earlier step '
     "loads"),
    ('{ load = "a" }, { spawn = "r", read = "a/../f" }', 'read "a/../f" is not valid'),
    ('{ load = "a" }, { spawn = "1r", read = "a/f" }', 'spawn "1r" is not valid'),
    ('{ load = "a" }, { reap = "r" }', 'reap "r": no earlier step spawns a reader'),
    ('{ wait_blocked = "p", task = "cat", try = 0 }', "try must be an integer from 1"),
    ('{ wait_blocked = "p" }', "a wait_blocked step needs task"),
    ('{ wait_param = "a", param = "x" }', "a wait_param step needs value"),
])
def test_the_schema_refuses_bad_new_steps(steps: str, says: str) -> None:
    with pytest.raises(scenario.ScenarioError) as e:
        scenario.parse(HEAD + f"steps = [{steps}]\n", "f.toml")
    assert says in e.value.message, e.value.message
