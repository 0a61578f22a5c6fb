"""Text from mail and envelopes made safe to print on an administrator's terminal.

A header, an address or a reason may carry any character; printed as it is, an escape sequence
could rewrite the screen and a bidi override could make one address look like another. Every
command that shows such text (``check``, ``quarantine list``/``show``, their error lines) escapes
it with :func:`printable`. Pure: the core, the actions and the front ends share it.
"""

from __future__ import annotations


def printable(text: str) -> str:
    """Escape every character a terminal could act on (C0/C1 controls, bidi overrides, ...).

    The escapes are Python's, of the length the code point needs (``\\x1b``, ``\\u202e``,
    ``\\U000e0001``), so an escaped character never runs into the text after it.
    """
    out = []
    for char in text:
        if char.isprintable():
            out.append(char)
        elif ord(char) < 0x100:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) < 0x10000:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return "".join(out)
