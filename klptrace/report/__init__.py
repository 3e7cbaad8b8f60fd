"""Formatters: a run's results in, text out. No logic beyond layout.

Each module has `render(run: dict) -> str`, where run is the JSON document of
a run (klptrace.results.run_document()).
"""

FORMATS = ("text", "json", "ktap", "junit")


def render(fmt: str, run: dict) -> str:  # type: ignore[type-arg]
    """Render a run document in one of FORMATS."""
    from klptrace.report import json_, junit, ktap, text

    out: str = {"text": text, "json": json_, "ktap": ktap, "junit": junit}[fmt].render(run)
    return out
