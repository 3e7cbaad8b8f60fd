"""A stall a scenario causes on purpose, as lines of its transcript: which task held the
transition, the kernel's reason, whether a signal had reached it, and what ended it.

A scenario file states each in a `[[stall]]` table (scenario.py validates it); the
expectation gets one line per table, `stall: <task>: <what>`, and the checker adds to
the recorded transcript the same line for that task read from the recording (story.py's
tries and blocked tasks), so a stall that was not what the file states is a divergence
like any other line, in every report and in `klptrace check`.

What ended a task's stall is read from what happened between the first try that found
it and the first that did not (or the end of its leg):

- `reversed`: it never switched, and its leg ended in klp_reverse_transition(): it was
  already in the state the transition went back to;
- `forced`: the last thing before it switched was klp_force_transition();
- `signal`: the last thing before it switched was klp_send_signals(), which runs at the
  end of every SIGNALS_TIMEOUT-th failed try after the first (transition.c:
  `klp_signals_cnt && !(klp_signals_cnt % SIGNALS_TIMEOUT)`). It is the only sender:
  Linux kernel commit 0b3d52790e1c ("livepatch: Remove signal sysfs attribute") (in
  v5.1) removed the patch's `signal` file, so no kernel klptrace supports has one;
- `returned`: anything else: a step (a module parameter releasing it), or nothing
  recorded (it left the function by itself).

A task is "blocked after a signal" when a try that began after a signal still found it.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Sequence

from klptrace import story
from klptrace.events import SIGNALS_TIMEOUT, Event, EventKind, Reason

PREFIX = "stall: "
#: a task as a stall line names it: its comm (at most 15 characters, TASK_COMM_LEN - 1),
#: without the spaces and colons that would make the line ambiguous
TASK = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_AFTER = ("blocked after a signal", "not blocked after a signal")
#: the reasons a scenario can expect: the kernel's own (klp_check_and_switch_task())
REASONS = (Reason.RUNNING, Reason.UNRELIABLE_STACK, Reason.SLEEPING_ON_FUNCTION)


class Ended(enum.StrEnum):
    """What ended a task's stall (see the module's docstring)."""

    SIGNAL = "signal"
    RETURNED = "returned"
    REVERSED = "reversed"
    FORCED = "forced"
    OPEN = "never"  # still not switched when the recording ended


@dataclasses.dataclass(frozen=True)
class ExpectedStall:
    """One `[[stall]]` table of a scenario file."""

    task: str
    reason: Reason
    ended: Ended
    function: str = ""
    after_signal: bool | None = None  # None: not stated, not checked

    def line(self) -> str:
        """The expected transcript line."""
        return _line(self.task, str(self.reason), self.function, self.after_signal,
                     self.ended)


def _line(task: str, reason: str, function: str, after_signal: bool | None,
          ended: Ended) -> str:
    """`stall: <task>: <reason>[ <function>()][; blocked after a signal]; ended: <how>`."""
    parts = [reason + (f" {function}()" if function else "")]
    if after_signal is not None:
        parts.append(_AFTER[0] if after_signal else _AFTER[1])
    parts.append(f"ended: {ended}")
    return f"{PREFIX}{task}: " + "; ".join(parts)


def recorded(expected: Sequence[str], events: Sequence[Event]) -> list[str]:
    """For each stall line of expected, the same line as the recording tells it."""
    out = []
    sto: story.Story | None = None
    for line in expected:
        if not line.startswith(PREFIX):
            continue
        task = line[len(PREFIX):].split(":", 1)[0]
        with_after = any(part in _AFTER for part in line.split("; ")[1:])
        sto = sto or story.of(events)
        out.append(_seen(task, with_after, sto, events))
    return out


def _seen(task: str, with_after: bool, sto: story.Story, events: Sequence[Event]) -> str:
    """The stall line of the first task named task that the recording found not switched."""
    held = next((s for s in sto.stalled if s.last.comm == task), None)
    if held is None:
        return f"{PREFIX}{task}: never found blocked"
    reason = str(held.reason) if held.reason is not None else f"other ({held.last.ret})"
    after = _after_signal(held.tid, events) if with_after else None
    return _line(task, reason, held.last.object, after, _ended(held, events))


def _signal_round(e: Event) -> bool:
    """Whether klp_send_signals() ran at the end of this try, should it fail (its ret is
    klp_signals_cnt as the try began)."""
    cnt = e.ret or 0
    return e.kind == EventKind.TRANSITION_TRY and cnt > 0 and cnt % SIGNALS_TIMEOUT == 0


def _after_signal(tid: int, events: Sequence[Event]) -> bool:
    """Whether a try that began after a signal found the task not switched."""
    signalled = round_pending = False
    for e in events:
        if e.kind == EventKind.TRANSITION_TRY:
            signalled = signalled or round_pending  # the round ran at the previous try's end
            round_pending = _signal_round(e)
        elif e.kind == EventKind.TASK_BLOCKED and e.tid == tid and signalled:
            return True
    return False


def _ended(held: story.Stalled, events: Sequence[Event]) -> Ended:
    """What ended the task's stall (see the module's docstring)."""
    if not held.switched:
        if held.leg is not None and held.leg.end in (story.End.REVERSED, story.End.CANCELLED):
            return Ended.REVERSED
        return Ended.OPEN
    last = Ended.RETURNED
    first = held.events[0].ts_ns
    for e in events:
        if e.ts_ns < first or e.ts_ns >= held.until:  # the try at until found it switched
            continue
        if e.kind == EventKind.TRANSITION_FORCE:
            last = Ended.FORCED
        elif _signal_round(e):
            last = Ended.SIGNAL
        elif e.kind == EventKind.STEP:
            last = Ended.RETURNED
    return last
