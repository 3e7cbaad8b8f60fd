"""SIGINT and SIGTERM to `klptrace vm` stop the real guest: no QEMU of ours is left.

Host side, one guest at a time, on the default kernel. A signal mid-boot comes
as soon as QEMU runs (no boot needed); mid-command once the guest printed a
marker. klptrace is started as a shell without job control starts a
background job, with SIGINT ignored, which is how `kill -INT` used to do
nothing. Ours: a qemu-system process whose command line holds the test's own
TMPDIR (the run's private directory lives there).
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from util import REPO, skip_or_fail, until

from klptrace.errors import KlptraceError
from klptrace.lab import kernels

pytestmark = pytest.mark.vm  # boots the lab guest: `make test`, not `make check`

READY = b"KLPTRACE-SIGNALS-READY"


def _our_qemus(tmpdir: Path) -> list[str]:
    """Running qemu-system processes whose command line names tmpdir: 'pid cmdline'."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if (state != "Z" and argv and b"qemu-system" in os.path.basename(argv[0])
                and str(tmpdir).encode() in b" ".join(argv)):
            found.append(f"{entry.name} {b' '.join(argv)[:200].decode(errors='replace')}")
    return found


@pytest.fixture(scope="module")
def kernel() -> kernels.Kernel:
    if not shutil.which("qemu-system-x86_64"):
        skip_or_fail("qemu-system-x86_64 is not installed (make setup installs it)")
    try:
        return kernels.ensure("6.1")
    except KlptraceError as e:
        skip_or_fail(f"no guest kernel: {e}")
        raise


@pytest.mark.parametrize(("sig", "when"), [
    (signal.SIGTERM, "boot"), (signal.SIGINT, "boot"),
    (signal.SIGINT, "command"), (signal.SIGTERM, "command"),
])  # fmt: skip
def test_signal_stops_the_guest(
    kernel: kernels.Kernel, tmp_path: Path, sig: signal.Signals, when: str
) -> None:
    env = dict(os.environ, TMPDIR=str(tmp_path))
    cmd = [sys.executable, "-m", "klptrace", "vm", "--kernel", kernel.release, "--",
           "sh", "-c", f"echo {READY.decode()}; exec sleep 300"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    assert proc.stdout is not None
    out = b""
    try:
        if when == "boot":
            assert until(lambda: _our_qemus(tmp_path) or proc.poll() is not None, 120)
            assert _our_qemus(tmp_path), proc.communicate()
        else:
            end = time.monotonic() + 600  # a boot under contended emulation
            while READY not in out and time.monotonic() < end and proc.poll() is None:
                if select.select([proc.stdout], [], [], 1.0)[0]:
                    out += os.read(proc.stdout.fileno(), 4096)
            assert READY in out, (out, proc.poll())
        sent = time.monotonic()
        proc.send_signal(sig)
        rest, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out += rest
    assert proc.returncode == 128 + sig, err
    assert f"klptrace: interrupted by {sig.name}; the guest was stopped\n" in err.decode()
    assert "Traceback" not in err.decode()
    if when == "boot":
        assert READY not in out  # the signal did come before the command
    left = _our_qemus(tmp_path)
    for line in left:  # a failed stop must not cost the machine 4 GiB
        os.kill(int(line.split()[0]), signal.SIGKILL)
    assert left == []
    assert took < 15, took  # "within seconds"; typically well under one
