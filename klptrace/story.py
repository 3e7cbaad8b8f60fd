"""The story of a recording, worked out once: what every view of it tells.

From a scenario's events (pure, no I/O): each livepatch's transitions, as
legs in one direction split where klp_reverse_transition() or
klp_cancel_transition() turned them, each with its tries
(klp_try_complete_transition) and the tasks found not switched at each, and
as whole transitions from their first event to klp_complete_transition()'s
return; each module's life from klp_module_coming() to free_module(); each
klp_object's callbacks; and the tasks that did not switch, with how long each
held its transition. The timeline (report/timeline.py), the trace-event and
HTML reports and `klptrace stall` lay this out, each its own way.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence

from klptrace.events import (
    REASONS,
    SIGNALS_TIMEOUT,
    Direction,
    Event,
    EventKind,
    ModuleState,
    Reason,
)


class After(enum.StrEnum):
    """How a leg of a transition began: afresh, or where the one before it turned."""

    FRESH = ""
    REVERSED = "reversed"
    CANCELLED = "cancelled"


class End(enum.StrEnum):
    """How a leg of a transition ended; OPEN: still in transition when the recording ended."""

    OPEN = ""
    COMPLETE = "complete"
    REVERSED = "reversed"
    CANCELLED = "cancelled"


@dataclasses.dataclass(frozen=True)
class Try:
    """One klp_try_complete_transition() and the tasks it found not switched."""

    ts: int
    number: int  # the kernel's count, from 1
    blocked: tuple[Event, ...] = ()  # the first TASK_BLOCKED of each task, after this try

    @property
    def signals(self) -> bool:
        """Whether the kernel sent fake signals to the remaining tasks at this try."""
        before = self.number - 1
        return bool(before) and before % SIGNALS_TIMEOUT == 0


@dataclasses.dataclass(frozen=True)
class Leg:
    """A stretch of one patch's transition in one direction."""

    patch: str
    t0: int
    t1: int
    direction: Direction
    after: After  # how this stretch began
    end: End
    tries: tuple[Try, ...] = ()


@dataclasses.dataclass(frozen=True)
class Transition:
    """One patch's transition, from its first event to klp_complete_transition()'s return
    (done: the index of that TRANSITION_DONE in the events; None: it never returned)."""

    patch: str
    begun_by: EventKind
    t0: int
    done: int | None
    t1: int | None
    target: int | None  # the first event's target state
    final_target: int | None  # the last target state an event of it named
    tries: int  # how many times the kernel tried to complete it
    reversed: bool  # klp_reverse_transition() returned
    cancelled: bool
    forced: bool


@dataclasses.dataclass(frozen=True)
class Moment:
    """A turn of a patch's transitions: start, a try, reverse(d), force or done."""

    event: Event
    tried: Try | None = None  # for a try


@dataclasses.dataclass(frozen=True)
class Phase:
    """A module in one state, t0 to t1; open_end: still so when the recording ended."""

    state: ModuleState
    t0: int
    t1: int
    open_end: bool = False


@dataclasses.dataclass(frozen=True)
class ModuleLife:
    """A module from klp_module_coming() to free_module(), or as much of it as was seen."""

    name: str
    livepatch: bool
    phases: tuple[Phase, ...]
    events: tuple[Event, ...]  # its module events, in order


@dataclasses.dataclass(frozen=True)
class Stalled:
    """A task found not switched: its TASK_BLOCKED events, and until when it held the
    transition: the next try (switched: it was not found again) or the leg's end."""

    tid: int
    events: tuple[Event, ...]
    leg: Leg | None  # the leg of its last TASK_BLOCKED (None: of no transition recorded)
    until: int
    switched: bool

    @property
    def last(self) -> Event:
        """The last time it was found not switched."""
        return self.events[-1]

    @property
    def reason(self) -> Reason | None:
        """The kernel's reason at that time (None: a code this klptrace does not know)."""
        return REASONS.get(self.last.ret or 0)


@dataclasses.dataclass(frozen=True)
class Story:
    """Everything the views of a recording tell, in the kernel's order."""

    first: int  # ts of the first and the last event
    last: int
    patches: tuple[str, ...]  # in the order the events first name them
    legs: Mapping[str, tuple[Leg, ...]]
    moments: Mapping[str, tuple[Moment, ...]]
    transitions: tuple[Transition, ...]  # in the order they began
    modules: tuple[ModuleLife, ...]
    objects: Mapping[str, Mapping[str, tuple[Event, ...]]]  # patch -> klp_object -> events
    stalled: tuple[Stalled, ...]  # in the order each was first found

    def started(self, patch: str) -> int | None:
        """When the patch's first transition started (or was reversed) in the recording."""
        return next((m.event.ts_ns for m in self.moments.get(patch, ()) if m.event.kind in (
            EventKind.TRANSITION_START, EventKind.TRANSITION_REVERSED)), None)


