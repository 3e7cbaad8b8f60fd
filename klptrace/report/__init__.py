"""Formatters: a run's results in, text out. No logic beyond layout.

Each module has `render(run: dict) -> str`, where run is the JSON document of
a run (klptrace.results.run_document()).
"""

FORMATS = ("text", "json", "ktap", "junit", "html")


def render(fmt: str, run: dict) -> str:  # type: ignore[type-arg]
    """Render a run document in one of FORMATS."""
    import importlib

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    # only the one asked for: tabulate and xml.etree took 0.8 s to import
    # in the emulated guest, on every run
    module = importlib.import_module(f"klptrace.report.{'json_' if fmt == 'json' else fmt}")
    out: str = module.render(run)
    return out
