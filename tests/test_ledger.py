"""The ledger of states and shadow variables (klptrace/ledger.py), on event sequences built
by hand after the kernel's order (core.c, transition.c, state.c, shadow.c): each case of
issue 21, its ledger, its problems and leaks, its transcript lines and its JSON."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence

import pytest
import util

from klptrace import checker, ledger, scenario
from klptrace.events import (
    KLP_PATCHED,
    KLP_UNPATCHED,
    Callback,
    Event,
    EventKind,
    ShadowOp,
    StateOp,
)
from klptrace.results import (
    Recording,
    RecordingError,
    RunDocument,
    ScenarioResult,
    Status,
    Verdict,
    load,
)
from klptrace.transcript import render

K = EventKind
A, B = 0xFFFF888003C1E000, 0xFFFF888003C1F000  # two objects of the target
DATA = 0xFFFF888004000010  # shadow data the kernel returned


class Rec:
    """Events in the kernel's order, timestamps counting up."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._ts: Iterator[int] = itertools.count(1000, 10)

    def add(self, kind: EventKind, **kw: object) -> Event:
        e = Event(kind, next(self._ts), pid=1, tid=1, comm="insmod", **kw)  # type: ignore[arg-type]
        self.events.append(e)
        return e

    def step(self, text: str) -> None:
        self.add(K.STEP, detail=text)

    def load(self, m: str, lp: bool = False) -> None:
        self.add(K.MODULE_COMING, object=m, livepatch=lp)
        self.add(K.MODULE_COMING_RET, object=m, ret=0, livepatch=lp)
        self.add(K.MODULE_INIT, object=m, livepatch=lp)

    def unload(self, m: str, lp: bool = True) -> None:
        self.step(f"rmmod {m}")
        self.add(K.MODULE_GOING, object=m, livepatch=lp)
        self.add(K.MODULE_FREE, object=m, livepatch=lp)

    def cb(self, p: str, role: Callback, target: int) -> None:
        self.add(K.CALLBACK, patch=p, object="vmlinux", callback=role, state=target,
                 ret=0 if role == Callback.PRE_PATCH else None)

    def shadow(self, op: ShadowOp, caller: str, obj: int | None, sid: int,
               addr: int | None = DATA, role: Callback | None = None, p: str = "") -> None:
        self.add(K.SHADOW, op=op, obj=obj, shadow_id=sid, addr=addr, caller=caller,
                 callback=role, patch=p if role else "", object="vmlinux" if role else "",
                 size=8 if op in (ShadowOp.ALLOC, ShadowOp.GET_OR_ALLOC) else None)

    def get_state(self, p: str, sid: int, v: int | None, role: Callback,
                  op: StateOp = StateOp.GET) -> None:
        self.add(K.STATE, patch=p, op=op, state_id=sid, version=v, caller=p, callback=role)

    def enable(self, p: str, states: dict[int, int], pre: Sequence[tuple[str, object]] = (),
               replaces: str = "", refused: bool = False) -> None:
        """insmod p: klp_enable_patch() declaring states; pre: calls in pre_patch."""
        self.step(f"insmod {p}.ko")
        self.load(p, lp=True)
        self.add(K.ENABLE, patch=p)
        for sid, v in states.items():
            self.add(K.STATE_DECLARED, patch=p, state_id=sid, version=v)
        if refused:
            self.add(K.ENABLE_RET, patch=p, ret=-22)
            self.add(K.MODULE_INIT_RET, object=p, ret=-22, livepatch=True)
            self.add(K.MODULE_GOING, object=p, livepatch=True)
            self.add(K.MODULE_FREE, object=p, livepatch=True)
            self.add(K.STEP_RESULT, detail=f"insmod: ERROR: could not insert module {p}.ko: "
                                           "Invalid parameters")
            return
        self.add(K.TRANSITION_INIT, patch=p, state=KLP_PATCHED)
        self.cb(p, Callback.PRE_PATCH, KLP_PATCHED)
        for what, arg in pre:
            getattr(self, what)(*arg)  # type: ignore[misc]
        self.add(K.TRANSITION_START, patch=p, state=KLP_PATCHED)
        self.add(K.ENABLE_RET, patch=p, ret=0)
        self.add(K.MODULE_INIT_RET, object=p, ret=0, livepatch=True)
        self.add(K.TRANSITION_COMPLETE, patch=p, state=KLP_PATCHED)
        if replaces:  # klp_unpatch_replaced_patches(): no callbacks of the replaced one
            self.add(K.UNPATCH_OBJECTS, patch=replaces)
        self.cb(p, Callback.POST_PATCH, KLP_PATCHED)
        self.add(K.TRANSITION_DONE, patch=p, state=KLP_PATCHED)

    def disable(self, p: str, post: Sequence[tuple[str, object]] = ()) -> None:
        self.step(f"echo 0 > /sys/kernel/livepatch/{p}/enabled")
        self.add(K.TRANSITION_INIT, patch=p, state=KLP_UNPATCHED)
        self.cb(p, Callback.PRE_UNPATCH, KLP_UNPATCHED)
        self.add(K.TRANSITION_START, patch=p, state=KLP_UNPATCHED)
        self.add(K.TRANSITION_COMPLETE, patch=p, state=KLP_UNPATCHED)
        self.add(K.UNPATCH_OBJECTS, patch=p)
        self.cb(p, Callback.POST_UNPATCH, KLP_UNPATCHED)
        for what, arg in post:
            getattr(self, what)(*arg)  # type: ignore[misc]
        self.add(K.TRANSITION_DONE, patch=p, state=KLP_UNPATCHED)


