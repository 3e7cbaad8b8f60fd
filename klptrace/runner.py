"""Runs scenarios on the live kernel, recording them, and checks each one.

Every scenario starts from a clean state and leaves one: whatever it loaded is
disabled and unloaded afterwards, whatever happened (see cleanup()).
"""

from __future__ import annotations

import datetime
import errno
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from klptrace import checker, stall
from klptrace.errors import KlptraceError, check_interrupted, signals_deferred
from klptrace.events import Event, EventKind
from klptrace.kernel import stall as kernel_stall
from klptrace.kernel.kmsg import KernelLog, OopsWatch
from klptrace.kernel.wedge import Wedge
from klptrace.oops import Oops
from klptrace.results import Recording, ScenarioResult, StallReport
from klptrace.scenario import (
    Scenario,
    Step,
    StepKind,
    is_module_name,
    is_param_name,
    kernel_name,
)
from klptrace.transcript import insmod_error, rmmod_error, witnessed


class Rec(Protocol):
    """What the runner needs of a recorder (recorder.Recorder, or a fake in tests)."""

    def mark(self, kind: EventKind, detail: str, ret: int | None = None) -> Any: ...
    def poll(self, timeout_ms: int = 50) -> None: ...
    def now(self) -> int: ...
    def recording(self, start_ns: int = 0, end_ns: int | None = None) -> Recording: ...
    def lost(self) -> int: ...


class StepTimeout(KlptraceError):
    """A transition did not reach the state a step waits for in time."""


class KernelOops(KlptraceError):
    """The kernel oopsed (or panicked) while a scenario ran."""

    def __init__(self, oops: Oops, during: str) -> None:
        self.oops = oops
        where = next((line for line in oops.summary if line.startswith("RIP: ")), "")
        first = oops.summary[0] if oops.summary else oops.lines[0]
        super().__init__(
            f"the kernel oopsed during `{during}`: {first}" + (f"; {where}" if where else ""),
            "the livepatch core may be wedged (a callback that oopses dies holding its "
            "mutex): reboot before running more scenarios")


class Kernel(Protocol):
    """What the runner needs of the kernel (kmod.Actor, or a fake in tests): the calls
    that change it, and what it shows in sysfs; its wedge says whether it is wedged."""

    wedge: Wedge

    def is_loaded(self, name: str) -> bool: ...
    def is_patch(self, name: str) -> bool: ...
    def patch_attr(self, patch: str, attr: str) -> str | None: ...
    def param(self, module: str, name: str) -> str | None: ...

    def load(self, path: str, params: str = "", **kw: Any) -> int: ...
    def unload(self, name: str, **kw: Any) -> int: ...
    def write(self, path: str, value: str, **kw: Any) -> int: ...


def _component(name: str, param: bool = False) -> str:
    """name, as one path component. scenario.py refuses every other name, so one here is
    a bug; checked again because the path is opened as root."""
    if not (is_param_name(name) if param else is_module_name(name)):
        raise AssertionError(f"not a {'parameter' if param else 'module'} name: {name!r}")
    return name


def patch_file(patch: str, attr: str) -> str:
    """A livepatch's file in sysfs: /sys/kernel/livepatch/<patch>/<attr>."""
    return f"/sys/kernel/livepatch/{kernel_name(_component(patch))}/{attr}"


def param_file(module: str, param: str) -> str:
    """A module parameter's file in sysfs."""
    # a parameter is a C name too, and the kernel matches - and _ alike in it (parameq())
    return (f"/sys/module/{kernel_name(_component(module))}/parameters/"
            f"{kernel_name(_component(param, True))}")


#: a debugfs file's name, as scenario.py takes it (checked again: the path is read as root)
_DEBUG_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def debug_file(read: str) -> str:
    """A spawn step's file: /sys/kernel/debug/<module>/<file>."""
    module, _, name = read.partition("/")
    if not _DEBUG_FILE.fullmatch(name):
        raise AssertionError(f"not a debugfs file name: {name!r}")
    return f"/sys/kernel/debug/{kernel_name(_component(module))}/{name}"


class Reader(Protocol):
    """A background reader (subprocess.Popen, or a fake in tests)."""

    pid: int

    def poll(self) -> int | None: ...
    def kill(self) -> None: ...
    def wait(self, timeout: float | None = None) -> int: ...


