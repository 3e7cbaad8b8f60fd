"""The stall report: one livepatch transition's state, the tasks holding it, its story.

One family of dataclasses for every place a stall report goes: kernel/stall.py fills
one in from /proc and sysfs, stall.py (pure) adds what BPF saw and what to do, a
stalling scenario's result keeps it (results.ScenarioResult.stall), `klptrace stall
--format json` writes it with to_json(), and `klptrace check` reads a saved one back
with from_json(), which validates every field a formatter reads (fields.py).

The fields added for issue 22 (a task's kind, sleep and next step; the report's
scheduler path and next signal round) are written only when they were found, so a
report saved before them reads back and writes out as it was.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, TypeVar

from klptrace import fields as f
from klptrace.events import Direction, Reason

_W = TypeVar("_W", bound=enum.StrEnum)

# what each field of a saved report must be when present (fields.shaped)
_REPORT = {"patch": "str", "in_transition": "bool", "in_transition_s": "seconds?",
           "tries": "count?", "signals": "strs", "forced": "bool", "timeline": "objects",
           "next_steps": "strs", "tasks": "objects"}
_TASK = {"pid": "count", "tid": "count", "comm": "str", "reason": "str", "function": "str",
         "kthread": "bool", "state": "str", "stack": "strs", "blocking_s": "seconds?",
         "next_step": "str"}
_NEXT = {"next_signal_try": "count?", "next_signal_in_s": "seconds?"}
_STEP = {"t_s": "seconds", "what": "str", "tasks_left": "count", "tasks": "strs"}


class Kind(enum.StrEnum):
    """What the kernel does for a task at a signal round depends on this: klp_send_signals()
    (kernel/livepatch/transition.c) wakes a kernel thread (PF_KTHREAD) and sends any other
    task a fake signal."""

    KTHREAD = "kthread"
    USER = "user"


class Sleep(enum.StrEnum):
    """How a pending task sleeps, from its state letter in /proc (stall.sleep_of())."""

    RUNNING = "running"
    INTERRUPTIBLE = "interruptible"  # TASK_INTERRUPTIBLE: a signal round wakes it
    UNINTERRUPTIBLE = "uninterruptible"  # nothing the kernel does for livepatch wakes it


class SchedPath(enum.StrEnum):
    """Where the scheduler switches a task that is not in a patched function, on the
    running kernel (kernel/stall.sched_path() tells it by symbol, never by version)."""

    NONE = "none"  # no scheduler-side switch: before e3ff7c609f39 (v6.4)
    COND_RESCHED = "cond_resched"  # e3ff7c609f39 (v6.4) until 676e8cf70cb0 (v6.16)
    SCHEDULE = "__schedule"  # since 676e8cf70cb0 (v6.16): a freezable sleep
    UNKNOWN = "unknown"  # /proc/kallsyms could not be read


def _word(d: dict[str, Any], key: str, kind: type[_W], where: str) -> _W | None:
    """d[key], one of kind's words, or None when d has none (a report saved before it)."""
    return None if d.get(key) is None else f.choice(d, key, kind, where)


class Source(enum.StrEnum):
    """Where a task's reason comes from."""

    PROC = "proc"  # its stack in /proc, classified by klptrace
    BPF = "bpf"  # the kernel's own verdict, klp_check_and_switch_task()'s


def _reason(v: str) -> Reason | str:
    """A saved reason: one of the kernel's words, or as written ("other (-5)")."""
    return Reason(v) if v in Reason.__members__.values() else v


@dataclasses.dataclass(frozen=True)
class StallStep:
    """One moment of a transition's story (stall.timeline): seconds from its start, what
    happened, and for a try the tasks it left (with who they are, when BPF saw them)."""

    t_s: float
    what: str
    tasks_left: int | None = None
    tasks: list[str] | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"t_s": self.t_s, "what": self.what}
        if self.tasks_left is not None:
            d["tasks_left"] = self.tasks_left
        if self.tasks is not None:
            d["tasks"] = self.tasks
        return d

    @classmethod
    def from_json(cls, d: Any, where: str) -> StallStep:
        s = f.shaped(d, _STEP, where)
        return cls(s.get("t_s", 0.0), s.get("what", ""), s.get("tasks_left"), s.get("tasks"))


