"""`klptrace run` of all 20 scenarios, REPEAT times in a row, in this kernel: one BPF compile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from klptrace import transcript
from klptrace.kernel import kmod
from klptrace.record import kprobes

REPEAT = int(os.environ.get("KLPTRACE_RUN_REPEAT", "3"))


@pytest.fixture(scope="module")
def run(module_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("run") / "run.json"
    proc = subprocess.run(
        [sys.executable, "-m", "klptrace", "run", "--repeat", str(REPEAT), "--format", "json",
         "-o", str(out),
         "--modules", str(module_dir)],
        stderr=subprocess.PIPE, text=True)
    sys.stderr.write(proc.stderr)
    doc: dict[str, Any] = json.loads(out.read_text())
    doc["_status"] = proc.returncode
    if os.environ.get("KLPTRACE_SAVE_RUN"):
        Path(os.environ["KLPTRACE_SAVE_RUN"]).write_text(out.read_text())
    return doc


def _scenario(doc: dict[str, Any], sid: str) -> dict[str, Any]:
    return next(s for s in doc["scenarios"] if s["id"] == sid)  # the first of the repeats


def test_all_scenarios_pass(run: dict[str, Any]) -> None:
    bad = {s["id"]: s["explanation"] for s in run["scenarios"] if s["status"] != "pass"}
    assert not bad
    assert len(run["scenarios"]) == 20 * REPEAT
    assert run["_status"] == 0
    assert run["lost_events"] == 0
    assert all(p["ok"] for p in run["probes"])


def test_dmesg_witness_agrees(run: dict[str, Any]) -> None:
    """The kernel log (dynamic debug on) shows what BPF recorded, line for line."""
    for s in run["scenarios"]:
        assert s["dmesg"], f"{s['id']}: no kernel log lines"
        assert s["dmesg"] == transcript.witnessed(s["recorded"]), s["id"]
        assert any("initializing patching transition" in line for line in s["dmesg"]), s["id"]


def test_pre_patch_enodev_recorded(run: dict[str, Any]) -> None:
    evs = _scenario(run, "pre-patch-callback-enodev")["events"]
    pre = [e for e in evs if e["kind"] == "callback" and e["callback"] == "pre_patch"]
    assert [(e["object"], e["ret"]) for e in pre] == [("vmlinux", -19)]
    assert any(e["kind"] == "enable_ret" and e["ret"] == -19 for e in evs)


def test_module_coming_enodev_refuses_target(run: dict[str, Any]) -> None:
    evs = _scenario(run, "module-coming-pre-patch-callback-enodev")["events"]
    pre = [e for e in evs if e["kind"] == "callback" and e.get("object") == "klptrace_target"]
    assert [(e["callback"], e["module_state"], e["ret"]) for e in pre] == [
        ("pre_patch", "COMING", -19)]
    refused = [e for e in evs if e["kind"] == "module_coming_ret" and e["ret"] == -19]
    assert [e["object"] for e in refused] == ["klptrace_target"]


def test_busy_module_stalls_then_reverses(run: dict[str, Any]) -> None:
    evs = _scenario(run, "busy-target-module")["events"]
    kinds = [e["kind"] for e in evs]
    start = kinds.index("transition_start")
    reverse = kinds.index("transition_reverse")
    assert not [e for e in evs[start:reverse] if e.get("callback") == "post_patch"]
    assert "transition_complete" not in kinds[start:reverse]
    # the kernel retried while stalled
    assert kinds[start:reverse].count("transition_try") >= 1


def test_nothing_left_behind(run: dict[str, Any]) -> None:
    assert not [m for m in kmod.loaded_modules() if m.startswith("klptrace_")]
    assert not [p for p in kmod.patches() if p.startswith("klptrace_")]
    assert not kprobes.leftover_events()


def test_busy_scenario_carries_the_stall_report(run: dict[str, Any]) -> None:
    rep = _scenario(run, "busy-target-module")["stall"]
    assert rep["patch"] == "klptrace_lp" and rep["direction"] == "patching"
    worker = [t for t in rep["tasks"] if t["function"] == "klptrace_busy_work_func"]
    assert worker and worker[0]["comm"].startswith("kworker")
    assert worker[0]["reason"] == "sleeping on function" and worker[0]["source"] == "bpf"
    whats = [i["what"] for i in rep["timeline"]]
    assert whats[0] == "start (patching)" and "reversed" in whats
    assert whats[-1] == "complete (unpatching)"
    assert any(i.get("tasks_left", 0) >= 1 for i in rep["timeline"])


# --- states and shadow variables (issue 21): scenarios 15 to 20 --------------------------

SHADOW_LPS = ("klptrace_shadow_lp1", "klptrace_shadow_lp2", "klptrace_shadow_lp3")


def _calls(sc: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in sc["events"] if e["kind"] in ("state", "shadow")]


def test_state_and_shadow_calls_are_recorded_with_their_callers(run: dict[str, Any]) -> None:
    """Every state and shadow call of the shadow scenarios, each repeat: made by a
    livepatch of ours (the caller resolved from the return address) inside one of its
    traced callbacks, on the one state and shadow id they use."""
    for sc in run["scenarios"]:
        if not sc["id"].startswith(("state-", "compatible-", "incompatible-", "shadow-")):
            continue
        calls = _calls(sc)
        assert calls, sc["id"]
        for e in calls:
            assert e["caller"] in SHADOW_LPS and e["callback"], (sc["id"], e)
            assert e.get("state_id", e.get("shadow_id")) == 21, (sc["id"], e)
        declared = [(e["patch"], e["version"]) for e in sc["events"]
                    if e["kind"] == "state_declared"]
        assert declared and {v for _p, v in declared} <= {1, 2}, sc["id"]


def test_set_up_state_is_found_by_its_successor(run: dict[str, Any]) -> None:
    """klp_get_prev_state() in the replacing patch's pre_patch finds the version the
    first patch declared; the variables the first allocated are the ones it gets."""
    for sid, first, second, v in (("state-taken-over-by-replace", "klptrace_shadow_lp1",
                                   "klptrace_shadow_lp2", 1),
                                  ("compatible-cumulative-versions", "klptrace_shadow_lp2",
                                   "klptrace_shadow_lp3", 1)):
        calls = _calls(_scenario(run, sid))
        prev = [e for e in calls if e["op"] == "get_prev" and e["callback"] == "pre_patch"]
        assert [(e["patch"], e["version"]) for e in prev] == [(first, None), (second, v)], sid
        shadow = [e for e in calls if e["kind"] == "shadow"]
        made = {e["obj"] for e in shadow if e["op"] == "get_or_alloc" and e["caller"] == first}
        got = {e["obj"] for e in shadow if e["op"] == "get" and e["caller"] == second
               and e["callback"] == "pre_patch"}
        assert len(made) == 3 and got == made, sid
        frees = [(e["caller"], e["callback"]) for e in calls if e["op"] == "free_all"]
        assert frees == [(second, "post_unpatch")], sid


def test_incompatible_patches_are_refused_before_their_callbacks(run: dict[str, Any]) -> None:
    evs = _scenario(run, "incompatible-version-refused")["events"]
    refused = [(e["patch"], e["ret"]) for e in evs if e["kind"] == "enable_ret" and e["ret"]]
    assert refused == [("klptrace_shadow_lp2", -22), ("klptrace_shadow_lp1", -22)]
    assert not [e for e in evs if e.get("callback") and e.get("patch") != "klptrace_shadow_lp3"]
    rec = _scenario(run, "incompatible-version-refused")["recorded"]
    assert ("livepatch: Livepatch patch (klptrace_shadow_lp2) is not compatible with the "
            "already installed livepatches.") in rec


def test_the_leak_is_reported_each_time(run: dict[str, Any]) -> None:
    """The leak scenario passes because its leak is reported, in every repeat: a later
    set-up (the next repeat's scenarios) frees what the last one left."""
    leaks = [s for s in run["scenarios"] if s["id"] == "shadow-leak-reported"]
    assert len(leaks) == REPEAT
    for sc in leaks:
        assert sc["status"] == "pass"
        got = sc["shadow_leaks"]
        assert [(k["shadow_id"], k["allocated_by"]) for k in got] == [
            (21, "klptrace_shadow_lp1")] * 3
        assert len({k["obj"] for k in got}) == 3
        assert sc["recorded"][-1] == "shadow leak: id 21 allocated by klptrace_shadow_lp1"
    for sc in run["scenarios"]:
        if sc["id"] != "shadow-leak-reported":
            assert not sc.get("shadow_leaks") and not sc.get("shadow_problems"), sc["id"]
