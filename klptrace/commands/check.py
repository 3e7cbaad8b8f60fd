"""`klptrace check RECORDING`: judge a saved run (or matrix) again, offline, and render it."""

from __future__ import annotations

import dataclasses

from klptrace import checker, files, jsontext, results, scenario
from klptrace.commands import Output, emit
from klptrace.results import Matrix, RecordingError, RunDocument


@dataclasses.dataclass
class CheckOptions(Output):
    recording: str = ""  # the saved document
    scenarios: str | None = None  # a user's scenario directory


def run(opts: CheckOptions) -> int:
    raw = files.read_text(opts.recording, RecordingError,
                          "check reads a file written by `klptrace run --record FILE`")
    known = {s.id: s for s in scenario.load_dir(opts.scenarios or scenario.BUILTIN_DIR)}
    return emit(rejudged(raw, opts.recording, known), opts)


def rejudged(raw: str, where: str, known: dict[str, scenario.Scenario]) -> RunDocument | Matrix:
    """The saved document in raw (read from where), validated and judged again; its
    statuses are not trusted."""
    doc = results.load(jsontext.loads(raw, where, RecordingError), where, known)
    runs = doc.runs if isinstance(doc, Matrix) else [doc]
    for i, r in enumerate(runs):
        if not r.scenarios:  # a run lists every scenario it was asked for, skipped ones too
            which = f"runs[{i}] (kernel {r.kernel!r})" if isinstance(doc, Matrix) else "the run"
            raise RecordingError(f"{where}: {which} has no scenarios: nothing to check",
                                 "was the file cut short or edited? `klptrace run --record "
                                 "FILE` lists every scenario it was asked for")
    if isinstance(doc, Matrix):
        return Matrix([_judged(r, known) for r in doc.runs])
    return _judged(doc, known)


def _judged(doc: RunDocument, known: dict[str, scenario.Scenario]) -> RunDocument:
    """Every scenario judged again against its scenario file's expectation."""
    return checker.recheck(doc, {sid: s.expect for sid, s in known.items()})
