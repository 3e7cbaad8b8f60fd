"""`klptrace run --vm` with several --kernel: one guest per kernel, one matrix.

Each kernel's run is a `klptrace run --vm` child process of its own (a guest
that dies takes no other down), up to --jobs at a time, its stderr relayed
with the kernel's name; their JSON documents make one matrix, whose exit
status is the worst of them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from klptrace import jsontext
from klptrace.commands import emit, say, scenarios_for
from klptrace.errors import KlptraceError, interrupt
from klptrace.guest.boot import errored
from klptrace.results import Matrix, RecordingError, RunDocument

if TYPE_CHECKING:
    from klptrace.commands.run import RunOptions


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
        cpus, memory = opts.guest_size
        jobs, why = default_jobs(len(specs), cpus, vm.parse_memory(memory))
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
        cpus, memory = self.opts.guest_size
        return [sys.executable, "-m", "klptrace", *self.opts.to_argv([
            "--vm", "--kernel", spec, "--format", "json", "-o", str(out),
            "--cpus", str(cpus), "--memory", memory])]

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
