"""What the list, run and check subcommands do; cli.py only parses and dispatches."""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from klptrace import checker, kmod, kmsg, report, results, scenario
from klptrace.errors import KlptraceError, NotSupported, UsageError, interrupt
from klptrace.recorder import Recording, RecordingError


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def scenarios_for(ids: list[str], directory: str | None) -> list[scenario.Scenario]:
    """The selected scenarios from klptrace's own set or a user's directory."""
    return scenario.select(scenario.load_dir(directory or scenario.BUILTIN_DIR), ids)


def list_text(scs: list[scenario.Scenario]) -> str:
    width = max(len(s.id) for s in scs)
    return "".join(f"{s.id:<{width}}  {s.title}\n" for s in scs)


def module_dir(explicit: str | None, needed: list[str]) -> Path:
    """Where the test modules for the running kernel are, building them if headers exist."""
    from klptrace import build, kernels

    if explicit:
        d = Path(explicit)
    else:
        rel = os.uname().release
        kdir = Path(f"/lib/modules/{rel}/build")
        d = kernels.cache_dir() / "modules" / rel
        if not all((d / f"{m}.ko").is_file() for m in needed) and (kdir / "Makefile").is_file():
            d = build.build(kdir=kdir).dir
    missing = [m for m in needed if not (d / f"{m}.ko").is_file()]
    if missing:
        raise NotSupported(
            f"no built test modules for this kernel in {d} (missing {', '.join(missing)})",
            "install this kernel's headers and run `klptrace build`, or pass --modules DIR")
    return d


def _refuse_foreign(scs: list[scenario.Scenario]) -> list[str]:
    """Reasons not to run on this machine: a module of ours already loaded, a foreign transition."""
    ours = {m for s in scs for m in s.modules}
    problems = [f"module {m} is already loaded and klptrace did not load it: "
                f"unload it first (rmmod {m})" for m in sorted(ours) if kmod.is_loaded(m)]
    foreign = [p for p in kmod.patches() if p not in ours]
    for p in foreign:
        if kmod.patch_attr(p, "transition") == "1":
            problems.append(f"livepatch {p} is in transition: wait until "
                            f"/sys/kernel/livepatch/{p}/transition reads 0")
    return problems


def run_local(args: Any) -> int:
    """`klptrace run` on the running kernel, cleaning up after SIGINT and SIGTERM too."""
    old = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _run_local(args)
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _run_local(args: Any) -> int:
    from klptrace import probes, runner
    from klptrace.recorder import Recorder

    scs = scenarios_for(args.ids, args.scenarios)
    try:
        probes.check_kernel()
    except NotSupported as e:
        _say(f"klptrace: skip: {e}")
        return 4
    _say("Compiling klptrace's BPF probes...")
    build = probes.Build()  # compiles while the checks below run
    problems = _refuse_foreign(scs)
    if problems:
        raise KlptraceError("refusing to run: " + "; ".join(problems))
    foreign = [p for p in kmod.patches() if p not in {m for s in scs for m in s.modules}]
    skipped: dict[str, str] = {}
    if foreign and args.allow_replace and any(s.replaces_all for s in scs):
        _say(f"klptrace: warning: atomic-replace will replace {', '.join(foreign)}, "
             "which klptrace did not load (--allow-replace)")
    if foreign and not args.allow_replace:
        for s in scs:
            if s.replaces_all:
                skipped[s.id] = (f"would replace the livepatches already on this machine "
                                 f"({', '.join(foreign)}); pass --allow-replace to run it anyway")
    needed = sorted({m for s in scs for m in s.modules})
    mods = module_dir(args.modules, needed)
    kos = sorted({str(mods / f"{lp}.ko") for s in scs for lp in s.livepatches})
    docs: list[dict[str, Any]] = []
    with kmsg.devkmsg_unlimited(), kmsg.livepatch_debug() as debug, \
            Recorder(kos, build) as rec:
        klog = kmsg.KernelLog() if debug else None
        if not debug:
            _say("klptrace: dynamic debug is not available: dmesg is not compared")
        p = rec.probes
        _say(f"Tracing livepatch events (bcc import {p.import_s:.1f} s, layout {p.layout_s:.1f} s, "
             f"compile {p.compile_s:.1f} s, attach {p.attach_s:.1f} s).")
        run = runner.Runner(rec, str(mods), timeout_s=args.timeout, log=_say, klog=klog)
        for s in [s for _ in range(args.repeat) for s in scs]:
            if s.id in skipped:
                docs.append(_skipped(s, skipped[s.id]))
                _say(f"  {s.id}: SKIP ({skipped[s.id]})")
                continue
            r = run.run(s)
            docs.append(r.to_json())
            _say(f"  {s.id}: {r.status.upper()} ({r.duration_s:.1f} s)")
        lost = rec.lost()  # and raises a signal that a callback swallowed
        status = [x.to_json() for x in p.status]
        timing = {k: round(getattr(p, k), 3)
                  for k in ("import_s", "layout_s", "compile_s", "attach_s")}
    leftovers = getattr(rec, "leftovers", [])
    doc = results.run_document(os.uname().release, docs, lost, status, timing=timing,
                               leftovers=leftovers)
    code = _emit(doc, args)
    if leftovers:
        _say("klptrace: could not remove: " + "; ".join(leftovers))
        return 1
    return code


