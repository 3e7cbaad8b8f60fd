"""`klptrace run` of all 14 scenarios, REPEAT times in a row, in this kernel: one BPF compile."""

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
    assert len(run["scenarios"]) == 14 * REPEAT
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
