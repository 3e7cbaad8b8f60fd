"""A disposable guest: boot a kernel with virtme-ng, run one command, bring back its status.

`vng` runs as an external command. The guest sees the host's / read-only over
9p (virtiofs for a kernel without 9p: guest_root) with copy-on-write overlays
(writes vanish at exit), runs the command as root, and streams its output. The
command's exit status comes back through a status file in a private --rwdir,
so a command that exits 255 is not mistaken for a crash; the kernel's console
goes to a log so a panic can be named.

The parts: accel.py (KVM or TCG), vng.py (the command line and the QEMU
wrapper), pump.py (the guest's output while it runs), stop.py (signals, and
stopping what the guest left); this module boots, and names how a guest ended.
What vm.run()'s callers use of them is re-exported here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from klptrace.errors import KlptraceError
from klptrace.lab import defaults, pump, stop, vng
from klptrace.lab.accel import Accel as Accel
from klptrace.lab.accel import AccelName
from klptrace.lab.accel import choose_accel as choose_accel
from klptrace.lab.kernels import Kernel
from klptrace.lab.pump import Outcome, panic_line
from klptrace.lab.vng import guest_root as guest_root

MIN_MEMORY_MIB = 512
#: the most a guest may ask for (1T): a typo such as 999999G is refused before QEMU
#: tries to reserve it
MAX_MEMORY_MIB = 1024 * 1024

# virtme-ng-init looks for udevd here; without it the guest has no
# /dev/virtio-ports/* links, so vng can show no output and return no status.
_UDEVD = ("/usr/lib/systemd/systemd-udevd", "/lib/systemd/systemd-udevd")

Say = Callable[[str], None]


def parse_memory(text: str) -> int:
    """Guest memory in MiB from a QEMU-style size: 4G, 512M, 4096 (MiB), 1.5G."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", text)
    shown = repr(text if len(text) <= 40 else text[:40] + "...")  # not all 5,000 digits
    if not m:
        raise KlptraceError(f"bad memory size {shown}", hint="use a size such as 4G or 2048M")
    scale = {"k": 1 / 1024, "": 1, "m": 1, "g": 1024, "t": 1024 * 1024}[m.group(2).lower()]
    size = float(m.group(1)) * scale  # inf for hundreds of digits: compared, never int()ed
    if size > MAX_MEMORY_MIB:
        raise KlptraceError(f"memory size {shown} is too large",
                            hint=f"give the guest at most {MAX_MEMORY_MIB // (1024 * 1024)}T")
    mib = int(size)
    if mib < MIN_MEMORY_MIB:
        raise KlptraceError(
            f"memory size {shown} is too small", hint=f"give the guest at least {MIN_MEMORY_MIB}M"
        )
    return mib



def check_host() -> str:
    """The QEMU binary; raise a named error for anything a guest boot lacks."""
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        raise KlptraceError(
            "QEMU not found (qemu-system-x86_64)",
            hint="make setup, or apt-get install qemu-system-x86",
        )
    if not (shutil.which("busybox") or os.path.exists("/bin/busybox")):
        raise KlptraceError(
            "busybox not found: virtme-ng builds the guest's initramfs with it",
            hint="apt-get install busybox-static",
        )
    if not any(os.path.exists(p) for p in _UDEVD):
        raise KlptraceError(
            "udevd not found: without it the guest cannot reach vng's I/O ports",
            hint="apt-get install udev",
        )
    return qemu



# QEMU's own failures, each followed by abort(): glibc's assert(), QEMU's
# cpu_abort() and hw_error(), glib's g_assert*() and g_assert_not_reached().
_QEMU_ABORT_RE = re.compile(
    r"^\S*qemu\S*: .+: Assertion `.+' failed\.$"
    r"|^qemu: (?:fatal|hardware error): .+$"
    r"|^(?:Bail out! )?ERROR:\S+:\d+:.*(?:assertion failed|should not be reached).*$",
    re.MULTILINE,
)


def qemu_abort_line(stderr: str) -> str | None:
    """The line in QEMU's stderr that says QEMU itself aborted, if it did."""
    m = _QEMU_ABORT_RE.search(stderr)
    return m.group(0).strip() if m else None


# --- errors a caller can tell apart ------------------------------------------------


class GuestError(KlptraceError):
    """The guest ended without bringing back the command's status (no QEMU is left)."""

    def __init__(self, message: str, hint: str | None = None,
                 console_log: Path | None = None) -> None:
        super().__init__(message, hint)
        self.console_log = console_log


class GuestPanic(GuestError):
    """The guest kernel panicked; panic is its "Kernel panic - not syncing: ..." line."""

    def __init__(self, panic: str, console_log: Path) -> None:
        super().__init__(f"the guest kernel panicked: {panic}",
                         f"the kernel's console is in {console_log}", console_log)
        self.panic = panic


