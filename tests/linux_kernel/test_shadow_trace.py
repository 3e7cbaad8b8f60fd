"""`klptrace trace` on klptrace's shadow livepatches (issue 21): a leak is printed and
fails the trace and its --expect, the same commands without the leak pass, and a
test-state.sh / test-shadow-vars.sh style sequence is recorded call by call.

The expectations are the scenario files' own (state-setup-teardown, shadow-leak-reported):
the script below takes the same steps and logs the same `%` lines. Each trace compiles the
BPF once; the four are all this file needs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from util import until

from klptrace import checker, scenario
from klptrace.kernel import kmod
from klptrace.results import RunDocument, Status

T = "klptrace_shadow_target"
LP1, LP2, LP3 = "klptrace_shadow_lp1", "klptrace_shadow_lp2", "klptrace_shadow_lp3"
LEAK_LINE = f"shadow leak: id 21 allocated by {LP1}"
#: the problem klptrace says of the leak: one per id and module (leak_expect.unexpected)
GROUPED = f"3 shadow variables of id 21 allocated by {LP1} never freed (obj#1, "
SCENARIOS = {s.id: s for s in scenario.load_dir()}

# sh functions: `%` lines in the kernel log, and waits on sysfs, as the selftests'
FUNCS = """\
set -e
log() { echo "% $*" > /dev/kmsg; }
settle() { while [ -e /sys/kernel/livepatch/$1 ] && \\
  [ "$(cat /sys/kernel/livepatch/$1/transition)" != 0 ]; do sleep 0.1; done; }
gone() { while [ -e /sys/kernel/livepatch/$1 ]; do sleep 0.1; done; }
load() { m=$1; shift; log insmod $m.ko "$@"; insmod $D/$m.ko "$@"; settle $m; }
refused() { log insmod $1.ko; ! insmod $D/$1.ko 2>/dev/null; }
disable() { log "echo 0 > /sys/kernel/livepatch/$1/enabled"
  echo 0 > /sys/kernel/livepatch/$1/enabled; settle $1; gone $1; }
