"""--format kcidb: KCIDB I/O data that kcidb-io's own validator accepts, mapped right."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import kcidb_io
import pytest
import shadowed
import stalled
from util import DATA, saved_run

from klptrace import cli, report, results
from klptrace.kernel import sysinfo
from klptrace.report import kcidb

RUN = str(DATA / "run-6.1.json")
PROC_VERSION_612 = (
    "Linux version 6.12.57+deb12-amd64 (debian-kernel@lists.debian.org) (x86_64-linux-gnu-gcc-12 "
    "(Debian 12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP "
    "PREEMPT_DYNAMIC Debian 6.12.57-1~bpo12+1 (2025-11-17)")


def _validate(data: dict[str, Any]) -> None:
    """kcidb-io's validator, as the data says its version, and upgraded to the newest."""
    kcidb_io.schema.LATEST.validate(data)
    kcidb_io.schema.LATEST.validate_exactly(kcidb_io.schema.LATEST.upgrade(data))


def _newer_run() -> dict[str, Any]:
    """The saved run as a newer klptrace writes it: kernel_info and per-scenario start times."""
    doc = saved_run()
    info: dict[str, Any] = sysinfo.parse_proc_version(PROC_VERSION_612)
    info.update(arch="x86_64", package="linux-image-6.12.57+deb12-amd64",
                suite="bookworm-backports")
    doc["kernel"], doc["kernel_info"] = info["release"], info
    for i, s in enumerate(doc["scenarios"]):
        s["start_time"] = f"2025-12-01T10:00:{i:02d}.250+00:00"
    return doc


def _check(tmp_path: Path, doc: dict[str, Any], *opts: str) -> tuple[int, dict[str, Any]]:
    f, out = tmp_path / "r.json", tmp_path / "k.json"
    f.write_text(json.dumps(doc))
    code = cli.main(["check", str(f), "--format", "kcidb", "-o", str(out), *opts])
    return code, json.loads(out.read_text())


def test_passing_run_validates_and_maps(tmp_path: Path) -> None:
    code, data = _check(tmp_path, saved_run())
    _validate(data)
    assert code == 0 and data["version"] == {"major": 5, "minor": 0}
    assert [c["id"] for c in data["checkouts"]] == ["klptrace:6.1.0-56-amd64"]
    [build] = data["builds"]
    assert build["checkout_id"] == data["checkouts"][0]["id"] and build["origin"] == "klptrace"
    # a saved run from before kernel_info: nothing invented, the gap named
    assert "architecture" not in build and "compiler" not in build
    assert build["misc"]["not_recorded"] == ["kernel_info"]
    tests = data["tests"]
    assert len(tests) == 11 and {t["status"] for t in tests} == {"PASS"}
    assert all(t["build_id"] == build["id"] for t in tests)
    busy = next(t for t in tests if t["misc"]["scenario"] == "busy-target-module")
    assert busy["path"] == "livepatch.callbacks.busy-target-module"
    assert busy["duration"] == 1.986 and "start_time" not in busy
    assert busy["misc"]["not_recorded"] == ["start_time"] and "log_excerpt" not in busy


def test_failing_run_validates_with_the_divergence_as_log_excerpt(tmp_path: Path) -> None:
    doc = saved_run()
    evs = doc["scenarios"][0]["events"]
    del evs[next(i for i, e in enumerate(evs) if e["kind"] == "callback")]
    code, data = _check(tmp_path, doc)
    _validate(data)
    failed = [t for t in data["tests"] if t["status"] != "PASS"]
    assert code == 1 and [t["path"] for t in failed] == [
        "livepatch.callbacks.target-module-before-livepatch"]
    [t] = failed
    assert t["status"] == "FAIL"
    excerpt = t["log_excerpt"]
    # the explanation first, then the diff's first lines, as the text format shows them
    assert excerpt.startswith("line ") and "pre_patch" in excerpt and t["comment"] in excerpt
    text = json.loads(report.render("json", results.load(_recheck(tmp_path, doc), "r2")))
    diff = text["scenarios"][0]["diff"]
    assert diff and "\n".join(diff[:kcidb.EXCERPT_LINES]) in excerpt


def _recheck(tmp_path: Path, doc: dict[str, Any]) -> dict[str, Any]:
    f, out = tmp_path / "r2.json", tmp_path / "r2-out.json"
    f.write_text(json.dumps(doc))
    cli.main(["check", str(f), "--format", "json", "-o", str(out)])
    return dict(json.loads(out.read_text()))


