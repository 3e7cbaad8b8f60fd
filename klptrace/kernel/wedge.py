"""Whether the kernel is wedged: one record, kept by the kernel actor, that the runner
and the recorder read and nobody copies."""

from __future__ import annotations


class Wedge:
    """Why klptrace must leave the kernel alone from now on ('' while it need not).

    Two things wedge it. An oops: a callback that oopses dies holding the
    livepatch core's mutex, after which every call that takes it sleeps for
    good. A call into the kernel that never returned (kmod.Actor abandons it):
    the next one would wait behind it. Either way no module is unloaded and
    no probe is detached by klptrace itself any more.
    """

    def __init__(self) -> None:
        #: the call that never returned, as a shell would say it in backquotes ('' if none)
        self.stuck = ""
        self._oopsed = False

    def oopsed(self) -> None:
        """The kernel oopsed (or panicked)."""
        self._oopsed = True

    def never_returned(self, call: str) -> None:
        """A call into the kernel did not return; the first such call is the one named."""
        self.stuck = self.stuck or call

    @property
    def reason(self) -> str:
        """Why the kernel is wedged, as reports say it; '' if it is not. An oops is
        named over a call that never returned: it is what kept the call there."""
        if self._oopsed:
            return "the kernel oopsed"
        if self.stuck:
            return f"the kernel never returned from {self.stuck}"
        return ""

    def __bool__(self) -> bool:
        return self._oopsed or bool(self.stuck)