LP, LP2 = "klptrace_state_lp", "klptrace_state_lp2"
PRE, POST_UNPATCH = Callback.PRE_PATCH, Callback.POST_UNPATCH


def _alloc(who: str, obj: int, sid: int, p: str = "") -> tuple[str, object]:
    return ("shadow", (ShadowOp.ALLOC, who, obj, sid, DATA, PRE, p or who))


def _free(who: str, obj: int, sid: int) -> tuple[str, object]:
    return ("shadow", (ShadowOp.FREE, who, obj, sid, None, POST_UNPATCH, who))


def _judge(r: Rec, extra: Sequence[str] = ()) -> Verdict:
    expected = render(r.events) + list(extra)
    return checker.judge(expected, Recording(r.events))


def test_a_state_set_up_and_torn_down() -> None:
    r = Rec()
    r.load("klptrace_target")
    r.enable(LP, {42: 1}, [("get_state", (LP, 42, 1, PRE)), _alloc(LP, A, 42)])
    r.disable(LP, [_free(LP, A, 42)])
    r.unload(LP)
    led = ledger.of(r.events)
    assert (led.problems, led.leaks, led.refusals, led.installed) == ((), (), (), ())
    (v,) = led.variables
    assert (v.obj, v.shadow_id, v.allocated_by, v.freed_by) == (A, 42, LP, LP)
    st = led.states[(LP, 42)]
    assert st.version == 1 and [c.version for c in st.calls] == [1] and st.until_ts_ns
    lines = render(r.events)
    i = lines.index(f"state declare {LP} id 42: version 1")
    assert lines[i:i + 5] == [
        f"state declare {LP} id 42: version 1",
        f"livepatch: enabling patch '{LP}'",
        f"livepatch: '{LP}': initializing patching transition",
        f"{LP}: pre_patch_callback: vmlinux",
        f"state get {LP} id 42: version 1 (pre_patch)"]
    assert f"shadow alloc <obj#1> id 42 by {LP} (pre_patch)" in lines
    assert lines.index(f"shadow free <obj#1> id 42 by {LP} (post_unpatch)") > lines.index(
        f"{LP}: post_unpatch_callback: vmlinux")
    assert _judge(r).status == Status.PASS


def _taken_over() -> Rec:
    """lp sets state 42 up with a shadow variable; cumulative lp2 takes it over."""
    r = Rec()
    r.enable(LP, {42: 1}, [_alloc(LP, A, 42)])
    r.enable(LP2, {42: 1}, [("get_state", (LP2, 42, 1, PRE, StateOp.GET_PREV))],
             replaces=LP)
    r.unload(LP)
    return r