def spawn_reader(path: str) -> Reader:
    """`cat path` in the background, its output discarded."""
    return subprocess.Popen([shutil.which("cat") or "/bin/cat", path], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Runner:
    """Executes the steps of scenarios with modules from one directory."""

    def __init__(self, rec: Rec, module_dir: str, kernel: Kernel, watch: OopsWatch | None,
                 timeout_s: float,
                 log: Callable[[str], None] | None = None,
                 klog: KernelLog | None = None,
                 snapshot: Callable[[str, list[Any]], StallReport | None] = kernel_stall.snapshot,
                 spawn: Callable[[str], Reader] = spawn_reader,
                 ) -> None:
        """kernel: what does the syscalls that run livepatch code (kmod.Actor);
        watch: the kernel log, watched for an oops while the steps run;
        klog: the kernel log, compared with the recording when given;
        snapshot: `klptrace stall`'s report of a transition held on purpose."""
        self.snapshot = snapshot
        self.spawn = spawn
        self.readers: dict[str, Reader] = {}  # spawned by the scenario running, by name
        self.rec = rec
        self.kernel = kernel
        self.watch = watch
        self._step = ""
        self.klog = klog
        self.module_dir = module_dir
        self.timeout_s = timeout_s
        self.log = log or (lambda _msg: None)
        self.loaded: list[str] = []  # modules this runner loaded and has not unloaded
        self.stall_report: StallReport | None = None  # of the scenario running
        self._start = 0
        self._step_start = 0
        self.livepatches: set[str] = set()  # modules seen registering a livepatch

    def ko(self, module: str) -> str:
        """The module's file in the module directory, never outside it."""
        return os.path.join(self.module_dir, f"{_component(module)}.ko")

    # -- steps ----------------------------------------------------------------
    def _mark_step(self, cmd: str) -> None:
        self._step = cmd
        self._step_start = self.rec.now()
        self.rec.mark(EventKind.STEP, cmd)
        if self.klog:
            self.klog.write(f"% {cmd}")

    def step(self, s: Step) -> None:
        """Perform one step, marking it in the recording like a selftest's `% cmd` line."""
        check_interrupted()  # between steps: a safe point (see errors.signals_checked)
        if s.kind == StepKind.LOAD:
            ko = self.ko(s.module)  # before it counts as ours: cleanup() uses the name too
            cmd = f"insmod {s.module}.ko" + (f" {s.params}" if s.params else "")
            self._mark_step(cmd)
            # counted as ours before the syscall: a signal may land right after it
            self.loaded.append(s.module)
            err = self.kernel.load(ko, s.params, **self._waiting())
            if err:
                self.loaded.remove(s.module)
                self.rec.mark(EventKind.STEP_RESULT, insmod_error(f"{s.module}.ko", err), err)
                return
            if self.kernel.patch_attr(s.module, "transition") is not None:
                self.livepatches.add(s.module)
                if s.wait:
                    self.wait_transition(s.module, 0)
        elif s.kind == StepKind.UNLOAD:
            self._mark_step(f"rmmod {s.module}")
            err = self.unload(s.module)
            if err:
                self.rec.mark(EventKind.STEP_RESULT, rmmod_error(s.module, err), err)
        elif s.kind == StepKind.DISABLE:
            path = patch_file(s.patch, "enabled")
            self._mark_step(f"echo 0 > {path}")
            err = self.kernel.write(path, "0", **self._waiting())
            if err:
                self.rec.mark(EventKind.STEP_RESULT,
                              f"sh: write error: {os.strerror(err)}", err)
            elif s.wait:
                self.wait_transition(s.patch, 0)
        elif s.kind == StepKind.SET:
            path = param_file(s.module, s.param)
            self._mark_step(f"echo {s.value} > {path}")
            err = self.kernel.write(path, s.value, **self._waiting())
            if err:
                self.rec.mark(EventKind.STEP_RESULT, f"sh: write error: {os.strerror(err)}", err)
        elif s.kind == StepKind.WAIT_TRANSITION:
            self.wait_transition(s.patch, s.transition)
            if s.transition == 1:  # stalled on purpose: say who holds it, as `klptrace stall`
                self.rec.poll(0)
                evs = self.rec.recording(self._start).events
                self.stall_report = self.snapshot(kernel_name(s.patch), evs)
        elif s.kind == StepKind.SPAWN:
            path = debug_file(s.read)
            self._mark_step(f"cat {path} & {s.reader}=$!")
            self.readers[s.reader] = self.spawn(path)
        elif s.kind == StepKind.REAP:
            self._mark_step(f"wait ${s.reader}")
            self.reap(s.reader)
        elif s.kind == StepKind.WAIT_PARAM:
            self._wait_for(lambda: self.kernel.param(s.module, s.param) == s.value,
                           f"/sys/module/{s.module}/parameters/{s.param} does not read {s.value}")
        elif s.kind == StepKind.WAIT_BLOCKED:
            since = self.rec.now()
            at = f" at try {s.at_try} or later" if s.at_try else ""
            self._wait_for(lambda: blocked(self.rec.recording(since).events, kernel_name(s.patch),
                                           s.task, s.at_try),
                           f"no try of {s.patch}'s transition found {s.task} not switched{at}")
        else:  # scenario.py validates kinds; this is a bug
            raise AssertionError(f"unknown step kind {s.kind}")

    def _wait_for(self, done: Callable[[], bool], still: str) -> None:
        """Until done(), watching the recording; StepTimeout saying what is still so."""
        deadline = time.monotonic() + self.timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise StepTimeout(f"{still} after {self.timeout_s:.0f} s",
                                  "see what the transition waits for with `klptrace stall`")
            self.rec.poll(100)
            self._idle()

    def reap(self, name: str) -> None:
        """Wait for a reader to exit; an error unless it exited with status 0."""
        reader = self.readers[name]
        self._wait_for(lambda: reader.poll() is not None,
                       f"the reader ${name} (pid {reader.pid}) has not exited")
        del self.readers[name]
        status = reader.wait()
        if status:
            raise KlptraceError(f"the reader ${name} exited with status {status}",
                                "a reader's read should end with what the module returns")

    def _kill_readers(self) -> list[str]:
        """SIGKILL the readers left running (their module's sleeps are all killable)."""
        left = []
        for name, reader in list(self.readers.items()):
            reader.kill()
            try:
                reader.wait(timeout=10)
            except subprocess.TimeoutExpired:
                left.append(f"the reader ${name} (pid {reader.pid}) did not exit after SIGKILL")
            else:
                del self.readers[name]
        return left

    def _waiting(self) -> dict[str, Any]:
        """How a call into the kernel waits: at most the timeout, watching for an oops."""
        return {"timeout": self.timeout_s, "idle": self._idle}

    @property
    def wedged(self) -> str:
        """Why the kernel must not be touched any more ('' while it may): the kernel's."""
        return self.kernel.wedge.reason

    def _oops(self) -> Oops | None:
        return self.watch.check() if self.watch else None

    def _idle(self) -> None:
        """While waiting on the kernel: deliver events, stop at once if it oopsed."""
        self.rec.poll(0)
        oops = self._oops()
        if oops is not None:
            self.kernel.wedge.oopsed()
            raise KernelOops(oops, self._step or "klptrace's setup")

    def wait_transition(self, patch: str, want: int) -> None:
        """Wait until the patch's transition file reads want (0: also when gone).

        Waits on the recorder, which wakes as soon as an event arrives, rather
        than sleeping between polls of sysfs.
        """
        deadline = time.monotonic() + self.timeout_s
        while True:
            cur = self.kernel.patch_attr(patch, "transition")
            if cur == str(want) or (want == 0 and cur is None):
                if want == 1 or self._completions_done(patch):
                    return
            if time.monotonic() > deadline:
                raise StepTimeout(
                    f"{patch}: transition still reads {cur} after {self.timeout_s:.0f} s "
                    f"(waiting for {want})",
                    f"see which task blocks it with `klptrace stall {patch}`")
            self.rec.poll(100)
            self._idle()

    def _completions_done(self, patch: str) -> bool:
        """Whether every completion of the patch's transition since the step began
        has returned. The kernel clears klp_transition_patch, which the sysfs
        transition file shows, just before klp_complete_transition() returns:
        without this, the next step could be recorded before "... complete"."""
        evs = self.rec.recording(self._step_start).events
        ours = [e.kind for e in evs if e.patch == kernel_name(patch)]  # the kernel's name
        return ours.count(EventKind.TRANSITION_DONE) >= ours.count(EventKind.TRANSITION_COMPLETE)

    def unload(self, module: str) -> int:
        """Unload a module: 0 or the errno.

        A disabled livepatch keeps its module referenced until the kernel frees
        the patch in a work item after the transition, so EBUSY and EAGAIN are
        retried for a livepatch that is not enabled (or already gone from sysfs).
        """
        deadline = time.monotonic() + self.timeout_s
        while True:
            err = self.kernel.unload(module, **self._waiting())
            # its sysfs directory goes before the module reference is dropped
            retry = (err in (errno.EBUSY, errno.EAGAIN)
                     and module in self.livepatches
                     and self.kernel.patch_attr(module, "enabled") in ("0", None)
                     and time.monotonic() < deadline)
            if not retry:
                break
            self.rec.poll(50)
            self._idle()
        if not err and module in self.loaded:
            self.loaded.remove(module)
        return err

    # -- scenarios ------------------------------------------------------------
    def run(self, sc: Scenario) -> ScenarioResult:
        """Run one scenario, clean up after it, and check its recording."""
        notes: list[str] = []
        if self.klog:
            self.klog.read()  # what came before this scenario is not its business
        start = self._start = self.rec.now()
        self.stall_report = None
        lost0 = self.rec.lost()
        started = datetime.datetime.now(datetime.UTC)
        t0 = time.monotonic()
        error = ""
        oops: list[str] = []
        try:
            for s in sc.steps:
                self.step(s)
            self._idle()  # an oops the last step caused
        except KlptraceError as e:
            # a call whose task died in the kernel: the oops says why
            found = e.oops if isinstance(e, KernelOops) else self._oops()
            if found is not None:
                self.kernel.wedge.oopsed()
                e = e if isinstance(e, KernelOops) else KernelOops(found, self._step)
                oops = found.lines
            error = str(e)
        finally:
            # what cleanup does is part of the scenario's story (it is nothing
            # when the scenario unloaded everything itself)
            with signals_deferred():
                left = self.cleanup()
            end = self.rec.now()
            if left:
                notes.append("could not clean up: " + "; ".join(left))
                self.log("klptrace: could not clean up: " + "; ".join(left))
        rec = self.rec.recording(start, end)
        rec.lost = self.rec.lost() - lost0  # the counter is global: take this scenario's share
        dmesg = witnessed(self.klog.read()) if self.klog else None
        verdict = checker.judge(sc.expect, rec, dmesg=dmesg, step_error=error, oops=oops,
                                leftovers=left)
        report = self.stall_report
        if report is not None:  # with the story of the whole scenario
            report.timeline = stall.timeline(rec.events, report.patch)
        return ScenarioResult(sc.id, verdict, rec, time.monotonic() - t0,
                              started.isoformat(timespec="milliseconds"), notes, dmesg, error,
                              oops, left, report)

    def cleanup(self) -> list[str]:
        """Disable and unload whatever this runner loaded; name what stays behind.

        On a wedged kernel nothing is tried: every such call would sleep forever.
        """
        left = self._kill_readers()  # they hold their module
        if self.wedged:  # an oops, or a call abandoned (on the way here too, by a signal)
            return left + [f"{m} is still loaded ({self.wedged}): reboot to clear it"
                           for m in reversed(self.loaded) if self.kernel.is_loaded(m)]
        for module in reversed(list(self.loaded)):
            if not self.kernel.is_loaded(module):
                self.loaded.remove(module)
                continue
            if self.kernel.is_patch(module):
                self.livepatches.add(module)
            try:
                self._settle_patch(module)
                self._mark_step(f"rmmod {module}")
                err = self.unload(module)
            except KlptraceError as e:
                left.append(str(e))
                if self.wedged:
                    return left + self.cleanup()
                continue
            if err and self.kernel.is_loaded(module):
                left.append(f"{module} is still loaded ({os.strerror(err)}): run `rmmod {module}`")
        return left

    def _settle_patch(self, patch: str) -> None:
        """Bring a livepatch of ours to disabled, reversing an unfinished transition."""
        deadline = time.monotonic() + self.timeout_s
        while self.kernel.is_patch(patch):
            enabled = self.kernel.patch_attr(patch, "enabled")
            if enabled == "1":
                path = patch_file(patch, "enabled")
                self._mark_step(f"echo 0 > {path}")
                self.kernel.write(path, "0", **self._waiting())
            if time.monotonic() > deadline:
                raise KlptraceError(
                    f"livepatch {patch} is still registered",
                    f"echo 0 > {patch_file(patch, 'enabled')}; then rmmod {patch}")
            self.rec.poll(100)
            self._idle()


def blocked(events: Sequence[Event], patch: str, task: str, at_try: int = 0) -> bool:
    """Whether a try of the patch's transition (numbered at least at_try) recorded in events
    found a task of that comm not switched."""
    number = None
    for e in events:
        if e.kind == EventKind.TRANSITION_TRY and e.patch == patch:
            number = (e.ret or 0) + 1
        elif (e.kind == EventKind.TASK_BLOCKED and e.comm == task and number is not None
              and number >= at_try):
            return True
    return False
