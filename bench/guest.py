"""The benchmark's guest side, run as root inside the lab VM by bench/run.py.

In one boot, on the running kernel, in this order:
  a   `klptrace run` of all 11 scenarios (a fresh process: bcc import, BPF
      compile and attach included), wall time, CPU time, its `timing`;
  b   bench/harness.sh, the same steps the way the kernel selftests take them
      (poll sysfs every 0.1 s), no tracing, wall time;
      a then b again, --rounds times in all (default 3); round 2's a is a2,
      `klptrace run` with warm caches (bcc's libraries read once);
  stall   the busy module blocks klptrace_lp's transition; from the moment
      transition reads 1 until `klptrace stall --format json` has named the
      blocked worker;
  load    one scenario with N extra sleeping threads (lost events, CPU
      time), and the same scenario without them.
It writes one JSON document to --out. The figures are printed by run.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HARNESS = REPO / "bench" / "harness.sh"
SLEEPERS = REPO / "bench" / "sleepers.py"
PY = sys.executable
BUSY_FUNC = "klptrace_busy_work_func"  # what klptrace_busy's worker sleeps in
LOAD_SCENARIO = "target-module-not-present"  # one patching and one unpatching transition


def harness_steps(text: str) -> dict[str, list[str]]:
    """The `% ...` step lines of each test in harness.sh's output, by scenario id."""
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("TEST: "):
            current = line[6:].strip()
            out[current] = []
        elif line.startswith("% ") and current is not None:
            out[current].append(line)
    return out


def scenario_steps() -> dict[str, list[str]]:
    """The `% ...` step lines that klptrace's scenarios expect, by id."""
    sys.path.insert(0, str(REPO))
    from klptrace import scenario

    return {s.id: [x for x in s.expect if x.startswith("% ")] for s in scenario.load_dir()}


def _cpu_s(pid: int) -> tuple[float, float] | None:
    """(utime, stime) of a process so far, from /proc/<pid>/stat."""
    sys.path.insert(0, str(REPO))
    from klptrace.kernel import proc

    st = proc.stat(pid)
    return None if st is None else (proc.seconds(st.utime), proc.seconds(st.stime))


def klptrace_run(modules: str, out: Path, ids: Sequence[str] = ()) -> dict[str, Any]:
    """One `klptrace run` process: wall and CPU time, and what its JSON says."""
    cmd = [PY, "-m", "klptrace", "run", *ids, "--format", "json", "-o", str(out),
           "--modules", modules]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=REPO)
    cpu_attached = None
    wall_attached = None
    assert proc.stderr is not None
    for line in proc.stderr:
        sys.stderr.write(line)
        if line.startswith("Tracing livepatch events") and cpu_attached is None:
            cpu_attached = _cpu_s(proc.pid)  # compiled and attached: recording starts
            wall_attached = time.monotonic() - t0
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t0
    # System time includes the kernel's own work done in klptrace's context:
    # the first try of each transition runs in the task that loads the
    # livepatch or writes `enabled`, and checks every task of the guest.
    res: dict[str, Any] = {"wall_s": round(wall, 2), "exit": proc.returncode,
                           "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
                           "cpu_user_s": round(usage.ru_utime, 2),
                           "cpu_sys_s": round(usage.ru_stime, 2)}
    if cpu_attached is not None and wall_attached is not None:
        user = usage.ru_utime - cpu_attached[0]
        sys_ = usage.ru_stime - cpu_attached[1]
        res.update(cpu_recording_s=round(user + sys_, 2), cpu_recording_user_s=round(user, 2),
                   cpu_recording_sys_s=round(sys_, 2),
                   wall_recording_s=round(wall - wall_attached, 2))
    try:
        doc = json.loads(out.read_text())
    except (OSError, ValueError) as e:
        res["error"] = f"no results: {e}"
        return res
    res["timing"] = doc.get("timing", {})
    res["totals"] = doc.get("totals", {})
    res["lost_events"] = doc.get("lost_events")
    res["scenarios"] = {s["id"]: {"status": s["status"], "duration_s": s["duration_s"],
                                  "lost_events": s.get("lost_events", 0)}
                        for s in doc.get("scenarios", [])}
    return res