def of(events: Sequence[Event]) -> Story:
    """The story of events (one scenario's, in the order the kernel produced them)."""
    first, last = (events[0].ts_ns, events[-1].ts_ns) if events else (0, 0)
    patches = _patches(events)
    legs, moments = {}, {}
    for p in patches:
        legs[p], moments[p] = _legs(events, p, last)
    return Story(first, last, tuple(patches), legs, moments, _transitions(events),
                 _modules(events, first, last), {p: _objects(events, p) for p in patches},
                 _stalled(events, legs))


def _patches(events: Sequence[Event]) -> list[str]:
    """The livepatches named by the events, in the order they first appear."""
    seen: dict[str, None] = {}
    for e in events:
        if e.patch and e.kind != EventKind.STEP:
            seen.setdefault(e.patch, None)
    return list(seen)


_MOMENTS = (EventKind.TRANSITION_START, EventKind.TRANSITION_TRY, EventKind.TRANSITION_REVERSE,
            EventKind.TRANSITION_REVERSED, EventKind.TRANSITION_FORCE, EventKind.TRANSITION_DONE)


@dataclasses.dataclass
class _Open:
    """A leg being read."""

    t0: int
    direction: Direction
    after: After
    tries: list[int] = dataclasses.field(default_factory=list)  # indices into the tries


def _legs(events: Sequence[Event], patch: str,
          last: int) -> tuple[tuple[Leg, ...], tuple[Moment, ...]]:
    """The patch's legs and the turns of its transitions."""
    tries: list[tuple[int, int, list[Event]]] = []  # ts, number, tasks found after it
    ends: list[tuple[_Open, int, End]] = []
    turns: list[tuple[Event, int | None]] = []  # the event, its try
    cur: _Open | None = None
    seen: set[int] = set()

    def close(ts: int, end: End) -> None:
        nonlocal cur
        if cur is not None:
            ends.append((cur, ts, end))
        cur = None

    for e in events:
        k = e.kind
        if k == EventKind.TASK_BLOCKED:
            # found not switched by the patch's latest try (the kernel runs one
            # transition at a time); counted once per task and try
            if tries and e.tid not in seen:
                seen.add(e.tid)
                tries[-1][2].append(e)
            continue
        if e.patch != patch:
            continue
        if k in _MOMENTS:
            turns.append((e, len(tries) if k == EventKind.TRANSITION_TRY else None))
        if k in (EventKind.TRANSITION_INIT, EventKind.TRANSITION_START) and cur is None:
            cur = _Open(e.ts_ns, Direction.of(e.state), After.FRESH)
        elif k == EventKind.TRANSITION_TRY:
            if cur is None:  # recorded from the middle of a transition
                cur = _Open(e.ts_ns, Direction.of(e.state), After.FRESH)
            cur.tries.append(len(tries))
            tries.append((e.ts_ns, (e.ret or 0) + 1, []))
            seen = set()
        elif k == EventKind.TRANSITION_REVERSE:
            old = cur.direction if cur is not None else Direction.of(e.state)
            close(e.ts_ns, End.REVERSED)
            cur = _Open(e.ts_ns, old.reverse, After.REVERSED)
        elif k == EventKind.TRANSITION_CANCEL:
            close(e.ts_ns, End.CANCELLED)
            cur = _Open(e.ts_ns, Direction.UNPATCHING, After.CANCELLED)
        elif k == EventKind.TRANSITION_DONE:
            if cur is None:
                cur = _Open(e.ts_ns, Direction.of(e.state), After.FRESH)
            close(e.ts_ns, End.COMPLETE)
    close(last, End.OPEN)
    done = [Try(ts, n, tuple(blocked)) for ts, n, blocked in tries]
    legs = tuple(Leg(patch, o.t0, t1, o.direction, o.after, end, tuple(done[i] for i in o.tries))
                 for o, t1, end in ends)
    return legs, tuple(Moment(e, done[i] if i is not None else None) for e, i in turns)


def _target(e: Event) -> int | None:
    """The target state a transition event names (as its JSON's `target`)."""
    return e.state if e.kind.name.startswith("TRANSITION") else None


@dataclasses.dataclass
class _Reading:
    """A transition being read (Transition's fields, mutable)."""

    patch: str
    begun_by: EventKind
    t0: int
    target: int | None
    done: int | None = None
    t1: int | None = None
    final_target: int | None = None
    tries: int = 0
    reversed: bool = False
    cancelled: bool = False
    forced: bool = False

    def read(self) -> Transition:
        return Transition(self.patch, self.begun_by, self.t0, self.done, self.t1, self.target,
                          self.final_target, self.tries, self.reversed, self.cancelled,
                          self.forced)


