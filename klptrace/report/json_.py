"""json: the run document as it is."""

import json


def render(run: dict) -> str:  # type: ignore[type-arg]
    return json.dumps(run, indent=1, allow_nan=False) + "\n"