def _skipped(s: scenario.Scenario, why: str) -> dict[str, Any]:
    return {"id": s.id, "status": checker.SKIP, "duration_s": 0.0, "lost_events": 0,
            "events": [], "expected": list(s.expect), "recorded": [], "explanation": why,
            "diff": [], "problems": [], "notes": []}


def _emit(doc: dict[str, Any], args: Any) -> int:
    if getattr(args, "record", None):
        results_path = Path(args.record)
        results_path.write_text(json.dumps(doc, indent=1) + "\n")
    text = report.render(args.format, doc,
                         kcidb_origin=getattr(args, "kcidb_origin", "klptrace"))
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return results.exit_status(doc)


def run_vm(args: Any) -> int:
    """`klptrace run --vm`: the same run inside the lab VM, results rendered here."""
    from klptrace import build, kernels, vm

    kernel = kernels.ensure(args.kernel, progress=_say)
    built = build.build(kernel)
    with tempfile.TemporaryDirectory(prefix="klptrace-results-", dir="/tmp") as rw:
        out = Path(rw) / "run.json"
        argv = [sys.executable, "-m", "klptrace", "run", *args.ids, "--format", "json",
                "-o", str(out), "--modules", str(built.dir), "--timeout", str(args.timeout)]
        if args.scenarios:
            argv += ["--scenarios", str(Path(args.scenarios).resolve())]
        if args.allow_replace:
            argv.append("--allow-replace")
        if args.repeat != 1:
            argv += ["--repeat", str(args.repeat)]
        guest_status = vm.run(kernel, argv, cpus=args.cpus, memory=args.memory,
                              rwdirs=[Path(rw)], say=_say)
        if not out.is_file():
            raise KlptraceError(
                f"the run in the guest wrote no results (exit status {guest_status})",
                                "see the guest's output above")
        doc = json.loads(out.read_text())
    return _emit(doc, args)


