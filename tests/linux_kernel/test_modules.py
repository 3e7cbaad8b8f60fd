"""The test modules on a real kernel: patching is real and visible, failure leaves nothing."""

from __future__ import annotations

import errno
from pathlib import Path

from util import until

from klptrace.kernel import kmod


def _answer() -> str:
    return Path("/sys/module/klptrace_target/parameters/answer").read_text().strip()


def test_livepatch_patches_vmlinux_and_module(clean_kernel: Path) -> None:
    d = clean_kernel
    cmdline = Path("/proc/cmdline").read_text()
    assert kmod.load(str(d / "klptrace_target.ko")) == 0
    assert _answer() == "klptrace_target: unpatched"
    assert kmod.load(str(d / "klptrace_lp.ko")) == 0
    assert kmod.patch_attr("klptrace_lp", "enabled") == "1"
    assert until(lambda: kmod.patch_attr("klptrace_lp", "transition") == "0")
    # both objects really patched: vmlinux's cmdline_proc_show and the target's getter
    assert Path("/proc/cmdline").read_text() == "klptrace_lp: this has been live patched\n"
    assert _answer() == "klptrace_lp: patched"

    assert kmod.write("/sys/kernel/livepatch/klptrace_lp/enabled", "0") == 0
    assert until(lambda: kmod.patch_attr("klptrace_lp", "transition") in ("0", None))
    assert Path("/proc/cmdline").read_text() == cmdline
    assert _answer() == "klptrace_target: unpatched"
    assert until(lambda: kmod.unload("klptrace_lp") == 0)
    assert kmod.unload("klptrace_target") == 0


def test_failing_pre_patch_refuses_the_livepatch(clean_kernel: Path) -> None:
    d = clean_kernel
    assert kmod.load(str(d / "klptrace_lp.ko"), "pre_patch_ret=-19") == errno.ENODEV
    assert not kmod.is_loaded("klptrace_lp")
    assert "klptrace_lp" not in kmod.patches()


def test_atomic_replace_takes_over(clean_kernel: Path) -> None:
    d = clean_kernel
    assert kmod.load(str(d / "klptrace_lp.ko")) == 0
    assert until(lambda: kmod.patch_attr("klptrace_lp", "transition") == "0")
    assert kmod.load(str(d / "klptrace_lp2.ko"), "replace=1") == 0
    assert until(lambda: kmod.patch_attr("klptrace_lp2", "transition") == "0")
    assert Path("/proc/cmdline").read_text() == "klptrace_lp2: this has been live patched\n"
    # the replaced patch is freed by the kernel, and its module can go
    assert until(lambda: "klptrace_lp" not in kmod.patches())
    assert until(lambda: kmod.unload("klptrace_lp") == 0)
    assert kmod.write("/sys/kernel/livepatch/klptrace_lp2/enabled", "0") == 0
    assert until(lambda: kmod.unload("klptrace_lp2") == 0)


def test_the_guest_loaded_no_driver_it_does_not_need() -> None:
    """udev's coldplug loaded none of the drivers the lab keeps from it (vng.UNNEEDED_DRIVERS:
    modprobe.blacklist= on the guest's command line), on this kernel's own module names."""
    from klptrace.lab import vng

    assert "modprobe.blacklist=" in Path("/proc/cmdline").read_text()
    assert not set(vng.UNNEEDED_DRIVERS) & set(kmod.loaded_modules())
