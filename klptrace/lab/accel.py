"""The accelerator a guest runs with: KVM where it really boots a stock kernel, else TCG.

The host's facts (KLPTRACE_ACCEL, /dev/kvm, kvm_pvm) settle most cases; a trial
boot settles the rest, and its result is kept in the cache.
"""

from __future__ import annotations

import enum
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from klptrace.errors import KlptraceError
from klptrace.lab.defaults import cache_dir
from klptrace.lab.kernels import Kernel


class AccelName(enum.StrEnum):
    """QEMU's accelerator: hardware virtualization, or software emulation."""

    KVM = "kvm"
    TCG = "tcg"


@dataclass(frozen=True)
class AccelFacts:
    """What the host says about KVM."""

    forced: str | None  # KLPTRACE_ACCEL
    kvm_device: bool  # /dev/kvm exists
    kvm_usable: bool  # and we may open it read-write
    kvm_pvm: bool  # /sys/module/kvm_pvm: a KVM that runs only specially built guests


@dataclass(frozen=True)
class Accel:
    """The accelerator a guest runs with, and why."""

    name: AccelName
    reason: str


def decide_accel(facts: AccelFacts) -> Accel | None:
    """The accelerator the facts settle, or None when only a trial boot can tell."""
    if facts.forced:
        if facts.forced not in tuple(AccelName):
            raise KlptraceError(
                f"KLPTRACE_ACCEL={facts.forced!r}", hint="set it to kvm or tcg, or unset it"
            )
        return Accel(AccelName(facts.forced), "KLPTRACE_ACCEL says so")
    if not facts.kvm_device:
        return Accel(AccelName.TCG, "no /dev/kvm")
    if not facts.kvm_usable:
        return Accel(AccelName.TCG, "/dev/kvm is not accessible read-write")
    if facts.kvm_pvm:
        return Accel(AccelName.TCG,
                     "/dev/kvm is kvm_pvm, which boots only specially built guest kernels")
    return None


def host_accel_facts() -> AccelFacts:
    """Read the AccelFacts of this host."""
    dev = Path("/dev/kvm")
    return AccelFacts(
        forced=os.environ.get("KLPTRACE_ACCEL") or None,
        kvm_device=dev.exists(),
        kvm_usable=dev.exists() and os.access(dev, os.R_OK | os.W_OK),
        kvm_pvm=Path("/sys/module/kvm_pvm").exists(),
    )


# A stock kernel with no root device ends in this panic: proof that it booted.
_BOOTED_RE = re.compile(r"Kernel panic - not syncing")


def probe_kvm(image: Path, qemu: str, timeout: float = 30.0) -> bool:
    """Does KVM really boot this kernel? Boot it with no root and wait for its panic."""
    cmd = [
        qemu, "-accel", "kvm", "-cpu", "host", "-m", "256M", "-nodefaults", "-no-reboot",
        "-display", "none", "-serial", "stdio", "-kernel", str(image),
        "-append", "console=ttyS0 panic=-1 loglevel=4",
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False  # e.g. stuck in the decompressor
    return bool(_BOOTED_RE.search(proc.stdout.decode(errors="replace")))


def choose_accel(kernel: Kernel, qemu: str, cache: Path | None = None) -> Accel:
    """KVM where it really boots a stock kernel, else software emulation (TCG).

    A trial boot settles what the host's facts cannot; its result is kept per
    host kernel and QEMU binary.
    """
    decided = decide_accel(host_accel_facts())
    if decided is not None:
        return decided
    store = (cache or cache_dir()) / "accel.json"
    key = f"{os.uname().release} {qemu} {kernel.release}"
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = probe_kvm(kernel.image, qemu)
        store.parent.mkdir(parents=True, exist_ok=True)
        store.write_text(json.dumps(known, indent=1) + "\n")
    if known[key]:
        return Accel(AccelName.KVM, f"a trial boot of {kernel.release} with KVM reached its panic")
    return Accel(AccelName.TCG, f"a trial boot of {kernel.release} with KVM failed")
