"""Build roots: a Debian suite's minimal userland, made once with mmdebstrap, to run kbuild in.

A kernel's headers call the compiler the kernel was built with (trixie's
kernels gcc-14, sid's gcc-15) and ship kbuild programs linked against that
suite's C library. When the host lacks that compiler, the modules are built in
`<cache>/roots/<suite>-<compiler>/`: made once (under a lock, in a temporary
directory renamed into place only when complete, so a half-made root is never
used), then reused by every build. kbuild runs there in a private mount
namespace that binds the kernel's tree and the build directory at the same
absolute paths and mounts /proc (objtool reads it); the namespace's mounts
end with its last process, after a success, a failure or a kill alike.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from klptrace.errors import KlptraceError
from klptrace.lab.defaults import locked

Say = Callable[[str], None]

#: what kbuild needs beside the compiler (pahole for the modules' BTF, kmod, objtool's libelf)
ROOT_PACKAGES = ("make", "libc6-dev", "libelf-dev", "pahole", "kmod", "bc", "bison", "flex",
                 "libssl-dev")
_MARKER = ".klptrace-root.json"
_PATH = "PATH=/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Compiler:
    """The compiler a kernel's headers call, and the Debian package that has it."""

    command: str  # what kbuild runs: x86_64-linux-gnu-gcc-14
    version_text: str  # the kernel's CONFIG_CC_VERSION_TEXT
    package: str | None  # gcc-14; None when the config does not tell


def kbuild_cc(kernelvariables: str) -> str | None:
    """The compiler command in Debian's .kernelvariables, as kbuild expands it.

    Assignments inside ifeq/ifneq blocks are for cross builds and left out.
    """
    values: dict[str, str] = {}
    depth = 0
    for line in kernelvariables.splitlines():
        word = line.split(None, 1)[0] if line.strip() else ""
        if word in ("ifeq", "ifneq", "ifdef", "ifndef"):
            depth += 1
        elif word == "endif":
            depth = max(0, depth - 1)
        m = re.match(r"^\s*(?:override\s+)?([A-Z_]+)\s*[:?]?=\s*(.*)$", line)
        if depth == 0 and m:
            values[m.group(1)] = m.group(2).strip()
    cc = values.get("CC")
    if not cc:
        return None
    cc = re.sub(r"\$\(if (?:[^()]|\([^()]*\))*\)", "", cc)  # the optional ccache
    cc = re.sub(r"\$\((\w+)\)", lambda m: values.get(m.group(1), ""), cc)
    words = cc.split()
    return words[-1] if words else None


def config_compiler(config: str) -> tuple[str, str | None]:
    """CONFIG_CC_VERSION_TEXT of a kernel .config, and the Debian package of that compiler."""
    m = re.search(r'(?m)^CONFIG_CC_VERSION_TEXT="([^"]*)"', config)
    text = m.group(1) if m else ""
    for option, name in (("CONFIG_GCC_VERSION", "gcc"), ("CONFIG_CLANG_VERSION", "clang")):
        v = re.search(rf"(?m)^{option}=(\d+)$", config)
        if v and int(v.group(1)) > 0:
            return text, f"{name}-{int(v.group(1)) // 10000}"
    return text, None


def kernel_compiler(kdir: Path) -> Compiler:
    """The compiler that kbuild will call for the headers at kdir."""
    try:
        config = (kdir / ".config").read_text(errors="replace")
    except OSError:
        config = ""
    text, package = config_compiler(config)
    try:
        command = kbuild_cc((kdir / ".kernelvariables").read_text(errors="replace"))
    except OSError:
        command = None
    if command is None:
        command = text.split()[0] if text.split() else "gcc"
    return Compiler(command, text or "unknown (no CONFIG_CC_VERSION_TEXT)", package)


def codename_of(suite: str) -> str:
    """The release a suite belongs to: trixie of trixie-backports, sid of sid."""
    return suite.split("-", 1)[0]


def root_name(codename: str, compiler: Compiler) -> str:
    """A build root's directory name: one per release and compiler (sid's moves on)."""
    return f"{codename}-{compiler.package}"


def roots_dir(cache: Path) -> Path:
    """Where the build roots live."""
    return cache / "roots"


def is_root(path: Path) -> bool:
    """Is path a complete build root (its marker written last)?"""
    return (path / _MARKER).is_file()


def mmdebstrap_argv(codename: str, packages: Sequence[str], target: Path, sources: Path,
                    aptopts: Sequence[str] = ()) -> list[str]:
    """The mmdebstrap command that makes a build root, wrapped in a private mount namespace.

    The sources file is the mirror argument: its lines become the root's
    sources, so the root uses the archive the host's apt sources name.
    mmdebstrap does not read the host's apt.conf.d, so the host's fetch options
    (aptopts, Key=value: a proxy, Check-Valid-Until) are handed on.
    """
    opts = [f'--aptopt={k} "{v}"' for k, _, v in (o.partition("=") for o in aptopts)]
    return ["unshare", "--mount", "--propagation", "private", "--",
            "mmdebstrap", "--variant=apt", "--mode=root", "--include=" + ",".join(packages),
            *opts, codename, str(target), str(sources)]  # fmt: skip


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise KlptraceError(
            f"{what} needs root (mmdebstrap, mount namespaces and chroot)",
            hint="run this klptrace command as root once the build root is needed, "
            "or install the kernel's compiler on the host",
        )


