"""The benchmark's guest side, run as root inside the lab VM by bench/run.py.

In one boot, on the running kernel, in this order:
  a   `klptrace run` of all the scenarios (a fresh process: bcc import, BPF
      compile and attach included), wall time, CPU time, its `timing`;
  b   bench/harness.sh, the same steps the way the kernel selftests take them
      (poll sysfs every 0.1 s), no tracing, wall time;
      a then b again, --rounds times in all (default 3); round 2's a is a2,
      `klptrace run` with warm caches (bcc's libraries read once);
  stall   for each kind of blocking task (KINDS: the busy kworker, a user
      reader sleeping interruptibly or killably, a kthread sleeping, a
      CPU-bound kthread), from the moment the transition reads 1 until
      `klptrace stall --format json` has named that task correctly;
  load    one scenario with N extra sleeping threads (lost events, CPU
      time), and the same scenario without them;
  shadow  bursts of klp_shadow_get() calls under `klptrace trace`: events
      recorded and lost, events per second, the probes' cost per call
      (bench/shadow.py).
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
from typing import Any, NamedTuple

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


def _tids_where(name: str, ok: Any) -> set[int]:
    """Threads whose /proc/<pid>/task/<tid>/<name> text ok() accepts (the truth, from /proc)."""
    out = set()
    for f in Path("/proc").glob(f"[0-9]*/task/[0-9]*/{name}"):
        try:
            if ok(f.read_text()):
                out.add(int(f.parent.name))
        except (OSError, ValueError):
            continue
    return out


def _blocked_tids(func: str) -> set[int]:
    """Threads whose kernel stack has func on it."""
    return _tids_where("stack", lambda text: func in text)


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


class Kind(NamedTuple):
    """One kind of task that stalls a transition, as the test modules hold it."""

    target: str  # the module that holds the task
    params: str  # its parameters at load
    patch: str  # the livepatch whose transition it stalls
    reader: str  # a debugfs file a user process reads ("" for none)
    comm: str  # the blocking task's comm ("" for the busy kworker: found by its stack)
    function: str
    kind: str  # what `klptrace stall` must say: "kthread" or "user"
    sleep: tuple[str, ...]  # and its sleep state (either, where the vCPUs decide)
    release: str  # the target's parameter that lets it go ("" for klptrace_busy)


STALL = "klptrace_stall"
KINDS = {
    # the kworker of issue 9: a work item sleeping (msleep, D) in the patched function
    "kworker, uninterruptible": Kind("klptrace_busy", "block_transition=Y", "klptrace_lp", "",
                                     "", BUSY_FUNC, "kthread", ("uninterruptible",), ""),
    "user, interruptible": Kind(STALL, "", "klptrace_stall_lp", "interruptible", "cat",
                                "klptrace_stall_read_interruptible", "user",
                                ("interruptible",), "hold_interruptible"),
    "user, killable (D)": Kind(STALL, "", "klptrace_stall_lp", "uninterruptible", "cat",
                               "klptrace_stall_read_uninterruptible", "user",
                               ("uninterruptible",), "hold_uninterruptible"),
    "kthread, interruptible": Kind(STALL, "kthread=Y", "klptrace_stall_lp", "",
                                   "klptrace_stalld", "klptrace_stall_kthread_wait", "kthread",
                                   ("interruptible",), "hold_kthread"),
    # /proc shows it running, or preempted in the function: which one is the vCPUs' timing
    "kthread, CPU-bound": Kind(STALL, "spin=Y", "klptrace_stall_lp", "", "klptrace_spind",
                               "klptrace_stall_spin", "kthread", ("running",), "hold_spin"),
}


def _param(module: str, name: str) -> str | None:
    try:
        return Path(f"/sys/module/{module}/parameters/{name}").read_text().strip()
    except OSError:
        return None


def _comm_tids(comm: str) -> set[int]:
    """Threads named comm."""
    return _tids_where("comm", lambda text: text.strip() == comm)


def named_right(doc: Any, k: Kind, truth: set[int]) -> str | None:
    """None when the report lists every blocking task (truth) as what it is, else why not."""
    tasks = {t.get("tid"): t for t in doc.get("tasks", [])} if isinstance(doc, dict) else {}
    for tid in sorted(truth):
        t = tasks.get(tid)
        if t is None:
            return f"task {tid} not named"
        if t.get("kind") != k.kind or t.get("sleep") not in k.sleep:
            return f"task {tid} said to be {t.get('kind')}, {t.get('sleep')}"
        if t.get("function") not in (k.function, "") or (
                t.get("function") == "" and t.get("reason") != "running"):
            return f"task {tid}: {t.get('reason')} {t.get('function')!r}"
    return None if truth else "no blocking task found in /proc"


def stall_kind(modules: str, k: Kind) -> dict[str, Any]:
    """Time from the transition stalling on a task of kind k (transition reads 1) until
    `klptrace stall --format json` has named it correctly."""
    sys.path.insert(0, str(REPO))
    from klptrace import stall as st
    from klptrace.kernel import stall as live

    subprocess.run(["insmod", f"{modules}/{k.target}.ko", *k.params.split()], check=True)
    reader = None
    res: dict[str, Any] = {}
    try:
        if k.reader:
            reader = subprocess.Popen(["cat", f"/sys/kernel/debug/{STALL}/{k.reader}"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if k.release and not _wait(lambda: _param(STALL, "sleepers") == "1", 60):
            return {"error": "the task never got into its function"}
        subprocess.run(["insmod", f"{modules}/{k.patch}.ko"], check=True)
        if not _wait(lambda: _transition(k.patch) == "1", 60):
            return {"error": f"{k.patch}'s transition did not stall"}
        t0 = time.monotonic()
        proc = subprocess.run([PY, "-m", "klptrace", "stall", "--format", "json"],
                              capture_output=True, text=True, cwd=REPO)
        took = time.monotonic() - t0
        truth = (_comm_tids(k.comm) if k.comm else _blocked_tids(k.function))
        if reader is not None:
            truth = {reader.pid}
        try:
            wrong = named_right(json.loads(proc.stdout), k, truth)
        except ValueError:
            wrong = f"exit {proc.returncode}, {proc.stderr.strip()[-300:]}"
        res = {"named_s": round(took, 2), "exit": proc.returncode, "named": wrong is None}
        if wrong is not None:
            # the kernel's own signal round (after try 16) moves an interruptible user task
            round_first = st.log_facts(k.patch, live.kernel_log()).signalled_at is not None
            res["error"] = wrong + (" (the kernel's signal round came first)"
                                    if round_first else "")
    finally:
        if k.release:
            _write(f"/sys/module/{STALL}/parameters/{k.release}", "N")
        if reader is not None:
            reader.wait(60)
        if k.release:  # released, the task leaves its function and the transition ends
            _wait(lambda: _transition(k.patch) != "1", 120, 0.1)
        if os.path.isdir(f"/sys/kernel/livepatch/{k.patch}"):
            _write(f"/sys/kernel/livepatch/{k.patch}/enabled", "0")
            _wait(lambda: not os.path.isdir(f"/sys/kernel/livepatch/{k.patch}"), 120, 0.1)
        subprocess.run(["rmmod", k.patch], stderr=subprocess.DEVNULL)
        subprocess.run(["rmmod", k.target], check=True)
    return res


def stall(modules: str) -> dict[str, Any]:
    """Each kind's time from stall to a correct report, and any command's start-up."""
    t0 = time.monotonic()
    subprocess.run([PY, "-m", "klptrace", "--version"], capture_output=True, cwd=REPO)
    out: dict[str, Any] = {"startup_s": round(time.monotonic() - t0, 2)}
    kinds: dict[str, Any] = {}
    out["kinds"] = kinds
    for name, k in KINDS.items():
        print(f"bench: stall: {name}...", file=sys.stderr, flush=True)
        try:
            kinds[name] = stall_kind(modules, k)
        except (OSError, subprocess.SubprocessError) as e:
            kinds[name] = {"error": f"{type(e).__name__}: {e}"}
    return out


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


def shadow(modules: str, work: Path) -> dict[str, Any]:
    """The shadow part: bench/shadow.py, beside this file."""
    sys.path.insert(0, str(REPO / "bench"))
    from shadow import measure

    return measure(modules, work)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--modules", required=True, help="the test modules built for this kernel")
    ap.add_argument("--out", required=True, help="where to write the JSON figures")
    ap.add_argument("--threads", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3, help="pairs of a and b")
    ap.add_argument("--only", choices=["stall", "shadow"], help="measure only this part")
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

    if args.only == "stall":
        doc["only"] = "stall"
        step("stall", stall, args.modules)
        return 0
    if args.only == "shadow":
        doc["only"] = "shadow"
        step("shadow", shadow, args.modules, work)
        return 0
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
    step("shadow", shadow, args.modules, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
