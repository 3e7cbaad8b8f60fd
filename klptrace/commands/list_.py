"""`klptrace list`: the scenario ids and titles, in the order `run` runs them."""

from __future__ import annotations

import dataclasses

from klptrace import files
from klptrace.commands import scenarios_for


@dataclasses.dataclass
class ListOptions:
    scenarios: str | None = None  # a user's scenario directory


def run(opts: ListOptions) -> int:
    scs = scenarios_for([], opts.scenarios)
    width = max(len(s.id) for s in scs)
    files.write_stdout("".join(f"{s.id:<{width}}  {s.title}\n" for s in scs))
    return 0
