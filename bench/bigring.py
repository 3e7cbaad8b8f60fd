"""`klptrace` with a BPF ring buffer of PAGES pages: for the benchmark only.

    python3 bench/bigring.py PAGES trace ...     (PAGES a power of two)

The ring buffer's size is the macro KLPT_RINGBUF_PAGES of bpf/klptrace.bpf.c,
8192 pages unless the compile defines it; klptrace passes no -D flag for it, so
this appends one to the flags record/compiler.py's cflags() returns (Build
calls it by name) and runs klptrace's command line as `python3 -m klptrace`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from klptrace.cli import main
from klptrace.record import compiler


def with_pages(pages: int) -> None:
    """Make every later compile define KLPT_RINGBUF_PAGES=pages."""
    if pages <= 0 or pages & (pages - 1):
        raise SystemExit(f"bigring: {pages} pages: not a power of two "
                         "(kernel/bpf/ringbuf.c refuses any other size)")
    cflags = compiler.cflags

    def flags(kallsyms: str = "/proc/kallsyms") -> list[str]:
        return [*cflags(kallsyms), f"-DKLPT_RINGBUF_PAGES={pages}"]

    compiler.cflags = flags


if __name__ == "__main__":
    with_pages(int(sys.argv[1]))
    sys.argv = [sys.argv[0], *sys.argv[2:]]
    sys.exit(main())
