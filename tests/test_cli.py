"""The command line, offline: list, check, errors without tracebacks, formats."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from util import DATA, REPO, one_error, saved_run

from klptrace import cli
from klptrace.errors import KlptraceError, UsageError

RUN = str(DATA / "run-6.1.json")


def _main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _main(capsys, "list")
    assert code == 0 and len(out.splitlines()) == 20 and out.startswith("target-module-before")


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
    code = ("import sys; from klptrace import report, results; "
            "report.render('json', results.RunDocument('k', [])); "
            "print(sorted(m for m in ('tabulate', 'xml.etree.ElementTree') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout
    assert out.strip() == "[]"


# --- the options, as a new user gives them (issue 19): usage errors before any work ----------


def _klptrace(*argv: str, cache: Path, stdout: Any = subprocess.PIPE,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m klptrace argv` with its cache in an empty directory of the test's, and
    no program on its PATH: should a usage error slip through, apt-get, vng and QEMU are
    not found, and the test fails at once instead of fetching or booting a kernel."""
    cache.mkdir(exist_ok=True)
    nothing = cache.parent / "empty-path"
    nothing.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "klptrace", *argv], stdout=stdout,
                          stderr=subprocess.PIPE, text=True, cwd=REPO, timeout=120,
                          env={**os.environ, "KLPTRACE_CACHE": str(cache), "PATH": str(nothing),
                               **(env or {})})


@pytest.mark.parametrize(("argv", "says"), [
    # the kernel check (root, /sys/kernel/livepatch) came first: exit 4 on this host
    (["stall", "--format", "html"], "--format html draws a watched transition's timeline"),
    (["run", "--kernel", ""], "argument --kernel: an empty value names no kernel"),
    (["run", "--vm", "--kernel", ""], "argument --kernel: an empty value names no kernel"),
    (["run", "--vm", "--kernel", "6.1", "--kernel", " "], "an empty value names no kernel"),
    (["vm", "--kernel", "", "--", "true"], "argument --kernel: an empty value"),
    (["kernel", "--kernel", ""], "argument --kernel: an empty value"),
    (["build", "--kernel", ""], "argument --kernel: an empty value"),
    # a matrix fetched the first kernel before it looked at the second
    (["run", "--vm", "--kernel", "6.1", "--kernel", "bogus"], "unknown kernel 'bogus'"),
    (["run", "--repeat", "99999999999999999999"],
     "argument --repeat: at most 1000, not '99999999999999999999'"),
    (["run", "--repeat", "9" * 5000], "argument --repeat: expected a whole number of at "
     f"least 1, not '{'9' * 40}...'"),
    (["run", "--vm", "--jobs", "100000"], "argument --jobs: at most 64, not '100000'"),
    (["run", "--vm", "--cpus", "4096"], "argument --cpus: at most 64, not '4096'"),
    (["vm", "--cpus", "4096", "--", "true"], "argument --cpus: at most 64, not '4096'"),
    (["run", "--vm", "--memory", "999999G"],
     "argument --memory: memory size '999999G' is too large (give the guest at most 1T)"),
    (["vm", "--memory", "9" * 400 + "G", "--", "true"], "is too large"),
    (["run", "--timeout", "1e300"], "argument --timeout: at most 604800 seconds"),
    (["stall", "--timeout", "1e300"], "argument --timeout: at most 604800 seconds"),
    (["trace", "--module=-F"], "argument --module: '-F' is neither a .ko path nor a module name"),
    (["trace", "--module", "/nonexistent/lp.ko"], "no such module file: /nonexistent/lp.ko"),
    (["trace", "--module", "/dev/null"], "/dev/null is not a regular file"),
    (["trace", "--module", "lp.o"], "'lp.o' is neither a .ko path nor a module name"),
    (["trace", "--module", "a\nb"], "'a\\nb' is neither a .ko path nor a module name"),
    (["stall", "../../../etc"], "argument PATCH: '../../../etc' is not a livepatch name"),
    (["stall", "/etc"], "argument PATCH: '/etc' is not a livepatch name"),
])  # fmt: skip
def test_a_usage_error_exits_2_before_any_kernel_check_or_download(
        tmp_path: Path, argv: list[str], says: str) -> None:
    cache = tmp_path / "cache"
    p = _klptrace(*argv, cache=cache)
    assert p.returncode == 2, p.stderr
    assert says in one_error(p.stderr)
    assert list(cache.iterdir()) == []  # nothing fetched, built or booted
    assert p.stdout == ""


def test_a_compressed_module_is_named_as_such(tmp_path: Path) -> None:
    ko = tmp_path / "lp.ko.xz"
    ko.write_bytes(b"\xfd7zXZ\x00")
    p = _klptrace("trace", "--module", str(ko), cache=tmp_path / "cache")
    assert p.returncode == 2
    assert f"{ko} is compressed" in one_error(p.stderr) and "unxz -k" in p.stderr


