"""The vCPUs a guest boots with for livepatch work (guest/vcpus.py): one under emulation when
the kernel's transitions rewrite scheduler code, read from its headers."""

from __future__ import annotations

from pathlib import Path

import pytest

from klptrace.guest import vcpus
from klptrace.lab import kernels, vm


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
    cpus, why = vcpus.guest_cpus(k, tcg, 2)
    assert cpus == 1 and "KLPTRACE_TCG_SMP=1" in why
    assert vcpus.guest_cpus(k, kvm, 2) == (2, "")
    assert vcpus.guest_cpus(k, tcg, 1) == (1, "")
    monkeypatch.setenv("KLPTRACE_TCG_SMP", "1")
    assert vcpus.guest_cpus(k, tcg, 2) == (2, "")


@pytest.mark.parametrize("livepatch_sched_h", [None, "/* no hook declared */\n"])
def test_smp_under_tcg_for_kernels_that_do_not(tmp_path: Path,
                                                livepatch_sched_h: str | None) -> None:
    # 6.1 has neither header hook; a livepatch_sched.h that declares no key decides nothing.
    k = _unpacked_kernel(tmp_path, SCHED_H, livepatch_sched_h)
    assert vcpus.guest_cpus(k, vm.Accel("tcg", "test"), 2) == (2, "")
