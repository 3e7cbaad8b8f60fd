"""Runs with states and shadow variables, for the formatters' tests: recordings built by
hand with tests/test_ledger.py's builder (in the kernel's order), judged as `run` judges
them, and read back from their JSON as `check` reads a saved run."""

from __future__ import annotations

import dataclasses

from stalled import HOSTILE
from test_ledger import LP, LP2, POST_UNPATCH, A, B, Rec, _alloc, _free, _leaky, _taken_over

from klptrace import checker
from klptrace.events import ShadowOp
from klptrace.results import Matrix, Recording, RunDocument, ScenarioResult
from klptrace.transcript import render

__all__ = ["HOSTILE", "LP", "LP2", "POST_UNPATCH", "A", "B", "Rec", "ShadowOp", "doc",
           "hostile", "kept", "leaky", "matrix", "misused"]


def kept() -> Rec:
    """State 42 set up by LP with a shadow variable on A, taken over by the cumulative LP2,
    which frees the variable when it is disabled."""
    r = _taken_over()
    r.disable(LP2, [_free(LP2, A, 42)])
    r.unload(LP2)
    return r


def leaky() -> Rec:
    """LP allocates id 7 on A and B and is removed without freeing them: two leaks."""
    return _leaky()


def misused() -> Rec:
    """LP frees its variable twice: a free of nothing (a problem), and no leak."""
    r = Rec()
    r.enable(LP, {}, [_alloc(LP, A, 7)])
    r.disable(LP, [_free(LP, A, 7), _free(LP, A, 7)])
    return r


def hostile() -> Rec:
    """A leak and a problem by a module whose name is HOSTILE (a saved file can hold any)."""
    name = f"lp{HOSTILE}"
    r = Rec()
    r.enable(name, {9: 1}, [_alloc(name, A, 7)])
    r.disable(name, [("shadow", (ShadowOp.FREE, name, B, 7, None, POST_UNPATCH, name))])
    r.unload(name)
    return r


def result(sid: str, r: Rec, expect: tuple[str, ...] = (), scale: int = 1) -> ScenarioResult:
    """A scenario of r's events, judged with its own transcript (and expect) expected;
    scale: each timestamp times that (the builder's 10 ns apart are too close to draw)."""
    events = [dataclasses.replace(e, ts_ns=e.ts_ns * scale) for e in r.events]
    verdict = checker.judge(render(events) + list(expect), Recording(events))
    return ScenarioResult(sid, verdict, Recording(events), duration_s=0.5)


def doc(*scenarios: ScenarioResult, kernel: str = "6.1") -> RunDocument:
    """A run of scenarios, as `check` reads it back from its saved JSON."""
    return RunDocument.from_json(RunDocument(kernel, list(scenarios)).to_json(), "doc")


def matrix(*scenarios: ScenarioResult) -> Matrix:
    """A run of scenarios as a matrix of one, as the formatters take it."""
    return Matrix.of(doc(*scenarios))
