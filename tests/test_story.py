"""story.py offline: the story of the saved real runs (tests/data), and of small hand-built
recordings: a reversal with a task that held it, a transition that never ends, a module that
goes while it is patched."""

from __future__ import annotations

import errno
import json
from typing import Any

from util import DATA

from klptrace import story
from klptrace.events import REASONS, Callback, Direction, Event, EventKind, ModuleState, Reason
from klptrace.story import After, End

S = 1_000_000_000


def _saved(name: str, sid: str) -> list[Event]:
    doc = json.loads((DATA / name).read_text())
    sd = next(s for s in doc["scenarios"] if s["id"] == sid)
    return [Event.from_json(e) for e in sd["events"]]


def _ev(kind: EventKind, ts: int, **kw: Any) -> Event:
    return Event(kind, ts, **{"patch": "p", **kw})


def test_the_reasons_are_the_kernel_s_errnos() -> None:
    # klp_check_and_switch_task(): -EBUSY running, -EINVAL unreliable stack, -EADDRINUSE
    # sleeping on a function the patch changes (-16, -22 and -98 on every architecture)
    assert REASONS == {-errno.EBUSY: "running", -errno.EINVAL: "unreliable stack",
                       -errno.EADDRINUSE: "sleeping on function"}
    assert (-errno.EBUSY, -errno.EINVAL, -errno.EADDRINUSE) == (-16, -22, -98)
    assert json.dumps([Reason.RUNNING, Direction.PATCHING]) == '["running", "patching"]'
    assert Direction.of(1) == "patching" and Direction.of(0).reverse == Direction.PATCHING


def test_a_saved_reversal_with_the_task_that_held_it() -> None:
    evs = _saved("run-busy-6.1.json", "busy-target-module")
    sto = story.of(evs)
    assert sto.patches == ("klptrace_lp",)
    first, second = sto.legs["klptrace_lp"]
    assert (first.direction, first.after, first.end) == ("patching", "", "reversed")
    assert (second.direction, second.after, second.end) == ("unpatching", "reversed",
                                                            "complete")
    assert first.t1 == second.t0 == next(e.ts_ns for e in evs
                                         if e.kind == EventKind.TRANSITION_REVERSE)
    # the worker was found not switched at the patching leg's try, never after
    [worker] = sto.stalled
    blocked = [e for e in evs if e.kind == EventKind.TASK_BLOCKED]
    assert worker.events == tuple(blocked) and worker.tid == blocked[0].tid
    assert [len(t.blocked) for t in first.tries] == [1] and first.tries[0].blocked == worker.events
    assert worker.reason == Reason.SLEEPING_ON_FUNCTION
    assert worker.last.object == "klptrace_busy_work_func"
    # it held the transition until the reversal ended that leg
    assert worker.leg == first and worker.until == first.t1 and not worker.switched
    [tr] = sto.transitions
    assert tr.reversed and not tr.cancelled and not tr.forced and tr.tries == 2
    assert tr.begun_by == EventKind.TRANSITION_INIT and tr.final_target == 0
    assert tr.done is not None and evs[tr.done].kind == EventKind.TRANSITION_DONE
    assert sto.started("klptrace_lp") == next(e.ts_ns for e in evs
                                              if e.kind == EventKind.TRANSITION_START)


