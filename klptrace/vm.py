"""A disposable guest: boot a kernel with virtme-ng, run one command, bring back its status.

`vng` runs as an external command. The guest sees the host's / read-only over
9p with copy-on-write overlays (writes vanish at exit), runs the command as
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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from klptrace.errors import KlptraceError
from klptrace.kernels import Kernel, cache_dir

DEFAULT_MEMORY = "4G"
DEFAULT_TIMEOUT = 1800.0
MIN_MEMORY_MIB = 512

# Directories that vng already gives a copy-on-write overlay in the guest.
_VNG_OVERLAID = ("/etc", "/lib", "/home", "/opt", "/srv", "/usr", "/var", "/tmp")

# virtme-ng-init looks for udevd here; without it the guest has no
# /dev/virtio-ports/* links, so vng can show no output and return no status.
_UDEVD = ("/usr/lib/systemd/systemd-udevd", "/lib/systemd/systemd-udevd")

Say = Callable[[str], None]


def parse_memory(text: str) -> int:
    """Guest memory in MiB from a QEMU-style size: 4G, 512M, 4096 (MiB), 1.5G."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", text)
    if not m:
        raise KlptraceError(f"bad memory size {text!r}", hint="use a size such as 4G or 2048M")
    scale = {"k": 1 / 1024, "": 1, "m": 1, "g": 1024, "t": 1024 * 1024}[m.group(2).lower()]
    mib = int(float(m.group(1)) * scale)
    if mib < MIN_MEMORY_MIB:
        raise KlptraceError(
            f"memory size {text!r} is too small", hint=f"give the guest at least {MIN_MEMORY_MIB}M"
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


# What the headers declare when a transition rewrites scheduler code: the
# cond_resched static call that sched_dynamic_klp_enable() retargets (v6.4 to
# v6.15), or the klp_sched_try_switch_key static key that a transition's start
# and end flip (v6.4 on; since v6.16 tested in __schedule()).
_SCHED_TEXT_PATCHING = (
    ("livepatch_sched.h", re.compile(r"\bklp_sched_try_switch_key\b")),
    ("sched.h", re.compile(r"\bsched_dynamic_klp_enable\s*\(")),
)


def transitions_patch_scheduler(kernel: Kernel) -> bool:
    """Does each livepatch transition of this kernel rewrite scheduler code all CPUs run?

    Since Linux kernel commit e3ff7c609f39 ("livepatch,sched: Add livepatch
    task switching to cond_resched()") (in v6.4), a transition's start and end
    retarget the cond_resched static call (include/linux/sched.h declares
    sched_dynamic_klp_enable()), patching every cond_resched() call site, or,
    without PREEMPT_DYNAMIC's static calls, flip klp_sched_try_switch_key
    (include/linux/livepatch_sched.h), a jump label in each of them. Commit
    676e8cf70cb0 ("sched,livepatch: Untangle cond_resched() and
    live-patching") (in v6.16) dropped the cond_resched() part but kept the
    key, now tested in __schedule() (kernel/sched/core.c), so every transition
    still rewrites code that every CPU runs: a 7.3.4 guest with 2 vCPUs under
    TCG panicked with "Oops: int3" at __schedule+0xa4 in an atomic-replace
    transition. The kernel's headers tell, by what they declare.
    """
    src = kernel.root / "usr" / "src"
    return any(rx.search(h.read_text(errors="replace"))
               for name, rx in _SCHED_TEXT_PATCHING
               for h in src.glob(f"*/include/linux/{name}"))


def guest_cpus(kernel: Kernel, accel: Accel, cpus: int) -> tuple[int, str]:
    """The vCPUs to boot with, and why they are fewer than asked ('' when they are not).

    Under QEMU's multi-threaded TCG (Debian 12's QEMU 7.2), a kernel whose
    transitions rewrite scheduler code soon panics with "Oops: int3" in code
    another vCPU was running (a stale breakpoint of the text patching).
    Measured: 6.12 with 2 vCPUs panicked within 200 livepatch enable/disable
    cycles in both of 2 tries; 6.1 with 2 vCPUs and 6.12 with 1 completed
    them; 7.3.4 with 2 vCPUs panicked in the kernel test suite's third test.
    KLPTRACE_TCG_SMP=1 keeps the vCPUs asked for (for a QEMU without that race).
    """
    if (accel.name != "tcg" or cpus == 1 or os.environ.get("KLPTRACE_TCG_SMP") == "1"
            or not transitions_patch_scheduler(kernel)):
        return cpus, ""
    return 1, (f"cpus: 1, not {cpus}: under emulation, {kernel.release}'s livepatch "
               "transitions rewrite scheduler code that other vCPUs run, which QEMU's "
               "multi-threaded TCG gets wrong (guest panics); KLPTRACE_TCG_SMP=1 overrides")


# --- the vng command line -------------------------------------------------------


def needs_overlay(path: Path) -> bool:
    """Is path outside the directories that vng already overlays (so read-only)?"""
    return not any(path == Path(d) or Path(d) in path.parents for d in _VNG_OVERLAID)


#: read-ahead for the guest's 9p mounts, in KiB (see guest_script)
READ_AHEAD_KB = 4096


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


def vng_argv(
    kernel: Kernel,
    argv: Sequence[str],
    *,
    status_file: Path,
    accel: str,
    cpus: int,
    memory_mib: int,
    cwd: Path,
    rwdirs: Sequence[Path] = (),
    qemu: str | None = None,
    vng: str = "vng",
) -> list[str]:
    """The vng command that boots kernel and runs argv in cwd."""
    cmd = [vng, "--run", str(kernel.image), "--force-9p",
           "--cpus", str(cpus), "--memory", f"{memory_mib}M", "--cwd", str(cwd)]  # fmt: skip
    if accel == "tcg":
        cmd.append("--disable-kvm")
    if qemu:
        cmd += ["--qemu", qemu]
    if needs_overlay(cwd):
        # Writes in the working tree (caches, bytecode) succeed in the guest
        # and vanish at exit, like everywhere else but the rwdirs.
        cmd.append(f"--overlay-rwdir={cwd}")
    for d in (status_file.parent, *rwdirs):
        cmd.append(f"--rwdir={d}")
    # vng boots with "quiet loglevel=0"; warnings and worse reach the console log.
    cmd += ["--append", "loglevel=4"]
    cmd += ["--exec", guest_script(argv, status_file)]
    return cmd


def qemu_wrapper(real_qemu: str, console_log: Path) -> str:
    """A QEMU stand-in that sends vng's kernel console (normally /dev/null) to a log."""
    return f"""#!/bin/sh
# Written by klptrace: keep the guest kernel's console for panic reports.
for a do
  shift
  case $a in
    file,id=console,path=/dev/null) a={shlex.quote("file,id=console,path=" + str(console_log))} ;;
  esac
  set -- "$@" "$a"
done
exec {shlex.quote(real_qemu)} "$@"
"""


_PANIC_RE = re.compile(r"Kernel panic - not syncing:.*")


def panic_line(console: str) -> str | None:
    """The kernel's panic message in a console log, if it panicked."""
    m = _PANIC_RE.search(console)
    return m.group(0).strip() if m else None


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


def _pump(proc: subprocess.Popen[bytes], deadline: float) -> bool:
    """Copy the child's stdout/stderr to ours until it exits; False on timeout."""
    assert proc.stdout is not None and proc.stderr is not None
    sel = selectors.DefaultSelector()
    outs = {proc.stdout: sys.stdout, proc.stderr: sys.stderr}
    for pipe in outs:
        sel.register(pipe, selectors.EVENT_READ)
    while sel.get_map():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        for key, _ in sel.select(timeout=min(left, 1.0)):
            data = os.read(key.fd, 65536)
            if not data:
                sel.unregister(key.fileobj)
                continue
            out = outs[key.fileobj]  # type: ignore[index]
            out.flush()
            out.buffer.write(data)
            out.flush()
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return False
    return True


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End vng and its QEMU (its own process group)."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _stdin() -> int | None:
    """Pass our stdin through when it is a pipe or file; else /dev/null.

    vng falls back to limited I/O when fd 0 is closed, and a terminal would be
    put in raw mode by QEMU.
    """
    try:
        if os.isatty(0):
            return subprocess.DEVNULL
        os.fstat(0)
    except OSError:
        return subprocess.DEVNULL
    return None


def run(
    kernel: Kernel,
    argv: Sequence[str],
    *,
    cpus: int = 2,
    memory: str = DEFAULT_MEMORY,
    timeout: float = DEFAULT_TIMEOUT,
    rwdirs: Sequence[Path] = (),
    cwd: Path | None = None,
    accel: Accel | None = None,
    say: Say | None = None,
) -> int:
    """Boot kernel, run argv as root in the guest, stream its output; return its status.

    rwdirs are host directories the guest writes through to (results); they are
    created if missing. Raises KlptraceError on a panic, a timeout, or a guest
    that stopped before argv finished.
    """
    note = say or (lambda _m: None)
    if not argv:
        raise KlptraceError("no command to run in the guest", hint="klptrace vm -- CMD ...")
    memory_mib = parse_memory(memory)
    if cpus < 1:
        raise KlptraceError(f"--cpus {cpus}: need at least one CPU")
    if not kernel.image.is_file():
        raise KlptraceError(f"no kernel image at {kernel.image}")
    real_qemu = check_host()
    vng = _find_vng()
    accel = accel or choose_accel(kernel, real_qemu)
    note(
        f"accel: {accel.name} ({'hardware' if accel.name == 'kvm' else 'software emulation'}): "
        f"{accel.reason}"
    )
    cpus, why = guest_cpus(kernel, accel, cpus)
    if why:
        note(why)
    dirs = [Path(d).resolve() for d in rwdirs]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)

    run_dir = Path(tempfile.mkdtemp(prefix="klptrace-vm-"))
    status_file = run_dir / "status"
    console_log = run_dir / "console.log"
    wrapper = run_dir / "qemu"
    wrapper.write_text(qemu_wrapper(real_qemu, console_log))
    wrapper.chmod(0o755)
    cmd = vng_argv(
        kernel, argv, status_file=status_file, accel=accel.name, cpus=cpus,
        memory_mib=memory_mib, cwd=(cwd or Path.cwd()).resolve(), rwdirs=dirs,
        qemu=str(wrapper), vng=vng,
    )  # fmt: skip
    env = dict(os.environ)
    # vng runs virtme-run, which lives beside it.
    env["PATH"] = f"{Path(vng).parent}{os.pathsep}{env.get('PATH', '')}"
    note(f"booting {kernel.release} ({cpus} CPUs, {memory_mib}M)")
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd, stdin=_stdin(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=env, start_new_session=True,
    )  # fmt: skip
    try:
        finished = _pump(proc, started + timeout)
    except BaseException:
        _stop(proc)
        raise
    if not finished:
        _stop(proc)
        raise KlptraceError(
            f"the guest did not finish within {timeout:g} s",
            hint=f"raise --timeout; the kernel's console is in {console_log}",
        )
    note(f"guest done in {time.monotonic() - started:.1f} s")
    try:
        status = int(status_file.read_text().strip())
    except (OSError, ValueError):
        status = None
    if status is not None:
        shutil.rmtree(run_dir, ignore_errors=True)
        return status
    console = console_log.read_text(errors="replace") if console_log.exists() else ""
    panic = panic_line(console)
    if panic:
        raise KlptraceError(
            f"the guest kernel panicked: {panic}", hint=f"the kernel's console is in {console_log}"
        )
    if not console:
        raise KlptraceError(
            f"vng failed before the guest booted (exit {proc.returncode})",
            hint="see vng's messages above",
        )
    raise KlptraceError(
        f"the guest stopped before the command finished (vng exit {proc.returncode})",
        hint=f"the kernel's console is in {console_log}",
    )
