"""Debian's archive through a private apt: one state per suite, read with apt-cache.

The sources are derived from the host's own apt sources (the archive URIs and
keys it already trusts, with only the suites changed), and each suite gets its
own sources file, package lists and archive cache under klptrace's cache, so
that no pin priority (backports have 100) decides which suite's package apt
means: a suite's state knows only that suite. The host's apt configuration and
state are never read for packages and never written.
"""

from __future__ import annotations

import functools
import math
import re
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from klptrace.errors import KlptraceError

# --- the host's apt sources ---------------------------------------------------------


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


def suite_kind(suite: str) -> str:
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
        kind = suite_kind(suite)
        wanted = "-security" if kind == "-security" else ""
        source = next(
            (e for e in host if e.uris and any(suite_kind(s) == wanted for s in e.suites)),
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


#: the host's apt options that a build root's apt must share to reach the same archive
_ACQUIRE_KEYS = ("Acquire::http::Proxy", "Acquire::https::Proxy", "Acquire::Check-Valid-Until",
                 "Acquire::Check-Date")


def acquire_options(dump: str) -> list[str]:
    """Of `apt-config dump` output, the fetch options a build root must share, as Key=value."""
    found = []
    for line in dump.splitlines():
        m = re.match(r'^([A-Za-z0-9:_-]+) "(.*)";$', line.strip())
        if m and m.group(1).lower() in {k.lower() for k in _ACQUIRE_KEYS}:
            found.append(f"{m.group(1)}={m.group(2)}")
    return found


def host_acquire_options() -> list[str]:
    """acquire_options() of the host's apt configuration."""
    try:
        proc = subprocess.run(["apt-config", "dump"], capture_output=True, text=True)
    except FileNotFoundError:
        return []
    return acquire_options(proc.stdout) if proc.returncode == 0 else []


# --- package metadata ------------------------------------------------------------------


@dataclass(frozen=True)
class Package:
    """One version of a binary package as `apt-cache show` describes it."""

    name: str
    version: str
    depends: tuple[str, ...]  # the package names in Depends, alternatives included


def parse_show(text: str) -> list[Package]:
    """The stanzas of `apt-cache show` output (several packages, several versions)."""
    found = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t") and key is not None:
                fields[key] += " " + line.strip()
                continue
            key, sep, value = line.partition(":")
            if not sep:
                key = None
                continue
            fields[key] = value.strip()
        if "Package" in fields and "Version" in fields:
            deps = re.findall(r"(?:^|[,|])\s*([a-z0-9][a-z0-9+.-]+)", fields.get("Depends", ""))
            found.append(Package(fields["Package"], fields["Version"], tuple(deps)))
    return found


def _order(c: str) -> int:
    """dpkg's weight of one character of a non-digit run: ~ sorts before everything."""
    if c == "~":
        return -1
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _compare_part(a: str, b: str) -> int:
    """dpkg's comparison of two upstream versions or two revisions."""
    i = j = 0
    while i < len(a) or j < len(b):
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ca = _order(a[i]) if i < len(a) and not a[i].isdigit() else 0
            cb = _order(b[j]) if j < len(b) and not b[j].isdigit() else 0
            if ca != cb:
                return -1 if ca < cb else 1
            i += i < len(a) and not a[i].isdigit()
            j += j < len(b) and not b[j].isdigit()
        si, sj = i, j
        while i < len(a) and a[i].isdigit():
            i += 1
        while j < len(b) and b[j].isdigit():
            j += 1
        na, nb = int(a[si:i] or 0), int(b[sj:j] or 0)
        if na != nb:
            return -1 if na < nb else 1
    return 0


def _split_version(v: str) -> tuple[int, str, str]:
    """epoch, upstream version and Debian revision of a package version."""
    epoch, _, rest = v.rpartition(":") if ":" in v else ("0", "", v)
    upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "")
    return int(epoch or 0), upstream, revision


def compare_versions(a: str, b: str) -> int:
    """Order two Debian package versions as dpkg does: -1, 0 or 1."""
    ea, ua, ra = _split_version(a)
    eb, ub, rb = _split_version(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return _compare_part(ua, ub) or _compare_part(ra, rb)


#: a sort key for Debian package versions
version_key = functools.cmp_to_key(compare_versions)


def upstream_version(version: str) -> str:
    """The upstream part of a package version: 7.3.4 of 7.3.4-1~bpo13+1."""
    return _split_version(version)[1]


# --- the private apt state of one suite -------------------------------------------------


class SuiteApt:
    """apt-get/apt-cache with a private sources file, package lists and cache for one suite."""

    def __init__(self, suite: str, base: Path) -> None:
        self.suite = suite
        self.dir = base / "apt" / suite
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
            # keep the parsed lists: each apt-cache call then takes 0.2 s, not 3 s
            "-o", "Dir::Cache::pkgcache=pkgcache.bin",
            "-o", "APT::Sandbox::User=root",
            "-o", "Acquire::Languages=none",
        ]  # fmt: skip

    def configure(self, host: Sequence[AptEntry]) -> bool:
        """Write the private sources; True when the lists must be (re)fetched."""
        text = derive_sources(host, [self.suite])
        for d in (self.sources_dir, self.lists / "partial", self.archives / "archives" / "partial"):
            d.mkdir(parents=True, exist_ok=True)
        path = self.sources_dir / "klptrace.sources"
        changed = not path.is_file() or path.read_text() != text
        if changed:
            path.write_text(text)
        return changed or not self.has_lists()

    def has_lists(self) -> bool:
        return any(self.lists.glob("*_Packages*"))

    def lists_age(self) -> float:
        """Seconds since the package lists were fetched (inf if never)."""
        times = [p.stat().st_mtime for p in self.lists.glob("*_Packages*")]
        return time.time() - max(times) if times else math.inf

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
                f"{tool} {' '.join(args[:2])} failed for {self.suite}: "
                f"{last_lines(proc.stderr or proc.stdout)}",
                hint="check the network and the host's apt sources",
            )
        return proc.stdout

    def update(self) -> None:
        self.run("apt-get", "update")

    def show(self, *packages: str) -> list[Package]:
        """What the suite has of these packages (names it lacks are left out)."""
        if not packages:
            return []
        proc = subprocess.run(
            ["apt-cache", "-q", *self.options(), "show", *packages],
            capture_output=True, text=True,
        )  # fmt: skip
        return parse_show(proc.stdout)  # exit 100 when one of the names is unknown

    def names(self, prefix: str) -> list[str]:
        """The names of the suite's packages that start with prefix."""
        return self.run("apt-cache", "pkgnames", prefix).split()

    def download(self, packages: Sequence[str], dest: Path) -> None:
        self.run("apt-get", "download", *packages, cwd=dest)


T = TypeVar("T")


def each(apts: Sequence[SuiteApt], fn: Callable[[SuiteApt], T]) -> list[T]:
    """fn of every suite, at once (their states share no lock), in order."""
    with ThreadPoolExecutor(max_workers=max(1, len(apts))) as pool:
        return list(pool.map(fn, apts))


def update_all(apts: Sequence[SuiteApt]) -> None:
    """apt-get update several suites at once."""
    each(apts, lambda a: a.update())


def last_lines(text: str, n: int = 3) -> str:
    """The last n lines of a tool's output, on one line."""
    return " / ".join(line for line in text.strip().splitlines()[-n:])
