"""Unit tests of the kernel lab's pure parts: no root, no network, no VM."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from klptrace import archive, build, cli, kernels, vm
from klptrace.errors import KlptraceError, UsageError

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
    assert kernels.parse_spec(text) == kernels.KernelSpec(kind, value)


@pytest.mark.parametrize("text", ["nonsense", "6", "7.3.x", "6.1.0", "6.1.0-56-arm64", "Latest"])
def test_parse_spec_no_form_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError) as err:
        kernels.parse_spec(text)
    assert err.value.status == 2
    assert repr(text) in err.value.message
    assert err.value.hint is not None and "7.3.4+deb13-amd64" in err.value.hint
    assert "trixie" in err.value.hint and "latest" in err.value.hint


def test_parse_spec_existing_file_is_a_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "vmlinuz").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert kernels.parse_spec("vmlinuz") == kernels.KernelSpec("path", "vmlinuz")


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
    assert kernels.cached_releases(tmp_path) == ["6.1.0-9-amd64"]


def test_cache_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLPTRACE_CACHE", str(tmp_path))
    assert kernels.cache_dir() == tmp_path
    monkeypatch.delenv("KLPTRACE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert kernels.cache_dir() == tmp_path / "home" / ".cache" / "klptrace"


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
    assert kernels.header_packages(headers) == ["linux-headers-6.1.0-56-common",
                                                "linux-kbuild-6.1"]


# --- the unpacked tree -----------------------------------------------------------


def test_relink_absolute(tmp_path: Path) -> None:
    hdrs = tmp_path / "usr" / "src" / "linux-headers-6.1.0-9-amd64"
    hdrs.mkdir(parents=True)
    mods = tmp_path / "lib" / "modules" / "6.1.0-9-amd64"
    mods.mkdir(parents=True)
    (mods / "build").symlink_to("/usr/src/linux-headers-6.1.0-9-amd64")
    (mods / "source").symlink_to("/usr/src/not-unpacked")  # stays: nothing to point at
    (hdrs / "scripts").symlink_to("../../lib/linux-kbuild-6.1/scripts")  # relative: stays
    changed = kernels.relink_absolute(tmp_path)
    assert changed == [mods / "build"]
    assert os.readlink(mods / "build") == "../../../usr/src/linux-headers-6.1.0-9-amd64"
    assert (mods / "build").resolve() == hdrs
    assert os.readlink(mods / "source") == "/usr/src/not-unpacked"
    assert os.readlink(hdrs / "scripts") == "../../lib/linux-kbuild-6.1/scripts"


def test_rewrite_headers_makefile(tmp_path: Path) -> None:
    kdir = tmp_path / "usr" / "src" / "linux-headers-6.1.0-9-amd64"
    kdir.mkdir(parents=True)
    (kdir / "Makefile").write_text("include /usr/src/linux-headers-6.1.0-9-common/Makefile\n")
    kernels.rewrite_headers_makefile(kdir, tmp_path)
    assert (kdir / "Makefile").read_text() == (
        f"include {tmp_path}/usr/src/linux-headers-6.1.0-9-common/Makefile\n"
    )
    kernels.rewrite_headers_makefile(kdir, tmp_path)  # idempotent
    assert (kdir / "Makefile").read_text().count("/usr/src/") == 1


# --- memory sizes, accel, the vng command line -------------------------------------


@pytest.mark.parametrize(
    ("text", "mib"),
    [("4G", 4096), ("4g", 4096), ("2048M", 2048), ("2048", 2048), ("1.5G", 1536),
     ("4GiB", 4096), ("512MB", 512), ("1T", 1024 * 1024), ("1048576K", 1024)],
)  # fmt: skip
def test_parse_memory(text: str, mib: int) -> None:
    assert vm.parse_memory(text) == mib


@pytest.mark.parametrize("text", ["", "four", "4X", "-1G", "256M", "0"])
def test_parse_memory_rejects(text: str) -> None:
    with pytest.raises(KlptraceError):
        vm.parse_memory(text)


def _facts(**kw: object) -> vm.AccelFacts:
    base: dict[str, object] = dict(forced=None, kvm_device=True, kvm_usable=True, kvm_pvm=False)
    base.update(kw)
    return vm.AccelFacts(**base)  # type: ignore[arg-type]


def test_decide_accel() -> None:
    pvm = vm.decide_accel(_facts(kvm_pvm=True))
    assert pvm is not None and pvm.name == "tcg" and "kvm_pvm" in pvm.reason
    none = vm.decide_accel(_facts(kvm_device=False, kvm_usable=False))
    assert none == vm.Accel("tcg", "no /dev/kvm")
    locked = vm.decide_accel(_facts(kvm_usable=False))
    assert locked is not None and locked.name == "tcg" and "read-write" in locked.reason
    # A plain /dev/kvm decides nothing: only a trial boot shows it runs stock kernels.
    assert vm.decide_accel(_facts()) is None
    assert vm.decide_accel(_facts(forced="kvm", kvm_pvm=True)) == vm.Accel(
        "kvm", "KLPTRACE_ACCEL says so"
    )
    assert vm.decide_accel(_facts(forced="tcg")) == vm.Accel("tcg", "KLPTRACE_ACCEL says so")
    with pytest.raises(KlptraceError):
        vm.decide_accel(_facts(forced="hvf"))


def test_choose_accel_caches_the_trial_boot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []

    def probe(image: Path, qemu: str) -> bool:
        calls.append(image)
        return False

    monkeypatch.setattr(vm, "host_accel_facts", lambda: _facts())
    monkeypatch.setattr(vm, "probe_kvm", probe)
    k = kernels.Kernel("6.1.0-9-amd64", tmp_path / "vmlinuz", tmp_path, None, tmp_path)
    first = vm.choose_accel(k, "/usr/bin/qemu-system-x86_64", cache=tmp_path)
    second = vm.choose_accel(k, "/usr/bin/qemu-system-x86_64", cache=tmp_path)
    assert first == second and first.name == "tcg" and "trial boot" in first.reason
    assert len(calls) == 1


def _kernel() -> kernels.Kernel:
    root = Path("/c/kernels/6.1.0-9-amd64")
    return kernels.Kernel(
        "6.1.0-9-amd64", root / "boot/vmlinuz-6.1.0-9-amd64",
        root / "lib/modules/6.1.0-9-amd64", None, root,
    )  # fmt: skip


def _exec_script(cmd: list[str]) -> str:
    return cmd[cmd.index("--exec") + 1]


def test_vng_argv_tcg() -> None:
    cmd = vm.vng_argv(
        _kernel(), ["sh", "-c", "exit 3"], status_file=Path("/tmp/kv/status"), accel="tcg",
        cpus=2, memory_mib=4096, cwd=Path("/work/repo"), rwdirs=[Path("/work/repo/results")],
        qemu="/tmp/kv/qemu", vng="/venv/bin/vng",
    )  # fmt: skip
    assert cmd[:3] == [
        "/venv/bin/vng",
        "--run",
        "/c/kernels/6.1.0-9-amd64/boot/vmlinuz-6.1.0-9-amd64",
    ]
    for flag in ("--force-9p", "--disable-kvm", "--overlay-rwdir=/work/repo",
                 "--rwdir=/tmp/kv", "--rwdir=/work/repo/results"):  # fmt: skip
        assert flag in cmd
    assert cmd[cmd.index("--cpus") + 1] == "2"
    assert cmd[cmd.index("--memory") + 1] == "4096M"
    assert cmd[cmd.index("--cwd") + 1] == "/work/repo"
    assert cmd[cmd.index("--qemu") + 1] == "/tmp/kv/qemu"
    script = _exec_script(cmd)
    assert "; sh -c 'exit 3'; " in script
    assert "> /tmp/kv/status" in script


def test_vng_argv_kvm_and_overlaid_cwd() -> None:
    cmd = vm.vng_argv(
        _kernel(), ["true"], status_file=Path("/tmp/kv/status"), accel="kvm",
        cpus=1, memory_mib=512, cwd=Path("/home/u/src"),
    )  # fmt: skip
    assert "--disable-kvm" not in cmd
    assert not any(a.startswith("--overlay-rwdir") for a in cmd)  # vng overlays /home
    assert "--qemu" not in cmd


def test_guest_script_keeps_the_status(tmp_path: Path) -> None:
    # Run the guest's shell line on the host: the status reaches the file and the exit.
    status = tmp_path / "st atus"
    script = vm.guest_script(["sh", "-c", "echo 'it''s'; exit 7"], status,
                             bdi_dir=str(tmp_path / "bdi"))
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert proc.returncode == 7
    assert proc.stdout == "its\n"
    assert proc.stderr == ""
    assert status.read_text() == "7\n"


def test_guest_script_turns_on_9p_read_ahead(tmp_path: Path) -> None:
    # A fake /sys/class/bdi: the 9p devices get read-ahead, others are left alone.
    bdi = tmp_path / "bdi"
    for dev in ("9p-3", "9p-7", "8:0"):
        (bdi / dev).mkdir(parents=True)
        (bdi / dev / "read_ahead_kb").write_text("0\n")
    script = vm.guest_script(["true"], tmp_path / "status", bdi_dir=str(bdi))
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (bdi / "9p-3" / "read_ahead_kb").read_text() == f"{vm.READ_AHEAD_KB}\n"
    assert (bdi / "9p-7" / "read_ahead_kb").read_text() == f"{vm.READ_AHEAD_KB}\n"
    assert (bdi / "8:0" / "read_ahead_kb").read_text() == "0\n"


def test_needs_overlay() -> None:
    assert vm.needs_overlay(Path("/work/main"))
    assert vm.needs_overlay(Path("/root/src"))
    assert vm.needs_overlay(Path("/"))
    assert not vm.needs_overlay(Path("/tmp"))
    assert not vm.needs_overlay(Path("/home/u/src"))
    assert vm.needs_overlay(Path("/tmpfoo"))


def test_qemu_wrapper_redirects_only_the_console(tmp_path: Path) -> None:
    fake = tmp_path / "fake-qemu"
    fake.write_text('#!/bin/sh\nfor a do echo "$a"; done\n')
    fake.chmod(0o755)
    wrapper = tmp_path / "qemu"
    wrapper.write_text(vm.qemu_wrapper(str(fake), tmp_path / "con sole.log"))
    wrapper.chmod(0o755)
    args = ["-chardev", "file,id=console,path=/dev/null", "-chardev",
            "file,id=stdout,path=/dev/null", "-append", "a b  c"]  # fmt: skip
    out = subprocess.run([str(wrapper), *args], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == [
        "-chardev", f"file,id=console,path={tmp_path}/con sole.log", "-chardev",
        "file,id=stdout,path=/dev/null", "-append", "a b  c",
    ]  # fmt: skip


def test_panic_line() -> None:
    log = "[ 1.0] x\n[ 10.1] Kernel panic - not syncing: sysrq triggered crash\n[ 10.2] CPU: 0\n"
    assert vm.panic_line(log) == "Kernel panic - not syncing: sysrq triggered crash"
    assert vm.panic_line("[ 1.0] all well\n") is None


def test_run_rejects_before_booting(tmp_path: Path) -> None:
    k = kernels.Kernel("6.1.0-9-amd64", tmp_path / "none", tmp_path, None, tmp_path)
    with pytest.raises(KlptraceError, match="no command"):
        vm.run(k, [])
    with pytest.raises(KlptraceError, match="too small"):
        vm.run(k, ["true"], memory="64M")
    with pytest.raises(KlptraceError, match="no kernel image"):
        vm.run(k, ["true"])


# --- building modules ---------------------------------------------------------------


def test_source_files_and_digest(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "Kbuild").write_text("obj-m += a.o\n")
    (src / "a.c").write_text("int x;\n")
    for product in ("a.o", "a.ko", "a.mod.c", ".a.o.cmd", "modules.order"):
        (src / product).write_text("")
    files = build.source_files(src)
    assert files == [Path("Kbuild"), Path("a.c")]
    kdir = tmp_path / "kdir"
    kdir.mkdir()
    d1 = build.source_digest(src, files, kdir, "6.1.0-9-amd64")
    (src / "a.ko").write_text("rebuilt product")
    assert build.source_digest(src, files, kdir, "6.1.0-9-amd64") == d1
    (src / "a.c").write_text("int y;\n")
    assert build.source_digest(src, files, kdir, "6.1.0-9-amd64") != d1
    assert build.source_digest(src, files, kdir, "6.1.0-10-amd64") != d1


def test_kdir_release_reads_uts_release(tmp_path: Path) -> None:
    gen = tmp_path / "include" / "generated"
    gen.mkdir(parents=True)
    (gen / "utsrelease.h").write_text('#define UTS_RELEASE "6.1.0-56-amd64"\n')
    assert build.kdir_release(tmp_path) == "6.1.0-56-amd64"
    with pytest.raises(KlptraceError, match="not a prepared kernel build directory"):
        build.kdir_release(tmp_path / "nowhere")


def _fake_kdir(tmp_path: Path) -> Path:
    """A 'KDIR' whose make writes a .ko per obj-m entry and counts its runs."""
    kdir = tmp_path / "kdir"
    (kdir / "include" / "generated").mkdir(parents=True)
    (kdir / "include" / "generated" / "utsrelease.h").write_text(
        '#define UTS_RELEASE "9.9.9-1-amd64"\n'
    )
    (kdir / "Makefile").write_text(
        "modules:\n"
        "\t@echo run >> $(M)/../runs\n"
        "\t@for o in $$(sed -n 's/^obj-m += //p' $(M)/Kbuild); do touch $(M)/$${o%.o}.ko; done\n"
    )
    return kdir


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_build_rebuilds_only_on_change(tmp_path: Path) -> None:
    kdir = _fake_kdir(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    (src / "Kbuild").write_text("obj-m += one.o\n")
    (src / "one.c").write_text("/* 1 */\n")
    cache = tmp_path / "cache"
    first = build.build(kdir=kdir, src=src, cache=cache)
    dest = cache / "modules" / "9.9.9-1-amd64"
    assert (first.release, first.dir, first.rebuilt) == ("9.9.9-1-amd64", dest, True)
    assert first.modules == (dest / "one.ko",)
    assert (dest / "one.c").read_text() == "/* 1 */\n"
    assert not (src / "one.ko").exists()  # the working tree stays clean

    again = build.build(kdir=kdir, src=src, cache=cache)
    assert again.rebuilt is False and again.modules == first.modules
    assert (cache / "modules" / "runs").read_text().count("run") == 1

    (src / "one.c").write_text("/* 2 */\n")
    third = build.build(kdir=kdir, src=src, cache=cache)
    assert third.rebuilt is True
    assert (dest / "one.c").read_text() == "/* 2 */\n"
    assert (cache / "modules" / "runs").read_text().count("run") == 2


def test_build_without_sources(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    with pytest.raises(KlptraceError, match="no test modules"):
        build.build(kdir=_fake_kdir(tmp_path), src=tmp_path / "src", cache=tmp_path)


def test_build_failure_names_the_error(tmp_path: Path) -> None:
    kdir = _fake_kdir(tmp_path)
    (kdir / "Makefile").write_text("modules:\n\t@echo 'a.c:1: error: boom' >&2; exit 2\n")
    src = tmp_path / "src"
    src.mkdir()
    (src / "Kbuild").write_text("obj-m += a.o\n")
    with pytest.raises(KlptraceError) as err:
        build.build(kdir=kdir, src=src, cache=tmp_path / "cache")
    assert "error: boom" in err.value.message


# --- the command line ----------------------------------------------------------------


def test_cli_kernel_of_no_form_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vm, "check_host", lambda: "/usr/bin/qemu-system-x86_64")
    status = cli.main(["vm", "--kernel", "nonsense", "--", "true"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("klptrace: error: unknown kernel 'nonsense'\n  hint: ")
    assert "Traceback" not in err


def test_cli_vm_needs_a_command(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vm, "check_host", lambda: "/usr/bin/qemu-system-x86_64")
    assert cli.main(["vm", "--"]) == 1
    assert "no command to run in the guest" in capsys.readouterr().err


def test_cli_vm_passes_options(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}
    k = _kernel()
    monkeypatch.setattr(vm, "check_host", lambda: "/usr/bin/qemu-system-x86_64")
    monkeypatch.setattr(kernels, "ensure", lambda spec, progress=None: seen.update(spec=spec) or k)

    def fake_run(kernel: kernels.Kernel, argv: list[str], **kw: object) -> int:
        seen.update(kernel=kernel, argv=argv, **kw)
        return 3

    monkeypatch.setattr(vm, "run", fake_run)
    status = cli.main(["vm", "--kernel", "6.1", "--cpus", "1", "--memory", "2G", "--timeout", "60",
                       "--rwdir", "r1", "--rwdir", "r2", "--", "sh", "-c", "exit 3"])  # fmt: skip
    assert status == 3
    assert seen["spec"] == "6.1" and seen["kernel"] == k
    assert seen["argv"] == ["sh", "-c", "exit 3"]
    assert (seen["cpus"], seen["memory"], seen["timeout"]) == (1, "2G", 60.0)
    assert seen["rwdirs"] == [Path("r1"), Path("r2")]


def test_cli_usage_error_exits_2() -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["vm", "--cpus", "many"])
    assert exc.value.code == 2


# --- vCPUs under emulation -------------------------------------------------------


def _unpacked_kernel(tmp_path: Path, sched_h: str, livepatch_sched_h: str | None
                     ) -> kernels.Kernel:
    root = tmp_path / "k"
    inc = root / "usr" / "src" / "linux-headers-6.12.95+deb12-common" / "include" / "linux"
    inc.mkdir(parents=True)
    if livepatch_sched_h is not None:
        (inc / "livepatch_sched.h").write_text(livepatch_sched_h)
    (inc / "sched.h").write_text(sched_h)
    return kernels.Kernel("6.12.95+deb12-amd64", root / "boot" / "vmlinuz", root, None, root)


# What the headers declare about livepatch in the scheduler, by era (declarations only).
KEY = "void __klp_sched_try_switch(void);\nDECLARE_STATIC_KEY_FALSE(klp_sched_try_switch_key);\n"
SCHED_H_6_4_TO_6_15 = "extern int __cond_resched(void);\nvoid sched_dynamic_klp_enable(void);\n"
SCHED_H = "extern int __cond_resched(void);\n"


@pytest.mark.parametrize(("sched_h", "livepatch_sched_h"), [
    (SCHED_H_6_4_TO_6_15, KEY),  # 6.4-6.15: cond_resched static call sites (and the key)
    (SCHED_H_6_4_TO_6_15, None),
    (SCHED_H, KEY),  # 6.16 on: the key, tested in __schedule()
])  # fmt: skip
def test_one_vcpu_under_tcg_for_kernels_that_patch_the_scheduler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sched_h: str, livepatch_sched_h: str | None
) -> None:
    monkeypatch.delenv("KLPTRACE_TCG_SMP", raising=False)
    k = _unpacked_kernel(tmp_path, sched_h, livepatch_sched_h)
    tcg, kvm = vm.Accel("tcg", "test"), vm.Accel("kvm", "test")
    cpus, why = vm.guest_cpus(k, tcg, 2)
    assert cpus == 1 and "KLPTRACE_TCG_SMP=1" in why
    assert vm.guest_cpus(k, kvm, 2) == (2, "")
    assert vm.guest_cpus(k, tcg, 1) == (1, "")
    monkeypatch.setenv("KLPTRACE_TCG_SMP", "1")
    assert vm.guest_cpus(k, tcg, 2) == (2, "")


@pytest.mark.parametrize("livepatch_sched_h", [None, "/* no hook declared */\n"])
def test_smp_under_tcg_for_kernels_that_do_not(tmp_path: Path,
                                                livepatch_sched_h: str | None) -> None:
    # 6.1 has neither header hook; a livepatch_sched.h that declares no key decides nothing.
    k = _unpacked_kernel(tmp_path, SCHED_H, livepatch_sched_h)
    assert vm.guest_cpus(k, vm.Accel("tcg", "test"), 2) == (2, "")