def check(args: Any) -> int:
    """`klptrace check RECORDING`: re-check a saved run offline."""
    try:
        raw = Path(args.recording).read_text()
    except OSError as e:
        raise UsageError(f"cannot read {args.recording}: {e.strerror}") from None
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as e:
        raise RecordingError(f"{args.recording}: not JSON (line {e.lineno}, column {e.colno}): "
                             f"{e.msg}", "was the file truncated?") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("scenarios"), list):
        raise RecordingError(f"{args.recording}: not a klptrace recording (no 'scenarios' list)",
                             "write one with `klptrace run --record FILE`")
    known = {s.id: s for s in scenario.load_dir(args.scenarios or scenario.BUILTIN_DIR)}
    probes = doc.get("probes", [])
    out = []
    for i, sd in enumerate(doc["scenarios"]):
        where = f"{args.recording}: scenarios[{i}]"
        if not isinstance(sd, dict) or not isinstance(sd.get("id"), str):
            raise RecordingError(f"{where}: needs an 'id'")
        if sd["id"] not in known:
            raise RecordingError(f"{where}: unknown scenario id {sd['id']!r}",
                                 "pass --scenarios DIR for a user's scenarios")
        if sd.get("status") == checker.SKIP:
            s = known[sd["id"]]
            out.append(_skipped(s, str(sd.get("explanation", ""))))
            continue
        rec = Recording.from_json({"events": sd.get("events"), "lost_events":
                                   sd.get("lost_events", 0), "probes": probes}, where)
        v = checker.check(known[sd["id"]].expect, rec)
        dur = sd.get("duration_s", 0.0)
        if isinstance(dur, bool) or not isinstance(dur, (int, float)):
            raise RecordingError(f"{where}: 'duration_s' must be a number")
        out.append({"id": sd["id"], "status": v.status, "duration_s": float(dur),
                    "lost_events": rec.lost, "events": [e.to_json() for e in rec.events],
                    "expected": v.expected, "recorded": v.recorded,
                    "explanation": v.explanation, "diff": v.diff, "problems": v.problems,
                    "notes": []})
    kernel = doc.get("kernel", "?")
    lost = doc.get("lost_events", 0)
    if not isinstance(kernel, str) or isinstance(lost, bool) or not isinstance(lost, int):
        raise RecordingError(
            f"{args.recording}: 'kernel' must be a string, 'lost_events' an integer")
    new = results.run_document(kernel, out, lost, probes)
    return _emit(new, args)




def trace(args: Any) -> int:
    """`klptrace trace`: probes on, COMMAND (or until Ctrl-C), the livepatch story out."""
    import subprocess
    import time

    from klptrace import probes
    from klptrace import trace as tr
    from klptrace.recorder import Recorder
    from klptrace.transcript import parse_expectation, render

    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    expected = None
    if args.expect:
        try:
            expected = parse_expectation(Path(args.expect).read_text())
        except OSError as e:
            raise UsageError(f"cannot read {args.expect}: {e.strerror}") from None
    kos = [tr.resolve_module(m) for m in args.module]
    probes.check_kernel()
    old = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)} \
        if command else {}
    status = 0
    try:
        with kmsg.devkmsg_unlimited(), Recorder(kos) as rec:
            klog = kmsg.KernelLog()
            _say(f"Tracing livepatch events{' of ' + ', '.join(args.module) if kos else ''}"
                 + ("... Ctrl-C to end." if not command else f"; running {' '.join(command)}"))
            start = rec.now()
            if command:
                try:
                    proc = subprocess.Popen(command)
                except OSError as e:
                    raise UsageError(f"cannot run {command[0]}: {e.strerror}") from None
                while proc.poll() is None:
                    rec.poll(100)
                status = proc.returncode
            else:
                try:
                    while True:
                        rec.poll(200)
                except KeyboardInterrupt:
                    pass
            time.sleep(0.05)
            recording = rec.recording(start)
            user = [msg for fac, msg in klog.records() if fac != 0]
            klog.close()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    merged = tr.merge_log(recording.events, user)
    recording.events = merged.events
    lines = render(recording.events)
    problems = checker.integrity(recording)
    for p in problems + merged.notes:
        _say(f"klptrace: {p}")
    if expected is not None:
        v = checker.check(expected, recording)
        doc = results.run_document(os.uname().release, [{
            "id": "trace", "status": v.status, "duration_s": 0.0, "lost_events": recording.lost,
            "events": [e.to_json() for e in recording.events], "expected": v.expected,
            "recorded": v.recorded, "explanation": v.explanation, "diff": v.diff,
            "problems": v.problems, "notes": merged.notes}], recording.lost, recording.probes)
        fmt = args.format if args.format in ("json", "ktap", "junit") else "text"
        code = _emit(doc, argparse_ns(format=fmt, output=args.output, record=None))
        return code or (1 if status else 0)
    if args.format == "json":
        text = json.dumps({
            "kernel": os.uname().release, "command": command, "status": status,
            "lost_events": recording.lost, "probes": recording.probes,
            "events": [e.to_json() for e in recording.events],
            "callbacks": tr.callbacks_json(recording.events), "transcript": lines,
            "notes": merged.notes}, indent=1) + "\n"
    else:
        text = "".join(f"{line}\n" for line in lines)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    if problems:
        return status or 1
    return status


def argparse_ns(**kw: Any) -> Any:
    import argparse

    return argparse.Namespace(**kw)
