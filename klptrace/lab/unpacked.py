"""A guest kernel unpacked into the cache, or given as a path: the Kernel, and how one
release's packages are downloaded, unpacked (`dpkg -x`) and made usable there (the
headers as a kbuild KDIR, the modules indexed by depmod), in either package layout
(see kernels.py).
"""

from __future__ import annotations

import dataclasses
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

from klptrace.errors import KlptraceError, NotSupported
from klptrace.lab import archive, kconfig
from klptrace.lab.archive import Package, SuiteApt
from klptrace.lab.defaults import cache_dir
from klptrace.lab.specs import spec_hint

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Kernel:
    """A guest kernel: its image, its modules and (if known) its headers and suite."""

    release: str
    image: Path
    modules_dir: Path
    kdir: Path | None
    root: Path
    suite: str | None = None  # the Debian suite it came from; None for a path
    config: Path | None = None  # its build configuration, when shipped beside it


#: the file that marks a complete unpacked kernel: its release, suite and packages
MARKER = ".klptrace-kernel.json"


def cached_releases(cache: Path | None = None) -> list[str]:
    """Releases already unpacked and complete in the cache."""
    base = (cache or cache_dir()) / "kernels"
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / MARKER).is_file())


def kernel_at(root: Path, release: str, suite: str | None = None) -> Kernel:
    """The kernel unpacked at root, in either package layout."""
    if suite is None:
        try:
            suite = json.loads((root / MARKER).read_text()).get("suite")
        except (OSError, ValueError):
            suite = None
    modules_dir = root / "lib" / "modules" / release  # lib is usr/lib in the new layout
    kdir = root / "usr" / "src" / f"linux-headers-{release}"
    image = root / "boot" / f"vmlinuz-{release}"
    new_layout = root / "usr" / "lib" / "modules" / release / "vmlinuz"
    if not image.is_file() and new_layout.is_file():
        image = new_layout
    return Kernel(
        release=release,
        image=image,
        modules_dir=modules_dir,
        kdir=kdir if (kdir / "Makefile").is_file() else None,
        root=root,
        suite=suite,
        config=_config_in(root, release),
    )


def _config_in(root: Path, release: str) -> Path | None:
    """The config that a release's packages put under root, in either layout."""
    for path in (root / "boot" / f"config-{release}",
                 root / "usr" / "lib" / "modules" / release / "config",
                 root / "lib" / "modules" / release / "config"):
        if path.is_file():
            return path
    return None


def check_config(release: str, config: Path | None, say: Progress) -> None:
    """Refuse (NotSupported, exit 4) a kernel whose config lacks what klptrace needs."""
    if config is None:
        say(f"kernel {release}: no config beside its image, so whether it can livepatch "
            "is known only once it boots")
        return
    lacking = kconfig.missing(kconfig.read(config))
    if lacking:
        raise NotSupported(
            f"kernel {release} cannot be traced: its config leaves {', '.join(lacking)} "
            f"unset ({config})",
            hint="klptrace needs a kernel built with " + ", ".join(
                f"{n}=y" for n in kconfig.REQUIRED) + " (as Debian's amd64 kernels are; "
            "its arm64 kernels leave CONFIG_LIVEPATCH unset)")


def relink_absolute(root: Path) -> list[Path]:
    """Point absolute symlinks under root that name a path inside root into root.

    The packages link lib/modules/<release>/build to /usr/src/linux-headers-<release>;
    unpacked elsewhere, that link must lead to the unpacked headers. The new
    links are relative, so they hold in the guest (which sees the host's /) too.
    """
    changed = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            link = Path(dirpath) / name
            if not link.is_symlink():
                continue
            target = os.readlink(link)
            if not target.startswith("/"):
                continue
            inside = root / target.lstrip("/")
            if not os.path.lexists(inside):
                continue
            link.unlink()
            link.symlink_to(os.path.relpath(inside, link.parent))
            changed.append(link)
    return changed


