"""Guest kernels: stock Debian kernels unpacked into a cache, never installed.

A kernel is fetched with `apt-get download` through a private apt state per
suite (archive.py), unpacked with `dpkg -x` into `<cache>/kernels/<release>/`,
and made usable there: the headers work as a kbuild KDIR and `depmod` has
indexed the modules. The host's /boot, its bootloader and its apt state are
never touched.

Each release comes in Debian's amd64 flavours: `amd64` (generic), `rt-amd64`
(PREEMPT_RT) and `cloud-amd64` (no 9p, see vng.guest_root). Before the image is
downloaded, the package that holds the kernel's config is fetched and read
(kconfig.py): a kernel that cannot livepatch is refused then.

Two package layouts exist. Up to 6.12, `linux-image-<rel>` holds
boot/vmlinuz-<rel> and lib/modules/<rel>. Since the 6.13-era packaging it is
a metapackage depending on `linux-binary-<rel>` (usr/lib/modules/<rel>/vmlinuz),
`linux-modules-<rel>` (.ko.xz under usr/lib/modules) and `linux-base-<rel>`
(whose System.map is a one-line stub: nothing here reads it).

This module resolves a --kernel spec (specs.py) against the suites' package
lists to a release and fetches it (unpacked.py) unless the cache has it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from klptrace.errors import KlptraceError, NotSupported
from klptrace.lab import archive
from klptrace.lab.archive import Package, SuiteApt
from klptrace.lab.defaults import cache_dir, locked
from klptrace.lab.specs import (
    EXPERIMENTAL,
    GENERIC,
    KNOWN_SUITES,
    TRACKS,
    SpecKind,
    host_default_track,
    release_flavour,
    spec_hint,
)
from klptrace.lab.specs import FLAVOURS as FLAVOURS
from klptrace.lab.specs import KernelSpec as KernelSpec
from klptrace.lab.specs import parse_spec as parse_spec
from klptrace.lab.unpacked import (
    MARKER,
    Progress,
    check_config,
    fetch,
    kernel_at,
    kernel_from_path,
    note_suite,
)
from klptrace.lab.unpacked import Kernel as Kernel

# Callers take Kernel, KernelSpec, parse_spec and FLAVOURS from here, the lab's front
# door for kernels; specs.py and unpacked.py define them.


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
    if spec.kind == SpecKind.LATEST:
        return newest(cands)
    if spec.kind == SpecKind.UPSTREAM:
        return newest(c for c in cands if upstream_of(c) == spec.value)
    if spec.kind == SpecKind.RELEASE:
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
        parsed = KernelSpec(SpecKind.TRACK, name)
    if parsed.kind == SpecKind.PATH:
        return kernel_from_path(parsed.value)

    if parsed.kind == SpecKind.RELEASE and (base / "kernels" / parsed.value / MARKER).is_file():
        return kernel_at(base / "kernels" / parsed.value, parsed.value)

    base.mkdir(mode=0o755, parents=True, exist_ok=True)
    with locked(base):  # one apt and one unpack at a time per cache
        return _from_archive(parsed, base, refresh, say)


def _suites_of(spec: KernelSpec) -> tuple[str, ...]:
    """The suites a spec is resolved in (experimental's kernel is weighed against the
    released ones)."""
    if spec.kind == SpecKind.TRACK:
        return TRACKS[spec.value].suites
    if spec.kind == SpecKind.EXPERIMENTAL:
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
    if spec.kind == SpecKind.TRACK:
        found = _meta_candidate(apts, spec.flavour)
        if found is None:
            raise KlptraceError(f"{metapackage(spec.flavour)} names no kernel image in "
                                f"{' '.join(a.suite for a in apts)}")
        return found
    if spec.kind == SpecKind.EXPERIMENTAL:
        exp, released = _experimental(apts, spec.flavour)
        return exp if exp is not None and is_newer(exp, released) else None
    if spec.kind == SpecKind.RELEASE:
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
    if spec.kind == SpecKind.EXPERIMENTAL:
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
    plain = spec.flavour == GENERIC or spec.kind == SpecKind.RELEASE
    flavoured = "" if plain else f"-{spec.flavour}"
    say(f"kernel {spec.value}{flavoured}: {found.release} from {found.suite}")
    root = base / "kernels" / found.release
    if (root / MARKER).is_file():
        note_suite(root, found.suite)
        return kernel_at(root, found.release, found.suite)
    apt = next(a for a in apts if a.suite == found.suite)
    try:
        return fetch(apt, found.release, base, say)
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