def _transitions(events: Sequence[Event]) -> tuple[Transition, ...]:
    """Each patch's transitions, first event to klp_complete_transition()'s return."""
    out: list[_Reading] = []
    open_: dict[str, _Reading] = {}
    for i, e in enumerate(events):
        k = e.kind
        if not (k.name.startswith("TRANSITION") or k == EventKind.UNPATCH_OBJECTS):
            continue
        tr = open_.get(e.patch)
        if tr is None:
            tr = open_[e.patch] = _Reading(e.patch, k, e.ts_ns, _target(e))
            out.append(tr)
        if _target(e) is not None:
            tr.final_target = _target(e)
        tr.tries += k == EventKind.TRANSITION_TRY
        tr.reversed = tr.reversed or k == EventKind.TRANSITION_REVERSED
        tr.cancelled = tr.cancelled or k == EventKind.TRANSITION_CANCEL
        tr.forced = tr.forced or k == EventKind.TRANSITION_FORCE
        if k == EventKind.TRANSITION_DONE:
            tr.done, tr.t1 = i, e.ts_ns
            del open_[e.patch]
    return tuple(tr.read() for tr in out)


_MODULE_KINDS = (EventKind.MODULE_COMING, EventKind.MODULE_COMING_RET, EventKind.MODULE_INIT,
                 EventKind.MODULE_INIT_RET, EventKind.MODULE_GOING, EventKind.MODULE_FREE)


def _modules(events: Sequence[Event], first: int, last: int) -> tuple[ModuleLife, ...]:
    """Each module's states, from its module events."""
    phases: dict[str, list[Phase]] = {}
    mine: dict[str, list[Event]] = {}
    livepatch: dict[str, bool] = {}
    state: dict[str, tuple[ModuleState, int]] = {}  # module -> (its state, since when)

    def phase(m: str, ts: int, new: ModuleState | None) -> None:
        if m in state:
            old, since = state.pop(m)
            phases[m].append(Phase(old, since, ts))
        if new is not None:
            state[m] = (new, ts)

    for e in events:
        if e.kind not in _MODULE_KINDS or not e.object:
            continue
        m, k = e.object, e.kind
        if m not in mine:
            mine[m], phases[m], livepatch[m] = [], [], e.livepatch
            if k not in (EventKind.MODULE_COMING, EventKind.MODULE_FREE):
                state[m] = (ModuleState.LIVE, first)  # loaded before the recording began
        mine[m].append(e)
        if k == EventKind.MODULE_COMING:
            phase(m, e.ts_ns, ModuleState.COMING)
        elif k == EventKind.MODULE_COMING_RET and e.ret:
            # a refused module is freed on load_module()'s error path (bug_cleanup in
            # kernel/module/main.c), never by free_module(): its load ends here
            phase(m, e.ts_ns, None)
        elif k == EventKind.MODULE_INIT_RET:
            if not e.ret and state.get(m, (None, 0))[0] == ModuleState.COMING:
                phase(m, e.ts_ns, ModuleState.LIVE)
        elif k == EventKind.MODULE_GOING:
            phase(m, e.ts_ns, ModuleState.GOING)
        elif k == EventKind.MODULE_FREE:
            phase(m, e.ts_ns, None)
    for m, (st, since) in state.items():
        phases[m].append(Phase(st, since, last, open_end=True))
    return tuple(ModuleLife(m, livepatch[m], tuple(phases[m]), tuple(evs))
                 for m, evs in mine.items())


def _objects(events: Sequence[Event], patch: str) -> dict[str, tuple[Event, ...]]:
    """The patch's klp_objects: their callbacks and klp_(un)patch_object, in order."""
    out: dict[str, list[Event]] = {}
    for e in events:
        if e.patch == patch and e.kind in (EventKind.CALLBACK, EventKind.PATCH_OBJECT,
                                           EventKind.UNPATCH_OBJECT):
            out.setdefault(e.object, []).append(e)
    return {o: tuple(evs) for o, evs in out.items()}


def _stalled(events: Sequence[Event],
             legs: Mapping[str, tuple[Leg, ...]]) -> tuple[Stalled, ...]:
    """The tasks found not switched, and until when each held its transition."""
    blocked: dict[int, list[Event]] = {}
    for e in events:
        if e.kind == EventKind.TASK_BLOCKED:
            blocked.setdefault(e.tid, []).append(e)
    out = []
    for tid, evs in blocked.items():
        ts = evs[-1].ts_ns
        leg = next((s for s in legs.get(evs[-1].patch, ()) if s.t0 <= ts <= s.t1), None)
        later = [t.ts for t in leg.tries if t.ts > ts] if leg is not None else []
        until = later[0] if later else leg.t1 if leg is not None else ts
        out.append(Stalled(tid, tuple(evs), leg, until, bool(later)))
    return tuple(out)
