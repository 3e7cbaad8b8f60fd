"""A disposable guest: boot a kernel with virtme-ng, run one command, bring back its status.

`vng` runs as an external command. The guest sees the host's / read-only over
9p (virtiofs for a kernel without 9p: guest_root) with copy-on-write overlays
(writes vanish at exit), runs the command as
root, and streams its output. The command's exit status comes back through a
status file in a private --rwdir, so a command that exits 255 is not mistaken
for a crash; the kernel's console goes to a log so a panic can be named.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import BinaryIO

from klptrace.errors import Interrupted, KlptraceError, NotSupported
from klptrace.kernel import proc
from klptrace.lab import defaults, kconfig
from klptrace.lab.defaults import cache_dir
from klptrace.lab.kernels import Kernel

DEFAULT_MEMORY = defaults.MEMORY
DEFAULT_TIMEOUT = defaults.TIMEOUT_S
MIN_MEMORY_MIB = 512
#: the most a guest may ask for (1T): a typo such as 999999G is refused before QEMU
#: tries to reserve it
MAX_MEMORY_MIB = 1024 * 1024

# Directories that vng already gives a copy-on-write overlay in the guest.
_VNG_OVERLAID = ("/etc", "/lib", "/home", "/opt", "/srv", "/usr", "/var", "/tmp")

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


# --- accelerator --------------------------------------------------------------


@dataclass(frozen=True)
class AccelFacts:
    """What the host says about KVM."""

    forced: str | None  # KLPTRACE_ACCEL
    kvm_device: bool  # /dev/kvm exists
    kvm_usable: bool  # and we may open it read-write
    kvm_pvm: bool  # /sys/module/kvm_pvm: a KVM that runs only specially built guests


@dataclass(frozen=True)
class Accel:
    """The accelerator a guest runs with, and why."""

    name: str  # "kvm" | "tcg"
    reason: str


def decide_accel(facts: AccelFacts) -> Accel | None:
    """The accelerator the facts settle, or None when only a trial boot can tell."""
    if facts.forced:
        if facts.forced not in ("kvm", "tcg"):
            raise KlptraceError(
                f"KLPTRACE_ACCEL={facts.forced!r}", hint="set it to kvm or tcg, or unset it"
            )
        return Accel(facts.forced, "KLPTRACE_ACCEL says so")
    if not facts.kvm_device:
        return Accel("tcg", "no /dev/kvm")
    if not facts.kvm_usable:
        return Accel("tcg", "/dev/kvm is not accessible read-write")
    if facts.kvm_pvm:
        return Accel("tcg", "/dev/kvm is kvm_pvm, which boots only specially built guest kernels")
    return None


def host_accel_facts() -> AccelFacts:
    """Read the AccelFacts of this host."""
    dev = Path("/dev/kvm")
    return AccelFacts(
        forced=os.environ.get("KLPTRACE_ACCEL") or None,
        kvm_device=dev.exists(),
        kvm_usable=dev.exists() and os.access(dev, os.R_OK | os.W_OK),
        kvm_pvm=Path("/sys/module/kvm_pvm").exists(),
    )


# A stock kernel with no root device ends in this panic: proof that it booted.
_BOOTED_RE = re.compile(r"Kernel panic - not syncing")


def probe_kvm(image: Path, qemu: str, timeout: float = 30.0) -> bool:
    """Does KVM really boot this kernel? Boot it with no root and wait for its panic."""
    cmd = [
        qemu, "-accel", "kvm", "-cpu", "host", "-m", "256M", "-nodefaults", "-no-reboot",
        "-display", "none", "-serial", "stdio", "-kernel", str(image),
        "-append", "console=ttyS0 panic=-1 loglevel=4",
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False  # e.g. stuck in the decompressor
    return bool(_BOOTED_RE.search(proc.stdout.decode(errors="replace")))


def choose_accel(kernel: Kernel, qemu: str, cache: Path | None = None) -> Accel:
    """KVM where it really boots a stock kernel, else software emulation (TCG).

    A trial boot settles what the host's facts cannot; its result is kept per
    host kernel and QEMU binary.
    """
    decided = decide_accel(host_accel_facts())
    if decided is not None:
        return decided
    store = (cache or cache_dir()) / "accel.json"
    key = f"{os.uname().release} {qemu} {kernel.release}"
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = probe_kvm(kernel.image, qemu)
        store.parent.mkdir(parents=True, exist_ok=True)
        store.write_text(json.dumps(known, indent=1) + "\n")
    if known[key]:
        return Accel("kvm", f"a trial boot of {kernel.release} with KVM reached its panic")
    return Accel("tcg", f"a trial boot of {kernel.release} with KVM failed")


# --- the vng command line -------------------------------------------------------


def needs_overlay(path: Path) -> bool:
    """Is path outside the directories that vng already overlays (so read-only)?"""
    return not any(path == Path(d) or Path(d) in path.parents for d in _VNG_OVERLAID)


#: read-ahead for the guest's 9p mounts, in KiB (see guest_script)
READ_AHEAD_KB = 4096

#: Drivers that udev's coldplug would load in the guest for QEMU's devices and CPU
#: (the q35 AHCI and its CD-ROM, watchdogs, input, KVM for the emulated SVM/VMX, the
#: CPU's crypto), none of them used by a guest command. libkmod honours
#: modprobe.blacklist= from the kernel command line for loads by alias, which is how
#: udev loads drivers (an explicit modprobe or insmod still loads them); naming the
#: driver a device or CPU feature matches is enough, its dependencies (kvm, libata,
#: sr_mod, cryptd, ...) then never load. Measured on 6.1 under TCG: udev's coldplug
#: took 59 s, 28 s of it decompressing and linking kvm, and 21 s without these: the
#: command started 35 s sooner. Short: the kernel's command line holds 2048 bytes.
UNNEEDED_DRIVERS = (
    "kvm_amd", "kvm_intel", "ahci", "lpc_ich", "i2c_i801", "i6300esb",
    "psmouse", "evdev", "serio_raw", "powernow_k8",
    "aesni_intel", "sha1_ssse3", "sha256_ssse3", "sha512_ssse3", "ghash_clmulni_intel",
    "crc32_pclmul", "crct10dif_pclmul", "polyval_clmulni",
)


def guest_script(argv: Sequence[str], status_file: Path, bdi_dir: str = "/sys/class/bdi") -> str:
    """The shell line the guest runs: the command, then its status into status_file.

    First it turns on read-ahead for the 9p mounts. vng's initramfs mounts the
    host's / without a cache mode, and for such a mount the kernel sets the
    read-ahead to 0 (fs/9p/vfs_super.c): every page of a mapped library is
    then its own 4 KiB round trip to QEMU. Measured on 6.1 under TCG, a cold
    `import bcc` took 5.1 s and the first BPF compile 9.5 s; with 4 MiB
    read-ahead, 2.1 s and 7.1 s. Reads still go to the host each time (no
    cache mode is changed), so the guest sees the host's files as they are.
    """
    status = shlex.quote(str(status_file))
    bdi = shlex.quote(bdi_dir)
    readahead = (f"for b in {bdi}/9p-*/read_ahead_kb; do "
                 f"[ -w \"$b\" ] && echo {READ_AHEAD_KB} > \"$b\"; done 2>/dev/null; ")
    return f"{readahead}{shlex.join(argv)}; s=$?; echo $s > {status}; exit $s"


#: where virtme-ng looks for virtiofsd besides PATH (VirtioFS._get_virtiofsd_path in
#: virtme/commands/run.py); Debian 13's virtiofsd package installs /usr/libexec/virtiofsd
VIRTIOFSD_PATHS = ("/usr/libexec/virtiofsd", "/usr/lib/virtiofsd/virtiofsd",
                   "/usr/lib/virtiofsd", "/usr/lib/qemu/virtiofsd")


def is_rust_virtiofsd(help_text: str) -> bool:
    """Is this `virtiofsd --help` the Rust virtiofsd's, whose options vng passes?

    Debian 12's qemu-system-common ships QEMU's old C virtiofsd as
    /usr/lib/qemu/virtiofsd. vng means to skip it but, run as root, takes it;
    it then refuses vng's --shared-dir, and vng falls back to 9p without a
    word: a guest without 9p then cannot mount its root (seen on Debian 12 with
    the cloud kernel: "Kernel panic - not syncing: Attempted to kill init!").
    """
    return "--shared-dir" in help_text


def find_virtiofsd() -> str | None:
    """The host's Rust virtiofsd, where vng would find it, or None."""
    for path in (shutil.which("virtiofsd"), *VIRTIOFSD_PATHS):
        if not (path and os.path.isfile(path) and os.access(path, os.X_OK)):
            continue
        try:
            proc = subprocess.run([path, "--help"], capture_output=True, text=True,
                                  timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if is_rust_virtiofsd(proc.stdout + proc.stderr):
            return path
    return None


def guest_root(kernel: Kernel, virtiofsd: Callable[[], str | None] | None = None) -> str:
    """How the guest mounts the host's /: "9p" (vng --force-9p), or "virtiofs" for a
    kernel built without 9p (Debian's cloud flavour), which needs the host's virtiofsd.

    Decided from the kernel's config, never its name; a kernel without a config
    beside it is booted over 9p as before. virtiofsd() (find_virtiofsd() if None)
    finds the host's daemon, asked only for a kernel without 9p. NotSupported when the guest could
    mount no root on this host.
    """
    config = kconfig.read(kernel.config) if kernel.config is not None else None
    if config is None or not kconfig.missing(config, kconfig.NINE_P):
        return "9p"
    no_9p = ", ".join(kconfig.missing(config, kconfig.NINE_P))
    lacking = kconfig.missing(config, kconfig.VIRTIOFS)
    if lacking:
        raise NotSupported(
            f"kernel {kernel.release} has neither 9p ({no_9p} unset) nor virtiofs "
            f"({', '.join(lacking)} unset): the guest could not mount the host's /",
            hint="the lab's guest needs a kernel with 9p or virtiofs")
    if (virtiofsd or find_virtiofsd)() is None:
        raise NotSupported(
            f"kernel {kernel.release} has no 9p ({no_9p} unset), so its guest needs "
            "virtiofs for the host's /, and this host has no virtiofsd",
            hint="run it on a Debian 13 (trixie) or newer host with the virtiofsd package "
            "(apt-get install virtiofsd); Debian 12 packages no virtiofsd that vng can use "
            "(QEMU's old C one in qemu-system-common is not it)")
    return "virtiofs"


def vng_argv(
    kernel: Kernel,
    script: Path,
    *,
    accel: str,
    cpus: int,
    memory_mib: int,
    cwd: Path,
    rwdirs: Sequence[Path] = (),
    qemu: str | None = None,
    vng: str = "vng",
    root: str = "9p",
) -> list[str]:
    """The vng command that boots kernel and runs the shell script (guest_script()) in cwd.

    The script is a file in a directory the guest shares, not vng's --exec text: vng
    passes that on the kernel's command line (base64), whose 2048 bytes a long
    command overflowed ("detected buffer overflow in __fortify_strlen", a kernel BUG
    before the console, and a guest that hangs until the timeout). root is
    guest_root()'s choice: without --force-9p, vng exports / (and the rwdirs) over
    virtiofs through the virtiofsd it finds.
    """
    cmd = [vng, "--run", str(kernel.image), *(["--force-9p"] if root == "9p" else []),
           "--cpus", str(cpus), "--memory", f"{memory_mib}M", "--cwd", str(cwd)]  # fmt: skip
    if accel == "tcg":
        cmd.append("--disable-kvm")
    if qemu:
        cmd += ["--qemu", qemu]
    if needs_overlay(cwd):
        # Writes in the working tree (caches, bytecode) succeed in the guest
        # and vanish at exit, like everywhere else but the rwdirs.
        cmd.append(f"--overlay-rwdir={cwd}")
    for d in (script.parent, *rwdirs):
        cmd.append(f"--rwdir={d}")
    # vng boots with "quiet loglevel=0"; warnings and worse reach the console log.
    cmd += ["--append", f"loglevel=4 modprobe.blacklist={','.join(UNNEEDED_DRIVERS)}"]
    cmd += ["--exec", f"sh {shlex.quote(str(script))}"]
    return cmd


#: the argument vng (virtme-ng 1.42, virtme/commands/run.py) gives QEMU for the guest
#: kernel's console when it is not shown; the wrapper sends that console to a log
VNG_CONSOLE_ARG = "file,id=console,path=/dev/null"
#: the file the wrapper leaves beside the pid file when a boot lacked VNG_CONSOLE_ARG
NO_CONSOLE_ARG = "no-console-arg"


def qemu_wrapper(real_qemu: str, console_log: Path, pid_file: Path) -> str:
    """A QEMU stand-in: vng's kernel console (normally /dev/null) goes to a log, and QEMU's
    pid to pid_file (exec keeps the pid), so that a stop can reach QEMU by its pid. A boot
    (-kernel) without vng's console argument is refused, leaving NO_CONSOLE_ARG: a
    virtme-ng that starts QEMU otherwise would lose the panic reports klptrace reads."""
    missing = pid_file.parent / NO_CONSOLE_ARG
    return f"""#!/bin/sh
# Written by klptrace: keep the guest kernel's console for panic reports, and
# QEMU's pid so that klptrace can stop QEMU whatever becomes of vng.
echo $$ > {shlex.quote(str(pid_file))}
boot= console=
for a do
  shift
  case $a in
    {VNG_CONSOLE_ARG}) a={shlex.quote("file,id=console,path=" + str(console_log))}; console=1 ;;
    -kernel) boot=1 ;;
  esac
  set -- "$@" "$a"
done
if [ -n "$boot" ] && [ -z "$console" ]; then
  echo "klptrace: vng started QEMU without {VNG_CONSOLE_ARG}" >&2
  : > {shlex.quote(str(missing))}
  exit 70
fi
exec {shlex.quote(real_qemu)} "$@"
"""


# A panic; or an exception before the kernel's own handlers are up ("PANIC: early
# exception 0x06 IP ..." from early_fixup_exception()), after which it halts for good.
_PANIC_RE = re.compile(r"Kernel panic - not syncing:.*|PANIC: early exception.*")


def panic_line(console: str) -> str | None:
    """The kernel's panic message in a console log, if it panicked."""
    m = _PANIC_RE.search(console)
    return m.group(0).strip() if m else None


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


# --- running ---------------------------------------------------------------------


def _find_vng() -> str:
    """vng from this Python's environment (the venv), else from PATH."""
    beside = Path(sys.executable).parent / "vng"
    found = str(beside) if beside.is_file() else shutil.which("vng")
    if not found:
        raise KlptraceError("vng (virtme-ng) not found", hint="make setup installs it into .venv")
    return found


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


# SIGHUP too: a closed terminal must not leave a 4 GiB QEMU behind.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Signals:
    """SIGINT, SIGTERM and SIGHUP while run() runs: they stop the guest, then unwind.

    Until vng is started a signal raises Interrupted at once. From then on it is
    only noted and wakes the pump through a pipe: an exception raised inside
    Popen (vng started, its pid unknown) or in the middle of a stop would leave
    QEMU running. The handlers are installed even over an inherited SIG_IGN:
    a shell without job control starts background jobs with SIGINT ignored,
    and the children then inherit it, so `kill -INT` did nothing until the
    guest ended. SIGHUP ignored (nohup) stays ignored. signal.signal works only
    in the main thread; elsewhere the caller's handling applies.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.raising = True
        self._raised = False
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old: dict[int, signal.Handlers | Callable[..., object] | int] = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in _STOP_SIGNALS:
                if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
                    continue
                old = signal.signal(sig, self._note)
                self._old[sig] = signal.SIG_DFL if old is None else old
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        os.close(self._r)
        os.close(self._w)
        if self.signum is not None and not self._raised:
            # it came as the guest finished: the handler from before gets it
            signal.raise_signal(self.signum)

    def fileno(self) -> int:
        """Readable once a signal came."""
        return self._r

    def _note(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
        if self.raising:
            raise self.interrupted("no guest was started")
        try:
            os.write(self._w, b"\0")
        except BlockingIOError:
            pass

    def interrupted(self, done: str) -> Interrupted:
        """The Interrupted to raise for the signal that came."""
        signum = self.signum or signal.SIGINT
        self._raised = True
        return Interrupted(signum, signal.Signals(signum).name, done)


def _proc_state(pid: int) -> tuple[str, int] | None:
    """(state, process group) of a process, from /proc; None when it is gone."""
    st = proc.stat(pid)
    return None if st is None else (st.state, st.pgrp)


def _group_left(pgid: int) -> list[int]:
    """Processes of group pgid that still run (zombies are done)."""
    left = []
    for pid in proc.pids():
        st = proc.stat(pid)
        if st is not None and st.pgrp == pgid and st.state != "Z":
            left.append(pid)
    return left


def _our_qemu(pid_file: Path, marker: str) -> int | None:
    """QEMU's pid from the wrapper's pid file, while that process runs and is ours.

    Ours means marker (the run's private directory) is in its command line, so
    a pid the system reused for another process is never signalled.
    """
    try:
        pid = int(pid_file.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    st = _proc_state(pid)
    if st is None or st[0] == "Z" or marker.encode() not in cmdline:
        return None
    return pid


#: seconds a stop waits after SIGTERM, then after SIGKILL
STOP_GRACE = 5.0


def _stop(proc: subprocess.Popen[bytes], pid_file: Path, marker: str,
          grace: float | None = None) -> list[int]:
    """Stop the guest: QEMU, vng's process group, QEMU by its pid if still there; pids left.

    vng, virtme-run and QEMU share vng's group. QEMU gets the first SIGTERM
    alone, so that virtme-run, its parent, reaps it: sent to the group,
    SIGTERM makes virtme-run exit at once (its handler), and the orphaned QEMU
    stays a zombie until init reaps it. Then the group gets SIGTERM (vng, and a
    QEMU mid-boot whose pid is not known yet), and what is left after grace
    seconds gets SIGKILL. vng is reaped only at the end: while it is a zombie
    its pid, and so the group id, cannot be reused by a stranger.
    """
    wait = STOP_GRACE if grace is None else grace

    def left() -> list[int]:
        pids = _group_left(proc.pid)
        qemu = _our_qemu(pid_file, marker)
        return pids if qemu is None or qemu in pids else [*pids, qemu]

    def settle(what: Callable[[], list[int]]) -> list[int]:
        end = time.monotonic() + wait
        while (pids := what()) and time.monotonic() < end:
            time.sleep(0.05)
        return pids

    def qemu_left() -> list[int]:
        qemu = _our_qemu(pid_file, marker)
        return [] if qemu is None else [qemu]

    def send(pid: int, sig: int, group: bool = False) -> None:
        try:
            (os.killpg if group else os.kill)(pid, sig)
        except ProcessLookupError:
            pass

    def unreaped(pid: int) -> Callable[[], list[int]]:
        return lambda: [pid] if _proc_state(pid) is not None else []

    sigs = [signal.SIGTERM, signal.SIGKILL]
    for qemu in qemu_left():
        send(qemu, signal.SIGTERM)
        if settle(qemu_left):
            sigs = [signal.SIGKILL]  # it ignores SIGTERM
        else:
            settle(unreaped(qemu))  # its parent reaps it before it gets a signal itself
    pids: list[int] = []
    for sig in sigs:
        send(proc.pid, sig, group=True)
        for qemu in qemu_left():
            send(qemu, sig)
        pids = settle(left)
        if not pids:
            break
    try:
        proc.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        pass
    return pids


def _left_note(left: list[int]) -> str:
    """What a stop that failed left, and what to do about it."""
    pids = " ".join(map(str, left))
    return f"but processes of the guest did not stop (pids {pids}): kill -9 {pids}"


#: how long a guest may take to power off once its caller says the command is done
DONE_GRACE_S = 30.0


class _ConsoleWatch:
    """Reads the kernel's console log as it grows (QEMU creates it), for a panic line."""

    def __init__(self, path: Path | None) -> None:
        self.path, self.tail = path, ""
        self.file: BinaryIO | None = None

    def panicked(self) -> bool:
        if self.file is None and self.path is not None:
            try:
                self.file = open(self.path, "rb")  # closed by close()
            except OSError:
                return False
        if self.file is None:
            return False
        text = self.tail + self.file.read().decode(errors="replace")
        self.tail = text[-4096:]  # a line split between two reads
        return panic_line(text) is not None

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _pump(proc: subprocess.Popen[bytes], deadline: float, wake: int,
          err_tail: bytearray, done: Callable[[], bool] | None = None,
          console: Path | None = None) -> str:
    """Copy the child's stdout/stderr to ours until it exits, keeping stderr's tail.

    Returns "exited", "timeout", "signal" once wake is readable, "panic" once the
    kernel's console log shows a panic (an early one halts the guest, which then never
    exits), or "done" when done() has been true for DONE_GRACE_S and the guest still runs.
    """
    watch = _ConsoleWatch(console)
    done_at: float | None = None
    assert proc.stdout is not None and proc.stderr is not None
    sel = selectors.DefaultSelector()
    outs = {proc.stdout.fileno(): sys.stdout, proc.stderr.fileno(): sys.stderr}
    for fd in outs:
        sel.register(fd, selectors.EVENT_READ)
    sel.register(wake, selectors.EVENT_READ)
    try:
        while len(sel.get_map()) > 1 or proc.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout"
            if done_at is None and done is not None and done():
                done_at = time.monotonic()
            if done_at is not None and time.monotonic() - done_at > DONE_GRACE_S:
                return "done"
            if watch.panicked():
                return "panic"
            # once both pipes are at their end, vng is about to exit
            tick = 1.0 if len(sel.get_map()) > 1 else 0.05
            for key, _ in sel.select(timeout=min(left, tick)):
                if key.fd == wake:
                    return "signal"
                data = os.read(key.fd, 65536)
                if not data:
                    sel.unregister(key.fd)
                    continue
                if key.fd == proc.stderr.fileno():
                    err_tail += data
                    del err_tail[:-65536]
                out = outs[key.fd]
                out.flush()
                out.buffer.write(data)
                out.flush()
    finally:
        sel.close()
        watch.close()
    return "exited"


def _stdin() -> int | None:
    """Pass our stdin through when vng can use it (a pipe, a writable file); else /dev/null.

    A terminal would be put in raw mode by QEMU. And vng (virtme-run) opens
    /proc/self/fd/0, 1 and 2 read-write to give them to QEMU; if any of them
    cannot be (fd 0 closed, a socket, a read-only file), it falls back to
    "limited redirection" and sends the guest's stderr to /dev/null, so the
    guest's live lines (a run's per-scenario results) never arrive. Measured
    with vng 1.42: a socket as klptrace's stdin lost every stderr line of the
    guest command. So fd 0 is passed only if it passes vng's own test.
    """
    try:
        if os.isatty(0):
            return subprocess.DEVNULL
        os.close(os.open("/proc/self/fd/0", os.O_RDWR | os.O_CLOEXEC))
    except OSError:
        return subprocess.DEVNULL
    return None


def run(
    kernel: Kernel,
    argv: Sequence[str],
    *,
    cpus: int = defaults.CPUS,
    memory: str = DEFAULT_MEMORY,
    timeout: float = DEFAULT_TIMEOUT,
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
    a guest that does not power off within DONE_GRACE_S after it is stopped
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
    with _Signals() as signals:
        real_qemu = check_host()
        vng = _find_vng()
        accel = accel or choose_accel(kernel, real_qemu)
        note(
            f"accel: {accel.name} ({'hardware' if accel.name == 'kvm' else 'software emulation'}): "
            f"{accel.reason}"
        )
        if cpus_for is not None:
            cpus, why = cpus_for(kernel, accel, cpus)
            if why:
                note(why)
        dirs = [Path(d).resolve() for d in rwdirs]
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        # vng runs virtme-run, which lives beside it.
        env["PATH"] = f"{Path(vng).parent}{os.pathsep}{env.get('PATH', '')}"
        boot = _Boot(kernel, list(argv), vng, real_qemu, accel.name, cpus, memory_mib,
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
    accel: str
    cpus: int
    memory_mib: int
    cwd: Path
    rwdirs: list[Path]
    env: dict[str, str]
    timeout: float
    done: Callable[[], bool] | None = None
    root: str = "9p"  # guest_root()

    def once(self, signals: _Signals, note: Say) -> int:
        """Boot, run, stop: the command's status, or a named error once no QEMU is left."""
        run_dir = Path(tempfile.mkdtemp(prefix="klptrace-vm-"))
        keep = False  # the console log, for an error that names it
        try:
            status_file = run_dir / "status"
            script = run_dir / "command.sh"
            script.write_text(guest_script(self.argv, status_file))
            console_log = run_dir / "console.log"
            pid_file = run_dir / "qemu.pid"
            wrapper = run_dir / "qemu"
            wrapper.write_text(qemu_wrapper(self.real_qemu, console_log, pid_file))
            wrapper.chmod(0o755)
            cmd = vng_argv(
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
                cmd, stdin=_stdin(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=self.env, start_new_session=True,
            )  # fmt: skip
            try:
                how = _pump(proc, started + self.timeout, signals.fileno(), err_tail,
                            self.done, console_log)
            except BaseException:
                _close_pipes(proc)
                _stop(proc, pid_file, str(run_dir))
                raise
            _close_pipes(proc)  # from here no one waits on a full pipe of ours
            if how == "signal":
                assert signals.signum is not None
                note(f"{signal.Signals(signals.signum).name}: stopping the guest")
                left = _stop(proc, pid_file, str(run_dir))
                raise signals.interrupted(_left_note(left) if left else "the guest was stopped")
            if how == "panic":
                _stop(proc, pid_file, str(run_dir))
                keep = True
                console = console_log.read_text(errors="replace")
                raise GuestPanic(panic_line(console) or "(see the console)", console_log)
            if how == "done":
                left = _stop(proc, pid_file, str(run_dir))
                keep = True
                raise GuestStopped(
                    f"the command's work was done but the guest did not power off within "
                    f"{DONE_GRACE_S:g} s, so it was stopped"
                    + (f", {_left_note(left)}" if left else ""),
                    f"the kernel's console is in {console_log}", console_log, None)
            if how == "timeout":
                left = _stop(proc, pid_file, str(run_dir))
                keep = True
                raise GuestTimeout(
                    f"the guest did not finish within {self.timeout:g} s and was stopped"
                    + (f", {_left_note(left)}" if left else ""),
                    f"raise --timeout; the kernel's console is in {console_log}", console_log,
                )
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


def _early_end(console_log: Path, stderr: str, vng_status: int | None) -> GuestError:
    """Why a guest ended with no status: the kernel's panic, QEMU's abort, or neither."""
    if (console_log.parent / NO_CONSOLE_ARG).exists():
        return GuestStopped(
            f"virtme-ng started QEMU without `{VNG_CONSOLE_ARG}`, the console argument "
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
