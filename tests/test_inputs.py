"""Bad input, as a new user gives it: one `klptrace: error:` line (and its hint), the promised
exit status, no traceback, and for a usage error no work started (no download, no boot)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from util import DATA, REPO, one_error, saved_run

from klptrace import cli, scenario
from klptrace.commands import matrix
from klptrace.commands import run as run_cmd
from klptrace.lab import build, kernels, vm, vng

RUN = str(DATA / "run-6.1.json")
GOOD_SCENARIO = (REPO / "klptrace" / "scenarios" / "05-target-module-not-present.toml")


def _status(argv: list[str]) -> int:
    """cli.main's exit status, argparse's SystemExit included."""
    try:
        return cli.main(argv)
    except SystemExit as e:
        return int(e.code or 0)


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fail loudly if a command starts real work (a download, a build, a boot, a run)."""
    started: list[str] = []

    def refuse(name: str) -> object:
        def f(*_a: object, **_k: object) -> None:
            started.append(name)
            raise AssertionError(f"{name} was called for a usage error")
        return f

    for mod, name in ((kernels, "ensure"), (vm, "check_host"), (vm, "run"), (build, "build"),
                      (run_cmd, "run_local"), (run_cmd, "run_vm"), (matrix, "run_matrix")):
        monkeypatch.setattr(mod, name, refuse(f"{mod.__name__}.{name}"))
    return started


# --- scenario directories ---------------------------------------------------------------


def _scenario_dir(tmp_path: Path, bad: str) -> Path:
    """A directory with one good scenario and one bad entry named x.toml."""
    d = tmp_path / "scenarios"
    d.mkdir()
    (d / "a.toml").write_text(GOOD_SCENARIO.read_text())
    x = d / "x.toml"
    if bad == "not-utf8":
        x.write_bytes(GOOD_SCENARIO.read_bytes().replace(b"target", b"t\xe9rget", 1))
    elif bad == "directory":
        x.mkdir()
    elif bad == "fifo":
        os.mkfifo(x)
    elif bad == "dangling-link":
        x.symlink_to(tmp_path / "gone.toml")
    return d


@pytest.mark.parametrize(("bad", "status", "says"), [
    ("not-utf8", 1, "x.toml: not UTF-8 text (byte 0xe9 at offset "),
    ("directory", 2, "x.toml is a directory, not a scenario file"),
    ("fifo", 2, "x.toml is not a regular file"),
    ("dangling-link", 2, "x.toml is a broken symbolic link"),
])
def test_a_bad_scenario_file_is_named(tmp_path: Path, bad: str, status: int, says: str) -> None:
    d = _scenario_dir(tmp_path, bad)
    for argv in (["run", "--scenarios", str(d)], ["list", "--scenarios", str(d)],
                 ["check", RUN, "--scenarios", str(d)]):
        # a subprocess with a timeout: reading a FIFO would block forever
        p = subprocess.run([sys.executable, "-m", "klptrace", *argv], capture_output=True,
                           text=True, cwd=REPO, timeout=60)
        assert p.returncode == status, (argv, p.stderr)
        assert says in one_error(p.stderr), p.stderr


def test_editors_dot_files_are_not_scenarios(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    d = _scenario_dir(tmp_path, "none")
    (d / ".#a.toml").symlink_to("root@host.1234:1700000000")  # an Emacs lock file
    assert cli.main(["list", "--scenarios", str(d)]) == 0
    assert capsys.readouterr().out.startswith("target-module-not-present ")


# --- check's input -------------------------------------------------------------------------


def test_check_of_a_binary_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "r.json"
    f.write_bytes(Path(sys.executable).read_bytes()[:4096])
    assert cli.main(["check", str(f)]) == 1
    assert f"{f}: not UTF-8 text" in one_error(capsys.readouterr().err)


@pytest.mark.parametrize("what", ["missing", "directory"])
def test_check_of_what_cannot_be_read(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      what: str) -> None:
    f = tmp_path / "r.json"
    if what == "directory":
        f.mkdir()
    assert cli.main(["check", str(f)]) == 2
    assert one_error(capsys.readouterr().err).startswith(f"klptrace: error: cannot read {f}: ")


# --- outputs -------------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["-o", "--record"])
@pytest.mark.parametrize("command", [["check", RUN], ["run"], ["run", "--vm"]])
@pytest.mark.parametrize(("where", "says"), [
    ("missing/r.json", "missing does not exist: create it first"),
    (".", "is a directory: name a file in it"),
])
def test_an_output_that_cannot_be_written_is_a_usage_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], no_work: list[str],
        option: str, command: list[str], where: str, says: str) -> None:
    assert _status([*command, option, str(tmp_path / where)]) == 2
    assert says in one_error(capsys.readouterr().err)
    assert no_work == []


