"""The JSON document of a run, and the exit status it implies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from klptrace.checker import ERROR, FAIL, PASS, SKIP

STATUSES = (PASS, FAIL, SKIP, ERROR)


def run_document(kernel: str, scenarios: Sequence[dict[str, Any]], lost: int,
                 probes: Sequence[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """Top level: kernel, lost_events, probes, scenarios, totals."""
    totals = {s: sum(1 for sc in scenarios if sc["status"] == s) for s in STATUSES}
    doc: dict[str, Any] = {
        "kernel": kernel,
        "lost_events": lost,
        "probes": list(probes),
        "scenarios": list(scenarios),
        "totals": totals,
    }
    doc.update(extra)
    return doc


def exit_status(doc: dict[str, Any]) -> int:
    """0 all passed, 4 nothing could run (all skipped), 1 anything else.

    A matrix's status is that of all its runs' scenarios together."""
    runs = doc["runs"] if is_matrix(doc) else [doc]
    statuses = [s["status"] for r in runs for s in r["scenarios"]]
    if statuses and all(s == SKIP for s in statuses):
        return 4
    if statuses and all(s in (PASS, SKIP) for s in statuses):
        return 0
    return 1


def matrix_document(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several kernels' runs in one document: `runs` (each a run document), `totals`."""
    totals = {s: sum(r["totals"][s] for r in runs) for s in STATUSES}
    return {"runs": list(runs), "totals": totals}


def is_matrix(doc: dict[str, Any]) -> bool:
    """Whether a document holds several kernels' runs (else it is one run)."""
    return isinstance(doc.get("runs"), list)
