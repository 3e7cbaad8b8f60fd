"""The accelerator a guest runs with (lab/accel.py): the host's facts, the trial boot and its
cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from klptrace.errors import KlptraceError
from klptrace.lab import accel, kernels

KVM, TCG = accel.AccelName.KVM, accel.AccelName.TCG


def _facts(**kw: object) -> accel.AccelFacts:
    base: dict[str, object] = dict(forced=None, kvm_device=True, kvm_usable=True, kvm_pvm=False)
    base.update(kw)
    return accel.AccelFacts(**base)  # type: ignore[arg-type]


def test_decide_accel() -> None:
    pvm = accel.decide_accel(_facts(kvm_pvm=True))
    assert pvm is not None and pvm.name == "tcg" and "kvm_pvm" in pvm.reason
    none = accel.decide_accel(_facts(kvm_device=False, kvm_usable=False))
    assert none == accel.Accel(TCG, "no /dev/kvm")
    locked = accel.decide_accel(_facts(kvm_usable=False))
    assert locked is not None and locked.name == "tcg" and "read-write" in locked.reason
    # A plain /dev/kvm decides nothing: only a trial boot shows it runs stock kernels.
    assert accel.decide_accel(_facts()) is None
    assert accel.decide_accel(_facts(forced="kvm", kvm_pvm=True)) == accel.Accel(
        KVM, "KLPTRACE_ACCEL says so"
    )
    assert accel.decide_accel(_facts(forced="tcg")) == accel.Accel(TCG, "KLPTRACE_ACCEL says so")
    with pytest.raises(KlptraceError):
        accel.decide_accel(_facts(forced="hvf"))


def test_choose_accel_caches_the_trial_boot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []

    def probe(image: Path, qemu: str) -> bool:
        calls.append(image)
        return False

    monkeypatch.setattr(accel, "host_accel_facts", lambda: _facts())
    monkeypatch.setattr(accel, "probe_kvm", probe)
    k = kernels.Kernel("6.1.0-9-amd64", tmp_path / "vmlinuz", tmp_path, None, tmp_path)
    first = accel.choose_accel(k, "/usr/bin/qemu-system-x86_64", cache=tmp_path)
    second = accel.choose_accel(k, "/usr/bin/qemu-system-x86_64", cache=tmp_path)
    assert first == second and first.name == "tcg" and "trial boot" in first.reason
    assert len(calls) == 1
