"""The benchmark's shadow part: what the state and shadow probes cost (issue 21).

Run in the guest by bench/guest.py (`--only shadow`, or after the load part).
klptrace_shadow_bench (modules/) calls klp_shadow_get() N times when N is
written to its `run` parameter, in the writer's context, and reports the
loop's time in `last_ns`. Each call hits a kprobe and a kretprobe, and the
return sends one `shadow` event (op get) into the BPF ring buffer, or counts
one lost event when the buffer is full; klptrace's Python side reads it.

One `klptrace trace --format json` process (a fresh one: it compiles and
attaches, which is not timed) runs this file's driver, which writes each N of
BURSTS in turn, pausing after each for the reader to drain the buffer, and
notes each write's CLOCK_MONOTONIC window (the clock of the events' ts_ns)
and the module's last_ns. Each burst's events are the bench's gets inside its
window: recorded + lost = N. Untraced, the same writes, best of three, give
the loop's own time; the difference over N is the probes' cost per call.

The ring buffer's size is the macro KLPT_RINGBUF_PAGES of bpf/klptrace.bpf.c
(8192 pages unless a -D flag defines it); klptrace passes no such flag, so the
old default, 64 pages, is measured beside it through bench/bigring.py, which
adds one: it shows why the default is what it is.

    python3 bench/shadow.py --drive OUT N...    (the driver; root, module loaded)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
MODULE = "klptrace_shadow_bench"
PARAMS = Path(f"/sys/module/{MODULE}/parameters")
BENCH_ID = 0x6B6C7062  # KLPTRACE_SHADOW_BENCH_ID in modules/klptrace_shadow_bench.c
BURSTS = (1_000, 3_000, 10_000, 30_000, 100_000)
# KLPT_RINGBUF_PAGES's default in bpf/klptrace.bpf.c. A power of two
# (kernel/bpf/ringbuf.c, ringbuf_map_alloc, refuses any other size): 32 MiB
# holds about 150,000 events of 224 bytes (the 216-byte struct klpt_event and
# the ring buffer's 8-byte header), the largest burst whole.
DEFAULT_PAGES = 8192
SMALL_PAGES = 64  # the default before: about 1,170 events


def pause_s(n: int) -> float:
    """How long the driver waits after a burst of n gets: for the reader to drain them
    before the next burst (generous: a few tens of microseconds an event under TCG)."""
    return 2.0 + n * 50e-6


def burst(n: int) -> dict[str, int]:
    """Write n to the module's `run`: its CLOCK_MONOTONIC window and last_ns."""
    t0 = time.monotonic_ns()
    (PARAMS / "run").write_text(str(n))
    t1 = time.monotonic_ns()
    return {"n": n, "start_ns": t0, "end_ns": t1,
            "last_ns": int((PARAMS / "last_ns").read_text())}


def drive(out: Path, ns: Sequence[int]) -> None:
    """The workload under `klptrace trace`: each burst, then a pause; the windows to out."""
    got = []
    for n in ns:
        got.append(burst(n))
        time.sleep(pause_s(n))
    out.write_text(json.dumps(got) + "\n")


def untraced(ns: Sequence[int], tries: int = 3) -> dict[int, int]:
    """The loop's time for each n without tracing, the best of tries, in ns."""
    return {n: min(burst(n)["last_ns"] for _ in range(tries)) for n in ns}


def bench_gets(events: Iterable[Any]) -> list[int]:
    """The ts_ns of the bench module's klp_shadow_get() events, in order."""
    return sorted(e["ts_ns"] for e in events
                  if isinstance(e, dict) and e.get("kind") == "shadow" and e.get("op") == "get"
                  and e.get("shadow_id") == BENCH_ID and isinstance(e.get("ts_ns"), int))


def bursts(windows: Sequence[dict[str, int]], gets: Sequence[int],
           base: dict[int, int]) -> list[dict[str, Any]]:
    """Each burst's figures: its events recorded inside its window, those not recorded,
    their ts_ns span and rate, the loop's time traced and untraced."""
    out = []
    for w in windows:
        ts = [t for t in gets if w["start_ns"] <= t <= w["end_ns"]]
        n = w["n"]
        span = ts[-1] - ts[0] if len(ts) > 1 else 0
        b: dict[str, Any] = {"n": n, "recorded": len(ts), "missing": n - len(ts),
                             "span_ns": span, "traced_ns": w["last_ns"],
                             "untraced_ns": base.get(n)}
        # events per second while they were produced: recorded over their own span
        b["events_per_s"] = round((len(ts) - 1) / span * 1e9) if span else None
        if base.get(n):
            b["probe_ns_per_call"] = round((w["last_ns"] - base[n]) / n)
        out.append(b)
    return out


def highest_clean(bs: Sequence[dict[str, Any]]) -> int | None:
    """The largest n whose burst recorded every get (none missing), if any did."""
    clean = [b["n"] for b in bs if b.get("missing") == 0]
    return max(clean) if clean else None


def trace(pages: int, work: Path, base: dict[int, int]) -> dict[str, Any]:
    """One `klptrace trace` process with a ring buffer of pages pages, around the driver."""
    tag = f"p{pages}"
    out, windows = work / f"shadow-{tag}.json", work / f"shadow-{tag}-windows.json"
    klptrace = ([PY, "-m", "klptrace"] if pages == DEFAULT_PAGES
                else [PY, str(REPO / "bench" / "bigring.py"), str(pages)])
    cmd = [*klptrace, "trace", "--format", "json", "-o", str(out), "--",
           PY, str(Path(__file__).resolve()), "--drive", str(windows), *map(str, BURSTS)]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO)
    _pid, status, usage = os.wait4(proc.pid, 0)
    res: dict[str, Any] = {"pages": pages, "exit": os.waitstatus_to_exitcode(status),
                           "wall_s": round(time.monotonic() - t0, 2),
                           "cpu_s": round(usage.ru_utime + usage.ru_stime, 2)}
    try:
        doc = json.loads(out.read_text())
        got = json.loads(windows.read_text())
    except (OSError, ValueError) as e:
        res["error"] = f"no results: {e}"
        return res
    res["lost_events"] = doc.get("lost_events")
    res["problems"] = doc.get("problems", [])
    res["bursts"] = bursts(got, bench_gets(doc.get("events", [])), base)
    res["highest_clean_n"] = highest_clean(res["bursts"])
    return res


def measure(modules: str, work: Path) -> dict[str, Any]:
    """The untraced loop, then one trace with the default ring buffer and one small."""
    subprocess.run(["insmod", f"{modules}/{MODULE}.ko"], check=True)
    try:
        base = untraced(BURSTS)
        res: dict[str, Any] = {"bursts": list(BURSTS), "untraced_ns": base, "traces": []}
        for pages in (DEFAULT_PAGES, SMALL_PAGES):
            print(f"bench: shadow: ring buffer of {pages} pages...", file=sys.stderr, flush=True)
            res["traces"].append(trace(pages, work, base))
        return res
    finally:
        subprocess.run(["rmmod", MODULE], check=True)


def main(argv: Sequence[str]) -> int:
    if len(argv) < 3 or argv[0] != "--drive":
        print(__doc__, file=sys.stderr)
        return 2
    drive(Path(argv[1]), [int(x) for x in argv[2:]])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
