"""`klptrace trace` on a livepatch that is not one of klptrace's scenario modules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from util import until

from klptrace import checker, results
from klptrace.events import Event
from klptrace.kernel import kmod, kmsg
from klptrace.record import elf, kprobes
from klptrace.record.recorder import Recorder
from klptrace.results import RunDocument, Status

EXPECTED = """\
# acme_lp with its target loaded first, as test-callbacks.sh's first test
% insmod klptrace_target.ko
klptrace_target: klptrace_target_init
% insmod acme_lp.ko
livepatch: enabling patch 'acme_lp'
livepatch: 'acme_lp': initializing patching transition
acme_lp: pre_patch_callback: vmlinux
acme_lp: pre_patch_callback: klptrace_target -> [MODULE_STATE_LIVE] Normal state
livepatch: 'acme_lp': starting patching transition
livepatch: 'acme_lp': completing patching transition
acme_lp: post_patch_callback: vmlinux
acme_lp: post_patch_callback: klptrace_target -> [MODULE_STATE_LIVE] Normal state
livepatch: 'acme_lp': patching complete
% echo 0 > /sys/kernel/livepatch/acme_lp/enabled
livepatch: 'acme_lp': initializing unpatching transition
acme_lp: pre_unpatch_callback: vmlinux
acme_lp: pre_unpatch_callback: klptrace_target -> [MODULE_STATE_LIVE] Normal state
livepatch: 'acme_lp': starting unpatching transition
livepatch: 'acme_lp': completing unpatching transition
acme_lp: post_unpatch_callback: vmlinux
acme_lp: post_unpatch_callback: klptrace_target -> [MODULE_STATE_LIVE] Normal state
livepatch: 'acme_lp': unpatching complete
% rmmod acme_lp
% rmmod klptrace_target
klptrace_target: klptrace_target_exit
"""

SCRIPT = """\
set -e
log() { echo "% $*" > /dev/kmsg; }
settle() { while [ -e /sys/kernel/livepatch/$1 ] && \
  [ "$(cat /sys/kernel/livepatch/$1/transition)" != 0 ]; do sleep 0.1; done; }
gone() { while [ -e /sys/kernel/livepatch/$1 ]; do sleep 0.1; done; }
log insmod klptrace_target.ko; insmod $D/klptrace_target.ko
for i in $(seq $N); do
  log insmod acme_lp.ko; insmod $D/acme_lp.ko; settle acme_lp
  log "echo 0 > /sys/kernel/livepatch/acme_lp/enabled"
  echo 0 > /sys/kernel/livepatch/acme_lp/enabled; settle acme_lp; gone acme_lp
  log rmmod acme_lp; rmmod acme_lp
