"""`klptrace run`: the scenarios on this kernel, or in the lab VM on one or several kernels.

On this kernel (run_local): BPF records while the runner drives each scenario;
the kernel log is watched for an oops. In the lab VM (--vm): the same run in a
guest, which streams each result as it finishes; a guest whose kernel oopses,
panics or dies is replaced by a fresh one for the remaining scenarios. With
several --kernel, one guest per kernel, up to --jobs at a time, one matrix.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from klptrace import checker, jsontext, scenario
from klptrace.commands import RUN_TIMEOUT_S, Output, emit, line, say, scenarios_for, signals_unwind
from klptrace.errors import (
    KlptraceError,
    NotSupported,
    UsageError,
    check_interrupted,
    interrupt,
    signals_checked,
)
from klptrace.kernel import kmod, kmsg, sysinfo
from klptrace.lab import defaults
from klptrace.oops import Oops
from klptrace.record import btf
from klptrace.results import Matrix, RecordingError, RunDocument, ScenarioResult, Status, Verdict

VM_CPUS, VM_MEMORY = defaults.CPUS, defaults.MEMORY


def _flag(name: str, guest: bool = False) -> Any:
    """Field metadata: the option's flag, and whether the run in a guest needs it too."""
    return {"flag": name, "guest": guest}


@dataclasses.dataclass
class RunOptions(Output):
    """`klptrace run`'s options. Those marked guest=True are passed on to the run in a
    guest (to_argv()), so an option the guest needs is declared once, here."""

    ids: list[str] = dataclasses.field(default_factory=list)
    scenarios: str | None = dataclasses.field(default=None, metadata=_flag("--scenarios", True))
    modules: str | None = dataclasses.field(default=None, metadata=_flag("--modules", True))
    timeout: float = dataclasses.field(default=RUN_TIMEOUT_S,
                                       metadata=_flag("--timeout", True))
    repeat: int = dataclasses.field(default=1, metadata=_flag("--repeat", True))
    allow_replace: bool = dataclasses.field(default=False,
                                            metadata=_flag("--allow-replace", True))
    stream: str | None = dataclasses.field(default=None, metadata=_flag("--stream", True))
    vm: bool = False
    kernel: list[str] = dataclasses.field(default_factory=list)  # --kernel, repeatable
    cpus: int | None = None
    memory: str | None = None
    jobs: int | None = None

    def __post_init__(self) -> None:
        # before anything looks at this machine's kernel, or fetches or boots one
        if self.vm:
            from klptrace.lab import kernels

            for spec in self.kernel:  # each: a matrix fetches one kernel after another
                kernels.parse_spec(spec)
            return
        given = [(o, v) for o, v in (
            ("--kernel", " --kernel ".join(shlex.quote(k) for k in self.kernel)
             if self.kernel else None),
            ("--cpus", self.cpus), ("--memory", self.memory), ("--jobs", self.jobs))
            if v is not None]
        if given:
            names = " and ".join(o for o, _ in given)
            one = len(given) == 1
            raise UsageError(
                f"{names} {'is an option' if one else 'are options'} of the lab VM: add --vm, "
                f"or leave {'it' if one else 'them'} out to run on this machine's kernel",
                "klptrace run --vm " + " ".join(f"{o} {v}" for o, v in given))

    def to_argv(self, extra: Sequence[str] = ()) -> list[str]:
        """`klptrace run` arguments for the run in a guest: every guest option that differs
        from its default, then extra options, then `--` and the ids (so an id is never
        taken for an option, whatever it looks like)."""
        argv = ["run"]
        for f in dataclasses.fields(self):
            if not f.metadata.get("guest"):
                continue
            value = getattr(self, f.name)
            if value == f.default:
                continue
            flag = f.metadata["flag"]
            argv += [flag] if isinstance(value, bool) else [flag, str(value)]
        return [*argv, *extra, "--", *self.ids]


