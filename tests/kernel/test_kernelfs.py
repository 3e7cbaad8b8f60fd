"""The one writer of kernel files: what it writes, what it refuses, and that klptrace
writes nothing anywhere else but the files it names below."""

from __future__ import annotations

import ast
import errno
from pathlib import Path

import pytest

import klptrace
from klptrace.kernel import kernelfs, kmod, kmsg, settings


@pytest.fixture
def kroot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for / holding the kernel files klptrace writes, with WRITABLE moved
    under it (the same patterns, so they are what this tests)."""
    root = tmp_path / "k"
    for f in ("sys/module/m/parameters/p", "sys/kernel/livepatch/lp/enabled",
              "sys/kernel/livepatch/lp/signal", "sys/kernel/tracing/kprobe_events",
              "sys/kernel/debug/dynamic_debug/control",
              "proc/sys/kernel/printk_devkmsg", "sys/kernel/rcu_expedited"):
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text("0\n")
    monkeypatch.setattr(kernelfs, "WRITABLE", tuple(f"{root}{w}" for w in kernelfs.WRITABLE))
    return root


@pytest.fixture
def sentinel(tmp_path: Path) -> Path:
    """A file that no write may reach."""
    f = tmp_path / "sentinel"
    f.write_text("untouched\n")
    return f


def test_a_listed_file_is_written_as_a_shell_would(kroot: Path) -> None:
    param = kroot / "sys/module/m/parameters/p"
    assert kernelfs.write(str(param), "1") == 0
    assert param.read_text() == "1"  # `echo 1 > p`: truncated first
    assert kernelfs.write(str(kroot / "sys/kernel/livepatch/lp/enabled"), "1") == 0
    events = kroot / "sys/kernel/tracing/kprobe_events"
    assert kernelfs.write(str(events), "p:a f\n", append=True) == 0
    assert kernelfs.write(str(events), "-:a\n", append=True) == 0
    assert events.read_text() == "0\np:a f\n-:a\n"  # `>>`: nothing lost, no seek
    # never `>`: O_TRUNC on kprobe_events would remove every kprobe event, other tools' too
    assert kernelfs.write(str(events), "p:b g\n") == errno.EINVAL
    assert events.read_text() == "0\np:a f\n-:a\n"


@pytest.mark.parametrize("tail", [
    "sys/module/m/parameters/../../../../../sentinel",
    "sys/module/m/parameters/./p", "sys/module/m/parameters//p", "sys/module/m/parameters/p/",
    "sys/module/m/parameters/p/.", "sys/module/m/parameters/p\0",
])
def test_a_path_that_is_not_normalised_is_refused(kroot: Path, sentinel: Path,
                                                   tail: str) -> None:
    assert kernelfs.write(f"{kroot}/{tail}", "x") == errno.EINVAL
    assert kernelfs.write("sys/kernel/rcu_expedited", "x") == errno.EINVAL  # relative
    assert sentinel.read_text() == "untouched\n"
    assert (kroot / "sys/module/m/parameters/p").read_text() == "0\n"


@pytest.mark.parametrize("path", [
    "sentinel",  # outside every root
    "k/sys/module/m/initstate",  # a module's file, but not a parameter
    "k/sys/kernel/livepatch/lp/force",  # a livepatch's file, but not `enabled`
    "k/sys/kernel/livepatch/lp/transition",
    "k/sys/module/m/parameters/sub/p",  # one name too many for "*"
])
def test_a_file_not_listed_is_refused(kroot: Path, sentinel: Path, path: str) -> None:
    target = kroot.parent / path
    if not target.parent.exists():
        target.parent.mkdir(parents=True)
    if not target.exists():
        target.write_text("untouched\n")
    assert kernelfs.write(str(target), "x") == errno.EPERM
    assert target.read_text() == "untouched\n"


def test_neither_signal_nor_force_is_written(kroot: Path) -> None:
    """No klptrace command writes force, which marks tasks switched without checking
    their stacks, or signal, which no supported kernel has (removed by Linux kernel
    commit 0b3d52790e1c ("livepatch: Remove signal sysfs attribute") (in v5.1): the
    kernel sends its signal rounds itself)."""
    signal = kroot / "sys/kernel/livepatch/lp/signal"
    assert kernelfs.write(str(signal), "1") == errno.EPERM and signal.read_text() == "0\n"
    assert [w for w in kernelfs.WRITABLE if w.endswith(("/force", "/signal"))] == []
    assert kernelfs.write("/sys/kernel/livepatch/lp/force", "1") == errno.EPERM
    assert kernelfs.write("/sys/kernel/livepatch/lp/signal", "1") == errno.EPERM


def test_the_real_list_refuses_traversal_before_opening_anything() -> None:
    """With klptrace's own WRITABLE: nothing is opened, so this is safe on any host."""
    assert kernelfs.write("/etc/passwd", "x") == errno.EPERM
    assert kernelfs.write("/sys/module/printk/parameters/../../../../etc/passwd",
                          "x") == errno.EINVAL
    assert kernelfs.write("/sys/kernel/livepatch/../mm/transparent_hugepage/enabled",
                          "x") == errno.EINVAL
    assert kernelfs.write("/sys/kernel/mm/transparent_hugepage/enabled", "x") == errno.EPERM
    for pattern in kernelfs.WRITABLE:  # each one absolute and normalised
        assert pattern.startswith("/") and kernelfs._components(pattern) is not None


