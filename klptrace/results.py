"""The one result model: statuses, recordings, verdicts, scenario results, run documents.

Everything klptrace reports is built here and written as JSON by to_json();
`klptrace check` reads a saved document back with from_json(), which is where
a saved file is validated (a malformed one raises RecordingError saying where).
Formatters (report/) take the JSON document, so a saved run renders again.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from klptrace.errors import KlptraceError
from klptrace.events import Event
from klptrace.jsontext import INT_MAX


class Status(enum.StrEnum):
    """A scenario's outcome. The order is the order of `totals`."""

    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"
    ERROR = "error"


class RecordingError(KlptraceError):
    """A saved recording or run document that cannot be read."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint or "klptrace does not write it so: was the file "
                         "edited, or written by another program?")


# --- reading JSON, saying where it is wrong ------------------------------------------


def _obj(d: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(d, dict):
        raise RecordingError(f"{where}: expected a JSON object")
    return d


#: the longest time a saved run may say anything took (about 31 years): sums stay finite
MAX_SECONDS = 1e9
# an event's integers: the kernel's u64 clock, a u32 pid, a long return value, an int state
_EVENT_RANGES = {"ts_ns": (0, INT_MAX), "pid": (0, 2**32 - 1), "tid": (0, 2**32 - 1),
                 "ret": (-2**63, 2**63 - 1), "state": (-2**31, 2**31 - 1)}
# as the runner writes it: datetime.isoformat(timespec="milliseconds") in UTC
_START_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(d: Mapping[str, Any], key: str, where: str, default: int = 0) -> int:
    v = d.get(key, default)
    if not _is_int(v) or not 0 <= v <= INT_MAX:
        raise RecordingError(f"{where}: '{key}' must be a non-negative integer (64 bits)")
    return int(v)


def _seconds(d: Mapping[str, Any], key: str, where: str) -> float:
    v = d.get(key, 0.0)
    if not _is_num(v) or not 0 <= v <= MAX_SECONDS:
        raise RecordingError(f"{where}: '{key}' must be a number of seconds from 0 to "
                             f"{MAX_SECONDS:g}")
    return float(v)


def _start_time(d: Mapping[str, Any], key: str, where: str) -> str:
    """A wall-clock time as the runner writes it (ISO 8601 with its offset), or ''."""
    v = _str(d, key, where)
    if v and not _START_TIME.fullmatch(v):
        raise RecordingError(f"{where}: '{key}' must be a date and time such as "
                             "2025-12-01T10:00:00.250+00:00")
    if v:
        try:
            datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            raise RecordingError(f"{where}: '{key}' is not a real date and time") from None
    return v


def _str(d: Mapping[str, Any], key: str, where: str) -> str:
    v = d.get(key, "")
    if not isinstance(v, str):
        raise RecordingError(f"{where}: '{key}' must be a string")
    return v


def _lines(d: Mapping[str, Any], key: str, where: str) -> list[str]:
    v = d.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise RecordingError(f"{where}: '{key}' must be a list of strings")
    return list(v)


def _objects(d: Mapping[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    v = d.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        raise RecordingError(f"{where}: '{key}' must be a list of objects")
    return list(v)


def _why(e: BaseException) -> str:
    why = f"missing or unknown {e.args[0]!r}" if isinstance(e, KeyError) else str(e)
    return why if len(why) <= 200 else why[:200] + "..."  # it may quote a whole value


def _event(ev: Any) -> Event:
    """One saved event; its integers within what the kernel's types hold."""
    e = Event.from_json(ev)
    for field, (lo, hi) in _EVENT_RANGES.items():
        v = getattr(e, field)
        if v is not None and not lo <= v <= hi:
            raise ValueError(f"{field} {v} is out of its range {lo}..{hi}")
    return e


# the fields of a probe's status (probes.ProbeStatus.to_json) and of a stall report
# (stall.Report.to_json): what each must be when present
_PROBE = {"name": "str", "target": "str", "ok": "bool", "reason": "str", "armed": "bool"}
_STALL = {"patch": "str", "direction": "str", "in_transition": "bool",
          "in_transition_s": "seconds?", "tries": "count?", "signals": "strs",
          "forced": "bool", "timeline": "objects", "next_steps": "strs", "tasks": "objects"}
