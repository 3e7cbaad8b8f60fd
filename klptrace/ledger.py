"""The ledger of a recording's livepatch states and shadow variables (issue 21): what its
STATE, STATE_DECLARED and SHADOW events mean, worked out once (pure, no I/O).

Shadow variables (kernel/livepatch/shadow.c, Documentation/livepatch/shadow-vars.rst) are
kept per <obj, id>, as the kernel's hash table keeps them (klp_shadow_match()):

- klp_shadow_alloc() of a live <obj, id> allocates nothing: __klp_shadow_get_or_alloc()
  with warn_on_exist WARNs "Duplicate shadow variable <%p, %lx>" and returns NULL. A
  problem: the caller believed it was not there.
- klp_shadow_get_or_alloc() of a live one returns it; otherwise it allocates, as alloc.
  A NULL return of either (no memory, or the ctor failed: "Failed to construct shadow
  variable") leaves nothing allocated.
- klp_shadow_free() and klp_shadow_free_all() free what matches and say nothing when
  nothing does. Freeing nothing is a problem: the caller lost track of its variables (a
  double free, or a free by a patch that never allocated them).
- klp_shadow_get() of an <obj, id> that was freed (and not allocated again) returns NULL:
  the code still looks for data it was told is gone. A problem.

The ledger knows "nothing is there" only for what it saw: an <obj, id> it saw freed, or
any one at all when every module that called the shadow API came (klp_module_coming) while
it recorded. A variable allocated before the recording began is not claimed as nothing.

States (kernel/livepatch/state.c, Documentation/livepatch/system-state.rst) are kept per
(patch, state id): the version a patch declares when it is enabled (STATE_DECLARED), and
its klp_get_state()/klp_get_prev_state() calls. klp_enable_patch() (core.c) refuses with
-EINVAL, logging "Livepatch patch (%s) is not compatible with the already installed
livepatches.", a patch that klp_is_patch_compatible() rejects: for a state of an installed
patch, klp_is_state_compatible() wants the new patch's state of that id at the same version
or newer; a cumulative (replace) patch must declare it at all.

A shadow variable still allocated at the end is a leak when the module that allocated it
(the event's `caller`) is gone (free_module(), or refused at load: story.py's module lives)
and no livepatch still installed declares a state of its id: system-state.rst hands such
data over with the state (a state's id names the shadow variables it owns, by convention
of the kernel's own tests), so a variable whose id is an installed patch's state is that
patch's to free.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping, Sequence
from typing import Any

from klptrace import fields as f
from klptrace import story
from klptrace.events import KLP_PATCHED, Event, EventKind, ShadowOp, StateOp

#: what klp_enable_patch() returns when klp_is_patch_compatible() refuses (-EINVAL)
EINVAL = -22


def kernel_words(patch: str) -> str:
    """klp_enable_patch()'s pr_err (core.c) for a patch whose states are incompatible."""
    return (f"livepatch: Livepatch patch ({patch}) is not compatible with the already "
            "installed livepatches.")


class Trouble(enum.StrEnum):
    """A shadow variable call that went against the API's rules (the module's docstring)."""

    DUPLICATE = "duplicate alloc"
    FREE_OF_NOTHING = "free of nothing"
    GET_OF_FREED = "get of a freed one"


def object_names(events: Sequence[Event]) -> dict[int, str]:
    """Each shadow variable's object named by first appearance: obj#1, obj#2... Addresses
    differ per boot; these names let an expectation be written once."""
    names: dict[int, str] = {}
    for e in events:
        if e.kind == EventKind.SHADOW and e.obj is not None and e.obj not in names:
            names[e.obj] = f"obj#{len(names) + 1}"
    return names


def by(e: Event) -> str:
    """Who made a call: "<caller>" and, inside a traced callback, "(<role>)"."""
    who = e.caller or "?"
    if e.callback is None:
        return who
    where = "" if e.object in ("", "vmlinux") else f" {e.object}"
    return f"{who} ({e.callback.word}{where})"


