"""commands/lab.py: `klptrace kernel`, `build` and `vm`, with the lab's fetch, build and boot
faked at their edges (kernels.ensure, build.build, vm.run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from util import one_error

from klptrace import cli
from klptrace.lab import build, defaults, kernels, vm


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> kernels.Kernel:
    """A cached kernel that kernels.ensure hands out, saying what it fetched."""
    root = tmp_path / "k"
    image = root / "boot" / "vmlinuz-9.9.9-1-amd64"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"")
    k = kernels.Kernel("9.9.9-1-amd64", image, root, None, root, suite="sid")

    def ensure(spec: str | None, refresh: bool = False, progress: Any = None) -> kernels.Kernel:
        if progress is not None and spec == "6.12":
            progress("downloading linux-image-9.9.9-1-amd64")
        return k

    monkeypatch.setattr(kernels, "ensure", ensure)
    return k


@pytest.fixture
def boots(kernel: kernels.Kernel, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """vm.run's calls: the command and the guest's size; each guest exits 3."""
    seen: list[dict[str, Any]] = []

    def run(k: kernels.Kernel, argv: list[str], **kw: Any) -> int:
        seen.append({"kernel": k, "argv": argv, **kw})
        return 3

    monkeypatch.setattr(vm, "check_host", lambda: None)
    monkeypatch.setattr(vm, "run", run)
    return seen


def test_vm_runs_the_command_in_a_guest_of_the_default_size(
        boots: list[dict[str, Any]]) -> None:
    assert cli.main(["vm", "--", "uname", "-r"]) == 3  # the command's exit status
    assert boots[0]["argv"] == ["uname", "-r"]
    assert (boots[0]["cpus"], boots[0]["memory"]) == (defaults.CPUS, defaults.MEMORY)
    assert boots[0]["timeout"] == defaults.TIMEOUT_S and boots[0]["rwdirs"] == []


def test_vm_takes_the_size_asked_for(boots: list[dict[str, Any]], tmp_path: Path) -> None:
    assert cli.main(["vm", "--cpus", "1", "--memory", "2G", "--timeout", "60", "--rwdir",
                     str(tmp_path), "--", "true"]) == 3
    assert (boots[0]["cpus"], boots[0]["memory"], boots[0]["timeout"]) == (1, "2G", 60.0)
    assert boots[0]["rwdirs"] == [tmp_path]


def test_vm_without_a_command_is_a_usage_error(boots: list[dict[str, Any]],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["vm"]) == 2 and cli.main(["vm", "--"]) == 2
    err = capsys.readouterr().err
    assert err.count("klptrace: error: no command to run in the guest") == 2
    assert "  hint: klptrace vm -- CMD ..." in err and boots == []


def test_kernel_says_where_it_is(kernel: kernels.Kernel,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["kernel"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "release  9.9.9-1-amd64", "suite    sid", f"image    {kernel.image}",
        f"modules  {kernel.modules_dir}", "kdir     (no headers)"]
    assert "klptrace: kernel 9.9.9-1-amd64: in the cache, nothing downloaded" in err
    assert cli.main(["kernel", "--kernel", "6.12"]) == 0
    err = capsys.readouterr().err
    assert "downloading" in err and "nothing downloaded" not in err


def test_kernel_list_takes_no_kernel(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["kernel", "--list", "--kernel", "6.1"]) == 2
    assert one_error(capsys.readouterr().err) == (
        "klptrace: error: --list shows every suite's kernels, not one --kernel")


def test_build_says_what_it_built(kernel: kernels.Kernel, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    built: list[Any] = []

    def fake_build(k: Any = None, kdir: Any = None, **kw: Any) -> build.Built:
        built.append(kdir if kdir is not None else k)
        return build.Built("9.9.9-1-amd64", tmp_path, (tmp_path / "lp.ko",),
                           rebuilt=kdir is not None)

    monkeypatch.setattr(build, "build", fake_build)
    assert cli.main(["build"]) == 0
    out, err = capsys.readouterr()
    assert out == f"{tmp_path / 'lp.ko'}\n"
    assert f"modules for 9.9.9-1-amd64: up to date, nothing rebuilt in {tmp_path}" in err
    assert cli.main(["build", "--kdir", str(tmp_path)]) == 0
    assert f"modules for 9.9.9-1-amd64: built in {tmp_path}" in capsys.readouterr().err
    assert built[0] is kernel and built[1] == tmp_path
