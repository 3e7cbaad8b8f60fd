"""The scenarios in lab guests on one kernel, boot after boot until every one ran.

The guest streams each scenario's result as it finishes (stream.py). When its
kernel oopses (the livepatch core is then wedged), panics or the guest dies,
what finished is kept, the scenario in progress is an error, and a fresh guest
runs the remaining scenarios. The command line of the run in the guest is the
caller's (Request.argv): this module knows the stream, not the options.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from klptrace import checker, scenario
from klptrace.errors import KlptraceError
from klptrace.guest import stage, stream
from klptrace.results import Probe, RunDocument, ScenarioResult, Status, Verdict

Say = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class GuestRun:
    """What one boot's run is given: the ids left, and where it writes and reads."""

    ids: list[str]
    stream: Path
    modules: Path
    scenarios: Path | None  # the user's, staged; None: klptrace's own


@dataclasses.dataclass(frozen=True)
class Request:
    """One kernel's run in lab guests."""

    spec: str | None  # --kernel (None: the default kernel)
    sequence: list[scenario.Scenario]  # in the order they run, repeats included
    modules: str | None  # the user's --modules, staged over klptrace's
    scenarios: str | None  # the user's --scenarios
    cpus: int
    memory: str
    argv: Callable[[GuestRun], list[str]]  # `klptrace run ...` for one boot's run


def errored(s: scenario.Scenario, why: str) -> ScenarioResult:
    """A scenario that could not be judged: what stopped it is its problem."""
    return ScenarioResult(s.id, Verdict(Status.ERROR, list(s.expect), [], why, [], [why]),
                          step_error=why)


@dataclasses.dataclass
class _Totals:
    """The run's totals over its boots (the first boot's probes and timing)."""

    lost: int = 0
    probes: list[Probe] | None = None
    timing: dict[str, Any] | None = None
    leftovers: list[str] = dataclasses.field(default_factory=list)
    kernel_info: dict[str, Any] | None = None


def _merge(top: _Totals, boot: stream.Boot) -> None:
    """Fold one boot's totals into the run's: lost events add up, probes and timing of
    the first boot (with any probe that failed in a later one), leftovers collected."""
    start, end = boot.start or stream.Start(""), boot.end or stream.End()
    probes = end.probes if end.probes is not None else start.probes
    if top.probes is None:
        top.probes = list(probes)
        top.timing = end.timing if end.timing is not None else start.timing
        top.kernel_info = start.kernel_info
    else:
        top.probes += [p for p in probes if not p.ok]
    top.lost += end.lost_events
    top.leftovers += end.leftovers


class _Ended:
    """done() for vm.run: whether the boot's run wrote its end record. The stream is read
    again only when it changed (vm.run asks often)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int] | None = None
        self._ended = False

    def __call__(self) -> bool:
        try:
            st = self.path.stat()
        except OSError:
            return False
        if (st.st_size, st.st_mtime_ns) != self._seen:
            self._seen = (st.st_size, st.st_mtime_ns)
            try:
                self._ended = stream.read(self.path).end is not None
            except KlptraceError:  # said when the guest has stopped and it is read for good
                self._ended = False
        return self._ended


def run(req: Request, say: Say, line: Say) -> RunDocument:
    """req's scenarios on its kernel, a fresh guest after each that died or wedged."""
    from klptrace import assets
    from klptrace.guest import vcpus
    from klptrace.lab import kernels, vm

    kernel = kernels.ensure(req.spec, progress=say)
    vm.guest_root(kernel)  # a guest that could mount no root: exit 4 before the build
    built = assets.build_modules(kernel, say=say)
    sequence = req.sequence
    with tempfile.TemporaryDirectory(prefix="klptrace-results-", dir="/tmp") as rw:
        mods = stage.modules(Path(rw) / "modules", built.dir, req.modules, sequence)
        scen = stage.scenarios(Path(rw) / "scenarios", req.scenarios)
        done: list[ScenarioResult] = []
        top = _Totals()
        boots = 0
        while len(done) < len(sequence):
            boots += 1
            if boots > 1:
                say(f"booting a fresh guest for the {len(sequence) - len(done)} remaining "
                    "scenario(s)")
            path = Path(rw) / f"stream-{boots}.jsonl"
            argv = req.argv(GuestRun([s.id for s in sequence[len(done):]], path, mods, scen))
            died = ""
            share, layouts = stage.cache_share()
            try:
                status = vm.run(kernel, [*share, sys.executable, "-m", "klptrace", *argv],
                                cpus=req.cpus, memory=req.memory,
                                rwdirs=[Path(rw), layouts], say=say, done=_Ended(path),
                                cpus_for=vcpus.guest_cpus)
            except KlptraceError as e:  # a panic, a guest that stopped: not a signal
                died, status = e.message, None
            got = stream.read(path)
            if got.start is None and not got.results:
                raise KlptraceError(
                    f"the run in the guest wrote no results (exit status {status})"
                    + (f": {died}" if died else ""), "see the guest's output above")
            _merge(top, got)
            done += got.results
            if got.begun is not None and len(done) < len(sequence):
                # the guest died in the middle of this scenario
                why = died or f"the guest stopped during it (exit status {status})"
                done.append(errored(sequence[len(done)], why))
                line(f"  {done[-1].id}: ERROR ({why})")
            elif not got.wedged and len(done) < len(sequence):
                raise KlptraceError(
                    f"the guest stopped after {len(done)} of {len(sequence)} scenarios "
                    f"(exit status {status})" + (f": {died}" if died else ""),
                    "see the guest's output above")
    info = {**(top.kernel_info or {}), **({"suite": kernel.suite} if kernel.suite else {})}
    return checker.account_lost(RunDocument(
        kernel.release, done, top.lost, top.probes or [], top.timing or {},
        top.leftovers, info, boots))
