"""trace-event: the recording as Chrome trace-event JSON, for Perfetto's UI and chrome://tracing.

One process per kernel, and in it one track (a thread) for the scenarios, one per
livepatch for its transitions, one per klp_object (and livepatch module), one per
task. Time is microseconds since the run's first event, on the kernel's clock,
so every scenario of a run shares one axis.

States and shadow variables (issue 21) have tracks of their own: one per state id, a
span for each patch while it holds the state (report/klp_lanes.holders()), an instant
per declaration and klp_get_state()/klp_get_prev_state() call; one per shadow variable
<obj, id>, a span from its alloc to its free (to the scenario's end when it was never
freed, with "leaked": true in its args when the verdict says it leaked), an instant per
call but the gets that found it (a hot path makes thousands), and the ledger's problems.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from klptrace import ledger, story
from klptrace.events import KLP_PATCHED, Event, EventKind, ShadowOp, StateOp
from klptrace.ledger import ShadowLeak
from klptrace.report.klp_lanes import holders
from klptrace.results import Matrix, ScenarioResult

# a function's entry and its return, drawn as one complete (X) event:
# entry kind -> (return kind, the kernel's function)
_CALLS = {
    "enable": ("enable_ret", "klp_enable_patch"),
    "module_coming": ("module_coming_ret", "klp_module_coming"),
    "module_init": ("module_init_ret", "do_init_module"),
}
_RETURNS = {ret: entry for entry, (ret, _) in _CALLS.items()}
# instants, by the kernel's word for them (other kinds are named by their kind)
_NAMES = {
    "transition_start": "start", "transition_try": "klp_try_complete_transition",
    "transition_complete": "complete",
    "transition_cancel": "cancel", "transition_reverse": "reverse",
    "transition_reversed": "reversed", "transition_force": "force",
    "unpatch_objects": "klp_unpatch_objects", "patch_object": "klp_patch_object",
    "unpatch_object": "klp_unpatch_object", "module_going": "klp_module_going",
    "module_free": "free_module", "task_blocked": "task blocked", "step_result": "step failed",
}
_TRACK_ORDER = ("scenarios", "transition", "object", "state", "shadow", "task")
Track = tuple[str, str]


def render(m: Matrix) -> str:
    """The trace of a run or of a matrix of runs, as JSON."""
    events: list[dict[str, Any]] = []
    for pid, r in enumerate(m.runs, 1):
        events += _process(pid, r.kernel, [_Scenario.of(sc) for sc in r.scenarios])
    doc = {"traceEvents": events, "displayTimeUnit": "ms",
           "otherData": {"generator": "klptrace",
                         "kernels": ", ".join(r.kernel for r in m.runs),
                         "clock": "microseconds since each kernel's first recorded event"}}
    return json.dumps(doc, indent=0, allow_nan=False) + "\n"


@dataclasses.dataclass(frozen=True)
class _Scenario:
    """What the trace shows of one scenario: its span's name and args, its events."""

    id: str
    args: dict[str, Any]
    events: list[Event]
    leaks: list[ShadowLeak]

    @classmethod
    def of(cls, sc: ScenarioResult) -> _Scenario:
        """A scenario of a run (a skipped one shows nothing: it needs no args)."""
        events = list(sc.recording.events)
        args = {"status": str(sc.status), "duration_s": sc.seconds,
                "explanation": sc.verdict.explanation} if events else {}
        return cls(sc.id, args, events, list(sc.verdict.shadow_leaks))


def _kind(e: Event) -> str:
    return e.kind.name.lower()


def _track(e: Event) -> Track:
    """The track an event belongs on: its livepatch's transitions, its klp_object or task."""
    kind = _kind(e)
    if e.kind in (EventKind.STATE, EventKind.STATE_DECLARED):
        return ("state", str(e.state_id))
    if e.kind == EventKind.SHADOW:
        return ("shadow", _shadow_key(e.obj, e.shadow_id or 0))
    if kind == "transition_try":  # a task's work: which one tries matters in a stall
        return ("task", str(e.tid))
    if kind.startswith("transition_") or kind == "unpatch_objects":
        return ("transition", e.patch)
    if kind in ("callback", "patch_object", "unpatch_object") or kind.startswith("module_"):
        return ("object", e.object)
    return ("task", str(e.tid))


def _thread_names(scenarios: Sequence[_Scenario]) -> dict[Track, str]:
    """Every track of a run in display order, with its name."""
    comms: dict[str, list[str]] = {}
    livepatch: set[str] = set()
    found: dict[Track, None] = {}
    for e in (e for sc in scenarios for e in sc.events):
        t = _track(e)
        if _kind(e).startswith("transition_"):  # its span, wherever the event itself goes
            found[("transition", e.patch)] = None
        found[t] = None
        if t[0] == "task" and e.comm and e.comm not in comms.setdefault(t[1], []):
            comms[t[1]].append(e.comm)
        if e.livepatch:
            livepatch.add(e.object)
    names: dict[Track, str] = {("scenarios", ""): "scenarios"}
    for t in sorted(found, key=lambda t: _TRACK_ORDER.index(t[0])):  # stable: first seen
        if t[0] == "transition":
            names[t] = f"{t[1]} transitions"
        elif t[0] == "object":
            names[t] = f"livepatch {t[1]}" if t[1] in livepatch else f"klp_object {t[1]}"
        elif t[0] == "state":
            names[t] = f"state {t[1]}"
        elif t[0] == "shadow":
            names[t] = f"shadow {t[1]}"
        else:
            names[t] = f"{'/'.join(comms.get(t[1], [])) or 'task'} {t[1]}"
    return names


