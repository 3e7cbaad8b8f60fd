"""Guest kernels: stock Debian kernels unpacked into a cache, never installed.

A kernel is fetched with `apt-get download` through a private apt state per
suite (archive.py), unpacked with `dpkg -x` into `<cache>/kernels/<release>/`,
and made usable there: the headers work as a kbuild KDIR and `depmod` has
indexed the modules. The host's /boot, its bootloader and its apt state are
never touched.

Each release comes in Debian's amd64 flavours: `amd64` (generic), `rt-amd64`
(PREEMPT_RT) and `cloud-amd64` (no 9p, see vm.py). Before the image is
downloaded, the package that holds the kernel's config is fetched and read
(kconfig.py): a kernel that cannot livepatch is refused then.

Two package layouts exist. Up to 6.12, `linux-image-<rel>` holds
boot/vmlinuz-<rel> and lib/modules/<rel>. Since the 6.13-era packaging it is
a metapackage depending on `linux-binary-<rel>` (usr/lib/modules/<rel>/vmlinuz),
`linux-modules-<rel>` (.ko.xz under usr/lib/modules) and `linux-base-<rel>`
(whose System.map is a one-line stub: nothing here reads it).
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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from klptrace.errors import KlptraceError, NotSupported, UsageError
from klptrace.lab import archive, kconfig
from klptrace.lab.archive import Package, SuiteApt
from klptrace.lab.defaults import cache_dir, locked

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


@dataclass(frozen=True)
class Track:
    """A line of Debian kernels that a short name stands for: a suite's linux-image-<flavour>."""

    name: str
    suites: tuple[str, ...]
    about: str


# Short names for --kernel. A track's kernel is the release that the newest
# linux-image-<flavour> metapackage among its suites depends on, so a point
# release needs no change here. 6.12 is bookworm-backports' kernel: built with gcc-12 like 6.1,
# it builds on a Debian 12 host. (bookworm-security's LTS linux-6.12 releases,
# e.g. 6.12.117+deb12-amd64, are reachable as releases.)
TRACKS: dict[str, Track] = {
    t.name: t
    for t in (
        Track("6.1", ("bookworm", "bookworm-updates", "bookworm-security"),
              "Debian 12's stock kernel"),
        Track("6.12", ("bookworm-backports",), "Debian 12's backports kernel"),
        Track("trixie", ("trixie", "trixie-updates", "trixie-security"),
              "Debian 13's stock kernel"),
        Track("trixie-backports", ("trixie-backports",), "Debian 13's backports kernel"),
        Track("sid", ("sid",), "Debian unstable's kernel"),
    )
}  # fmt: skip
ALIASES = {"bookworm": "6.1", "bookworm-backports": "6.12", "unstable": "sid",
           "next": "experimental"}

#: every suite of released kernels, for `latest`, an upstream X.Y and a release
KNOWN_SUITES: tuple[str, ...] = tuple(s for t in TRACKS.values() for s in t.suites)

#: Debian's release candidates of the next kernel (`experimental`, `next`): a suite
#: of its own, never among KNOWN_SUITES, so that `latest` stays a released kernel.
EXPERIMENTAL = Track("experimental", ("experimental",), "Debian experimental's kernel")

#: Debian's amd64 flavours: the name in --kernel -> what its metapackage and releases
#: end in (linux-image-rt-amd64 -> linux-image-6.12.117+deb13-rt-amd64)
FLAVOURS = {"amd64": "amd64", "rt": "rt-amd64", "cloud": "cloud-amd64"}
GENERIC = "amd64"

#: the host's Debian release (VERSION_CODENAME) -> the default track
DEFAULT_BY_CODENAME = {"bookworm": "6.1", "trixie": "trixie"}
#: the default on any other host: Debian's stable release
DEFAULT_FALLBACK = "trixie"


@dataclass(frozen=True)
class KernelSpec:
    """What `--kernel` asked for."""

    kind: str  # "track" | "experimental" | "upstream" | "latest" | "release" | "path"
    value: str
    flavour: str = GENERIC  # a key of FLAVOURS


# 6.1.0-56-amd64, 6.12.95+deb12-amd64, 7.3.4+deb13-amd64, 6.1.0-56-cloud-amd64:
# the ABI (X.Y.Z, then one -/+ part without a dash), then the flavour
_RELEASE_RE = re.compile(r"^\d+\.\d+\.\d+[-+][0-9A-Za-z.+~]*-(?:(?P<flavour>[a-z]+)-)?amd64$")
_UPSTREAM_RE = re.compile(r"^\d+\.\d+$")


