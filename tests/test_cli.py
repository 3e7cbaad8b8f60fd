"""The command line, offline: list, check, errors without tracebacks, formats."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from util import DATA, REPO, saved_run

from klptrace import cli

RUN = str(DATA / "run-6.1.json")


def _main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _main(capsys, "list")
    assert code == 0 and len(out.splitlines()) == 11 and out.startswith("target-module-before")


def test_check_saved_run_passes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _main(capsys, "check", RUN)
    assert code == 0
    assert "11 pass, 0 fail, 0 skip, 0 error" in out
    assert "busy-target-module" in out and "PASS" in out


def test_check_json_has_the_documented_fields(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _main(capsys, "check", RUN, "--format", "json")
    doc = json.loads(out)
    assert code == 0 and doc["lost_events"] == 0 and doc["kernel"].startswith("6.1")
    sc = doc["scenarios"][0]
    assert {"id", "status", "duration_s", "events", "expected", "diff"} <= set(sc)
    ev = next(e for e in sc["events"] if e["kind"] == "callback")
    assert {"kind", "ts_ns", "pid", "comm", "patch", "object", "callback"} <= set(ev)


def test_check_fails_loudly_on_a_tampered_run(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    doc = saved_run()
    evs = doc["scenarios"][0]["events"]
    del evs[next(i for i, e in enumerate(evs) if e["kind"] == "callback")]
    f = tmp_path / "r.json"
    f.write_text(json.dumps(doc))
    code, out, _ = _main(capsys, "check", str(f), "--format", "ktap")
    assert code == 1
    assert "not ok 1 target-module-before-livepatch" in out
    assert out.startswith("KTAP version 1\n") and "1..11" in out
    assert "# Totals: pass:10 fail:1" in out


def test_junit(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_file = tmp_path / "j.xml"
    code, _, _ = _main(capsys, "check", RUN, "--format", "junit", "-o", str(out_file))
    suite = ET.parse(out_file).getroot()
    assert code == 0 and suite.get("tests") == "11" and suite.get("failures") == "0"
    assert len(suite.findall("testcase")) == 11


@pytest.mark.parametrize("content, msg", [
    ("", "not JSON"),
    ('{"scenarios": [', "not JSON"),
    ("[]", "not a klptrace recording"),
    ('{"scenarios": [{"id": "nope"}]}', "unknown scenario id"),
    ('{"scenarios": [{"id": "atomic-replace", "events": [{"kind": "x"}]}]}', "events[0]"),
])
def test_check_bad_input_is_explained(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      content: str, msg: str) -> None:
    f = tmp_path / "r.json"
    f.write_text(content)
    code, _, err = _main(capsys, "check", str(f))
    assert code != 0 and msg in err and "Traceback" not in err


def test_truncated_saved_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "r.json"
    f.write_text(Path(RUN).read_text()[:5000])
    code, _, err = _main(capsys, "check", str(f))
    assert code == 1 and "truncated" in err


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(
    _json,
    st.builds(lambda evs: {"kernel": "6.1", "scenarios": [{"id": "atomic-replace",
                                                            "events": evs}]},
              st.lists(st.dictionaries(st.sampled_from(
                  ["kind", "ts_ns", "pid", "callback", "module_state", "ret", "target", "comm"]),
                  _json | st.sampled_from(["callback", "pre_patch", "LIVE", "patched"]),
                  max_size=6), max_size=4))))
def test_check_never_tracebacks(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                doc: object) -> None:
    f = tmp_path / "fuzz.json"
    f.write_text(json.dumps(doc))
    code = cli.main(["check", str(f)])
    _, err = capsys.readouterr()
    assert code in (0, 1, 2) and "Traceback" not in err


def test_no_traceback_for_usage_errors() -> None:
    p = subprocess.run([sys.executable, "-m", "klptrace", "run", "no-such-scenario"],
                       capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 2 and "valid ids" in p.stderr and "Traceback" not in p.stderr


def test_run_without_livepatch_skips_with_reason() -> None:
    """This host's kernel has no livepatch: `run` must say why and exit 4."""
    if Path("/sys/kernel/livepatch").is_dir():
        pytest.skip("this kernel has livepatch; the skip path is not reachable here")
    p = subprocess.run([sys.executable, "-m", "klptrace", "run"], capture_output=True,
                       text=True, cwd=REPO)
    assert p.returncode == 4 and "no livepatch support" in p.stderr


def test_json_output_imports_no_other_formatter() -> None:
    # tabulate and xml.etree cost 0.8 s to import in the emulated guest: a
    # JSON run (CI's, the benchmark's) must not pay for the text and JUnit forms.
    code = ("import sys; from klptrace import report; report.render('json', {'scenarios': []}); "
            "print(sorted(m for m in ('tabulate', 'xml.etree.ElementTree') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout
    assert out.strip() == "[]"