@pytest.mark.parametrize("option", ["-o", "--record"])
def test_a_full_disk_keeps_the_output(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch, option: str) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert cli.main(["check", RUN, "--format", "json", option, "/dev/full"]) == 1
    captured = capsys.readouterr()
    line = one_error(captured.err)
    assert line == "klptrace: error: cannot write /dev/full: No space left on device"
    kept = captured.err.split("  hint: the output is in ")[1].split(" instead")[0]
    assert Path(kept).parent == tmp_path
    doc = json.loads(Path(kept).read_text())
    assert doc["totals"]["pass"] == 11
    if option == "--record":  # the results still went where they were asked to
        assert json.loads(captured.out)["totals"]["pass"] == 11


def test_a_full_standard_output(tmp_path: Path) -> None:
    with open("/dev/full", "w") as full:
        p = subprocess.run([sys.executable, "-m", "klptrace", "check", RUN], stdout=full,
                           stderr=subprocess.PIPE, text=True, cwd=REPO, timeout=60)
    assert p.returncode == 1
    line = one_error(p.stderr)
    assert line == "klptrace: error: cannot write the standard output: No space left on device"


# --- usage errors: exit 2 before anything is downloaded or booted --------------------------

NO_DIR = "/nonexistent/klptrace-scenarios"


@pytest.mark.parametrize(("argv", "says"), [
    (["run", "--scenarios", NO_DIR], f"argument --scenarios: {NO_DIR} does not exist"),
    (["run", "--vm", "--scenarios", NO_DIR], "does not exist"),
    (["list", "--scenarios", NO_DIR], "does not exist"),
    (["check", RUN, "--scenarios", NO_DIR], "does not exist"),
    (["run", "--scenarios", RUN], f"argument --scenarios: {RUN} is not a directory"),
    (["run", "--vm", "--scenarios", RUN], "is not a directory"),
    (["list", "--scenarios", RUN], "is not a directory"),
    (["check", RUN, "--scenarios", RUN], "is not a directory"),
    (["run", "--modules", NO_DIR], "argument --modules: "),
    (["vm"], "no command to run in the guest"),
    (["vm", "--"], "no command to run in the guest"),
    (["vm", "--memory", "banana", "--", "true"], "argument --memory: bad memory size 'banana'"),
    (["vm", "--memory", "64M", "--", "true"], "memory size '64M' is too small"),
    (["run", "--vm", "--memory", "64M"], "memory size '64M' is too small"),
    (["vm", "--cpus", "0", "--", "true"], "argument --cpus: expected a whole number"),
    (["run", "--vm", "--cpus", "0"], "argument --cpus: expected a whole number"),
    *[([*cmd, "--timeout", t, *rest], f"argument --timeout: expected a number of seconds "
       f"above 0, not '{t}'")
      for cmd, rest in ((["run"], []), (["run", "--vm"], []), (["vm"], ["--", "true"]),
                        (["stall"], []))
      for t in ("-1", "0", "nan", "inf", "soon")],
    (["run", "--cpus", "1"], "--cpus is an option of the lab VM: add --vm"),
    (["run", "--memory", "2G"], "--memory is an option of the lab VM: add --vm"),
    (["run", "--cpus", "1", "--memory", "2G"], "--cpus and --memory are options of the lab VM"),
    (["run", "--vm", "no-such-scenario"], "unknown scenario id(s): no-such-scenario"),
])  # fmt: skip
def test_usage_errors_exit_2_before_any_work(capsys: pytest.CaptureFixture[str],
                                             no_work: list[str], argv: list[str],
                                             says: str) -> None:
    assert _status(argv) == 2
    assert says in one_error(capsys.readouterr().err)
    assert no_work == []