def test_taken_over_by_a_cumulative_patch_whose_predecessor_runs_no_unpatch_callbacks() -> None:
    r = _taken_over()
    led = ledger.of(r.events)
    # lp is gone and its variable lives on: lp2 declares state 42, it is lp2's now
    assert led.installed == (LP2,) and led.leaks == () and led.problems == ()
    assert led.states[(LP, 42)].until_ts_ns is not None
    assert led.states[(LP2, 42)].until_ts_ns is None
    assert [c.op for c in led.states[(LP2, 42)].calls] == [StateOp.GET_PREV]
    lines = render(r.events)
    assert f"state get_prev id 42 for {LP2}: version 1 (pre_patch)" in lines
    assert not any(x.startswith(f"{LP}: pre_unpatch") or x.startswith(f"{LP}: post_unpatch")
                   for x in lines)
    assert _judge(r).status == Status.PASS


def test_kept_across_an_atomic_replace_and_freed_by_the_successor() -> None:
    r = _taken_over()
    r.disable(LP2, [_free(LP2, A, 42)])
    r.unload(LP2)
    led = ledger.of(r.events)
    (v,) = led.variables
    assert (v.allocated_by, v.freed_by, led.leaks, led.problems) == (LP, LP2, (), ())
    assert f"shadow free <obj#1> id 42 by {LP2} (post_unpatch)" in render(r.events)


def test_an_incompatible_patch_is_refused_and_its_pre_patch_never_runs() -> None:
    r = Rec()
    r.enable(LP2, {42: 2}, [])
    r.enable(LP, {42: 1}, refused=True)
    (no,) = ledger.of(r.events).refusals
    assert (no.patch, no.state_id, no.version, no.installed, no.installed_version) == (
        LP, 42, 1, LP2, 2)
    assert "-EINVAL" in no.text
    lines = render(r.events)
    assert lines[-4:] == [
        f"% insmod {LP}.ko", f"state declare {LP} id 42: version 1",
        f"livepatch: Livepatch patch ({LP}) is not compatible with the already installed "
        "livepatches.",
        f"insmod: ERROR: could not insert module {LP}.ko: Invalid parameters"]
    assert f"{LP}: pre_patch_callback: vmlinux" not in lines
    v = _judge(r)
    assert v.status == Status.PASS
    # the kernel logs it: the dmesg witness agrees
    assert checker.witness(v.recorded, [x for x in lines if x.startswith("livepatch:")
                                        or ": pre_patch" in x or ": post_" in x]) == ""


def test_a_compatible_newer_version_is_no_refusal() -> None:
    r = Rec()
    r.enable(LP, {42: 1}, [])
    r.add(K.ENABLE, patch=LP2)
    r.add(K.STATE_DECLARED, patch=LP2, state_id=42, version=2)
    r.add(K.ENABLE_RET, patch=LP2, ret=-22)  # some other -EINVAL: the states allow it
    assert ledger.of(r.events).refusals == ()
    assert "not compatible" not in "".join(render(r.events))


def _leaky() -> Rec:
    r = Rec()
    r.load("klptrace_target")
    r.enable(LP, {}, [_alloc(LP, A, 7), _alloc(LP, B, 7)])
    r.disable(LP)
    r.unload(LP)
    return r


def test_a_leak_is_an_error_unless_the_scenario_expects_it() -> None:
    r = _leaky()
    led = ledger.of(r.events)
    assert [(k.obj, k.shadow_id, k.allocated_by) for k in led.leaks] == [(A, 7, LP), (B, 7, LP)]
    v = _judge(r)
    assert v.status == Status.ERROR and len(v.shadow_leaks) == 2
    assert f"2 shadow variables of id 7 allocated by {LP} never freed (obj#1, obj#2)" \
        in v.explanation
    line = f"shadow leak: id 7 allocated by {LP}"
    ok = _judge(r, [line])
    assert ok.status == Status.PASS and ok.recorded[-1] == line and len(ok.shadow_leaks) == 2
    # expected, but freed after all: a divergence like any other line
    r.shadow(ShadowOp.FREE_ALL, "klptrace_target", None, 7)
    gone = checker.judge([*render(r.events), line], Recording(r.events))
    assert gone.status == Status.FAIL and gone.recorded[-1] == line + ": none left"


def test_no_leak_while_the_allocator_lives() -> None:
    r = Rec()
    r.enable(LP, {}, [_alloc(LP, A, 7)])
    r.disable(LP)
    assert ledger.of(r.events).leaks == ()  # lp can still free it from its exit