def test_saved_run_modules_callbacks_and_a_cancel() -> None:
    evs = _saved("run-6.1.json", "pre-patch-callback-enodev")
    sto = story.of(evs)
    legs = sto.legs["klptrace_lp"]
    assert [(s.direction, s.after, s.end) for s in legs] == [
        ("patching", "", "cancelled"), ("unpatching", "cancelled", "complete")]
    [tr] = sto.transitions
    assert tr.cancelled and not tr.reversed and tr.tries == 0
    lives = {m.name: m for m in sto.modules}
    # the livepatch's init failed (pre_patch refused): COMING, then GOING, never LIVE
    assert lives["klptrace_lp"].livepatch
    assert [p.state for p in lives["klptrace_lp"].phases] == [ModuleState.COMING,
                                                              ModuleState.GOING]
    assert [p.state for p in lives["klptrace_target"].phases] == [
        ModuleState.COMING, ModuleState.LIVE, ModuleState.GOING]
    assert not any(p.open_end for m in sto.modules for p in m.phases)
    callbacks = [e for e in evs if e.kind == EventKind.CALLBACK]
    got = [e for evs_ in sto.objects["klptrace_lp"].values() for e in evs_
           if e.kind == EventKind.CALLBACK]
    assert sorted(got, key=lambda e: e.ts_ns) == callbacks and callbacks
    assert not sto.stalled


def test_a_refused_module_is_gone_at_the_refusal() -> None:
    sto = story.of(_saved("run-6.1.json", "module-coming-pre-patch-callback-enodev"))
    target = next(m for m in sto.modules if m.name == "klptrace_target")
    [coming] = target.phases
    assert coming.state == ModuleState.COMING and not coming.open_end
    refused = next(e for e in target.events if e.kind == EventKind.MODULE_COMING_RET)
    assert refused.ret and coming.t1 == refused.ts_ns


def test_a_hand_built_reversal_counts_each_task_once_per_try() -> None:
    evs = [
        _ev(EventKind.TRANSITION_INIT, 0, state=1),
        _ev(EventKind.TRANSITION_START, 1, state=1),
        _ev(EventKind.TRANSITION_TRY, 2, state=1, ret=0),
        _ev(EventKind.TASK_BLOCKED, 3, tid=7, comm="kworker/0:1", ret=-98, object="f"),
        _ev(EventKind.TASK_BLOCKED, 4, tid=7, comm="kworker/0:1", ret=-98, object="f"),
        _ev(EventKind.TASK_BLOCKED, 5, tid=8, comm="sh", ret=-16),
        _ev(EventKind.TRANSITION_TRY, 15 * S, state=1, ret=15),
        _ev(EventKind.TASK_BLOCKED, 15 * S + 1, tid=7, comm="kworker/0:1", ret=-98,
            object="f"),
        _ev(EventKind.TRANSITION_REVERSE, 16 * S, state=1),
        _ev(EventKind.TRANSITION_REVERSED, 16 * S + 1, state=0),
        _ev(EventKind.TRANSITION_TRY, 17 * S, state=0, ret=0),
        _ev(EventKind.TRANSITION_COMPLETE, 18 * S, state=0),
        _ev(EventKind.TRANSITION_DONE, 18 * S + 1, state=0),
    ]
    sto = story.of(evs)
    patching, unpatching = sto.legs["p"]
    assert (patching.direction, patching.end, unpatching.after) == (
        Direction.PATCHING, End.REVERSED, After.REVERSED)
    assert [(t.number, [b.tid for b in t.blocked], t.signals) for t in patching.tries] == [
        (1, [7, 8], False), (16, [7], True)]
    assert [t.number for t in unpatching.tries] == [1] and unpatching.end == End.COMPLETE
    # sh was not found again: the next try switched it; the worker held on to the reversal
    sh, worker = sorted(sto.stalled, key=lambda t: t.tid, reverse=True)
    assert (sh.tid, sh.switched, sh.until, sh.reason) == (8, True, 15 * S, Reason.RUNNING)
    assert (worker.tid, len(worker.events), worker.switched) == (7, 3, False)
    assert worker.until == 16 * S and worker.leg == patching
    kinds = [m.event.kind for m in sto.moments["p"]]
    assert kinds == [EventKind.TRANSITION_START, EventKind.TRANSITION_TRY,
                     EventKind.TRANSITION_TRY, EventKind.TRANSITION_REVERSE,
                     EventKind.TRANSITION_REVERSED, EventKind.TRANSITION_TRY,
                     EventKind.TRANSITION_DONE]
    [tr] = sto.transitions
    assert (tr.t0, tr.t1, tr.tries, tr.reversed, tr.target, tr.final_target) == (
        0, 18 * S + 1, 3, True, 1, 0)


