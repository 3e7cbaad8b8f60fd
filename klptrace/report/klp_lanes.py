"""The lanes of a recording's livepatch states and shadow variables (issue 21), in time.

What ledger.py worked out, as report/lanes.py's LaneSpecs (report/timeline.py lays them
out with the others): a lane per state id, a bar for each patch while it holds the state
(from its klp_enable_patch() declaring it until it is gone, or until a cumulative patch
declaring the same id takes it over: Documentation/livepatch/system-state.rst) with its
klp_get_state()/klp_get_prev_state() calls and the compatibility refusals; and a lane
per shadow variable <obj, id>, a bar from its allocation to its free (or to the end of
the recording), a leaked one marked and labelled as such. report/trace_event.py draws
the same holders (holders()).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from klptrace import ledger
from klptrace.events import Event, StateOp
from klptrace.ledger import ShadowLeak
from klptrace.report.lanes import Item, LaneSpec, Span
from klptrace.transcript import state_line

#: shadow variables drawn one lane each; the rest are counted in one lane (a patch may
#: hang one on every object of a big table)
MAX_VARIABLES = 24


@dataclasses.dataclass(frozen=True)
class Holder:
    """patch holds state state_id at version from t0 to t1 (open_end: to the end of the
    recording); successor: the cumulative patch that took it over ("" when none did)."""

    state_id: int
    patch: str
    version: int
    t0: int
    t1: int
    open_end: bool
    successor: str = ""

    @property
    def text(self) -> str:
        then = (f", until {self.successor} took it over" if self.successor else
                ", to the end of the recording" if self.open_end else "")
        return f"{self.patch} holds state {self.state_id} at version {self.version}{then}"


def holders(led: ledger.Ledger, end: int) -> list[Holder]:
    """Who held each declared state when, in time order per id; a patch that
    klp_enable_patch() refused for its states never held one."""
    refused = {r.patch for r in led.refusals}
    by_id: dict[int, list[ledger.State]] = {}
    for st in led.states.values():
        if st.declared_ts_ns is not None and st.version is not None \
                and st.patch not in refused:
            by_id.setdefault(st.state_id, []).append(st)
    out = []
    for sid in sorted(by_id):
        sts = sorted(by_id[sid], key=lambda s: s.declared_ts_ns or 0)
        for st, nxt in zip(sts, [*sts[1:], None], strict=True):
            t0, t1 = st.declared_ts_ns or 0, st.until_ts_ns
            successor = ""
            if nxt is not None and (t1 is None or (nxt.declared_ts_ns or 0) < t1):
                t1, successor = nxt.declared_ts_ns or 0, nxt.patch
            out.append(Holder(sid, st.patch, st.version or 0, t0, end if t1 is None else t1,
                              t1 is None, successor))
    return out


def _call_text(e: Event) -> str:
    op = "get_prev" if e.op == StateOp.GET_PREV else "get"
    found = "none" if e.version is None else f"v{e.version}"
    role = f" ({e.callback.word})" if e.callback else ""
    return f"{op} → {found}{role}"


def _state_lanes(led: ledger.Ledger, end: int) -> list[LaneSpec]:
    lanes: dict[int, LaneSpec] = {}

    def lane(sid: int) -> LaneSpec:
        return lanes.setdefault(sid, LaneSpec("livepatch states", f"state {sid}", "state"))

    for h in holders(led, end):
        spec = lane(h.state_id)
        spec.spans.append(Span(h.t0, h.t1, "state-held", h.text, open_end=h.open_end))
        spec.items.append(Item(h.t0, f"{h.patch} v{h.version}", "declare", "state", h.text))
    for st in led.states.values():
        # a call repeated (a hot path asking) is one mark, its count in the title
        seen: dict[tuple[object, ...], list[Event]] = {}
        for e in st.calls:
            seen.setdefault((e.op, e.version, e.callback), []).append(e)
        for evs in seen.values():
            e, n = evs[0], len(evs)
            times = f" ({n} times)" if n > 1 else ""
            lane(st.state_id).items.append(Item(
                e.ts_ns, f"{st.patch}: {_call_text(e)}{times}", "get",
                "state" if e.version is not None else "state-none", state_line(e) + times))
    for r in led.refusals:
        lane(r.state_id).items.append(Item(r.ts_ns, f"{r.patch} refused (-EINVAL)", "fail",
                                           "fail", r.text))
    for spec in lanes.values():
        spec.items.sort(key=lambda it: it.ts)
    return [lanes[sid] for sid in sorted(lanes)]


def _shadow_lanes(led: ledger.Ledger, leaks: Sequence[ShadowLeak], end: int
                  ) -> list[LaneSpec]:
    leaked = {(k.obj, k.shadow_id): k for k in leaks}
    lanes: dict[tuple[int, int] | int, LaneSpec] = {}
    keys = {(name, v.shadow_id): (v.obj, v.shadow_id) for v in led.variables
            if (name := led.names.get(v.obj))}
    group = "shadow variables"
    for v in led.variables:
        key = (v.obj, v.shadow_id)
        name = f"<{led.names.get(v.obj, hex(v.obj))}, {v.shadow_id}>"
        spec = lanes.setdefault(key, LaneSpec(group, name, "shadow"))
        at = f"{name} at {v.obj:#x}"
        who = f"alloc by {v.allocated_by}" if v.allocated_by else "allocated before"
        spec.items.append(Item(v.alloc_ts_ns, who, "alloc", "shadow", f"{at}: {who}"))
        if v.freed_ts_ns is not None:
            spec.spans.append(Span(v.alloc_ts_ns, v.freed_ts_ns, "shadow",
                                   f"{at}: allocated, then freed by {v.freed_by}"))
            spec.items.append(Item(v.freed_ts_ns, f"freed by {v.freed_by}", "free", "shadow",
                                   f"{at}: freed by {v.freed_by}"))
        elif (k := leaked.get(key)) is not None and k.alloc_ts_ns == v.alloc_ts_ns:
            text = f"leaked: {k.allocated_by} is gone, never freed"
            spec.spans.append(Span(v.alloc_ts_ns, end, "leaked", f"{at}: {text}",
                                   open_end=True))
            spec.items.append(Item(end, "leaked", "fail", "fail", f"shadow leak: {k.text}"))
        else:
            spec.spans.append(Span(v.alloc_ts_ns, end, "shadow",
                                   f"{at}: still allocated at the end", open_end=True))
    for p in led.problems:
        key2: tuple[int, int] | int = keys.get((p.obj, p.shadow_id), p.shadow_id)
        name = f"<{p.obj}, {p.shadow_id}>" if p.obj else f"id {p.shadow_id} (free_all)"
        spec = lanes.setdefault(key2, LaneSpec(group, name, "shadow"))
        what = {ledger.Trouble.DUPLICATE: "duplicate alloc",
                ledger.Trouble.FREE_OF_NOTHING: "free of nothing",
                ledger.Trouble.GET_OF_FREED: "get after free"}[p.kind]
        times = f" ({p.count} times)" if p.count > 1 else ""
        spec.items.append(Item(p.ts_ns, what + times, "fail", "fail", p.text))
    out = list(lanes.values())
    for spec in out:
        spec.items.sort(key=lambda it: it.ts)
    # the lanes that say something wrong first, then the others up to MAX_VARIABLES
    marked = [s for s in out if any(it.cls == "fail" for it in s.items)]
    quiet = [s for s in out if s not in marked]
    room = max(0, MAX_VARIABLES - len(marked))
    shown = {id(s) for s in marked + quiet[:room]}
    rest = quiet[room:]
    lanes_out = [s for s in out if id(s) in shown]
    if rest:
        more = LaneSpec(group, f"{len(rest)} more", "shadow")
        t = min(it.ts for s in rest for it in s.items)
        more.items.append(Item(t, f"{len(rest)} more shadow variables, none leaked (every "
                                  "one is in --format trace-event)", "alloc", "shadow",
                               ", ".join(s.name for s in rest[:50])))
        lanes_out.append(more)
    return lanes_out


def klp_lanes(events: Sequence[Event], leaks: Sequence[ShadowLeak] | None = None
              ) -> list[LaneSpec]:
    """The states' and the shadow variables' lanes of one recording; leaks: the verdict's
    (None: the ledger's own, as for a watch that has no verdict)."""
    if not events:
        return []
    led = ledger.of(events)
    if not led.states and not led.variables and not led.problems and not led.refusals:
        return []
    end = events[-1].ts_ns
    return (_state_lanes(led, end)
            + _shadow_lanes(led, led.leaks if leaks is None else leaks, end))
