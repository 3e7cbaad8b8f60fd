"""Kernel tests: run as root inside the lab guest (see tests/test_kernel_vm.py)."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from util import skip_or_fail

from klptrace.commands import run as run_cmd
from klptrace.errors import NotSupported
from klptrace.kernel import kmod


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """KLPTRACE_KERNEL_ONCE=0 deselects the `once` tests (not a skip: they run on the
    first kernel of tests/test_kernel_vm.py, and a skip would be a CI failure)."""
    if os.environ.get("KLPTRACE_KERNEL_ONCE", "1") != "0":
        return
    keep = [i for i in items if i.get_closest_marker("once") is None]
    config.hook.pytest_deselected(items=[i for i in items if i not in keep])
    items[:] = keep


@functools.cache
def _why_not() -> str:
    """Why this machine cannot run kernel tests ('' if it can): klptrace's own check."""
    problem = kmod.unsupported()
    return problem.message if problem is not None else ""


@pytest.fixture(scope="session")
def module_dir() -> Path:
    """The test modules built for the running kernel."""
    why = _why_not()
    if why:
        skip_or_fail(why)
    try:
        return run_cmd.module_dir(os.environ.get("KLPTRACE_MODULES"),
                                   ["klptrace_target", "klptrace_busy", "klptrace_lp",
                                    "klptrace_lp2", "klptrace_stall", "klptrace_stall_lp",
                                    "klptrace_shadow_target", "klptrace_shadow_lp1",
                                    "klptrace_shadow_lp2", "klptrace_shadow_lp3"])
    except NotSupported as e:
        skip_or_fail(str(e))
        raise


@pytest.fixture
def clean_kernel(module_dir: Path):  # type: ignore[no-untyped-def]
    """Fails the test if a klptrace module or patch is left behind; removes it."""
    yield module_dir
    left = [m for m in kmod.loaded_modules() if m.startswith("klptrace_")]
    patches = [p for p in kmod.patches() if p.startswith("klptrace_")]
    for p in patches:
        kmod.write(f"/sys/kernel/livepatch/{p}/enabled", "0")
    for m in left:
        kmod.unload(m)
    assert not left and not patches, f"left behind: modules {left}, patches {patches}"
