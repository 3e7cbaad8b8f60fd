"""--format junit: a stalling scenario's stall report in its testcase's <system-out>, or
in its failure's body, and a file that parses whatever a task's comm holds."""

from __future__ import annotations

import xml.etree.ElementTree as ET

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
