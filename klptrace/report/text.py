"""text: a table, one row per scenario (a column per kernel for a matrix), then each
problem's explanation and diff, and the shadow variables each scenario left behind."""

from collections.abc import Mapping

from tabulate import tabulate

from klptrace.report.markup import terminal
from klptrace.results import Matrix, RunDocument, Status

_QUIET = (Status.PASS, Status.SKIP)


def _details(run: RunDocument, where: str = "") -> list[str]:
    out: list[str] = []
    for s in run.scenarios:
        # a leak the scenario expects passes, and is still listed with its address
        if s.status in _QUIET and not s.notes and not s.verdict.shadow_leaks:
            continue
        out += ["", f"--- {s.id}{where}: {s.status}"]
        if s.verdict.explanation:
            out.append(s.verdict.explanation)
        out += [f"  {p}" for p in s.verdict.problems]
        out += [f"  shadow leak: {k.text}" for k in s.verdict.shadow_leaks]
        out += [f"  note: {n}" for n in s.notes]
        out += s.verdict.diff
    return out


def _totals(t: Mapping[Status, int]) -> str:
    return ", ".join(f"{n} {k}" for k, n in t.items())


def _matrix(m: Matrix) -> str:
    runs = m.runs
    ids = list(dict.fromkeys(s.id for r in runs for s in r.scenarios))
    cells = {(i, s.id): s.status.upper() for i, r in enumerate(runs) for s in r.scenarios}
    rows = [(sid, *(cells.get((i, sid), "-") for i in range(len(runs)))) for sid in ids]
    out = [f"{len(runs)} kernels, lost events: "
           + ", ".join(f"{r.kernel} {r.lost_events}" for r in runs), ""]
    out.append(tabulate(rows, headers=["scenario", *(r.kernel for r in runs)]))
    for r in runs:
        out += _details(r, f" on {r.kernel}")
    out += ["", *(f"{r.kernel}: {_totals(r.totals)}" for r in runs),
            f"all: {_totals(m.totals)}"]
    return terminal("\n".join(out)) + "\n"


def render(m: Matrix) -> str:
    run = m.run
    if run is None:
        return _matrix(m)
    rows = [(s.id, s.status.upper(), len(s.recording.events), f"{s.seconds:.1f}")
            for s in run.scenarios]
    out = [f"kernel {run.kernel}, lost events: {run.lost_events}", ""]
    out.append(tabulate(rows, headers=["scenario", "result", "events", "seconds"]))
    out += _details(run)
    out += ["", _totals(run.totals)]
    return terminal("\n".join(out)) + "\n"
