"""The one result model: statuses, probes, recordings, verdicts, scenario results, run
documents and matrices, and the answers of `trace` and `stall --watch`; a stalling
scenario's stall report is stall_report.py's.

Everything klptrace reports is built here and written as JSON by to_json();
`klptrace check` reads a saved document back with from_json(), which is where
a saved file is validated (a malformed one raises RecordingError saying where,
klptrace/fields.py). Formatters (report/) take a Matrix of this model, never the JSON.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from klptrace import fields as f
from klptrace.events import Direction, Event, EventKind, Reason
from klptrace.fields import RecordingError as RecordingError  # what every from_json raises
from klptrace.ledger import ShadowLeak as ShadowLeak  # a verdict's (ledger.py)
from klptrace.ledger import ShadowProblem as ShadowProblem
from klptrace.stall_report import SignalRound as SignalRound  # a watch's
from klptrace.stall_report import StallReport as StallReport  # a stalling scenario's
from klptrace.stall_report import StallStep as StallStep


class Status(enum.StrEnum):
    """A scenario's outcome. The order is the order of `totals`."""

    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"
    ERROR = "error"


# the fields of a probe's status: what each must be when present
_PROBE = {"name": "str", "target": "str", "ok": "bool", "reason": "str", "armed": "bool"}


@dataclasses.dataclass
class Probe:
    """One probe: where it is, whether it is attached (else the kernel's reason). armed, for
    a probe in a module: None until the module came, then whether the kernel armed it (if
    not, ok is False). The recorder updates its own as the kernel arms them; a Recording
    holds copies (Recorder.recording)."""

    name: str
    target: str
    ok: bool
    reason: str = ""
    armed: bool | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "target": self.target, "ok": self.ok,
                             "reason": self.reason}
        if self.armed is not None:
            d["armed"] = self.armed
        return d

    @classmethod
    def from_json(cls, d: Any, where: str) -> Probe:
        p = f.shaped(d, _PROBE, where)
        # a probe saved without its name or its ok cannot be shown to have attached
        return cls(p.get("name", "?"), p.get("target", ""), p.get("ok", False),
                   p.get("reason", ""), p.get("armed"))


def read_probes(v: Any, where: str) -> list[Probe]:
    """A run's `probes` (a JSON list of objects), each a Probe."""
    return [Probe.from_json(p, f"{where}: probes[{i}]")
            for i, p in enumerate(f.objects({"probes": v}, "probes", where))]


@dataclasses.dataclass
class Recording:
    """Events in the order the kernel produced them, plus integrity facts."""

    events: list[Event] = dataclasses.field(default_factory=list)
    lost: int = 0
    probes: list[Probe] = dataclasses.field(default_factory=list)

    @property
    def failed_probes(self) -> list[Probe]:
        """Probes that did not attach, or that the kernel did not arm."""
        return [p for p in self.probes if not p.ok]

    @classmethod
    def from_json(cls, d: Any, where: str = "recording") -> Recording:
        """Parse `events`, `lost_events` and `probes` of a JSON object."""
        o = f.obj(d, where)
        return cls(f.events(o, "events", where), f.count(o, "lost_events", where),
                   read_probes(o.get("probes", []), where))


def callbacks_json(events: Sequence[Event]) -> list[dict[str, object]]:
    """Every callback: its role, patch, klp_object, that module's state, its result."""
    return [{"callback": e.callback.word if e.callback else None, "patch": e.patch,
             "object": e.object,
             "module_state": None if e.module_state is None else e.module_state.name,
             "ret": e.ret, "ts_ns": e.ts_ns, "pid": e.pid, "comm": e.comm}
            for e in events if e.kind == EventKind.CALLBACK]


