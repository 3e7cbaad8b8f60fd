"""klptrace's own files, found as package data: the BPF C and the test modules' sources.

In a working tree klptrace/bpf and klptrace/modules are links to the
repository's bpf/ and modules/; an installed wheel holds copies. Either way
they are plain files, for which as_file() yields the path itself (bcc, clang
and kbuild read them by path).
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the lab is imported only to build: a run in a guest never needs it
    from klptrace.lab.build import Built
    from klptrace.lab.kernels import Kernel


def _package_dir(name: str) -> Path:
    with importlib.resources.as_file(importlib.resources.files("klptrace") / name) as p:
        return Path(p).resolve()  # plain files: the path itself, valid after the block


def bpf_dir() -> Path:
    """bpf/: klptrace.bpf.c, klptrace.h and the stand-in kernel headers for bcc."""
    return _package_dir("bpf")


def modules_dir() -> Path:
    """modules/: the test modules' kbuild sources."""
    return _package_dir("modules")


def build_modules(kernel: Kernel | None = None, *, kdir: Path | None = None,
                  say: Callable[[str], None] | None = None) -> Built:
    """klptrace's test modules built for kernel (or against kdir), as the lab builds any tree."""
    from klptrace.lab import build

    return build.build(kernel, kdir=kdir, src=modules_dir(), say=say)