class GuestStopped(GuestError):
    """vng or QEMU ended before the command finished, with no kernel panic."""

    def __init__(self, message: str, hint: str | None, console_log: Path | None,
                 vng_status: int | None) -> None:
        super().__init__(message, hint, console_log)
        self.vng_status = vng_status


class QemuAborted(GuestStopped):
    """QEMU itself aborted (its own assertion, not the guest's); line is what it said."""

    def __init__(self, line: str, console_log: Path, vng_status: int | None) -> None:
        super().__init__(f"QEMU itself aborted: {line}",
                         f"a QEMU bug, not the guest's: run again; the kernel's console is in "
                         f"{console_log}", console_log, vng_status)
        self.line = line


class GuestTimeout(GuestError):
    """The guest outlived the timeout and was stopped."""


def run(
    kernel: Kernel,
    argv: Sequence[str],
    *,
    cpus: int = defaults.CPUS,
    memory: str = defaults.MEMORY,
    timeout: float = defaults.TIMEOUT_S,
    rwdirs: Sequence[Path] = (),
    cwd: Path | None = None,
    accel: Accel | None = None,
    say: Say | None = None,
    retry_qemu_abort: bool = True,
    done: Callable[[], bool] | None = None,
    cpus_for: Callable[[Kernel, Accel, int], tuple[int, str]] | None = None,
) -> int:
    """Boot kernel, run argv as root in the guest, stream its output; return its status.

    rwdirs are host directories the guest writes through to (results); they are
    created if missing. Every way out leaves no QEMU behind. Raises GuestPanic,
    GuestStopped (QemuAborted when QEMU itself aborted), GuestTimeout, or, after
    SIGINT, SIGTERM or SIGHUP, errors.Interrupted once the guest is stopped. A
    guest that QEMU itself aborted boots again, once (said on stderr), unless
    retry_qemu_abort is False; argv then runs again from the start. done(),
    when given, tells that the command's work is over (its results are in):
    a guest that does not power off within pump.DONE_GRACE_S after it is stopped
    (GuestStopped), since a wedged guest kernel may never get there.
    cpus_for(kernel, accel, cpus), when given, says how many vCPUs to boot with
    and why they are fewer than asked ('' when they are not): what the work in
    the guest allows, which the lab does not know (None: the vCPUs asked for).
    """
    note = say or (lambda _m: None)
    if not argv:
        raise KlptraceError("no command to run in the guest", hint="klptrace vm -- CMD ...")
    memory_mib = parse_memory(memory)
    if cpus < 1:
        raise KlptraceError(f"--cpus {cpus}: need at least one CPU")
    if not kernel.image.is_file():
        raise KlptraceError(f"no kernel image at {kernel.image}")
    root = guest_root(kernel)  # before anything boots, the trial boot of KVM too
    with stop.Signals() as signals:
        real_qemu = check_host()
        vng_bin = vng.find_vng()
        accel = accel or choose_accel(kernel, real_qemu)
        kind = "hardware" if accel.name == AccelName.KVM else "software emulation"
        note(f"accel: {accel.name} ({kind}): {accel.reason}")
        if cpus_for is not None:
            cpus, why = cpus_for(kernel, accel, cpus)
            if why:
                note(why)
        dirs = [Path(d).resolve() for d in rwdirs]
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        # vng runs virtme-run, which lives beside it.
        env["PATH"] = f"{Path(vng_bin).parent}{os.pathsep}{env.get('PATH', '')}"
        boot = _Boot(kernel, list(argv), vng_bin, real_qemu, accel.name, cpus, memory_mib,
                     (cwd or Path.cwd()).resolve(), dirs, env, timeout, done, root)
        for attempt in (1, 2):
            try:
                return boot.once(signals, note)
            except QemuAborted as e:
                if attempt == 2 or not retry_qemu_abort:
                    raise
                if e.console_log is not None:  # the first boot's directory
                    shutil.rmtree(e.console_log.parent, ignore_errors=True)
                # said even without say: CI logs must show that a boot was repeated
                (say or _stderr)(f"QEMU itself aborted ({e.line}); booting the guest "
                                 "again (once)")
    raise AssertionError("unreachable")


