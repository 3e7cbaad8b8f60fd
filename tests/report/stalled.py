"""Saved runs with a stalling scenario, for the formatters' tests: the real stall report
of run-busy-6.1.json on one scenario of the 11-scenario run, and one whose every value
the kernel or a task chooses is hostile."""

from __future__ import annotations

import copy
import json
from typing import Any

from util import DATA, saved_run

from klptrace import results

#: the scenario of run-6.1.json that gets the stall report (the 9th, a pass)
STALLED = "busy-target-module"
#: what a task may name itself (comm is its own to write, prctl(PR_SET_NAME)) and a saved
#: file may hold: line breaks, KTAP's result and directive words, XML's markup and CDATA
#: end, NUL and other controls, a line separator, and what a decoder put for bytes that
#: were not UTF-8 (U+FFFD)
HOSTILE = ("x\nok 99 injected\r\nnot ok 98 # SKIP\x1b[2J<b a='1'>]]></system-out>&amp;#"
           "\x00\x07\x7f\x85\u2028\ufffd\ufffd")
#: the line of the busy kworker that every format carries
TASK_LINE = ("task kworker/1:0+events (pid 22, tid 22): kthread, uninterruptible (D); "
             "sleeping on function klptrace_busy_work_func(), blocking 0.5 s")


def busy_stall() -> dict[str, Any]:
    """The stall report run-busy-6.1.json saved for its stalling scenario."""
    doc = json.loads((DATA / "run-busy-6.1.json").read_text())
    stall: dict[str, Any] = next(s["stall"] for s in doc["scenarios"] if "stall" in s)
    return stall


def hostile_stall() -> dict[str, Any]:
    """The busy stall report with HOSTILE in every value a formatter writes."""
    stall = copy.deepcopy(busy_stall())
    stall["patch"] = f"lp{HOSTILE}"
    stall["signals"] = [f"signal {HOSTILE}"]
    [task] = stall["tasks"]
    task.update(comm=HOSTILE, function=f"f{HOSTILE}", state=HOSTILE)
    stall["tasks"].append(dict(task, comm=HOSTILE[::-1], tid=23))
    stall["next_steps"] = [f"{HOSTILE}:22: {HOSTILE}", *stall["next_steps"]]
    return stall


def run_doc(stall: dict[str, Any] | None = None, status: str = "pass",
            recorded: list[str] | None = None) -> dict[str, Any]:
    """The saved 11-scenario run, STALLED given stall (busy_stall() when None), that status
    (with a problem and a diff when it is not a pass) and that recorded transcript."""
    doc = saved_run()
    sc = next(s for s in doc["scenarios"] if s["id"] == STALLED)
    sc["stall"] = busy_stall() if stall is None else stall
    if status != "pass":
        sc.update(status=status, explanation="line 3: the story went another way",
                  problems=["a problem"], diff=["-expected", "+recorded"])
    if recorded is not None:
        sc["recorded"] = recorded
    return doc


def run(doc: dict[str, Any]) -> results.RunDocument:
    """A saved run document, read back."""
    return results.RunDocument.from_json(doc, "doc")


def load(doc: dict[str, Any]) -> results.Matrix:
    """doc as the formatters take it, a run as a matrix of one."""
    return results.Matrix.of(run(doc))
