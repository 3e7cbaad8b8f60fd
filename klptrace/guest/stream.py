"""The typed stream of a run in a lab guest to the host: one JSON object a line.

The run in the guest (`run --stream FILE`) writes each record as it happens and
syncs it, so a panic or a wedged kernel loses nothing already recorded; the
host reads the file back after the guest stops (and while it runs, to tell
when its work is done). Both ends are klptrace's: Writer is the one writer,
read() the one reader, and the records below are all a stream holds.

On the wire each record is an object of one key: {"start": {...}}, {"begin":
ID}, {"scenario": {...}}, {"wedged": WHY} or {"end": {...}}. The only cut the
reader forgives is the last line's (what was being written when the guest
died, with no newline yet); any other line that is not one of these records
is an error that names the file and the line.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from klptrace import jsontext
from klptrace.results import Probe, RecordingError, RunDocument, ScenarioResult


@dataclasses.dataclass(frozen=True)
class Start:
    """The recorder is ready: the kernel, the start-up timing, the probes as attached."""

    kernel: str
    timing: dict[str, Any] = dataclasses.field(default_factory=dict)
    kernel_info: dict[str, Any] = dataclasses.field(default_factory=dict)
    probes: list[Probe] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "timing": self.timing, "kernel_info": self.kernel_info,
                "probes": [p.to_json() for p in self.probes]}


@dataclasses.dataclass(frozen=True)
class Begin:
    """A scenario starts: if no Result follows, the guest died in it."""

    id: str


@dataclasses.dataclass(frozen=True)
class Result:
    """A scenario's result, judged in the guest (its recording's probes are the run's,
    given back by read())."""

    scenario: ScenarioResult


@dataclasses.dataclass(frozen=True)
class Wedged:
    """The guest's kernel is wedged (why): the rest needs a fresh guest."""

    why: str


@dataclasses.dataclass(frozen=True)
class End:
    """The run in the guest is over: its totals. probes and timing are None when the
    record did not hold them (the Start's then stand)."""

    lost_events: int = 0
    probes: list[Probe] | None = None
    leftovers: list[str] = dataclasses.field(default_factory=list)
    timing: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        probes = None if self.probes is None else [p.to_json() for p in self.probes]
        d: dict[str, Any] = {"lost_events": self.lost_events, "probes": probes,
                             "leftovers": self.leftovers, "timing": self.timing}
        return {k: v for k, v in d.items() if v is not None}


Record = Start | Begin | Result | Wedged | End


def _wire(record: Record) -> dict[str, Any]:
    """The record as it goes on the wire: an object of one key."""
    if isinstance(record, Start):
        return {"start": record.to_json()}
    if isinstance(record, Begin):
        return {"begin": record.id}
    if isinstance(record, Result):
        return {"scenario": record.scenario.to_json()}
    if isinstance(record, Wedged):
        return {"wedged": record.why}
    return {"end": record.to_json()}


class Writer:
    """The guest's side: each record on its own line, synced before put() returns. With
    no path (a run that is not in a guest) it writes nothing."""

    def __init__(self, path: str | None) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) if path else None

    def put(self, record: Record) -> None:
        if self._fd is not None:
            os.write(self._fd, (json.dumps(_wire(record), allow_nan=False) + "\n").encode())
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclasses.dataclass
class Boot:
    """What one guest boot's stream says: its start, the results, and how it ended."""

    start: Start | None = None
    results: list[ScenarioResult] = dataclasses.field(default_factory=list)
    begun: str | None = None  # the scenario it began and wrote no result for
    wedged: str = ""
    end: End | None = None

    @property
    def probes(self) -> list[Probe]:
        """The run's probes as the guest last saw them."""
        if self.end is not None:
            return self.end.probes or []
        return self.start.probes if self.start is not None else []


def read(path: Path) -> Boot:
    """The records in path, checked; a file that is not there yet is an empty stream.
    RecordingError names the line that is not a record, or out of its place."""
    try:
        data = path.read_bytes()
    except OSError:
        return Boot()
    boot = Boot()
    lines = data.split(b"\n")[:-1]  # after the last newline: the torn record, if any
    for n, raw in enumerate(lines, 1):
        where = f"{path}:{n}"
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            raise RecordingError(f"{where}: not UTF-8 text") from None
        _add(boot, _record(jsontext.loads(text, where, RecordingError), where), where)
    probes = boot.probes
    boot.results = [dataclasses.replace(r, recording=dataclasses.replace(
        r.recording, probes=list(probes))) for r in boot.results]
    return boot


def _add(boot: Boot, record: Record, where: str) -> None:
    """Fold record into boot, in the order the writer keeps."""
    if (boot.start is None) != isinstance(record, Start):
        raise RecordingError(f"{where}: {'a second' if boot.start else 'no'} start record"
                             + ("" if boot.start else " before this one"))
    if boot.end is not None:
        raise RecordingError(f"{where}: a record after the end record")
    if isinstance(record, Start):
        boot.start = record
    elif isinstance(record, Begin):
        if boot.begun is not None:
            raise RecordingError(f"{where}: {record.id!r} begins before {boot.begun!r} "
                                 "has a result")
        boot.begun = record.id
    elif isinstance(record, Result):
        sid = record.scenario.id
        if boot.begun is not None and sid != boot.begun:
            raise RecordingError(f"{where}: the result of {sid!r} while {boot.begun!r} runs")
        boot.results.append(record.scenario)
        boot.begun = None
    elif isinstance(record, Wedged):
        boot.wedged = record.why
    else:
        boot.end = record


def _record(obj: Any, where: str) -> Record:
    """One line's record, every field of it checked as a saved run's would be."""
    if not isinstance(obj, dict) or len(obj) != 1:
        raise RecordingError(f"{where}: expected an object of one key (start, begin, "
                             "scenario, wedged or end)")
    ((key, v),) = obj.items()
    where = f"{where}: {key}"
    if key == "begin" or key == "wedged":
        if not isinstance(v, str) or not v:
            raise RecordingError(f"{where}: must be a non-empty string")
        return Begin(v) if key == "begin" else Wedged(v)
    if key == "scenario":
        return Result(ScenarioResult.from_json(v, where))
    if key not in ("start", "end"):
        raise RecordingError(f"{where}: not a record klptrace writes")
    if not isinstance(v, dict):
        raise RecordingError(f"{where}: expected a JSON object")
    # the fields that end in the run document: checked as RunDocument.from_json checks
    # a saved run's (probes' fields, timing in seconds, kernel_info strings...)
    doc = RunDocument.from_json({**v, "scenarios": [], "kernel": v.get("kernel", "")}, where)
    if key == "end":
        return End(doc.lost_events, doc.probes if "probes" in v else None,
                   doc.leftovers or [], doc.timing)
    if not isinstance(v.get("kernel"), str):
        raise RecordingError(f"{where}: 'kernel' must be a string")
    return Start(doc.kernel, doc.timing or {}, doc.kernel_info or {}, doc.probes)