def run(opts: RunOptions) -> int:
    """`klptrace run`: on this kernel, or with --vm in the lab on each --kernel."""
    if not opts.vm:
        return run_local(opts)
    opts = dataclasses.replace(opts, cpus=VM_CPUS if opts.cpus is None else opts.cpus,
                               memory=VM_MEMORY if opts.memory is None else opts.memory)
    scenarios_for(opts.ids, opts.scenarios)  # a usage error before any download or boot
    with signals_unwind():  # during a fetch or build too (vm.run stops its own guest)
        if len(opts.kernel) > 1:
            return run_matrix(opts)
        return emit(run_vm(opts, opts.kernel[0] if opts.kernel else None), opts)


# --- on this kernel ------------------------------------------------------------------


def module_dir(explicit: str | None, needed: list[str]) -> Path:
    """Where the test modules for the running kernel are, building them if headers exist."""
    from klptrace import assets

    if explicit:
        d = Path(explicit)
    else:
        rel = os.uname().release
        kdir = Path(f"/lib/modules/{rel}/build")
        d = defaults.cache_dir() / "modules" / rel
        if not all((d / f"{m}.ko").is_file() for m in needed) and (kdir / "Makefile").is_file():
            d = assets.build_modules(kdir=kdir).dir
    missing = [m for m in needed if not (d / f"{m}.ko").is_file()]
    if missing:
        raise NotSupported(
            f"no built test modules for this kernel in {d} (missing {', '.join(missing)})",
            "install this kernel's headers and run `klptrace build`, or pass --modules DIR")
    return d


def _foreign(scs: Sequence[scenario.Scenario]) -> tuple[list[str], list[str]]:
    """Livepatches klptrace did not load, and reasons not to run beside them at all: a
    module of ours already loaded, a transition that is not ours."""
    ours = {m for s in scs for m in s.modules}
    refuse = [f"module {m} is already loaded and klptrace did not load it: "
              f"unload it first (rmmod {m})" for m in sorted(ours) if kmod.is_loaded(m)]
    foreign = [p for p in kmod.patches() if p not in ours]
    refuse += [f"livepatch {p} is in transition: wait until "
               f"/sys/kernel/livepatch/{p}/transition reads 0"
               for p in foreign if kmod.patch_attr(p, "transition") == "1"]
    return foreign, refuse


def skipped(s: scenario.Scenario, why: str) -> ScenarioResult:
    """A scenario that was not run, and why."""
    return ScenarioResult(s.id, Verdict(Status.SKIP, list(s.expect), [], why))


def errored(s: scenario.Scenario, why: str) -> ScenarioResult:
    """A scenario that could not be judged: what stopped it is its problem."""
    return ScenarioResult(s.id, Verdict(Status.ERROR, list(s.expect), [], why, [], [why]),
                          step_error=why)


def run_local(opts: RunOptions) -> int:
    """`klptrace run` on the running kernel, cleaning up after SIGINT and SIGTERM too."""
    from klptrace.record import probes

    with signals_unwind():
        scs = scenarios_for(opts.ids, opts.scenarios)
        try:
            probes.check_kernel()
        except NotSupported as e:
            say(f"skip: {e}")
            return 4
        watch = kmsg.OopsWatch()  # from the start: an oops during setup counts too
        actor = kmod.Actor()  # forked before bcc is loaded: the child holds no BPF program
        try:
            # from here a signal unwinds only at safe points: never between a change to
            # the kernel (a module loaded, a probe written) and klptrace's record of it
            with signals_checked():
                return _run_with(opts, scs, actor, watch)
        finally:
            actor.close()
            watch.close()


class _Stream:
    """The results of a run as they come, one JSON object a line (for `run --vm`):
    a panic or a wedged kernel loses nothing already recorded."""

    def __init__(self, path: str | None) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) if path else None

    def put(self, record: dict[str, Any]) -> None:
        if self._fd is not None:
            os.write(self._fd, (json.dumps(record, allow_nan=False) + "\n").encode())
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)