# --- verdicts ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The final word on one scenario (checker.judge), and the evidence for it. divergence:
    the line of the expected transcript (1-based) where the recording first went another
    way, when the explanation leads with it (None: the transcripts matched, or an
    untrusted recording or a failed step explains the verdict). shadow_leaks and
    shadow_problems: what the ledger of its shadow variables found (ledger.py); the
    problems are among `problems` too, and so is each leak the scenario does not expect."""

    status: Status
    expected: list[str]
    recorded: list[str]
    explanation: str = ""
    diff: list[str] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)
    divergence: int | None = None
    shadow_leaks: list[ShadowLeak] = dataclasses.field(default_factory=list)
    shadow_problems: list[ShadowProblem] = dataclasses.field(default_factory=list)


def shadow_json(leaks: Sequence[ShadowLeak], problems: Sequence[ShadowProblem]
                ) -> dict[str, Any]:
    """A result's `shadow_leaks` and `shadow_problems`, each only when there is one (a
    result without them reads as before issue 21)."""
    d: dict[str, Any] = {}
    if leaks:
        d["shadow_leaks"] = [k.to_json() for k in leaks]
    if problems:
        d["shadow_problems"] = [p.to_json() for p in problems]
    return d


def read_shadow(o: Mapping[str, Any], where: str
                ) -> tuple[list[ShadowLeak], list[ShadowProblem]]:
    """A saved result's shadow_leaks and shadow_problems (absent: none)."""
    return ([ShadowLeak.from_json(x, f"{where}: shadow_leaks[{i}]")
             for i, x in enumerate(f.objects(o, "shadow_leaks", where))],
            [ShadowProblem.from_json(x, f"{where}: shadow_problems[{i}]")
             for i, x in enumerate(f.objects(o, "shadow_problems", where))])


# a saved verdict carries its first divergence only as its explanation's lead, as judge
# writes it ("line 15: ..."): the JSON document has no field of its own for it
_LEAD = re.compile(r"line (\d{1,18}):")


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
    stall: StallReport | None = None  # `klptrace stall`'s report, for stalling scenarios

    @property
    def status(self) -> Status:
        return self.verdict.status

    @property
    def seconds(self) -> float:
        """How long it took, as reported (to the millisecond)."""
        return round(self.duration_s, 3)

    def to_json(self) -> dict[str, Any]:
        v = self.verdict
        d: dict[str, Any] = {"id": self.id, "status": str(v.status)}
        if self.start_time:
            d["start_time"] = self.start_time
        d.update({
            "duration_s": self.seconds,
            "lost_events": self.recording.lost,
            "events": [e.to_json() for e in self.recording.events],
            "expected": v.expected, "recorded": v.recorded, "explanation": v.explanation,
            "diff": v.diff, "problems": v.problems, "notes": self.notes,
        })
        d.update(shadow_json(v.shadow_leaks, v.shadow_problems))
        optional = {"dmesg": self.dmesg, "step_error": self.step_error, "oops": self.oops,
                    "leftovers": self.leftovers,
                    "stall": self.stall.to_json() if self.stall else None}
        d.update({k: x for k, x in optional.items() if x})
        return d

    @classmethod
    def from_json(cls, d: Any, where: str, probes: Sequence[Probe] = (),
                  known: Collection[str] | None = None) -> ScenarioResult:
        """A saved scenario result as it was judged then; probes are the run's. known: the
        scenario ids that may appear (check's scenario files). A result saved without its
        status is an error until it is judged again (`check` judges every result)."""
        o = f.obj(d, where)
        sid = o.get("id")
        if not isinstance(sid, str) or not sid:
            raise RecordingError(f"{where}: needs an 'id'")
        if known is not None and sid not in known:
            raise RecordingError(f"{where}: unknown scenario id {sid!r}",
                                 "pass --scenarios DIR for a user's scenarios")
        try:
            status = Status(o.get("status", Status.ERROR))
        except ValueError:
            raise RecordingError(f"{where}: 'status' must be one of "
                                 + ", ".join(s.value for s in Status)) from None
        # a skip may be saved without its (empty) events
        rec = Recording.from_json({"events": o.get("events", [] if status == Status.SKIP
                                                   else None),
                                   "lost_events": o.get("lost_events", 0)}, where)
        rec.probes = list(probes)
        stall = o.get("stall")
        explanation = f.text(o, "explanation", where)
        verdict = Verdict(status, f.lines(o, "expected", where), f.lines(o, "recorded", where),
                          explanation, f.lines(o, "diff", where), f.lines(o, "problems", where),
                          int(m[1]) if (m := _LEAD.match(explanation)) else None,
                          *read_shadow(o, where))
        return cls(sid, verdict, rec, f.seconds(o, "duration_s", where),
                   f.start_time(o, "start_time", where), f.lines(o, "notes", where),
                   f.lines(o, "dmesg", where) if "dmesg" in o else None,
                   f.text(o, "step_error", where), f.lines(o, "oops", where),
                   f.lines(o, "leftovers", where),
                   # an empty report is no report: it was never written out
                   None if stall is None or stall == {} else
                   StallReport.from_json(stall, f"{where}: stall"))


