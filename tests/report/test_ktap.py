"""--format ktap: a stalling scenario's stall report as diagnostics of its own test, and a
task's comm, whatever it holds, never a line of KTAP of its own."""

from __future__ import annotations

from stalled import HOSTILE, STALLED, TASK_LINE, hostile_stall, load, run, run_doc
from util import saved_run

from klptrace import results
from klptrace.report import ktap


def _blocks(out: str) -> dict[str, list[str]]:
    """Each test's diagnostics: the `# ` lines between the previous result line and its own,
    by the test's description."""
    blocks: dict[str, list[str]] = {}
    pending: list[str] = []
    for line in out.splitlines():
        bare = line.strip()
        if bare.startswith("# ") and not bare.startswith(("# Subtest:", "# klptrace on")):
            pending.append(bare[2:])
        elif bare.startswith(("ok ", "not ok ")):
            blocks[bare.split(" ", 3 if bare.startswith("not") else 2)[-1]] = pending
            pending = []
    return blocks


def test_the_stalling_scenario_and_no_other_carries_the_stall_report() -> None:
    blocks = _blocks(ktap.render(load(run_doc())))
    assert len(blocks) == 11
    mine = blocks.pop(STALLED)
    assert mine[0] == ("stall report: klptrace_lp: patching transition in progress for 0.5 s, "
                       "1 try")
    assert mine[1] == TASK_LINE and mine[2] == "next steps:"
    assert mine[3].startswith("  - kworker/1:0+events:22 is a kernel thread")
    assert any("/sys/kernel/livepatch/klptrace_lp/force" in line for line in mine)
    assert not any(blocks.values())  # a pass says nothing else
    # the saved run without the report: nothing of it anywhere
    assert "stall report" not in ktap.render(load(saved_run()))


def test_a_failed_stalling_scenario_says_what_went_wrong_then_the_stall() -> None:
    stall = "stall: kworker: sleeping on function klptrace_busy_work_func(); ended: reversed"
    blocks = _blocks(ktap.render(load(run_doc(status="fail", recorded=["x", stall]))))
    mine = blocks[STALLED]
    assert mine[:4] == ["line 3: the story went another way", "a problem", "-expected",
                        "+recorded"]
    assert mine[4].startswith("stall report: ") and TASK_LINE in mine
    # the stall line the checker added to the recorded transcript ([[stall]]), last
    assert mine[-1] == f"recorded {stall}"


def test_a_matrix_indents_the_stall_report_with_its_kernel_subtests() -> None:
    matrix = results.Matrix([run(run_doc()), run(saved_run())])
    out = ktap.render(matrix)
    assert f"    # {TASK_LINE}\n" in out and out.count("stall report:") == 1


#: how each diagnostic line of the stall report starts (stall.brief_lines)
_OURS = ("# stall report: ", "#   signal ", "# task ", "#   - ", "# recorded ")


def _results(out: str) -> list[str]:
    """The lines of KTAP that are not diagnostics."""
    return [ln for ln in out.splitlines() if not ln.lstrip().startswith("# ")]


def test_a_hostile_comm_stays_inside_its_diagnostic_lines() -> None:
    hostile = run_doc(hostile_stall(), status="fail", recorded=[f"stall: {HOSTILE}"])
    without = run_doc(status="fail")
    del without["scenarios"][8]["stall"]
    for wrap in (load, lambda d: results.Matrix([run(d)])):
        out = ktap.render(wrap(hostile))
        # no line ends but the formatter's own (not \r, \x85 or U+2028)
        assert out.splitlines() == out.split("\n")[:-1]
        # the comm is written, escaped, on diagnostic lines only, and the lines that are
        # not diagnostics are those of the same run without the report
        assert "# task x\\x0aok 99 injected\\x0d\\x0anot ok 98 # SKIP\\x1b[2J<b" in out
        assert _results(out) == _results(ktap.render(wrap(without)))
        # and no diagnostic starts with it: `# Subtest:` or `# Totals:` would mean more
        held = [ln.lstrip() for ln in out.splitlines() if "ok 99" in ln]
        assert len(held) >= 5 and all(ln.startswith(_OURS) for ln in held)
        assert "\x00" not in out and "\ufffd" in out
