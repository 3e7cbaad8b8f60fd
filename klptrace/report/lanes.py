"""What each lane of a scenario's timeline holds, in time (nanoseconds), before pixels.

The story of the recording (story.py) in lanes: the steps; the modules (their
COMING, LIVE and GOING states); per livepatch its transitions (a bar per leg,
a tick per try) and a lane per klp_object with its callbacks; and the tasks
that did not switch. Each mark has a label and a title; report/timeline.py
turns the lanes into pixels.
"""

from __future__ import annotations

import dataclasses
import errno
from collections.abc import Sequence

from klptrace import story
from klptrace.events import REASONS, Callback, Event, EventKind
from klptrace.stall_report import StallReport, StallTask
from klptrace.transcript import callback_line


def errname(ret: int) -> str:
    """A negative errno as the kernel names it: -19 is -ENODEV."""
    name = errno.errorcode.get(-ret) if ret < 0 else None
    return f"-{name}" if name else str(ret)


def duration(ns: float) -> str:
    """A duration for a label: 0.4 ms, 137 ms, 1.32 s."""
    if ns < 1e6:
        return f"{ns / 1e6:.1f} ms"
    if ns < 1e9:
        return f"{ns / 1e6:.0f} ms"
    return f"{ns / 1e9:.2f} s"


@dataclasses.dataclass
class Item:
    """A mark at ts with its label (text), its shape and class, and its title."""

    ts: int
    text: str
    shape: str
    cls: str
    title: str


@dataclasses.dataclass
class Span:
    """A bar from t0 to t1; open_end: still going when the recording ended."""

    t0: int
    t1: int
    cls: str
    title: str
    open_end: bool = False


@dataclasses.dataclass
class LaneSpec:
    """A lane's marks, bars and ticks, in time."""

    group: str
    name: str
    kind: str
    items: list[Item] = dataclasses.field(default_factory=list)
    spans: list[Span] = dataclasses.field(default_factory=list)
    ticks: list[tuple[int, str, str]] = dataclasses.field(default_factory=list)  # ts, cls, title

    @property
    def has_band(self) -> bool:
        return bool(self.spans or self.ticks)


def _segment_text(s: story.Leg) -> str:
    n = len(s.tries)
    head = s.direction + (f", {s.after}" if s.after else "")
    end = f" → {s.end}" if s.end else " → still in transition when the recording ended"
    return f"{head} · {n} {'try' if n == 1 else 'tries'} · {duration(s.t1 - s.t0)}{end}"


def _steps_lane(events: Sequence[Event]) -> LaneSpec:
    lane = LaneSpec("steps", "scenario", "steps")
    for e in events:
        if e.kind == EventKind.STEP:
            lane.items.append(Item(e.ts_ns, f"% {e.detail}", "step", "step", e.detail))
        elif e.kind == EventKind.STEP_RESULT:
            lane.items.append(Item(e.ts_ns, e.detail or f"failed: {e.ret}", "fail", "fail",
                                    e.detail))
    return lane


def _module_lane(life: story.ModuleLife) -> LaneSpec:
    m = life.name
    lane = LaneSpec("modules", m + (" (livepatch)" if life.livepatch else ""), "module")
    lane.spans = [Span(p.t0, p.t1, f"mod-{p.state.name.lower()}", f"{m}: {p.state.name}",
                        open_end=p.open_end) for p in life.phases]
    for e in life.events:
        k = e.kind
        if k == EventKind.MODULE_COMING:
            lane.items.append(Item(e.ts_ns, "coming", "coming", "module",
                                    f"klp_module_coming({m})"))
        elif k == EventKind.MODULE_COMING_RET and e.ret:
            lane.items.append(Item(e.ts_ns, f"refused: {errname(e.ret)}", "fail", "fail",
                                    f"klp_module_coming({m}) returned {e.ret}"))
        elif k == EventKind.MODULE_INIT:
            lane.ticks.append((e.ts_ns, "init", f"{m}: do_init_module"))
        elif k == EventKind.MODULE_INIT_RET and e.ret:
            lane.items.append(Item(e.ts_ns, f"init failed: {errname(e.ret)}", "fail",
                                    "fail", f"{m}: do_init_module returned {e.ret}"))
        elif k == EventKind.MODULE_GOING:
            lane.items.append(Item(e.ts_ns, "going", "going", "module",
                                    f"klp_module_going({m})"))
    return lane


def _callback_text(e: Event) -> tuple[str, str, str]:
    """(label, shape, class) of a callback mark."""
    role = e.callback.word if e.callback else "callback"
    st = e.module_state
    text = role + (f" ({st.name})" if st is not None else "")
    if e.callback == Callback.PRE_PATCH and e.ret:
        return f"{text} → {errname(e.ret)}, failed", role, "fail"
    return text, role, role


