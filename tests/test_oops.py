"""Reading an oops from the kernel log (a real one, recorded in the lab guest on 6.1)."""

from __future__ import annotations

from util import DATA

from klptrace.kernel import kmsg

# klptrace_lp oops=post_patch: the kworker that completed the transition faulted
KWORKER = (DATA / "oops-6.1-post-patch-kworker.txt").read_text().splitlines()


def test_the_oops_and_what_names_it() -> None:
    before = ["livepatch: 'klptrace_lp': completing patching transition",
              "klptrace_lp: post_patch_callback: vmlinux"]
    oops = kmsg.find_oops(before + KWORKER)
    assert oops is not None and oops.complete
    assert oops.lines[0] == "BUG: kernel NULL pointer dereference, address: 0000000000000000"
    assert oops.lines[-1] == "---[ end trace 0000000000000000 ]---"
    assert oops.summary == [
        "BUG: kernel NULL pointer dereference, address: 0000000000000000",
        "Oops: 0002 [#1] PREEMPT SMP NOPTI",
        "CPU: 1 PID: 101 Comm: kworker/1:2 Tainted: G           OE K    6.1.0-57-amd64 #1  "
        "Debian 6.1.192-3",
        "RIP: 0010:klptrace_lp_post_patch+0x71/0x7c [klptrace_lp]"]


def test_an_oops_still_being_printed() -> None:
    cut = KWORKER.index("Call Trace:")
    oops = kmsg.find_oops(KWORKER[:cut])
    assert oops is not None and not oops.complete
    assert any(line.startswith("RIP: 0010:klptrace_lp_post_patch") for line in oops.summary)


def test_no_oops() -> None:
    assert kmsg.find_oops(["livepatch: 'p': patching complete", "BUGS: none",
                           "klptrace_lp: pre_patch_callback: vmlinux"]) is None


def test_a_user_space_rip_names_nothing() -> None:
    oops = kmsg.find_oops(["Oops: 0002 [#1] PREEMPT SMP NOPTI", "RIP: 0033:0x7f407057d829",
                           "---[ end trace 0000000000000000 ]---"])
    assert oops is not None and oops.summary == ["Oops: 0002 [#1] PREEMPT SMP NOPTI"]


class _Log:
    def __init__(self, batches: list[list[tuple[int, str]]]) -> None:
        self.batches = batches

    def records(self) -> list[tuple[int, str]]:
        return self.batches.pop(0) if self.batches else []

    def close(self) -> None:
        pass


def test_the_watch_reads_the_oops_to_its_end_and_ignores_user_lines() -> None:
    cut = KWORKER.index("Call Trace:")
    log = _Log([[(1, "BUG: written by a user to /dev/kmsg")],
                [(0, line) for line in KWORKER[:cut]],
                [(0, line) for line in KWORKER[cut:]]])
    watch = kmsg.OopsWatch(log)  # type: ignore[arg-type]
    assert watch.check() is None  # a user's line is not the kernel's
    oops = watch.check()
    assert oops is not None and oops.complete and oops.lines[0].startswith("BUG: kernel NULL")
    assert watch.check() is oops
