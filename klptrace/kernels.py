"""Guest kernels: stock Debian kernels unpacked into a cache, never installed.

A kernel is fetched with `apt-get download` through a private apt configuration
(its own sources, lists and archive cache), unpacked with `dpkg -x` into
`<cache>/kernels/<release>/`, and made usable there: the headers work as a
kbuild KDIR and `depmod` has indexed the modules. The host's /boot, its
bootloader and its apt state are never touched.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from klptrace.errors import KlptraceError

#: the short name that `--kernel` defaults to
DEFAULT_SPEC = "6.1"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Kernel:
    """A guest kernel: its image, its modules and (if known) its headers."""

    release: str
    image: Path
    modules_dir: Path
    kdir: Path | None
    root: Path


@dataclass(frozen=True)
class Track:
    """A line of Debian kernels that a short name stands for."""

    name: str
    suites: tuple[str, ...]
    meta: str  # the metapackage whose Depends names the current image


# Short names for --kernel. 6.12 is Debian's stock 6.12 for Debian 12, from
# bookworm-backports: built with gcc-12 like 6.1, so its headers build modules
# with this machine's compiler (trixie's 6.12 needs gcc-14). Backports alone in
# its track, so that its linux-image-amd64 is the candidate despite the suite's
# low pin priority. (bookworm-security also carries a linux-6.12 for LTS; a
# release of it, e.g. 6.12.117+deb12-amd64, is found through the 6.1 track.)
TRACKS: dict[str, Track] = {
    "6.1": Track("6.1", ("bookworm", "bookworm-updates", "bookworm-security"), "linux-image-amd64"),
    "6.12": Track("6.12", ("bookworm-backports",), "linux-image-amd64"),
}


@dataclass(frozen=True)
class KernelSpec:
    """What `--kernel` asked for: a track's short name, a release, or an image path."""

    kind: str  # "track" | "release" | "path"
    value: str


# 6.1.0-56-amd64, 6.12.95+deb12-amd64, 6.1.0-56-cloud-amd64
_RELEASE_RE = re.compile(r"^\d+\.\d+\.\d+[-+][0-9A-Za-z.+~-]*-(?:[a-z0-9]+-)*amd64$")

_SPEC_HINT = (
    "--kernel takes a short name ({names}), a Debian kernel release such as "
    "6.1.0-56-amd64, or the path of a vmlinuz with lib/modules beside it"
)


def spec_hint() -> str:
    """The accepted forms of --kernel, for error hints."""
    return _SPEC_HINT.format(names=", ".join(sorted(TRACKS)))


def parse_spec(text: str | None) -> KernelSpec:
    """Classify a --kernel value without touching the network."""
    if text is None or text == "":
        return KernelSpec("track", DEFAULT_SPEC)
    if text in TRACKS:
        return KernelSpec("track", text)
    if "/" in text or text.startswith((".", "~")):
        return KernelSpec("path", text)
    if _RELEASE_RE.match(text):
        return KernelSpec("release", text)
    if os.path.isfile(text):
        return KernelSpec("path", text)
    raise KlptraceError(f"unknown kernel {text!r}", hint=spec_hint())


def cache_dir() -> Path:
    """klptrace's cache: $KLPTRACE_CACHE, else ~/.cache/klptrace."""
    env = os.environ.get("KLPTRACE_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    return Path.home() / ".cache" / "klptrace"


def cached_releases(cache: Path | None = None) -> list[str]:
    """Releases already unpacked and complete in the cache."""
    base = (cache or cache_dir()) / "kernels"
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / _MARKER).is_file())


# --- apt sources ------------------------------------------------------------


@dataclass(frozen=True)
class AptEntry:
    """One deb source of the host: where a Debian archive is and how it is signed."""

    uris: tuple[str, ...]
    suites: tuple[str, ...]
    signed_by: str | None


def parse_deb822_sources(text: str) -> list[AptEntry]:
    """Parse a deb822 .sources file into its enabled binary (deb) entries."""
    entries = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0] in " \t" and key is not None:
                fields[key] += "\n" + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        entries.append(
            AptEntry(
                uris=tuple(fields.get("uris", "").split()),
                suites=tuple(fields.get("suites", "").split()),
                signed_by=fields.get("signed-by") or None,
            )
        )
    return entries


