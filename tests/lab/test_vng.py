"""The vng command line (lab/vng.py): its arguments, the guest's script, the QEMU wrapper,
and the vng internals klptrace relies on, read from the pinned vng."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from util import lab_kernel, skip_or_fail

from klptrace.errors import KlptraceError
from klptrace.lab import vm, vng
from klptrace.lab.accel import AccelName

KVM, TCG = AccelName.KVM, AccelName.TCG



def test_vng_argv_tcg() -> None:
    cmd = vng.vng_argv(
        lab_kernel(), Path("/tmp/kv/command.sh"), accel=TCG,
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
    # the command is a script in a shared directory, not text on the kernel's command line
    assert cmd[cmd.index("--exec") + 1] == "sh /tmp/kv/command.sh"


def test_vng_argv_keeps_udev_from_loading_unneeded_drivers() -> None:
    cmd = vng.vng_argv(
        lab_kernel(), Path("/tmp/kv/command.sh"), accel=TCG,
        cpus=1, memory_mib=512, cwd=Path("/home/u/src"),
    )  # fmt: skip
    [append] = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--append"]
    [blacklist] = [w for w in append.split() if w.startswith("modprobe.blacklist=")]
    names = blacklist.removeprefix("modprobe.blacklist=").split(",")
    assert "kvm_amd" in names and "ahci" in names
    # what vng's initramfs loads and the guest's command uses is never among them
    needed = {"9p", "9pnet", "9pnet_virtio", "netfs", "fscache", "overlay", "virtio",
              "virtio_ring", "virtio_pci", "virtio_mmio", "virtio_console", "virtiofs", "fuse"}
    assert not needed & set(names)
    assert all(re.fullmatch(r"[a-zA-Z0-9_]+", n) for n in names)  # module names as /proc/modules
    assert len(append) < 400  # vng's own arguments share the kernel's 2048 bytes


def test_vng_argv_kvm_and_overlaid_cwd() -> None:
    cmd = vng.vng_argv(
        lab_kernel(), Path("/tmp/kv/command.sh"), accel=KVM,
        cpus=1, memory_mib=512, cwd=Path("/home/u/src"),
    )  # fmt: skip
    assert "--disable-kvm" not in cmd
    assert not any(a.startswith("--overlay-rwdir") for a in cmd)  # vng overlays /home
    assert "--qemu" not in cmd


def test_guest_script_keeps_the_status(tmp_path: Path) -> None:
    # Run the guest's shell line on the host: the status reaches the file and the exit.
    status = tmp_path / "st atus"
    script = vng.guest_script(["sh", "-c", "echo 'it''s'; exit 7"], status,
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
    script = vng.guest_script(["true"], tmp_path / "status", bdi_dir=str(bdi))
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (bdi / "9p-3" / "read_ahead_kb").read_text() == f"{vng.READ_AHEAD_KB}\n"
    assert (bdi / "9p-7" / "read_ahead_kb").read_text() == f"{vng.READ_AHEAD_KB}\n"
    assert (bdi / "8:0" / "read_ahead_kb").read_text() == "0\n"


def test_needs_overlay() -> None:
    assert vng.needs_overlay(Path("/work/main"))
    assert vng.needs_overlay(Path("/root/src"))
    assert vng.needs_overlay(Path("/"))
    assert not vng.needs_overlay(Path("/tmp"))
    assert not vng.needs_overlay(Path("/home/u/src"))
    assert vng.needs_overlay(Path("/tmpfoo"))


def test_qemu_wrapper_redirects_only_the_console(tmp_path: Path) -> None:
    fake = tmp_path / "fake-qemu"
    fake.write_text('#!/bin/sh\necho "pid $$"; for a do echo "$a"; done\n')
    fake.chmod(0o755)
    wrapper = tmp_path / "qemu"
    pid_file = tmp_path / "q emu.pid"
    wrapper.write_text(vng.qemu_wrapper(str(fake), tmp_path / "con sole.log", pid_file))
    wrapper.chmod(0o755)
    args = ["-chardev", "file,id=console,path=/dev/null", "-chardev",
            "file,id=stdout,path=/dev/null", "-append", "a b  c"]  # fmt: skip
    out = subprocess.run([str(wrapper), *args], capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert lines[1:] == [
        "-chardev", f"file,id=console,path={tmp_path}/con sole.log", "-chardev",
        "file,id=stdout,path=/dev/null", "-append", "a b  c",
    ]  # fmt: skip
    # exec keeps the wrapper's pid: the pid file names the process that became QEMU
    assert lines[0] == f"pid {pid_file.read_text().strip()}"


def test_a_boot_without_vngs_console_argument_fails_loudly(tmp_path: Path) -> None:
    fake = tmp_path / "fake-qemu"
    fake.write_text('#!/bin/sh\necho "QEMU $*"\n')
    fake.chmod(0o755)
    wrapper = tmp_path / "qemu"
    console_log = tmp_path / "console.log"
    wrapper.write_text(vng.qemu_wrapper(str(fake), console_log, tmp_path / "qemu.pid"))
    wrapper.chmod(0o755)
    # vng's probe of QEMU (qemu_helpers.Qemu.probe) is no boot: passed through
    out = subprocess.run([str(wrapper), "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == "QEMU --version\n"
    # a boot whose console went elsewhere: refused, and said so for vm.run
    out = subprocess.run([str(wrapper), "-kernel", "k", "-chardev", "stdio,id=console"],
                         capture_output=True, text=True)
    assert out.returncode == 70 and "QEMU" not in out.stdout
    assert vng.VNG_CONSOLE_ARG in out.stderr
    err = vm._early_end(console_log, out.stderr, 1)
    assert isinstance(err, vm.GuestStopped) and "virtme-ng started QEMU without" in err.message
    assert "virtme-ng>=1.42,<1.43" in (err.hint or "")


def test_the_pinned_vng_gives_qemu_the_console_argument_the_wrapper_rewrites() -> None:
    # the internals klptrace relies on, read from the vng that pyproject.toml allows
    run_py = importlib.util.find_spec("virtme.commands.run")
    if run_py is None or run_py.origin is None:
        skip_or_fail("virtme-ng is not installed (make setup installs it)")
        return
    source = Path(run_py.origin).read_text()
    assert 'console_output = "/dev/null"' in source
    assert '"-chardev", f"file,id=console,path={console_output}"' in source
    assert vng.VNG_CONSOLE_ARG == "file,id=console,path=/dev/null"


def test_find_vng_beside_python_then_on_path(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    venv, path = tmp_path / "venv" / "bin", tmp_path / "path"
    venv.mkdir(parents=True)
    path.mkdir()
    monkeypatch.setattr(sys, "executable", str(venv / "python3"))
    monkeypatch.setenv("PATH", str(path))
    with pytest.raises(KlptraceError, match=r"vng \(virtme-ng\) not found") as err:
        vng.find_vng()
    assert err.value.hint == "make setup installs it into .venv"
    on_path = path / "vng"
    on_path.write_text("#!/bin/sh\n")
    on_path.chmod(0o755)
    assert vng.find_vng() == str(on_path)
    (venv / "vng").write_text("#!/bin/sh\n")  # the venv's, whatever PATH says
    assert vng.find_vng() == str(venv / "vng")


def test_vng_argv_over_virtiofs_lists_each_rwdir_once() -> None:
    cmd = vng.vng_argv(
        lab_kernel(), Path("/tmp/kv/command.sh"), accel=TCG, cpus=1, memory_mib=1024,
        cwd=Path("/tmp/w"), rwdirs=[Path("/tmp/r1"), Path("/tmp/r2")], root="virtiofs",
    )  # fmt: skip
    assert "--force-9p" not in cmd
    assert [a for a in cmd if a.startswith("--rwdir=")] == [
        "--rwdir=/tmp/kv", "--rwdir=/tmp/r1", "--rwdir=/tmp/r2"]
    assert cmd[-2:] == ["--exec", "sh /tmp/kv/command.sh"]
