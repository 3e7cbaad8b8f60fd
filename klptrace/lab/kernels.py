"""Guest kernels: stock Debian kernels unpacked into a cache, never installed.

A kernel is fetched with `apt-get download` through a private apt state per
suite (archive.py), unpacked with `dpkg -x` into `<cache>/kernels/<release>/`,
and made usable there: the headers work as a kbuild KDIR and `depmod` has
indexed the modules. The host's /boot, its bootloader and its apt state are
never touched.

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

from klptrace.errors import KlptraceError, UsageError
from klptrace.lab import archive
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


@dataclass(frozen=True)
class Track:
    """A line of Debian kernels that a short name stands for: a suite's linux-image-amd64."""

    name: str
    suites: tuple[str, ...]
    about: str


# Short names for --kernel. A track's kernel is the release that the newest
# linux-image-amd64 among its suites depends on, so a point release needs no
# change here. 6.12 is bookworm-backports' kernel: built with gcc-12 like 6.1,
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
ALIASES = {"bookworm": "6.1", "bookworm-backports": "6.12", "unstable": "sid"}

#: every suite klptrace looks in, for `latest`, an upstream X.Y and a release
KNOWN_SUITES: tuple[str, ...] = tuple(s for t in TRACKS.values() for s in t.suites)

#: the host's Debian release (VERSION_CODENAME) -> the default track
DEFAULT_BY_CODENAME = {"bookworm": "6.1", "trixie": "trixie"}
#: the default on any other host: Debian's stable release
DEFAULT_FALLBACK = "trixie"


@dataclass(frozen=True)
class KernelSpec:
    """What `--kernel` asked for."""

    kind: str  # "track" | "upstream" | "latest" | "release" | "path"
    value: str


# 6.1.0-56-amd64, 6.12.95+deb12-amd64, 7.3.4+deb13-amd64, 6.1.0-56-cloud-amd64
_RELEASE_RE = re.compile(r"^\d+\.\d+\.\d+[-+][0-9A-Za-z.+~-]*-(?:[a-z0-9]+-)*amd64$")
# the generic flavour only: its ABI part ends in a digit (not -cloud, -rt)
_GENERIC_RE = re.compile(r"^\d+\.\d+\.\d+[-+][0-9A-Za-z.+~-]*[0-9]-amd64$")
_UPSTREAM_RE = re.compile(r"^\d+\.\d+$")


def spec_hint() -> str:
    """The accepted forms of --kernel, for error hints."""
    names = [f"{n}/{a}" if a else n for n, a in
             ((t, next((k for k, v in ALIASES.items() if v == t), "")) for t in TRACKS)]
    return ("--kernel takes a suite's kernel (" + ", ".join(names) + "), latest, an "
            "upstream version such as 7.3, a Debian kernel release such as "
            "7.3.4+deb13-amd64, or the path of a vmlinuz with its modules beside it")


def parse_spec(text: str) -> KernelSpec:
    """Classify a --kernel value without touching the network; UsageError if it has no form."""
    name = ALIASES.get(text, text)
    if name in TRACKS:
        return KernelSpec("track", name)
    if text == "latest":
        return KernelSpec("latest", text)
    if "/" in text or text.startswith((".", "~")):
        return KernelSpec("path", text)
    if _RELEASE_RE.match(text):
        return KernelSpec("release", text)
    if _UPSTREAM_RE.match(text):
        return KernelSpec("upstream", text)
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


def track_candidate(metas: Sequence[tuple[str, Package]]) -> Candidate | None:
    """Of (suite, linux-image-amd64) pairs, the release of the highest version."""
    best: Candidate | None = None
    for suite, meta in metas:
        release = image_release(meta)
        if release is None:
            continue
        if best is None or archive.compare_versions(meta.version, best.version) > 0:
            best = Candidate(release, meta.version, suite)
    return best


def generic_images(names: Iterable[str]) -> list[str]:
    """Of package names, the linux-image-<release> of the generic amd64 flavour."""
    return [n for n in names
            if n.startswith("linux-image-") and _GENERIC_RE.match(n[len("linux-image-"):])]


def image_candidates(suite: str, packages: Iterable[Package]) -> list[Candidate]:
    """The releases of a suite's linux-image-<release> packages."""
    return [Candidate(p.name[len("linux-image-"):], p.version, suite)
            for p in packages if generic_images([p.name])]


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
    )


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