def parse_one_line_sources(text: str) -> list[AptEntry]:
    """Parse a one-line-style sources.list into its deb entries."""
    entries = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        m = re.match(r"^deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)", line)
        if not m:
            continue
        options = dict(opt.split("=", 1) for opt in (m.group(1) or "").split() if "=" in opt)
        entries.append(AptEntry((m.group(2),), (m.group(3),), options.get("signed-by")))
    return entries


def host_apt_entries(etc: Path = Path("/etc/apt")) -> list[AptEntry]:
    """The host's deb sources, from sources.list and sources.list.d."""
    entries = []
    one_line = [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*.list"))]
    for path in one_line:
        if path.is_file():
            entries += parse_one_line_sources(path.read_text(errors="replace"))
    for path in sorted((etc / "sources.list.d").glob("*.sources")):
        entries += parse_deb822_sources(path.read_text(errors="replace"))
    return entries


def _suite_kind(suite: str) -> str:
    """'' for a release suite (bookworm), else its suffix (-security, -backports)."""
    return suite[suite.index("-") :] if "-" in suite else ""


def derive_sources(host: Sequence[AptEntry], suites: Iterable[str]) -> str:
    """A deb822 sources file for `suites`, reusing the host's archive URIs and keys.

    Security suites come from the host's security archive; every other suite
    (the release, -updates, -backports) from the archive that serves a plain
    release suite. No archive host name is written anywhere by klptrace itself.
    """
    groups: dict[tuple[tuple[str, ...], str | None], list[str]] = {}
    for suite in suites:
        kind = _suite_kind(suite)
        wanted = "-security" if kind == "-security" else ""
        source = next(
            (e for e in host if e.uris and any(_suite_kind(s) == wanted for s in e.suites)),
            None,
        )
        if source is None:
            if kind == "-security":
                continue  # a host without security sources: do without
            raise KlptraceError(
                "no Debian archive in the host's apt sources",
                hint="klptrace fetches kernels from the archive that /etc/apt/sources.list"
                "(.d) names; add Debian's archive there",
            )
        groups.setdefault((source.uris, source.signed_by), []).append(suite)
    stanzas = []
    for (uris, signed_by), group in groups.items():
        lines = [
            "Types: deb",
            f"URIs: {' '.join(uris)}",
            f"Suites: {' '.join(group)}",
            "Components: main",
        ]
        if signed_by:
            if "\n" in signed_by:  # an inline key block keeps its continuation lines
                signed_by = signed_by.replace("\n", "\n ")
            lines.append(f"Signed-By: {signed_by}")
        stanzas.append("\n".join(lines) + "\n")
    return "\n".join(stanzas)


# --- apt-cache output --------------------------------------------------------


def parse_depends(text: str) -> list[str]:
    """Package names in `apt-cache depends` output's Depends lines."""
    return re.findall(r"^\s*\|?Depends:\s*<?([^\s>]+)>?\s*$", text, re.MULTILINE)


def image_release(depends_text: str) -> str | None:
    """The release that a linux-image metapackage depends on (linux-image-<release>)."""
    for name in parse_depends(depends_text):
        m = re.match(r"^linux-image-(\d.*)$", name)
        if m and not m.group(1).endswith(("-unsigned", "-dbg")):
            return m.group(1)
    return None


def header_packages(depends_text: str) -> list[str]:
    """Of linux-headers-<release>'s dependencies, those kbuild needs unpacked."""
    return [
        name
        for name in parse_depends(depends_text)
        if re.match(r"^linux-(headers-.*-common.*|kbuild-.*)$", name)
    ]


# --- the private apt ---------------------------------------------------------


class _Apt:
    """apt-get/apt-cache with private sources, lists and archive cache for one track."""

    def __init__(self, track: Track, base: Path) -> None:
        self.track = track
        self.dir = base / "apt" / track.name
        self.sources_dir = self.dir / "sources.list.d"
        self.lists = self.dir / "lists"
        self.archives = self.dir / "cache"

    def options(self) -> list[str]:
        return [
            "-o", "Dir::Etc::sourcelist=/dev/null",
            "-o", f"Dir::Etc::sourceparts={self.sources_dir}",
            "-o", f"Dir::State::Lists={self.lists}",
            "-o", f"Dir::Cache={self.archives}",
            "-o", "Dir::State::status=/dev/null",
            "-o", "APT::Sandbox::User=root",
            "-o", "Acquire::Languages=none",
        ]  # fmt: skip

    def configure(self) -> bool:
        """Write the private sources; True when the lists must be (re)fetched."""
        text = derive_sources(host_apt_entries(), self.track.suites)
        for d in (self.sources_dir, self.lists / "partial", self.archives / "archives" / "partial"):
            d.mkdir(parents=True, exist_ok=True)
        path = self.sources_dir / "klptrace.sources"
        changed = not path.is_file() or path.read_text() != text
        if changed:
            path.write_text(text)
        has_lists = any(self.lists.glob("*_Packages*"))
        return changed or not has_lists

    def run(self, tool: str, *args: str, cwd: Path | None = None) -> str:
        cmd = [tool, "-q", *self.options(), *args]
        try:
            proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        except FileNotFoundError:
            raise KlptraceError(
                f"{tool} not found", hint="klptrace fetches kernels with Debian's apt"
            ) from None
        if proc.returncode != 0:
            raise KlptraceError(
                f"{tool} {' '.join(args[:2])} failed: {_last_lines(proc.stderr or proc.stdout)}",
                hint="check the network and the host's apt sources",
            )
        return proc.stdout

    def update(self) -> None:
        self.run("apt-get", "update")

    def depends(self, package: str) -> str:
        return self.run("apt-cache", "depends", package)

    def has_package(self, package: str) -> bool:
        proc = subprocess.run(
            ["apt-cache", "-q", *self.options(), "show", package],
            capture_output=True, text=True,
        )  # fmt: skip
        return proc.returncode == 0 and "Package:" in proc.stdout

    def releases(self) -> list[str]:
        """Releases whose image this track's archive has."""
        out = self.run("apt-cache", "pkgnames", "linux-image-")
        found = set(re.findall(r"(?m)^linux-image-(\d+\.\d+\.\d+[-+][^-\s]+-amd64)$", out))
        return sorted(found, key=_version_key)


def _version_key(release: str) -> list[int | str]:
    """Sort key that orders 6.1.0-9 before 6.1.0-56."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", release)]


def _last_lines(text: str, n: int = 3) -> str:
    return " / ".join(line for line in text.strip().splitlines()[-n:])


# --- fetch and unpack --------------------------------------------------------

_MARKER = ".klptrace-kernel.json"


def _kernel_at(root: Path, release: str) -> Kernel:
    modules_dir = root / "lib" / "modules" / release
    kdir = root / "usr" / "src" / f"linux-headers-{release}"
    return Kernel(
        release=release,
        image=root / "boot" / f"vmlinuz-{release}",
        modules_dir=modules_dir,
        kdir=kdir if (kdir / "Makefile").is_file() else None,
        root=root,
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
    """Make the headers' Makefile include the unpacked -common tree, not /usr/src."""
    makefile = kdir / "Makefile"
    text = makefile.read_text()
    new = re.sub(r"(?m)^(\s*include\s+)/usr/src/", rf"\g<1>{root}/usr/src/", text)
    if new != text:
        makefile.write_text(new)


def _unpack(apt: _Apt, release: str, dest: Path, progress: Progress) -> list[str]:
    """Download and unpack one release's packages into dest; return the .deb names."""
    packages = [f"linux-image-{release}", f"linux-headers-{release}"]
    packages += header_packages(apt.depends(f"linux-headers-{release}"))
    debs = dest / ".debs"
    debs.mkdir(parents=True)
    progress(f"downloading {' '.join(packages)}")
    apt.run("apt-get", "download", *packages, cwd=debs)
    names = sorted(p.name for p in debs.glob("*.deb"))
    progress(f"unpacking {len(names)} packages")
    for name in names:
        subprocess.run(["dpkg", "-x", str(debs / name), str(dest)], check=True)
    shutil.rmtree(debs)
    return names


def _finish(root: Path, release: str) -> None:
    """Make an unpacked tree usable: KDIR in place, modules indexed."""
    relink_absolute(root)
    kdir = root / "usr" / "src" / f"linux-headers-{release}"
    if (kdir / "Makefile").is_file():
        rewrite_headers_makefile(kdir, root)
    depmod = shutil.which("depmod") or "/sbin/depmod"
    if not os.path.exists(depmod):
        raise KlptraceError("depmod not found", hint="apt-get install kmod (make setup does)")
    proc = subprocess.run([depmod, "-b", str(root), release], capture_output=True, text=True)
    if proc.returncode != 0:
        raise KlptraceError(f"depmod failed for {release}: {_last_lines(proc.stderr)}")


def _fetch(apt: _Apt, release: str, base: Path, progress: Progress) -> Kernel:
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
    _finish(final, release)
    kernel = _kernel_at(final, release)
    if not kernel.image.is_file():
        raise KlptraceError(f"the packages of {release} hold no boot/vmlinuz-{release}")
    (final / _MARKER).write_text(json.dumps({"release": release, "debs": debs}, indent=1) + "\n")
    progress(f"kernel {release} ready in {final}")
    return kernel


def _kernel_from_path(text: str) -> Kernel:
    """A kernel given as a vmlinuz path, with ../lib/modules/<release> beside it."""
    image = Path(text).expanduser().resolve()
    if not image.is_file():
        raise KlptraceError(f"no kernel image at {image}", hint=spec_hint())
    root = image.parent.parent
    mods = root / "lib" / "modules"
    release = image.name.removeprefix("vmlinuz-") if image.name.startswith("vmlinuz-") else None
    if release is None:
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
        _kernel_at(root, release), image=image, modules_dir=mods / release, kdir=kdir
    )