def rewrite_headers_makefile(kdir: Path, root: Path) -> None:
    """Make the headers' Makefile name the unpacked trees, not /usr/src.

    It includes the -common tree's Makefile; the new layout's also sets
    KBUILD_OUTPUT=/usr/src/linux-headers-<release>, which kbuild requires to exist.
    """
    makefile = kdir / "Makefile"
    text = makefile.read_text()
    new = re.sub(r"(?m)^(\s*(?:include\s+|[A-Za-z_]+\s*[:?]?=\s*))/usr/src/",
                 rf"\g<1>{root}/usr/src/", text)
    if new != text:
        makefile.write_text(new)


def merge_usr(root: Path) -> bool:
    """Link root/lib to usr/lib when only usr/lib/modules was unpacked; True if linked.

    depmod -b and vng look for <root>/lib/modules; on a merged-/usr system
    /lib is that link, and the new layout's packages ship usr/lib only.
    """
    if (root / "usr" / "lib" / "modules").is_dir() and not os.path.lexists(root / "lib"):
        (root / "lib").symlink_to("usr/lib")
        return True
    return False


def config_package(release: str, packages: Sequence[str]) -> str:
    """The package that holds a release's config: linux-base-<release> (the new layout's,
    well under 1 MB), else the image package itself (boot/config-<release>)."""
    base = f"linux-base-{release}"
    return base if base in packages else f"linux-image-{release}"


def _unpack(apt: SuiteApt, release: str, dest: Path, progress: Progress) -> list[str]:
    """Download and unpack one release's packages into dest; return the .deb names.

    The package with the config comes first, and a kernel that cannot
    livepatch is refused before the rest (the image and modules) is fetched.
    """
    shown = {p.name: p for p in apt.show(f"linux-image-{release}", f"linux-headers-{release}")}
    packages = release_packages(release, shown.get(f"linux-image-{release}"),
                                shown.get(f"linux-headers-{release}"))
    debs = dest / ".debs"
    debs.mkdir(parents=True)
    first = config_package(release, packages)
    rest = [p for p in packages if p != first]
    progress(f"downloading from {apt.suite}: {first} (its config first), then {' '.join(rest)}")
    started = time.monotonic()
    apt.download([first], debs)
    unpacked: set[str] = set()

    def unpack_all() -> None:
        for deb in sorted(debs.glob("*.deb")):
            if deb.name not in unpacked:
                subprocess.run(["dpkg", "-x", str(deb), str(dest)], check=True)
                unpacked.add(deb.name)

    unpack_all()
    check_config(release, _config_in(dest, release), progress)
    if rest:
        apt.download(rest, debs)
    names = sorted(p.name for p in debs.glob("*.deb"))
    size = sum((debs / n).stat().st_size for n in names)
    progress(f"downloaded {size / 1e6:.0f} MB in {time.monotonic() - started:.0f} s; "
             f"unpacking {len(names)} packages")
    unpack_all()
    shutil.rmtree(debs)
    return names


def _finish(root: Path, release: str) -> None:
    """Make an unpacked tree usable: KDIR in place, modules indexed."""
    merge_usr(root)
    relink_absolute(root)
    kdir = root / "usr" / "src" / f"linux-headers-{release}"
    if (kdir / "Makefile").is_file():
        rewrite_headers_makefile(kdir, root)
    depmod = shutil.which("depmod") or "/sbin/depmod"
    if not os.path.exists(depmod):
        raise KlptraceError("depmod not found", hint="apt-get install kmod (make setup does)")
    # depmod reads the modules (.ko or .ko.xz), never System.map (a stub in the new layout).
    proc = subprocess.run([depmod, "-b", str(root), release], capture_output=True, text=True)
    if proc.returncode != 0:
        raise KlptraceError(f"depmod failed for {release}: {archive.last_lines(proc.stderr)}")


