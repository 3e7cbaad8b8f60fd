"""`klptrace check RECORDING`: judge a saved run (or matrix) again, offline, and render it."""

from __future__ import annotations

import dataclasses
import json

from klptrace import checker, files, results, scenario
from klptrace.commands import Output, emit
from klptrace.results import Matrix, RecordingError, RunDocument, Status


@dataclasses.dataclass
class CheckOptions(Output):
    recording: str = ""  # the saved document
    scenarios: str | None = None  # a user's scenario directory


def run(opts: CheckOptions) -> int:
    raw = files.read_text(opts.recording, RecordingError,
                          "check reads a file written by `klptrace run --record FILE`")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise RecordingError(f"{opts.recording}: not JSON (line {e.lineno}, column {e.colno}): "
                             f"{e.msg}", "was the file truncated?") from None
    known = {s.id: s for s in scenario.load_dir(opts.scenarios or scenario.BUILTIN_DIR)}
    doc = results.load(data, opts.recording, known)
    if isinstance(doc, Matrix):
        return emit(Matrix([_judged(r, known) for r in doc.runs]), opts)
    return emit(_judged(doc, known), opts)


def _judged(doc: RunDocument, known: dict[str, scenario.Scenario]) -> RunDocument:
    """Every scenario judged again against its scenario file's expectation."""
    out = []
    for r in doc.scenarios:
        expect = list(known[r.id].expect)
        if r.status == Status.SKIP:  # nothing ran: nothing to judge
            out.append(dataclasses.replace(r, verdict=dataclasses.replace(r.verdict,
                                                                          expected=expect)))
        else:
            out.append(checker.rejudge(r, expect))
    return checker.account_lost(dataclasses.replace(doc, scenarios=out))
