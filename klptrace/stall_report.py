"""The stall report: one livepatch transition's state, the tasks holding it, its story.

One family of dataclasses for every place a stall report goes: kernel/stall.py fills
one in from /proc and sysfs, stall.py (pure) adds what BPF saw and what to do, a
stalling scenario's result keeps it (results.ScenarioResult.stall), `klptrace stall
--format json` writes it with to_json(), and `klptrace check` reads a saved one back
with from_json(), which validates every field a formatter reads (fields.py).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from klptrace import fields as f
from klptrace.events import Direction, Reason

# what each field of a saved report must be when present (fields.shaped)
_REPORT = {"patch": "str", "in_transition": "bool", "in_transition_s": "seconds?",
           "tries": "count?", "signals": "strs", "forced": "bool", "timeline": "objects",
           "next_steps": "strs", "tasks": "objects"}
_TASK = {"pid": "count", "tid": "count", "comm": "str", "reason": "str", "function": "str",
         "kthread": "bool", "state": "str", "stack": "strs", "blocking_s": "seconds?"}
_STEP = {"t_s": "seconds", "what": "str", "tasks_left": "count", "tasks": "strs"}


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

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Any, where: str) -> StallTask:
        t = f.shaped(d, _TASK, where)
        return cls(t.get("pid", 0), t.get("tid", 0), t.get("comm", ""),
                   _reason(t.get("reason", "")), t.get("function", ""), t.get("kthread", False),
                   t.get("state", ""), t.get("stack", []), t.get("blocking_s"),
                   f.choice(t, "source", Source, where))


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

    def to_json(self) -> dict[str, Any]:
        return {"patch": self.patch, "direction": self.direction,
                "in_transition": self.in_transition,
                "tasks": [t.to_json() for t in self.tasks],
                "in_transition_s": self.in_transition_s, "tries": self.tries,
                "signals": self.signals, "forced": self.forced,
                "timeline": [s.to_json() for s in self.timeline],
                "next_steps": self.next_steps}

    @classmethod
    def from_json(cls, d: Any, where: str) -> StallReport:
        """A saved report, every field a formatter reads."""
        s = f.shaped(d, _REPORT, where)
        tasks = [StallTask.from_json(t, f"{where}: tasks[{i}]")
                 for i, t in enumerate(s.get("tasks", []))]
        story = [StallStep.from_json(t, f"{where}: timeline[{i}]")
                 for i, t in enumerate(s.get("timeline", []))]
        return cls(s.get("patch", ""), f.choice(s, "direction", Direction, where), tasks,
                   s.get("in_transition_s"), s.get("tries"), s.get("signals", []),
                   s.get("forced", False), story, s.get("next_steps", []),
                   s.get("in_transition", True))