# --- a run, and a matrix of runs ---------------------------------------------------------


def _totals(statuses: Sequence[Status]) -> dict[Status, int]:
    return {s: sum(1 for x in statuses if x == s) for s in Status}


def _exit_status(statuses: Sequence[Status]) -> int:
    """0 all passed, 4 nothing could run (all skipped), 1 anything else."""
    if statuses and all(s == Status.SKIP for s in statuses):
        return 4
    if statuses and all(s in (Status.PASS, Status.SKIP) for s in statuses):
        return 0
    return 1


def _totals_json(totals: Mapping[Status, int]) -> dict[str, int]:
    return {s.value: n for s, n in totals.items()}


@dataclasses.dataclass(frozen=True)
class RunDocument:
    """One kernel's run: where, what was lost, how the probes fared, each scenario."""

    kernel: str
    scenarios: list[ScenarioResult]
    lost_events: int = 0
    probes: list[Probe] = dataclasses.field(default_factory=list)
    timing: dict[str, float] | None = None  # how long each phase took (seconds)
    leftovers: list[str] | None = None
    kernel_info: dict[str, str] | None = None  # what the kernel says about itself (sysinfo)
    boots: int | None = None  # guests booted for it (`run --vm`)

    @property
    def totals(self) -> dict[Status, int]:
            return _totals([s.status for s in self.scenarios])

    def exit_status(self) -> int:
        return _exit_status([s.status for s in self.scenarios])

    @property
    def unaccounted_lost(self) -> int:
        """Events lost that no scenario's own count accounts for."""
        return max(0, self.lost_events - sum(s.recording.lost for s in self.scenarios))

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kernel": self.kernel, "lost_events": self.lost_events,
                             "probes": [p.to_json() for p in self.probes],
                             "scenarios": [s.to_json() for s in self.scenarios],
                             "totals": _totals_json(self.totals)}
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
        o: Mapping[str, Any] = d
        kernel = o.get("kernel", "?")
        if not isinstance(kernel, str):
            raise RecordingError(f"{where}: 'kernel' must be a string")
        probes = read_probes(o.get("probes", []), where)
        scs = [ScenarioResult.from_json(s, f"{where}: scenarios[{i}]", probes, known)
               for i, s in enumerate(o["scenarios"])]
        timing, info = o.get("timing"), o.get("kernel_info")
        for key, v, kind in (("timing", timing, "seconds"), ("kernel_info", info, "str")):
            if v is not None:
                f.shaped(v, dict.fromkeys(v if isinstance(v, dict) else (), kind),
                         f"{where}: {key}")
        boots = f.count(o, "boots", where) if "boots" in o else None
        return cls(kernel, scs, f.count(o, "lost_events", where), probes, timing,
                   f.lines(o, "leftovers", where) if "leftovers" in o else None, info, boots)