def test_trace_hands_a_module_name_to_modinfo_after_double_dash(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from klptrace import trace

    bindir, called = tmp_path / "bin", tmp_path / "called"
    bindir.mkdir()
    (bindir / "modinfo").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {called}\n'
                                    f'echo /lib/modules/x/lp_mod.ko\n')
    (bindir / "modinfo").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    assert trace.resolve_module("lp_mod") == "/lib/modules/x/lp_mod.ko"
    assert called.read_text().splitlines() == ["-n", "--", "lp_mod"]
    called.unlink()
    with pytest.raises(UsageError, match=r"neither a \.ko path nor a module name"):
        trace.resolve_module("-F")
    assert not called.exists()  # refused before modinfo ran


def test_the_guest_s_argv_puts_ids_after_double_dash() -> None:
    """What run --vm hands the guest parses back to the same options, whatever an id looks
    like (scenario validation refuses such ids later; here they must stay ids)."""
    from klptrace.commands import options
    from klptrace.commands.run import RunOptions

    sent = RunOptions(ids=["--allow-replace", "-o", "x", "--"], scenarios=str(DATA),
                      modules=str(DATA), timeout=30.0, repeat=3, stream="/tmp/s.jsonl")
    argv = sent.to_argv()
    assert argv[argv.index("--") + 1:] == sent.ids and argv[0] == "run"
    got = options(RunOptions, cli.build_parser().parse_args(argv))
    assert got == sent and got.allow_replace is False
    # a matrix's child: its own options before `--` too
    extra = ["--vm", "--kernel", "6.1", "--format", "json"]
    child = options(RunOptions, cli.build_parser().parse_args(sent.to_argv(extra)))
    assert (child.ids, child.vm, child.kernel, child.format) == (sent.ids, True, ["6.1"], "json")
    assert RunOptions().to_argv() == ["run", "--"]


def _same_file_cases(tmp_path: Path) -> list[tuple[list[str], str, Path]]:
    """(argv, what the error says, the input that must stay as it was)."""
    rec = tmp_path / "r.json"
    rec.write_text(Path(RUN).read_text())
    (tmp_path / "link.json").symlink_to(rec)
    os.link(rec, tmp_path / "hard.json")
    ko, expect = tmp_path / "lp.ko", tmp_path / "expected.txt"
    ko.write_bytes(b"\x7fELF")
    expect.write_text("% insmod lp.ko\n")
    out = str(tmp_path / "out.json")
    return [
        (["check", str(rec), "-o", str(rec)], f"-o {rec} is the file read as RECORDING", rec),
        (["check", str(rec), "-o", str(tmp_path / "link.json")], "read as RECORDING", rec),
        (["check", str(rec), "-o", str(tmp_path / "hard.json")], "read as RECORDING", rec),
        (["check", str(rec), "--record", str(tmp_path / "." / "r.json")], "read as", rec),
        (["check", str(rec), "-o", out, "--record", out],
         f"--record {out} is the file written by -o {out}", rec),
        (["run", "-o", out, "--record", str(tmp_path / "sub" / ".." / "out.json")],
         "is the file written by -o", rec),
        (["run", "--vm", "-o", out, "--record", out], "is the file written by -o", rec),
        (["trace", "--module", str(ko), "-o", str(ko)], "read as --module", ko),
        (["trace", "--expect", str(expect), "-o", str(expect)], "read as --expect", expect),
    ]


def test_an_output_that_is_an_input_or_another_output_is_a_usage_error(
        tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for argv, says, kept in _same_file_cases(tmp_path):
        before = kept.read_bytes()
        p = _klptrace(*argv, cache=tmp_path / "cache")
        assert p.returncode == 2, (argv, p.stderr)
        assert says in one_error(p.stderr), argv
        assert kept.read_bytes() == before  # the input was not touched
        assert not (tmp_path / "out.json").exists()
    assert list((tmp_path / "cache").iterdir()) == []


def test_outputs_apart_from_the_inputs_are_written(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out, rec = tmp_path / "out.txt", tmp_path / "rec.json"
    assert cli.main(["check", RUN, "-o", str(out), "--record", str(rec)]) == 0
    assert "11 pass" in out.read_text() and json.loads(rec.read_text())["totals"]["pass"] == 11
    # a device is no file to overwrite: writing /dev/null twice is no clash
    assert cli.main(["check", RUN, "-o", "/dev/null", "--record", "/dev/null"]) == 0


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["list"], ["run", "--help"],
                                  ["check", RUN]])