done
log rmmod klptrace_target; rmmod klptrace_target
"""


def _trace(module_dir: Path, *args: str, n: int = 1, script: str = SCRIPT,
           clean: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(
        [sys.executable, "-m", "klptrace", "trace", "--module",
         str(module_dir / "acme_lp.ko"), *args, "--", "env", f"D={module_dir}", f"N={n}",
         "sh", "-c", script], capture_output=True, text=True)
    sys.stderr.write(p.stderr)
    if clean:
        assert not [m for m in kmod.loaded_modules() if m in ("acme_lp", "klptrace_target")]
    return p


def test_trace_meets_its_expectation_and_leaves_no_line_in_the_workloads_log(
        module_dir: Path, tmp_path: Path) -> None:
    """The whole transcript, the callbacks' roles and the verdict of --expect, from one
    trace. Deferred probes make the kernel log one line each when klptrace registers
    them, before it starts COMMAND; while COMMAND loads and unloads the livepatch (and
    while klptrace tears down) trace_kprobe logs nothing: every probe is armed."""
    good = tmp_path / "good.txt"
    good.write_text(EXPECTED)
    klog = kmsg.KernelLog()  # what the kernel logs from now on
    try:
        p = _trace(module_dir, "--expect", str(good), "--format", "json")
        log = klog.read()
    finally:
        klog.close()
    assert p.returncode == 0, p.stdout
    doc = json.loads(p.stdout)  # with --expect, a run document of one scenario
    want = [line for line in EXPECTED.splitlines() if not line.startswith("#")]
    [sc] = doc["scenarios"]
    assert (sc["id"], sc["status"]) == ("trace", "pass"), sc["explanation"]
    assert sc["recorded"] == want
    assert doc["lost_events"] == 0 and all(pr["ok"] for pr in doc["probes"])
    events = [Event.from_json(e) for e in sc["events"]]
    roles = [(c["callback"], c["object"], c["module_state"], c["ret"])
             for c in results.callbacks_json(events)]
    assert roles == [
        ("pre_patch", "vmlinux", None, 0), ("pre_patch", "klptrace_target", "LIVE", 0),
        ("post_patch", "vmlinux", None, None), ("post_patch", "klptrace_target", "LIVE", None),
        ("pre_unpatch", "vmlinux", None, None), ("pre_unpatch", "klptrace_target", "LIVE", None),
        ("post_unpatch", "vmlinux", None, None),
        ("post_unpatch", "klptrace_target", "LIVE", None)]

    # the kernel log: the workload's first line (its own `%` line) splits set-up from it
    assert "klptrace: kernel log records were overwritten" not in log  # none were lost
    first = log.index(want[0])
    setup, workload = log[:first], log[first + 1:]
    deferred = [m for m in setup if m.startswith(kprobes.DEFERRED_MESSAGE)]
    n = len(elf.read_module(str(module_dir / "acme_lp.ko")).callback_candidates)
    assert len(deferred) == 2 * n  # an entry and a return probe on each candidate
    assert [m for m in workload if "trace_kprobe" in m] == []
    mine = [pr for pr in doc["probes"] if pr["target"].startswith("acme_lp:")]
    assert len(mine) == 2 * n and all(pr["ok"] and pr["armed"] for pr in mine), mine

    # the same recording against an expectation with one line moved: the order differs
    # (the command's exit status 1 and its rendering are tested offline)
    recording = RunDocument.from_json(doc, "trace").scenarios[0].recording
    moved = list(want)
    i = moved.index("acme_lp: post_patch_callback: vmlinux")
    moved.insert(i - 2, moved.pop(i))
    v = checker.judge(moved, recording)
    assert v.status == Status.FAIL and "order differs" in v.explanation, v.explanation
    assert "-acme_lp: post_patch_callback: vmlinux" in v.diff
    assert "+acme_lp: post_patch_callback: vmlinux" in v.diff


def test_trace_records_both_loads_and_a_failing_pre_patch(module_dir: Path) -> None:
    script = SCRIPT.replace("insmod $D/acme_lp.ko; settle", "insmod $D/acme_lp.ko $P; settle")
    p = _trace(module_dir, "--format", "json", n=2, script=script)
    doc = json.loads(p.stdout)
    assert p.returncode == 0
    enables = [e for e in doc["events"] if e["kind"] == "enable" and e["patch"] == "acme_lp"]
    assert len(enables) == 2
    assert len([c for c in doc["callbacks"] if c["callback"] == "post_unpatch"]) == 4
    # now with the pre_patch callback failing: insmod fails, the script stops (set -e)
    bad = SCRIPT.replace("insmod $D/acme_lp.ko;", "insmod $D/acme_lp.ko fail_prepare=-19;")
    p = _trace(module_dir, "--format", "json", script=bad, clean=False)
    doc = json.loads(p.stdout)
    assert p.returncode != 0  # the command's own status
    assert [(c["callback"], c["object"], c["ret"]) for c in doc["callbacks"]] == [
        ("pre_patch", "vmlinux", -19)]
    assert "livepatch: pre-patch callback failed for object 'vmlinux'" in doc["transcript"]
    subprocess.run(["rmmod", "klptrace_target"], capture_output=True)


def test_user_scenario_directory(module_dir: Path, tmp_path: Path) -> None:
    steps = ('steps = [\n  { load = "klptrace_target" },\n  { load = "acme_lp" },\n'
             '  { disable = "acme_lp" },\n  { unload = "acme_lp" },\n'
             '  { unload = "klptrace_target" },\n]\n')
    body = "\n".join(line for line in EXPECTED.splitlines() if not line.startswith("#"))
    (tmp_path / "acme.toml").write_text(
        'id = "acme-target-first"\ntitle = "acme_lp over a loaded target"\n'
        'livepatches = ["acme_lp"]\ndoc = """Both objects are loaded when acme_lp is '
        'enabled, so every callback runs for both."""\n' + steps
        + f'expect = """\n{body}\n"""\n')
    out = tmp_path / "r.json"
    p = subprocess.run([sys.executable, "-m", "klptrace", "run", "--scenarios", str(tmp_path),
                        "--modules", str(module_dir), "--format", "json", "-o", str(out)],
                       capture_output=True, text=True)
    doc = json.loads(out.read_text())
    assert p.returncode == 0, doc["scenarios"][0]["explanation"]
    assert [(s["id"], s["status"]) for s in doc["scenarios"]] == [("acme-target-first", "pass")]


def test_a_probe_the_kernel_does_not_arm_is_an_error(module_dir: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A deferred probe on a function the module lacks: the kernel accepts it, then
    fails to arm it when the module comes ("Failed to re-register probe ... -2")."""
    real = elf.read_module

    def with_a_missing_function(path: str) -> elf.ModuleFile:
        mod = real(path)
        return elf.ModuleFile(mod.name, mod.functions,
                              (*mod.callback_candidates, "acme_no_such_function"))

    monkeypatch.setattr(elf, "read_module", with_a_missing_function)
    subprocess.run(["insmod", str(module_dir / "klptrace_target.ko")], check=True)
    with Recorder([str(module_dir / "acme_lp.ko")]) as rec:
        subprocess.run(["insmod", str(module_dir / "acme_lp.ko")], check=True)
        recording = rec.recording()
    assert until(lambda: kmod.patch_attr("acme_lp", "transition") == "0")
    bad = [pr for pr in recording.probes if pr.target == "acme_lp:acme_no_such_function"]
    assert len(bad) == 2 and not any(pr.ok or pr.armed for pr in bad), bad
    assert all("Failed to re-register probe" in pr.reason and "ENOENT" in pr.reason
               for pr in bad), bad
    good = [pr for pr in recording.probes
            if pr.target.startswith("acme_lp:") and pr not in bad]
    assert good and all(pr.ok and pr.armed for pr in good), good
    problems = checker.integrity(recording)
    assert [p for p in problems if "was not armed" in p and "acme_no_such_function" in p]
    assert checker.judge([], recording).status == Status.ERROR


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    yield
    for m in ("acme_lp", "klptrace_target"):
        if kmod.is_loaded(m):
            kmod.write(f"/sys/kernel/livepatch/{m}/enabled", "0")
            until(lambda m=m: not os.path.exists(f"/sys/kernel/livepatch/{m}"))  # type: ignore[misc]
            subprocess.run(["rmmod", m], capture_output=True)