@dataclasses.dataclass(frozen=True)
class Matrix:
    """Kernels' runs, as every formatter takes them: several kernels' (a matrix document),
    or one kernel's run as a matrix of one (single: its JSON is that run's document, and
    formatters lay it out as one run)."""

    runs: list[RunDocument]
    single: bool = False

    @classmethod
    def of(cls, doc: RunDocument | Matrix) -> Matrix:
        """doc as a Matrix: a run document is a matrix of one."""
        return doc if isinstance(doc, Matrix) else cls([doc], single=True)

    @property
    def run(self) -> RunDocument | None:
        """The run, when this is one run rather than a matrix of kernels."""
        return self.runs[0] if self.single else None

    @property
    def totals(self) -> dict[Status, int]:
        """How many scenarios (of all the runs) ended in each Status."""
        return {s: sum(r.totals[s] for r in self.runs) for s in Status}

    def exit_status(self) -> int:
        """The worst of the runs: their scenarios together."""
        return _exit_status([s.status for r in self.runs for s in r.scenarios])

    def to_json(self) -> dict[str, Any]:
        if self.run is not None:
            return self.run.to_json()
        return {"runs": [r.to_json() for r in self.runs], "totals": _totals_json(self.totals)}

    @classmethod
    def from_json(cls, d: Any, where: str, known: Collection[str] | None = None) -> Matrix:
        runs = f.obj(d, where).get("runs")
        if not isinstance(runs, list) or not runs:
            raise RecordingError(f"{where}: 'runs' must be a non-empty list of run documents")
        return cls([RunDocument.from_json(r, f"{where}: runs[{i}]", known)
                    for i, r in enumerate(runs)])


def load(d: Any, where: str, known: Collection[str] | None = None) -> RunDocument | Matrix:
    """A saved document, one run or a matrix (known as for ScenarioResult.from_json)."""
    if isinstance(d, dict) and "runs" in d:
        return Matrix.from_json(d, where, known)
    return RunDocument.from_json(d, where, known)


# --- the answers of `trace` and `stall --watch` ------------------------------------------


@dataclasses.dataclass(frozen=True)
class TraceDocument:
    """`klptrace trace --format json`: the command and its exit status, what was
    recorded (events, and the callbacks among them), its transcript, and what went wrong."""

    kernel: str
    command: list[str]
    status: int
    recording: Recording
    transcript: list[str]
    notes: list[str] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)
    oops: list[str] | None = None  # the kernel's oops, if it oopsed
    shadow_leaks: list[ShadowLeak] = dataclasses.field(default_factory=list)
    shadow_problems: list[ShadowProblem] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        rec = self.recording
        d: dict[str, Any] = {"kernel": self.kernel, "command": self.command, "status": self.status,
             "lost_events": rec.lost, "probes": [p.to_json() for p in rec.probes],
             "events": [e.to_json() for e in rec.events], "callbacks": callbacks_json(rec.events),
             "transcript": self.transcript, "notes": self.notes, "problems": self.problems}
        if self.oops is not None:
            d["oops"] = self.oops
        d.update(shadow_json(self.shadow_leaks, self.shadow_problems))
        return d


@dataclasses.dataclass(frozen=True)
class WatchedTask:
    """A task a watch saw holding the transition, and how long it took to switch after
    (None: it had not switched when the watch ended)."""

    pid: int
    tid: int
    comm: str
    reason: Reason | str
    function: str
    switch_latency_s: float | None = None
    after_round: int | None = None  # the signal round (its try) it switched after, if any

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.after_round is None:  # switched before any round, or not at all
            del d["after_round"]
        return d


@dataclasses.dataclass(frozen=True)
class StallWatch:
    """`klptrace stall --watch`: the transition's direction, whether it completed, its
    story while klptrace watched, and each task that held it; for its page (report/html.py)
    also what was recorded, the last report while in transition (None: never seen in
    progress), how long it watched and on which kernel, which its JSON does not carry."""

    patch: str
    direction: Direction | None
    completed: bool
    result: str  # "patched complete", "in transition"...
    timeline: list[StallStep]
    tasks: list[WatchedTask]
    recording: Recording = dataclasses.field(default_factory=Recording)
    report: StallReport | None = None
    watched_s: float = 0.0
    kernel: str = ""
    rounds: list[SignalRound] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)  # why not to trust it

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "patch": self.patch, "direction": self.direction, "completed": self.completed,
            "result": self.result, "timeline": [s.to_json() for s in self.timeline],
            "tasks": [t.to_json() for t in self.tasks]}
        if self.rounds:  # a watch that saw no signal round reads as before
            d["rounds"] = [r.to_json() for r in self.rounds]
        if self.problems:  # and one whose recording is whole
            d["problems"] = list(self.problems)
        return d
