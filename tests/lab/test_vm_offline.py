"""vm.run() and `klptrace vm` offline: memory sizes, QEMU's aborts, and whole runs with a fake
vng and a fake QEMU (no root, no network, no VM)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from util import lab_kernel

from klptrace import cli
from klptrace.errors import KlptraceError
from klptrace.guest import vcpus
from klptrace.lab import kernels, pump, stop, vm, vng

# --- memory sizes -------------------------------------


@pytest.mark.parametrize(
    ("text", "mib"),
    [("4G", 4096), ("4g", 4096), ("2048M", 2048), ("2048", 2048), ("1.5G", 1536),
     ("4GiB", 4096), ("512MB", 512), ("1T", 1024 * 1024), ("1048576K", 1024)],
)  # fmt: skip
def test_parse_memory(text: str, mib: int) -> None:
    assert vm.parse_memory(text) == mib


@pytest.mark.parametrize("text", ["", "four", "4X", "-1G", "256M", "0"])
def test_parse_memory_rejects(text: str) -> None:
    with pytest.raises(KlptraceError):
        vm.parse_memory(text)


def test_run_rejects_before_booting(tmp_path: Path) -> None:
    k = kernels.Kernel("6.1.0-9-amd64", tmp_path / "none", tmp_path, None, tmp_path)
    with pytest.raises(KlptraceError, match="no command"):
        vm.run(k, [])
    with pytest.raises(KlptraceError, match="too small"):
        vm.run(k, ["true"], memory="64M")
    with pytest.raises(KlptraceError, match="no kernel image"):
        vm.run(k, ["true"])
    with pytest.raises(KlptraceError, match="need at least one CPU"):
        vm.run(k, ["true"], cpus=0)
    with pytest.raises(KlptraceError, match="too large"):
        vm.parse_memory("999999G")


def test_check_host_names_what_a_boot_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    have = {"qemu-system-x86_64", "busybox", "/usr/lib/systemd/systemd-udevd"}
    monkeypatch.setattr(vm.shutil, "which", lambda name: f"/usr/bin/{name}" if name in have
                        else None)
    monkeypatch.setattr(vm.os.path, "exists", lambda path: path in have)
    assert vm.check_host() == "/usr/bin/qemu-system-x86_64"
    for missing, hint in (("/usr/lib/systemd/systemd-udevd", "apt-get install udev"),
                          ("busybox", "apt-get install busybox-static"),
                          ("qemu-system-x86_64", "make setup, or apt-get install qemu-system-x86")):
        have.discard(missing)
        with pytest.raises(KlptraceError) as err:
            vm.check_host()
        assert err.value.hint == hint


def test_early_end_names_why_no_status_came(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    err = vm._early_end(log, "", 1)  # no console at all: vng never booted the guest
    assert isinstance(err, vm.GuestStopped) and err.console_log is None
    assert err.message == "vng failed before the guest booted (exit 1)"
    log.write_text("[ 0.1] Linux version 6.1\n")
    err = vm._early_end(log, "", 255)
    assert isinstance(err, vm.GuestStopped) and not isinstance(err, vm.QemuAborted)
    assert err.message == "the guest stopped before the command finished (vng exit 255)"
    assert err.console_log == log and err.vng_status == 255
    err = vm._early_end(log, f"{_GLIBC_ASSERT}\n", 255)
    assert isinstance(err, vm.QemuAborted) and err.line == _GLIBC_ASSERT
    log.write_text("[ 3.1] Kernel panic - not syncing: Attempted to kill init!\n")
    err = vm._early_end(log, f"{_GLIBC_ASSERT}\n", 255)  # the kernel's panic comes first
    assert isinstance(err, vm.GuestPanic)
    assert err.panic == "Kernel panic - not syncing: Attempted to kill init!"


# --- the command line ----------------------------------------------------------------



def test_cli_kernel_of_no_form_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vm, "check_host", lambda: "/usr/bin/qemu-system-x86_64")
    status = cli.main(["vm", "--kernel", "nonsense", "--", "true"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("klptrace: error: unknown kernel 'nonsense'\n  hint: ")
    assert "Traceback" not in err


def test_cli_vm_needs_a_command(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vm, "check_host", lambda: "/usr/bin/qemu-system-x86_64")
    assert cli.main(["vm", "--"]) == 2
    assert "no command to run in the guest" in capsys.readouterr().err


def test_cli_vm_passes_options(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}
    k = lab_kernel()
    monkeypatch.setattr(vm, "check_host", lambda: "/usr/bin/qemu-system-x86_64")
    monkeypatch.setattr(kernels, "ensure", lambda spec, progress=None: seen.update(spec=spec) or k)

    def fake_run(kernel: kernels.Kernel, argv: list[str], **kw: object) -> int:
        seen.update(kernel=kernel, argv=argv, **kw)
        return 3

    monkeypatch.setattr(vm, "run", fake_run)
    status = cli.main(["vm", "--kernel", "6.1", "--cpus", "1", "--memory", "2G", "--timeout", "60",
                       "--rwdir", "r1", "--rwdir", "r2", "--", "sh", "-c", "exit 3"])  # fmt: skip
    assert status == 3
    assert seen["spec"] == "6.1" and seen["kernel"] == k
    assert seen["argv"] == ["sh", "-c", "exit 3"]
    assert (seen["cpus"], seen["memory"], seen["timeout"]) == (1, "2G", 60.0)
    assert seen["rwdirs"] == [Path("r1"), Path("r2")]
    # the lab boots what it is asked; the vCPU policy of livepatch work is the caller's
    assert seen["cpus_for"] is vcpus.guest_cpus


def test_cli_usage_error_exits_2() -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["vm", "--cpus", "many"])
    assert exc.value.code == 2


# --- QEMU's own aborts, and stopping a guest ------------------------------------------

_GLIBC_ASSERT = ("qemu-system-x86_64: ../../accel/tcg/cpu-exec.c:1024: cpu_exec_setjmp: "
                 "Assertion `cpu == current_cpu' failed.")


@pytest.mark.parametrize("line", [
    _GLIBC_ASSERT,
    "qemu: fatal: Trying to execute code outside RAM or ROM at 0x00000000fffffff0",
    "qemu: hardware error: pci: bad bus",
    "Bail out! ERROR:../qom/object.c:1009:object_class_dynamic_cast_assert: "
    "assertion failed: (class != NULL)",
    "**\nERROR:../hw/core/cpu.c:42:f: code should not be reached",
])
def test_qemu_abort_line(line: str) -> None:
    stderr = f"virtme-ng: booting\n{line}\n"
    assert vm.qemu_abort_line(stderr) == line.splitlines()[-1]


@pytest.mark.parametrize("text", [
    "qemu-system-x86_64: warning: host doesn't support requested feature: CPUID.01H:ECX.vmx",
    "qemu-system-x86_64: terminating on signal 15 from pid 4242 (python3)",
    "[ 10.1] Kernel panic - not syncing: VFS: Unable to mount root fs",
    "ERROR: cannot find kernel modules",
])
def test_qemu_abort_line_ignores_other_messages(text: str) -> None:
    assert vm.qemu_abort_line(text + "\n") is None


def _alive(pid: int) -> bool:
    """Does pid run (a zombie does not)?"""
    st = stop.proc_state(pid)
    return st is not None and st[0] != "Z"


def _ours(mark: str) -> list[int]:
    """Running processes that carry mark in their environment (all of a fake guest's)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                env = Path(f"/proc/{entry.name}/environ").read_bytes()
            except OSError:
                continue
            if f"KLPTRACE_TEST_MARK={mark}".encode() in env.split(b"\0") and _alive(
                    int(entry.name)):
                found.append(int(entry.name))
    return found


# A stand-in for vng: runs --qemu the way virtme-run does (fork, exec, wait), in
# the group vng was started in, and exits on SIGTERM without waiting for QEMU.
_FAKE_VNG = '''#!/usr/bin/python3
import os, signal, sys
a = sys.argv[1:]
qemu, script = a[a.index("--qemu") + 1], a[a.index("--exec") + 1]
rw = [x.split("=", 1)[1] for x in a if x.startswith("--rwdir=")]
signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
pid = os.fork()
if pid == 0:
    args = [qemu, "-chardev", "file,id=console,path=/dev/null"]
    for d in rw:
        args += ["-fsdev", "local,path=" + d]
    os.execv(qemu, args + ["-append", script])
sys.exit(0 if os.waitpid(pid, 0)[1] == 0 else 255)
'''

# A stand-in for QEMU: runs the guest's shell line on the host, or fails as
# $FAKE_QEMU says; each start appends a line to $FAKE_QEMU_CALLS.
_FAKE_QEMU = r'''#!/bin/sh
while [ $# -gt 0 ]; do
  case $1 in
    -chardev) case $2 in file,id=console,path=*) console=${2#file,id=console,path=} ;; esac
              shift ;;
    -append) script=$2; shift ;;
  esac
  shift
done
echo $$ >> "$FAKE_QEMU_CALLS"
abort() { echo "@ASSERT@" >&2; kill -ABRT $$; }
case $FAKE_QEMU in
  abort) abort ;;
  abort-once) [ "$(wc -l < "$FAKE_QEMU_CALLS")" = 1 ] && abort ;;
  early-panic) echo "PANIC: early exception 0x06 IP 10:ffffffffaee1e1db error 0" > "$console"
               sleep 300 ;;
  panic) echo "[ 3.1] Kernel panic - not syncing: Attempted to kill init!" > "$console"
         exit 0 ;;
  die) kill -KILL $$ ;;
  boot) echo "[ 0.1] Linux version 6.1" > "$console"; echo FAKE-BOOTING >&2; sleep 300 ;;
  stubborn) trap '' TERM INT HUP ;;
esac
echo "[ 0.1] Linux version 6.1" > "$console"
sh -c "$script"
'''.replace("@ASSERT@", _GLIBC_ASSERT.replace("`", "\\`"))


@pytest.fixture
def fake_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A kernel path, a fake vng and a fake QEMU; the environment that selects them."""
    image = tmp_path / "k" / "boot" / "vmlinuz-6.1.0-9-amd64"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"")
    (tmp_path / "k" / "lib" / "modules" / "6.1.0-9-amd64").mkdir(parents=True)
    for name, text in (("vng", _FAKE_VNG), ("qemu-system-x86_64", _FAKE_QEMU)):
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o755)
    (tmp_path / "t").mkdir()
    env = {"KLPTRACE_TEST_MARK": f"{os.getpid()}-{tmp_path.name}", "KLPTRACE_ACCEL": "tcg",
           "FAKE_QEMU_CALLS": str(tmp_path / "calls"), "FAKE_IMAGE": str(image),
           "FAKE_VNG": str(tmp_path / "vng"), "FAKE_QEMU_BIN": str(tmp_path / "qemu-system-x86_64"),
           "TMPDIR": str(tmp_path / "t"), "KLPTRACE_CACHE": str(tmp_path / "cache")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    monkeypatch.setattr(vm, "check_host", lambda: env["FAKE_QEMU_BIN"])
    monkeypatch.setattr(vng, "find_vng", lambda: env["FAKE_VNG"])
    yield env
    for pid in _ours(env["KLPTRACE_TEST_MARK"]):  # after a failure: leave nothing running
        os.kill(pid, signal.SIGKILL)


def _fake_kernel(lab: dict[str, str]) -> kernels.Kernel:
    return kernels.ensure(lab["FAKE_IMAGE"], cache=Path(lab["KLPTRACE_CACHE"]))


def _calls(lab: dict[str, str]) -> int:
    path = Path(lab["FAKE_QEMU_CALLS"])
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_fake_guest_brings_back_the_status(
    fake_lab: dict[str, str], monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FAKE_QEMU", "run")
    assert vm.run(_fake_kernel(fake_lab), ["sh", "-c", "echo hi; exit 5"]) == 5
    assert capfd.readouterr().out == "hi\n"
    assert _calls(fake_lab) == 1 and _ours(fake_lab["KLPTRACE_TEST_MARK"]) == []
    assert list(Path(fake_lab["TMPDIR"]).iterdir()) == []


def test_the_callers_vcpu_policy_decides_the_cpus(
    fake_lab: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # lab/ knows nothing of livepatch: what the work allows comes from the caller
    monkeypatch.setenv("FAKE_QEMU", "run")
    asked: list[tuple[str, str, int]] = []

    def cpus_for(kernel: kernels.Kernel, acc: vm.Accel, cpus: int) -> tuple[int, str]:
        asked.append((kernel.release, acc.name, cpus))
        return 1, "cpus: 1, because the test says so"

    said: list[str] = []
    argvs: list[list[str]] = []
    popen = vm.subprocess.Popen

    def spy(cmd: list[str], **kw: object) -> object:
        argvs.append(cmd)
        return popen(cmd, **kw)  # type: ignore[call-overload]

    monkeypatch.setattr(vm.subprocess, "Popen", spy)
    k = _fake_kernel(fake_lab)
    assert vm.run(k, ["true"], cpus=3, say=said.append, cpus_for=cpus_for) == 0
    assert asked == [("6.1.0-9-amd64", "tcg", 3)]
    assert said[:3] == ["accel: tcg (software emulation): KLPTRACE_ACCEL says so",
                        "cpus: 1, because the test says so",
                        "booting 6.1.0-9-amd64 (1 CPUs, 4096M)"]
    [cmd] = argvs
    assert cmd[cmd.index("--cpus") + 1] == "1"
    argvs.clear()
    assert vm.run(k, ["true"], cpus=3) == 0  # no policy: the vCPUs asked for
    assert argvs[0][argvs[0].index("--cpus") + 1] == "3"


def test_qemu_abort_boots_again_once(
    fake_lab: dict[str, str], monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FAKE_QEMU", "abort-once")
    assert vm.run(_fake_kernel(fake_lab), ["sh", "-c", "exit 0"]) == 0
    err = capfd.readouterr().err
    assert _calls(fake_lab) == 2
    assert err.count(f"klptrace: QEMU itself aborted ({_GLIBC_ASSERT}); booting the guest "
                     "again (once)\n") == 1
    assert list(Path(fake_lab["TMPDIR"]).iterdir()) == []  # nor the first boot's directory


def test_qemu_abort_twice_is_named(
    fake_lab: dict[str, str], monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FAKE_QEMU", "abort")
    said: list[str] = []
    with pytest.raises(vm.QemuAborted) as err:
        vm.run(_fake_kernel(fake_lab), ["true"], say=said.append)
    assert err.value.line == _GLIBC_ASSERT
    assert err.value.vng_status == 255
    assert _calls(fake_lab) == 2
    assert sum("booting the guest again" in m for m in said) == 1
    assert _ours(fake_lab["KLPTRACE_TEST_MARK"]) == []


def test_qemu_abort_not_retried_when_asked(
    fake_lab: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_QEMU", "abort")
    with pytest.raises(vm.QemuAborted):
        vm.run(_fake_kernel(fake_lab), ["true"], retry_qemu_abort=False)
    assert _calls(fake_lab) == 1


def test_kernel_panic_is_not_a_qemu_abort(
    fake_lab: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_QEMU", "panic")
    with pytest.raises(vm.GuestPanic) as err:
        vm.run(_fake_kernel(fake_lab), ["true"])
    assert err.value.panic == "Kernel panic - not syncing: Attempted to kill init!"
    assert _calls(fake_lab) == 1  # a panic is the guest's: never retried


def test_an_early_panic_stops_the_halted_guest_at_once(
    fake_lab: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception before the kernel's handlers are up halts the guest: QEMU runs on and
    would until the timeout. The console shows it; the guest is stopped then."""
    monkeypatch.setenv("FAKE_QEMU", "early-panic")
    t0 = time.monotonic()
    with pytest.raises(vm.GuestPanic) as err:
        vm.run(_fake_kernel(fake_lab), ["true"], timeout=120)
    assert err.value.panic.startswith("PANIC: early exception 0x06")
    assert time.monotonic() - t0 < 60  # not the timeout
    assert _calls(fake_lab) == 1


def test_qemu_killed_without_a_word_is_a_stopped_guest(
    fake_lab: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_QEMU", "die")
    with pytest.raises(vm.GuestStopped) as err:
        vm.run(_fake_kernel(fake_lab), ["true"])
    assert not isinstance(err.value, vm.QemuAborted)
    assert "vng failed before the guest booted (exit 255)" in err.value.message
    assert _calls(fake_lab) == 1


def test_timeout_stops_the_guest_and_leaves_nothing(
    fake_lab: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_QEMU", "stubborn")  # ignores SIGTERM: needs the SIGKILL
    monkeypatch.setattr(stop, "STOP_GRACE", 0.5)
    with pytest.raises(vm.GuestTimeout, match="did not finish within 1 s and was stopped"):
        vm.run(_fake_kernel(fake_lab), ["sleep", "300"], timeout=1)
    assert _ours(fake_lab["KLPTRACE_TEST_MARK"]) == []


def test_a_guest_that_never_powers_off_after_its_work_is_stopped(
    fake_lab: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # a wedged guest kernel may never power off once klptrace has written its results
    monkeypatch.setattr(pump, "DONE_GRACE_S", 0.5)
    monkeypatch.setattr(stop, "STOP_GRACE", 0.5)
    polls: list[int] = []

    def done() -> bool:
        polls.append(1)
        return True

    with pytest.raises(vm.GuestStopped, match="work was done but the guest did not power off"):
        vm.run(_fake_kernel(fake_lab), ["sleep", "300"], timeout=60, done=done)
    assert polls
    assert _ours(fake_lab["KLPTRACE_TEST_MARK"]) == []


_DRIVER = """\
import os, sys
from klptrace import cli
from klptrace.lab import stop, vm, vng
vm.check_host = lambda: os.environ["FAKE_QEMU_BIN"]
vng.find_vng = lambda: os.environ["FAKE_VNG"]
stop.STOP_GRACE = 1.0
sys.exit(cli.main(["vm", "--kernel", os.environ["FAKE_IMAGE"], "--", *sys.argv[1:]]))
"""


def _read_until(proc: subprocess.Popen[bytes], fd: int, text: bytes, timeout: float) -> bytes:
    """Read fd until text shows up; what was read."""
    got = b""
    end = time.monotonic() + timeout
    while text not in got and time.monotonic() < end:
        if select.select([fd], [], [], 0.1)[0]:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            got += chunk
    assert text in got, (got, proc.poll())
    return got


@pytest.mark.parametrize("when", ["boot", "command", "stop"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_klptrace_vm_stops_the_fake_guest(
    fake_lab: dict[str, str], tmp_path: Path, when: str, sig: signal.Signals
) -> None:
    # klptrace starts as a shell without job control starts `klptrace vm ... &`:
    # with SIGINT ignored
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    env = dict(os.environ, FAKE_QEMU={"boot": "boot", "command": "run", "stop": "stubborn"}[when])
    proc = subprocess.Popen(
        [sys.executable, str(driver), "sh", "-c", "echo READY; sleep 300"], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    if when == "boot":
        _read_until(proc, proc.stderr.fileno(), b"FAKE-BOOTING", 30)
    else:
        _read_until(proc, proc.stdout.fileno(), b"READY", 30)
    proc.send_signal(sig)
    if when == "stop":
        # more signals while the stop waits for a QEMU that ignores SIGTERM
        _read_until(proc, proc.stderr.fileno(), f"{sig.name}: stopping the guest".encode(), 10)
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + sig, err
    assert f"klptrace: interrupted by {sig.name}; the guest was stopped\n" in err.decode()
    assert "Traceback" not in err.decode()
    if when == "boot":
        assert b"READY" not in out
    assert _ours(fake_lab["KLPTRACE_TEST_MARK"]) == []
    assert list(Path(fake_lab["TMPDIR"]).iterdir()) == []
