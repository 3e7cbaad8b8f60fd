"""Text made safe for XML and HTML, whatever a recording holds.

XML 1.0 forbids NUL and the other C0 controls but tab, newline and carriage
return, lone surrogates, U+FFFE and U+FFFF: one of them makes a whole JUnit file
unreadable (HTML calls them parse errors). They can come from a scenario's
params or the kernel's log, so every XML and HTML writer passes text through
clean(), which writes each as a visible escape (\\x00, \\ud800) instead.
"""

import re
from xml.sax.saxutils import escape, quoteattr

_FORBIDDEN = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _visible(m: re.Match[str]) -> str:
    c = ord(m[0])
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def clean(text: str) -> str:
    """text with every character XML 1.0 forbids written as an escape."""
    return _FORBIDDEN.sub(_visible, text)


#: what a terminal acts on rather than shows: C0 controls but tab and newline (ESC
#: among them, which starts a terminal's escape sequences), DEL and the C1 controls
_TERMINAL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal(text: str) -> str:
    """text with every character a terminal would act on written as an escape: a kernel
    name or a step's detail from a saved run cannot move the cursor or retitle a window."""
    return _TERMINAL.sub(_visible, text)


#: what ends a line somewhere: C0 controls but tab (newline among them), DEL, the C1
#: controls, and the separators str.splitlines() also breaks lines at
_BREAKS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: str) -> str:
    """text on one line: control characters and line separators as escapes (\\x0a), so
    that a value from a recording cannot start a line of its own."""
    return _BREAKS.sub(_visible, text)


def text(s: str) -> str:
    """s as XML character data."""
    return escape(clean(s))


def attr(s: str) -> str:
    """s as a quoted XML attribute value (line breaks kept, as character references)."""
    return quoteattr(clean(s))