def ensure(
    spec: str | None = None,
    *,
    cache: Path | None = None,
    refresh: bool = False,
    progress: Progress | None = None,
) -> Kernel:
    """The kernel that --kernel names, fetched and unpacked into the cache if needed.

    A second call for the same kernel downloads nothing. With refresh, a short
    name is resolved again against fresh package lists.
    """
    say = progress or (lambda _msg: None)
    base = cache or cache_dir()
    parsed = parse_spec(spec)
    if parsed.kind == "path":
        return _kernel_from_path(parsed.value)

    if parsed.kind == "release" and (base / "kernels" / parsed.value / _MARKER).is_file():
        return _kernel_at(base / "kernels" / parsed.value, parsed.value)

    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one apt and one unpack at a time per cache
        return _from_archive(parsed, base, refresh, say)


def _from_archive(parsed: KernelSpec, base: Path, refresh: bool, say: Progress) -> Kernel:
    """Resolve a track or release against the package lists; fetch it unless cached."""
    tracks = [TRACKS[parsed.value]] if parsed.kind == "track" else list(TRACKS.values())
    for track in tracks:
        apt = _Apt(track, base)
        fresh = apt.configure() or refresh
        if fresh:
            say(f"updating package lists for {track.name} ({' '.join(track.suites)})")
            apt.update()
        release = _release_in(apt, parsed)
        if release is None and not fresh:
            apt.update()  # the lists may predate the release
            fresh = True
            release = _release_in(apt, parsed)
        if release is None:
            continue
        root = base / "kernels" / release
        if (root / _MARKER).is_file():
            return _kernel_at(root, release)
        try:
            return _fetch(apt, release, base, say)
        except KlptraceError:
            if fresh:
                raise
            # Old lists can name packages that the archive has since dropped.
            say("download failed; updating the package lists and trying again")
            return _from_archive(parsed, base, True, say)

    known = sorted({r for t in tracks for r in _Apt(t, base).releases()}, key=_version_key)
    newest = ", ".join(known[-8:]) or "none"
    raise KlptraceError(
        f"unknown kernel {parsed.value!r}: no such Debian kernel package",
        hint=f"the newest available: {newest}; " + spec_hint(),
    )


def _release_in(apt: _Apt, spec: KernelSpec) -> str | None:
    """The release that spec names in this track's package lists, if any."""
    if spec.kind == "track":
        release = image_release(apt.depends(apt.track.meta))
        if release is None:
            raise KlptraceError(f"{apt.track.meta} names no kernel image in {apt.track.suites}")
        return release
    return spec.value if apt.has_package(f"linux-image-{spec.value}") else None