def test_run_vm_gets_the_vm_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}
    # the defaults are applied where the guest's size is read (RunOptions.guest_size)
    monkeypatch.setattr(run_cmd, "run_vm", lambda opts, spec: seen.update(
        vars(opts), size=opts.guest_size))
    monkeypatch.setattr(run_cmd, "emit", lambda doc, out: 0)
    assert cli.main(["run", "--vm"]) == 0
    assert (*seen["size"], seen["timeout"]) == (2, "4G", 120.0)  # type: ignore[misc]
    assert cli.main(["run", "--vm", "--cpus", "1", "--memory", "1.5G", "--timeout", "30"]) == 0
    assert (*seen["size"], seen["timeout"]) == (1, "1.5G", 30.0)  # type: ignore[misc]


SUBCOMMANDS = ["run", "check", "trace", "stall", "vm", "kernel", "build", "list"]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_has_examples(capsys: pytest.CaptureFixture[str], command: str) -> None:
    assert _status([command, "--help"]) == 0
    examples = capsys.readouterr().out.split("\nexamples:\n")[1].splitlines()
    assert examples and all(f"klptrace {command}" in line for line in examples), examples


def test_every_subcommand_is_in_the_help_test() -> None:
    sub = next(a for a in cli.build_parser()._actions if a.dest == "cmd")
    assert sorted(sub.choices or {}) == sorted(SUBCOMMANDS)


# --- lost events ---------------------------------------------------------------------------