def _process(pid: int, kernel: str, scenarios: Sequence[_Scenario]) -> list[dict[str, Any]]:
    """One kernel's run: its metadata, then every scenario's events."""
    names = _thread_names(scenarios)
    tids = {t: i for i, t in enumerate(names, 1)}
    out: list[dict[str, Any]] = [
        _meta(pid, 0, "process_name", name=f"kernel {kernel}"),
        _meta(pid, 0, "process_sort_index", sort_index=pid)]
    for t, tid in tids.items():
        out += [_meta(pid, tid, "thread_name", name=names[t]),
                _meta(pid, tid, "thread_sort_index", sort_index=tid)]
    t0 = min((e.ts_ns for sc in scenarios for e in sc.events), default=0)
    for sc in scenarios:
        out += _scenario(sc, pid, tids, t0)
    return out


def _meta(pid: int, tid: int, what: str, **args: Any) -> dict[str, Any]:
    """A metadata event: names and orders a process or a thread (its ts is not used)."""
    return {"ph": "M", "name": what, "ts": 0, "pid": pid, "tid": tid, "args": args}


def _us(ns: int, t0: int) -> float:
    return round((ns - t0) / 1000, 3)


def _fields(e: Event) -> dict[str, Any]:
    """An event's fields as args: the task, the patch, object, callback, state and ret."""
    return {k: v for k, v in e.to_json().items() if k not in ("kind", "ts_ns")}


def _scenario(sc: _Scenario, pid: int, tids: dict[Track, int], t0: int) -> list[dict[str, Any]]:
    """One scenario: a span on the scenarios track, and its events on theirs."""
    evs = sc.events
    if not evs:  # skipped: nothing happened in the kernel to draw
        return []
    end = max(e.ts_ns for e in evs)
    begin = min(e.ts_ns for e in evs)
    out = [_complete(pid, tids[("scenarios", "")], sc.id, "scenario", begin, end, t0, sc.args)]
    transitions = story.of(evs).transitions
    done = {tr.done: tr for tr in transitions if tr.done is not None}
    calls: dict[tuple[Track, str], Event] = {}
    for i, e in enumerate(evs):
        track, kind = _track(e), _kind(e)
        tid = tids[track]
        if kind in _CALLS:
            calls[(track, kind)] = e
        elif kind in _RETURNS and (track, _RETURNS[kind]) in calls:
            entry = calls.pop((track, _RETURNS[kind]))
            out.append(_complete(pid, tid, _call_name(entry), "call", entry.ts_ns,
                                 e.ts_ns, t0, {**_fields(entry), "ret": e.ret}))
        elif i in done:  # klp_complete_transition() returned: the whole transition
            out.append(_transition(pid, tids[("transition", e.patch)], done[i], e.ts_ns, t0))
        elif kind == "transition_init":
            continue  # the beginning of its transition's span
        elif kind.startswith("transition_") or kind == "unpatch_objects":
            out.append(_instant(pid, tid, _NAMES.get(kind, kind), "transition", e.ts_ns, t0,
                                _fields(e)))
        elif e.kind in (EventKind.STATE, EventKind.STATE_DECLARED, EventKind.SHADOW):
            if not (e.op == ShadowOp.GET and e.addr is not None):  # found: no instant
                out.append(_instant(pid, tid, _klp_name(e), track[0], e.ts_ns, t0,
                                    _fields(e)))
        else:
            name = (f"% {e.detail}" if kind == "step" else
                    e.callback.word if kind == "callback" and e.callback else
                    kind if kind == "callback" else _NAMES.get(kind, kind))
            out.append(_instant(pid, tid, name, _category(kind), e.ts_ns, t0, _fields(e)))
    # what had not returned or completed when the scenario ended: drawn to its end
    for (track, _), entry in calls.items():
        out.append(_complete(pid, tids[track], _call_name(entry), "call", entry.ts_ns, end,
                             t0, {**_fields(entry), "returned": False}))
    for tr in transitions:
        if tr.done is None:
            out.append(_transition(pid, tids[("transition", tr.patch)], tr, end, t0))
    if any(e.kind in (EventKind.STATE_DECLARED, EventKind.SHADOW) for e in evs):
        out += _klp_spans(sc, pid, tids, t0, end)
    return out


