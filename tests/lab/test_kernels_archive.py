"""The kernel fetcher's decisions, driven by real apt metadata saved from each suite.

tests/data/apt/<suite>.linux-image-amd64 and <suite>.images are `apt-cache
show` output of the suite's metapackage and of its generic linux-image-<release>
packages, captured on 2026-12-01 through klptrace's private apt states.
<suite>.flavours holds the Package, Version and Depends of the suite's rt and
cloud metapackages and images (experimental.flavours: all of experimental's
image packages), captured the same way on 2026-12-06. No network, no root: a
stand-in for SuiteApt answers from those files, and its downloads are .debs
built on the spot with the package layouts Debian uses.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import util

from klptrace import cli
from klptrace.errors import KlptraceError, UsageError
from klptrace.lab import archive, kernels, specs, unpacked

DATA = util.DATA / "apt"


def _show(name: str) -> list[archive.Package]:
    return archive.parse_show((DATA / name).read_text())


def _metas(suites: tuple[str, ...]) -> list[tuple[str, archive.Package]]:
    return [(s, p) for s in suites for p in _show(f"{s}.linux-image-amd64")]


def _all_candidates(flavour: str = "amd64") -> list[kernels.Candidate]:
    return [c for s in specs.KNOWN_SUITES for f in ("images", "flavours")
            for c in kernels.image_candidates(s, _show(f"{s}.{f}"), flavour)]


# --- Debian versions -------------------------------------------------------------------


@pytest.mark.parametrize(("a", "b", "want"), [
    ("7.3.4-1~bpo13+1", "7.2.13-1", 1),
    ("6.12.118-1", "6.12.117-1", 1),
    ("6.12.95-1~bpo12+1", "6.12.95-1", -1),  # a backport sorts before its source
    ("6.1.192-3", "6.1.192-2", 1),
    ("1.0~rc1-1", "1.0-1", -1),
    ("1:0.1-1", "9.9-1", 1),
    ("6.12.90+deb13.1", "6.12.90+deb13", 1),
    ("2.0", "2.0", 0),
    ("1.0a", "1.0+", -1),  # letters sort before other symbols
])  # fmt: skip
def test_compare_versions(a: str, b: str, want: int) -> None:
    assert archive.compare_versions(a, b) == want
    assert archive.compare_versions(b, a) == -want


@pytest.mark.skipif(not shutil.which("dpkg"), reason="needs dpkg to compare with")
def test_compare_versions_agrees_with_dpkg_on_the_saved_versions() -> None:
    versions = sorted({p.version for s in specs.KNOWN_SUITES
                       for f in (f"{s}.images", f"{s}.linux-image-amd64") for p in _show(f)})
    assert len(versions) > 40
    for a, b in itertools.combinations(versions[::3], 2):
        ours = archive.compare_versions(a, b)
        dpkg_lt = subprocess.run(["dpkg", "--compare-versions", a, "lt", b]).returncode == 0
        assert (ours < 0) == dpkg_lt, (a, b)


def test_upstream_version() -> None:
    assert archive.upstream_version("7.3.4-1~bpo13+1") == "7.3.4"
    assert archive.upstream_version("1:2.3-4") == "2.3"
    assert archive.upstream_version("2.3") == "2.3"


# --- apt-cache show --------------------------------------------------------------------


def test_parse_show_new_layout_metapackage() -> None:
    [image] = [p for p in _show("trixie-backports.images")
               if p.name == "linux-image-7.3.4+deb13-amd64"]
    assert image.version == "7.3.4-1~bpo13+1"
    for part in ("linux-base", "linux-binary", "linux-modules"):
        assert f"{part}-7.3.4+deb13-amd64" in image.depends
    assert "dracut" in image.depends and "initramfs-tools" in image.depends  # alternatives too


def test_parse_show_several_packages() -> None:
    pkgs = _show("bookworm-security.images")
    assert len(pkgs) == 17
    assert all(p.name.startswith("linux-image-") and p.version for p in pkgs)


def test_generic_images_leave_flavours_and_metapackages_out() -> None:
    names = ["linux-image-6.1.0-57-amd64", "linux-image-6.1.0-57-cloud-amd64",
             "linux-image-6.1.0-57-rt-amd64", "linux-image-6.1.0-57-amd64-unsigned",
             "linux-image-6.12-amd64", "linux-image-amd64", "linux-image-7.3.4+deb13-amd64",
             "linux-image-6.12.90+deb12.1-amd64", "linux-image-7.3.4+deb13-amd64-dbg"]
    assert kernels.flavour_images(names) == ["linux-image-6.1.0-57-amd64",
                                             "linux-image-7.3.4+deb13-amd64",
                                             "linux-image-6.12.90+deb12.1-amd64"]
    assert kernels.flavour_images(names, "rt") == ["linux-image-6.1.0-57-rt-amd64"]
    assert kernels.flavour_images(names, "cloud") == ["linux-image-6.1.0-57-cloud-amd64"]


# --- what each name resolves to (the archive of 2026-12-01) --------------------------------


@pytest.mark.parametrize(("track", "release", "suite"), [
    ("6.1", "6.1.0-57-amd64", "bookworm-security"),
    ("6.12", "6.12.95+deb12-amd64", "bookworm-backports"),
    # trixie-security's 6.12.118 is newer than trixie's 6.12.117
    ("trixie", "6.12.118+deb13-amd64", "trixie-security"),
    ("trixie-backports", "7.3.4+deb13-amd64", "trixie-backports"),
    ("sid", "7.2.13+deb14-amd64", "sid"),
])  # fmt: skip
def test_track_resolves_to_the_newest_metapackage(track: str, release: str, suite: str) -> None:
    found = kernels.track_candidate(_metas(specs.TRACKS[track].suites))
    assert found is not None and (found.release, found.suite) == (release, suite)


@pytest.mark.parametrize(("text", "release", "suite"), [
    ("latest", "7.3.4+deb13-amd64", "trixie-backports"),
    ("7.3", "7.3.4+deb13-amd64", "trixie-backports"),
    # sid's 7.2.13 is newer than the 7.2.12 that trixie-backports still carries
    ("7.2", "7.2.13+deb14-amd64", "sid"),
    ("6.16", "6.16.12+deb13-amd64", "trixie-backports"),
    ("6.12.118+deb13-amd64", "6.12.118+deb13-amd64", "trixie-security"),
    ("6.12.117+deb12-amd64", "6.12.117+deb12-amd64", "bookworm-security"),
    ("6.1.0-47-amd64", "6.1.0-47-amd64", "bookworm"),
])  # fmt: skip
def test_pick_across_suites(text: str, release: str, suite: str) -> None:
    found = kernels.pick(specs.parse_spec(text), _all_candidates())
    assert found is not None and (found.release, found.suite) == (release, suite)


def test_pick_an_upstream_version_no_suite_has() -> None:
    cands = _all_candidates()
    assert kernels.pick(specs.parse_spec("5.10"), cands) is None
    assert kernels.pick(specs.parse_spec("7.3.5+deb13-amd64"), cands) is None
    hint = [c.release for c in kernels.newest_per_upstream(cands, 3)]
    assert hint == ["7.3.4+deb13-amd64", "7.2.13+deb14-amd64", "7.1.13+deb13-amd64"]


def test_release_packages_new_layout() -> None:
    image = next(p for p in _show("trixie-backports.images")
                 if p.name == "linux-image-7.3.4+deb13-amd64")
    [headers] = _show("trixie-backports.headers-7.3.4")
    assert unpacked.release_packages("7.3.4+deb13-amd64", image, headers) == [
        "linux-image-7.3.4+deb13-amd64", "linux-base-7.3.4+deb13-amd64",
        "linux-binary-7.3.4+deb13-amd64", "linux-modules-7.3.4+deb13-amd64",
        "linux-headers-7.3.4+deb13-amd64", "linux-headers-7.3.4+deb13-common",
        "linux-kbuild-7.3.4+deb13",
    ]  # fmt: skip  (gcc-14-for-host is the build root's business, not the kernel's)


def test_release_packages_old_layout() -> None:
    image = next(p for p in _show("bookworm-security.images")
                 if p.name == "linux-image-6.1.0-57-amd64")
    [headers] = _show("bookworm-security.headers-6.1.0-57")
    assert unpacked.release_packages("6.1.0-57-amd64", image, headers) == [
        "linux-image-6.1.0-57-amd64", "linux-headers-6.1.0-57-amd64",
        "linux-headers-6.1.0-57-common", "linux-kbuild-6.1",
    ]  # fmt: skip


# --- the default kernel ------------------------------------------------------------------


@pytest.mark.parametrize(("os_release", "track"), [
    ('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nVERSION_CODENAME=bookworm\n', "6.1"),
    ('PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nVERSION_CODENAME=trixie\n', "trixie"),
])  # fmt: skip
def test_default_is_the_hosts_stock_kernel(os_release: str, track: str) -> None:
    name, why = specs.default_track(os_release)
    assert name == track
    assert why.startswith(f"default kernel: {track} (") and "--kernel overrides" in why


def test_default_elsewhere_is_stable() -> None:
    name, why = specs.default_track('NAME="Ubuntu"\nVERSION_CODENAME=noble\n')
    assert name == specs.DEFAULT_FALLBACK and "noble" in why
    assert specs.default_track("")[0] == specs.DEFAULT_FALLBACK


# --- the fetcher end to end, on the saved metadata ---------------------------------------

#: what the fake packages ship as the kernel's config (the generic 7.3.4's lines)
GOOD_CONFIG = (util.DATA / "kconfig" / "config-7.3.4+deb13-amd64").read_text()


# Files each package puts in place, in Debian's two layouts (contents made up, paths real).
def _package_files(name: str, release: str, new_layout: bool,
                   config: str = GOOD_CONFIG) -> dict[str, str]:
    mods = f"usr/lib/modules/{release}" if new_layout else f"lib/modules/{release}"
    hdrs = f"usr/src/linux-headers-{release}"
    common = f"usr/src/linux-headers-{release.removesuffix('-amd64')}-common"
    files = {
        f"linux-binary-{release}": {f"{mods}/vmlinuz": "image"},
        f"linux-modules-{release}": {f"{mods}/kernel/fs/nls/nls_demo.ko.xz": ""},
        f"linux-base-{release}": {f"{mods}/System.map": "ffffffffffffffff B stub\n",
                                  f"{mods}/modules.order": "", f"{mods}/modules.builtin": "",
                                  f"{mods}/config": config},
        f"linux-headers-{release}": {
            f"{hdrs}/Makefile": (f"KBUILD_OUTPUT=/usr/src/linux-headers-{release}\n"
                                 f"include /{common}/Makefile\n"),
            f"{hdrs}/include/generated/utsrelease.h": f'#define UTS_RELEASE "{release}"\n'},
        f"linux-headers-{release.removesuffix('-amd64')}-common": {f"{common}/Makefile": ""},
    }.get(name, {})
    if name == f"linux-image-{release}" and not new_layout:
        files = {f"boot/vmlinuz-{release}": "image", f"boot/config-{release}": config,
                 f"{mods}/modules.order": ""}
    return files


class FakeSuiteApt(archive.SuiteApt):
    """SuiteApt answering from tests/data/apt; its downloads are .debs made here."""

    calls: list[str] = []  # noqa: RUF012 (shared on purpose: one log per test)
    config = GOOD_CONFIG

    def configure(self, host: object) -> bool:
        self.calls.append(f"configure {self.suite}")
        return False

    def lists_age(self) -> float:
        return 0.0

    def update(self) -> None:
        self.calls.append(f"update {self.suite}")

    def show(self, *packages: str) -> list[archive.Package]:
        known = [p for f in sorted(DATA.glob(f"{self.suite}.*")) for p in _show(f.name)]
        return [p for p in known if p.name in packages]

    def names(self, prefix: str) -> list[str]:
        return [p.name for f in sorted(DATA.glob(f"{self.suite}.*")) for p in _show(f.name)
                if p.name.startswith(prefix)]

    def download(self, packages: list[str], dest: Path) -> None:  # type: ignore[override]
        self.calls.append(f"download {self.suite} {' '.join(packages)}")
        # the config's package comes alone first: linux-base (new layout) or the image
        first = packages[0]
        release = next(first.removeprefix(p) for p in
                       ("linux-image-", "linux-base-", "linux-headers-") if first.startswith(p))
        new_layout = any(p.startswith(("linux-binary-", "linux-base-")) for p in packages)
        for name in packages:
            tree = dest / f"{name}.tree"
            for rel, text in _package_files(name, release, new_layout, self.config).items():
                (tree / rel).parent.mkdir(parents=True, exist_ok=True)
                (tree / rel).write_text(text)
            (tree / "DEBIAN").mkdir(parents=True)
            (tree / "DEBIAN" / "control").write_text(
                f"Package: {name}\nVersion: 1\nArchitecture: amd64\nMaintainer: t <t@t>\n"
                "Description: test\n")
            subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree),
                            str(dest / f"{name}_1_amd64.deb")], check=True, capture_output=True)
            shutil.rmtree(tree)


@pytest.fixture
def fake_apt(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    depmod = shutil.which("depmod") or os.path.exists("/sbin/depmod")
    if not (shutil.which("dpkg-deb") and depmod):
        pytest.skip("needs dpkg-deb and depmod (Debian's dpkg and kmod)")
    FakeSuiteApt.calls = []
    monkeypatch.setattr(kernels, "SuiteApt", FakeSuiteApt)
    monkeypatch.setattr(archive, "host_apt_entries", lambda: [])
    monkeypatch.setattr(FakeSuiteApt, "config", GOOD_CONFIG)
    return FakeSuiteApt.calls


def test_fetch_new_layout(tmp_path: Path, fake_apt: list[str]) -> None:
    said: list[str] = []
    k = kernels.ensure("latest", cache=tmp_path, progress=said.append)
    root = tmp_path / "kernels" / "7.3.4+deb13-amd64"
    assert (k.release, k.suite, k.root) == ("7.3.4+deb13-amd64", "trixie-backports", root)
    assert k.image == root / "usr/lib/modules/7.3.4+deb13-amd64/vmlinuz"
    assert k.image.read_text() == "image"
    assert os.readlink(root / "lib") == "usr/lib"  # so that depmod -b and vng find the modules
    assert (k.modules_dir / "modules.dep").is_file()  # depmod ran (the stub System.map unread)
    assert k.kdir == root / "usr/src/linux-headers-7.3.4+deb13-amd64"
    assert (k.kdir / "Makefile").read_text() == (
        f"KBUILD_OUTPUT={root}/usr/src/linux-headers-7.3.4+deb13-amd64\n"
        f"include {root}/usr/src/linux-headers-7.3.4+deb13-common/Makefile\n")
    # the config's package first (its config read before the image comes), then the rest
    first, download = [c for c in fake_apt if c.startswith("download")]
    assert first == "download trixie-backports linux-base-7.3.4+deb13-amd64"
    assert download.split()[1] == "trixie-backports"
    assert "linux-binary-7.3.4+deb13-amd64" in download and "gcc" not in download
    assert k.config == k.image.parent / "config"
    assert "CONFIG_LIVEPATCH=y" in k.config.read_text()
    assert json.loads((root / ".klptrace-kernel.json").read_text())["suite"] == "trixie-backports"
    assert "kernel latest: 7.3.4+deb13-amd64 from trixie-backports" in said

    # A second call, by another name of the same kernel, downloads nothing.
    fake_apt.clear()
    again = kernels.ensure("7.3", cache=tmp_path)
    assert again == k and not [c for c in fake_apt if not c.startswith("configure")]
    assert kernels.ensure("7.3.4+deb13-amd64", cache=tmp_path) == k


def test_fetch_old_layout(tmp_path: Path, fake_apt: list[str]) -> None:
    k = kernels.ensure("6.1", cache=tmp_path)
    root = tmp_path / "kernels" / "6.1.0-57-amd64"
    assert (k.image, k.suite) == (root / "boot/vmlinuz-6.1.0-57-amd64", "bookworm-security")
    assert (root / "lib").is_dir() and not (root / "lib").is_symlink()
    assert k.kdir == root / "usr/src/linux-headers-6.1.0-57-amd64"
    assert (k.modules_dir / "modules.dep").is_file()


def test_unknown_version_is_an_error_after_the_lookup(
    tmp_path: Path, fake_apt: list[str], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KLPTRACE_CACHE", str(tmp_path))
    assert cli.main(["kernel", "--kernel", "5.10"]) == 1
    err = capsys.readouterr().err
    assert "klptrace: error: unknown kernel '5.10': no such Debian kernel" in err
    assert "hint: the newest of each version: 7.3.4+deb13-amd64 (trixie-backports), " in err
    assert not [c for c in fake_apt if c.startswith("download")]


def test_no_form_fails_before_any_apt(tmp_path: Path, fake_apt: list[str]) -> None:
    with pytest.raises(UsageError):
        kernels.ensure("nonsense", cache=tmp_path)
    assert fake_apt == [] and not (tmp_path / "apt").exists()


def test_default_kernel_is_said(tmp_path: Path, fake_apt: list[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "host_default_track",
                        lambda: specs.default_track("VERSION_CODENAME=trixie\n"))
    said: list[str] = []
    k = kernels.ensure(None, cache=tmp_path, progress=said.append)
    assert k.release == "6.12.118+deb13-amd64" and k.suite == "trixie-security"
    assert said[0].startswith("default kernel: trixie (Debian 13's stock kernel")


def test_kernel_from_a_new_layout_path(tmp_path: Path) -> None:
    mods = tmp_path / "usr" / "lib" / "modules" / "7.3.4+deb13-amd64"
    mods.mkdir(parents=True)
    (mods / "vmlinuz").write_bytes(b"")
    k = kernels.ensure(str(mods / "vmlinuz"), cache=tmp_path / "c")
    assert (k.release, k.root, k.modules_dir, k.suite) == (
        "7.3.4+deb13-amd64", tmp_path, mods, None)


def test_download_failure_is_not_hidden(tmp_path: Path, fake_apt: list[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(self: FakeSuiteApt, packages: list[str], dest: Path) -> None:
        raise KlptraceError("apt-get download failed")

    monkeypatch.setattr(FakeSuiteApt, "download", fail)
    monkeypatch.setattr(FakeSuiteApt, "configure", lambda self, host: True)  # fresh lists
    with pytest.raises(KlptraceError, match="download failed"):
        kernels.ensure("sid", cache=tmp_path)
    assert not list((tmp_path / "kernels").iterdir())  # nothing half-unpacked left


# --- flavours and experimental ----------------------------------------------------------


@pytest.mark.parametrize(("text", "kind", "value", "flavour"), [
    ("trixie-rt", "track", "trixie", "rt"),
    ("trixie-backports", "track", "trixie-backports", "amd64"),  # a track, not a flavour
    ("trixie-backports-cloud", "track", "trixie-backports", "cloud"),
    ("bookworm-rt", "track", "6.1", "rt"),
    ("6.1-rt", "track", "6.1", "rt"),
    ("unstable-cloud", "track", "sid", "cloud"),
    ("latest-cloud", "latest", "latest", "cloud"),
    ("latest-amd64", "latest", "latest", "amd64"),
    ("7.3-cloud", "upstream", "7.3", "cloud"),
    ("experimental", "experimental", "experimental", "amd64"),
    ("next-rt", "experimental", "experimental", "rt"),
    ("6.12.117+deb13-rt-amd64", "release", "6.12.117+deb13-rt-amd64", "rt"),
    ("7.3.4+deb13-cloud-amd64", "release", "7.3.4+deb13-cloud-amd64", "cloud"),
    ("6.1.0-57-amd64", "release", "6.1.0-57-amd64", "amd64"),
])  # fmt: skip
def test_parse_flavoured_names(text: str, kind: str, value: str, flavour: str) -> None:
    assert specs.parse_spec(text) == specs.KernelSpec(kind, value, flavour)


@pytest.mark.parametrize(("text", "flavour"), [
    ("trixie-arm64", "arm64"), ("latest-foo", "foo"), ("6.1.0-57-foo-amd64", "foo"),
])  # fmt: skip
def test_an_unknown_flavour_is_a_usage_error_naming_the_known_ones(
    text: str, flavour: str, tmp_path: Path, fake_apt: list[str],
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KLPTRACE_CACHE", str(tmp_path))
    assert cli.main(["kernel", "--kernel", text]) == 2
    err = capsys.readouterr().err
    assert f"klptrace: error: unknown kernel flavour '{flavour}' in '{text}'" in err
    assert "hint: flavours: amd64 (generic, the default), rt (PREEMPT_RT), cloud" in err
    assert fake_apt == []  # before any apt, download or boot


@pytest.mark.parametrize(("track", "flavour", "release", "suite"), [
    ("6.1", "rt", "6.1.0-57-rt-amd64", "bookworm-security"),
    ("6.12", "cloud", "6.12.95+deb12-cloud-amd64", "bookworm-backports"),
    ("trixie", "rt", "6.12.118+deb13-rt-amd64", "trixie-security"),
    ("trixie", "cloud", "6.12.118+deb13-cloud-amd64", "trixie-security"),
    ("trixie-backports", "rt", "7.3.4+deb13-rt-amd64", "trixie-backports"),
    ("sid", "cloud", "7.2.13+deb14-cloud-amd64", "sid"),
])  # fmt: skip
def test_a_flavoured_track_follows_its_own_metapackage(
    track: str, flavour: str, release: str, suite: str
) -> None:
    metas = [(s, p) for s in specs.TRACKS[track].suites for p in _show(f"{s}.flavours")
             if p.name == kernels.metapackage(flavour)]
    found = kernels.track_candidate(metas)
    assert found is not None and (found.release, found.suite) == (release, suite)


@pytest.mark.parametrize(("text", "release", "suite"), [
    ("latest-rt", "7.3.4+deb13-rt-amd64", "trixie-backports"),
    ("7.2-cloud", "7.2.13+deb14-cloud-amd64", "sid"),
    ("6.12.117+deb13-rt-amd64", "6.12.117+deb13-rt-amd64", "trixie"),
])  # fmt: skip
def test_pick_a_flavour_across_suites(text: str, release: str, suite: str) -> None:
    spec = specs.parse_spec(text)
    found = kernels.pick(spec, _all_candidates(spec.flavour))
    assert found is not None and (found.release, found.suite) == (release, suite)


def test_a_flavour_never_picks_another_flavours_release() -> None:
    rt = _all_candidates("rt")
    assert rt and all(c.release.endswith("-rt-amd64") for c in rt)
    assert not [c for c in _all_candidates() if c.release.endswith(("-rt-amd64", "-cloud-amd64"))]


def test_fetch_a_flavour(tmp_path: Path, fake_apt: list[str]) -> None:
    said: list[str] = []
    k = kernels.ensure("latest-rt", cache=tmp_path, progress=said.append)
    assert (k.release, k.suite) == ("7.3.4+deb13-rt-amd64", "trixie-backports")
    root = tmp_path / "kernels" / "7.3.4+deb13-rt-amd64"
    assert k.image == root / "usr/lib/modules/7.3.4+deb13-rt-amd64/vmlinuz"
    assert k.kdir == root / "usr/src/linux-headers-7.3.4+deb13-rt-amd64"
    assert "kernel latest-rt: 7.3.4+deb13-rt-amd64 from trixie-backports" in said
    fake_apt.clear()
    assert kernels.ensure("trixie-backports-rt", cache=tmp_path) == k
    assert not [c for c in fake_apt if c.startswith("download")]


def test_a_kernel_without_livepatch_is_refused_before_its_image_is_downloaded(
    tmp_path: Path, fake_apt: list[str], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(FakeSuiteApt, "config", (DATA.parent / "kconfig" / "config-no-livepatch")
                        .read_text())
    monkeypatch.setenv("KLPTRACE_CACHE", str(tmp_path))
    assert cli.main(["kernel", "--kernel", "latest-cloud"]) == 4
    err = capsys.readouterr().err
    assert ("klptrace: error: kernel 7.3.4+deb13-cloud-amd64 cannot be traced: its config "
            "leaves CONFIG_LIVEPATCH unset") in err
    assert "hint: klptrace needs a kernel built with CONFIG_LIVEPATCH=y" in err
    downloads = [c for c in fake_apt if c.startswith("download")]
    assert downloads == ["download trixie-backports linux-base-7.3.4+deb13-cloud-amd64"]
    assert not list((tmp_path / "kernels").iterdir())  # nothing half-unpacked left


def test_old_layout_config_comes_with_the_image(tmp_path: Path, fake_apt: list[str]) -> None:
    k = kernels.ensure("6.1-rt", cache=tmp_path)
    assert k.release == "6.1.0-57-rt-amd64"
    assert k.config == k.root / "boot/config-6.1.0-57-rt-amd64"
    downloads = [c for c in fake_apt if c.startswith("download")]
    assert downloads[0] == "download bookworm-security linux-image-6.1.0-57-rt-amd64"


def test_experimental_older_than_latest_says_so(
    tmp_path: Path, fake_apt: list[str], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KLPTRACE_CACHE", str(tmp_path))
    assert cli.main(["kernel", "--kernel", "next-rt"]) == 1
    err = capsys.readouterr().err
    assert ("klptrace: error: experimental carries no kernel newer than the released ones "
            "today: its linux-image-rt-amd64 names 7.3-rt-amd64 (7.3~rc7-1~exp1), older than "
            "7.3.4+deb13-rt-amd64 (7.3.4-1~bpo13+1, trixie-backports)") in err
    assert "hint: --kernel latest-rt runs the newest released kernel" in err
    assert not [c for c in fake_apt if c.startswith("download")]


def test_experimental_newer_than_latest_is_its_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    apts = [FakeSuiteApt(s, Path("/nonexistent")) for s in
            (*specs.EXPERIMENTAL.suites, *specs.KNOWN_SUITES)]
    spec = specs.parse_spec("experimental")
    assert kernels._resolve(spec, apts) is None  # 7.3~rc7 < 7.3.4 (the archive today)
    # the next release candidate: 7.4~rc1 sorts above every released 7.3
    rc = archive.Package("linux-image-amd64", "7.4~rc1-1~exp1", ("linux-image-7.4-amd64",))
    real_show = FakeSuiteApt.show
    monkeypatch.setattr(FakeSuiteApt, "show", lambda self, *names: [rc] if (
        self.suite == "experimental" and names == ("linux-image-amd64",))
        else real_show(self, *names))
    found = kernels._resolve(spec, apts)
    assert found == kernels.Candidate("7.4-amd64", "7.4~rc1-1~exp1", "experimental")


def test_latest_never_looks_in_experimental() -> None:
    assert "experimental" not in specs.KNOWN_SUITES
    assert kernels._suites_of(specs.parse_spec("latest-rt")) == specs.KNOWN_SUITES


def test_kernel_list(tmp_path: Path, fake_apt: list[str], capsys: pytest.CaptureFixture[str],
                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLPTRACE_CACHE", str(tmp_path))
    assert cli.main(["kernel", "--list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["suite", "--kernel", "amd64", "rt", "cloud"]
    rows = {line.split()[0]: line.split()[1:] for line in out[1:] if line.strip()}
    assert rows["trixie"] == ["trixie", "6.12.117+deb13", "6.12.117+deb13", "6.12.117+deb13"]
    assert rows["trixie-backports"] == ["trixie-backports", "7.3.4+deb13", "7.3.4+deb13",
                                        "7.3.4+deb13"]
    assert rows["bookworm-security"] == ["6.1", "6.1.0-57", "6.1.0-57", "6.1.0-57"]
    assert rows["experimental"] == ["experimental", "7.3", "7.3", "7.3"]
    assert rows["bookworm-updates"] == ["6.1", "-", "-", "-"]
    assert not [c for c in fake_apt if c.startswith("download")]


def test_kernel_list_takes_no_kernel(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["kernel", "--list", "--kernel", "6.1"]) == 2
    assert "klptrace: error: --list shows every suite's kernels" in capsys.readouterr().err