def test_statuses_and_the_excerpt_of_errors_and_oopses() -> None:
    doc = saved_run()
    scs = doc["scenarios"]
    scs[1].update(status="error", explanation="the kernel oopsed: BUG: kernel NULL pointer",
                  problems=["the kernel oopsed"],
                  oops=[f"oops line {i}" for i in range(kcidb.EXCERPT_LINES + 5)])
    scs[2].update(status="skip", explanation="would replace the livepatches already here")
    scs[3].update(status="fail", explanation="x\0y", diff=["-a", "+b"])
    data = json.loads(report.render("kcidb", results.load(doc, "doc")))
    _validate(data)
    tests = data["tests"]
    assert [t["status"] for t in tests[:4]] == ["PASS", "ERROR", "SKIP", "FAIL"]
    err = tests[1]["log_excerpt"].splitlines()
    assert err[0].startswith("the kernel oopsed") and "problem: the kernel oopsed" in err
    assert f"oops line {kcidb.EXCERPT_LINES - 1}" in err
    assert f"oops line {kcidb.EXCERPT_LINES}" not in err and err[-1].startswith("... (5 more")
    assert tests[2]["log_excerpt"].startswith("would replace")
    assert "\0" not in tests[3]["log_excerpt"] and "-a\n+b\n" in tests[3]["log_excerpt"]


def test_excerpt_stays_within_the_schema_limit() -> None:
    doc = saved_run()
    doc["scenarios"][0].update(status="fail", explanation="x" * 20000)
    data = json.loads(report.render("kcidb", results.load(doc, "doc")))
    _validate(data)
    assert len(data["tests"][0]["log_excerpt"]) == kcidb.EXCERPT_MAX


def test_matrix_of_two_kernels_validates_with_unique_ids() -> None:
    matrix = results.Matrix([results.load(r, "run") for r in (saved_run(), _newer_run())])
    data = json.loads(report.render("kcidb", matrix, kcidb_origin="acme_ci"))
    _validate(data)
    assert len(data["checkouts"]) == 2 and len(data["builds"]) == 2 and len(data["tests"]) == 22
    for kind in ("checkouts", "builds", "tests"):
        ids = [o["id"] for o in data[kind]]
        assert len(set(ids)) == len(ids) and all(i.startswith("acme_ci:") for i in ids)
        assert {o["origin"] for o in data[kind]} == {"acme_ci"}
    builds = {b["id"]: b for b in data["builds"]}
    assert {t["build_id"] for t in data["tests"]} == set(builds)
    new = builds["acme_ci:6.12.57+deb12-amd64:6.12.57-1~bpo12+1"]
    assert new["architecture"] == "x86_64" and new["compiler"].startswith("x86_64-linux-gnu-gcc-12")
    assert new["comment"] == "linux-image-6.12.57+deb12-amd64 6.12.57-1~bpo12+1"
    assert new["misc"]["suite"] == "bookworm-backports" and "not_recorded" not in new["misc"]
    checkout = next(c for c in data["checkouts"] if c["id"] == new["checkout_id"])
    assert checkout["tree_name"] == "debian" and "6.12.57-1~bpo12+1" in checkout["comment"]
    t = next(t for t in data["tests"] if t["build_id"] == new["id"])
    assert t["start_time"] == "2025-12-01T10:00:00.250+00:00"
    assert datetime.fromisoformat(t["start_time"]).utcoffset() is not None


def test_ids_are_stable_and_tell_runs_apart(tmp_path: Path) -> None:
    direct = json.loads(report.render("kcidb", results.load(saved_run(), "run")))
    _, rechecked = _check(tmp_path, saved_run())
    assert [t["id"] for t in direct["tests"]] == [t["id"] for t in rechecked["tests"]]
    other = saved_run()  # the same kernel, another run: other events, other test ids
    other["scenarios"][0]["events"][0]["ts_ns"] += 1
    again = json.loads(report.render("kcidb", results.load(other, "other")))
    assert again["builds"] == direct["builds"]
    assert again["tests"][0]["id"] != direct["tests"][0]["id"]
    repeated = saved_run()  # `run --repeat 2`: each scenario twice in one run
    repeated["scenarios"] += saved_run()["scenarios"]
    data = json.loads(report.render("kcidb", results.load(repeated, "repeated")))
    ids = [t["id"] for t in data["tests"]]
    assert len(set(ids)) == 22


def test_origin_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, data = _check(tmp_path, saved_run(), "--kcidb-origin", "distro_ci")
    assert code == 0 and data["builds"][0]["id"].startswith("distro_ci:")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["check", RUN, "--format", "kcidb", "--kcidb-origin", "Distro-CI"])
    assert exit_.value.code == 2
    assert "lower-case letters, digits and _" in capsys.readouterr().err
    with pytest.raises(ValueError):
        kcidb.render(results.Matrix.of(results.load(saved_run(), "run")), origin="no:colons")


