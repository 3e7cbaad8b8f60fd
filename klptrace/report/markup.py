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


def text(s: str) -> str:
    """s as XML character data."""
    return escape(clean(s))


def attr(s: str) -> str:
    """s as a quoted XML attribute value (line breaks kept, as character references)."""
    return quoteattr(clean(s))