def _run_with(opts: RunOptions, scs: list[scenario.Scenario], actor: kmod.Actor,
              watch: kmsg.OopsWatch) -> int:
    from klptrace import runner
    from klptrace.record import probes
    from klptrace.record.recorder import Recorder

    line("Compiling klptrace's BPF probes...")
    before_build = sysinfo.process_age_s()  # Python and klptrace's imports, the checks
    build = probes.Build()  # compiles while the checks below run
    foreign, refuse = _foreign(scs)
    if refuse:
        raise KlptraceError("refusing to run: " + "; ".join(refuse))
    not_run: dict[str, str] = {}
    if foreign and any(s.replaces_all for s in scs):
        if opts.allow_replace:
            say(f"warning: atomic-replace will replace {', '.join(foreign)}, which klptrace "
                "did not load (--allow-replace)")
        else:
            not_run = {s.id: f"would replace the livepatches already on this machine "
                             f"({', '.join(foreign)}); pass --allow-replace to run it anyway"
                       for s in scs if s.replaces_all}
    needed = sorted({m for s in scs for m in s.modules})
    mods = module_dir(opts.modules, needed)
    check_interrupted()  # a safe point: nothing of ours is in the kernel yet
    kos = sorted({str(mods / f"{lp}.ko") for s in scs for lp in s.livepatches})
    done: list[ScenarioResult] = []
    stream = _Stream(opts.stream)
    with kmsg.devkmsg_unlimited(), kmsg.livepatch_debug() as debug, \
            Recorder(kos, build, actor.wedge) as rec:
        klog = kmsg.KernelLog() if debug else None
        if not debug:
            say("dynamic debug is not available: dmesg is not compared")
        p = rec.probes
        line(f"Tracing livepatch events (bcc import {p.import_s:.1f} s, layout "
             f"{p.layout_s:.1f} s, compile {p.compile_s:.1f} s, attach {p.attach_s:.1f} s).")
        timing = {k: round(getattr(p, k), 3)
                  for k in ("import_s", "layout_s", "compile_s", "attach_s")}
        timing["before_build_s"] = round(before_build, 3)
        info = sysinfo.running_kernel()
        stream.put({"start": {"kernel": os.uname().release, "timing": timing,
                              "kernel_info": info, "probes": [x.to_json() for x in p.status]}})
        run = runner.Runner(rec, str(mods), actor, watch, timeout_s=opts.timeout, log=say,
                            klog=klog)
        # start-up as a user waits for it: from the process's start to the first scenario
        timing["start_s"] = round(sysinfo.process_age_s(), 3)
        wedged_by = ""
        for s in [s for _ in range(opts.repeat) for s in scs]:
            if run.wedged:
                if not wedged_by:
                    wedged_by = done[-1].id
                    say(f"{run.wedged} in {wedged_by}: the remaining scenarios are not run "
                        "(reboot first)")
                    stream.put({"wedged": run.wedged})
                if opts.stream:
                    break  # `run --vm` boots a fresh guest for the rest
                done.append(skipped(s, f"not run: {run.wedged} in {wedged_by}; reboot, "
                                       "then run it"))
                continue
            if s.id in not_run:
                done.append(skipped(s, not_run[s.id]))
                stream.put({"scenario": done[-1].to_json()})
                line(f"  {s.id}: SKIP ({not_run[s.id]})")
                continue
            stream.put({"begin": s.id})
            done.append(run.run(s))
            r = done[-1]
            stream.put({"scenario": r.to_json()})
            line(f"  {s.id}: {r.status.upper()} ({r.duration_s:.1f} s)")
            if r.oops:
                line("\n".join(f"    {x}" for x in Oops(r.oops, True).summary))
        lost = rec.lost()  # and raises a signal that a callback swallowed
        probe_status = [x.to_json() for x in p.status]
        detach = time.monotonic()
    timing["detach_s"] = round(time.monotonic() - detach, 3)  # and the settings put back
    leftovers = getattr(rec, "leftovers", [])
    stream.put({"end": {"lost_events": lost, "probes": probe_status, "leftovers": leftovers,
                        "timing": timing}})
    stream.close()
    doc = checker.account_lost(RunDocument(os.uname().release, done, lost, probe_status, timing,
                                           leftovers, info))
    code = doc.exit_status() if opts.stream else emit(doc, opts)
    if leftovers:
        say("could not remove: " + "; ".join(leftovers))
        return 1
    return code


