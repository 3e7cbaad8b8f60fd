"""What `--kernel` names: Debian's kernel tracks and flavours, and the forms of a spec,
classified without touching the network; and the track a host defaults to.
"""

from __future__ import annotations

import enum
import os
import re
from dataclasses import dataclass
from pathlib import Path

from klptrace.errors import UsageError


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


class SpecKind(enum.StrEnum):
    """The form of a --kernel value."""

    TRACK = "track"  # a suite's kernel: 6.1, trixie, sid
    EXPERIMENTAL = "experimental"  # Debian's release candidate, if newer than released ones
    UPSTREAM = "upstream"  # the newest Debian release of an upstream X.Y
    LATEST = "latest"  # the newest released kernel of any suite
    RELEASE = "release"  # a Debian kernel release: 7.3.4+deb13-amd64
    PATH = "path"  # a vmlinuz on disk, its modules beside it


@dataclass(frozen=True)
class KernelSpec:
    """What `--kernel` asked for."""

    kind: SpecKind
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
        return KernelSpec(SpecKind.TRACK, name, flavour)
    if name == EXPERIMENTAL.name:
        return KernelSpec(SpecKind.EXPERIMENTAL, name, flavour)
    if name == "latest":
        return KernelSpec(SpecKind.LATEST, name, flavour)
    if _UPSTREAM_RE.match(name):
        return KernelSpec(SpecKind.UPSTREAM, name, flavour)
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
        return KernelSpec(SpecKind.PATH, text)
    flavour = release_flavour(text)
    if flavour is not None:
        if flavour not in FLAVOURS:
            raise _unknown_flavour(text, flavour)
        return KernelSpec(SpecKind.RELEASE, text, flavour)
    base, _, suffix = text.rpartition("-")
    named = _named(base, suffix) if base else None
    if named is not None:
        if suffix not in FLAVOURS:
            raise _unknown_flavour(text, suffix)
        return named
    if os.path.isfile(text):
        return KernelSpec(SpecKind.PATH, text)
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
