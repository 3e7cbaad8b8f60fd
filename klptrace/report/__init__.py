"""Formatters: a run's results in, text out. No logic beyond layout.

Each module has `render(run: dict) -> str`, where run is the JSON document of a
run (klptrace.results.RunDocument.to_json()) or of a kernel matrix (Matrix.to_json());
every format takes both. kcidb also takes `origin`, given here as `kcidb_origin`.
This module is the one list of the formats each command offers.
"""

#: `run` and `check`
FORMATS = ("text", "json", "ktap", "junit", "html", "kcidb", "trace-event")
#: `trace` (with --expect, json, ktap and junit are a run document's)
TRACE_FORMATS = ("transcript", "json", "ktap", "junit")
#: `stall` (html: with --watch)
STALL_FORMATS = ("text", "json", "html")
_MODULES = {"json": "json_", "trace-event": "trace_event"}


def render(fmt: str, run: dict, *, kcidb_origin: str = "klptrace") -> str:  # type: ignore[type-arg]
    """Render a run document in one of FORMATS."""
    import importlib

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    # only the one asked for: tabulate and xml.etree took 0.8 s to import
    # in the emulated guest, on every run
    module = importlib.import_module(f"klptrace.report.{_MODULES.get(fmt, fmt)}")
    if fmt == "kcidb":
        return str(module.render(run, origin=kcidb_origin))
    out: str = module.render(run)
    return out