def ensure_root(codename: str, compiler: Compiler, sources_text: str, cache: Path,
                say: Say, aptopts: Sequence[str] = ()) -> Path:
    """The build root of codename with the kernel's compiler, made if missing."""
    if compiler.package is None:
        raise KlptraceError(f"cannot tell which Debian package has {compiler.command}",
                            hint="the headers' .config has no CONFIG_GCC_VERSION")
    base = roots_dir(cache)
    final = base / root_name(codename, compiler)
    if is_root(final):
        return final
    _need_root(f"making {codename}'s build root")
    if not shutil.which("mmdebstrap"):
        raise KlptraceError("mmdebstrap not found: it makes the build root for this kernel",
                            hint="apt-get install mmdebstrap (make setup does)")
    base.mkdir(mode=0o755, parents=True, exist_ok=True)
    with locked(base):
        if is_root(final):
            return final  # made by another klptrace meanwhile
        _make_root(codename, compiler, sources_text, aptopts, base, final, say)
    return final


def _make_root(codename: str, compiler: Compiler, sources_text: str, aptopts: Sequence[str],
               base: Path, final: Path, say: Say) -> None:
    """mmdebstrap into a temporary directory, check it, rename it to final."""
    if final.exists():
        shutil.rmtree(final)  # an attempt that did not finish; its mounts died with it
    for stale in base.glob(f".{final.name}.*"):
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=base))
    target, sources = work / "root", work / "sources"
    sources.write_text(sources_text)
    packages = [compiler.package or "", *ROOT_PACKAGES]
    say(f"making {codename}'s build root for {compiler.command} with mmdebstrap "
        f"(once; about half a minute): {final}")
    started = time.monotonic()
    try:
        proc = subprocess.run(mmdebstrap_argv(codename, packages, target, sources, aptopts),
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            tail = " / ".join((proc.stderr or proc.stdout).strip().splitlines()[-4:])
            raise KlptraceError(f"mmdebstrap failed to make {codename}'s build root: {tail}",
                                hint="check the network and the host's apt sources")
        if not _in_root(target, compiler.command):
            raise KlptraceError(f"{codename}'s build root has no {compiler.command}",
                                hint=f"does {codename} have the package {compiler.package}?")
        (target / _MARKER).write_text(json.dumps(
            {"codename": codename, "packages": packages, "made_s": round(
                time.monotonic() - started, 1)}) + "\n")
        target.rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f"build root {final} made in {time.monotonic() - started:.0f} s")


def _in_root(root: Path, command: str) -> bool:
    """Does the root have command on its PATH?"""
    return any((root / d / command).exists() for d in ("usr/bin", "usr/local/bin", "bin"))


def mount_points(root: Path, dirs: Sequence[Path]) -> list[Path]:
    """The directories to bind at the same paths inside root, made there if missing.

    A path that crosses a symlink inside the root is refused: the root's
    absolute links would lead outside it.
    """
    out = []
    for d in dirs:
        d = Path(os.path.abspath(d))
        inside = root
        for part in d.parts[1:]:
            inside = inside / part
            if inside.is_symlink():
                raise KlptraceError(f"cannot bind {d} into the build root {root}: "
                                    f"{inside} is a symlink there",
                                    hint="set KLPTRACE_CACHE to a path under /work, /srv "
                                    "or /home")
        inside.mkdir(parents=True, exist_ok=True)
        if d not in out:
            out.append(d)
    return out


_IN_NAMESPACE = """\
set -e
root=$1; shift
while [ "$1" != -- ]; do mount --bind "$1" "$root$1"; shift; done
shift
mount -t proc proc "$root/proc"
exec chroot "$root" "$@"
"""


def run_argv(root: Path, binds: Sequence[Path], argv: Sequence[str]) -> list[str]:
    """The command that runs argv in root with binds at their own paths and /proc mounted."""
    return ["unshare", "--mount", "--propagation", "private", "--",
            "/bin/sh", "-c", _IN_NAMESPACE, "sh", str(root), *map(str, binds), "--",
            "/usr/bin/env", "-i", _PATH, "HOME=/root", "LC_ALL=C", *argv]  # fmt: skip


def run_in_root(root: Path, binds: Sequence[Path], argv: Sequence[str]
                ) -> subprocess.CompletedProcess[str]:
    """Run argv in the build root, as root, and return its output."""
    _need_root(f"building in the build root {root}")
    points = mount_points(root, binds)
    return subprocess.run(run_argv(root, points, argv), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