# --- in the lab VM -----------------------------------------------------------------------


def run_vm(opts: RunOptions, spec: str | None) -> RunDocument:
    """The run inside the lab VM on one kernel, boot after boot until every scenario ran.

    The guest streams each scenario's result as it finishes. When its kernel
    oopses (the livepatch core is then wedged), panics or the guest dies, what
    finished is kept, the scenario in progress is an error, and a fresh guest
    runs the remaining scenarios.
    """
    from klptrace import assets
    from klptrace.lab import kernels, vm

    scs = scenarios_for(opts.ids, opts.scenarios)
    kernel = kernels.ensure(spec, progress=say)
    vm.guest_root(kernel)  # a guest that could mount no root: exit 4 before the build
    built = assets.build_modules(kernel, say=say)
    sequence = [s for _ in range(opts.repeat) for s in scs]
    with tempfile.TemporaryDirectory(prefix="klptrace-results-", dir="/tmp") as rw:
        mods = _stage_modules(Path(rw) / "modules", built.dir, opts.modules, scs)
        scen = _stage_scenarios(Path(rw) / "scenarios", opts.scenarios)
        done: list[ScenarioResult] = []
        top: dict[str, Any] = {"lost": 0, "probes": None, "timing": None, "leftovers": [],
                               "kernel_info": None}
        boots = 0
        while len(done) < len(sequence):
            boots += 1
            if boots > 1:
                say(f"booting a fresh guest for the {len(sequence) - len(done)} remaining "
                    "scenario(s)")
            stream = Path(rw) / f"stream-{boots}.jsonl"
            guest = dataclasses.replace(
                opts, ids=[s.id for s in sequence[len(done):]], repeat=1, stream=str(stream),
                modules=str(mods), scenarios=str(scen) if scen else None)
            died = ""
            # the BTF layouts, kept across boots (btf.cached_layout)
            share, layouts = btf.guest_layout_share(defaults.cache_dir())
            try:
                status = vm.run(kernel, [*share, sys.executable, "-m", "klptrace",
                                         *guest.to_argv()],
                                cpus=opts.cpus or VM_CPUS, memory=opts.memory or VM_MEMORY,
                                rwdirs=[Path(rw), layouts], say=say,
                                done=lambda f=stream: _stream_ended(f))  # type: ignore[misc]
            except KlptraceError as e:  # a panic, a guest that stopped: not a signal
                died, status = e.message, None
            got = _read_stream(stream)
            if got["start"] is None and not got["docs"]:
                raise KlptraceError(
                    f"the run in the guest wrote no results (exit status {status})"
                    + (f": {died}" if died else ""), "see the guest's output above")
            _merge_boot(top, got)
            probes = (got["end"] or got["start"] or {}).get("probes", [])
            done += [ScenarioResult.from_json(d, f"{stream}: a scenario", probes)
                     for d in got["docs"]]
            if got["begun"] is not None and len(done) < len(sequence):
                # the guest died in the middle of this scenario
                why = died or f"the guest stopped during it (exit status {status})"
                done.append(errored(sequence[len(done)], why))
                line(f"  {done[-1].id}: ERROR ({why})")
            elif not got["wedged"] and len(done) < len(sequence):
                raise KlptraceError(
                    f"the guest stopped after {len(done)} of {len(sequence)} scenarios "
                    f"(exit status {status})" + (f": {died}" if died else ""),
                    "see the guest's output above")
    info = {**(top["kernel_info"] or {}), **({"suite": kernel.suite} if kernel.suite else {})}
    return checker.account_lost(RunDocument(
        kernel.release, done, top["lost"], top["probes"] or [], top["timing"] or {},
        top["leftovers"], info, boots))