def _stalled_tests(doc: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The KCIDB test of stalled.STALLED and the others, from the data validated."""
    text = report.render("kcidb", results.load(doc, "doc"))
    data = json.loads(text)
    _validate(data)
    assert json.loads(json.dumps(data)) == data
    tests = data["tests"]
    mine = [t for t in tests if t["misc"]["scenario"] == stalled.STALLED]
    assert len(mine) == 1
    return mine[0], [t for t in tests if t is not mine[0]]


def test_a_stalling_scenario_logs_its_stall_report_and_no_other_does() -> None:
    mine, others = _stalled_tests(stalled.run_doc())
    lines = mine["log_excerpt"].splitlines()
    # a pass: nothing went wrong, so the stall report is all the excerpt holds
    assert lines[:3] == [
        "stall report: klptrace_lp: patching transition in progress for 0.5 s, 1 try",
        stalled.TASK_LINE, "next steps:"]
    assert "log_excerpt" not in mine["misc"] and mine["status"] == "PASS"
    assert all("log_excerpt" not in t for t in others) and len(others) == 10


def test_a_failed_stalling_scenario_logs_what_went_wrong_then_the_stall() -> None:
    stall = "stall: kworker: sleeping on function klptrace_busy_work_func(); ended: reversed"
    mine, _ = _stalled_tests(stalled.run_doc(status="fail", recorded=[stall]))
    lines = mine["log_excerpt"].splitlines()
    assert lines[:5] == ["line 3: the story went another way", "problem: a problem", "diff:",
                         "-expected", "+recorded"]
    assert lines[5].startswith("stall report: ") and lines[-1] == f"recorded {stall}"


def test_a_hostile_comm_round_trips_and_a_huge_report_fits_the_limit() -> None:
    hostile = stalled.hostile_stall()
    mine, _ = _stalled_tests(stalled.run_doc(hostile, status="error",
                                             recorded=[f"stall: {stalled.HOSTILE}"]))
    excerpt = mine["log_excerpt"]
    # as written, but NUL, which the schema refuses
    comm = stalled.HOSTILE.replace("\0", "\\0")
    assert f"task {comm} (pid 22, tid 22)" in excerpt and "\0" not in excerpt
    # a report of many tasks, each named at length: cut to the schema's limit, and said so
    hostile["tasks"] *= 400
    hostile["next_steps"] *= 100
    mine, _ = _stalled_tests(stalled.run_doc(hostile))
    assert len(mine["log_excerpt"]) == kcidb.EXCERPT_MAX
    assert mine["log_excerpt"].endswith("\n... (cut to the schema's limit)\n")


# --- shadow variables (issue 21) --------------------------------------------------------


def _shadow_tests(*scs: results.ScenarioResult) -> dict[str, dict[str, Any]]:
    data = json.loads(kcidb.render(shadowed.matrix(*scs)))
    _validate(data)
    return {t["misc"]["scenario"]: t for t in data["tests"]}


def test_a_leak_is_an_error_whose_excerpt_names_each_leaked_variable() -> None:
    sh = shadowed
    expected = (f"shadow leak: id 7 allocated by {sh.LP}",)
    tests = _shadow_tests(sh.result("kept", sh.kept()), sh.result("leaky", sh.leaky()),
                          sh.result("leak-expected", sh.leaky(), expected),
                          sh.result("misused", sh.misused()))
    assert tests["kept"]["status"] == "PASS" and "log_excerpt" not in tests["kept"]
    leaky = tests["leaky"]
    lines = leaky["log_excerpt"].splitlines()
    leaks = [f"shadow leak: <{sh.A:#x}, 7> allocated by {sh.LP} at 1100 ns, never freed",
             f"shadow leak: <{sh.B:#x}, 7> allocated by {sh.LP} at 1110 ns, never freed"]
    assert leaky["status"] == "ERROR" and lines[-2:] == leaks
    assert lines[1].startswith("problem: 2 shadow variables of id 7 allocated by ")
    # a leak the scenario expects passes, and its excerpt still names the leaks
    ok = tests["leak-expected"]
    assert ok["status"] == "PASS" and ok["log_excerpt"] == "\n".join(leaks) + "\n"
    misused = tests["misused"]
    assert misused["status"] == "ERROR" and "problem: klp_shadow_free() of <obj#1, 7> by " \
        "klptrace_state_lp (post_unpatch) freed nothing" in misused["log_excerpt"]


def test_many_leaks_are_cut_to_a_few_lines_within_the_limit() -> None:
    sh = shadowed
    name = "klptrace_big_lp"  # a module's name: the [[shadow_leak]] line names it
    r = sh.Rec()
    r.enable(name, {}, [])
    for i in range(300):  # a leak per object of a big table, which the scenario expects
        r.shadow(sh.ShadowOp.ALLOC, name, 0x1000 * (i + 1), 7)
    r.disable(name)
    r.unload(name)
    [t] = _shadow_tests(sh.result("many", r, (f"shadow leak: id 7 allocated by {name}",))
                        ).values()
    excerpt = t["log_excerpt"]
    assert t["status"] == "PASS" and len(excerpt) <= kcidb.EXCERPT_MAX and "\0" not in excerpt
    said = [ln for ln in excerpt.splitlines() if ln.startswith("shadow leak: <")]
    assert len(said) == 30
    assert said[0] == f"shadow leak: <0x1000, 7> allocated by {name} at 1130 ns, never freed"
    assert excerpt.endswith("shadow leaks: 270 more (--format json lists every one)\n")