def flavours_hint() -> str:
    """The flavours --kernel knows, for error hints."""
    return ("flavours: amd64 (generic, the default), rt (PREEMPT_RT), cloud; e.g. trixie-rt, "
            "latest-cloud, 7.3-rt, 6.12.117+deb13-rt-amd64")


def spec_hint() -> str:
    """The accepted forms of --kernel, for error hints."""
    names = [f"{n}/{a}" if a else n for n, a in
             ((t, next((k for k, v in ALIASES.items() if v == t), ""))
              for t in (*TRACKS, EXPERIMENTAL.name))]
    return ("--kernel takes a suite's kernel (" + ", ".join(names) + "), latest, an "
            "upstream version such as 7.3, each optionally with a flavour (-rt, -cloud), "
            "a Debian kernel release such as 7.3.4+deb13-amd64 or 7.3.4+deb13-rt-amd64, "
            "or the path of a vmlinuz with its modules beside it")


def release_flavour(release: str) -> str | None:
    """The flavour of a Debian kernel release (rt of 6.12.117+deb13-rt-amd64), or None
    when it has no release's form."""
    m = _RELEASE_RE.match(release)
    if not m:
        return None
    part = f"{m.group('flavour')}-amd64" if m.group("flavour") else "amd64"
    return next((f for f, p in FLAVOURS.items() if p == part), m.group("flavour"))


def _named(name: str, flavour: str) -> KernelSpec | None:
    """The spec of a short name (a track, latest, experimental, X.Y), or None."""
    name = ALIASES.get(name, name)
    if name in TRACKS:
        return KernelSpec("track", name, flavour)
    if name == EXPERIMENTAL.name:
        return KernelSpec("experimental", name, flavour)
    if name == "latest":
        return KernelSpec("latest", name, flavour)
    if _UPSTREAM_RE.match(name):
        return KernelSpec("upstream", name, flavour)
    return None


def _unknown_flavour(text: str, flavour: str) -> UsageError:
    return UsageError(f"unknown kernel flavour {flavour!r} in {text!r}", hint=flavours_hint())


def parse_spec(text: str) -> KernelSpec:
    """Classify a --kernel value without touching the network; UsageError if it has no form.

    A short name may end in a flavour: trixie-rt, latest-cloud, 7.3-rt (but
    trixie-backports is a track of its own).
    """
    named = _named(text, GENERIC)
    if named is not None:
        return named
    if "/" in text or text.startswith((".", "~")):
        return KernelSpec("path", text)
    flavour = release_flavour(text)
    if flavour is not None:
        if flavour not in FLAVOURS:
            raise _unknown_flavour(text, flavour)
        return KernelSpec("release", text, flavour)
    base, _, suffix = text.rpartition("-")
    named = _named(base, suffix) if base else None
    if named is not None:
        if suffix not in FLAVOURS:
            raise _unknown_flavour(text, suffix)
        return named
    if os.path.isfile(text):
        return KernelSpec("path", text)
    raise UsageError(f"unknown kernel {text!r}", hint=spec_hint())


def default_track(os_release: str) -> tuple[str, str]:
    """The default track for a host with this /etc/os-release, and why, for stderr."""
    m = re.search(r"(?m)^VERSION_CODENAME=\"?([^\"\n]*)\"?$", os_release)
    codename = m.group(1) if m else ""
    if codename in DEFAULT_BY_CODENAME:
        name = DEFAULT_BY_CODENAME[codename]
        return name, (f"default kernel: {name} ({TRACKS[name].about}: this host is "
                      f"{codename}); --kernel overrides")
    return DEFAULT_FALLBACK, (
        f"default kernel: {DEFAULT_FALLBACK} ({TRACKS[DEFAULT_FALLBACK].about}: this host "
        f"is {codename or 'not Debian'}, not a Debian release klptrace knows); "
        "--kernel overrides")


def host_default_track() -> tuple[str, str]:
    """default_track() of this host."""
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        text = ""
    return default_track(text)


def cached_releases(cache: Path | None = None) -> list[str]:
    """Releases already unpacked and complete in the cache."""
    base = (cache or cache_dir()) / "kernels"
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / _MARKER).is_file())


# --- what the suites carry ---------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A kernel release one suite carries, with its linux-image package's version."""

    release: str
    version: str
    suite: str


def image_release(meta: Package) -> str | None:
    """The release that a linux-image metapackage depends on (linux-image-<release>)."""
    for name in meta.depends:
        m = re.match(r"^linux-image-(\d.*)$", name)
        if m and not m.group(1).endswith(("-unsigned", "-dbg")):
            return m.group(1)
    return None


