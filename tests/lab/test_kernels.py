"""--kernel specs (lab/specs.py) and kernels given as a path or already in the cache
(lab/kernels.py, lab/unpacked.py): no network."""

from __future__ import annotations

from pathlib import Path

import pytest

from klptrace.errors import KlptraceError, UsageError
from klptrace.lab import defaults, kernels, specs, unpacked

# --- --kernel specs -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("6.1", "track", "6.1"),
        ("bookworm", "track", "6.1"),
        ("6.12", "track", "6.12"),
        ("bookworm-backports", "track", "6.12"),
        ("trixie", "track", "trixie"),
        ("trixie-backports", "track", "trixie-backports"),
        ("sid", "track", "sid"),
        ("unstable", "track", "sid"),
        ("latest", "latest", "latest"),
        ("7.3", "upstream", "7.3"),
        ("5.10", "upstream", "5.10"),
        ("7.3.4+deb13-amd64", "release", "7.3.4+deb13-amd64"),
        ("6.1.0-56-amd64", "release", "6.1.0-56-amd64"),
        ("6.12.95+deb12-amd64", "release", "6.12.95+deb12-amd64"),
        ("6.1.0-56-cloud-amd64", "release", "6.1.0-56-cloud-amd64"),
        ("/srv/k/boot/vmlinuz-6.1.0-56-amd64", "path", "/srv/k/boot/vmlinuz-6.1.0-56-amd64"),
        ("./boot/vmlinuz", "path", "./boot/vmlinuz"),
        ("~/k/boot/vmlinuz-x", "path", "~/k/boot/vmlinuz-x"),
    ],
)
def test_parse_spec(text: str | None, kind: str, value: str) -> None:
    spec = specs.parse_spec(text)  # its flavour: tests/lab/test_kernels_archive.py
    assert (spec.kind, spec.value) == (kind, value)


@pytest.mark.parametrize("text", ["nonsense", "6", "7.3.x", "6.1.0", "6.1.0-56-arm64", "Latest"])
def test_parse_spec_no_form_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError) as err:
        specs.parse_spec(text)
    assert err.value.status == 2
    assert repr(text) in err.value.message
    assert err.value.hint is not None and "7.3.4+deb13-amd64" in err.value.hint
    assert "trixie" in err.value.hint and "latest" in err.value.hint


def test_parse_spec_existing_file_is_a_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "vmlinuz").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert specs.parse_spec("vmlinuz") == specs.KernelSpec("path", "vmlinuz")


def test_kernel_from_path(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    image = tmp_path / "boot" / "vmlinuz-6.1.0-9-amd64"
    image.write_bytes(b"")
    mods = tmp_path / "lib" / "modules" / "6.1.0-9-amd64"
    mods.mkdir(parents=True)
    k = kernels.ensure(str(image), cache=tmp_path / "cache")
    assert (k.release, k.image, k.modules_dir, k.kdir) == ("6.1.0-9-amd64", image, mods, None)


def test_kernel_from_path_release_from_modules_dir(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    image = tmp_path / "boot" / "bzImage"
    image.write_bytes(b"")
    (tmp_path / "lib" / "modules" / "6.9.0-rc1").mkdir(parents=True)
    assert kernels.ensure(str(image), cache=tmp_path / "c").release == "6.9.0-rc1"


def test_kernel_from_path_without_modules(tmp_path: Path) -> None:
    image = tmp_path / "boot" / "vmlinuz-6.1.0-9-amd64"
    image.parent.mkdir()
    image.write_bytes(b"")
    with pytest.raises(KlptraceError, match=r"no modules for 6\.1\.0-9-amd64"):
        kernels.ensure(str(image), cache=tmp_path / "c")


def test_cached_release_needs_no_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "kernels" / "6.1.0-9-amd64"
    (root / "boot").mkdir(parents=True)
    (root / ".klptrace-kernel.json").write_text("{}")
    monkeypatch.setenv("PATH", "/nonexistent")  # no apt-get, no apt-cache
    k = kernels.ensure("6.1.0-9-amd64", cache=tmp_path)
    assert k.image == root / "boot" / "vmlinuz-6.1.0-9-amd64"
    assert unpacked.cached_releases(tmp_path) == ["6.1.0-9-amd64"]


def test_cache_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLPTRACE_CACHE", str(tmp_path))
    assert defaults.cache_dir() == tmp_path
    monkeypatch.delenv("KLPTRACE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert defaults.cache_dir() == tmp_path / "home" / ".cache" / "klptrace"


def test_spec_kinds_are_an_enum_with_todays_words() -> None:
    assert specs.parse_spec("6.1").kind is specs.SpecKind.TRACK
    assert specs.parse_spec("latest-rt") == specs.KernelSpec(specs.SpecKind.LATEST, "latest", "rt")
    assert [k.value for k in specs.SpecKind] == [
        "track", "experimental", "upstream", "latest", "release", "path"]
