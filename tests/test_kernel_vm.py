"""Boots the lab guest once per kernel and runs every kernel test (tests/kernel) inside it.

KLPTRACE_TEST_KERNELS (space-separated --kernel values, default "6.1 latest")
chooses the kernels; `make test` fetches and builds for each of them first.
Each suite's time is printed.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from util import REPO, skip_or_fail

from klptrace import assets
from klptrace.errors import KlptraceError
from klptrace.lab import defaults, kernels, vm

KERNELS = os.environ.get("KLPTRACE_TEST_KERNELS", "6.1 latest").split()
#: the kernel whose suite runs `klptrace run` three times in a row (the stress) and the
#: `once` tests
STRESS_KERNEL = "6.1"


@pytest.mark.parametrize("spec", KERNELS)
def test_kernel_suite_in_guest(spec: str, capsys: pytest.CaptureFixture[str]) -> None:
    if not shutil.which("qemu-system-x86_64"):
        skip_or_fail("qemu-system-x86_64 is not installed (make setup installs it)")
    try:
        kernel = kernels.ensure(spec)
        built = assets.build_modules(kernel)
    except KlptraceError as e:
        skip_or_fail(f"no guest kernel or modules: {e}")
    # under /tmp, which the guest sees; unique, as two suites may run at once
    rw = Path(tempfile.mkdtemp(prefix="klptrace-kernel-tests-", dir="/tmp"))
    junit = rw / "junit.xml"
    saved = rw / "run.json"
    argv = ["env", "KLPTRACE_IN_GUEST=1", "KLPTRACE_REQUIRE_KERNEL=1", f"KLPTRACE_SAVE_RUN={saved}",
            f"KLPTRACE_CACHE={defaults.cache_dir()}",
            f"KLPTRACE_MODULES={built.dir}",
            # three runs in a row on 6.1 (the stress), one elsewhere; the tests of
            # klptrace's own handling (marked `once`) on 6.1 only: CI time
            f"KLPTRACE_RUN_REPEAT={3 if spec == STRESS_KERNEL else 1}",
            f"KLPTRACE_KERNEL_ONCE={1 if spec == STRESS_KERNEL else 0}",
            sys.executable, "-m", "pytest", "-v", "--durations=12",
            "-p", "no:cacheprovider", f"--junitxml={junit}", "--rootdir", str(REPO),
            str(REPO / "tests" / "kernel")]
    with capsys.disabled():
        print(f"\n--- kernel tests in the guest ({kernel.release}) ---", flush=True)
        started = time.monotonic()
        # the BTF layout kept across boots (btf.cached_layout), as run --vm does
        layouts = defaults.cache_dir() / "layout"
        status = vm.run(kernel, argv, rwdirs=[rw, layouts], cwd=REPO)
        print(f"--- end of the guest's output: kernel suite on {spec} ({kernel.release}) took "
              f"{time.monotonic() - started:.0f} s ---", flush=True)
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    counts = {k: int(suite.get(k, "0")) for k in ("tests", "failures", "errors", "skipped")}
    assert status == 0, counts
    assert counts["tests"] >= 8 and counts["failures"] == counts["errors"] == 0, counts
    assert counts["skipped"] == 0, counts
    doc = json.loads(saved.read_text())
    with capsys.disabled():
        print(f"guest run: {doc['totals']}, lost events {doc['lost_events']}, "
              f"timing {doc['timing']}")
    if os.environ.get("KLPTRACE_SAVE_RUN") and spec == STRESS_KERNEL:
        # to refresh tests/data/run-6.1.json
        shutil.copy(saved, os.environ["KLPTRACE_SAVE_RUN"])
    shutil.rmtree(rw, ignore_errors=True)
