"""The saved runs in tests/data, checked in every format, give the outputs saved in
tests/data/golden: what `klptrace check` printed for them before the trust work
(commit 5733b28) and after it, byte for byte. A change to a formatter or to the result
model that changes what users read shows here; regenerate the files only for a change
meant to show (KLPTRACE_GOLDEN=write)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from util import DATA

from klptrace import cli

GOLDEN = DATA / "golden"
FORMATS = ["text", "json", "ktap", "junit", "kcidb", "html", "trace-event"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("run", ["run-6.1", "run-busy-6.1"])
def test_a_saved_run_checks_as_it_always_did(run: str, fmt: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert cli.main(["check", str(DATA / f"{run}.json"), "--format", fmt, "-o", str(out)]) == 0
    golden = GOLDEN / f"{run}.{fmt}"
    if os.environ.get("KLPTRACE_GOLDEN") == "write":
        golden.write_bytes(out.read_bytes())
    assert out.read_bytes() == golden.read_bytes()