def test_lost_events_no_scenario_accounts_for_fail_every_scenario(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = saved_run()
    doc["lost_events"] = 3
    f = tmp_path / "r.json"
    f.write_text(json.dumps(doc))
    assert cli.main(["check", str(f)]) == 1
    out = capsys.readouterr().out
    assert "0 pass, 0 fail, 0 skip, 11 error" in out
    why = "3 events were lost that no scenario accounts for (lost_events 3 in all, 0 in"
    assert out.count(why) == 2 * 11  # each scenario's explanation and its problem line
    assert cli.main(["check", str(f), "--format", "json"]) == 1
    scs = json.loads(capsys.readouterr().out)["scenarios"]
    assert {s["status"] for s in scs} == {"error"} and all(why in s["problems"][0] for s in scs)


def test_lost_events_a_scenario_accounts_for_are_its_own(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = saved_run()
    doc["lost_events"] = 2
    doc["scenarios"][4]["lost_events"] = 2
    f = tmp_path / "r.json"
    f.write_text(json.dumps(doc))
    assert cli.main(["check", str(f), "--format", "json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert [s["status"] for s in out["scenarios"]] == ["pass"] * 4 + ["error"] + ["pass"] * 6
    assert out["scenarios"][4]["problems"] == [
        "2 events were lost (the BPF ring buffer was full)"]
    assert out["totals"] == {"pass": 10, "fail": 0, "skip": 0, "error": 1}


def test_negative_lost_events_are_refused(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    doc = saved_run()
    doc["lost_events"] = -3
    f = tmp_path / "r.json"
    f.write_text(json.dumps(doc))
    assert cli.main(["check", str(f)]) == 1
    assert "'lost_events' must be a non-negative integer" in one_error(capsys.readouterr().err)


# --- the standard input handed to vng -----------------------------------------------------


def _stdin_as(fd: int) -> int | None:
    """vng.stdin() while fd is our standard input."""
    saved = os.dup(0)
    try:
        os.dup2(fd, 0)
        return vng.stdin()
    finally:
        os.dup2(saved, 0)
        os.close(saved)


def test_vng_gets_a_stdin_it_can_reopen(tmp_path: Path) -> None:
    # vng falls back to "limited redirection" (the guest's stderr to /dev/null)
    # unless it can open /proc/self/fd/0 read-write: hand it only such a stdin.
    import socket

    a, b = socket.socketpair()
    r, w = os.pipe()
    master, slave = os.openpty()
    ro = os.open("/sys/kernel/uevent_seqnum", os.O_RDONLY)  # not writable, even for root
    writable = os.open(tmp_path / "in.txt", os.O_RDWR | os.O_CREAT)
    try:
        assert _stdin_as(a.fileno()) == subprocess.DEVNULL
        assert _stdin_as(slave) == subprocess.DEVNULL  # QEMU would make it raw
        assert _stdin_as(ro) == subprocess.DEVNULL
        assert _stdin_as(r) is None
        assert _stdin_as(writable) is None
    finally:
        for fd in (r, w, master, slave, ro, writable):
            os.close(fd)
        a.close()
        b.close()


# --- scenario files are untrusted input: refused before anything runs ------------------------

HOSTILE = DATA / "hostile-scenarios"
#: each traversal (or injection) attempt of the pack, and what refuses it, after the file's name
HOSTILE_SAYS = {
    "01-load-traversal.toml": ':9: steps[1]: load "../../../../etc/passwd" is not a module name',
    "02-load-absolute.toml": ':9: steps[1]: load "/etc/passwd" is not a module name',
    "03-unload-traversal.toml":
        ':9: steps[1]: unload "../../../../etc/passwd" is not a module name',
    "04-set-param-traversal.toml":
        ':9: steps[1]: param "../../../../etc/passwd" is not a parameter name',
    "05-set-module-traversal.toml":
        ':9: steps[1]: set "../../kernel/mm/transparent_hugepage" is not a module name',
    "06-disable-traversal.toml":
        ':9: steps[1]: disable "../mm/transparent_hugepage" is not a module name',
    "07-wait-transition-traversal.toml":
        ':9: steps[1]: wait_transition "../../../proc/self" is not a module name',
    "08-livepatches-traversal.toml": ':5: livepatches[0] "../../etc/passwd" is not a module name',
    "09-load-option.toml": ':9: steps[1]: load "-f" is not a module name',
    "10-load-dotdot.toml": ':9: steps[1]: load ".." is not a module name',
    "11-load-nul.toml":
        ':9: steps[1]: load "klptrace_lp\\u0000/../../../etc/passwd" is not a module name',
    "12-set-module-key.toml":
        ':9: steps[1]: unknown key "module" for a set step (expected one of set, param, value)',
    "13-id-option.toml": ':3: id "--allow-replace" is not kebab-case',
    "14-id-newline.toml": ':3: `id` holds the control character "\\n" (it is one line)',
    "15-value-newline.toml": ':9: steps[1]: value holds the control character "\\n"',
    "16-params-newline.toml": ':9: steps[1]: params holds the control character "\\n"',
    "17-params-traversal.toml": ':9: steps[1]: params: "../../x" is not a parameter name',
    "18-module-too-long.toml": f':9: steps[1]: load "{"a" * 56}" is 56 characters, longer than '
                               "a module name can be",
    "19-table-steps-traversal.toml":
        ':16: steps[1]: disable "../mm/transparent_hugepage" is not a module name',
}


def test_the_hostile_pack_is_tested_whole() -> None:
    assert sorted(f.name for f in HOSTILE.iterdir()) == sorted(HOSTILE_SAYS)


def _pack_with(tmp_path: Path, name: str) -> Path:
    """A directory: a good scenario first (it does not help), then one hostile file."""
    d = tmp_path / "pack"
    d.mkdir()
    (d / "00-good.toml").write_text(GOOD_SCENARIO.read_text())
    shutil.copy(HOSTILE / name, d / name)
    return d


@pytest.mark.parametrize("name", sorted(HOSTILE_SAYS))
def test_a_hostile_scenario_is_refused_before_any_work(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], no_work: list[str],
        name: str) -> None:
    d = _pack_with(tmp_path, name)
    for argv in (["run", "--vm", "--scenarios", str(d)],
                 ["run", "--vm", "--scenarios", str(d), "target-module-not-present"],
                 ["run", "--vm", "--kernel", "6.1", "--kernel", "latest", "--scenarios", str(d)],
                 ["list", "--scenarios", str(d)],
                 ["check", RUN, "--scenarios", str(d)]):
        assert _status(argv) == 1, argv
        assert one_error(capsys.readouterr().err) == (
            f"klptrace: error: {d / name}{HOSTILE_SAYS[name]}"), argv
    assert no_work == []


@pytest.fixture
def no_fetch(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fail loudly on a kernel fetch, a module build, a boot or a kernel check, leaving the
    commands' own code (run_vm, run_matrix, run_local) as it is."""
    from klptrace import assets
    from klptrace.kernel import kmod, kmsg
    from klptrace.record import probes

    started: list[str] = []

    def refuse(name: str) -> object:
        def f(*_a: object, **_k: object) -> None:
            started.append(name)
            raise AssertionError(f"{name} was called for a hostile scenario")
        return f

    for mod, name in ((kernels, "ensure"), (vm, "check_host"), (vm, "run"), (build, "build"),
                      (assets, "build_modules"), (probes, "check_kernel"), (kmod, "Actor"),
                      (kmsg, "OopsWatch")):
        monkeypatch.setattr(mod, name, refuse(f"{mod.__name__}.{name}"))
    return started


def test_the_hostile_pack_is_refused_before_a_fetch_or_a_boot(
        capsys: pytest.CaptureFixture[str], no_fetch: list[str]) -> None:
    name = "01-load-traversal.toml"
    first = f"klptrace: error: {HOSTILE / name}{HOSTILE_SAYS[name]}"
    for argv in (["run", "--vm", "--scenarios", str(HOSTILE)],
                 ["run", "--vm", "--kernel", "6.1", "--kernel", "7.2", "--scenarios",
                  str(HOSTILE)],
                 ["run", "--scenarios", str(HOSTILE)]):
        assert _status(argv) == 1, argv
        assert one_error(capsys.readouterr().err) == first, argv
    # run_vm, which the matrix's children run, loads them first of all too
    with pytest.raises(scenario.ScenarioError, match=r"01-load-traversal\.toml:9: "):
        run_cmd.run_vm(run_cmd.RunOptions(scenarios=str(HOSTILE), vm=True), "6.1")
    assert no_fetch == []


def _issue_examples() -> dict[str, tuple[dict[str, str], str]]:
    """The scenario files issue 19 named: the files of a directory, and the error after its
    path."""
    good = GOOD_SCENARIO.read_text()
    step = '{ disable = "klptrace_lp" },'
    assert step in good

    def hostile(name: str) -> tuple[dict[str, str], str]:
        return {name: (HOSTILE / name).read_text()}, f"/{name}{HOSTILE_SAYS[name]}"

    return {
        "module-traversal": hostile("01-load-traversal.toml"),
        "module-absolute": hostile("02-load-absolute.toml"),
        "set-param-traversal": hostile("04-set-param-traversal.toml"),
        "disable-traversal": hostile("06-disable-traversal.toml"),
        "id-option": hostile("13-id-option.toml"),
        "id-newline": hostile("14-id-newline.toml"),
        "transition-true": (
            {"a.toml": good.replace(
                step, '{ wait_transition = "klptrace_lp", transition = true },')},
            "/a.toml:12: steps[1]: transition must be the integer 0 or 1, not a boolean"),
        "replaces-all-string": (
            {"a.toml": good.replace("\ndoc =", '\nreplaces_all = "false"\ndoc =')},
            "/a.toml:4: replaces_all must be true or false, not a string"),
        "unknown-step-key": (
            {"a.toml": good.replace(step, '{ lod = "klptrace_lp" },')},
            '/a.toml:12: steps[1]: unknown key "lod" (expected one of load, unload, disable, set, '
            "wait_transition, spawn, reap, wait_param, wait_blocked)"),
        "one-id-two-files": (
            {"a.toml": good, "b.toml": good},
            '/b.toml:1: id "target-module-not-present" is also the id of {d}/a.toml'),
        "nested-3000-deep": (
            {"a.toml": good.replace("steps = [\n", "steps = [" + "[" * 3000 + "]" * 3000 + ",\n")},
            "/a.toml:10: nested more than 32 deep (a scenario needs two: steps = [{ ... }])"),
        "oversized": (
            {"a.toml": good + "#" * scenario.MAX_FILE_BYTES + "\n"},
            f"/a.toml: {len(good) + scenario.MAX_FILE_BYTES + 1} bytes, more than a scenario file "
            "may hold (1 MiB)"),
    }


ISSUE_EXAMPLES = _issue_examples()


@pytest.mark.parametrize("example", list(ISSUE_EXAMPLES))
def test_a_bad_scenario_is_one_error_line(tmp_path: Path, example: str) -> None:
    texts, says = ISSUE_EXAMPLES[example]
    d = tmp_path / "scenarios"
    d.mkdir()
    for name, text in texts.items():
        (d / name).write_text(text)
    # the real entry point, both at once (a fresh interpreter: its own recursion limit)
    procs = [subprocess.Popen([sys.executable, "-m", "klptrace", *argv], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=REPO)
             for argv in (["list", "--scenarios", str(d)], ["check", RUN, "--scenarios", str(d)])]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert (p.returncode, out) == (1, ""), err
        assert one_error(err) == f"klptrace: error: {d}{says.replace('{d}', str(d))}"
