"""The one result model: statuses, recordings, verdicts, scenario results, run documents.

Everything klptrace reports is built here and written as JSON by to_json();
`klptrace check` reads a saved document back with from_json(), which is where
a saved file is validated (a malformed one raises RecordingError saying where).
Formatters (report/) take the JSON document, so a saved run renders again.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from klptrace.errors import KlptraceError
from klptrace.events import Event


class Status(enum.StrEnum):
    """A scenario's outcome. The order is the order of `totals`."""

    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"
    ERROR = "error"


class RecordingError(KlptraceError):
    """A saved recording or run document that cannot be read."""


# --- reading JSON, saying where it is wrong ------------------------------------------


def _obj(d: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(d, dict):
        raise RecordingError(f"{where}: expected a JSON object")
    return d


def _int(d: Mapping[str, Any], key: str, where: str, default: int = 0) -> int:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise RecordingError(f"{where}: '{key}' must be a non-negative integer")
    return v


def _num(d: Mapping[str, Any], key: str, where: str) -> float:
    v = d.get(key, 0.0)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise RecordingError(f"{where}: '{key}' must be a number")
    return float(v)


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
    if isinstance(e, KeyError):
        return f"missing or unknown {e.args[0]!r}"
    return str(e)


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
                events.append(Event.from_json(ev))
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
        if status == Status.SKIP and "events" not in obj:
            rec = Recording(probes=list(probes))
        else:
            rec = Recording.from_json({"events": obj.get("events"),
                                       "lost_events": obj.get("lost_events", 0),
                                       "probes": list(probes)}, where)
        stall = obj.get("stall")
        if stall is not None and not isinstance(stall, dict):
            raise RecordingError(f"{where}: 'stall' must be an object")
        verdict = Verdict(status, _lines(obj, "expected", where), _lines(obj, "recorded", where),
                          _str(obj, "explanation", where), _lines(obj, "diff", where),
                          _lines(obj, "problems", where))
        return cls(sid, verdict, rec, _num(obj, "duration_s", where),
                   _str(obj, "start_time", where), _lines(obj, "notes", where),
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
        probes = _objects(obj, "probes", where)
        scs = [ScenarioResult.from_json(s, f"{where}: scenarios[{i}]", probes, known)
               for i, s in enumerate(obj["scenarios"])]
        timing, info = obj.get("timing"), obj.get("kernel_info")
        for key, v in (("timing", timing), ("kernel_info", info)):
            if v is not None and not isinstance(v, dict):
                raise RecordingError(f"{where}: '{key}' must be an object")
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
