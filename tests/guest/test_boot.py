"""guest/boot.py: `run --vm` boot after boot, with the guest played by a fake vm.run (the
fake lab of test_commands_offline), and done(), which tells vm.run the guest's work is over."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_commands_offline import _doc, _run, _scenarios, _write, fake_lab
from util import one_error

from klptrace.guest import boot, stream
from klptrace.lab import defaults, vm

__all__ = ["fake_lab"]  # the fixture, for the tests below


def test_a_guest_that_stops_between_scenarios_is_an_error(
        tmp_path: Path, fake_lab: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    def stops_after_a(path: Path, ids: list[str]) -> int:
        assert ids == ["a", "b"]
        _write(path, {"begin": "a"}, {"scenario": _doc("a")})
        return 0

    fake_lab["play"].append(stops_after_a)
    code, err = _run(["run", "--vm", "--scenarios", str(_scenarios(tmp_path / "s", ("a", "b")))],
                     capsys)
    assert code == 1 and len(fake_lab["boots"]) == 1  # no second boot: nothing wedged
    assert one_error(err) == (
        "klptrace: error: the guest stopped after 1 of 2 scenarios (exit status 0)")
    assert "  hint: see the guest's output above" in err


def test_a_stream_that_is_not_a_stream_is_named(
        tmp_path: Path, fake_lab: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    def writes_garbage(path: Path, ids: list[str]) -> int:
        _write(path, {"begin": "a"}, {"scenario": _doc("a", "fine")})
        return 0

    fake_lab["play"].append(writes_garbage)
    code, err = _run(["run", "--vm", "--scenarios", str(_scenarios(tmp_path / "s", ("a",)))],
                     capsys)
    assert code == 1
    assert one_error(err).startswith("klptrace: error: ")
    assert "stream-1.jsonl:3: scenario: 'status' must be one of pass, fail, skip, error" in err


def test_the_guest_died_before_its_first_scenario(
        tmp_path: Path, fake_lab: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    def dies(path: Path, ids: list[str]) -> int:
        raise vm.GuestStopped("the guest stopped: QEMU was killed", None, None, None)

    fake_lab["play"].append(dies)
    code, err = _run(["run", "--vm", "--scenarios", str(_scenarios(tmp_path / "s", ("a",)))],
                     capsys)
    assert code == 1
    assert one_error(err) == ("klptrace: error: the run in the guest wrote no results (exit "
                              "status None): the guest stopped: QEMU was killed")


def test_the_guest_gets_its_size_the_boots_the_run_s_options(
        tmp_path: Path, fake_lab: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    sizes: list[tuple[int, str]] = []
    played = vm.run

    def run(k: Any, argv: list[str], **kw: Any) -> int:
        sizes.append((kw["cpus"], kw["memory"]))
        assert callable(kw["done"]) and not kw["done"]()  # nothing written yet
        return played(k, argv, **kw)

    def runs_a(path: Path, ids: list[str]) -> int:
        _write(path, {"begin": "a"}, {"scenario": _doc("a")},
               {"end": {"lost_events": 0, "probes": [], "leftovers": []}})
        return 0

    monkeypatch.setattr(vm, "run", run)
    d = _scenarios(tmp_path / "s", ("a",))
    fake_lab["play"] += [runs_a, runs_a]
    assert _run(["run", "--vm", "--scenarios", str(d)], capsys)[0] == 0
    assert _run(["run", "--vm", "--scenarios", str(d), "--cpus", "1", "--memory", "2G"],
                capsys)[0] == 0
    assert sizes == [(defaults.CPUS, defaults.MEMORY), (1, "2G")]
    # what the guest runs: `klptrace run`, this run's guest options, its stream and staging
    argv = fake_lab["boots"][0]
    i = argv.index("klptrace")
    assert argv[i - 2:i] == [boot.sys.executable, "-m"] and argv[i + 1] == "run"
    assert argv[-2:] == ["--", "a"] and "--repeat" not in argv


def test_repeats_run_in_one_guest_and_are_counted_once_each(
        tmp_path: Path, fake_lab: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    def runs_twice(path: Path, ids: list[str]) -> int:
        assert ids == ["a", "a"]
        _write(path, {"begin": "a"}, {"scenario": _doc("a")}, {"begin": "a"},
               {"scenario": _doc("a")}, {"end": {"lost_events": 0, "probes": [],
                                                 "leftovers": []}})
        return 0

    fake_lab["play"].append(runs_twice)
    out = tmp_path / "r.json"
    code, _err = _run(["run", "--vm", "--repeat", "2", "--format", "json", "-o", str(out),
                       "--scenarios", str(_scenarios(tmp_path / "s", ("a",)))], capsys)
    doc = json.loads(out.read_text())
    assert code == 0 and [s["id"] for s in doc["scenarios"]] == ["a", "a"]
    assert doc["boots"] == 1 and doc["totals"]["pass"] == 2


def test_done_reads_the_stream_again_only_when_it_changed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.jsonl"
    reads: list[Path] = []
    real = stream.read

    def counted(p: Path) -> stream.Boot:
        reads.append(p)
        return real(p)

    monkeypatch.setattr(stream, "read", counted)
    done = boot._Ended(path)
    assert not done() and reads == []  # no file yet: nothing to read
    out = stream.Writer(str(path))
    out.put(stream.Start("k"))
    assert not done() and not done() and len(reads) == 1
    out.put(stream.End())
    assert done() and done() and len(reads) == 2
    out.close()


def test_done_is_false_while_the_stream_is_malformed(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text('{"begin": "a"}\n{"end": {}}\n')  # no start: the final read says so
    assert not boot._Ended(path)()
    with pytest.raises(boot.KlptraceError, match="no start record"):
        stream.read(path)


def test_an_errored_scenario_says_why_everywhere() -> None:
    from klptrace import scenario

    s = next(x for x in scenario.load_dir() if x.id == "busy-target-module")
    r = boot.errored(s, "the guest kernel panicked")
    assert r.status == "error" and r.step_error == "the guest kernel panicked"
    assert r.verdict.explanation == "the guest kernel panicked"
    assert r.verdict.problems == ["the guest kernel panicked"]
    assert r.verdict.expected == list(s.expect)
