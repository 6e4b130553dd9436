"""Text for people: refusals on one short line, and names safe to print.

Standard library only, so that the command line can use it before Keras loads.
"""

from __future__ import annotations

# Where libraries append a whole object's config to a message (Keras does, 10-40 KB).
_CONFIG_FOLLOWS = (" Full object config:", " config=", " Received: config=")


def printable(text) -> str:
    """`text` safe to print: each character a terminal would act on (control characters,
    so escape sequences such as `"\\x1b[31m"`, bidirectional overrides, line separators)
    written as its Python escape; other characters, accented or not, are kept."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in str(text))


def one_line(text, limit: int = 200) -> str:
    """`text` as one printable line of at most `limit` characters: an error message fit to
    show, even when the library that raised it embedded a whole config in it."""
    text = " ".join(str(text).split())
    for marker in _CONFIG_FOLLOWS:
        text = text.split(marker)[0]
    text = printable(text)
    if len(text) > limit and ". " in text:  # the first sentence says what went wrong
        text = text.split(". ")[0] + "."
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."