@dataclasses.dataclass(frozen=True)
class ShadowProblem:
    """A Trouble: its call (the first, for a get repeated count times), and why."""

    kind: Trouble
    ts_ns: int
    shadow_id: int
    obj: str  # the object's name (obj#N); "" for free_all
    by: str
    count: int = 1

    @property
    def text(self) -> str:
        what = f"<{self.obj}, {self.shadow_id}>" if self.obj else f"id {self.shadow_id}"
        times = f" ({self.count} times)" if self.count > 1 else ""
        return {
            Trouble.DUPLICATE: f"klp_shadow_alloc() of shadow variable {what} by {self.by}, "
                               "which was already allocated: the kernel WARNs \"Duplicate "
                               "shadow variable\" and returns NULL (shadow.c)",
            Trouble.FREE_OF_NOTHING: f"klp_shadow_free{'' if self.obj else '_all'}() of "
                                     f"{what} by {self.by} freed nothing: no such shadow "
                                     "variable was allocated",
            Trouble.GET_OF_FREED: f"klp_shadow_get() of shadow variable {what} by {self.by} "
                                  f"after it was freed{times}: it returns NULL",
        }[self.kind]

    def to_json(self) -> dict[str, Any]:
        return {"kind": str(self.kind), "ts_ns": self.ts_ns, "shadow_id": self.shadow_id,
                "obj": self.obj, "by": self.by, "count": self.count, "text": self.text}

    @classmethod
    def from_json(cls, d: Any, where: str) -> ShadowProblem:
        o = f.shaped(d, {"obj": "str", "by": "str"}, where)
        return cls(f.choice(o, "kind", Trouble, where), _needed(o, "ts_ns", where),
                   _needed(o, "shadow_id", where), f.text(o, "obj", where),
                   f.text(o, "by", where), f.count(o, "count", where, 1))


@dataclasses.dataclass(frozen=True)
class ShadowLeak:
    """A shadow variable left allocated by a module that is gone (the module's docstring)."""

    obj: int
    shadow_id: int
    allocated_by: str
    alloc_ts_ns: int

    @property
    def text(self) -> str:
        """The leak for a person: the object's address, the id, who allocated it and when."""
        return (f"<{self.obj:#x}, {self.shadow_id}> allocated by {self.allocated_by} "
                f"at {self.alloc_ts_ns} ns")

    def to_json(self) -> dict[str, Any]:
        # an address is a hex string, as in events (JSON numbers lose 64-bit precision)
        return {"obj": f"{self.obj:#x}", "shadow_id": self.shadow_id,
                "allocated_by": self.allocated_by, "alloc_ts_ns": self.alloc_ts_ns}

    @classmethod
    def from_json(cls, d: Any, where: str) -> ShadowLeak:
        o = f.shaped(d, {"allocated_by": "str"}, where)
        obj = o.get("obj")
        if not isinstance(obj, str) or not _ADDRESS.fullmatch(obj):
            raise f.RecordingError(f"{where}: 'obj' must be an address like \"0xffff8880...\"")
        return cls(int(obj, 16), _needed(o, "shadow_id", where), f.text(o, "allocated_by", where),
                   _needed(o, "alloc_ts_ns", where))


_ADDRESS = re.compile(r"0x[0-9a-f]{1,16}")  # as events.py writes one

#: how many leaks brief_lines() names one by one
BRIEF_LEAKS = 30


def brief_lines(leaks: Sequence[ShadowLeak]) -> list[str]:
    """A result's shadow leaks as the short block that KTAP diagnostics, JUnit bodies and
    a KCIDB log excerpt carry: one line per leak (its address, which the verdict's
    problems name only as obj#N), the first BRIEF_LEAKS of them. Each line starts with
    klptrace's words, never a module's name, as stall.brief_lines() does. (The shadow
    problems need no block: their texts are among the verdict's problems.)"""
    out = [f"shadow leak: {k.text}, never freed" for k in leaks[:BRIEF_LEAKS]]
    if len(leaks) > BRIEF_LEAKS:
        out.append(f"shadow leaks: {len(leaks) - BRIEF_LEAKS} more (--format json lists "
                   "every one)")
    return out


def _needed(o: Any, key: str, where: str) -> int:
    if key not in o:
        raise f.RecordingError(f"{where}: needs '{key}'")
    return f.count(o, key, where)


@dataclasses.dataclass(frozen=True)
class Refusal:
    """klp_enable_patch() refusing patch: installed's state state_id is at
    installed_version, patch declares it at version (None: not at all, which only a
    cumulative patch is refused for)."""

    patch: str
    state_id: int
    version: int | None
    installed: str
    installed_version: int
    ts_ns: int

    @property
    def text(self) -> str:
        mine = (f"declares it at version {self.version}" if self.version is not None
                else "does not declare it (a cumulative patch must)")
        return (f"{self.patch} refused (-EINVAL): {self.installed} has state {self.state_id} "
                f"at version {self.installed_version}; {self.patch} {mine}")


