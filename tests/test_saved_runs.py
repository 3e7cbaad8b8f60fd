"""Saved runs as an adversary writes them (issue 19): `check` reads only what it should, refuses
what is not a klptrace run with one `klptrace: error:` line, never trusts a saved status, and
every output it writes parses whatever the run holds."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kcidb_io
import pytest
from util import DATA, REPO, one_error

from klptrace import cli, files, report, results
from klptrace.report import ktap

RUN, BUSY = DATA / "run-6.1.json", DATA / "run-busy-6.1.json"


def _doc(path: Path = RUN) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


# --- what every output must be ----------------------------------------------------------------


def _no_constant(name: str) -> None:
    raise AssertionError(f"{name} in JSON output")


def strict_json(text: str) -> Any:
    """text as JSON, refusing NaN, Infinity and -Infinity."""
    return json.loads(text, parse_constant=_no_constant)


_XML_FORBIDDEN = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_KTAP_LINE = re.compile(
    r"(?P<indent>(?:    )*)(?:"
    r"(?P<version>KTAP version 1)"
    r"|(?P<plan>1\.\.(?P<n>\d+))"
    r"|(?P<test>(?:not )?ok (?P<i>\d+)(?: (?:[^#\\]|\\.)*)?(?: # (?:SKIP|TODO)(?: .*)?)?)"
    r"|(?P<diag># .*))")


def ktap_lines(text: str) -> None:
    """KTAP's line grammar: every line is a version, a plan, a test line or a `# `
    diagnostic, on one line; at each level the tests are numbered 1..plan."""
    assert text.endswith("\n")
    lines = text[:-1].split("\n")
    assert lines == text.splitlines(), "a line break other than \\n"
    seen: dict[int, list[int]] = {}  # indent -> test numbers since its plan
    plans: dict[int, int] = {}
    for line in lines:
        assert not re.search("[\x00-\x08\x0a-\x1f\x7f]", line), line
        m = _KTAP_LINE.fullmatch(line)
        assert m, f"not a KTAP line: {line!r}"
        depth = len(m["indent"]) // 4
        if m["plan"]:
            plans[depth], seen[depth] = int(m["n"]), []
            seen.pop(depth + 1, None)
        elif m["test"]:
            if depth + 1 in plans:  # the subtests' end
                assert seen.get(depth + 1) == list(range(1, plans.pop(depth + 1) + 1)), line
            seen.setdefault(depth, []).append(int(m["i"]))
    assert seen.get(0) == list(range(1, plans[0] + 1)), text


def junit_xml(text: str) -> ET.Element:
    """The JUnit document, as an XML parser reads it."""
    return ET.fromstring(text.encode())


def kcidb(text: str) -> None:
    data = strict_json(text)
    kcidb_io.schema.LATEST.validate(data)


def output_parses(fmt: str, text: str) -> None:
    """Assert that text, written in fmt, is what its readers accept."""
    if fmt in ("junit", "html"):
        assert not _XML_FORBIDDEN.search(text)
    if fmt in ("json", "trace-event"):
        strict_json(text)
    elif fmt == "kcidb":
        kcidb(text)
    elif fmt == "junit":
        junit_xml(text)
    elif fmt == "ktap":
        ktap_lines(text)


# --- running check ------------------------------------------------------------------------------


def _write(tmp_path: Path, doc: Any, name: str = "r.json") -> Path:
    f = tmp_path / name
    f.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return f


def _check(capsys: pytest.CaptureFixture[str], f: Path, *opts: str) -> tuple[int, str, str]:
    code = cli.main(["check", str(f), *opts])
    out, err = capsys.readouterr()
    return code, out, err


def _every_format(capsys: pytest.CaptureFixture[str], f: Path) -> Iterator[tuple[str, int, str]]:
    """(format, exit status, output) of check f in each format; each output parses."""
    for fmt in report.FORMATS:
        code, out, err = _check(capsys, f, "--format", fmt)
        assert err == "" and "Traceback" not in out
        output_parses(fmt, out)
        yield fmt, code, out


def _refused(capsys: pytest.CaptureFixture[str], f: Path, says: str, status: int = 1) -> None:
    for fmt in ("text", "junit"):  # refused before any format is written
        code, out, err = _check(capsys, f, "--format", fmt)
        assert (code, out) == (status, ""), err
        assert says in one_error(err), err


# --- reading: what, and how much --------------------------------------------------------------


def test_a_character_device_is_refused_unread() -> None:
    # a subprocess with a timeout: reading /dev/zero would never end
    p = subprocess.run([sys.executable, "-m", "klptrace", "check", "/dev/zero"],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert p.returncode == 2 and p.stdout == ""
    assert one_error(p.stderr) == ("klptrace: error: cannot read /dev/zero: it is a character "
                                    "device, not a regular file or a pipe")


def test_a_pipe_is_read(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "klptrace", "check", "/dev/stdin"],
                       input=RUN.read_text(), capture_output=True, text=True, cwd=REPO,
                       timeout=60)
    assert p.returncode == 0 and "11 pass, 0 fail, 0 skip, 0 error" in p.stdout, p.stderr


def test_an_endless_pipe_stops_at_the_bound(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files, "MAX_READ", 1 << 20)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def zeros() -> None:
        try:
            with open(fifo, "wb") as w:
                while True:
                    w.write(bytes(1 << 16))
        except BrokenPipeError:
            pass  # check stopped reading: it has said why

    writer = threading.Thread(target=zeros, daemon=True)
    writer.start()
    code, out, err = _check(capsys, fifo)
    writer.join(timeout=30)
    assert not writer.is_alive()
    assert (code, out) == (1, "")
    assert f"{fifo}: larger than {1 << 20} bytes" in one_error(err)


def test_a_byte_order_mark_is_accepted(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "r.json"
    f.write_bytes(b"\xef\xbb\xbf" + RUN.read_bytes())
    with_bom = list(_every_format(capsys, f))
    assert with_bom == list(_every_format(capsys, RUN))
    assert {code for _, code, _ in with_bom} == {0}


def test_not_json_that_is_not_cut_short_is_not_called_truncated(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _check(capsys, _write(tmp_path, "[1, 2 3]"))
    assert code == 1 and "not JSON (line 1, column 7)" in one_error(err)
    assert "truncated" not in err


# --- strict JSON ------------------------------------------------------------------------------


def test_deep_nesting_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _refused(capsys, _write(tmp_path, "[" * 100_000 + "]" * 100_000), "nested deeper than 32")
    doc = _doc()  # deep, but not deep enough for Python's recursion limit
    doc["scenarios"][0]["notes"] = json.loads("[" * 40 + "]" * 40)
    _refused(capsys, _write(tmp_path, doc),
             # the list at depth 32 (the document is 0, its scenarios 1, notes 3)
             f"r.json: scenarios[0].notes{'[0]' * 29} is nested deeper than 32 levels")


@pytest.mark.parametrize(("value", "says"), [
    ("9" * 5000, "scenarios[0].duration_s is an integer of 5000 digits, larger than 64 bits"),
    (str(2**64), "scenarios[0].duration_s is an integer of 20 digits, larger than 64 bits"),
    ("NaN", "scenarios[0].duration_s is NaN, which is not a JSON number"),
    ("Infinity", "scenarios[0].duration_s is Infinity, which is not a JSON number"),
    ("-Infinity", "scenarios[0].duration_s is -Infinity, which is not a JSON number"),
    ("1e400", "scenarios[0].duration_s is 1e400, too large for a number"),
    ('"\\ud800"', "scenarios[0].duration_s holds a lone surrogate ('\\ud800'), which is not "
     "text"),
    ("-0.5", "scenarios[0]: 'duration_s' must be a number of seconds from 0 to 1e+09"),
    ("1e300", "scenarios[0]: 'duration_s' must be a number of seconds from 0 to 1e+09"),
])
def test_a_duration_that_is_no_number_of_seconds_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, says: str) -> None:
    doc = _doc()
    doc["scenarios"][0]["duration_s"] = "@@value@@"  # JSON text json.dumps cannot write
    text = json.dumps(doc).replace('"@@value@@"', value)
    _refused(capsys, _write(tmp_path, text), f"r.json: {says}")


@pytest.mark.parametrize(("field", "value", "says"), [
    ("ts_ns", 10**300, ".events[0].ts_ns is an integer of 301 digits, larger than 64 bits"),
    ("ts_ns", -1, ": events[0] is malformed: ts_ns -1 is out of its range"),
    ("pid", 2**40, ": events[0] is malformed: pid 1099511627776 is out of its range"),
    ("ret", 2**63, ": events[0] is malformed: ret 9223372036854775808 is out of its range"),
])
def test_event_integers_beyond_the_kernels_types_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str, value: int,
        says: str) -> None:
    doc = _doc()
    doc["scenarios"][0]["events"][0][field] = value
    _refused(capsys, _write(tmp_path, doc), f"r.json: scenarios[0]{says}")


def test_the_largest_clock_still_renders(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    doc = _doc()
    doc["scenarios"][0]["events"][-1]["ts_ns"] = 2**64 - 1
    for _fmt, code, _out in _every_format(capsys, _write(tmp_path, doc)):
        assert code == 0  # the order of the events is the order they were recorded


# --- every field a formatter reads ------------------------------------------------------------


@pytest.mark.parametrize(("change", "says"), [
    (lambda sc: sc["stall"].update(tasks=5), "scenarios[0]: stall: 'tasks' must be a list of "
     "objects"),
    (lambda sc: sc["stall"].update(tasks=[5]), "scenarios[0]: stall: 'tasks' must be a list "
     "of objects"),
    (lambda sc: sc["stall"]["tasks"][0].update(blocking_s=1e300),
     "stall: tasks[0]: 'blocking_s' must be a number of seconds within 1e+09"),
    (lambda sc: sc["stall"]["tasks"][0].update(tid="22"),
     "stall: tasks[0]: 'tid' must be a non-negative integer"),
    (lambda sc: sc["stall"]["tasks"][0].update(stack="msleep"),
     "stall: tasks[0]: 'stack' must be a list of strings"),
    (lambda sc: sc["stall"]["timeline"][1].update(tasks=3),
     "stall: timeline[1]: 'tasks' must be a list of strings"),
    (lambda sc: sc["stall"].update(tries="1"), "stall: 'tries' must be a non-negative integer"),
    (lambda sc: sc["stall"].update(direction="sideways"),
     "scenarios[0]: stall: 'direction' must be 'patching' or 'unpatching'"),
    (lambda sc: sc["stall"].pop("direction"), "stall: 'direction' must be 'patching' or"),
    (lambda sc: sc["stall"]["tasks"][0].update(source="guess"),
     "stall: tasks[0]: 'source' must be 'proc' or 'bpf'"),
    (lambda sc: sc.update(stall=[]), "scenarios[0]: stall: expected a JSON object"),
    (lambda sc: sc.update(start_time="yesterday"), "'start_time' must be a date and time"),
    (lambda sc: sc.update(start_time="2025-13-01T10:00:00.250+00:00"),
     "'start_time' is not a real date and time"),
])
def test_a_malformed_scenario_field_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        change: Callable[[dict[str, Any]], None], says: str) -> None:
    doc = _doc(BUSY)
    change(doc["scenarios"][0])
    _refused(capsys, _write(tmp_path, doc), says)


def test_a_saved_stall_report_reads_back_in_the_kernel_s_words() -> None:
    """The report a stalling scenario saved is the model's again: its words are enums, and it
    writes the same JSON back."""
    from klptrace.events import Direction, Reason
    from klptrace.stall_report import Source

    saved = _doc(BUSY)["scenarios"][0]
    sc = results.ScenarioResult.from_json(saved, "busy")
    assert sc.stall is not None
    [task] = sc.stall.tasks
    assert sc.stall.direction is Direction.PATCHING
    assert (task.reason, task.source) == (Reason.SLEEPING_ON_FUNCTION, Source.BPF)
    assert isinstance(task.reason, Reason) and isinstance(task.source, Source)
    assert json.loads(json.dumps(sc.stall.to_json())) == saved["stall"]
    # a reason the kernel gave as a code klptrace does not know stays as it was written
    saved["stall"]["tasks"][0]["reason"] = "other (-5)"
    again = results.ScenarioResult.from_json(saved, "busy").stall
    assert again is not None and again.tasks[0].reason == "other (-5)"


@pytest.mark.parametrize(("change", "says"), [
    (lambda d: d["probes"][0].update(ok="false"), "probes[0]: 'ok' must be true or false"),
    (lambda d: d["probes"].__setitem__(0, "kprobe"), "'probes' must be a list of objects"),
    (lambda d: d["kernel_info"].update(debian_version=6), "kernel_info: 'debian_version' must "
     "be a string"),
    (lambda d: d["timing"].update(import_s="8 s"), "timing: 'import_s' must be a number of "
     "seconds"),
    (lambda d: d.update(timing=[]), "timing: expected a JSON object"),
])
def test_a_malformed_run_field_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        change: Callable[[dict[str, Any]], None], says: str) -> None:
    doc = _doc(BUSY)
    change(doc)
    _refused(capsys, _write(tmp_path, doc), says)


# --- control characters: the verdict stays, the outputs parse ----------------------------------


_NASTY = "a\x00b\x01\x1b[31m\x0b\x0c\x1c\x85\u2028\ufffe\uffff # SKIP\nok 99 injected\r\n"


def _first_step(sc: dict[str, Any]) -> dict[str, Any]:
    return next(e for e in sc["events"] if e["kind"] == "step")


@pytest.mark.parametrize(("where", "change", "status"), [
    ("kernel", lambda d: d.update(kernel=_NASTY), 0),
    ("a step's detail", lambda d: _first_step(d["scenarios"][0]).update(detail=_NASTY), 1),
    ("an object's name", lambda d: next(e for e in d["scenarios"][2]["events"]
                                        if e["kind"] == "callback").update(object=_NASTY), 1),
    ("an explanation", lambda d: d["scenarios"][1].update(status="skip", events=[],
                                                          explanation=_NASTY), 0),
])
def test_control_characters_cannot_break_an_output(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str,
        change: Callable[[dict[str, Any]], None], status: int) -> None:
    doc = _doc()
    change(doc)
    outputs = dict((fmt, (code, out)) for fmt, code, out in
                   _every_format(capsys, _write(tmp_path, doc)))
    assert {code for code, _ in outputs.values()} == {status}, where
    assert not re.search(r"^\s*(not )?ok 99", outputs["ktap"][1], re.M)
    if where == "kernel":
        prop = junit_xml(outputs["junit"][1]).find("properties/property[@name='kernel']")
        assert prop is not None
        assert prop.get("value") == ("a\\x00b\\x01\\x1b[31m\\x0b\\x0c\\x1c\x85\u2028"
                                     "\\ufffe\\uffff # SKIP\nok 99 injected\r\n")
        assert strict_json(outputs["json"][1])["kernel"] == _NASTY


@pytest.mark.parametrize("sid", ["a\nok 2 injected", "a # SKIP", "a\u2028ok 2 b", "a\x00"])
def test_a_ktap_description_is_one_line_without_a_directive(sid: str) -> None:
    run = _doc()
    run["scenarios"] = run["scenarios"][:1]
    run["scenarios"][0].update(id=sid, status="fail")
    run["totals"] = {"pass": 0, "fail": 1, "skip": 0, "error": 0}
    out = ktap.render(results.Matrix.of(results.load(run, "run")))
    ktap_lines(out)
    assert [line for line in out.splitlines() if "ok" in line] == [
        "not ok 1 " + sid.replace("\n", "\\x0a").replace("\u2028", "\\u2028")
        .replace("\x00", "\\x00").replace("#", "\\#")]
    output_parses("junit", report.render("junit", results.load(run, "run")))
    output_parses("ktap", report.render("ktap", results.load({"runs": [run, run]}, "matrix")))


def test_an_unknown_id_with_a_line_break_is_one_error_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _doc()
    doc["scenarios"][0]["id"] = "x\nklptrace: error: injected"
    _refused(capsys, _write(tmp_path, doc), "unknown scenario id 'x\\nklptrace: error: injected'")


# --- a saved status is never trusted ----------------------------------------------------------


def _relabelled(doc: dict[str, Any], **fields: Any) -> dict[str, Any]:
    for sc in doc["scenarios"]:
        sc.update(status="skip", **fields)
    return doc


def test_a_skip_with_events_is_an_error(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    doc = _relabelled(_doc())
    for fmt, code, out in _every_format(capsys, _write(tmp_path, doc)):
        assert code == 1
        if fmt == "json":
            scs = strict_json(out)["scenarios"]
            assert {s["status"] for s in scs} == {"error"}
            assert scs[0]["problems"] == ["saved as skipped, but it recorded 42 events: a "
                                          "skipped scenario runs nothing"]


def test_a_skip_with_lost_events_is_an_error(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    doc = _doc()
    doc["scenarios"][3].update(status="skip", events=[], lost_events=2)
    doc["lost_events"] = 2
    code, out, _ = _check(capsys, _write(tmp_path, doc), "--format", "json")
    scs = strict_json(out)["scenarios"]
    assert code == 1 and scs[3]["status"] == "error"
    assert "saved as skipped, but 2 of its events were lost: a skipped scenario records " \
        "nothing" in scs[3]["problems"]
    # and without its events at all
    del doc["scenarios"][3]["events"]
    code, out, _ = _check(capsys, _write(tmp_path, doc), "--format", "json")
    assert code == 1 and strict_json(out)["scenarios"][3]["status"] == "error"


def test_a_skip_that_ran_nothing_stays_a_skip(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    doc = _relabelled(_doc(), events=[], lost_events=0, explanation="no livepatch")
    for fmt, code, out in _every_format(capsys, _write(tmp_path, doc)):
        assert code == 4
        if fmt == "ktap":
            assert out.count(" # SKIP no livepatch\n") == 11


def test_a_run_without_probes_is_an_error(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    doc = _doc()
    doc["probes"] = []
    code, out, _ = _check(capsys, _write(tmp_path, doc), "--format", "json")
    scs = strict_json(out)["scenarios"]
    assert code == 1 and {s["status"] for s in scs} == {"error"}
    assert all("no probes were attached" in s["explanation"] for s in scs)
    # a run that ran nothing attached nothing: its skips stay skips
    doc = _relabelled(doc, events=[], lost_events=0)
    assert _check(capsys, _write(tmp_path, doc))[0] == 4


def test_a_run_without_scenarios_says_so(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    doc = _doc()
    doc["scenarios"] = []
    _refused(capsys, _write(tmp_path, doc), "r.json: the run has no scenarios: nothing to check")
    matrix = {"runs": [_doc(), doc]}
    _refused(capsys, _write(tmp_path, matrix),
             "r.json: runs[1] (kernel '6.1.0-56-amd64') has no scenarios")


# --- the saved runs themselves ----------------------------------------------------------------


@pytest.mark.parametrize("path", [RUN, BUSY])
def test_the_saved_runs_pass_in_every_format(path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert {code for _, code, _ in _every_format(capsys, path)} == {0}


def test_a_matrix_of_the_saved_runs_parses_in_every_format(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    matrix = {"runs": [_doc(), _doc(BUSY)]}
    assert {code for _, code, _ in _every_format(capsys, _write(tmp_path, matrix))} == {0}


def test_the_text_format_shows_what_a_terminal_would_act_on(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a saved run is input: its kernel name or an explanation must not drive the terminal
    doc = json.loads((DATA / "run-6.1.json").read_text())
    doc["kernel"] = "6.1\x1b]0;owned\x07\x1b[2J\r"
    doc["scenarios"][0]["explanation"] = "x\x9b31m"
    f = _write(tmp_path, doc)
    _code, out, _err = _check(capsys, f, "--format", "text")
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", out), out
    assert "6.1\\x1b]0;owned\\x07\\x1b[2J\\x0d" in out
