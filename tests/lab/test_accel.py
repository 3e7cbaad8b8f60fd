"""The accelerator a guest runs with (lab/accel.py): the host's facts, the trial boot and its
cache."""

from __future__ import annotations

import json
import os
import time
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


def test_host_facts_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLPTRACE_ACCEL", "tcg")
    assert accel.host_accel_facts().forced == "tcg"
    monkeypatch.setenv("KLPTRACE_ACCEL", "")  # empty: unset
    facts = accel.host_accel_facts()
    assert facts.forced is None
    assert facts.kvm_device == Path("/dev/kvm").exists()
    assert facts.kvm_usable <= facts.kvm_device


def test_choose_accel_takes_what_the_facts_settle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accel, "host_accel_facts", lambda: _facts(kvm_device=False,
                                                                  kvm_usable=False))
    monkeypatch.setattr(accel, "probe_kvm", lambda image, qemu: pytest.fail("no trial boot"))
    k = kernels.Kernel("6.1.0-9-amd64", tmp_path / "vmlinuz", tmp_path, None, tmp_path)
    assert accel.choose_accel(k, "qemu", cache=tmp_path) == accel.Accel(TCG, "no /dev/kvm")
    assert not (tmp_path / "accel.json").exists()


def test_choose_accel_kvm_after_a_good_trial_boot_and_a_bad_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "accel.json").write_text("{not json")  # a torn write: probed again
    monkeypatch.setattr(accel, "host_accel_facts", lambda: _facts())
    monkeypatch.setattr(accel, "probe_kvm", lambda image, qemu: True)
    k = kernels.Kernel("6.1.0-9-amd64", tmp_path / "vmlinuz", tmp_path, None, tmp_path)
    got = accel.choose_accel(k, "/usr/bin/qemu-system-x86_64", cache=tmp_path / "c")
    assert got.name is KVM and "reached its panic" in got.reason
    assert json.loads((tmp_path / "c" / "accel.json").read_text()) == {
        f"{os.uname().release} /usr/bin/qemu-system-x86_64 6.1.0-9-amd64": True}


def _fake_qemu(tmp_path: Path, body: str) -> str:
    qemu = tmp_path / "qemu"
    qemu.write_text("#!/bin/sh\n" + body)
    qemu.chmod(0o755)
    return str(qemu)


def test_probe_kvm_looks_for_the_kernels_panic(tmp_path: Path) -> None:
    image = tmp_path / "vmlinuz"
    panics = _fake_qemu(tmp_path, 'echo "[ 0.9] Kernel panic - not syncing: VFS: Unable to '
                                  'mount root fs"\n')
    assert accel.probe_kvm(image, panics)
    assert not accel.probe_kvm(image, _fake_qemu(tmp_path, "echo 'KVM: entry failed'\nexit 1\n"))
    t0 = time.monotonic()
    assert not accel.probe_kvm(image, _fake_qemu(tmp_path, "exec sleep 30\n"), timeout=0.5)
    assert time.monotonic() - t0 < 10


def test_accel_names_keep_their_words() -> None:
    assert [a.value for a in accel.AccelName] == ["kvm", "tcg"]
    assert accel.decide_accel(_facts(forced="kvm")).name is KVM  # type: ignore[union-attr]
