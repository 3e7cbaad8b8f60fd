"""klptrace's benchmark: `klptrace run` against a selftest-style shell harness.

    .venv/bin/python bench/run.py [--kernel 6.1 --kernel latest] [-o bench/results.md]

Boots the lab VM once per kernel and runs bench/guest.py there (see its doc
for what it measures), then prints the figures and writes them, with the
kernel, the accelerator and the date, to bench/results.md. A benchmark, not a
test: it asserts nothing about time; targets missed are marked, not failed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from klptrace import assets  # noqa: E402
from klptrace.errors import KlptraceError  # noqa: E402
from klptrace.guest import vcpus  # noqa: E402
from klptrace.lab import defaults, kernels, vm  # noqa: E402
from klptrace.record import btf  # noqa: E402

# The issues' targets
TARGET_RATIO = 0.8  # a/b
TARGET_COMPILE_ATTACH_S = 10.0
TARGET_STALL_S = 2.0
TARGET_START_WARM_S = 5.0  # process start to the first scenario, warm caches
TARGET_START_COLD_S = 8.0  # the same, the first run after boot
TARGET_TEARDOWN_S = 1.0  # after the last scenario


def _say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def _qemus() -> int:
    """QEMU processes on this host."""
    n = 0
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            n += comm.read_text().startswith("qemu-system")
        except OSError:
            continue
    return n


class _Others:
    """Samples, while a guest runs, how many other QEMU guests share the host."""

    def __init__(self) -> None:
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(2.0):
            self.samples.append(max(_qemus() - 1, 0))  # minus the benchmark's own

    def __enter__(self) -> _Others:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def share(self) -> float:
        """The share of the time another guest ran."""
        return sum(1 for n in self.samples if n) / len(self.samples) if self.samples else 0.0


def measure(spec: str, threads: int, only: str | None = None) -> dict[str, Any]:
    """Boot one kernel and run the guest side; its figures plus the accelerator."""
    kernel = kernels.ensure(spec, progress=_say)
    built = assets.build_modules(kernel, say=_say)
    accel = vm.choose_accel(kernel, vm.check_host())
    with tempfile.TemporaryDirectory(prefix="klptrace-bench-", dir="/tmp") as rw:
        out = Path(rw) / "bench.json"
        # the BTF layouts kept across boots (btf.cached_layout), as run --vm does
        share, layouts = btf.guest_layout_share(defaults.cache_dir())
        argv = [*share, sys.executable,
                str(REPO / "bench" / "guest.py"), "--modules", str(built.dir),
                "--out", str(out), "--threads", str(threads),
                *(["--only", only] if only else [])]
        with _Others() as others:
            status = vm.run(kernel, argv, rwdirs=[Path(rw), layouts], cwd=REPO, accel=accel,
                            say=_say, cpus_for=vcpus.guest_cpus)
        if not out.is_file():
            raise KlptraceError(f"the benchmark in the guest wrote nothing (exit {status})")
        doc: dict[str, Any] = json.loads(out.read_text())
    doc["spec"] = spec
    doc["accel"] = "KVM" if accel.name == "kvm" else "emulation (TCG)"
    doc["accel_reason"] = accel.reason
    doc["others_share"] = round(others.share(), 2)
    return doc


def _f(x: Any, unit: str = " s") -> str:
    return f"{x:.1f}{unit}" if isinstance(x, (int, float)) else "n/a"


def _mark(ok: bool | None) -> str:
    return "" if ok is None else (" (met)" if ok else " (MISSED)")


def stall_rows(st: dict[str, Any]) -> list[tuple[str, str, str]]:
    """One row per kind of blocking task: stall to a correct `klptrace stall` report."""
    target = f"< {TARGET_STALL_S:g} s"
    if "error" in st:
        return [("stall named (`klptrace stall --format json`)", st["error"], target)]
    rows = []
    for kind, r in st.get("kinds", {}).items():
        took = r.get("named_s")
        if r.get("named"):
            value = _f(took) + _mark(isinstance(took, (int, float)) and took < TARGET_STALL_S)
        else:
            value = (f"{_f(took)} " if took is not None else "") + \
                f"(NOT named right: {r.get('error', '?')})"
        rows.append((f"stall named: {kind}", value, target))
    rows.append(("  of which any klptrace command's start (`--version`)",
                 _f(st.get("startup_s")), ""))
    return rows


# a record in the BPF ring buffer: struct klpt_event (bpf/klptrace.h, 216 bytes) and the
# ring buffer's 8-byte header (BPF_RINGBUF_HDR_SZ, kernel/bpf/ringbuf.c)
EVENT_BYTES = 224
PAGE_BYTES = 4096


def _rate(b: dict[str, Any], pages: int) -> str:
    """A burst's events per second: how fast the loop sent them when none was lost; else
    how fast the reader drained the ring buffer while the loop ran (what it kept beyond
    what the buffer holds, over the loop's time), the rate the recorder sustains."""
    if b["missing"] == 0:
        rate = b.get("events_per_s")
        return f"; sent at {rate:,} events/s" if rate else ""
    kept = b["recorded"] - pages * PAGE_BYTES // EVENT_BYTES
    if kept <= 0 or not b.get("traced_ns"):
        return "; the reader drained none while the loop ran"
    return f"; the reader drained {kept / (b['traced_ns'] / 1e9):,.0f} events/s while it ran"


def _ms(ns: Any) -> str:
    return f"{ns / 1e6:.1f}" if isinstance(ns, (int, float)) else "n/a"


def shadow_rows(sh: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Per ring buffer size, per burst of klp_shadow_get() calls: events recorded and lost,
    their rate, the loop's time traced and untraced; the highest burst with lost 0."""
    if "error" in sh:
        return [("shadow: klp_shadow_get() bursts under `klptrace trace`", sh["error"], "lost 0")]
    rows = []
    for t in sh.get("traces", []):
        ring = f"ring buffer {t.get('pages')} pages ({t.get('pages', 0) * 4:,} KiB)"
        if "error" in t:
            rows.append((f"shadow, {ring}", f"{t['error']} (exit {t.get('exit')})", "lost 0"))
            continue
        bs = t.get("bursts", [])
        for b in bs:
            rows.append((f"shadow, {ring}: {b['n']:,} gets",
                         f"{b['recorded']:,} recorded, {b['missing']:,} lost"
                         + _mark(b["missing"] == 0) + _rate(b, t.get("pages", 0)), "lost 0"))
            per = b.get("probe_ns_per_call")
            rows.append(("  the loop traced / untraced; the probes per call",
                         f"{_ms(b.get('traced_ns'))} / {_ms(b.get('untraced_ns'))} ms; "
                         + (f"{per / 1000:.1f} us" if isinstance(per, (int, float)) else "n/a"),
                         ""))
        best = t.get("highest_clean_n")
        rows.append((f"shadow, {ring}: highest N with lost 0",
                     f"{best:,}" if best else "none of " + ", ".join(f"{b['n']:,}" for b in bs),
                     ""))
        lost, missing = t.get("lost_events"), sum(b["missing"] for b in bs)
        rows.append(("  the recorder's lost_events, all bursts / its exit / its CPU",
                     f"{lost}" + ("" if lost == missing else f" (the bursts miss {missing})")
                     + f" / {t.get('exit')} / {_f(t.get('cpu_s'))}", ""))
    return rows


def figures(d: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, value, target) rows for one kernel."""
    a, b, a2 = d.get("klptrace", {}), d.get("harness", {}), d.get("klptrace_warm", {})
    st, ld = d.get("stall", {}), d.get("load", {})
    if d.get("only") == "stall":
        return stall_rows(st)
    if d.get("only") == "shadow":
        return shadow_rows(d.get("shadow", {}))
    rows: list[tuple[str, str, str]] = []

    def run_value(r: dict[str, Any]) -> str:
        if "error" in r or r.get("exit") != 0:
            why = r.get("error") or f"exit {r.get('exit')}, {r.get('totals')}"
            return f"{_f(r.get('wall_s'))} (FAILED: {why})"
        return f"{_f(r['wall_s'])}, {r['totals'].get('pass', 0)}/{n} pass"

    n = sum(a.get("totals", {}).values()) or "?"  # every scenario has one status
    rows.append((f"a: `klptrace run`, {n} scenarios, fresh process", run_value(a), ""))
    b_ok = "error" not in b and b.get("exit") == 0
    b_failed = "" if b_ok else f" (FAILED: {b.get('error') or 'exit ' + str(b.get('exit'))})"
    rows.append(("b: bench/harness.sh, same steps, 0.1 s polling",
                 _f(b.get("wall_s")) + b_failed, ""))
    ratio = a.get("wall_s", 0) / b["wall_s"] if _ok(b) else None
    ratios = round_ratios(d)
    if len(ratios) < 2:  # one pair: the target is judged on it
        rows.append(("a/b", "n/a" if ratio is None
                     else f"{ratio:.2f}" + _mark(ratio <= TARGET_RATIO), f"<= {TARGET_RATIO}"))
    else:
        med = statistics.median(ratios)
        rows.append((f"a/b, median of {len(ratios)} rounds of a then b",
                     f"{med:.2f}" + _mark(med <= TARGET_RATIO) +
                     f", range {min(ratios):.2f}-{max(ratios):.2f}", f"<= {TARGET_RATIO}"))
        rows.append(("  a/b of round 1 (a with cold caches)",
                     "n/a" if ratio is None else f"{ratio:.2f}", ""))
        rows.append(("  a, b in each round", "; ".join(
            f"{_f(r.get('klptrace', {}).get('wall_s'))}, {_f(r.get('harness', {}).get('wall_s'))}"
            for r in d.get("rounds", [])), ""))
    t = a.get("timing", {})
    t2 = a2.get("timing", {}) if a2 else {}
    if "start_s" in t:
        rows.append(("start-up, cold: process start to the first scenario (a)",
                     _f(t["start_s"]) + _mark(t["start_s"] <= TARGET_START_COLD_S),
                     f"<= {TARGET_START_COLD_S:g} s"))
    if "start_s" in t2:
        rows.append(("start-up, warm: the same in a2",
                     _f(t2["start_s"]) + _mark(t2["start_s"] <= TARGET_START_WARM_S),
                     f"<= {TARGET_START_WARM_S:g} s"))
        rows.append(("  a2's profile: imports before the BPF work / bcc import / layout / "
                     "compile / attach",
                     f"{_f(t2.get('before_build_s'))} / {_f(t2['import_s'])} / "
                     f"{_f(t2['layout_s'])} / {_f(t2['compile_s'])} / {_f(t2['attach_s'])}", ""))
    if "detach_s" in t:
        rows.append(("tear-down after the last scenario (a)",
                     _f(t["detach_s"]) + _mark(t["detach_s"] <= TARGET_TEARDOWN_S),
                     f"<= {TARGET_TEARDOWN_S:g} s"))
    if t:
        ca = t["compile_s"] + t["attach_s"]
        rows.append(("BPF compile + attach", _f(ca) + _mark(ca < TARGET_COMPILE_ATTACH_S),
                     f"< {TARGET_COMPILE_ATTACH_S:g} s"))
        rows.append(("  of which compile / attach", f"{_f(t['compile_s'])} / {_f(t['attach_s'])}",
                     ""))
        rows.append(("  before it: bcc import (cold) / BTF+kallsyms layout",
                     f"{_f(t['import_s'])} / {_f(t['layout_s'])}", ""))
        scen = sum(s["duration_s"] for s in a.get("scenarios", {}).values())
        rows.append((f"  the {n} scenarios themselves in a", _f(scen), ""))
    if a2:
        rs = d.get("rounds", [])
        b2 = rs[1].get("harness", {}) if len(rs) > 1 else b  # a2's own round, when there is one
        r2 = a2.get("wall_s", 0) / b2["wall_s"] if _ok(b2) else None
        t2 = a2.get("timing", {})
        rows.append(("a2: `klptrace run` again, warm caches", run_value(a2), ""))
        rows.append(("a2/b", f"{r2:.2f}" if r2 else "n/a", ""))
        if t2:
            rows.append(("  a2's bcc import / compile + attach",
                         f"{_f(t2['import_s'])} / {_f(t2['compile_s'] + t2['attach_s'])}", ""))
    rows.extend(stall_rows(st))
    if "error" in ld and "wall_s" not in ld:
        rows.append(("load: lost events", f"n/a ({ld['error']})", "0"))
    else:
        lost = ld.get("lost_events")
        rows.append((f"load: lost events, {ld.get('threads')} extra sleeping threads "
                     f"({ld.get('tasks_in_guest')} tasks), `{ld.get('scenario')}`",
                     f"{lost}" + _mark(lost == 0) + ("" if ld.get("exit") == 0
                                                      else f" (run exit {ld.get('exit')})"),
                     "0"))
        base = ld.get("baseline", {})
        rows.append(("load: recorder CPU while recording, user + sys "
                     "(without the threads)", f"{_cpu(ld)} ({_cpu(base)})", ""))
        rows.append(("load: whole klptrace process CPU (without the threads)",
                     f"{_f(ld.get('cpu_s'))} ({_f(base.get('cpu_s'))})", ""))
        sc = ld.get("scenarios", {}).get(ld.get("scenario"), {})
        sc0 = base.get("scenarios", {}).get(ld.get("scenario"), {})
        rows.append(("load: the scenario's duration (without the threads)",
                     f"{_f(sc.get('duration_s'))} ({_f(sc0.get('duration_s'))})", ""))
    if a.get("cpu_recording_s") is not None:
        rows.append(("a: recorder CPU while recording, user + sys / whole process",
                     f"{_cpu(a)} / {_f(a['cpu_s'])}", ""))
    if "shadow" in d:
        rows.extend(shadow_rows(d["shadow"]))
    return rows


def _ok(r: dict[str, Any]) -> bool:
    return "error" not in r and r.get("exit") == 0 and bool(r.get("wall_s"))


def round_ratios(d: dict[str, Any]) -> list[float]:
    """a/b of each round where both runs succeeded (a failed a counts as no figure)."""
    return [r["klptrace"]["wall_s"] / r["harness"]["wall_s"] for r in d.get("rounds", [])
            if _ok(r.get("klptrace", {})) and _ok(r.get("harness", {}))
            and r["klptrace"].get("totals", {}).get("pass")
            == sum(r["klptrace"].get("totals", {}).values())]


def _cpu(r: dict[str, Any]) -> str:
    """"U + S s" of a run's CPU time while recording."""
    if r.get("cpu_recording_user_s") is None:
        return "n/a"
    return f"{r['cpu_recording_user_s']:.1f} + {r['cpu_recording_sys_s']:.1f} s"


def markdown(docs: list[dict[str, Any]], when: str) -> str:
    """bench/results.md: the figures of each kernel."""
    only = docs[0].get("only") if docs else None
    out = ["# klptrace benchmark results" + (f": {only} only" if only else ""), "",
           (f"Written by `bench/run.py --only {only}`" if only
            else "Written by `make bench` (bench/run.py)")
           + f" on {when}; host: {os.cpu_count()} CPUs, "
           f"Linux {os.uname().release}. One VM boot per kernel. See docs/benchmark.md "
           "for what each figure is.", ""]
    for d in docs:
        share = d.get("others_share", 0.0)
        quiet = ("no other guest ran meanwhile" if not share else
                 f"ANOTHER GUEST SHARED THE HOST {share:.0%} of the time: slower than alone")
        out += [f"## {d.get('kernel', d['spec'])} (`--kernel {d['spec']}`)", "",
                f"Accelerator: {d['accel']} ({d['accel_reason']}); the guest had "
                f"{d.get('cpus', '?')} vCPU(s); {quiet}.", "",
                "| figure | value | target |", "|---|---|---|"]
        out += [f"| {f} | {v} | {t} |" for f, v, t in figures(d)]
        out.append("")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel", action="append", metavar="NAME|PATH",
                    help="a kernel to measure, as klptrace's --kernel (repeatable; default: 6.1 "
                    "and latest, the newest kernel Debian carries)")
    ap.add_argument("-o", "--output", default=str(REPO / "bench" / "results.md"))
    ap.add_argument("--threads", type=int, default=5000, help="sleeping threads for the load")
    ap.add_argument("--from-json", metavar="FILE",
                    help="boot nothing: write the markdown of figures a run kept (its .json)")
    ap.add_argument("--only", choices=["stall", "shadow"],
                    help="measure only this part (default output: bench/results-<part>.md)")
    args = ap.parse_args()
    if args.only and args.output == str(REPO / "bench" / "results.md"):
        args.output = str(REPO / "bench" / f"results-{args.only}.md")
    specs = args.kernel or ["6.1", "latest"]
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    if args.from_json:
        kept = Path(args.from_json)
        when = datetime.datetime.fromtimestamp(kept.stat().st_mtime, datetime.UTC).strftime(
            "%Y-%m-%d %H:%M UTC")
        Path(args.output).write_text(markdown(json.loads(kept.read_text()), when))
        print(f"written to {args.output}")
        return 0
    docs = []
    for spec in specs:
        try:
            docs.append(measure(spec, args.threads, args.only))
        except KlptraceError as e:
            print(f"bench: error: {e}", file=sys.stderr)
            return 1
        d = docs[-1]
        # the guest's own figures, kept as they came (after each kernel: a later one may fail)
        Path(args.output).with_suffix(".json").write_text(json.dumps(docs, indent=1) + "\n")
        others = f", another guest ran {d['others_share']:.0%} of the time" \
            if d["others_share"] else ""
        print(f"\n{d['kernel']} ({d['accel']}, {d.get('cpus')} vCPU(s){others})")
        for f, v, t in figures(d):
            print(f"  {f:<58} {v}" + (f"   [target {t}]" if t else ""))
    Path(args.output).write_text(markdown(docs, when))
    print(f"\nwritten to {args.output} (the guest's figures: "
          f"{Path(args.output).with_suffix('.json')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
