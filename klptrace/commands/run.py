"""`klptrace run`: the scenarios on this kernel, or in the lab VM on one or several kernels.

On this kernel (run_local): BPF records while the runner drives each scenario;
the kernel log is watched for an oops. In the lab VM (--vm): the same run in a
guest, which streams each result as it finishes (guest/boot.py boots a fresh one
for the rest when a kernel oopses, panics or dies). With several --kernel, one
guest per kernel, up to --jobs at a time, one matrix (commands/matrix.py).
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from klptrace import checker, scenario
from klptrace.commands import (
    RUN_TIMEOUT_S,
    Output,
    emit,
    guest_size,
    line,
    matrix,
    say,
    scenarios_for,
    signals_unwind,
)
from klptrace.errors import (
    KlptraceError,
    NotSupported,
    UsageError,
    check_interrupted,
    signals_checked,
)
from klptrace.guest import stream
from klptrace.kernel import kmod, kmsg, sysinfo
from klptrace.lab import defaults
from klptrace.oops import Oops
from klptrace.results import RunDocument, ScenarioResult, Status, Verdict


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
    cpus: int | None = None  # None: not given (guest_size then applies the default)
    memory: str | None = None
    jobs: int | None = None

    @property
    def guest_size(self) -> tuple[int, str]:
        """The guests' vCPUs and memory."""
        return guest_size(self.cpus, self.memory)

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
    scenarios_for(opts.ids, opts.scenarios)  # a usage error before any download or boot
    with signals_unwind():  # during a fetch or build too (vm.run stops its own guest)
        if len(opts.kernel) > 1:
            return matrix.run_matrix(opts)
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
    out = stream.Writer(opts.stream)
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
        out.put(stream.Start(os.uname().release, timing, info,
                             [dataclasses.replace(x) for x in p.status]))
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
                    out.put(stream.Wedged(run.wedged))
                if opts.stream:
                    break  # `run --vm` boots a fresh guest for the rest
                done.append(skipped(s, f"not run: {run.wedged} in {wedged_by}; reboot, "
                                       "then run it"))
                continue
            if s.id in not_run:
                done.append(skipped(s, not_run[s.id]))
                out.put(stream.Result(done[-1]))
                line(f"  {s.id}: SKIP ({not_run[s.id]})")
                continue
            out.put(stream.Begin(s.id))
            done.append(run.run(s))
            r = done[-1]
            out.put(stream.Result(r))
            line(f"  {s.id}: {r.status.upper()} ({r.duration_s:.1f} s)")
            if r.oops:
                line("\n".join(f"    {x}" for x in Oops(r.oops, True).summary))
        lost = rec.lost()  # and raises a signal that a callback swallowed
        probe_status = [dataclasses.replace(x) for x in p.status]
        detach = time.monotonic()
    timing["detach_s"] = round(time.monotonic() - detach, 3)  # and the settings put back
    leftovers = rec.leftovers
    out.put(stream.End(lost, probe_status, leftovers, timing))
    out.close()
    doc = checker.account_lost(RunDocument(os.uname().release, done, lost, probe_status, timing,
                                           leftovers, info))
    code = doc.exit_status() if opts.stream else emit(doc, opts)
    if leftovers:
        say("could not remove: " + "; ".join(leftovers))
        return 1
    return code


# --- in the lab VM -----------------------------------------------------------------------


def run_vm(opts: RunOptions, spec: str | None) -> RunDocument:
    """The run inside the lab VM on one kernel (guest/boot.py), boot after boot until every
    scenario ran; the scenarios are loaded first, before any fetch or boot."""
    from klptrace.guest import boot

    scs = scenarios_for(opts.ids, opts.scenarios)

    def argv(g: boot.GuestRun) -> list[str]:
        """This run's guest options, for one boot's share of the scenarios."""
        return dataclasses.replace(
            opts, ids=g.ids, repeat=1, stream=str(g.stream), modules=str(g.modules),
            scenarios=str(g.scenarios) if g.scenarios else None).to_argv()

    cpus, memory = opts.guest_size
    return boot.run(boot.Request(spec, [s for _ in range(opts.repeat) for s in scs],
                                 opts.modules, opts.scenarios, cpus, memory, argv), say, line)