def fetch(apt: SuiteApt, release: str, base: Path, progress: Progress) -> Kernel:
    """Fetch one release into base/kernels/<release>, atomically."""
    kernels = base / "kernels"
    kernels.mkdir(parents=True, exist_ok=True)
    final = kernels / release
    tmp = Path(tempfile.mkdtemp(prefix=f".{release}.", dir=kernels))
    try:
        debs = _unpack(apt, release, tmp, progress)
        # _finish writes the final path into the Makefile, so move first.
        if final.exists():
            shutil.rmtree(final)  # an incomplete earlier attempt (no marker)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    started = time.monotonic()
    _finish(final, release)
    progress(f"depmod and the headers' paths: {time.monotonic() - started:.0f} s")
    kernel = kernel_at(final, release, apt.suite)
    if not kernel.image.is_file():
        raise KlptraceError(f"the packages of {release} hold no kernel image "
                            f"(boot/vmlinuz-{release} or usr/lib/modules/{release}/vmlinuz)")
    marker = {"release": release, "suite": apt.suite, "debs": debs}
    (final / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
    progress(f"kernel {release} ready in {final}")
    return kernel


def note_suite(root: Path, suite: str) -> None:
    """Record the suite in a marker written before klptrace recorded suites."""
    marker = json.loads((root / MARKER).read_text())
    if marker.get("suite") != suite:
        marker["suite"] = suite
        (root / MARKER).write_text(json.dumps(marker, indent=1) + "\n")


def kernel_from_path(text: str) -> Kernel:
    """A kernel given as an image path: boot/vmlinuz-<rel> with ../lib/modules/<rel>
    beside it, or usr/lib/modules/<rel>/vmlinuz."""
    image = Path(text).expanduser().resolve()
    if not image.is_file():
        raise KlptraceError(f"no kernel image at {image}", hint=spec_hint())
    if image.name == "vmlinuz" and image.parent.parent.name == "modules":
        mods, release = image.parent.parent, image.parent.name
        root = mods.parent.parent.parent if mods.parent.parent.name == "usr" else mods.parent.parent
    else:
        root = image.parent.parent
        mods = root / "lib" / "modules"
        release = image.name.removeprefix("vmlinuz-") if image.name.startswith("vmlinuz-") else ""
        if not release:
            found = sorted(p.name for p in mods.iterdir()) if mods.is_dir() else []
            if len(found) != 1:
                raise KlptraceError(
                    f"cannot tell the release of {image}",
                    hint=f"name it vmlinuz-<release>, or keep exactly one <release> in {mods}",
                )
            release = found[0]
    if not (mods / release).is_dir():
        raise KlptraceError(
            f"no modules for {release} beside {image}", hint=f"expected {mods / release}"
        )
    build = mods / release / "build"
    kdir = build.resolve() if (build / "Makefile").is_file() else None
    return dataclasses.replace(
        kernel_at(root, release), image=image, modules_dir=mods / release, kdir=kdir,
        suite=None, config=kconfig.beside(image, release) or _config_in(root, release),
    )


def header_packages(headers: Package) -> list[str]:
    """Of linux-headers-<release>'s dependencies, those kbuild needs unpacked."""
    return [name for name in headers.depends
            if re.match(r"^linux-(headers-.*-common.*|kbuild-.*)$", name)]


def release_packages(release: str, image: Package | None, headers: Package | None) -> list[str]:
    """The packages to unpack for a release, in either layout.

    The new layout's linux-image-<release> is a metapackage: the image, the
    modules and the base (config, modules.builtin) are its dependencies named
    after the release. The headers bring their -common tree and kbuild.
    """
    names = [f"linux-image-{release}"]
    for pkg in (image, headers):
        if pkg is None:
            continue
        if pkg is headers:
            names.append(pkg.name)
            names += header_packages(pkg)
        names += [d for d in pkg.depends if d.startswith("linux-") and d.endswith(f"-{release}")]
    return list(dict.fromkeys(names))