def test_a_symlink_as_the_file_is_not_followed(kroot: Path, sentinel: Path) -> None:
    (kroot / "sys/module/m/parameters/q").symlink_to(sentinel)
    assert kernelfs.write(str(kroot / "sys/module/m/parameters/q"), "x") == errno.ELOOP
    assert sentinel.read_text() == "untouched\n"


@pytest.mark.parametrize("link", ["sys", "sys/module/m", "sys/module/m/parameters"])
def test_a_symlink_on_the_way_is_not_followed(kroot: Path, tmp_path: Path, link: str) -> None:
    """A directory on the way replaced by a symlink (to where it was), at any depth."""
    moved = tmp_path / "elsewhere" / link
    moved.parent.mkdir(parents=True)
    (kroot / link).rename(moved)
    (kroot / link).symlink_to(moved)
    param = kroot / "sys/module/m/parameters/p"
    assert kernelfs.write(str(param), "x") == errno.ELOOP
    assert param.read_text() == "0\n"  # through the link: untouched


def test_nothing_is_created(kroot: Path) -> None:
    assert kernelfs.write(str(kroot / "sys/module/m/parameters/new"), "1") == errno.ENOENT
    assert kernelfs.write(str(kroot / "sys/module/gone/parameters/p"), "1") == errno.ENOENT
    assert not (kroot / "sys/module/m/parameters/new").exists()
    assert not (kroot / "sys/module/gone").exists()


# --- every writer of kernel files goes through it --------------------------------------


def test_the_actor_writes_through_it(kroot: Path, sentinel: Path) -> None:
    actor = kmod.Actor()  # forked now: it has the WRITABLE of this test
    try:
        assert actor.write(str(sentinel), "x", timeout=10) == errno.EPERM
        assert actor.write(str(kroot / "sys/kernel/livepatch/lp/enabled"), "1",
                           timeout=10) == 0
    finally:
        actor.close()
    assert sentinel.read_text() == "untouched\n"
    assert (kroot / "sys/kernel/livepatch/lp/enabled").read_text() == "1"


def test_settings_write_through_it(kroot: Path, tmp_path: Path) -> None:
    knob = tmp_path / "knob"  # reads "0", but is not a kernel file klptrace writes
    knob.write_text("0\n")
    with settings.changed(str(knob), "0", "1") as changed:
        assert not changed and knob.read_text() == "0\n"
    devkmsg = kroot / "proc/sys/kernel/printk_devkmsg"
    with settings.changed(str(devkmsg), "0", "on") as changed:
        assert changed and devkmsg.read_text() == "on"
    assert devkmsg.read_text() == "0"


def test_dynamic_debug_writes_through_it(kroot: Path, monkeypatch: pytest.MonkeyPatch,
                                         sentinel: Path) -> None:
    monkeypatch.setattr(kmsg, "DYNDBG", str(kroot / "sys/kernel/debug/dynamic_debug/control"))
    kmsg._control("file kernel/livepatch/* +p")
    assert Path(kmsg.DYNDBG).read_text() == "file kernel/livepatch/* +p"
    monkeypatch.setattr(kmsg, "DYNDBG", str(sentinel))
    with pytest.raises(OSError) as e:
        kmsg._control("+p")
    assert e.value.errno == errno.EPERM and sentinel.read_text() == "untouched\n"


