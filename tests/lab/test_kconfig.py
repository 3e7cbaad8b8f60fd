"""A kernel's config, read before anything boots: what klptrace needs of it, and how
the guest mounts its root (9p, or virtiofs for a kernel without 9p).

tests/data/kconfig/config-7.3.4+deb13-{amd64,rt-amd64,cloud-amd64} are excerpts of
Debian's configs (the lines these checks read); config-no-livepatch is made up after
Debian's arm64 kernels, which leave CONFIG_LIVEPATCH unset. No network, no root, no
guest: the refusals happen before any boot.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import util

from klptrace import cli
from klptrace.errors import NotSupported
from klptrace.lab import kconfig, kernels, vm, vng
from klptrace.lab.accel import Accel, AccelName

DATA = util.DATA / "kconfig"


def _config(name: str) -> kconfig.Config:
    return kconfig.read(DATA / name)


def test_parse_keeps_set_options_only() -> None:
    config = kconfig.parse("CONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\nCONFIG_D=\"x\"\n"
                           "CONFIG_E=n\n  \n#CONFIG_F=y\n")
    assert config == {"CONFIG_A": "y", "CONFIG_B": "m", "CONFIG_D": '"x"', "CONFIG_E": "n"}
    assert kconfig.missing(config, ("CONFIG_A", "CONFIG_B", "CONFIG_C", "CONFIG_E")) == [
        "CONFIG_C", "CONFIG_E"]


@pytest.mark.parametrize("flavour", ["amd64", "rt-amd64", "cloud-amd64"])
def test_every_debian_amd64_flavour_has_what_klptrace_needs(flavour: str) -> None:
    assert kconfig.missing(_config(f"config-7.3.4+deb13-{flavour}")) == []


def test_only_the_cloud_flavour_lacks_9p() -> None:
    cloud = _config("config-7.3.4+deb13-cloud-amd64")
    assert kconfig.missing(cloud, kconfig.NINE_P) == ["CONFIG_9P_FS", "CONFIG_NET_9P_VIRTIO"]
    assert kconfig.missing(cloud, kconfig.VIRTIOFS) == []
    for other in ("amd64", "rt-amd64"):
        assert kconfig.missing(_config(f"config-7.3.4+deb13-{other}"), kconfig.NINE_P) == []


def test_no_livepatch_is_named() -> None:
    assert kconfig.missing(_config("config-no-livepatch")) == ["CONFIG_LIVEPATCH"]


# --- an image given by path, with its config beside it -------------------------------------


def _image_tree(tmp: Path, release: str, config: str | None, new_layout: bool) -> Path:
    """An unpacked kernel as Debian lays it out; the path of its image."""
    if new_layout:
        mods = tmp / "usr/lib/modules" / release
        mods.mkdir(parents=True)
        image = mods / "vmlinuz"
        if config is not None:
            (mods / "config").write_text((DATA / config).read_text())
    else:
        (tmp / "lib/modules" / release).mkdir(parents=True)
        (tmp / "boot").mkdir()
        image = tmp / "boot" / f"vmlinuz-{release}"
        if config is not None:
            (tmp / "boot" / f"config-{release}").write_text((DATA / config).read_text())
    image.write_bytes(b"not booted")
    return image


@pytest.mark.parametrize("new_layout", [True, False])
def test_kernel_path_without_livepatch_exits_4_naming_it(
    tmp_path: Path, new_layout: bool, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image = _image_tree(tmp_path / "k", "7.3.4+deb13-arm64", "config-no-livepatch", new_layout)
    monkeypatch.setenv("KLPTRACE_CACHE", str(tmp_path / "cache"))
    booted: list[object] = []
    monkeypatch.setattr(vm, "check_host", lambda: "/usr/bin/qemu-system-x86_64")
    monkeypatch.setattr(vm, "run", lambda *a, **k: booted.append(a) or 0)
    assert cli.main(["kernel", "--kernel", str(image)]) == 4
    assert cli.main(["vm", "--kernel", str(image), "--", "true"]) == 4
    err = capsys.readouterr().err
    assert ("klptrace: error: kernel 7.3.4+deb13-arm64 cannot be traced: its config leaves "
            "CONFIG_LIVEPATCH unset") in err
    assert "hint: klptrace needs a kernel built with CONFIG_LIVEPATCH=y, CONFIG_KPROBES=y" in err
    assert booted == [] and not (tmp_path / "cache" / "kernels").exists()


def test_kernel_path_with_a_good_config(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    image = _image_tree(tmp_path, "7.3.4+deb13-rt-amd64", "config-7.3.4+deb13-rt-amd64", True)
    k = kernels.ensure(str(image))
    assert k.config == image.parent / "config"
    assert cli.main(["kernel", "--kernel", str(image)]) == 0
    assert "release  7.3.4+deb13-rt-amd64" in capsys.readouterr().out


def test_kernel_path_without_a_config_is_said_and_allowed(tmp_path: Path) -> None:
    image = _image_tree(tmp_path, "6.1.0-9-amd64", None, False)
    said: list[str] = []
    k = kernels.ensure(str(image), progress=said.append)
    assert k.config is None
    assert said == ["kernel 6.1.0-9-amd64: no config beside its image, so whether it can "
                    "livepatch is known only once it boots"]


# --- the guest's root: 9p, or virtiofs for a kernel without 9p ----------------------------


def _kernel(tmp: Path, config: str | None) -> kernels.Kernel:
    path = None
    if config is not None:
        path = tmp / "config"
        path.write_text((DATA / config).read_text())
    return kernels.Kernel("7.3.4+deb13-x", tmp / "vmlinuz", tmp, None, tmp, None, path)


def _never() -> str | None:
    raise AssertionError("virtiofsd looked for although the kernel has 9p")


@pytest.mark.parametrize("config", ["config-7.3.4+deb13-amd64", "config-7.3.4+deb13-rt-amd64",
                                    None])
def test_a_kernel_with_9p_keeps_9p(tmp_path: Path, config: str | None) -> None:
    assert vng.guest_root(_kernel(tmp_path, config), _never) == "9p"


def test_cloud_boots_over_virtiofs_where_virtiofsd_is(tmp_path: Path) -> None:
    k = _kernel(tmp_path, "config-7.3.4+deb13-cloud-amd64")
    assert vng.guest_root(k, lambda: "/usr/libexec/virtiofsd") == "virtiofs"


def test_cloud_without_virtiofsd_is_refused_with_what_would_work(tmp_path: Path) -> None:
    k = _kernel(tmp_path, "config-7.3.4+deb13-cloud-amd64")
    with pytest.raises(NotSupported) as e:
        vng.guest_root(k, lambda: None)
    assert e.value.status == 4
    assert e.value.message == (
        "kernel 7.3.4+deb13-x has no 9p (CONFIG_9P_FS, CONFIG_NET_9P_VIRTIO unset), so its "
        "guest needs virtiofs for the host's /, and this host has no virtiofsd")
    assert e.value.hint is not None
    assert "Debian 13 (trixie) or newer host with the virtiofsd package" in e.value.hint


def test_neither_9p_nor_virtiofs(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text("CONFIG_LIVEPATCH=y\n# CONFIG_NET_9P is not set\n")
    k = kernels.Kernel("x", tmp_path / "vmlinuz", tmp_path, None, tmp_path, None, path)
    with pytest.raises(NotSupported, match=r"neither 9p .* nor virtiofs"):
        vng.guest_root(k, lambda: "/usr/libexec/virtiofsd")


def test_vm_run_refuses_before_anything_boots(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    k = _kernel(tmp_path, "config-7.3.4+deb13-cloud-amd64")
    k.image.write_bytes(b"")
    monkeypatch.setattr(vng, "find_virtiofsd", lambda: None)
    started: list[object] = []
    monkeypatch.setattr(vm, "check_host", lambda: started.append("host") or "/bin/qemu")
    monkeypatch.setattr(vm.subprocess, "Popen", lambda *a, **kw: started.append(a))
    with pytest.raises(NotSupported, match="no 9p"):
        vm.run(k, ["true"], accel=Accel(AccelName.TCG, "test"))
    assert started == []


def test_vng_argv_virtiofs_drops_force_9p(tmp_path: Path) -> None:
    k = _kernel(tmp_path, None)
    args = dict(accel=AccelName.TCG, cpus=1, memory_mib=1024, cwd=Path("/work/repo"))
    nine = vng.vng_argv(k, Path("/tmp/kv/command.sh"), **args)  # type: ignore[arg-type]
    fs = vng.vng_argv(k, Path("/tmp/kv/command.sh"), root="virtiofs", **args)  # type: ignore[arg-type]
    assert "--force-9p" in nine and "--force-9p" not in fs
    assert [a for a in nine if a != "--force-9p"] == fs  # nothing else changes


def test_qemus_old_c_virtiofsd_is_not_the_one_vng_can_use() -> None:
    # Debian 12's qemu-system-common ships it as /usr/lib/qemu/virtiofsd (saved --help)
    assert not vng.is_rust_virtiofsd((DATA / "qemu-7.2-virtiofsd-help.txt").read_text())
    # the option vng passes (virtme/commands/run.py, VirtioFS.start)
    assert vng.is_rust_virtiofsd("Usage: virtiofsd [OPTIONS]\n      --shared-dir <SHARED_DIR>\n")


def test_find_virtiofsd_skips_qemus_c_daemon(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    c_one = tmp_path / "qemu-virtiofsd"
    c_one.write_text(f"#!/bin/sh\ncat {DATA / 'qemu-7.2-virtiofsd-help.txt'}\n")
    rust = tmp_path / "libexec-virtiofsd"
    rust.write_text("#!/bin/sh\necho '      --shared-dir <SHARED_DIR>'\n")
    for f in (c_one, rust):
        f.chmod(0o755)
    monkeypatch.setattr(vng.shutil, "which", lambda name: None)
    monkeypatch.setattr(vng, "VIRTIOFSD_PATHS", (str(c_one),))
    assert vng.find_virtiofsd() is None
    monkeypatch.setattr(vng, "VIRTIOFSD_PATHS", (str(c_one), str(rust)))
    assert vng.find_virtiofsd() == str(rust)
