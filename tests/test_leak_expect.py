"""A scenario's [[shadow_leak]] tables (klptrace/leak_expect.py, validated in scenario.py),
and the lines they add to the expectation and to the recorded transcript."""

from __future__ import annotations

import pytest
from test_ledger import LP, _leaky

from klptrace import leak_expect, ledger, scenario
from klptrace.report import text
from klptrace.results import Matrix, Recording, RunDocument, ScenarioResult, Status

HEAD = ('id = "x"\ntitle = "t"\ndoc = "d"\nexpect = "% insmod a.ko"\n'
        'steps = [{ load = "a" }]\n')


def test_a_leak_table_ends_the_expectation() -> None:
    sc = scenario.parse(HEAD + '[[shadow_leak]]\nshadow_id = 7\nallocated_by = "lp"\n', "f.toml")
    assert sc.leaks == (leak_expect.ExpectedLeak(7, "lp"),)
    assert sc.expect[-1] == "shadow leak: id 7 allocated by lp"


@pytest.mark.parametrize("table,says", [
    ('shadow_id = "7"\nallocated_by = "lp"', "shadow_id must be an integer"),
    ("shadow_id = -1\nallocated_by = \"lp\"", "shadow_id must be an integer"),
    ("shadow_id = 7\nallocated_by = 3", "allocated_by must be a string"),
    ('shadow_id = 7\nallocated_by = "../lp"', 'allocated_by "../lp" is not a module name'),
    ('shadow_id = 7\nallocated_by = "lp"\nobj = 1', "unknown key 'obj'"),
    ('shadow_id = 7', "allocated_by must be a string"),
])
def test_the_leak_table_is_validated(table: str, says: str) -> None:
    with pytest.raises(scenario.ScenarioError) as e:
        scenario.parse(HEAD + "[[shadow_leak]]\n" + table + "\n", "f.toml")
    assert says in e.value.message and e.value.message.startswith("f.toml")


def test_shadow_leak_must_be_tables() -> None:
    with pytest.raises(scenario.ScenarioError, match="array of at most"):
        scenario.parse(HEAD + "shadow_leak = 3\n", "f.toml")


def test_leak_lines_and_unexpected_leaks() -> None:
    led = ledger.of(_leaky().events)
    said = [f"shadow leak: id 7 allocated by {LP}", "shadow leak: id 9 allocated by other"]
    assert leak_expect.recorded(said, led) == [said[0], said[1] + ": none left"]
    assert leak_expect.unexpected(said, led) == []
    # one problem per id and module, naming its objects
    [both] = leak_expect.unexpected([], led)
    assert both.startswith(f"2 shadow variables of id 7 allocated by {LP} never freed "
                           "(obj#1, obj#2): ")
    assert leak_expect.leak_lines(led) == [said[0]]  # one line per id and module


def test_the_text_report_lists_an_expected_leak() -> None:
    from klptrace import checker
    from klptrace.transcript import render
    r = _leaky()
    v = checker.judge([*render(r.events), f"shadow leak: id 7 allocated by {LP}"],
                      Recording(r.events))
    assert v.status == Status.PASS
    out = text.render(Matrix.of(RunDocument("6.1", [ScenarioResult("x", v,
                                                                   Recording(r.events))])))
    assert f"shadow leak: <0xffff888003c1e000, 7> allocated by {LP} at " in out
    assert out.count("shadow leak:") == 2