def metapackage(flavour: str) -> str:
    """The metapackage that names a suite's current kernel of a flavour: linux-image-rt-amd64."""
    return f"linux-image-{FLAVOURS[flavour]}"


def track_candidate(metas: Sequence[tuple[str, Package]]) -> Candidate | None:
    """Of (suite, linux-image-<flavour>) pairs, the release of the highest version."""
    best: Candidate | None = None
    for suite, meta in metas:
        release = image_release(meta)
        if release is None:
            continue
        if best is None or archive.compare_versions(meta.version, best.version) > 0:
            best = Candidate(release, meta.version, suite)
    return best


def flavour_images(names: Iterable[str], flavour: str = GENERIC) -> list[str]:
    """Of package names, the linux-image-<release> of one flavour (not its metapackages,
    -unsigned or -dbg)."""
    return [n for n in names if n.startswith("linux-image-")
            and release_flavour(n[len("linux-image-"):]) == flavour]


def image_candidates(suite: str, packages: Iterable[Package],
                     flavour: str = GENERIC) -> list[Candidate]:
    """The releases of a suite's linux-image-<release> packages of one flavour."""
    return [Candidate(p.name[len("linux-image-"):], p.version, suite)
            for p in packages if flavour_images([p.name], flavour)]


def newest(cands: Iterable[Candidate]) -> Candidate | None:
    """The candidate of the highest package version."""
    return max(cands, key=lambda c: archive.version_key(c.version), default=None)


def upstream_of(cand: Candidate) -> str:
    """The upstream X.Y of a candidate: 7.3 of 7.3.4-1~bpo13+1."""
    return ".".join(archive.upstream_version(cand.version).split(".")[:2])


def pick(spec: KernelSpec, cands: Sequence[Candidate]) -> Candidate | None:
    """The candidate that `latest`, an upstream X.Y or a release names."""
    if spec.kind == "latest":
        return newest(cands)
    if spec.kind == "upstream":
        return newest(c for c in cands if upstream_of(c) == spec.value)
    if spec.kind == "release":
        return newest(c for c in cands if c.release == spec.value)
    raise ValueError(spec.kind)


def newest_per_upstream(cands: Iterable[Candidate], n: int = 8) -> list[Candidate]:
    """The newest release of each upstream X.Y, newest first, for hints."""
    best: dict[str, Candidate] = {}
    for c in cands:
        old = best.get(upstream_of(c))
        if old is None or archive.compare_versions(c.version, old.version) > 0:
            best[upstream_of(c)] = c
    ordered = sorted(best.values(), key=lambda c: archive.version_key(c.version), reverse=True)
    return ordered[:n]


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


# --- the unpacked tree ---------------------------------------------------------------

_MARKER = ".klptrace-kernel.json"


def _kernel_at(root: Path, release: str, suite: str | None = None) -> Kernel:
    """The kernel unpacked at root, in either package layout."""
    if suite is None:
        try:
            suite = json.loads((root / _MARKER).read_text()).get("suite")
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


def _fetch(apt: SuiteApt, release: str, base: Path, progress: Progress) -> Kernel:
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
    kernel = _kernel_at(final, release, apt.suite)
    if not kernel.image.is_file():
        raise KlptraceError(f"the packages of {release} hold no kernel image "
                            f"(boot/vmlinuz-{release} or usr/lib/modules/{release}/vmlinuz)")
    marker = {"release": release, "suite": apt.suite, "debs": debs}
    (final / _MARKER).write_text(json.dumps(marker, indent=1) + "\n")
    progress(f"kernel {release} ready in {final}")
    return kernel


def _note_suite(root: Path, suite: str) -> None:
    """Record the suite in a marker written before klptrace recorded suites."""
    marker = json.loads((root / _MARKER).read_text())
    if marker.get("suite") != suite:
        marker["suite"] = suite
        (root / _MARKER).write_text(json.dumps(marker, indent=1) + "\n")


def _kernel_from_path(text: str) -> Kernel:
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
        _kernel_at(root, release), image=image, modules_dir=mods / release, kdir=kdir,
        suite=None, config=kconfig.beside(image, release) or _config_in(root, release),
    )


