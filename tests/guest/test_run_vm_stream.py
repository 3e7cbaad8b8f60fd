"""`run --vm` across guest boots: the results stream, merging boots, staging; offline."""

from __future__ import annotations

import json
from pathlib import Path

from klptrace import scenario
from klptrace.guest import boot, stage, stream
from klptrace.results import Probe


def _write(path: Path, records: list[object], torn: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + torn)


def _sc(sid: str, status: str = "pass") -> dict[str, object]:
    return {"id": sid, "status": status, "duration_s": 1.0, "lost_events": 0, "events": []}


def test_a_boot_that_finished(tmp_path: Path) -> None:
    f = tmp_path / "s.jsonl"
    probes = [{"name": "kprobe:x", "target": "x", "ok": True, "reason": ""}]
    _write(f, [{"start": {"kernel": "6.1.0-9-amd64", "timing": {"compile_s": 5.0},
                          "probes": probes}},
               {"begin": "a"}, {"scenario": _sc("a")}, {"begin": "b"}, {"scenario": _sc("b")},
               {"end": {"lost_events": 2, "probes": probes, "leftovers": []}}])
    got = stream.read(f)
    assert boot._Ended(f)()
    assert [d.id for d in got.results] == ["a", "b"]
    assert got.begun is None and not got.wedged and got.end is not None
    assert got.end.lost_events == 2


def test_a_guest_that_died_in_a_scenario(tmp_path: Path) -> None:
    f = tmp_path / "s.jsonl"
    _write(f, [{"start": {"kernel": "k", "timing": {}, "probes": []}}, {"begin": "a"},
               {"scenario": _sc("a")}, {"begin": "b"}], torn='{"scenario": {"id": "b", "sta')
    got = stream.read(f)
    assert not boot._Ended(f)() and not boot._Ended(tmp_path / "absent")()
    assert [d.id for d in got.results] == ["a"]
    assert got.begun == "b"  # the one it died in
    assert got.end is None


def test_a_wedged_kernel_and_no_stream(tmp_path: Path) -> None:
    f = tmp_path / "s.jsonl"
    _write(f, [{"start": {"kernel": "k", "timing": {}, "probes": []}}, {"begin": "a"},
               {"scenario": _sc("a", "error")}, {"wedged": "the kernel oopsed"}])
    got = stream.read(f)
    assert got.wedged == "the kernel oopsed" and got.begun is None
    assert stream.read(tmp_path / "absent").start is None


def test_boots_merge_into_one_run() -> None:
    ok = Probe("kprobe:x", "x", True)
    bad = Probe("kprobe:y", "y", False, "EINVAL")
    top = boot._Totals()
    boot._merge(top, stream.Boot(start=stream.Start("k", {"compile_s": 5.0},
                                                    {"arch": "x86_64"}, [ok]),
                                 end=stream.End(1, [ok], ["l1"])))
    boot._merge(top, stream.Boot(start=stream.Start("k", {"compile_s": 9.0}, probes=[ok, bad])))
    assert top == boot._Totals(lost=1, probes=[ok, bad], timing={"compile_s": 5.0},
                               leftovers=["l1"], kernel_info={"arch": "x86_64"})


def test_user_modules_are_staged_over_klptrace_s(tmp_path: Path) -> None:
    built, user = tmp_path / "built", tmp_path / "user"
    built.mkdir()
    user.mkdir()
    (built / "klptrace_target.ko").write_text("ours")
    (built / "klptrace_lp.ko").write_text("ours")
    (user / "klptrace_lp.ko").write_text("theirs")
    scs = scenario.load_dir()
    dest = stage.modules(tmp_path / "m", built, str(user),
                         [s for s in scs if s.id == "target-module-before-livepatch"])
    assert (dest / "klptrace_lp.ko").read_text() == "theirs"
    assert (dest / "klptrace_target.ko").read_text() == "ours"


def test_only_the_scenario_files_the_host_checked_are_staged(tmp_path: Path) -> None:
    user = tmp_path / "user"
    user.mkdir()
    shipped = sorted(scenario.BUILTIN_DIR.glob("*.toml"))[0]
    (user / "a.toml").write_text(shipped.read_text())
    (user / ".#a.toml").symlink_to("root@host.1234")  # an editor's lock: a dangling link
    dest = stage.scenarios(tmp_path / "s", str(user))
    assert dest is not None and sorted(p.name for p in dest.iterdir()) == ["a.toml"]
    assert [s.id for s in scenario.load_dir(dest)] == [s.id for s in scenario.load_dir(user)]
