"""Helpers shared by the tests."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

DATA = Path(__file__).resolve().parent / "data"
REPO = Path(__file__).resolve().parent.parent
REQUIRE_KERNEL = "KLPTRACE_REQUIRE_KERNEL"


def skip_or_fail(reason: str) -> None:
    """Skip a kernel test with its reason, or fail it when CI demands kernel tests run."""
    if os.environ.get(REQUIRE_KERNEL):
        pytest.fail(f"kernel test cannot run ({REQUIRE_KERNEL} is set): {reason}")
    pytest.skip(reason)


def lab_kernel() -> Any:
    """A lab kernel (klptrace.lab.kernels.Kernel) unpacked nowhere: for command lines."""
    from klptrace.lab import kernels

    root = Path("/c/kernels/6.1.0-9-amd64")
    return kernels.Kernel("6.1.0-9-amd64", root / "boot/vmlinuz-6.1.0-9-amd64",
                          root / "lib/modules/6.1.0-9-amd64", None, root)


def saved_run() -> dict[str, Any]:
    """A real run of the first 11 scenarios recorded in the lab guest (6.1)."""
    doc: dict[str, Any] = json.loads((DATA / "run-6.1.json").read_text())
    return doc


def until(cond: Callable[[], object], timeout: float = 60.0) -> bool:
    """Poll cond every 50 ms until it is true (True) or timeout seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def one_error(err: str) -> str:
    """The one error line of err; every other line is its hint."""
    assert "Traceback" not in err
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith("klptrace: error: ")]
    assert len(errors) == 1, err
    assert all(line.startswith("  hint: ") for line in lines if line not in errors), err
    return errors[0]
