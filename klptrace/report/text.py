"""text: a table, one row per scenario, then each failure's explanation and diff."""

from tabulate import tabulate


def render(run: dict) -> str:  # type: ignore[type-arg]
    rows = [(s["id"], s["status"].upper(), len(s["events"]), f"{s['duration_s']:.1f}")
            for s in run["scenarios"]]
    out = [f"kernel {run['kernel']}, lost events: {run['lost_events']}", ""]
    out.append(tabulate(rows, headers=["scenario", "result", "events", "seconds"]))
    for s in run["scenarios"]:
        if s["status"] in ("pass", "skip") and not s.get("notes"):
            continue
        out += ["", f"--- {s['id']}: {s['status']}"]
        if s.get("explanation"):
            out.append(s["explanation"])
        out += [f"  {p}" for p in s.get("problems", [])]
        out += [f"  note: {n}" for n in s.get("notes", [])]
        out += s.get("diff", [])
    counts = run["totals"]
    out += ["", ", ".join(f"{n} {k}" for k, n in counts.items())]
    return "\n".join(out) + "\n"