def test_the_three_problems() -> None:
    r = Rec()
    r.enable(LP, {}, [_alloc(LP, A, 7), ("shadow", (ShadowOp.ALLOC, LP, A, 7, None, PRE, LP))])
    r.shadow(ShadowOp.FREE, LP, A, 7)
    r.shadow(ShadowOp.FREE, LP, A, 7)  # again: nothing
    for _ in range(3):  # a hot path looking for it
        r.shadow(ShadowOp.GET, LP, A, 7, addr=None)
    r.shadow(ShadowOp.FREE_ALL, LP, None, 8)
    led = ledger.of(r.events)
    kinds = [(p.kind, p.obj, p.count) for p in led.problems]
    assert kinds == [(ledger.Trouble.DUPLICATE, "obj#1", 1),
                     (ledger.Trouble.FREE_OF_NOTHING, "obj#1", 1),
                     (ledger.Trouble.GET_OF_FREED, "obj#1", 3),
                     (ledger.Trouble.FREE_OF_NOTHING, "", 1)]
    assert "Duplicate shadow variable" in led.problems[0].text
    assert "klp_shadow_free_all() of id 8" in led.problems[3].text
    lines = render(r.events)
    # three gets that found nothing are one line
    assert lines.count(f"shadow get <obj#1> id 7 by {LP}: NULL") == 1
    assert f"shadow alloc <obj#1> id 7 by {LP} (pre_patch): NULL" in lines
    v = _judge(r)
    assert v.status == Status.ERROR and len(v.shadow_problems) == 4
    assert "(3 times)" in v.explanation


def test_found_gets_are_no_lines() -> None:
    r = Rec()
    r.enable(LP, {}, [_alloc(LP, A, 7)])
    n = len(render(r.events))
    for _ in range(1000):
        r.shadow(ShadowOp.GET, LP, A, 7)
    assert len(render(r.events)) == n


def test_what_the_recording_did_not_see_allocated_is_not_nothing() -> None:
    r = Rec()  # the module was loaded before the recording: its allocations were not seen
    r.shadow(ShadowOp.FREE, "old_lp", A, 7)
    r.shadow(ShadowOp.FREE_ALL, "old_lp", None, 7)
    r.shadow(ShadowOp.GET, "old_lp", B, 9)  # found: allocated before
    led = ledger.of(r.events)
    assert led.problems == () and led.variables[0].allocated_by == ""
    r.add(K.MODULE_GOING, object="old_lp")
    r.add(K.MODULE_FREE, object="old_lp")
    assert ledger.of(r.events).leaks == ()  # nobody known allocated it


def test_objects_are_named_by_first_appearance() -> None:
    r = Rec()
    r.enable(LP, {}, [_alloc(LP, B, 7), _alloc(LP, A, 7), _alloc(LP, B, 8)])
    assert ledger.object_names(r.events) == {B: "obj#1", A: "obj#2"}


def _doc(r: Rec) -> RunDocument:
    v = _judge(r)
    return RunDocument("6.1", [ScenarioResult("shadow-leak", v, Recording(r.events))])


def test_leaks_and_problems_round_trip_json() -> None:
    r = _leaky()
    r.shadow(ShadowOp.FREE, LP, 0x1234, 5)
    doc = _doc(r)
    d = json.loads(json.dumps(doc.to_json()))
    sd = d["scenarios"][0]
    assert sd["shadow_leaks"][0] == {"obj": f"{A:#x}", "shadow_id": 7, "allocated_by": LP,
                                     "alloc_ts_ns": doc.scenarios[0].verdict.shadow_leaks[0]
                                     .alloc_ts_ns}
    assert sd["shadow_problems"][0]["kind"] == "free of nothing"
    back = load(d, "saved.json")
    assert isinstance(back, RunDocument)
    assert back.scenarios[0].verdict == doc.scenarios[0].verdict
    assert back.to_json() == doc.to_json()


def test_a_result_from_before_has_none() -> None:
    r = Rec()
    r.enable(LP, {}, [])
    d = _doc(r).to_json()
    assert "shadow_leaks" not in d["scenarios"][0] and "shadow_problems" not in d["scenarios"][0]
    back = load(d, "saved.json")
    assert isinstance(back, RunDocument) and back.scenarios[0].verdict.shadow_leaks == []


