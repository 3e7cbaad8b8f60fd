"""The vng (virtme-ng) command line: how a guest is booted, and what it runs.

vng runs as an external command; what klptrace relies on of its internals (the
console argument it gives QEMU, where it looks for virtiofsd, how it opens
fd 0) is named here, with the vng version it was read from.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from klptrace.errors import KlptraceError, NotSupported
from klptrace.lab import kconfig
from klptrace.lab.accel import AccelName
from klptrace.lab.kernels import Kernel

# Directories that vng already gives a copy-on-write overlay in the guest.
_VNG_OVERLAID = ("/etc", "/lib", "/home", "/opt", "/srv", "/usr", "/var", "/tmp")


def find_vng() -> str:
    """vng from this Python's environment (the venv), else from PATH."""
    beside = Path(sys.executable).parent / "vng"
    found = str(beside) if beside.is_file() else shutil.which("vng")
    if not found:
        raise KlptraceError("vng (virtme-ng) not found", hint="make setup installs it into .venv")
    return found


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
    accel: AccelName,
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
    if accel == AccelName.TCG:
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


def stdin() -> int | None:
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