@dataclasses.dataclass
class Variable:
    """One shadow variable: who allocated it and when, and when it was freed by whom."""

    obj: int
    shadow_id: int
    allocated_by: str  # "" when allocated before the recording began
    alloc_ts_ns: int
    freed_ts_ns: int | None = None
    freed_by: str = ""


@dataclasses.dataclass(frozen=True)
class State:
    """A patch's state: the version it declares (None: none recorded), and the STATE
    events of it (klp_get_state() of the patch, klp_get_prev_state() while it is the
    patch in transition), until when the patch was installed (None: to the end)."""

    patch: str
    state_id: int
    version: int | None
    declared_ts_ns: int | None
    calls: tuple[Event, ...]
    until_ts_ns: int | None


@dataclasses.dataclass(frozen=True)
class Ledger:
    """Every shadow variable and state of a recording, what went wrong, what was left."""

    variables: tuple[Variable, ...]  # in the order they were allocated (or first seen)
    states: Mapping[tuple[str, int], State]
    problems: tuple[ShadowProblem, ...]
    refusals: tuple[Refusal, ...]
    leaks: tuple[ShadowLeak, ...]
    installed: tuple[str, ...]  # the patches still installed at the end
    names: Mapping[int, str]


class _Walk:
    """A ledger being read, event by event."""

    def __init__(self, events: Sequence[Event]) -> None:
        self.names = object_names(events)
        self.live: dict[tuple[int, int], Variable] = {}
        self.dead: dict[tuple[int, int], Variable] = {}
        self.all: list[Variable] = []
        self.problems: list[ShadowProblem] = []
        self.gets_of_freed: dict[tuple[int, int], int] = {}  # index into problems
        self.complete = _complete(events)
        self.declared: dict[str, dict[int, tuple[int, int]]] = {}  # patch: id: version, ts
        self.calls: dict[tuple[str, int], list[Event]] = {}
        self.installed: dict[str, None] = {}  # klp_patches, in order
        self.until: dict[str, int] = {}
        self.transition = ""  # the patch whose transition is completing
        self.refusals: list[Refusal] = []

    def trouble(self, kind: Trouble, e: Event, key: tuple[int, int] | None) -> None:
        obj = self.names.get(key[0], "") if key else ""
        self.problems.append(ShadowProblem(kind, e.ts_ns, e.shadow_id or 0, obj, by(e)))

    def shadow(self, e: Event) -> None:
        sid = e.shadow_id or 0
        if e.op == ShadowOp.FREE_ALL:
            mine = [k for k in self.live if k[1] == sid]
            if not mine and (self.complete or any(k[1] == sid for k in self.dead)):
                self.trouble(Trouble.FREE_OF_NOTHING, e, None)
            for k in mine:
                self.free(k, e)
            return
        if e.obj is None:
            return
        key = (e.obj, sid)
        if e.op == ShadowOp.ALLOC and key in self.live:
            self.trouble(Trouble.DUPLICATE, e, key)
        elif e.op in (ShadowOp.ALLOC, ShadowOp.GET_OR_ALLOC):
            if key not in self.live and e.addr is not None:
                self.born(key, e, e.caller)
        elif e.op == ShadowOp.GET:
            if e.addr is not None and key not in self.live:
                self.born(key, e, "")  # allocated before the recording began
            elif e.addr is None and key in self.dead:
                if key in self.gets_of_freed:  # one problem per variable, with a count
                    i = self.gets_of_freed[key]
                    p = self.problems[i]
                    self.problems[i] = dataclasses.replace(p, count=p.count + 1)
                else:
                    self.gets_of_freed[key] = len(self.problems)
                    self.trouble(Trouble.GET_OF_FREED, e, key)
        elif e.op == ShadowOp.FREE:
            if key in self.live:
                self.free(key, e)
            elif self.complete or key in self.dead:
                self.trouble(Trouble.FREE_OF_NOTHING, e, key)

    def born(self, key: tuple[int, int], e: Event, who: str) -> None:
        v = Variable(key[0], key[1], who, e.ts_ns)
        self.live[key] = v
        self.dead.pop(key, None)
        self.gets_of_freed.pop(key, None)
        self.all.append(v)

    def free(self, key: tuple[int, int], e: Event) -> None:
        v = self.live.pop(key)
        v.freed_ts_ns, v.freed_by = e.ts_ns, e.caller
        self.dead[key] = v

    def patches(self, e: Event) -> None:
        """klp_patches: which patches are installed (core.c)."""
        k, p = e.kind, e.patch
        if k == EventKind.ENABLE:
            self.declared[p] = {}  # a patch declares its states anew at each enable
        elif k == EventKind.STATE_DECLARED and e.state_id is not None:
            self.declared.setdefault(p, {})[e.state_id] = (e.version or 0, e.ts_ns)
        elif k == EventKind.ENABLE_RET and e.ret == EINVAL:
            self.refuse(e)
        elif k == EventKind.TRANSITION_INIT and e.state == KLP_PATCHED:
            # klp_init_patch() added it to klp_patches after the compatibility check
            self.installed[p] = None
            self.until.pop(p, None)
        elif k == EventKind.TRANSITION_COMPLETE:
            self.transition = p
        elif k == EventKind.UNPATCH_OBJECTS and p != self.transition:
            # klp_complete_transition() of a cumulative patch unpatches the patches it
            # replaces (klp_unpatch_replaced_patches()), which are then freed without
            # their unpatch callbacks (klp_free_replaced_patches_async())
            self.gone(p, e.ts_ns)
        elif k == EventKind.TRANSITION_DONE and e.state != KLP_PATCHED:
            self.gone(p, e.ts_ns)  # disabled: klp_free_patch_async()
        elif k == EventKind.MODULE_FREE and e.object in self.installed:
            self.gone(e.object, e.ts_ns)

    def gone(self, patch: str, ts: int) -> None:
        if patch in self.installed:
            del self.installed[patch]
            self.until[patch] = ts

    def refuse(self, e: Event) -> None:
        """The states that make klp_is_patch_compatible() refuse e.patch (state.c)."""
        mine = self.declared.get(e.patch, {})
        older, missing = [], []
        for old in self.installed:
            if old == e.patch:
                continue
            for sid, (v, _ts) in self.declared.get(old, {}).items():
                if sid not in mine:
                    missing.append(Refusal(e.patch, sid, None, old, v, e.ts_ns))
                elif mine[sid][0] < v:
                    older.append(Refusal(e.patch, sid, mine[sid][0], old, v, e.ts_ns))
        # without the patch's replace flag an undeclared state explains -EINVAL only when
        # no older one does (klp_is_state_compatible(): !patch->replace accepts it)
        self.refusals += older or missing[:1]

    def state(self, e: Event) -> None:
        if e.state_id is not None and e.op in (StateOp.GET, StateOp.GET_PREV):
            self.calls.setdefault((e.patch, e.state_id), []).append(e)


