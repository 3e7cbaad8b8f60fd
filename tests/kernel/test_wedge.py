"""klptrace.kernel.wedge: one record of whether the kernel is wedged, and why."""

from __future__ import annotations

from klptrace.kernel.wedge import Wedge


def test_a_fresh_kernel_is_not_wedged() -> None:
    w = Wedge()
    assert not w and w.reason == "" and w.stuck == ""


def test_the_first_call_that_never_returned_is_named() -> None:
    w = Wedge()
    w.never_returned("`echo 0 > /sys/kernel/livepatch/lp/enabled`")
    w.never_returned("`rmmod lp`")
    assert w and w.stuck == "`echo 0 > /sys/kernel/livepatch/lp/enabled`"
    assert w.reason == ("the kernel never returned from "
                        "`echo 0 > /sys/kernel/livepatch/lp/enabled`")


def test_an_oops_is_named_over_the_call_it_kept() -> None:
    w = Wedge()
    w.oopsed()
    assert w and w.reason == "the kernel oopsed" and w.stuck == ""
    w.never_returned("`insmod lp.ko`")  # the task that oopsed was the actor's
    assert w.reason == "the kernel oopsed" and w.stuck == "`insmod lp.ko`"
