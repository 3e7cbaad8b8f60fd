"""Boots the lab guest once per kernel and runs every kernel test (tests/linux_kernel) inside it.

KLPTRACE_TEST_KERNELS (space-separated --kernel values, default "6.1 latest")
chooses the kernels; `make test` fetches and builds for each of them first.
The guests run at the same time, one per host core as memory allows
(KLPTRACE_TEST_JOBS=N sets how many): under emulation a guest keeps about one
core busy, so two suites on two cores take little longer than the longer one
(measured for `run --vm --jobs`, see docs/usage.md). Each `klptrace vm` child
writes its guest's output to a log, printed when that suite ends, with its time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from util import REPO, skip_or_fail

from klptrace import assets
from klptrace.commands.matrix import default_jobs
from klptrace.errors import KlptraceError
from klptrace.lab import defaults, kernels, vm
from klptrace.record import btf

pytestmark = pytest.mark.vm  # boots the lab guest: `make test`, not `make check`

KERNELS = list(dict.fromkeys(os.environ.get("KLPTRACE_TEST_KERNELS", "6.1 latest").split()))
#: the kernel whose suite runs `klptrace run` three times in a row (the stress): the first
STRESS_KERNEL = KERNELS[0] if KERNELS else ""
#: the kernel that runs the `once` tests (a foreign livepatch, a transition timeout: their
#: kernel side is covered on every kernel): the first. The signal tests run on every kernel
ONCE_KERNEL = STRESS_KERNEL
#: the longest one kernel suite may take in its guest (a slow host took 20 min for one)
SUITE_TIMEOUT_S = 3600


@dataclasses.dataclass
class Suite:
    """One kernel's suite: its guest's `klptrace vm` child, and where its results go."""

    spec: str
    release: str = ""
    modules: Path = Path()
    problem: str = ""  # why it could not start (no kernel, no modules)
    rw: Path = Path()
    log: Path = Path()
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    took: float = 0.0
    ended: threading.Event = dataclasses.field(default_factory=threading.Event)

    @property
    def junit(self) -> Path:
        return self.rw / "junit.xml"

    @property
    def saved(self) -> Path:
        return self.rw / "run.json"

    def argv(self) -> list[str]:
        """The `klptrace vm` that boots this kernel and runs tests/linux_kernel in it."""
        share, layouts = btf.guest_layout_share(defaults.cache_dir())
        guest = [*share, "KLPTRACE_IN_GUEST=1", "KLPTRACE_REQUIRE_KERNEL=1",
                 f"KLPTRACE_SAVE_RUN={self.saved}", f"KLPTRACE_MODULES={self.modules}",
                 f"KLPTRACE_RUN_REPEAT={3 if self.spec == STRESS_KERNEL else 1}",
                 f"KLPTRACE_KERNEL_ONCE={1 if self.spec == ONCE_KERNEL else 0}",
                 sys.executable, "-m", "pytest", "-v", "--durations=12",
                 "-p", "no:cacheprovider", f"--junitxml={self.junit}", "--rootdir", str(REPO),
                 str(REPO / "tests" / "linux_kernel")]
        return [sys.executable, "-m", "klptrace", "vm", "--kernel", self.release,
                "--timeout", str(SUITE_TIMEOUT_S), "--rwdir", str(self.rw),
                "--rwdir", str(layouts), "--", *guest]


class Suites:
    """Every kernel's suite, their guests started up to jobs at a time by a thread."""

    def __init__(self, specs: list[str], jobs: int) -> None:
        self.suites = {s: Suite(s) for s in specs}
        self.jobs = jobs
        self._stop = threading.Event()
        self._lock = threading.Lock()  # no guest starts once stop() has begun
        self._thread = threading.Thread(target=self._run, daemon=True)

    def prepare(self) -> None:
        """Fetch and build for every kernel first (one apt at a time), as `make test` did."""
        for s in self.suites.values():
            try:
                kernel = kernels.ensure(s.spec)
                built = assets.build_modules(kernel)
            except KlptraceError as e:
                s.problem = f"no guest kernel or modules: {e}"
                s.ended.set()
                continue
            s.release, s.modules = kernel.release, built.dir
            # under /tmp, which the guest sees; unique, as the suites run at once
            s.rw = Path(tempfile.mkdtemp(prefix="klptrace-kernel-tests-", dir="/tmp"))
            s.log = s.rw / "guest.log"

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        pending = [s for s in self.suites.values() if not s.problem]
        running: list[Suite] = []
        while (pending or running) and not self._stop.is_set():
            while pending and len(running) < self.jobs:
                s = pending.pop(0)
                with self._lock, open(s.log, "wb") as log:
                    if self._stop.is_set():
                        return
                    s.started = time.monotonic()
                    s.proc = subprocess.Popen(s.argv(), stdin=subprocess.DEVNULL,
                                              stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
                running.append(s)
            time.sleep(0.5)
            for s in [r for r in running if r.proc is not None and r.proc.poll() is not None]:
                s.took = time.monotonic() - s.started
                running.remove(s)
                s.ended.set()

    def stop(self) -> None:
        """Stop every guest still running (each child stops its own on SIGTERM)."""
        with self._lock:
            self._stop.set()
        procs = [s.proc for s in self.suites.values() if s.proc and s.proc.poll() is None]
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
        for s in self.suites.values():
            s.ended.set()


@pytest.fixture(scope="module")
def suites(request: pytest.FixtureRequest) -> Iterator[Suites]:
    if not shutil.which("qemu-system-x86_64"):
        skip_or_fail("qemu-system-x86_64 is not installed (make setup installs it)")
    jobs = int(os.environ.get("KLPTRACE_TEST_JOBS", "0"))
    why = "KLPTRACE_TEST_JOBS"
    if jobs < 1:
        # one guest per core as memory allows: default_jobs for guests of one vCPU
        jobs = default_jobs(len(KERNELS), 1, vm.parse_memory(defaults.MEMORY))[0]
        why = "one per core as memory allows; KLPTRACE_TEST_JOBS=N sets it"
    all_suites = Suites(KERNELS, jobs)
    all_suites.prepare()

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # so that the teardown below stops the guests

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        capture = request.config.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled():  # said now, not when the test ends
            print(f"\n--- kernel suites: {', '.join(KERNELS)}, {jobs} guest(s) at a time "
                  f"({why}); each suite's output follows when it ends ---", flush=True)
        all_suites.start()
        yield all_suites
    finally:
        all_suites.stop()
        signal.signal(signal.SIGTERM, old)
        for s in all_suites.suites.values():
            if s.rw != Path():
                shutil.rmtree(s.rw, ignore_errors=True)


@pytest.mark.parametrize("spec", KERNELS)
def test_kernel_suite_in_guest(spec: str, suites: Suites,
                               capsys: pytest.CaptureFixture[str]) -> None:
    s = suites.suites[spec]
    s.ended.wait()
    if s.problem:
        skip_or_fail(s.problem)
    assert s.proc is not None
    with capsys.disabled():
        print(f"\n--- kernel tests in the guest ({s.release}) ---", flush=True)
        with contextlib.suppress(OSError):
            sys.stdout.write(s.log.read_text(errors="replace"))
        print(f"--- end of the guest's output: kernel suite on {spec} ({s.release}) took "
              f"{s.took:.0f} s ---", flush=True)
    status = s.proc.returncode
    assert s.junit.is_file(), f"the suite wrote no JUnit file (klptrace vm exit {status})"
    suite = ET.parse(s.junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    counts = {k: int(suite.get(k, "0")) for k in ("tests", "failures", "errors", "skipped")}
    assert status == 0, counts
    assert counts["tests"] >= 8 and counts["failures"] == counts["errors"] == 0, counts
    assert counts["skipped"] == 0, counts
    doc = json.loads(s.saved.read_text())
    with capsys.disabled():
        print(f"guest run: {doc['totals']}, lost events {doc['lost_events']}, "
              f"timing {doc['timing']}")
    if os.environ.get("KLPTRACE_SAVE_RUN") and spec == STRESS_KERNEL:
        # to refresh tests/data/run-6.1.json
        shutil.copy(s.saved, os.environ["KLPTRACE_SAVE_RUN"])