def ensure(
    spec: str | None = None,
    *,
    cache: Path | None = None,
    refresh: bool = False,
    progress: Progress | None = None,
) -> Kernel:
    """The kernel that --kernel names, fetched and unpacked into the cache if needed.

    No spec: the stock kernel of the host's Debian release, said through
    progress. A second call for the same kernel downloads nothing. With
    refresh, a name is resolved again against fresh package lists. A kernel
    whose config lacks what klptrace needs raises NotSupported (before its
    image is downloaded, and again each time it is asked for).
    """
    say = progress or (lambda _msg: None)
    kernel = _ensure(spec, cache, refresh, say)
    check_config(kernel.release, kernel.config, say)
    return kernel


def _ensure(spec: str | None, cache: Path | None, refresh: bool, say: Progress) -> Kernel:
    """ensure() without the config check."""
    base = cache or cache_dir()
    if spec:
        parsed = parse_spec(spec)
    else:
        name, why = host_default_track()
        say(why)
        parsed = KernelSpec("track", name)
    if parsed.kind == "path":
        return _kernel_from_path(parsed.value)

    if parsed.kind == "release" and (base / "kernels" / parsed.value / _MARKER).is_file():
        return _kernel_at(base / "kernels" / parsed.value, parsed.value)

    base.mkdir(mode=0o755, parents=True, exist_ok=True)
    with locked(base):  # one apt and one unpack at a time per cache
        return _from_archive(parsed, base, refresh, say)


def _suites_of(spec: KernelSpec) -> tuple[str, ...]:
    """The suites a spec is resolved in (experimental's kernel is weighed against the
    released ones)."""
    if spec.kind == "track":
        return TRACKS[spec.value].suites
    if spec.kind == "experimental":
        return (*EXPERIMENTAL.suites, *KNOWN_SUITES)
    return KNOWN_SUITES


def _meta_candidate(apts: Sequence[SuiteApt], flavour: str) -> Candidate | None:
    """The release that the newest linux-image-<flavour> among these suites names."""
    shown = archive.each(apts, lambda a: a.show(metapackage(flavour)))
    return track_candidate([(a.suite, p) for a, pkgs in zip(apts, shown, strict=True)
                            for p in pkgs])


def _experimental(apts: Sequence[SuiteApt],
                  flavour: str) -> tuple[Candidate | None, Candidate | None]:
    """experimental's kernel of a flavour, and the newest released one."""
    exp = [a for a in apts if a.suite in EXPERIMENTAL.suites]
    released = [a for a in apts if a.suite not in EXPERIMENTAL.suites]
    return _meta_candidate(exp, flavour), newest(_all_candidates(released, flavour))


def is_newer(cand: Candidate, than: Candidate | None) -> bool:
    """Is cand's package version above than's (or is there nothing to compare with)?"""
    return than is None or archive.compare_versions(cand.version, than.version) > 0


def _resolve(spec: KernelSpec, apts: Sequence[SuiteApt]) -> Candidate | None:
    """The release that spec names in these suites' package lists, if any."""
    if spec.kind == "track":
        found = _meta_candidate(apts, spec.flavour)
        if found is None:
            raise KlptraceError(f"{metapackage(spec.flavour)} names no kernel image in "
                                f"{' '.join(a.suite for a in apts)}")
        return found
    if spec.kind == "experimental":
        exp, released = _experimental(apts, spec.flavour)
        return exp if exp is not None and is_newer(exp, released) else None
    if spec.kind == "release":
        per_suite = archive.each(apts, lambda a: image_candidates(
            a.suite, a.show(f"linux-image-{spec.value}"), spec.flavour))
        return pick(spec, [c for cands in per_suite for c in cands])
    return pick(spec, _all_candidates(apts, spec.flavour))


def _suite_candidates(apt: SuiteApt, flavour: str) -> list[Candidate]:
    """Every kernel release of a flavour one suite carries."""
    return image_candidates(
        apt.suite, apt.show(*flavour_images(apt.names("linux-image-"), flavour)), flavour)


def _all_candidates(apts: Sequence[SuiteApt], flavour: str = GENERIC) -> list[Candidate]:
    """Every kernel release of a flavour the suites carry."""
    return [c for cands in archive.each(apts, lambda a: _suite_candidates(a, flavour))
            for c in cands]


