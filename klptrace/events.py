"""The shared vocabulary: event kinds, callback roles and the Event record.

bpf/klptrace.h defines the same kinds and numbers for the BPF side.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import re
from collections.abc import Mapping
from typing import Any


class EventKind(enum.IntEnum):
    """What happened. Values match the KLPT_* kinds of bpf/klptrace.h."""

    ENABLE = 1  # klp_enable_patch() entered
    ENABLE_RET = 2  # klp_enable_patch() returned ret
    TRANSITION_INIT = 3  # klp_init_transition(patch, state)
    TRANSITION_START = 4  # klp_start_transition()
    TRANSITION_TRY = 5  # klp_try_complete_transition(): one try; ret = tries before it
    TRANSITION_COMPLETE = 6  # klp_complete_transition() entered
    TRANSITION_DONE = 7  # klp_complete_transition() returned: "... complete"
    TRANSITION_CANCEL = 8  # klp_cancel_transition()
    TRANSITION_REVERSE = 9  # klp_reverse_transition(); state is the old target
    TRANSITION_FORCE = 10  # klp_force_transition()
    PATCH_OBJECT = 11  # klp_patch_object(obj) returned ret
    UNPATCH_OBJECT = 12  # klp_unpatch_object(obj)
    UNPATCH_OBJECTS = 13  # klp_unpatch_objects(patch)
    MODULE_COMING = 14  # klp_module_coming(mod)
    MODULE_COMING_RET = 15  # klp_module_coming() returned ret (non-zero: refused)
    MODULE_GOING = 16  # klp_module_going(mod)
    MODULE_INIT = 18  # do_init_module(mod): the module's init is about to run
    MODULE_INIT_RET = 19  # do_init_module() returned ret
    MODULE_FREE = 20  # free_module(mod): the module is gone
    CALLBACK = 21  # a livepatch callback returned (ret is pre_patch's result)
    TRANSITION_REVERSED = 22  # klp_reverse_transition() returned; state is the new target
    TASK_BLOCKED = 23  # a task could not switch: pid/tid/comm are that task's, ret the
    #                    reason (-EBUSY running, -EINVAL unreliable stack, -EADDRINUSE
    #                    sleeping on function `object`)
    KMSG_WRITE = 24  # a write to /dev/kmsg (its text is read back from the log)
    STATE = 25  # klp_get_state() or klp_get_prev_state() returned: `op`, `state_id`, and the
    #             `version` of the state found (None: none); `patch` is get's patch, or for
    #             get_prev the patch in transition
    SHADOW = 26  # a klp_shadow_*() call returned: `op`, `obj`, `shadow_id`, `size`, `addr`
    STATE_DECLARED = 27  # a patch being enabled declares state `state_id` at `version`
    # Written by klptrace itself, never by BPF:
    STEP = 100  # a scenario step or traced command starts (text in `detail`)
    STEP_RESULT = 101  # that step failed with errno `ret`


#: kinds whose `ret` the BPF side fills (pre_patch's callback events too: carries_ret)
_WITH_RET = frozenset({EventKind.ENABLE_RET, EventKind.PATCH_OBJECT, EventKind.MODULE_COMING_RET,
                       EventKind.MODULE_INIT_RET, EventKind.TRANSITION_TRY,
                       EventKind.TASK_BLOCKED})
#: kinds that carry no `state` (a module state or a transition's target)
_WITHOUT_STATE = frozenset({EventKind.ENABLE, EventKind.ENABLE_RET, EventKind.PATCH_OBJECT,
                            EventKind.KMSG_WRITE, EventKind.UNPATCH_OBJECT,
                            EventKind.UNPATCH_OBJECTS, EventKind.MODULE_COMING_RET,
                            EventKind.MODULE_INIT_RET})


def carries_ret(kind: EventKind, callback: int = 0) -> bool:
    """Whether an event of this kind has a meaningful `ret` (only pre_patch returns one)."""
    return kind in _WITH_RET or (kind == EventKind.CALLBACK and callback == Callback.PRE_PATCH)


def carries_state(kind: EventKind) -> bool:
    """Whether an event of this kind has a meaningful `state`."""
    return kind not in _WITHOUT_STATE


class StateOp(enum.StrEnum):
    """Which klp_*state() call a STATE event records (kernel/livepatch/state.c)."""

    GET = "get"  # klp_get_state(patch, id)
    GET_PREV = "get_prev"  # klp_get_prev_state(id)


class ShadowOp(enum.StrEnum):
    """Which klp_shadow_*() call a SHADOW event records (kernel/livepatch/shadow.c)."""

    ALLOC = "alloc"
    GET_OR_ALLOC = "get_or_alloc"
    GET = "get"
    FREE = "free"
    FREE_ALL = "free_all"  # the only one without an obj


#: the ops by the numbers bpf/klptrace.h gives them (KLPT_OP_<op>_STATE and
#: KLPT_OP_SHADOW_<op>), in a STATE or SHADOW event's `op` field. (Keyed by number: as
#: strings StateOp.GET and ShadowOp.GET are equal.)
OPS: Mapping[int, StateOp | ShadowOp] = {
    1: StateOp.GET, 2: StateOp.GET_PREV,
    3: ShadowOp.ALLOC, 4: ShadowOp.GET_OR_ALLOC, 5: ShadowOp.GET, 6: ShadowOp.FREE,
    7: ShadowOp.FREE_ALL,
}


class Callback(enum.IntEnum):
    """Callback roles: the members of struct klp_callbacks."""

    PRE_PATCH = 1
    POST_PATCH = 2
    PRE_UNPATCH = 3
    POST_UNPATCH = 4

    @property
    def word(self) -> str:
        """The role as the kernel spells it, e.g. "pre_patch"."""
        return self.name.lower()


class ModuleState(enum.IntEnum):
    """enum module_state (include/linux/module.h)."""

    LIVE = 0
    COMING = 1
    GOING = 2
    UNFORMED = 3

    @property
    def text(self) -> str:
        """The words the kernel selftests print for this state."""
        return _MODULE_STATE_TEXT[self]


_MODULE_STATE_TEXT = {
    ModuleState.LIVE: "[MODULE_STATE_LIVE] Normal state",
    ModuleState.COMING: "[MODULE_STATE_COMING] Full formed, running module_init",
    ModuleState.GOING: "[MODULE_STATE_GOING] Going away",
    ModuleState.UNFORMED: "[MODULE_STATE_UNFORMED] Still setting up",
}

#: klp_target_state values (kernel/livepatch/transition.h)
KLP_UNPATCHED = 0
KLP_PATCHED = 1

#: klp_try_complete_transition() sends fake signals every this many tries (transition.c)
SIGNALS_TIMEOUT = 15


class Direction(enum.StrEnum):
    """Which way a transition goes: to KLP_PATCHED or to KLP_UNPATCHED."""

    PATCHING = "patching"
    UNPATCHING = "unpatching"

    @classmethod
    def of(cls, state: int | None) -> Direction:
        """The direction of a transition whose target state is state."""
        return cls.PATCHING if state == KLP_PATCHED else cls.UNPATCHING

    @property
    def reverse(self) -> Direction:
        """The direction klp_reverse_transition() turns this one into."""
        return Direction.UNPATCHING if self == Direction.PATCHING else Direction.PATCHING


class Reason(enum.StrEnum):
    """Why a task has not switched to the transition's target state: the kernel's
    verdict (klp_check_and_switch_task(), recorded by BPF) or what /proc shows."""

    RUNNING = "running"
    UNRELIABLE_STACK = "unreliable stack"
    SLEEPING_ON_FUNCTION = "sleeping on function"
    OTHER = "other"  # asleep, but in no function the patch changes
    UNSTABLE = "could not read a stable stack"  # /proc never showed one stack for sure


#: klp_check_and_switch_task()'s results (kernel/livepatch/transition.c): a TASK_BLOCKED
#: event's ret
REASONS: Mapping[int, Reason] = {
    -errno.EBUSY: Reason.RUNNING,  # running on another CPU
    -errno.EINVAL: Reason.UNRELIABLE_STACK,
    -errno.EADDRINUSE: Reason.SLEEPING_ON_FUNCTION,  # in a function the patch changes
}


@dataclasses.dataclass(frozen=True)
class Event:
    """One recorded event. Fields that do not apply stay at their defaults."""

    kind: EventKind
    ts_ns: int
    pid: int = 0
    tid: int = 0
    comm: str = ""
    patch: str = ""
    object: str = ""
    callback: Callback | None = None
    state: int | None = None  # module state, or the transition's target state
    ret: int | None = None
    detail: str = ""
    livepatch: bool = False  # module events: the module is a livepatch
    # STATE, STATE_DECLARED and SHADOW events (issue 21); `callback` (and `patch`, `object`
    # of SHADOW) say which traced callback made the call, when one did
    op: StateOp | ShadowOp | None = None
    state_id: int | None = None
    version: int | None = None  # the state's; None when klp_get_*state() found none
    obj: int | None = None  # the shadow variable's object (an address); None for free_all
    shadow_id: int | None = None
    size: int | None = None  # alloc and get_or_alloc
    addr: int | None = None  # what the call returned (the shadow data); None for NULL
    caller: str = ""  # the module whose code made the call ("vmlinux" for the kernel's own)

    @property
    def module_state(self) -> ModuleState | None:
        """The module state of a callback's klp_object (None for vmlinux)."""
        if self.kind not in (
            EventKind.CALLBACK,
            EventKind.MODULE_COMING,
            EventKind.MODULE_GOING,
            EventKind.MODULE_INIT,
            EventKind.MODULE_FREE,
        ):
            return None
        if self.object == "vmlinux" or self.state is None:
            return None
        try:
            return ModuleState(self.state)
        except ValueError:
            return None

    def to_json(self) -> dict[str, Any]:
        """The event as a JSON object (the `events` of a recording)."""
        d: dict[str, Any] = {
            "kind": self.kind.name.lower(),
            "ts_ns": self.ts_ns,
            "pid": self.pid,
            "tid": self.tid,
            "comm": self.comm,
        }
        if self.patch:
            d["patch"] = self.patch
        if self.object:
            d["object"] = self.object
        if self.callback is not None:
            d["callback"] = self.callback.word
        ms = self.module_state
        if ms is not None:
            d["module_state"] = ms.name
        elif self.state is not None and self.kind.name.startswith("TRANSITION"):
            d["target"] = "patched" if self.state == KLP_PATCHED else "unpatched"
        elif self.state is not None:
            d["state"] = self.state
        if self.ret is not None:
            d["ret"] = self.ret
        if self.detail:
            d["detail"] = self.detail
        if self.livepatch:
            d["livepatch"] = True
        if self.kind in (EventKind.STATE, EventKind.STATE_DECLARED, EventKind.SHADOW):
            d.update(self._klp_data_json())
        return d

    def _klp_data_json(self) -> dict[str, Any]:
        """The fields of a STATE, STATE_DECLARED or SHADOW event (issue 21's names)."""
        d: dict[str, Any] = {}
        if self.op is not None:
            d["op"] = self.op.value
        if self.kind == EventKind.SHADOW:
            if self.op != ShadowOp.FREE_ALL:
                d["obj"] = _hex(self.obj)
            d["shadow_id"] = self.shadow_id
            if self.size is not None:
                d["size"] = self.size
            d["ret"] = _hex(self.addr)
        else:
            d["state_id"] = self.state_id
            d["version"] = self.version
        if self.caller:
            d["caller"] = self.caller
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Event:
        """Inverse of to_json; raises ValueError/KeyError/TypeError on bad input."""
        if not isinstance(d, dict):
            raise TypeError(f"an event must be an object, not {type(d).__name__}")
        kind = EventKind[str(d["kind"]).upper()]
        cb = d.get("callback")
        state: int | None = None
        if "module_state" in d:
            state = ModuleState[str(d["module_state"])].value
        elif "target" in d:
            if d["target"] not in ("patched", "unpatched"):
                raise ValueError(f"bad target {d['target']!r}")
            state = KLP_PATCHED if d["target"] == "patched" else KLP_UNPATCHED
        elif "state" in d:
            state = _int(d["state"], "state")
        klp = (_klp_data(kind, d) if kind in (EventKind.STATE, EventKind.STATE_DECLARED,
                                              EventKind.SHADOW) else {})
        ret = d.get("ret") if kind != EventKind.SHADOW else None
        return cls(
            kind=kind,
            ts_ns=_int(d["ts_ns"], "ts_ns"),
            pid=_int(d.get("pid", 0), "pid"),
            tid=_int(d.get("tid", 0), "tid"),
            comm=_str(d.get("comm", ""), "comm"),
            patch=_str(d.get("patch", ""), "patch"),
            object=_str(d.get("object", ""), "object"),
            callback=Callback[str(cb).upper()] if cb is not None else None,
            state=state,
            ret=_int(ret, "ret") if ret is not None else None,
            detail=_str(d.get("detail", ""), "detail"),
            livepatch=d.get("livepatch", False) is True,
            **klp,
        )


