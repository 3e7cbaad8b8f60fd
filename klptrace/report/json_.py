"""json: the document as klptrace writes it (results' to_json)."""

import json

from klptrace.results import Matrix


def render(m: Matrix) -> str:
    return json.dumps(m.to_json(), indent=1, allow_nan=False) + "\n"