def test_a_full_standard_output_isone_error(tmp_path: Path, argv: list[str]) -> None:
    with open("/dev/full", "w") as full:
        p = _klptrace(*argv, cache=tmp_path / "cache", stdout=full)
    assert p.returncode == 1
    assert one_error(p.stderr) == ("klptrace: error: cannot write the standard output: "
                                    "No space left on device")


@pytest.mark.parametrize("argv", [["--help"], ["list"], ["check", RUN, "--format", "html"]])
def test_a_closed_pipe_isone_error(tmp_path: Path, argv: list[str]) -> None:
    """`klptrace list | head -0`: the reader is gone before klptrace writes."""
    r, w = os.pipe()
    os.close(r)
    with os.fdopen(w, "w") as pipe:
        p = _klptrace(*argv, cache=tmp_path / "cache", stdout=pipe)
    assert p.returncode == 1
    assert one_error(p.stderr) == ("klptrace: error: cannot write the standard output: "
                                    "Broken pipe")


def test_a_closed_standard_output_isone_error() -> None:
    p = subprocess.run(["sh", "-c", f'exec "{sys.executable}" -m klptrace list >&-'],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert p.returncode == 1
    assert one_error(p.stderr).endswith("cannot write the standard output: it is closed")


@pytest.mark.parametrize("argv", [["list"], ["--help"], ["check", RUN],
                                  ["check", RUN, "--format", "html"]])
def test_an_ascii_standard_output_gets_escapes(tmp_path: Path, argv: list[str]) -> None:
    p = _klptrace(*argv, cache=tmp_path / "cache", env={"PYTHONIOENCODING": "ascii"})
    assert p.returncode == 0 and p.stderr == ""
    assert p.stdout.isascii() and p.stdout
    if "html" in argv:  # the timeline's `·` and `→`, as escapes
        assert "\\xb7" in p.stdout and "\\u2192" in p.stdout


@pytest.mark.parametrize("command", [n for n in cli.COMMANDS])
def test_each_help_says_its_exit_status(capsys: pytest.CaptureFixture[str],
                                        command: str) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "exit status" in text.lower(), command
    assert "usage error" in text or "as for run" in text, command


def test_an_option_with_no_field_is_a_bug_not_a_silent_drop() -> None:
    from argparse import Namespace

    from klptrace.commands import options
    from klptrace.commands.check import CheckOptions

    assert options(CheckOptions, Namespace(cmd="check", recording="r.json")).recording == \
        "r.json"
    with pytest.raises(TypeError, match="CheckOptions has no field for formt"):
        options(CheckOptions, Namespace(cmd="check", recording="r.json", formt="json"))


# --- main: dispatch, its errors and signals ----------------------------------------------


def _list_raising(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    from klptrace.commands import list_

    def run(opts: object) -> int:
        raise exc

    monkeypatch.setattr(list_, "run", run)


def test_a_command_s_error_is_its_line_hint_and_status(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from klptrace.errors import NotSupported

    _list_raising(monkeypatch, NotSupported("no livepatch here", "use --vm"))
    assert cli.main(["list"]) == 4
    assert capsys.readouterr().err == "klptrace: error: no livepatch here\n  hint: use --vm\n"
    _list_raising(monkeypatch, KlptraceError("it broke"))
    assert cli.main(["list"]) == 1
    assert capsys.readouterr().err == "klptrace: error: it broke\n"


def test_a_signal_is_one_line_and_its_status(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from klptrace.errors import Interrupted

    _list_raising(monkeypatch, KeyboardInterrupt())
    assert cli.main(["list"]) == 130
    assert capsys.readouterr().err == (
        "klptrace: interrupted by SIGINT; cleaned up (anything left is named above)\n")
    _list_raising(monkeypatch, Interrupted(15, "SIGTERM", "the guest is stopped"))
    assert cli.main(["list"]) == 143
    assert capsys.readouterr().err == (
        "klptrace: interrupted by SIGTERM; the guest is stopped\n")


def test_a_character_device_is_never_the_same_file_twice(tmp_path: Path) -> None:
    assert not cli._same_file("/dev/null", "/dev/null")
    a = tmp_path / "a"
    a.write_text("")
    (tmp_path / "hard").hardlink_to(a)
    assert cli._same_file(str(a), str(tmp_path / "hard"))
    assert cli._same_file(str(tmp_path / "new"), str(tmp_path / "." / "new"))
    assert not cli._same_file(str(a), str(tmp_path / "new"))


def test_a_module_path_with_a_nul_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    # argv cannot hold a NUL, but cli.main can be given one: os.stat raises ValueError
    with pytest.raises(SystemExit) as exit_:
        cli.main(["trace", "--module", "dir/a\0b.ko", "--", "true"])
    assert exit_.value.code == 2
    assert "'dir/a\\x00b.ko' is not a path: it holds a NUL byte" in \
        one_error(capsys.readouterr().err)