#: where klptrace opens a file for writing other than through kernelfs, and why none
#: of them is a kernel file ("dir/" is a whole directory, "file:Qual.name" one function)
OTHER_WRITERS = {
    "kernel/kernelfs.py": "the one writer of kernel files",
    "files.py": "the output files named with -o, and a spare copy of one in the temp dir",
    "lab/": "the cache and the guest's own files (script, console log): lab/ knows nothing "
            "of the running kernel, whose files it never names",
    "record/btf.py:_save_layout": "the BTF layouts kept in the cache",
    "guest/stream.py:Writer.__init__": "the results stream that `run --vm` reads back",
    "kernel/kmsg.py:KernelLog.__init__": "/dev/kmsg, the log's character device: records are read "
                                  "from it and klptrace's step lines written to it",
    "kernel/child.py:_null_stdio": "/dev/null as the stdin, stdout and stderr of the kernel "
                                   "actor and of the detaching child",
}

_WRITE_FLAGS = {"O_WRONLY", "O_RDWR", "O_APPEND", "O_CREAT", "O_TRUNC"}
_MAKERS = {"write_text", "write_bytes", "mkstemp", "NamedTemporaryFile", "TemporaryFile"}


def _writes(source: str) -> list[tuple[int, str]]:
    """(line, qualified name of the function) of each call in source that opens a file
    for writing: open() or .open() with a mode that writes (or one not spelled out),
    os.open() with a flag that writes (or flags not spelled out), and the helpers
    that make or write files."""
    found: list[tuple[int, str]] = []

    def mode_writes(node: ast.Call, at: int) -> bool:
        mode = node.args[at] if len(node.args) > at else next(
            (k.value for k in node.keywords if k.arg in ("mode", "flags")), None)
        if mode is None:
            return False  # open(path): reads
        if isinstance(mode, ast.Constant) and isinstance(mode.value, str):
            return any(c in mode.value for c in "wax+")
        names = {n.attr if isinstance(n, ast.Attribute) else n.id for n in ast.walk(mode)
                 if isinstance(n, ast.Attribute | ast.Name)}
        if names and all(n.startswith("O_") or n == "os" for n in names):
            return bool(names & _WRITE_FLAGS)
        return True  # flags from a variable: it cannot be told here

    def visit(node: ast.AST, scope: list[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                visit(child, [*scope, child.name])
                continue
            if isinstance(child, ast.Call):
                f = child.func
                name = f.attr if isinstance(f, ast.Attribute) else \
                    f.id if isinstance(f, ast.Name) else ""
                ours = isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) \
                    and f.value.id == "files"  # klptrace.files: checked where it is
                if (name in ("open", "fdopen") and mode_writes(child, 1)) or \
                        (name in _MAKERS and not ours):
                    found.append((child.lineno, ".".join(scope)))
            visit(child, scope)

    visit(ast.parse(source), [])
    return found


def _allowed(rel: str, qual: str) -> bool:
    return rel in OTHER_WRITERS or f"{rel}:{qual}" in OTHER_WRITERS or any(
        k.endswith("/") and rel.startswith(k) for k in OTHER_WRITERS)


def test_the_scan_sees_a_stray_write() -> None:
    """The scan below can fail: each way of opening a file for writing is seen."""
    stray = """
import os, tempfile
from pathlib import Path
def a(p): open(p, "w").write("1")
def b(p): os.close(os.open(p, os.O_WRONLY | os.O_CLOEXEC))
def c(p): Path(p).write_text("1")
class D:
    def e(self, p, flags): os.open(p, flags)
def f(p): Path(p).open(mode="a")
def g(): tempfile.mkstemp()
"""
    assert [q for _, q in _writes(stray)] == ["a", "b", "c", "D.e", "f", "g"]
    reads = """
import os
def a(p): return open(p).read(), open(p, "rb").read(), open(p, mode="r")
def b(p): os.close(os.open(p, os.O_RDONLY | os.O_CLOEXEC))
"""
    assert _writes(reads) == []


def test_no_file_is_opened_for_writing_but_through_kernelfs_or_by_the_listed() -> None:
    package = Path(klptrace.__file__).parent
    stray, used = [], set()
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        for line, qual in _writes(path.read_text()):
            if _allowed(rel, qual):
                used |= {k for k in OTHER_WRITERS if k in (rel, f"{rel}:{qual}")
                         or (k.endswith("/") and rel.startswith(k))}
            else:
                stray.append(f"klptrace/{rel}:{line} ({qual or 'module level'})")
    assert not stray, ("files opened for writing outside kernelfs.write(): write kernel "
                       "files through it, or add a non-kernel writer to OTHER_WRITERS with "
                       f"the reason: {stray}")
    assert used == set(OTHER_WRITERS), f"no longer writing: {set(OTHER_WRITERS) - used}"