def test_a_transition_that_never_ends() -> None:
    evs = [
        _ev(EventKind.STEP, 0, patch="", detail="insmod p.ko"),
        _ev(EventKind.TRANSITION_START, 1, state=1),
        _ev(EventKind.TRANSITION_TRY, 2, state=1, ret=0),
        _ev(EventKind.TASK_BLOCKED, 3, tid=9, comm="w", ret=-5),
        _ev(EventKind.TRANSITION_FORCE, 4 * S, state=1),
        _ev(EventKind.STEP, 5 * S, patch="", detail="sleep 1"),
    ]
    sto = story.of(evs)
    assert sto.patches == ("p",) and (sto.first, sto.last) == (0, 5 * S)
    [leg] = sto.legs["p"]
    assert (leg.t0, leg.t1, leg.end) == (1, 5 * S, End.OPEN) and not leg.end
    [tr] = sto.transitions
    assert tr.done is None and tr.t1 is None and tr.forced and tr.tries == 1
    [task] = sto.stalled
    # a code this klptrace does not know has no reason; it held the leg to the end
    assert task.reason is None and task.until == 5 * S and task.leg == leg
    assert not task.switched


def test_a_module_that_goes_while_patched() -> None:
    # loaded and patched before the recording began; rmmod'ed while the patch is enabled
    evs = [
        _ev(EventKind.STEP, 0, patch="", detail="rmmod klptrace_target"),
        _ev(EventKind.MODULE_GOING, 10, patch="", object="klptrace_target",
            state=ModuleState.GOING),
        _ev(EventKind.CALLBACK, 11, object="klptrace_target", callback=Callback.PRE_UNPATCH,
            state=ModuleState.GOING),
        _ev(EventKind.UNPATCH_OBJECT, 12, object="klptrace_target"),
        _ev(EventKind.CALLBACK, 13, object="klptrace_target", callback=Callback.POST_UNPATCH,
            state=ModuleState.GOING),
        _ev(EventKind.MODULE_FREE, 20, patch="", object="klptrace_target"),
        _ev(EventKind.STEP, 30, patch="", detail="sleep 1"),
    ]
    sto = story.of(evs)
    [life] = sto.modules
    assert (life.name, life.livepatch) == ("klptrace_target", False)
    assert [(p.state, p.t0, p.t1, p.open_end) for p in life.phases] == [
        (ModuleState.LIVE, 0, 10, False), (ModuleState.GOING, 10, 20, False)]
    assert [e.kind for e in life.events] == [EventKind.MODULE_GOING, EventKind.MODULE_FREE]
    [(obj, done)] = sto.objects["p"].items()
    assert obj == "klptrace_target"
    assert [e.callback for e in done if e.kind == EventKind.CALLBACK] == [
        Callback.PRE_UNPATCH, Callback.POST_UNPATCH]
    assert sto.legs["p"] == () and sto.transitions == () and sto.stalled == ()


def test_a_module_still_loaded_at_the_end_is_open() -> None:
    evs = [_ev(EventKind.MODULE_COMING, 1, patch="", object="m", state=ModuleState.COMING),
           _ev(EventKind.MODULE_INIT, 2, patch="", object="m"),
           _ev(EventKind.MODULE_INIT_RET, 3, patch="", object="m", ret=0),
           _ev(EventKind.STEP, 9, patch="", detail="sleep 1")]
    [life] = story.of(evs).modules
    assert [(p.state, p.t0, p.t1, p.open_end) for p in life.phases] == [
        (ModuleState.COMING, 1, 3, False), (ModuleState.LIVE, 3, 9, True)]


def test_nothing_recorded() -> None:
    sto = story.of([])
    assert (sto.patches, sto.transitions, sto.modules, sto.stalled) == ((), (), (), ())
    assert sto.started("p") is None