def _stage_modules(dest: Path, built: Path, user: str | None,
                   scs: list[scenario.Scenario]) -> Path:
    """One directory the guest reads the modules from: klptrace's, then the user's over them."""
    dest.mkdir()
    sources = [built] + ([Path(user)] if user else [])
    for d in sources:
        if not d.is_dir():
            raise UsageError(f"--modules {d}: not a directory")
        for ko in d.glob("*.ko"):
            shutil.copy2(ko, dest / ko.name)
    missing = sorted({m for s in scs for m in s.modules if not (dest / f"{m}.ko").is_file()})
    if missing:
        raise UsageError(f"no module file for {', '.join(missing)} in "
                         + " or ".join(str(d) for d in sources),
                         "build your modules for this kernel and pass --modules DIR")
    return dest


def _stage_scenarios(dest: Path, user: str | None) -> Path | None:
    """A copy of the user's scenario files, which the guest may not see where they are."""
    if not user:
        return None
    dest.mkdir()
    for f in scenario.scenario_files(Path(user)):  # what the host checked, nothing else
        shutil.copy2(f, dest / f.name)
    return dest


def _read_stream(path: Path) -> dict[str, Any]:
    """What one guest boot's stream says: its start, the results, and how it ended."""
    got: dict[str, Any] = {"start": None, "docs": [], "begun": None, "wedged": "", "end": None}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        lines = []
    for text in lines:
        try:
            rec = json.loads(text)
        except json.JSONDecodeError:
            break  # the line being written when the guest died
        if "start" in rec:
            got["start"] = rec["start"]
        elif "begin" in rec:
            got["begun"] = rec["begin"]
        elif "scenario" in rec:
            got["docs"].append(rec["scenario"])
            got["begun"] = None
        elif "wedged" in rec:
            got["wedged"] = rec["wedged"]
        elif "end" in rec:
            got["end"] = rec["end"]
    return got