def _not_found(spec: KernelSpec, apts: Sequence[SuiteApt]) -> KlptraceError:
    """What to say when the package lists hold no kernel that spec names."""
    flavoured = "" if spec.flavour == GENERIC else f"-{spec.flavour}"
    if spec.kind == "experimental":
        exp, released = _experimental(apts, spec.flavour)
        now = "nothing"
        if exp and released:
            older = archive.compare_versions(exp.version, released.version) < 0
            now = (f"{exp.release} ({exp.version}), {'older than' if older else 'the same as'} "
                   f"{released.release} ({released.version}, {released.suite})")
        return KlptraceError(
            f"experimental carries no kernel newer than the released ones today: "
            f"its {metapackage(spec.flavour)} names {now}",
            hint=f"--kernel latest{flavoured} runs the newest released kernel; experimental "
            "names a kernel again when Debian uploads the next release candidate there")
    have = ", ".join(f"{c.release} ({c.suite})"
                     for c in newest_per_upstream(_all_candidates(apts, spec.flavour)))
    return KlptraceError(
        f"unknown kernel {spec.value + flavoured!r}: no such Debian kernel in "
        f"{' '.join(a.suite for a in apts)}",
        hint=f"the newest of each version: {have or 'none'}; " + spec_hint(),
    )


#: lists younger than this are not fetched again for a name they lack (a typo stays quick)
LISTS_FRESH_S = 3600.0


def _apts(suites: Sequence[str], base: Path, refresh: bool,
          say: Progress) -> tuple[list[SuiteApt], list[SuiteApt]]:
    """The suites' private apt states, and those whose lists were just fetched."""
    apts = [SuiteApt(s, base) for s in suites]
    host = archive.host_apt_entries()
    stale = [a for a in apts if a.configure(host) or refresh]
    if stale:
        say(f"updating package lists of {' '.join(a.suite for a in stale)}")
        archive.update_all(stale)
    return apts, stale


def _from_archive(spec: KernelSpec, base: Path, refresh: bool, say: Progress) -> Kernel:
    """Resolve a spec against the package lists; fetch its release unless cached."""
    apts, stale = _apts(_suites_of(spec), base, refresh, say)
    found = _resolve(spec, apts)
    fresh = len(stale) == len(apts)
    old = [a for a in apts if a not in stale and a.lists_age() > LISTS_FRESH_S]
    if found is None and old:
        say(f"not in the package lists; updating those of {' '.join(a.suite for a in old)}")
        archive.update_all(old)  # the lists may predate it
        fresh = len(stale) + len(old) == len(apts)
        found = _resolve(spec, apts)
    if found is None:
        raise _not_found(spec, apts)
    flavoured = "" if spec.flavour == GENERIC or spec.kind == "release" else f"-{spec.flavour}"
    say(f"kernel {spec.value}{flavoured}: {found.release} from {found.suite}")
    root = base / "kernels" / found.release
    if (root / _MARKER).is_file():
        _note_suite(root, found.suite)
        return _kernel_at(root, found.release, found.suite)
    apt = next(a for a in apts if a.suite == found.suite)
    try:
        return _fetch(apt, found.release, base, say)
    except NotSupported:
        raise  # the kernel's config, not the lists
    except KlptraceError:
        if fresh:
            raise
        # Old lists can name packages that the archive has since dropped.
        say("download failed; updating the package lists and trying again")
        return _from_archive(spec, base, True, say)


# --- what each suite carries, for `klptrace kernel --list` ---------------------------------


@dataclass(frozen=True)
class SuiteKernels:
    """One suite's current kernel of each flavour (None: it has no such metapackage)."""

    suite: str
    name: str  # the short name that resolves in this suite ("" if none)
    releases: dict[str, Candidate | None]


def suite_kernels(suite: str, metas: Iterable[Package]) -> SuiteKernels:
    """What one suite's linux-image-<flavour> metapackages name."""
    by_name = {p.name: p for p in metas}
    releases = {}
    for flavour in FLAVOURS:
        meta = by_name.get(metapackage(flavour))
        release = image_release(meta) if meta else None
        releases[flavour] = Candidate(release, meta.version, suite) if meta and release else None
    name = next((t.name for t in (*TRACKS.values(), EXPERIMENTAL) if suite in t.suites), "")
    return SuiteKernels(suite, name, releases)


def carried(cache: Path | None = None, *, refresh: bool = False,
            progress: Progress | None = None) -> list[SuiteKernels]:
    """Every suite's current kernel of each flavour, from the package lists."""
    say = progress or (lambda _msg: None)
    base = cache or cache_dir()
    base.mkdir(parents=True, exist_ok=True)
    with locked(base):  # the package lists are apt's: one klptrace at a time
        apts, _ = _apts((*KNOWN_SUITES, *EXPERIMENTAL.suites), base, refresh, say)
        shown = archive.each(apts, lambda a: a.show(*(metapackage(f) for f in FLAVOURS)))
    return [suite_kernels(a.suite, pkgs) for a, pkgs in zip(apts, shown, strict=True)]