def _close_pipes(proc: subprocess.Popen[bytes]) -> None:
    """Close our ends of the child's stdout and stderr."""
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def _stderr(msg: str) -> None:
    print(f"klptrace: {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class _Boot:
    """One guest boot's settings; once() boots it."""

    kernel: Kernel
    argv: list[str]
    vng: str
    real_qemu: str
    accel: AccelName
    cpus: int
    memory_mib: int
    cwd: Path
    rwdirs: list[Path]
    env: dict[str, str]
    timeout: float
    done: Callable[[], bool] | None = None
    root: str = "9p"  # guest_root()

    def once(self, signals: stop.Signals, note: Say) -> int:
        """Boot, run, stop: the command's status, or a named error once no QEMU is left."""
        run_dir = Path(tempfile.mkdtemp(prefix="klptrace-vm-"))
        keep = False  # the console log, for an error that names it
        try:
            status_file = run_dir / "status"
            script = run_dir / "command.sh"
            script.write_text(vng.guest_script(self.argv, status_file))
            console_log = run_dir / "console.log"
            pid_file = run_dir / "qemu.pid"
            wrapper = run_dir / "qemu"
            wrapper.write_text(vng.qemu_wrapper(self.real_qemu, console_log, pid_file))
            wrapper.chmod(0o755)
            cmd = vng.vng_argv(
                self.kernel, script, accel=self.accel,
                cpus=self.cpus, memory_mib=self.memory_mib, cwd=self.cwd, rwdirs=self.rwdirs,
                qemu=str(wrapper), vng=self.vng, root=self.root,
            )  # fmt: skip
            if signals.signum is not None:
                raise signals.interrupted("no guest was started")
            note(f"booting {self.kernel.release} ({self.cpus} CPUs, {self.memory_mib}M)")
            started = time.monotonic()
            err_tail = bytearray()
            signals.raising = False  # from here a signal is acted on where it is safe
            proc = subprocess.Popen(
                cmd, stdin=vng.stdin(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=self.env, start_new_session=True,
            )  # fmt: skip
            try:
                how = pump.pump(proc, started + self.timeout, signals.fileno(), err_tail,
                                self.done, console_log)
            except BaseException:
                _close_pipes(proc)
                stop.guest(proc, pid_file, str(run_dir))
                raise
            _close_pipes(proc)  # from here no one waits on a full pipe of ours
            if how is not Outcome.EXITED:
                if how is Outcome.SIGNAL:
                    note(f"{signals.name()}: stopping the guest")
                left = stop.guest(proc, pid_file, str(run_dir))
                keep = how is not Outcome.SIGNAL  # an interrupted run leaves nothing
                raise self._stopped(how, left, console_log, signals)
            note(f"guest done in {time.monotonic() - started:.1f} s")
            try:
                return int(status_file.read_text().strip())
            except (OSError, ValueError):
                pass
            keep = True
            raise _early_end(console_log, err_tail.decode(errors="replace"), proc.returncode)
        finally:
            if not keep:
                shutil.rmtree(run_dir, ignore_errors=True)

    def _stopped(self, how: Outcome, left: list[int], console_log: Path,
                 signals: stop.Signals) -> BaseException:
        """What to raise for a guest that was stopped (left: the pids a stop left)."""
        if how is Outcome.SIGNAL:
            return signals.interrupted(stop.left_note(left) if left else "the guest was stopped")
        if how is Outcome.PANIC:
            console = console_log.read_text(errors="replace")
            return GuestPanic(panic_line(console) or "(see the console)", console_log)
        left_note = f", {stop.left_note(left)}" if left else ""
        if how is Outcome.DONE:
            return GuestStopped(
                f"the command's work was done but the guest did not power off within "
                f"{pump.DONE_GRACE_S:g} s, so it was stopped{left_note}",
                f"the kernel's console is in {console_log}", console_log, None)
        return GuestTimeout(
            f"the guest did not finish within {self.timeout:g} s and was stopped{left_note}",
            f"raise --timeout; the kernel's console is in {console_log}", console_log)


def _early_end(console_log: Path, stderr: str, vng_status: int | None) -> GuestError:
    """Why a guest ended with no status: the kernel's panic, QEMU's abort, or neither."""
    if (console_log.parent / vng.NO_CONSOLE_ARG).exists():
        return GuestStopped(
            f"virtme-ng started QEMU without `{vng.VNG_CONSOLE_ARG}`, the console argument "
            "klptrace sends to its log (for panic reports): this virtme-ng is not one "
            "klptrace was tested with",
            "install the virtme-ng that klptrace's pyproject.toml allows: "
            "pip install 'virtme-ng>=1.42,<1.43'", None, vng_status)
    console = console_log.read_text(errors="replace") if console_log.exists() else ""
    panic = panic_line(console)
    if panic:
        return GuestPanic(panic, console_log)
    abort = qemu_abort_line(stderr)
    if abort:
        return QemuAborted(abort, console_log, vng_status)
    if not console:
        return GuestStopped(f"vng failed before the guest booted (exit {vng_status})",
                            "see vng's messages above", None, vng_status)
    return GuestStopped(
        f"the guest stopped before the command finished (vng exit {vng_status})",
        f"the kernel's console is in {console_log}", console_log, vng_status,
    )