def _stream_ended(path: Path) -> bool:
    """Whether the guest's run has written its last record (read from the file's tail)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 65536))
            tail = f.read()
    except OSError:
        return False
    return tail.startswith(b'{"end": ') or b'\n{"end": ' in tail


def _merge_boot(top: dict[str, Any], got: dict[str, Any]) -> None:
    """Fold one boot's totals into the run's: lost events add up, probes and timing of
    the first boot (with any probe that failed in a later one), leftovers collected."""
    start, end = got["start"] or {}, got["end"] or {}
    probes = end.get("probes", start.get("probes", []))
    if top["probes"] is None:
        top["probes"], top["timing"] = probes, end.get("timing", start.get("timing", {}))
        top["kernel_info"] = start.get("kernel_info", {})
    else:
        top["probes"] += [p for p in probes if not p.get("ok")]
    top["lost"] += int(end.get("lost_events", 0))
    top["leftovers"] += end.get("leftovers", [])


# --- a kernel matrix ---------------------------------------------------------------------


def default_jobs(kernels: int, cpus: int, memory_mib: int) -> tuple[int, str]:
    """How many guests this host can run at once, and why (said on stderr)."""
    cores = os.cpu_count() or 1
    avail = _available_mib()
    by_cores, by_memory = max(1, cores // cpus), max(1, avail // memory_mib)
    jobs = max(1, min(kernels, by_cores, by_memory))
    return jobs, (f"--jobs {jobs}: {cores} cores for guests of {cpus} vCPU(s), "
                  f"{avail // 1024} GiB available for guests of {memory_mib}M; --jobs N "
                  "overrides")


def _available_mib() -> int:
    try:
        with open("/proc/meminfo") as f:
            for text in f:
                if text.startswith("MemAvailable:"):
                    return int(text.split()[1]) // 1024
    except OSError:
        pass
    return 4096


def run_matrix(opts: RunOptions) -> int:
    """One guest per kernel, up to --jobs at a time, each a `run --vm` of its own (a guest
    that dies takes no other down); one matrix document, the worst status of all."""
    from klptrace import assets
    from klptrace.lab import kernels, vm

    specs = list(dict.fromkeys(opts.kernel))
    for spec in specs:  # fetch and build first: the guests then start at once
        assets.build_modules(kernels.ensure(spec, progress=say), say=say)
    jobs = opts.jobs
    if jobs is None:
        jobs, why = default_jobs(len(specs), opts.cpus or VM_CPUS,
                                 vm.parse_memory(opts.memory or VM_MEMORY))
        say(why)
    with tempfile.TemporaryDirectory(prefix="klptrace-matrix-") as tmp:
        children = _Children(opts, specs, Path(tmp), jobs)
        runs = children.run()
    return emit(Matrix(runs), opts)


class _Children:
    """The kernels' runs as child processes, their stderr relayed with the kernel's name."""

    def __init__(self, opts: RunOptions, specs: list[str], tmp: Path, jobs: int) -> None:
        self.opts, self.specs, self.tmp, self.jobs = opts, specs, tmp, jobs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._done = threading.Event()  # set when a child's stderr ends (it is exiting)

    def _argv(self, spec: str, out: Path) -> list[str]:
        """One kernel's `run --vm`, with this run's options."""
        return [sys.executable, "-m", "klptrace", *self.opts.to_argv([
            "--vm", "--kernel", spec, "--format", "json", "-o", str(out),
            "--cpus", str(self.opts.cpus or VM_CPUS), "--memory", self.opts.memory or VM_MEMORY])]

    def _relay(self, spec: str, pipe: Any) -> None:
        for raw in iter(pipe.readline, b""):
            text = raw.decode(errors="replace").rstrip("\n")
            with self._lock:
                print(f"[{spec}] {text}", file=sys.stderr, flush=True)
        self._done.set()

    def run(self) -> list[RunDocument]:
        """Each kernel's run document, in the order of the --kernel options."""
        old = {s: signal.signal(s, self._forward) for s in (signal.SIGINT, signal.SIGTERM)}
        relays: list[threading.Thread] = []
        pending = list(self.specs)
        try:
            while pending or self._running():
                while pending and self._running() < self.jobs:
                    spec = pending.pop(0)
                    out = self.tmp / f"{self.specs.index(spec)}.json"
                    proc = subprocess.Popen(self._argv(spec, out), stdout=subprocess.DEVNULL,
                                            stderr=subprocess.PIPE)
                    self.procs[spec] = proc
                    relays.append(threading.Thread(target=self._relay, daemon=True,
                                                   args=(spec, proc.stderr)))
                    relays[-1].start()
                self._done.wait(1.0)  # a child ended, or a second passed
                self._done.clear()
        except KeyboardInterrupt:
            for p in self.procs.values():  # they got the signal: each stops its own guest
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
            raise
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            for t in relays:
                t.join(5)
        return [self._result(i, spec) for i, spec in enumerate(self.specs)]

    def _running(self) -> int:
        return sum(p.poll() is None for p in self.procs.values())

    def _forward(self, signum: int, frame: Any) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signum)
        interrupt(signum, frame)

    def _result(self, i: int, spec: str) -> RunDocument:
        out = self.tmp / f"{i}.json"
        try:
            return RunDocument.from_json(
                jsontext.loads(out.read_text(), str(out), RecordingError), str(out))
        except (OSError, ValueError, KlptraceError):
            proc = self.procs[spec]
            why = f"klptrace run --vm --kernel {spec} ended with exit status {proc.returncode} " \
                  "and no results (see its lines above)"
            scs = scenarios_for(self.opts.ids, self.opts.scenarios)
            return RunDocument(spec, [errored(s, why) for _ in range(self.opts.repeat)
                                      for s in scs])