@pytest.mark.parametrize("where,bad", [
    ("shadow_leaks", {"obj": 12, "shadow_id": 7, "allocated_by": "m", "alloc_ts_ns": 1}),
    ("shadow_leaks", {"obj": "0xZZ", "shadow_id": 7, "allocated_by": "m", "alloc_ts_ns": 1}),
    ("shadow_leaks", {"obj": "0x1", "shadow_id": "7", "allocated_by": "m", "alloc_ts_ns": 1}),
    ("shadow_leaks", {"obj": "0x1", "shadow_id": 7, "allocated_by": 3, "alloc_ts_ns": 1}),
    ("shadow_leaks", {"obj": "0x1", "shadow_id": 7, "allocated_by": "m"}),
    ("shadow_leaks", "0x1"),
    ("shadow_problems", {"kind": "theft", "ts_ns": 1, "shadow_id": 7}),
    ("shadow_problems", {"kind": "free of nothing", "ts_ns": -1, "shadow_id": 7}),
])
def test_a_hostile_saved_result_is_one_clean_error(where: str, bad: object) -> None:
    d = _doc(_leaky()).to_json()
    d["scenarios"][0][where] = [bad]
    with pytest.raises(RecordingError) as e:
        load(d, "saved.json")
    assert e.value.message.startswith("saved.json: scenarios[0]: ") and where in e.value.message


@pytest.mark.parametrize("field,value", [("obj", 12), ("obj", "0x" + "f" * 17),
                                         ("shadow_id", 2**70), ("version", -1), ("op", 3)])
def test_a_hostile_saved_event_is_one_clean_error(field: str, value: object) -> None:
    r = _leaky()
    r.get_state(LP, 42, 1, PRE)
    d = _doc(r).to_json()
    ev = next(e for e in d["scenarios"][0]["events"]
              if e["kind"] == ("state" if field == "version" else "shadow"))
    ev[field] = value
    with pytest.raises(RecordingError) as e:
        load(d, "saved.json")
    assert "is malformed" in e.value.message


# --- real recordings: scenarios 15 to 20 in the lab guest on 6.1 (run-shadow-6.1.json) -------

def _real(sid: str) -> tuple[list[str], Recording]:
    run = json.loads((util.DATA / "run-shadow-6.1.json").read_text())
    sd = next(s for s in run["scenarios"] if s["id"] == sid)
    sc = next(s for s in scenario.load_dir() if s.id == sid)
    return list(sc.expect), Recording.from_json(
        {"events": sd["events"], "lost_events": sd["lost_events"], "probes": run["probes"]})


LP1, LP2, LP3 = "klptrace_shadow_lp1", "klptrace_shadow_lp2", "klptrace_shadow_lp3"


def test_real_variables_allocated_by_one_patch_are_freed_by_its_successor() -> None:
    _expect, rec = _real("shadow-kept-across-replace")
    klp = ledger.of(rec.events)
    assert [(v.shadow_id, v.allocated_by, v.freed_by) for v in klp.variables] == [
        (21, LP1, LP2)] * 3
    assert not klp.problems and not klp.leaks and klp.installed == ()
    assert klp.states[(LP1, 21)].version == klp.states[(LP2, 21)].version == 1


def test_real_free_all_dropped_is_a_leak_of_each_variable() -> None:
    expect, rec = _real("state-setup-teardown")
    rec.events = [e for e in rec.events if e.op != ShadowOp.FREE_ALL]
    v = checker.judge(expect, rec)
    assert v.status == Status.ERROR
    assert [(k.shadow_id, k.allocated_by) for k in v.shadow_leaks] == [(21, LP1)] * 3
    assert "3 shadow variables of id 21 allocated by klptrace_shadow_lp1 never freed (obj#1, " \
        "obj#2, obj#3)" in v.explanation


def test_real_leak_unstated_is_an_error_and_stated_passes() -> None:
    expect, rec = _real("shadow-leak-reported")
    assert checker.judge(expect, rec).status == Status.PASS
    unstated = [x for x in expect if not x.startswith("shadow leak: ")]
    v = checker.judge(unstated, rec)
    assert v.status == Status.ERROR and f"allocated by {LP1}" in v.explanation


def test_real_refusals_name_the_installed_state() -> None:
    _expect, rec = _real("incompatible-version-refused")
    klp = ledger.of(rec.events)
    assert [(r.patch, r.state_id, r.version, r.installed, r.installed_version)
            for r in klp.refusals] == [(LP2, 21, 1, LP3, 2), (LP1, 21, 1, LP3, 2)]
