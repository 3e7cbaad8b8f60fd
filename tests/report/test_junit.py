"""--format junit: a stalling scenario's stall report in its testcase's <system-out>, or
in its failure's body, and a file that parses whatever a task's comm holds."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import shadowed as sh
from stalled import HOSTILE, STALLED, TASK_LINE, hostile_stall, load, run, run_doc
from util import saved_run

from klptrace import results
from klptrace.report import junit

#: stalled.HOSTILE as a JUnit reader gets it back
_READ_BACK = ("x\nok 99 injected\nnot ok 98 # SKIP\\x1b[2J<b a='1'>]]></system-out>&amp;#"
              "\\x00\\x07\x7f\x85\u2028\ufffd\ufffd")


def _cases(out: str) -> dict[str, ET.Element]:
    """Each testcase of the file (parsed as any JUnit reader would), by name."""
    return {c.attrib["name"]: c for c in ET.fromstring(out.encode()).iter("testcase")}


def test_the_stalling_scenario_and_no_other_says_its_stall_report() -> None:
    cases = _cases(junit.render(load(run_doc())))
    assert len(cases) == 11
    mine = cases.pop(STALLED)
    [out] = mine.findall("system-out")
    lines = (out.text or "").splitlines()
    assert lines[:3] == [
        "stall report: klptrace_lp: patching transition in progress for 0.5 s, 1 try",
        TASK_LINE, "next steps:"]
    assert "  - To give up, reverse the transition: echo 0 > /sys/kernel/livepatch/klptrace_lp/" \
        "enabled." in lines[4]
    assert all(len(c) == 0 for c in cases.values())  # the passes: nothing inside
    assert "system-out" not in junit.render(load(saved_run()))


def test_a_failed_stalling_scenario_has_it_in_its_failure() -> None:
    stall = "stall: kworker: sleeping on function klptrace_busy_work_func(); ended: reversed"
    mine = _cases(junit.render(load(run_doc(status="fail", recorded=[stall]))))[STALLED]
    [failure] = list(mine)
    assert failure.tag == "failure"
    assert failure.attrib["message"] == "line 3: the story went another way"
    lines = (failure.text or "").splitlines()
    assert lines[:3] == ["a problem", "-expected", "+recorded"]
    assert lines[3].startswith("stall report: ") and TASK_LINE in lines
    assert lines[-1] == f"recorded {stall}"


def test_a_hostile_comm_cannot_break_the_file() -> None:
    for status in ("pass", "error"):
        doc = run_doc(hostile_stall(), status=status, recorded=[f"stall: {HOSTILE}"])
        for m in (load(doc), results.Matrix([run(doc), run(doc)])):
            out = junit.render(m)
            suites = ET.fromstring(out.encode())  # parses: nothing ended an element early
            mines = [c for c in suites.iter("testcase") if c.attrib["name"] == STALLED]
            assert len(mines) == len(m.runs)
            for mine in mines:
                [el] = list(mine)  # one element: nothing the comm wrote became another
                assert el.tag == ("system-out" if status == "pass" else "error")
                said = el.text or ""
                # the markup comes back as the text it was (a line end as the parser
                # reads one), and what XML 1.0 cannot hold as a visible escape
                assert f"task {_READ_BACK} (pid 22, tid 22)" in said
                assert f"recorded stall: {_READ_BACK}" in said


# --- shadow variables (issue 21) --------------------------------------------------------


def test_a_leak_is_an_error_whose_body_names_each_leaked_variable() -> None:
    expected = (f"shadow leak: id 7 allocated by {sh.LP}",)
    cases = _cases(junit.render(sh.matrix(
        sh.result("kept", sh.kept()), sh.result("leaky", sh.leaky()),
        sh.result("leak-expected", sh.leaky(), expected), sh.result("misused", sh.misused()))))
    assert list(cases["kept"]) == []
    [err] = cases["leaky"].findall("error")
    lines = (err.text or "").splitlines()
    assert err.attrib["message"].startswith("2 shadow variables of id 7 allocated by ")
    leaks = [f"shadow leak: <{sh.A:#x}, 7> allocated by {sh.LP} at 1100 ns, never freed",
             f"shadow leak: <{sh.B:#x}, 7> allocated by {sh.LP} at 1110 ns, never freed"]
    assert lines[-2:] == leaks and lines[0].startswith("2 shadow variables of id 7")
    # expected: no failure, and the leaks said in its output
    [out] = cases["leak-expected"].findall("system-out")
    assert not cases["leak-expected"].findall("error") and out.text == "\n".join(leaks)
    [err] = cases["misused"].findall("error")
    assert "klp_shadow_free() of <obj#1, 7> by klptrace_state_lp (post_unpatch) freed " \
           "nothing" in (err.text or "")


def test_a_hostile_module_name_cannot_break_the_file() -> None:
    for m in (sh.matrix(sh.result("hostile", sh.hostile())),
              results.Matrix([sh.doc(sh.result("hostile", sh.hostile())),
                              sh.doc(sh.result("kept", sh.kept()), kernel=f"7{HOSTILE}")])):
        cases = _cases(junit.render(m))
        assert sorted(cases) == sorted(["hostile", "kept"][:len(m.runs)])
        [err] = cases["hostile"].findall("error")
        assert f"shadow leak: <{sh.A:#x}, 7> allocated by lp{_READ_BACK} at" in (err.text or "")