def _shadow_key(obj: int | None, shadow_id: int) -> str:
    """A shadow variable's track: <obj, id>, or the id alone for free_all."""
    return f"id {shadow_id}" if obj is None else f"<{obj:#x}, {shadow_id}>"


def _klp_name(e: Event) -> str:
    """A state or shadow call's instant: the kernel's function, NULL when it gave none."""
    if e.kind == EventKind.STATE_DECLARED:
        return f"{e.patch} declares version {e.version}"
    if e.kind == EventKind.STATE:
        fn = "klp_get_prev_state" if e.op == StateOp.GET_PREV else f"klp_get_state {e.patch}"
        return f"{fn}: {'none' if e.version is None else f'version {e.version}'}"
    op = e.op.value if e.op is not None else "?"
    null = e.addr is None and e.op in (ShadowOp.ALLOC, ShadowOp.GET_OR_ALLOC, ShadowOp.GET)
    return f"klp_shadow_{op}" + (": NULL" if null else "")


def _klp_spans(sc: _Scenario, pid: int, tids: dict[Track, int], t0: int,
               end: int) -> list[dict[str, Any]]:
    """Each patch's hold of a state, each shadow variable's life, the ledger's problems."""
    led = ledger.of(sc.events)
    out = [_complete(pid, tids[("state", str(h.state_id))], f"{h.patch} v{h.version}",
                     "state", h.t0, h.t1, t0,
                     {"patch": h.patch, "state_id": h.state_id, "version": h.version,
                      "taken_over_by": h.successor or None, "to_the_end": h.open_end})
           for h in holders(led, end)]
    leaked = {(k.obj, k.shadow_id, k.alloc_ts_ns) for k in sc.leaks}
    for v in led.variables:
        tid = tids[("shadow", _shadow_key(v.obj, v.shadow_id))]
        leak = (v.obj, v.shadow_id, v.alloc_ts_ns) in leaked
        name = led.names.get(v.obj, hex(v.obj))
        out.append(_complete(
            pid, tid, f"<{name}, {v.shadow_id}>" + (" leaked" if leak else ""), "shadow",
            v.alloc_ts_ns, end if v.freed_ts_ns is None else v.freed_ts_ns, t0,
            {"obj": f"{v.obj:#x}", "shadow_id": v.shadow_id,
             "allocated_by": v.allocated_by or None, "freed_by": v.freed_by or None,
             "leaked": leak}))
    keys = {(known, v.shadow_id): v.obj for v in led.variables
            if (known := led.names.get(v.obj))}
    for p in led.problems:
        obj = keys.get((p.obj, p.shadow_id))
        track = ("shadow", _shadow_key(obj, p.shadow_id))
        if track in tids:
            out.append(_instant(pid, tids[track], str(p.kind), "shadow problem", p.ts_ns, t0,
                                p.to_json()))
    return out


def _call_name(entry: Event) -> str:
    fn = _CALLS[_kind(entry)][1]
    what = entry.patch or entry.object
    return f"{fn} {what}" if what else fn


def _category(kind: str) -> str:
    if kind == "callback":
        return "callback"
    if kind.startswith("module_"):
        return "module"
    if kind in ("patch_object", "unpatch_object"):
        return "klp_object"
    if kind.startswith("step"):
        return "step"
    return "task"


def _target(state: int | None) -> str:
    """A transition's target state, as the event JSON writes it ("" when none is known)."""
    return "" if state is None else "patched" if state == KLP_PATCHED else "unpatched"


def _transition(pid: int, tid: int, tr: story.Transition, end: int,
                t0: int) -> dict[str, Any]:
    """A transition from klp_init_transition() to klp_complete_transition()'s end (or end,
    when it never completed)."""
    target = _target(tr.target)
    name = {"patched": "patching", "unpatched": "unpatching"}.get(target, "transition")
    name += "".join(f", {w}" for w, on in (("reversed", tr.reversed),
                                           ("cancelled", tr.cancelled),
                                           ("forced", tr.forced)) if on)
    args = {"patch": tr.patch, "target": target,
            "final_target": _target(tr.final_target) or target, "tries": tr.tries,
            "reversed": tr.reversed, "cancelled": tr.cancelled, "forced": tr.forced,
            "complete": tr.done is not None, "begun_by": tr.begun_by.name.lower()}
    return _complete(pid, tid, name, "transition", tr.t0, end, t0, args)


def _complete(pid: int, tid: int, name: str, cat: str, begin: int, end: int, t0: int,
              args: dict[str, Any]) -> dict[str, Any]:
    return {"ph": "X", "name": name, "cat": cat, "ts": _us(begin, t0),
            "dur": round((end - begin) / 1000, 3), "pid": pid, "tid": tid, "args": args}


def _instant(pid: int, tid: int, name: str, cat: str, ts: int, t0: int,
             args: dict[str, Any]) -> dict[str, Any]:
    return {"ph": "i", "s": "t", "name": name, "cat": cat, "ts": _us(ts, t0), "pid": pid,
            "tid": tid, "args": args}
