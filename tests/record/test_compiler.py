"""klptrace.record.compiler offline: the flags from kallsyms and BTF, and the compile
thread with a stand-in for bcc."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path
from typing import ClassVar

import pytest

from klptrace.errors import NotSupported
from klptrace.kernel import kmod
from klptrace.lab import defaults
from klptrace.record import btf, compiler

# -- the flags: the layout from BTF (cached), the globals from kallsyms ---------------

_KALLSYMS = ("ffffffff82a00020 b klp_transition_patch\n"
             "ffffffff82a00030 d klp_target_state\n"
             "ffffffff82a00040 b klp_signals_cnt\n")


@pytest.fixture
def layout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Path]:
    """btf.cached_layout with a layout of two offsets; records the cache it was given."""
    asked: list[Path] = []

    def cached_layout(cache: Path) -> dict[str, int]:
        asked.append(cache)
        return {"OFF_TASK_PATCH_STATE": 2412, "OFF_MOD_NAME": 24}

    monkeypatch.setattr(btf, "cached_layout", cached_layout)
    monkeypatch.setenv("KLPTRACE_CACHE", str(tmp_path / "cache"))
    return asked


def test_cflags_pass_offsets_and_addresses_as_defines(tmp_path: Path,
                                                      layout: list[Path]) -> None:
    f = tmp_path / "kallsyms"
    f.write_text(_KALLSYMS)
    flags = compiler.cflags(str(f))
    assert flags[0] == f"-I{compiler.BPF_DIR}" and "-Oz" in flags and "-g0" in flags
    assert flags[-5:] == ["-DOFF_TASK_PATCH_STATE=2412", "-DOFF_MOD_NAME=24",
                          "-DADDR_KLP_TRANSITION_PATCH=0xffffffff82a00020",
                          "-DADDR_KLP_TARGET_STATE=0xffffffff82a00030",
                          "-DADDR_KLP_SIGNALS_CNT=0xffffffff82a00040"]
    assert layout == [defaults.cache_dir()]


def test_cflags_name_a_missing_global(tmp_path: Path, layout: list[Path]) -> None:
    f = tmp_path / "kallsyms"
    f.write_text(_KALLSYMS.replace("klp_signals_cnt", "klp_other"))
    with pytest.raises(compiler.ProbeError) as e:
        compiler.cflags(str(f))
    assert e.value.message == "kernel symbol klp_signals_cnt not found in /proc/kallsyms"
    assert e.value.hint == "klptrace needs CONFIG_KALLSYMS_ALL=y and root"


def test_check_kernel_raises_what_the_kernel_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    problem = NotSupported("no livepatch", "use another kernel")
    monkeypatch.setattr(kmod, "unsupported", lambda: problem)
    with pytest.raises(NotSupported) as e:
        compiler.check_kernel()
    assert e.value is problem
    monkeypatch.setattr(kmod, "unsupported", lambda: None)
    compiler.check_kernel()


# -- the compile thread, with a stand-in for bcc --------------------------------------


class _BPF:
    """bcc.BPF as the thread uses it: compiled from a file, with flags."""

    fail = ""
    made: ClassVar[list[tuple[bytes, list[str]]]] = []

    def __init__(self, src_file: bytes, cflags: list[str]) -> None:
        if _BPF.fail:
            raise Exception(_BPF.fail)  # bcc raises bare Exception
        _BPF.made.append((src_file, cflags))


@pytest.fixture
def bcc(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A bcc module holding _BPF, no kernel check, fixed flags; records the preloads."""
    fake = types.ModuleType("bcc")
    fake.BPF = _BPF  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "bcc", fake)
    monkeypatch.setenv("BCC_KERNEL_SOURCE", "")
    preloaded: list[str] = []
    monkeypatch.setattr(compiler, "_preload", preloaded.append)
    monkeypatch.setattr(compiler, "check_kernel", lambda: None)
    monkeypatch.setattr(compiler, "cflags", lambda: ["-DX=1"])
    _BPF.fail, _BPF.made = "", []
    return preloaded


def test_the_build_compiles_with_the_flags_in_its_thread(bcc: list[str]) -> None:
    build = compiler.Build()
    BPF, bpf = build.result()
    assert BPF is _BPF and isinstance(bpf, _BPF)
    assert _BPF.made == [(str(compiler.BPF_DIR / "klptrace.bpf.c").encode(), ["-DX=1"])]
    assert bcc == ["libbcc.so.0"] and os.environ["BCC_KERNEL_SOURCE"] == str(compiler.BPF_DIR)
    assert min(build.import_s, build.layout_s, build.compile_s) >= 0


def test_a_failed_compile_says_how_to_see_clang(bcc: list[str]) -> None:
    _BPF.fail = "<built-in>: error: unknown type name"
    with pytest.raises(compiler.ProbeError) as e:
        compiler.Build().result()
    assert e.value.message == ("compiling the BPF programs failed: <built-in>: error: "
                               "unknown type name")
    assert e.value.hint == "run with BCC_DEBUG=1 for clang's output"


def test_no_bcc_is_not_supported(bcc: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bcc", None)  # importing it raises ImportError
    with pytest.raises(NotSupported) as e:
        compiler.Build().result()
    assert e.value.message == "bcc's Python bindings are not importable"
    assert "python3-bpfcc" in (e.value.hint or "")


def test_a_layout_that_fails_stops_the_build(bcc: list[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def cflags() -> list[str]:
        raise compiler.ProbeError("kernel symbol x not found in /proc/kallsyms")

    monkeypatch.setattr(compiler, "cflags", cflags)
    with pytest.raises(compiler.ProbeError, match="kernel symbol x"):
        compiler.Build()
    assert _BPF.made == []  # the thread compiled nothing


def test_preload_leaves_a_missing_library_to_bcc() -> None:
    compiler._preload("libklptrace-absent.so.0")  # no error: bcc's import says it