def _complete(events: Sequence[Event]) -> bool:
    """Whether every module that called the shadow API came while this was recorded, so
    that every shadow variable there is was seen allocated."""
    came: set[str] = set()
    for e in events:
        if e.kind == EventKind.MODULE_COMING:
            came.add(e.object)
        elif e.kind == EventKind.SHADOW and e.caller not in came:
            return False
    return True


def of(events: Sequence[Event]) -> Ledger:
    """The ledger of one recording's events (in the kernel's order)."""
    w = _Walk(events)
    for e in events:
        if e.kind == EventKind.SHADOW:
            w.shadow(e)
        elif e.kind == EventKind.STATE:
            w.state(e)
        else:
            w.patches(e)
    states: dict[tuple[str, int], State] = {}
    for p, ids in w.declared.items():
        for sid, (v, ts) in ids.items():
            states[(p, sid)] = State(p, sid, v, ts, tuple(w.calls.get((p, sid), ())),
                                     w.until.get(p))
    for (p, sid), calls in w.calls.items():
        if (p, sid) not in states:
            states[(p, sid)] = State(p, sid, None, None, tuple(calls), w.until.get(p))
    return Ledger(tuple(w.all), states, tuple(w.problems), tuple(w.refusals),
                  _leaks(events, w), tuple(w.installed), w.names)


def _leaks(events: Sequence[Event], w: _Walk) -> tuple[ShadowLeak, ...]:
    """The variables still allocated whose allocator is gone and whose id no installed
    patch declares as a state."""
    live = [v for v in w.live.values() if v.allocated_by]
    if not live:
        return ()
    gone = {life.name for life in story.of(events).modules
            if not any(ph.open_end for ph in life.phases)}
    kept = {sid for p in w.installed for sid in w.declared.get(p, {})}
    return tuple(ShadowLeak(v.obj, v.shadow_id, v.allocated_by, v.alloc_ts_ns) for v in live
                 if v.allocated_by in gone and v.shadow_id not in kept)