# the module reference of a disabled or replaced patch is dropped after its sysfs goes
unload() { log rmmod $1; until rmmod $1 2>/dev/null; do sleep 0.1; done; }
"""

# the steps of state-setup-teardown, and of shadow-leak-reported with P=leak=Y
ONE = FUNCS + f"""\
log insmod {T}.ko; insmod $D/{T}.ko
load {LP1} $P
disable {LP1}
unload {LP1}
log rmmod {T}; rmmod {T}
"""

# test-state.sh's and test-shadow-vars.sh's kind of sequence, on a target loaded before:
# set up and torn down; taken over by a cumulative patch (the replaced one's module
# unloaded while its variables live on); version 1 then 2; an older version refused
SEQUENCE = FUNCS + f"""\
load {LP1}; disable {LP1}; unload {LP1}
load {LP1}; load {LP2}; unload {LP1}; disable {LP2}; unload {LP2}
load {LP2}; load {LP3}; unload {LP2}
refused {LP1}; refused {LP2}
disable {LP3}; unload {LP3}
"""


def _trace(module_dir: Path, script: str, *args: str, modules: tuple[str, ...] = (LP1,),
           params: str = "") -> subprocess.CompletedProcess[str]:
    mods = [a for m in modules for a in ("--module", str(module_dir / f"{m}.ko"))]
    p = subprocess.run(
        [sys.executable, "-m", "klptrace", "trace", *mods, *args, "--", "env",
         f"D={module_dir}", f"P={params}", "sh", "-c", script], capture_output=True, text=True)
    sys.stderr.write(p.stderr)
    assert not [m for m in kmod.loaded_modules() if m.startswith("klptrace_shadow_lp")]
    return p


def _expected(sid: str) -> list[str]:
    return list(SCENARIOS[sid].expect)


def test_a_leak_is_printed_and_fails_the_trace(module_dir: Path) -> None:
    p = _trace(module_dir, ONE, params="leak=Y")
    lines = p.stdout.splitlines()
    assert p.returncode == 1, p.stdout
    # the transcript is shadow-leak-reported's, leak line and all
    assert lines == _expected("shadow-leak-reported")
    assert lines.count(LEAK_LINE) == 1  # one line per id and module, three variables
    # one problem for the id and module, counting and naming its three variables
    said = [x for x in p.stderr.splitlines() if "never freed" in x]
    assert len(said) == 1 and GROUPED in said[0] and "obj#3" in said[0], p.stderr


def test_expect_fails_on_the_leak_and_passes_when_it_is_stated(module_dir: Path,
                                                               tmp_path: Path) -> None:
    """--expect without the leak's line: an error naming the leak (exit 1). The same
    recording judged against the expectation with the line (the scenario's) passes."""
    stated = _expected("shadow-leak-reported")
    unstated = tmp_path / "unstated.txt"
    unstated.write_text("\n".join(x for x in stated if x != LEAK_LINE) + "\n")
    p = _trace(module_dir, ONE, "--expect", str(unstated), "--format", "json", params="leak=Y")
    doc = json.loads(p.stdout)
    assert p.returncode == 1
    [sc] = doc["scenarios"]
    assert sc["status"] == "error" and GROUPED in sc["explanation"], sc
    assert [k["allocated_by"] for k in sc["shadow_leaks"]] == [LP1] * 3
    assert doc["lost_events"] == 0 and all(pr["ok"] for pr in doc["probes"])
    recording = RunDocument.from_json(doc, "trace").scenarios[0].recording
    v = checker.judge(stated, recording)
    assert v.status == Status.PASS, v.explanation
    assert v.recorded[-1] == LEAK_LINE


def test_without_the_leak_the_trace_passes(module_dir: Path, tmp_path: Path) -> None:
    """The same steps without leak=Y: post_unpatch frees the variables (also those left
    by the leaks above, which the set-up adopted), nothing is left, --expect passes."""
    good = tmp_path / "good.txt"
    good.write_text("\n".join(_expected("state-setup-teardown")) + "\n")
    p = _trace(module_dir, ONE, "--expect", str(good), "--format", "json")
    doc = json.loads(p.stdout)
    [sc] = doc["scenarios"]
    assert p.returncode == 0, sc["explanation"]
    assert sc["status"] == "pass" and not sc.get("shadow_leaks")
    assert LEAK_LINE not in sc["recorded"]


def _items() -> list[int]:
    """The addresses of klptrace_shadow_target's items (its static array `items`)."""
    with open("/proc/kallsyms") as f:
        for line in f:
            addr, _kind, rest = line.split(" ", 2)
            if rest.split() == ["items", f"[{T}]"]:
                base = int(addr, 16)
                size = 24  # struct klptrace_shadow_item on 64-bit: u32, u64, atomic_t
                return [base + i * size for i in range(3)]
    raise AssertionError(f"no symbol items of {T} in /proc/kallsyms")


def test_a_state_and_shadow_sequence_names_everything_it_touched(module_dir: Path) -> None:
    subprocess.run(["insmod", str(module_dir / f"{T}.ko")], check=True)
    items = _items()
    p = _trace(module_dir, SEQUENCE, "--format", "json", modules=(LP1, LP2, LP3))
    doc: dict[str, Any] = json.loads(p.stdout)
    assert p.returncode == 0, doc["problems"]
    assert doc["lost_events"] == 0 and all(pr["ok"] for pr in doc["probes"])
    assert not doc.get("shadow_leaks") and not doc.get("shadow_problems")
    evs = doc["events"]
    # every state: each patch's declaration (lp1 and lp2 once more when refused)
    declared = [(e["patch"], e["state_id"], e["version"]) for e in evs
                if e["kind"] == "state_declared"]
    assert declared == [(LP1, 21, 1), (LP1, 21, 1), (LP2, 21, 1), (LP2, 21, 1), (LP3, 21, 2),
                        (LP1, 21, 1), (LP2, 21, 1)]
    gets = {(e["patch"], e["op"], e["callback"]) for e in evs if e["kind"] == "state"}
    for lp in (LP1, LP2, LP3):
        for cb in ("pre_patch", "post_patch", "post_unpatch"):
            assert (lp, "get", cb) in gets, (lp, cb)
    # every shadow variable: one <item, 21> per item of the target, and only those
    shadow = [e for e in evs if e["kind"] == "shadow"]
    objs = {int(e["obj"], 16) for e in shadow if "obj" in e}
    assert objs == set(items)
    assert {e["shadow_id"] for e in shadow} == {21}
    made = [(e["caller"], int(e["obj"], 16)) for e in shadow if e["op"] == "get_or_alloc"]
    assert made == [(LP1, i) for i in items] * 2 + [(LP2, i) for i in items]
    frees = [(e["caller"], e["callback"]) for e in shadow if e["op"] == "free_all"]
    assert frees == [(LP1, "post_unpatch"), (LP2, "post_unpatch"), (LP3, "post_unpatch")]
    # the refusals, in the kernel's words
    for lp in (LP1, LP2):
        assert (f"livepatch: Livepatch patch ({lp}) is not compatible with the already "
                "installed livepatches.") in doc["transcript"]


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    yield
    for m in (LP3, LP2, LP1):
        if os.path.exists(f"/sys/kernel/livepatch/{m}"):
            kmod.write(f"/sys/kernel/livepatch/{m}/enabled", "0")
            until(lambda m=m: not os.path.exists(f"/sys/kernel/livepatch/{m}"))  # type: ignore[misc]
    for m in (LP3, LP2, LP1, T):
        if kmod.is_loaded(m):
            until(lambda m=m: subprocess.run(["rmmod", m], capture_output=True)  # type: ignore[misc]
                  .returncode == 0)
