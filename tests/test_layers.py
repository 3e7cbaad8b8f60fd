"""The package's layers, read from its imports (function-level ones included): the pure core
needs no root, bcc or live kernel; lab/ knows nothing of livepatch; only the recorder's compiler
imports bcc."""

from __future__ import annotations

import ast
from pathlib import Path

from util import REPO

PACKAGE = REPO / "klptrace"

#: the pure core: what `klptrace check` and every formatter run on, offline
CORE = ("errors", "events", "fields", "files", "jsontext", "oops", "results", "scenario",
        "scenario_text", "transcript", "checker", "story", "stall", "stall_report",
        "stall_expect", "ledger", "leak_expect")


#: what lab/ may import of klptrace: errors, and the /proc reader (processes, no livepatch)
LAB_MAY_IMPORT = ("klptrace", "klptrace.errors", "klptrace.kernel", "klptrace.kernel.proc")


def _imports(path: Path) -> set[str]:
    """Every module path imports, absolute, at any depth (`from a import b` gives a, and a.b
    when b is one of klptrace's modules)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names
                         if _is_module(f"{node.module}.{a.name}"))
    return found


def _is_module(dotted: str) -> bool:
    if not dotted.startswith("klptrace."):
        return False
    rel = PACKAGE.joinpath(*dotted.split(".")[1:])
    return rel.is_dir() or rel.with_suffix(".py").is_file()


def _ours(path: Path) -> set[str]:
    return {m for m in _imports(path) if m == "klptrace" or m.startswith("klptrace.")}


def test_the_core_imports_neither_the_kernel_nor_the_recorder() -> None:
    for name in CORE:
        path = PACKAGE / f"{name}.py"
        assert path.is_file(), f"{name} is listed as core but is not klptrace/{name}.py"
        ours = _ours(path)
        outside = {m for m in ours
                   if m != "klptrace" and m.removeprefix("klptrace.").split(".")[0] not in CORE}
        assert not outside, f"{path.name} imports {sorted(outside)}, outside the core"


def test_the_lab_knows_nothing_of_livepatch() -> None:
    for path in sorted((PACKAGE / "lab").glob("*.py")):
        outside = {m for m in _ours(path)
                   if not m.startswith("klptrace.lab") and m not in LAB_MAY_IMPORT}
        assert not outside, f"lab/{path.name} imports {sorted(outside)}"


def test_only_the_compiler_imports_bcc() -> None:
    importers = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                 if any(m == "bcc" or m.startswith("bcc.") for m in _imports(p))}
    assert importers == {"record/compiler.py"}


def test_the_package_is_grouped_by_what_it_needs() -> None:
    record = {p.name for p in (PACKAGE / "record").glob("*.py")}
    kernel = {p.name for p in (PACKAGE / "kernel").glob("*.py")}
    assert {"compiler.py", "kprobes.py", "probes.py", "recorder.py", "btf.py", "elf.py"} <= record
    assert {"kmod.py", "kmsg.py", "settings.py", "sysinfo.py", "kernelfs.py"} <= kernel


def test_the_tests_mirror_the_package() -> None:
    """tests/<pkg>/ for each subpackage klptrace/<pkg>/, and nothing else but the in-guest
    tests (tests/linux_kernel, run against the guest's live kernel) and the data."""
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    tests = {p.name for p in (REPO / "tests").iterdir()
             if p.is_dir() and p.name != "__pycache__" and not p.name.startswith(".")}
    assert tests == packages | {"linux_kernel", "data"}