_STALL_TASK = {"pid": "count", "tid": "count", "comm": "str", "reason": "str",
               "function": "str", "kthread": "bool", "state": "str", "stack": "strs",
               "blocking_s": "seconds?", "source": "str"}
_STALL_STEP = {"t_s": "seconds", "what": "str", "tasks_left": "count", "tasks": "strs"}
_KINDS: dict[str, tuple[str, Any]] = {  # kind: (what it must be, the test)
    "str": ("a string", lambda v: isinstance(v, str)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "count": ("a non-negative integer (64 bits)", lambda v: _is_int(v) and 0 <= v <= INT_MAX),
    "seconds": (f"a number of seconds within {MAX_SECONDS:g}",
                lambda v: _is_num(v) and abs(v) <= MAX_SECONDS),
    "strs": ("a list of strings", lambda v: isinstance(v, list)
             and all(isinstance(x, str) for x in v)),
    "objects": ("a list of objects", lambda v: isinstance(v, list)
                and all(isinstance(x, dict) for x in v)),
}


def _shaped(obj: Any, fields: Mapping[str, str], where: str) -> dict[str, Any]:
    """obj, an object whose fields (where present) are of their kinds; a kind ending in
    '?' may also be null. Other fields pass as they are (no formatter reads them)."""
    if not isinstance(obj, dict):
        raise RecordingError(f"{where}: expected a JSON object")
    for key, kind in fields.items():
        v = obj.get(key)
        if key not in obj or (v is None and kind.endswith("?")):
            continue
        what, fits = _KINDS[kind.rstrip("?")]
        if not fits(v):
            raise RecordingError(f"{where}: {key!r} must be {what}")
    return obj


def _stall(v: Any, where: str) -> dict[str, Any] | None:
    """A scenario's stall report (`klptrace stall`'s), every field a formatter reads."""
    if v is None:
        return None
    where += ": stall"
    st = _shaped(v, _STALL, where)
    for i, t in enumerate(st.get("tasks", [])):
        _shaped(t, _STALL_TASK, f"{where}: tasks[{i}]")
    for i, t in enumerate(st.get("timeline", [])):
        _shaped(t, _STALL_STEP, f"{where}: timeline[{i}]")
    return st


# --- recordings and verdicts ---------------------------------------------------------


@dataclasses.dataclass
class Recording:
    """Events in the order the kernel produced them, plus integrity facts."""

    events: list[Event] = dataclasses.field(default_factory=list)
    lost: int = 0
    probes: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def failed_probes(self) -> list[dict[str, Any]]:
        """Probes that did not attach, or that the kernel did not arm."""
        return [p for p in self.probes if not p.get("ok")]

    @classmethod
    def from_json(cls, d: Any, where: str = "recording") -> Recording:
        """Parse `events`, `lost_events` and `probes` of a JSON object."""
        obj = _obj(d, where)
        raw = obj.get("events")
        if not isinstance(raw, list):
            raise RecordingError(f"{where}: 'events' must be a list")
        events = []
        for i, ev in enumerate(raw):
            try:
                events.append(_event(ev))
            except (KeyError, ValueError, TypeError) as e:
                raise RecordingError(f"{where}: events[{i}] is malformed: {_why(e)}") from None
        return cls(events, _int(obj, "lost_events", where), _objects(obj, "probes", where))


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The final word on one scenario (checker.judge), and the evidence for it."""

    status: Status
    expected: list[str]
    recorded: list[str]
    explanation: str = ""
    diff: list[str] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)


# --- one scenario's result -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ScenarioResult:
    """One scenario's outcome: the verdict and every fact that decided it.

    The facts (the recording, the kernel log's witness lines, the step that
    failed, the oops, what cleanup left) are kept so that `check` can judge
    the same scenario again from a saved file.
    """

    id: str
    verdict: Verdict
    recording: Recording = dataclasses.field(default_factory=Recording)
    duration_s: float = 0.0
    start_time: str = ""  # wall clock (UTC, ISO 8601) when it began
    notes: list[str] = dataclasses.field(default_factory=list)
    dmesg: list[str] | None = None  # the kernel log's witness lines (None: not compared)
    step_error: str = ""  # why a step or a wait failed
    oops: list[str] = dataclasses.field(default_factory=list)  # the kernel's, if it oopsed
    leftovers: list[str] = dataclasses.field(default_factory=list)  # what cleanup left
    stall: dict[str, Any] | None = None  # `klptrace stall`'s report, for stalling scenarios

    @property
    def status(self) -> Status:
        return self.verdict.status

    def to_json(self) -> dict[str, Any]:
        v = self.verdict
        d: dict[str, Any] = {"id": self.id, "status": str(v.status)}
        if self.start_time:
            d["start_time"] = self.start_time
        d.update({
            "duration_s": round(self.duration_s, 3),
            "lost_events": self.recording.lost,
            "events": [e.to_json() for e in self.recording.events],
            "expected": v.expected, "recorded": v.recorded, "explanation": v.explanation,
            "diff": v.diff, "problems": v.problems, "notes": self.notes,
        })
        optional = {"dmesg": self.dmesg, "step_error": self.step_error, "oops": self.oops,
                    "leftovers": self.leftovers, "stall": self.stall}
        d.update({k: x for k, x in optional.items() if x})
        return d

    @classmethod
    def from_json(cls, d: Any, where: str, probes: Sequence[dict[str, Any]] = (),
                  known: Collection[str] | None = None) -> ScenarioResult:
        """A saved scenario result as it was judged then; probes are the run's. known: the
        scenario ids that may appear (check's scenario files). A result saved without its
        status is an error until it is judged again (`check` judges every result)."""
        obj = _obj(d, where)
        sid = obj.get("id")
        if not isinstance(sid, str) or not sid:
            raise RecordingError(f"{where}: needs an 'id'")
        if known is not None and sid not in known:
            raise RecordingError(f"{where}: unknown scenario id {sid!r}",
                                 "pass --scenarios DIR for a user's scenarios")
        try:
            status = Status(obj.get("status", Status.ERROR))
        except ValueError:
            raise RecordingError(f"{where}: 'status' must be one of "
                                 + ", ".join(s.value for s in Status)) from None
        # a skip may be saved without its (empty) events
        rec = Recording.from_json({"events": obj.get("events", [] if status == Status.SKIP
                                                     else None),
                                   "lost_events": obj.get("lost_events", 0),
                                   "probes": list(probes)}, where)
        stall = _stall(obj.get("stall"), where)
        verdict = Verdict(status, _lines(obj, "expected", where), _lines(obj, "recorded", where),
                          _str(obj, "explanation", where), _lines(obj, "diff", where),
                          _lines(obj, "problems", where))
        return cls(sid, verdict, rec, _seconds(obj, "duration_s", where),
                   _start_time(obj, "start_time", where), _lines(obj, "notes", where),
                   _lines(obj, "dmesg", where) if "dmesg" in obj else None,
                   _str(obj, "step_error", where), _lines(obj, "oops", where),
                   _lines(obj, "leftovers", where), stall)


# --- a run, and a matrix of runs ---------------------------------------------------------


def _totals(statuses: Sequence[Status]) -> dict[str, int]:
    return {s.value: sum(1 for x in statuses if x == s) for s in Status}


def _exit_status(statuses: Sequence[Status]) -> int:
    """0 all passed, 4 nothing could run (all skipped), 1 anything else."""
    if statuses and all(s == Status.SKIP for s in statuses):
        return 4
    if statuses and all(s in (Status.PASS, Status.SKIP) for s in statuses):
        return 0
    return 1


@dataclasses.dataclass(frozen=True)
class RunDocument:
    """One kernel's run: where, what was lost, how the probes fared, each scenario."""

    kernel: str
    scenarios: list[ScenarioResult]
    lost_events: int = 0
    probes: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    timing: dict[str, Any] | None = None
    leftovers: list[str] | None = None
    kernel_info: dict[str, Any] | None = None
    boots: int | None = None  # guests booted for it (`run --vm`)

    @property
    def totals(self) -> dict[str, int]:
        return _totals([s.status for s in self.scenarios])

    def exit_status(self) -> int:
        return _exit_status([s.status for s in self.scenarios])

    @property
    def unaccounted_lost(self) -> int:
        """Events lost that no scenario's own count accounts for."""
        return max(0, self.lost_events - sum(s.recording.lost for s in self.scenarios))

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kernel": self.kernel, "lost_events": self.lost_events,
                             "probes": self.probes,
                             "scenarios": [s.to_json() for s in self.scenarios],
                             "totals": self.totals}
        optional = {"timing": self.timing, "leftovers": self.leftovers,
                    "kernel_info": self.kernel_info, "boots": self.boots}
        d.update({k: v for k, v in optional.items() if v is not None})
        return d

    @classmethod
    def from_json(cls, d: Any, where: str, known: Collection[str] | None = None
                  ) -> RunDocument:
        """A saved run; known as for ScenarioResult.from_json."""
        if not isinstance(d, dict) or not isinstance(d.get("scenarios"), list):
            raise RecordingError(f"{where}: not a klptrace recording (no 'scenarios' list)",
                                 "write one with `klptrace run --record FILE`")
        obj: Mapping[str, Any] = d
        kernel = obj.get("kernel", "?")
        if not isinstance(kernel, str):
            raise RecordingError(f"{where}: 'kernel' must be a string")
        probes = [_shaped(p, _PROBE, f"{where}: probes[{i}]")
                  for i, p in enumerate(_objects(obj, "probes", where))]
        scs = [ScenarioResult.from_json(s, f"{where}: scenarios[{i}]", probes, known)
               for i, s in enumerate(obj["scenarios"])]
        timing, info = obj.get("timing"), obj.get("kernel_info")
        # how long each phase took, and what the kernel says about itself (sysinfo)
        for key, v, kind in (("timing", timing, "seconds"), ("kernel_info", info, "str")):
            if v is not None:
                _shaped(v, dict.fromkeys(v if isinstance(v, dict) else (), kind),
                        f"{where}: {key}")
        boots = _int(obj, "boots", where) if "boots" in obj else None
        return cls(kernel, scs, _int(obj, "lost_events", where), probes, timing,
                   _lines(obj, "leftovers", where) if "leftovers" in obj else None, info, boots)


@dataclasses.dataclass(frozen=True)
class Matrix:
    """Several kernels' runs in one document."""

    runs: list[RunDocument]

    def exit_status(self) -> int:
        """The worst of the runs: their scenarios together."""
        return _exit_status([s.status for r in self.runs for s in r.scenarios])

    def to_json(self) -> dict[str, Any]:
        return matrix_document([r.to_json() for r in self.runs])

    @classmethod
    def from_json(cls, d: Any, where: str, known: Collection[str] | None = None) -> Matrix:
        runs = _obj(d, where).get("runs")
        if not isinstance(runs, list) or not runs:
            raise RecordingError(f"{where}: 'runs' must be a non-empty list of run documents")
        return cls([RunDocument.from_json(r, f"{where}: runs[{i}]", known)
                    for i, r in enumerate(runs)])


def load(d: Any, where: str, known: Collection[str] | None = None) -> RunDocument | Matrix:
    """A saved document, one run or a matrix (known as for ScenarioResult.from_json)."""
    if isinstance(d, dict) and "runs" in d:
        return Matrix.from_json(d, where, known)
    return RunDocument.from_json(d, where, known)


# --- the JSON documents, for formatters ------------------------------------------------


def matrix_document(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several kernels' run documents (JSON) in one: `runs`, `totals`."""
    totals = {s.value: sum(r["totals"][s.value] for r in runs) for s in Status}
    return {"runs": list(runs), "totals": totals}


def is_matrix(doc: Any) -> bool:
    """Whether a JSON document holds several kernels' runs (else it is one run)."""
    return isinstance(doc, dict) and isinstance(doc.get("runs"), list)