def _unpack(apt: SuiteApt, release: str, dest: Path, progress: Progress) -> list[str]:
    """Download and unpack one release's packages into dest; return the .deb names."""
    shown = {p.name: p for p in apt.show(f"linux-image-{release}", f"linux-headers-{release}")}
    packages = release_packages(release, shown.get(f"linux-image-{release}"),
                                shown.get(f"linux-headers-{release}"))
    debs = dest / ".debs"
    debs.mkdir(parents=True)
    progress(f"downloading from {apt.suite}: {' '.join(packages)}")
    started = time.monotonic()
    apt.download(packages, debs)
    names = sorted(p.name for p in debs.glob("*.deb"))
    size = sum((debs / n).stat().st_size for n in names)
    progress(f"downloaded {size / 1e6:.0f} MB in {time.monotonic() - started:.0f} s; "
             f"unpacking {len(names)} packages")
    for name in names:
        subprocess.run(["dpkg", "-x", str(debs / name), str(dest)], check=True)
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
        _kernel_at(root, release), image=image, modules_dir=mods / release, kdir=kdir, suite=None
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
    refresh, a name is resolved again against fresh package lists.
    """
    say = progress or (lambda _msg: None)
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
    """The suites a spec is resolved in."""
    return TRACKS[spec.value].suites if spec.kind == "track" else KNOWN_SUITES


def _resolve(spec: KernelSpec, apts: Sequence[SuiteApt]) -> Candidate | None:
    """The release that spec names in these suites' package lists, if any."""
    if spec.kind == "track":
        metas = [(a.suite, p) for a, shown in
                 zip(apts, archive.each(apts, lambda a: a.show("linux-image-amd64")), strict=True)
                 for p in shown]
        found = track_candidate(metas)
        if found is None:
            raise KlptraceError(f"linux-image-amd64 names no kernel image in "
                                f"{' '.join(a.suite for a in apts)}")
        return found
    if spec.kind == "release":
        per_suite = archive.each(
            apts, lambda a: image_candidates(a.suite, a.show(f"linux-image-{spec.value}")))
        return pick(spec, [c for cands in per_suite for c in cands])
    return pick(spec, _all_candidates(apts))


def _suite_candidates(apt: SuiteApt) -> list[Candidate]:
    """Every generic kernel release one suite carries."""
    return image_candidates(apt.suite, apt.show(*generic_images(apt.names("linux-image-"))))


def _all_candidates(apts: Sequence[SuiteApt]) -> list[Candidate]:
    """Every generic kernel release the suites carry."""
    return [c for cands in archive.each(apts, _suite_candidates) for c in cands]


#: lists younger than this are not fetched again for a name they lack (a typo stays quick)
LISTS_FRESH_S = 3600.0


def _from_archive(spec: KernelSpec, base: Path, refresh: bool, say: Progress) -> Kernel:
    """Resolve a spec against the package lists; fetch its release unless cached."""
    suites = _suites_of(spec)
    apts = [SuiteApt(s, base) for s in suites]
    host = archive.host_apt_entries()
    stale = [a for a in apts if a.configure(host) or refresh]
    if stale:
        say(f"updating package lists of {' '.join(a.suite for a in stale)}")
        archive.update_all(stale)
    found = _resolve(spec, apts)
    fresh = len(stale) == len(apts)
    old = [a for a in apts if a not in stale and a.lists_age() > LISTS_FRESH_S]
    if found is None and old:
        say(f"not in the package lists; updating those of {' '.join(a.suite for a in old)}")
        archive.update_all(old)  # the lists may predate it
        fresh = len(stale) + len(old) == len(apts)
        found = _resolve(spec, apts)
    if found is None:
        have = ", ".join(f"{c.release} ({c.suite})"
                         for c in newest_per_upstream(_all_candidates(apts)))
        raise KlptraceError(
            f"unknown kernel {spec.value!r}: no such Debian kernel in {' '.join(suites)}",
            hint=f"the newest of each version: {have or 'none'}; " + spec_hint(),
        )
    say(f"kernel {spec.value}: {found.release} from {found.suite}")
    root = base / "kernels" / found.release
    if (root / _MARKER).is_file():
        _note_suite(root, found.suite)
        return _kernel_at(root, found.release, found.suite)
    apt = next(a for a in apts if a.suite == found.suite)
    try:
        return _fetch(apt, found.release, base, say)
    except KlptraceError:
        if fresh:
            raise
        # Old lists can name packages that the archive has since dropped.
        say("download failed; updating the package lists and trying again")
        return _from_archive(spec, base, True, say)