def _klp_data(kind: EventKind, d: dict[str, Any]) -> dict[str, Any]:
    """Event fields of a STATE, STATE_DECLARED or SHADOW event's JSON object."""
    out: dict[str, Any] = {"caller": _str(d.get("caller", ""), "caller")}
    op = d.get("op")
    if kind == EventKind.SHADOW:
        out["op"] = ShadowOp(_str(op, "op"))
        out["obj"] = _addr(d.get("obj"), "obj")
        out["shadow_id"] = _int(d.get("shadow_id"), "shadow_id")
        size = d.get("size")
        out["size"] = _int(size, "size") if size is not None else None
        out["addr"] = _addr(d.get("ret"), "ret")
        return out
    if op is not None:
        out["op"] = StateOp(_str(op, "op"))
    out["state_id"] = _int(d.get("state_id"), "state_id")
    version = d.get("version")
    out["version"] = _int(version, "version") if version is not None else None
    return out


def _hex(addr: int | None) -> str | None:
    """An address as JSON: a hex string (JSON numbers lose 64-bit precision), or null."""
    return None if addr is None else f"{addr:#x}"


def _addr(v: Any, what: str) -> int | None:
    if v is None:
        return None
    if not isinstance(v, str) or not re.fullmatch(r"0x[0-9a-f]{1,16}", v):
        raise ValueError(f"{what} must be an address like \"0xffff8880...\", not {v!r}")
    return int(v, 16)


def _int(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{what} must be an integer, not {v!r}")
    return v


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str):
        raise TypeError(f"{what} must be a string, not {v!r}")
    return v
