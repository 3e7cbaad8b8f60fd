"""Packaging: a wheel carries the BPF source, its headers and the module sources as package
data, an install of it finds them, and the working tree (which the lab guest runs) still does.
Offline: the wheel is built with this venv's setuptools, installed with no index."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
from util import REPO

from klptrace.lab import build

SHOW = ("from klptrace import assets; from klptrace.record import compiler; "
        "print(compiler.BPF_DIR); print(assets.modules_dir())")


def _tracked(*paths: str) -> list[str]:
    """The files git tracks under paths (links included, as links)."""
    out = subprocess.run(["git", "ls-files", "-z", "--", *paths], cwd=REPO, check=True,
                         capture_output=True).stdout.decode()
    return [p for p in out.split("\0") if p]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PIP_NO_INDEX"] = "1"  # offline: nothing but the wheel itself is installed
    return env


def _data_files() -> set[str]:
    """What the wheel must carry: bpf/ whole, and the kbuild sources of modules/."""
    bpf = [p for p in _tracked("bpf")]
    mods = [str(Path("modules") / rel) for rel in build.source_files(REPO / "modules")]
    assert "bpf/klptrace.bpf.c" in bpf and "bpf/klptrace.h" in bpf
    assert any(p.startswith("bpf/include/") for p in bpf) and "modules/Makefile" in mods
    return {f"klptrace/{p}" for p in bpf + mods}


def test_the_data_links_are_tracked_and_relative() -> None:
    staged = subprocess.run(["git", "ls-files", "-s", "klptrace/bpf", "klptrace/modules"],
                            cwd=REPO, check=True, capture_output=True, text=True).stdout
    assert [line.split()[0] for line in staged.splitlines()] == ["120000", "120000"]
    assert os.readlink(REPO / "klptrace" / "bpf") == "../bpf"
    assert os.readlink(REPO / "klptrace" / "modules") == "../modules"


def test_the_working_tree_finds_its_data() -> None:
    # as the lab guest runs klptrace: `python -m klptrace` in the repository
    p = subprocess.run([sys.executable, "-c", SHOW], cwd=REPO, check=True, capture_output=True,
                       text=True, env=_env())
    assert p.stdout.splitlines() == [str(REPO / "bpf"), str(REPO / "modules")]


def test_a_wheel_carries_the_data_and_its_install_finds_it(tmp_path: Path) -> None:
    pytest.importorskip("setuptools", reason="the [test] extra installs setuptools")
    src = tmp_path / "src"
    src.mkdir()
    # a copy of what git tracks, so that a build in the tree leaves nothing behind
    for rel in _tracked("pyproject.toml", "README.md", "klptrace", "bpf", "modules"):
        dest = src / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if (REPO / rel).is_symlink():
            dest.symlink_to(os.readlink(REPO / rel))
        else:
            dest.write_bytes((REPO / rel).read_bytes())
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(dist), str(src)],
                   check=True, capture_output=True, env=_env(), cwd=tmp_path)
    [wheel] = dist.glob("klptrace-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = _data_files()
    assert wanted <= names, sorted(wanted - names)
    assert not [n for n in names if n.endswith((".o", ".ko", ".mod.c", ".cmd"))]

    target = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(target)
    python = target / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", str(wheel)], check=True, capture_output=True, env=_env(),
                   cwd=tmp_path)
    p = subprocess.run([str(python), "-c", SHOW], check=True, capture_output=True, text=True,
                       env=_env(), cwd=tmp_path)
    bpf, modules = (Path(line) for line in p.stdout.splitlines())
    site = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True, capture_output=True, text=True, cwd=tmp_path).stdout.strip())
    assert bpf == site.resolve() / "klptrace" / "bpf" and modules.parent == bpf.parent
    installed = {f"klptrace/{p.relative_to(bpf.parent)}" for d in (bpf, modules)
                 for p in d.rglob("*") if p.is_file()}
    assert wanted <= installed, sorted(wanted - installed)
    assert (bpf / "klptrace.bpf.c").read_bytes() == (REPO / "bpf" / "klptrace.bpf.c").read_bytes()
