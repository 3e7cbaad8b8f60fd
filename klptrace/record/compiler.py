"""Compiling klptrace's BPF (bpf/klptrace.bpf.c) with bcc, in a background thread.

This is the only module that imports bcc, and it does so lazily, so that the
rest of klptrace runs (and is tested) on machines without bcc or root. The
compile needs this kernel's layout, passed as -D flags: struct field offsets
from BTF (btf.py) and the livepatch core's globals from /proc/kallsyms.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from klptrace import assets
from klptrace.errors import KlptraceError, NotSupported, check_interrupted
from klptrace.kernel import kmod
from klptrace.kernel.kallsyms import addresses
from klptrace.lab import defaults
from klptrace.record import btf

#: the BPF C (klptrace.bpf.c), its header and the stand-in kernel headers for bcc
BPF_DIR = assets.bpf_dir()
#: the core's transition globals whose addresses the BPF reads
GLOBALS = {"ADDR_KLP_TRANSITION_PATCH": "klp_transition_patch",
           "ADDR_KLP_TARGET_STATE": "klp_target_state",
           "ADDR_KLP_SIGNALS_CNT": "klp_signals_cnt"}


class ProbeError(KlptraceError):
    """The BPF programs could not be compiled or a probe could not be set up."""


def check_kernel() -> None:
    """Raise NotSupported unless this kernel can be traced: root, livepatch, kprobes."""
    problem = kmod.unsupported()
    if problem is not None:
        raise problem


def cflags(kallsyms: str = "/proc/kallsyms") -> list[str]:
    """-D and -I flags for this kernel: field offsets from BTF, globals from kallsyms."""
    # -g0: bcc compiles with -g to give the programs BTF, which klptrace does
    # not need (kprobes, plain maps); without it the compile is ~0.5 s (12%)
    # shorter in the emulated guest. -Oz: bcc optimises at -O2, and LLVM's
    # optimisation is most of what the compile spends on klptrace's own code
    # (a one-kprobe program takes 2.2 s of the 7.1-8.3 s); at -Oz the whole
    # compile took 5.5 s on 6.1 under TCG, and the verifier takes every program
    # (the kernel suites load them all, on 6.1 and the newest kernel).
    flags = [f"-I{BPF_DIR}", "-Wno-duplicate-decl-specifier", "-Wno-ignored-attributes", "-g0",
             "-Oz"]
    flags += [f"-D{k}={v}" for k, v in btf.cached_layout(defaults.cache_dir()).items()]
    addrs = addresses(GLOBALS.values(), kallsyms)
    for define, sym in GLOBALS.items():
        if not addrs.get(sym):
            raise ProbeError(f"kernel symbol {sym} not found in /proc/kallsyms",
                             "klptrace needs CONFIG_KALLSYMS_ALL=y and root")
        flags.append(f"-D{define}={addrs[sym]:#x}")
    return flags


def _preload(soname: str) -> None:
    """Load a shared library (and what it links) without holding the GIL.

    CPython 3.11's ctypes.CDLL holds the GIL in dlopen(); for libbcc, which
    brings libclang-cpp and libLLVM, that stopped every other thread for
    1.75 s in the emulated guest. A call through ctypes releases the GIL, so
    libc's dlopen is called that way; bcc's own CDLL then finds the library
    loaded. Any failure is left for bcc's import to report.
    """
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        libc.dlopen.restype = ctypes.c_void_p
        libc.dlopen.argtypes = [ctypes.c_char_p, ctypes.c_int]
        libc.dlopen(soname.encode(), os.RTLD_NOW | os.RTLD_LOCAL)
    except (OSError, AttributeError):
        pass


class Build:
    """Import bcc and compile klptrace's BPF in a background thread.

    The slow parts, loading libbcc (and clang and LLVM with it) and compiling,
    run in C without the GIL, so they overlap with what the caller does
    meanwhile: first the BTF and kallsyms layout that the compile needs
    (computed in the caller's thread, pure Python), then whatever the caller
    does before it calls result(). Nothing is attached: a Build that is
    dropped leaves nothing in the kernel.
    """

    def __init__(self) -> None:
        check_kernel()
        self.import_s = 0.0  # loading bcc (libbcc, libclang-cpp, libLLVM)
        self.layout_s = 0.0  # BTF offsets and kallsyms addresses
        self.compile_s = 0.0  # clang and LLVM, in bcc
        self._flags: list[str] | None = None
        self._flags_ready = threading.Event()
        self._error: BaseException | None = None
        self._BPF: Any = None
        self._bpf: Any = None
        self._thread = threading.Thread(target=self._work, name="klptrace-build", daemon=True)
        self._thread.start()
        t0 = time.monotonic()
        try:
            self._flags = cflags()
        except BaseException as e:
            self._error = e
            raise
        finally:
            self._flags_ready.set()
            self.layout_s = time.monotonic() - t0

    def _work(self) -> None:
        t0 = time.monotonic()
        os.environ["BCC_KERNEL_SOURCE"] = str(BPF_DIR)
        _preload("libbcc.so.0")
        try:
            from bcc import BPF
        except ImportError as e:
            self._error = NotSupported(
                "bcc's Python bindings are not importable",
                "install Debian's python3-bpfcc and use /usr/bin/python3 "
                "(or a venv made with --system-site-packages)")
            self._error.__cause__ = e
            return
        self._BPF = BPF
        self.import_s = time.monotonic() - t0
        self._flags_ready.wait()
        if self._flags is None:
            return
        t1 = time.monotonic()
        try:
            self._bpf = BPF(src_file=str(BPF_DIR / "klptrace.bpf.c").encode(), cflags=self._flags)
        except Exception as e:  # bcc raises bare Exception
            self._error = ProbeError(f"compiling the BPF programs failed: {e}",
                                     "run with BCC_DEBUG=1 for clang's output")
            self._error.__cause__ = e
        self.compile_s = time.monotonic() - t1

    def define(self, name: str) -> int | None:
        """The value a -D flag of the compile gives name (a layout value), if any."""
        for flag in self._flags or ():
            key, eq, value = flag[2:].partition("=")
            if flag.startswith("-D") and eq and key == name:
                try:
                    return int(value, 0)
                except ValueError:
                    return None
        return None

    def result(self) -> tuple[Any, Any]:
        """bcc's BPF class and the compiled module, once the thread is done."""
        while self._thread.is_alive():
            self._thread.join(0.1)  # a short wait: signals are handled between them
            check_interrupted()  # a safe point: nothing is in the kernel yet
        if self._error is not None:
            raise self._error
        return self._BPF, self._bpf
