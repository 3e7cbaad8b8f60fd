"""The host's apt sources and the suites' package metadata (lab/archive.py), and what a
release's packages name: no network."""

from __future__ import annotations

from pathlib import Path

import pytest

from klptrace.errors import KlptraceError
from klptrace.lab import archive, kernels, unpacked

# --- apt sources and apt-cache output ------------------------------------------

# The shape of Debian 12's cloud images; the archive names are placeholders.
HOST_DEB822 = """\
Types: deb deb-src
# a comment
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://other.example/repo
Suites: stable
Components: main
Enabled: no
"""

HOST_ONE_LINE = """\
# installer-style
deb [arch=amd64 signed-by=/etc/keys/debian.gpg] http://mirror.example/debian bookworm main
deb-src http://mirror.example/debian bookworm main
deb http://sec.example/debian-security bookworm-security main  # security
"""


def test_parse_deb822_sources() -> None:
    entries = archive.parse_deb822_sources(HOST_DEB822)
    assert [e.uris for e in entries] == [
        ("http://mirror.example/debian",),
        ("http://mirror.example/debian-security",),
    ]
    assert entries[0].suites == ("bookworm", "bookworm-updates")
    assert entries[0].signed_by == "/usr/share/keyrings/debian-archive-keyring.gpg"


def test_parse_one_line_sources() -> None:
    assert archive.parse_one_line_sources(HOST_ONE_LINE) == [
        archive.AptEntry(("http://mirror.example/debian",), ("bookworm",), "/etc/keys/debian.gpg"),
        archive.AptEntry(("http://sec.example/debian-security",), ("bookworm-security",), None),
    ]


def test_derive_sources_keeps_uris_and_keys_changes_suites() -> None:
    host = archive.parse_deb822_sources(HOST_DEB822)
    text = archive.derive_sources(host, ["bookworm", "bookworm-updates", "bookworm-security"])
    assert archive.parse_deb822_sources(text) == [
        archive.AptEntry(
            ("http://mirror.example/debian",),
            ("bookworm", "bookworm-updates"),
            "/usr/share/keyrings/debian-archive-keyring.gpg",
        ),
        archive.AptEntry(
            ("http://mirror.example/debian-security",),
            ("bookworm-security",),
            "/usr/share/keyrings/debian-archive-keyring.gpg",
        ),
    ]
    assert "Components: main\n" in text and "contrib" not in text
    assert "deb-src" not in text


def test_derive_sources_backports_from_the_release_archive() -> None:
    host = archive.parse_one_line_sources(HOST_ONE_LINE)
    text = archive.derive_sources(host, ["bookworm-backports"])
    assert archive.parse_deb822_sources(text) == [
        archive.AptEntry(("http://mirror.example/debian",), ("bookworm-backports",),
                         "/etc/keys/debian.gpg"),
    ]  # fmt: skip


def test_derive_sources_from_another_release_host() -> None:
    # A trixie host still names the archive that serves bookworm.
    host = [archive.AptEntry(("http://m.example/debian",), ("trixie", "trixie-updates"), None)]
    text = archive.derive_sources(host, ["bookworm", "bookworm-security"])
    assert archive.parse_deb822_sources(text) == [
        archive.AptEntry(("http://m.example/debian",), ("bookworm",), None)
    ]


def test_derive_sources_without_archive() -> None:
    with pytest.raises(KlptraceError, match="no Debian archive"):
        archive.derive_sources([], ["bookworm"])


def test_host_apt_entries_reads_both_formats(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(HOST_ONE_LINE)
    (tmp_path / "sources.list.d" / "debian.sources").write_text(HOST_DEB822)
    uris = [e.uris[0] for e in archive.host_apt_entries(tmp_path)]
    assert uris == [
        "http://mirror.example/debian",
        "http://sec.example/debian-security",
        "http://mirror.example/debian",
        "http://mirror.example/debian-security",
    ]


def test_image_release_of_a_metapackage() -> None:
    def meta(*deps: str) -> archive.Package:
        return archive.Package("linux-image-amd64", "6.1.158-1", deps)

    assert kernels.image_release(meta("linux-image-6.1.0-56-amd64")) == "6.1.0-56-amd64"
    assert kernels.image_release(meta("linux-image-6.1.0-56-amd64-unsigned")) is None
    assert kernels.image_release(meta()) is None


def test_header_packages() -> None:
    headers = archive.Package("linux-headers-6.1.0-56-amd64", "6.1.158-1", (
        "linux-headers-6.1.0-56-common", "linux-kbuild-6.1", "linux-compiler-gcc-12-x86"))
    assert unpacked.header_packages(headers) == ["linux-headers-6.1.0-56-common",
                                                "linux-kbuild-6.1"]
