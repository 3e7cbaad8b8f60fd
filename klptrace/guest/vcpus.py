"""The vCPUs a guest may boot with for livepatch work: fewer under emulation when a kernel's
transitions rewrite scheduler code (`vm.run(..., cpus_for=guest_cpus)`).

The lab boots whatever it is asked to; this policy knows why a livepatch
transition makes QEMU's multi-threaded TCG unsafe, and by which kernel commits.
"""

from __future__ import annotations

import os
import re

from klptrace.lab.accel import Accel, AccelName
from klptrace.lab.kernels import Kernel

# What the headers declare when a transition rewrites scheduler code: the
# cond_resched static call that sched_dynamic_klp_enable() retargets (v6.4 to
# v6.15), or the klp_sched_try_switch_key static key that a transition's start
# and end flip (v6.4 on; since v6.16 tested in __schedule()).
_SCHED_TEXT_PATCHING = (
    ("livepatch_sched.h", re.compile(r"\bklp_sched_try_switch_key\b")),
    ("sched.h", re.compile(r"\bsched_dynamic_klp_enable\s*\(")),
)


def transitions_patch_scheduler(kernel: Kernel) -> bool:
    """Does each livepatch transition of this kernel rewrite scheduler code all CPUs run?

    Since Linux kernel commit e3ff7c609f39 ("livepatch,sched: Add livepatch
    task switching to cond_resched()") (in v6.4), a transition's start and end
    retarget the cond_resched static call (include/linux/sched.h declares
    sched_dynamic_klp_enable()), patching every cond_resched() call site, or,
    without PREEMPT_DYNAMIC's static calls, flip klp_sched_try_switch_key
    (include/linux/livepatch_sched.h), a jump label in each of them. Commit
    676e8cf70cb0 ("sched,livepatch: Untangle cond_resched() and
    live-patching") (in v6.16) dropped the cond_resched() part but kept the
    key, now tested in __schedule() (kernel/sched/core.c), so every transition
    still rewrites code that every CPU runs: a 7.3.4 guest with 2 vCPUs under
    TCG panicked with "Oops: int3" at __schedule+0xa4 in an atomic-replace
    transition. The kernel's headers tell, by what they declare.
    """
    src = kernel.root / "usr" / "src"
    return any(rx.search(h.read_text(errors="replace"))
               for name, rx in _SCHED_TEXT_PATCHING
               for h in src.glob(f"*/include/linux/{name}"))


def guest_cpus(kernel: Kernel, accel: Accel, cpus: int) -> tuple[int, str]:
    """The vCPUs to boot with, and why they are fewer than asked ('' when they are not).

    Under QEMU's multi-threaded TCG (Debian 12's QEMU 7.2), a kernel whose
    transitions rewrite scheduler code soon panics with "Oops: int3" in code
    another vCPU was running (a stale breakpoint of the text patching).
    Measured: 6.12 with 2 vCPUs panicked within 200 livepatch enable/disable
    cycles in both of 2 tries; 6.1 with 2 vCPUs and 6.12 with 1 completed
    them; 7.3.4 with 2 vCPUs panicked in the kernel test suite's third test.
    KLPTRACE_TCG_SMP=1 keeps the vCPUs asked for (for a QEMU without that race).
    """
    if (accel.name != AccelName.TCG or cpus == 1 or os.environ.get("KLPTRACE_TCG_SMP") == "1"
            or not transitions_patch_scheduler(kernel)):
        return cpus, ""
    return 1, (f"cpus: 1, not {cpus}: under emulation, {kernel.release}'s livepatch "
               "transitions rewrite scheduler code that other vCPUs run, which QEMU's "
               "multi-threaded TCG gets wrong (guest panics); KLPTRACE_TCG_SMP=1 overrides")
