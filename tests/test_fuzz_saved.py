"""The saved runs in tests/data, mutated at random (a leaf replaced by another JSON value, a
huge integer, NaN, a control character, a wrong type; a key dropped) and checked in-process as
`klptrace check` does: each is refused with a named error, or every format's output parses.

Derandomized, so CI sees the same examples every time; about 30 s in all.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_saved_runs import output_parses
from util import DATA

from klptrace import report, scenario
from klptrace.commands import check
from klptrace.errors import KlptraceError

SAVED = {p.name: json.loads(p.read_text()) for p in (DATA / "run-6.1.json",
                                                     DATA / "run-busy-6.1.json")}
SAVED["matrix"] = {"runs": list(SAVED.values())}  # as `run --kernel A --kernel B` writes it
KNOWN = {s.id: s for s in scenario.load_dir()}
Place = tuple[str | int, ...]

# JSON text that json.dumps cannot write, put in place of a marker string
_FRAGMENTS = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "9" * 5000, str(2**64),
              str(-2**63 - 1), "[" * 50 + "]" * 50, '"\\ud800"', '"\\udfff x"', "1e-400"]
_NASTY = st.sampled_from(["\x00", "\n", "\r\n", "\x1b[2J", "\x0b", "\x85", "\u2028", "#",
                          " # SKIP", "\nok 99 x", "\ufffe", "\uffff", "]]>", "<&>", '"', "\\"])
_TEXT = st.lists(_NASTY | st.text(max_size=4), max_size=4).map("".join)
_SCALAR = (st.none() | st.booleans() | _TEXT
           | st.integers(min_value=-2**70, max_value=2**70)
           | st.sampled_from([0, -1, 1, 2**63, 2**64 - 1, 2**64, 10**20, 10**300])
           | st.floats(allow_nan=False, allow_infinity=False))
_VALUE = st.recursive(_SCALAR, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(_TEXT, inner, max_size=3), max_leaves=6)


def _like(v: Any) -> st.SearchStrategy[Any]:
    """Values of v's JSON type, edge cases first."""
    if isinstance(v, bool):
        return st.booleans()
    if isinstance(v, int):
        return st.sampled_from([0, 1, -1, 2**31, 2**63 - 1, 2**64 - 1, -2**63]) | st.integers()
    if isinstance(v, float):
        return st.sampled_from([0.0, -0.0, 5e-324, 1e9, 1e300]) | st.floats(
            allow_nan=False, allow_infinity=False)
    if isinstance(v, str):
        return _TEXT
    if isinstance(v, list):
        return st.lists(_TEXT, max_size=3)
    return st.dictionaries(_TEXT, _SCALAR, max_size=3)


def _paths(v: Any, path: Place = ()) -> list[Place]:
    """Every place in a document (the document itself too)."""
    out = [path]
    if isinstance(v, dict):
        for k, x in v.items():
            out += _paths(x, (*path, k))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            out += _paths(x, (*path, i))
    return out


def _parent(doc: Any, path: Place) -> Any:
    for p in path[:-1]:
        doc = doc[p]
    return doc


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """The text of a saved run with one to four places changed."""
    doc = copy.deepcopy(SAVED[draw(st.sampled_from(sorted(SAVED)))])
    fragments: dict[str, str] = {}
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(doc) if p]
        if not paths:  # an earlier change left nothing to change
            break
        path = paths[draw(st.integers(0, len(paths) - 1))]
        parent = _parent(doc, path)
        how = draw(st.sampled_from(["like", "like", "value", "value", "fragment", "drop"]))
        if how == "like":  # a value of the same type: most get past validation, to the formats
            parent[path[-1]] = draw(_like(parent[path[-1]]))
        elif how == "drop":
            del parent[path[-1]]
        elif how == "fragment":
            marker = f"@@fragment{len(fragments)}@@"
            fragments[marker] = draw(st.sampled_from(_FRAGMENTS))
            parent[path[-1]] = marker
        else:
            parent[path[-1]] = draw(_VALUE)
    text = json.dumps(doc)
    for marker, fragment in fragments.items():
        text = text.replace(json.dumps(marker), fragment)
    return text


@pytest.mark.parametrize("name", sorted(SAVED))
def test_the_saved_runs_render_in_every_format(name: str) -> None:
    doc = check.rejudged(json.dumps(SAVED[name]), name, KNOWN)
    assert doc.exit_status() == 0
    for fmt in report.FORMATS:
        output_parses(fmt, report.render(fmt, doc))


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated())
def test_a_mutated_run_is_refused_or_renders(text: str) -> None:
    try:
        doc = check.rejudged(text, "fuzz.json", KNOWN)
    except KlptraceError as e:  # one line, as the CLI prints it
        assert "\n" not in e.message and e.status in (1, 2)
        event(f"refused: {e.message.split(': ', 2)[1][:20]}")
        return
    data = doc.to_json()
    json.dumps(data, allow_nan=False)  # what --record writes
    assert doc.exit_status() in (0, 1, 4)
    event(f"rendered, exit {doc.exit_status()}")
    for fmt in report.FORMATS:
        output_parses(fmt, report.render(fmt, doc))
