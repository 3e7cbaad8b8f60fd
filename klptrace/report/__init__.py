"""Formatters: a run's results in, text out. No logic beyond layout.

Each module has `render(m: Matrix) -> str`, where m is the typed model of what ran
(klptrace.results): several kernels' runs, or one run as a matrix of one (m.run);
every format takes both. kcidb also takes `origin`, given here as `kcidb_origin`.
This module is the one list of the formats each command offers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from klptrace.results import Matrix, RunDocument

#: `run` and `check`
FORMATS = ("text", "json", "ktap", "junit", "html", "kcidb", "trace-event")
#: `trace` (with --expect, json, ktap and junit are a run document's)
TRACE_FORMATS = ("transcript", "json", "ktap", "junit")
#: `stall` (html: with --watch)
STALL_FORMATS = ("text", "json", "html")
_MODULES = {"json": "json_", "trace-event": "trace_event"}


def render(fmt: str, doc: RunDocument | Matrix, *, kcidb_origin: str = "klptrace") -> str:
    """Render a run, or a matrix of runs, in one of FORMATS."""
    import importlib

    from klptrace.results import Matrix

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    # only the one asked for: tabulate and xml.etree took 0.8 s to import
    # in the emulated guest, on every run
    module = importlib.import_module(f"klptrace.report.{_MODULES.get(fmt, fmt)}")
    m = Matrix.of(doc)
    if fmt == "kcidb":
        return str(module.render(m, origin=kcidb_origin))
    return str(module.render(m))
