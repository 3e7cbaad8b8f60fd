"""--format ktap: a stalling scenario's stall report as diagnostics of its own test, and a
task's comm, whatever it holds, never a line of KTAP of its own."""

from __future__ import annotations

import shadowed as sh
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


# --- shadow variables (issue 21) --------------------------------------------------------


def _shadow_blocks() -> dict[str, list[str]]:
    expected = (f"shadow leak: id 7 allocated by {sh.LP}",)
    m = sh.matrix(sh.result("kept", sh.kept()), sh.result("leaky", sh.leaky()),
                  sh.result("leak-expected", sh.leaky(), expected),
                  sh.result("misused", sh.misused()))
    out = ktap.render(m)
    assert "ok 1 kept\nnot ok 2 leaky\n" not in out  # the leak block comes in between
    assert "\nok 1 kept\n" in out and "\nnot ok 2 leaky\n" in out
    assert "\nok 3 leak-expected\n" in out and "\nnot ok 4 misused\n" in out
    return _blocks(out)


def test_a_leak_is_a_failure_whose_diagnostics_name_each_leaked_variable() -> None:
    blocks = _shadow_blocks()
    assert blocks["kept"] == []  # taken over by a replace and freed: nothing to say
    leaky = blocks["leaky"]
    assert leaky[0].startswith("2 shadow variables of id 7 allocated by klptrace_state_lp")
    assert leaky[-2:] == [
        f"shadow leak: <{sh.A:#x}, 7> allocated by {sh.LP} at 1100 ns, never freed",
        f"shadow leak: <{sh.B:#x}, 7> allocated by {sh.LP} at 1110 ns, never freed"]
    # a leak the scenario expects passes, and its diagnostics still list it
    assert blocks["leak-expected"] == leaky[-2:]


def test_a_misused_shadow_variable_is_a_failure_with_the_kernel_call_named() -> None:
    mine = _shadow_blocks()["misused"]
    assert mine and all("klp_shadow_free() of <obj#1, 7> by klptrace_state_lp "
                        "(post_unpatch) freed nothing" in line for line in mine)


def test_a_hostile_module_name_stays_inside_its_diagnostics() -> None:
    for m in (sh.matrix(sh.result("hostile", sh.hostile())),
              results.Matrix([sh.doc(sh.result("hostile", sh.hostile())),
                              sh.doc(sh.result("kept", sh.kept()), kernel="7.3")])):
        out = ktap.render(m)
        assert out.splitlines() == out.split("\n")[:-1]
        assert [ln.strip() for ln in _results(out) if "ok" in ln.split()[:2]] in (
            ["not ok 1 hostile"], ["not ok 1 hostile", "not ok 1 6.1", "ok 1 kept",
                                  "ok 2 7.3"])
        held = [ln.lstrip() for ln in out.splitlines() if "ok 99" in ln]
        assert len(held) == 4 and all(ln.startswith(("# shadow leak: <", "# klp_shadow_free",
                                                     "# shadow variable of id 7")) for ln in held)
        assert "\x00" not in out
