"""A callback that oopses, in the lab guest: noticed at once, reported, the rest still runs.

klptrace_lp's oops=post_patch makes its post_patch callback dereference NULL.
The task running it dies holding the livepatch core's mutex, so that kernel
can do no more livepatch work: `run --vm` must report that scenario as an
error with the oops's lines, and run the next scenarios on a fresh guest.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from util import REPO, skip_or_fail

from klptrace import assets
from klptrace.errors import KlptraceError
from klptrace.lab import kernels

pytestmark = pytest.mark.vm  # boots the lab guest: `make test`, not `make check`

# klptrace_lp alone (its module objects not loaded): only vmlinux's callbacks,
# pre_patch, post_patch, pre_unpatch, post_unpatch (see scenarios/05-...).
ALONE = """
% insmod klptrace_lp.ko{params}
livepatch: enabling patch 'klptrace_lp'
livepatch: 'klptrace_lp': initializing patching transition
klptrace_lp: pre_patch_callback: vmlinux
livepatch: 'klptrace_lp': starting patching transition
livepatch: 'klptrace_lp': completing patching transition
klptrace_lp: post_patch_callback: vmlinux
livepatch: 'klptrace_lp': patching complete
% echo 0 > /sys/kernel/livepatch/klptrace_lp/enabled
livepatch: 'klptrace_lp': initializing unpatching transition
klptrace_lp: pre_unpatch_callback: vmlinux
livepatch: 'klptrace_lp': starting unpatching transition
livepatch: 'klptrace_lp': completing unpatching transition
klptrace_lp: post_unpatch_callback: vmlinux
livepatch: 'klptrace_lp': unpatching complete
% rmmod klptrace_lp
"""


def _scenario(sid: str, params: str) -> str:
    load = f'{{ load = "klptrace_lp", params = "{params}" }}' if params else \
        '{ load = "klptrace_lp" }'
    return (f'id = "{sid}"\ntitle = "{sid}"\nlivepatches = ["klptrace_lp"]\n'
            'doc = """Without the oops, the order of target-module-not-present."""\n'
            f'steps = [\n  {load},\n  {{ disable = "klptrace_lp" }},\n'
            '  { unload = "klptrace_lp" },\n]\n'
            f'expect = """{ALONE.format(params=" " + params if params else "")}"""\n')


@pytest.fixture(scope="module")
def kernel() -> kernels.Kernel:
    if not shutil.which("qemu-system-x86_64"):
        skip_or_fail("qemu-system-x86_64 is not installed (make setup installs it)")
    try:
        k = kernels.ensure("6.1")
        assets.build_modules(k)
    except KlptraceError as e:
        skip_or_fail(f"no guest kernel or modules: {e}")
    return k


def test_oops_in_a_callback_is_an_error_and_the_rest_runs_on_a_fresh_guest(
        kernel: kernels.Kernel) -> None:
    d = Path(tempfile.mkdtemp(prefix="klptrace-oops-"))
    try:
        (d / "1.toml").write_text(_scenario("before-the-oops", ""))
        (d / "2.toml").write_text(_scenario("post-patch-oops", "oops=post_patch"))
        (d / "3.toml").write_text(_scenario("after-the-oops", ""))
        out = d / "r.json"
        p = subprocess.run([sys.executable, "-m", "klptrace", "run", "--vm", "--kernel",
                            "6.1", "--scenarios", str(d), "--format", "json",
                            "-o", str(out)], capture_output=True, text=True, cwd=REPO,
                           timeout=900)
        sys.stderr.write(p.stderr)
        assert p.returncode == 1, p.stderr
        doc = json.loads(out.read_text())
        status = {s["id"]: s["status"] for s in doc["scenarios"]}
        assert status == {"before-the-oops": "pass", "post-patch-oops": "error",
                          "after-the-oops": "pass"}, status
        bad = doc["scenarios"][1]
        assert "the kernel oopsed during `insmod klptrace_lp.ko oops=post_patch`" in \
            bad["explanation"], bad["explanation"]
        rip = [line for line in bad["oops"] if line.startswith("RIP: ")]
        assert rip and "klptrace_lp_post_patch+" in rip[0], bad["oops"]
        # every format shows the problems: the oops's lines are among them
        assert any(line.startswith("RIP: ") and "klptrace_lp_post_patch+" in line
                   for line in bad["problems"]), bad["problems"]
        # what happened up to the oops was recorded: the transition completing
        assert "livepatch: 'klptrace_lp': completing patching transition" in bad["recorded"]
        assert doc["boots"] == 2
        assert "booting a fresh guest for the 1 remaining scenario" in p.stderr
        # the text report of the same run shows the error and the oops's RIP line
        t = subprocess.run([sys.executable, "-m", "klptrace", "check", str(out), "--scenarios",
                            str(d)],
                           capture_output=True, text=True, cwd=REPO)
        assert t.returncode == 1
        row = next(line for line in t.stdout.splitlines() if line.startswith("post-patch-oops"))
        assert row.split()[1] == "ERROR", t.stdout
        assert "RIP: 0010:klptrace_lp_post_patch+" in t.stdout, t.stdout
    finally:
        shutil.rmtree(d, ignore_errors=True)