@dataclasses.dataclass
class StallTask:
    """A task that has not switched to the transition's target state, and why."""

    pid: int
    tid: int
    comm: str
    reason: Reason | str  # str: "other (N)" for a code of the kernel's this one does not know
    function: str
    kthread: bool
    state: str
    stack: list[str]
    blocking_s: float | None = None
    source: Source = Source.PROC
    kind: Kind | None = None  # None: not found (a report saved before klptrace told it)
    sleep: Sleep | None = None  # None: not found, or a state letter of no sleep (Z, X, ?)
    next_step: str = ""  # the one next step for this task on this kernel (stall.advise())

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in ("kind", "sleep", "next_step"):
            if not d[key]:
                del d[key]
        return d

    @classmethod
    def from_json(cls, d: Any, where: str) -> StallTask:
        t = f.shaped(d, _TASK, where)
        return cls(t.get("pid", 0), t.get("tid", 0), t.get("comm", ""),
                   _reason(t.get("reason", "")), t.get("function", ""), t.get("kthread", False),
                   t.get("state", ""), t.get("stack", []), t.get("blocking_s"),
                   f.choice(t, "source", Source, where), _word(t, "kind", Kind, where),
                   _word(t, "sleep", Sleep, where), t.get("next_step", ""))


@dataclasses.dataclass
class StallReport:
    """The state of one livepatch transition (`klptrace stall`'s report): the tasks holding
    it, how long and how many tries, its story, what to do. in_transition tells it, in
    JSON, from the answer when no transition is in progress."""

    patch: str
    direction: Direction
    tasks: list[StallTask] = dataclasses.field(default_factory=list)
    in_transition_s: float | None = None
    tries: int | None = None
    signals: list[str] = dataclasses.field(default_factory=list)
    forced: bool = False
    timeline: list[StallStep] = dataclasses.field(default_factory=list)
    next_steps: list[str] = dataclasses.field(default_factory=list)
    in_transition: bool = True
    sched: SchedPath | None = None  # None: a report saved before klptrace told it
    next_signal_try: int | None = None  # the try whose end sends the next signal round
    next_signal_in_s: float | None = None  # about when (None: the tries are not known)

    def to_json(self) -> dict[str, Any]:
        d = {"patch": self.patch, "direction": self.direction,
             "in_transition": self.in_transition,
             "tasks": [t.to_json() for t in self.tasks],
             "in_transition_s": self.in_transition_s, "tries": self.tries,
             "signals": self.signals, "forced": self.forced,
             "timeline": [s.to_json() for s in self.timeline],
             "next_steps": self.next_steps}
        if self.sched is not None:
            d |= {"sched": self.sched, "next_signal_try": self.next_signal_try,
                  "next_signal_in_s": self.next_signal_in_s}
        return d

    @classmethod
    def from_json(cls, d: Any, where: str) -> StallReport:
        """A saved report, every field a formatter reads."""
        s = f.shaped(d, _REPORT, where)
        tasks = [StallTask.from_json(t, f"{where}: tasks[{i}]")
                 for i, t in enumerate(s.get("tasks", []))]
        story = [StallStep.from_json(t, f"{where}: timeline[{i}]")
                 for i, t in enumerate(s.get("timeline", []))]
        n = f.shaped(d, _NEXT, where)
        return cls(s.get("patch", ""), f.choice(s, "direction", Direction, where), tasks,
                   s.get("in_transition_s"), s.get("tries"), s.get("signals", []),
                   s.get("forced", False), story, s.get("next_steps", []),
                   s.get("in_transition", True), _word(s, "sched", SchedPath, where),
                   n.get("next_signal_try"), n.get("next_signal_in_s"))


@dataclasses.dataclass(frozen=True)
class SignalRound:
    """A round of fake signals a watch saw (`klptrace stall --watch`): its number (from 1),
    seconds from the watch's start, at the end of which try the kernel sent it (only
    the kernel sends them: klp_try_complete_transition()), and the tasks (comm:tid) that
    switched after it, before the next round."""

    number: int
    t_s: float
    try_number: int
    switched: list[str]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