def harness(modules: str, work: Path) -> dict[str, Any]:
    """bench/harness.sh: wall time, and whether its steps are klptrace's."""
    log = work / "harness.dmesg"
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(HARNESS), modules], capture_output=True, text=True,
                          env={**os.environ, "HARNESS_RESULTS": str(log)})
    wall = time.monotonic() - t0
    sys.stderr.write(proc.stderr)
    res: dict[str, Any] = {"wall_s": round(wall, 2), "exit": proc.returncode}
    if harness_steps(proc.stdout) != scenario_steps():
        res["error"] = "harness.sh's steps differ from the scenarios' (tests/test_bench.py)"
    return res


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _wait(cond: Any, timeout: float, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def _transition(patch: str) -> str | None:
    try:
        return Path(f"/sys/kernel/livepatch/{patch}/transition").read_text().strip()
    except OSError:
        return None


def _blocked_tids(func: str) -> set[int]:
    """Threads whose kernel stack has func on it (the truth, from /proc)."""
    out = set()
    for stack in Path("/proc").glob("[0-9]*/task/[0-9]*/stack"):
        try:
            if func in stack.read_text():
                out.add(int(stack.parent.name))
        except (OSError, ValueError):
            continue
    return out


def _tids_in(doc: Any) -> set[int]:
    """Every integer named tid anywhere in a JSON document."""
    found: set[int] = set()
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k == "tid" and isinstance(v, int):
                found.add(v)
            else:
                found |= _tids_in(v)
    elif isinstance(doc, list):
        for v in doc:
            found |= _tids_in(v)
    return found


def stall(modules: str) -> dict[str, Any]:
    """Time from a stalled transition to `klptrace stall` naming the blocked task."""
    probe = subprocess.run([PY, "-m", "klptrace", "stall", "--help"], capture_output=True,
                           text=True, cwd=REPO)
    if probe.returncode != 0:
        return {"error": "not available: klptrace stall missing"}
    t0 = time.monotonic()
    subprocess.run([PY, "-m", "klptrace", "--version"], capture_output=True, cwd=REPO)
    startup = time.monotonic() - t0  # what any klptrace command pays before its work
    lp, busy = "klptrace_lp", "klptrace_busy"
    subprocess.run(["insmod", f"{modules}/{busy}.ko", "block_transition=Y"], check=True)
    res: dict[str, Any] = {}
    try:
        subprocess.run(["insmod", f"{modules}/{lp}.ko"], check=True)
        if not _wait(lambda: _transition(lp) == "1", 60):
            return {"error": f"{lp}'s transition did not stall"}
        t0 = time.monotonic()
        proc = subprocess.run([PY, "-m", "klptrace", "stall", "--format", "json"],
                              capture_output=True, text=True, cwd=REPO)
        took = time.monotonic() - t0
        truth = _blocked_tids(BUSY_FUNC)
        try:
            named = _tids_in(json.loads(proc.stdout)) & truth
        except ValueError:
            named = set()
        res = {"named_s": round(took, 2), "startup_s": round(startup, 2), "exit": proc.returncode,
               "blocked_tids": sorted(truth), "named": bool(named)}
        if not named:
            res["error"] = (f"klptrace stall did not name the blocked task {sorted(truth)}: "
                            f"exit {proc.returncode}, {proc.stderr.strip()[-300:]}")
    finally:
        if os.path.isdir(f"/sys/kernel/livepatch/{lp}"):
            _write(f"/sys/kernel/livepatch/{lp}/enabled", "0")
            _wait(lambda: not os.path.isdir(f"/sys/kernel/livepatch/{lp}"), 120, 0.1)
        subprocess.run(["rmmod", lp], stderr=subprocess.DEVNULL)
        subprocess.run(["rmmod", busy], check=True)
    return res


def load(modules: str, threads: int, work: Path) -> dict[str, Any]:
    """One scenario recorded while `threads` extra threads sleep, and without them."""
    baseline = klptrace_run(modules, work / "load0.json", [LOAD_SCENARIO])
    helper = subprocess.Popen([PY, str(SLEEPERS), str(threads)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert helper.stdout is not None and helper.stdin is not None
    try:
        t0 = time.monotonic()
        ready = helper.stdout.readline()
        spawn_s = time.monotonic() - t0
        if not ready.startswith("ready"):
            return {"error": f"the sleeper threads did not start: {ready!r}"}
        tasks = len(list(Path("/proc").glob("[0-9]*/task/[0-9]*")))
        res = klptrace_run(modules, work / "load.json", [LOAD_SCENARIO])
        res.update(threads=threads, tasks_in_guest=tasks, spawn_s=round(spawn_s, 2),
                   scenario=LOAD_SCENARIO, baseline=baseline)
        return res
    finally:
        helper.stdin.close()
        helper.wait(timeout=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--modules", required=True, help="the test modules built for this kernel")
    ap.add_argument("--out", required=True, help="where to write the JSON figures")
    ap.add_argument("--threads", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3, help="pairs of a and b")
    args = ap.parse_args()
    out = Path(args.out)
    work = out.parent
    doc: dict[str, Any] = {"kernel": os.uname().release, "cpus": os.cpu_count()}

    def step(name: str, fn: Any, *a: Any, into: dict[str, Any] = doc, label: str = "") -> None:
        print(f"bench: {label or name}...", file=sys.stderr, flush=True)
        try:
            into[name] = fn(*a)
        except Exception as e:
            into[name] = {"error": f"{type(e).__name__}: {e}"}
        out.write_text(json.dumps(doc, indent=1) + "\n")

    # Rounds of a then b: a transition takes one or two of the kernel's 1 s
    # tries, so one pair's ratio swings by about 0.1; the median of a few
    # does not. Round 1's a is the cold one (bcc's libraries never read).
    rounds: list[dict[str, Any]] = []
    doc["rounds"] = rounds
    for i in range(1, args.rounds + 1):
        pair: dict[str, Any] = {}
        rounds.append(pair)
        step("klptrace", klptrace_run, args.modules, work / f"a{i}.json", into=pair,
             label=f"round {i}: klptrace")
        step("harness", harness, args.modules, work, into=pair, label=f"round {i}: harness")
    doc["klptrace"], doc["harness"] = rounds[0]["klptrace"], rounds[0]["harness"]
    if len(rounds) > 1:
        doc["klptrace_warm"] = rounds[1]["klptrace"]
    step("stall", stall, args.modules)
    step("load", load, args.modules, args.threads, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
