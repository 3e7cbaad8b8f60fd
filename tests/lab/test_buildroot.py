"""Where the test modules are built: the host, or a suite's build root. No root, no network.

tests/data/kbuild/<release>.kernelvariables and .config are Debian's (the
.config cut to the compiler's lines), from the headers of each kernel
klptrace knows on 2026-12-01.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import util

from klptrace.errors import KlptraceError
from klptrace.lab import archive, build, buildroot, kernels

DATA = util.DATA / "kbuild"

COMPILERS = [
    # release, what kbuild calls, Debian package
    ("6.1.0-57-amd64", "gcc-12", "gcc-12"),
    ("6.12.95+deb12-amd64", "x86_64-linux-gnu-gcc-12", "gcc-12"),
    ("6.12.118+deb13-amd64", "x86_64-linux-gnu-gcc-14", "gcc-14"),
    ("7.3.4+deb13-amd64", "x86_64-linux-gnu-gcc-14", "gcc-14"),
    ("7.2.13+deb14-amd64", "x86_64-linux-gnu-gcc-16", "gcc-16"),
]


def _kdir(tmp_path: Path, release: str) -> Path:
    kdir = tmp_path / "kernels" / release / "usr" / "src" / f"linux-headers-{release}"
    kdir.mkdir(parents=True)
    shutil.copy(DATA / f"{release}.kernelvariables", kdir / ".kernelvariables")
    shutil.copy(DATA / f"{release}.config", kdir / ".config")
    return kdir


@pytest.mark.parametrize(("release", "command", "package"), COMPILERS)
def test_kernel_compiler(tmp_path: Path, release: str, command: str, package: str) -> None:
    c = buildroot.kernel_compiler(_kdir(tmp_path, release))
    assert (c.command, c.package) == (command, package)
    assert f"(Debian {package.removeprefix('gcc-')}." in c.version_text


def test_kbuild_cc_leaves_cross_builds_out() -> None:
    # 6.1's CROSS_COMPILE is set only inside ifneq (a cross build): kbuild calls plain gcc-12.
    assert buildroot.kbuild_cc((DATA / "6.1.0-57-amd64.kernelvariables").read_text()) == "gcc-12"
    assert buildroot.kbuild_cc("CC = $(if $(X),$(CCACHE)) clang-19\n") == "clang-19"
    assert buildroot.kbuild_cc("ARCH = x86\n") is None


def test_config_compiler_clang_and_none() -> None:
    text = 'CONFIG_CC_VERSION_TEXT="Debian clang version 19.1.7"\nCONFIG_GCC_VERSION=0\n' \
           "CONFIG_CLANG_VERSION=190107\n"
    assert buildroot.config_compiler(text) == ("Debian clang version 19.1.7", "clang-19")
    assert buildroot.config_compiler("") == ("", None)


def test_kernel_compiler_without_kernelvariables(tmp_path: Path) -> None:
    kdir = tmp_path / "k"
    kdir.mkdir()
    shutil.copy(DATA / "7.3.4+deb13-amd64.config", kdir / ".config")
    assert buildroot.kernel_compiler(kdir).command == "x86_64-linux-gnu-gcc-14"


def _compiler(release: str) -> buildroot.Compiler:
    text, package = buildroot.config_compiler((DATA / f"{release}.config").read_text())
    return buildroot.Compiler("x86_64-linux-gnu-" + (package or ""), text, package)


def test_choose_place() -> None:
    c = _compiler("7.3.4+deb13-amd64")
    assert build.choose_place(c, "trixie-backports", Path("/k"), on_host=True).key() == "host"
    root = build.choose_place(c, "trixie-backports", Path("/k"), on_host=False)
    assert root.codename == "trixie" and root.key() == "root:trixie-gcc-14"
    assert build.choose_place(c, "trixie-security", Path("/k"), False).key() == root.key()
    sid = build.choose_place(_compiler("7.2.13+deb14-amd64"), "sid", Path("/k"), False)
    assert sid.key() == "root:sid-gcc-16"
    with pytest.raises(KlptraceError) as err:
        build.choose_place(c, None, Path("/k"), on_host=False)  # --kdir, a vmlinuz path
    assert "x86_64-linux-gnu-gcc-14" in err.value.message
    assert err.value.hint is not None and "apt-get install gcc-14" in err.value.hint


def test_codename_of() -> None:
    assert [buildroot.codename_of(s) for s in ("trixie", "trixie-backports", "trixie-security",
                                               "sid", "bookworm-backports")] == [
        "trixie", "trixie", "trixie", "sid", "bookworm"]


def test_mmdebstrap_argv(tmp_path: Path) -> None:
    c = _compiler("7.3.4+deb13-amd64")
    argv = buildroot.mmdebstrap_argv("trixie", [c.package or "", *buildroot.ROOT_PACKAGES],
                                     tmp_path / "root", tmp_path / "sources",
                                     ["Acquire::Check-Valid-Until=false"])
    # its mounts (/proc, /dev in the root while it installs) die with the namespace
    assert argv[:5] == ["unshare", "--mount", "--propagation", "private", "--"]
    assert argv[5:8] == ["mmdebstrap", "--variant=apt", "--mode=root"]
    assert ("--include=gcc-14,make,libc6-dev,libelf-dev,pahole,kmod,bc,bison,flex,libssl-dev"
            in argv)
    assert '--aptopt=Acquire::Check-Valid-Until "false"' in argv
    assert argv[-3:] == ["trixie", str(tmp_path / "root"), str(tmp_path / "sources")]


def test_acquire_options_from_apt_config_dump() -> None:
    dump = ('APT "";\nAcquire::Check-Valid-Until "false";\nAcquire::http::Proxy "http://p:3128";\n'
            'Acquire::Languages "none";\nDir::Cache "/var/cache/apt/";\n')
    assert archive.acquire_options(dump) == ["Acquire::Check-Valid-Until=false",
                                             "Acquire::http::Proxy=http://p:3128"]


def test_run_argv_binds_at_the_same_paths_and_mounts_proc(tmp_path: Path) -> None:
    argv = buildroot.run_argv(tmp_path / "root", [Path("/c/kernels/7.3"), Path("/c/modules/7.3")],
                              ["make", "-C", "/c/kernels/7.3/usr/src/h", "M=/c/modules/7.3"])
    assert argv[:5] == ["unshare", "--mount", "--propagation", "private", "--"]
    script = argv[argv.index("-c") + 1]
    assert 'mount --bind "$1" "$root$1"' in script and 'mount -t proc proc "$root/proc"' in script
    assert 'exec chroot "$root"' in script
    rest = argv[argv.index("-c") + 2:]
    assert rest[:5] == ["sh", str(tmp_path / "root"), "/c/kernels/7.3", "/c/modules/7.3", "--"]
    assert rest[5:7] == ["/usr/bin/env", "-i"] and rest[-4:] == [
        "make", "-C", "/c/kernels/7.3/usr/src/h", "M=/c/modules/7.3"]


def test_the_namespace_script_binds_then_chroots(tmp_path: Path) -> None:
    # The script itself, with mount and chroot standing in as logging shell functions.
    argv = buildroot.run_argv(tmp_path / "r", [Path("/a"), Path("/b c")], ["make", "x"])
    script = argv[argv.index("-c") + 1]
    fake = "mount() { echo mount \"$@\"; }\nchroot() { echo chroot \"$@\"; }\n" + script.replace(
        "exec chroot", "chroot")
    out = subprocess.run(["/bin/sh", "-c", fake, *argv[argv.index("-c") + 2:]],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    r = str(tmp_path / "r")
    assert out[:3] == [f"mount --bind /a {r}/a", f"mount --bind /b c {r}/b c",
                       f"mount -t proc proc {r}/proc"]
    assert out[3].startswith(f"chroot {r} /usr/bin/env -i PATH=") and out[3].endswith(" make x")


def test_mount_points_are_made_and_symlinks_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "var").mkdir(parents=True)
    (root / "var" / "run").symlink_to("/run")
    points = buildroot.mount_points(root, [Path("/srv/c/kernels/7.3"), Path("/srv/c/kernels/7.3")])
    assert points == [Path("/srv/c/kernels/7.3")] and (root / "srv/c/kernels/7.3").is_dir()
    with pytest.raises(KlptraceError, match="symlink"):
        buildroot.mount_points(root, [Path("/var/run/klptrace")])
    assert not Path("/run/klptrace").exists()


# --- making a root: once, atomic, reused -------------------------------------------------


def _fake_mmdebstrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, fail: bool) -> Path:
    """A stand-in for mmdebstrap that logs its runs and makes a root with the compiler."""
    log = tmp_path / "mmdebstrap.log"
    script = tmp_path / "mmdebstrap"
    script.write_text(
        "#!/bin/sh\n"
        f"echo run >> {log}\n"
        'for a do t=$s; s=$a; done\n'  # target is the next-to-last argument
        'mkdir -p "$t/usr/bin" "$t/proc"\n'
        + ("echo 'E: half-way' >&2; exit 1\n" if fail else
           'touch "$t/usr/bin/x86_64-linux-gnu-gcc-14"\n'))
    script.chmod(0o755)
    monkeypatch.setattr(buildroot, "_need_root", lambda what: None)
    monkeypatch.setattr(buildroot.shutil, "which", lambda name: str(script))
    monkeypatch.setattr(buildroot, "mmdebstrap_argv",
                        lambda codename, pkgs, target, sources, aptopts=(): [
                            str(script), codename, str(target), str(sources)])
    return log


def test_a_root_is_made_once_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = _fake_mmdebstrap(tmp_path, monkeypatch, fail=False)
    c = _compiler("7.3.4+deb13-amd64")
    said: list[str] = []
    root = buildroot.ensure_root("trixie", c, "Types: deb\n", tmp_path / "cache", said.append)
    assert root == tmp_path / "cache" / "roots" / "trixie-gcc-14"
    assert buildroot.is_root(root) and (root / "usr/bin/x86_64-linux-gnu-gcc-14").exists()
    marker = json.loads((root / ".klptrace-root.json").read_text())
    assert marker["packages"][0] == "gcc-14" and marker["codename"] == "trixie"
    assert any("made in" in m for m in said)
    again = buildroot.ensure_root("trixie", c, "Types: deb\n", tmp_path / "cache", said.append)
    assert again == root
    assert log.read_text() == "run\n"
    assert {p.name for p in root.parent.iterdir()} == {".lock", "trixie-gcc-14"}


def test_a_link_planted_as_the_roots_lock_is_not_followed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = _fake_mmdebstrap(tmp_path, monkeypatch, fail=False)
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    (tmp_path / "cache" / "roots").mkdir(parents=True)
    (tmp_path / "cache" / "roots" / ".lock").symlink_to(victim)
    with pytest.raises(KlptraceError, match="cannot open the cache's lock"):
        buildroot.ensure_root("trixie", _compiler("7.3.4+deb13-amd64"), "", tmp_path / "cache",
                              lambda m: None)
    assert victim.read_text() == "untouched\n" and not log.exists()


def test_a_failed_root_leaves_nothing_usable(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_mmdebstrap(tmp_path, monkeypatch, fail=True)
    c = _compiler("7.3.4+deb13-amd64")
    with pytest.raises(KlptraceError, match="half-way"):
        buildroot.ensure_root("trixie", c, "", tmp_path / "cache", lambda m: None)
    assert {p.name for p in (tmp_path / "cache" / "roots").iterdir()} == {".lock"}


def test_a_root_without_the_compiler_is_refused(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_mmdebstrap(tmp_path, monkeypatch, fail=False)
    c = _compiler("7.2.13+deb14-amd64")  # wants gcc-16; the stand-in installs gcc-14
    with pytest.raises(KlptraceError, match="has no x86_64-linux-gnu-gcc-16"):
        buildroot.ensure_root("sid", c, "", tmp_path / "cache", lambda m: None)
    assert not buildroot.is_root(tmp_path / "cache" / "roots" / "sid-gcc-16")


# --- build.build: host or root, and a second build builds nothing -----------------------


def _fake_tree(tmp_path: Path, release: str) -> tuple[kernels.Kernel, Path]:
    kdir = _kdir(tmp_path, release)
    (kdir / "include" / "generated").mkdir(parents=True)
    (kdir / "include" / "generated" / "utsrelease.h").write_text(
        f'#define UTS_RELEASE "{release}"\n')
    (kdir / "Makefile").write_text("modules:\n\ttouch $(M)/a.ko\n")
    src = tmp_path / "src"
    src.mkdir()
    (src / "Kbuild").write_text("obj-m += a.o\n")
    root = kdir.parents[2]
    return kernels.Kernel(release, root / "vmlinuz", root / "lib", kdir, root,
                          "trixie-backports"), src


def test_build_in_the_root_when_the_host_lacks_the_compiler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel, src = _fake_tree(tmp_path, "7.3.4+deb13-amd64")
    calls: list[tuple[str, object]] = []

    def ensure_root(codename: str, c: buildroot.Compiler, sources: str, cache: Path,
                    say: object, aptopts: object = ()) -> Path:
        calls.append(("root", codename))
        return buildroot.roots_dir(cache) / buildroot.root_name(codename, c)

    def run_in_root(root: Path, binds: list[Path], argv: list[str]
                    ) -> subprocess.CompletedProcess[str]:
        calls.append(("run", (root, binds)))
        return subprocess.run(argv, capture_output=True, text=True)  # the fake Makefile, here

    monkeypatch.setattr(build.shutil, "which", lambda name: None)  # no gcc-14 on this host
    monkeypatch.setattr(buildroot, "ensure_root", ensure_root)
    monkeypatch.setattr(buildroot, "run_in_root", run_in_root)
    monkeypatch.setattr(archive, "host_apt_entries",
                        lambda: [archive.AptEntry(("http://m.example/debian",), ("trixie",), None)])
    said: list[str] = []
    built = build.build(kernel, src=src, cache=tmp_path / "cache", say=said.append)
    root = tmp_path / "cache" / "roots" / "trixie-gcc-14"
    assert built.rebuilt and built.where == f"trixie's build root {root}"
    assert "Debian 14.2.0" in built.compiler
    assert calls[0] == ("root", "trixie")
    assert calls[1] == ("run", (root, [kernel.root, kernel.root.resolve(), built.dir]))
    assert said[0].startswith(
        "compiler: x86_64-linux-gnu-gcc-14 (Debian 14.2.0-19) 14.2.0: "
        "x86_64-linux-gnu-gcc-14 is not on this host: modules build in trixie's")
    calls.clear()
    again = build.build(kernel, src=src, cache=tmp_path / "cache")
    assert not again.rebuilt and calls == []  # neither a root nor a build the second time


def test_build_on_the_host_when_it_has_the_compiler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel, src = _fake_tree(tmp_path, "6.12.95+deb12-amd64")
    monkeypatch.setattr(build.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(buildroot, "ensure_root", lambda *a, **k: pytest.fail("no root needed"))
    built = build.build(kernel, src=src, cache=tmp_path / "cache")
    assert built.rebuilt and built.where == "the host"