def _patch_lanes(sto: story.Story, patch: str) -> list[LaneSpec]:
    group = f"livepatch {patch}"
    trans = LaneSpec(group, "transition", "transition")
    for s in sto.legs[patch]:
        cls = f"{s.direction}{' cancelled' if s.after == story.After.CANCELLED else ''}"
        trans.spans.append(Span(s.t0, s.t1, cls, _segment_text(s), open_end=not s.end))
        trans.items.append(Item(s.t0, _segment_text(s), "swatch", cls, _segment_text(s)))
        for i, t in enumerate(s.tries, 1):
            trans.ticks.append((t.ts, "try", f"{s.direction}: try {i}"))
    for m in sto.moments[patch]:
        if m.event.kind == EventKind.TRANSITION_FORCE:
            trans.items.append(Item(m.event.ts_ns, "forced", "forced", "fail",
                                     "klp_force_transition: every task marked switched"))
        elif m.tried is not None and m.tried.signals:
            trans.items.append(Item(m.event.ts_ns, "fake signals", "signal", "signal",
                                     "klp_send_signals: fake signals to the remaining tasks"))
    objects: list[LaneSpec] = []
    for obj, evs in sto.objects[patch].items():
        lane = LaneSpec(group, obj or "?", "object")
        objects.append(lane)
        for e in evs:
            if e.kind == EventKind.CALLBACK:
                text, shape, cls = _callback_text(e)
                lane.items.append(Item(e.ts_ns, text, shape, cls, callback_line(e)))
            elif e.kind == EventKind.PATCH_OBJECT and e.ret:
                lane.items.append(Item(e.ts_ns, f"patch failed: {errname(e.ret)}", "fail",
                                        "fail", f"klp_patch_object({e.object}) returned {e.ret}"))
            else:
                word = "patched" if e.kind == EventKind.PATCH_OBJECT else "unpatched"
                fn = "klp_patch_object" if word == "patched" else "klp_unpatch_object"
                lane.items.append(Item(e.ts_ns, word, "object", "object",
                                        f"{fn}({e.object})"))
    lanes = [trans] if trans.spans else []
    return lanes + objects


def _reason(ret: int | None, unknown: object) -> object:
    """klp_check_and_switch_task()'s ret in words (unknown for a code not known here)."""
    return REASONS.get(ret or 0, unknown)


def _how_it_sleeps(t: StallTask | None) -> str:
    """What the stall report says of a task's kind and sleep ('' for a report saved
    before it told them, so such a lane reads as it did)."""
    if t is None or t.kind is None or t.sleep is None:
        return ""
    return f" · {t.kind}, {t.sleep}"


def _task_lanes(sto: story.Story, stall: StallReport | None) -> list[LaneSpec]:
    reported = {t.tid: t for t in stall.tasks} if stall else {}
    lanes = []
    for task in sto.stalled:
        e0, evs = task.last, task.events
        group = f"tasks not switched ({e0.patch})" if e0.patch else "tasks not switched"
        lane = LaneSpec(group, f"{e0.comm}:{task.tid}", "task")
        reason = _reason(e0.ret, f"other ({e0.ret})")
        # until the next try (which found it switched: it is not recorded again) or the
        # end of its leg of the transition
        how = ("switched by the next try" if task.switched else
               (task.leg.end or "still in transition") if task.leg is not None else "")
        still = task.leg is not None and not task.switched and not task.leg.end
        n = len(evs)
        text = (f"{reason}{' ' + e0.object + '()' if e0.object else ''} · not switched at "
                f"{n} {'try' if n == 1 else 'tries'} · held it "
                f"{duration(task.until - evs[0].ts_ns)}" + (f" → {how}" if how else "")
                + _how_it_sleeps(reported.get(task.tid)))
        lane.spans.append(Span(evs[0].ts_ns, task.until, "blocked", text, open_end=still))
        lane.ticks += [(e.ts_ns, "task", f"not switched: {_reason(e.ret, e.ret)}")
                       for e in evs]
        lane.items.append(Item(evs[0].ts_ns, text, "task", "blocked", text))
        lanes.append(lane)
    # tasks the stall report names (from /proc) that BPF did not see at a try:
    # not switched since the transition started, for blocking_s at the report
    patch = stall.patch if stall else ""
    start = sto.started(patch)
    seen = {task.tid for task in sto.stalled}
    for tid, t in reported.items():
        if tid in seen:
            continue
        lane = LaneSpec(f"tasks not switched ({patch})", f"{t.comm}:{tid}", "task")
        fn = f" {t.function}()" if t.function else ""
        text = f"{t.reason}{fn} · in the stall report" + _how_it_sleeps(t)
        if t.blocking_s is not None and start is not None:
            text += f" · not switched for {t.blocking_s:.1f} s"
            end_ns = start + int(t.blocking_s * 1e9)
            lane.spans.append(Span(start, min(sto.last, end_ns), "blocked", text,
                                   open_end=end_ns > sto.last))
        lane.items.append(Item(start if start is not None else sto.last, text, "task",
                               "blocked", text))
        lanes.append(lane)
    return lanes


def lanes_of(events: Sequence[Event], stall: StallReport | None = None,
             flags: Sequence[tuple[int, str]] = ()) -> list[LaneSpec]:
    """What each lane holds, in time: steps (and flags: (ts, text) such as the first
    divergence), modules, each patch, the tasks."""
    if not events:
        return []
    sto = story.of(events)
    steps = _steps_lane(events)
    for ts, text in flags:
        steps.items.append(Item(ts, text, "fail", "fail", text))
    steps.items.sort(key=lambda it: it.ts)
    out = [steps]
    out += [_module_lane(life) for life in sto.modules]
    for p in sto.patches:
        out += _patch_lanes(sto, p)
    out += _task_lanes(sto, stall)
    return [lane for lane in out if lane.items or lane.has_band]
