"""Showing strings from an image on a terminal without letting them drive it.

File names, link targets, labels and media types come from the image: a name holding an
escape sequence would retitle the window or move the cursor, one holding a newline would
forge a line of output. On a terminal they are shown the way GNU ``ls`` shows file names by
default there (its ``shell-escape`` quoting): a name that a shell would take as it is stays
bare; otherwise it is quoted so that pasting it into a shell gives back exactly the bytes
of the name, with ``$'...'`` for what cannot be shown::

    plain      a b        a'b        'a'$'\\n''b'      'x'$'\\033''y'      ''$'\\377'
    plain      'a b'      "a'b"      (newline)         (escape)          (byte 0xff)

Differences from ``ls``, both on the safe side: characters that Python does not call
printable are escaped even where glibc would show them (bidirectional overrides such as
U+202E, no-break spaces), and a name holding both a quote and a control character is
quoted the straightforward way (``ls`` adds a redundant ``''``, and in one case writes a
quoting that a shell reads back wrongly).

Names decoded with ``surrogateescape`` (bytes that are not UTF-8) show as their bytes.
"""

from __future__ import annotations

import string

# Characters with a meaning to the shell: a name holding one is quoted.
_SHELL_SPECIAL = frozenset(" !\"$&'()*;<=>?[\\^`|")
# ... and these only in first place (a comment, the home directory)
_SPECIAL_FIRST = frozenset("#~")
# What may stand between double quotes unchanged, in C and in the shell alike: a name made
# only of these (and holding a single quote) is shown "like this" rather than 'like'\''this'.
_DOUBLE_QUOTABLE = frozenset(string.ascii_letters + string.digits + "%+,-./:@]_ '")

_NAMED_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\v": "\\v",
    "\f": "\\f",
    "\r": "\\r",
}


def _printable(ch: str) -> bool:
    # str.isprintable is False for controls, format characters (U+202E), separators other
    # than the space, and lone surrogates (what surrogateescape makes of a stray byte)
    return ch.isprintable()


def _escape(ch: str) -> str:
    """One unprintable character as the inside of ``$'...'``: named, or octal bytes."""
    named = _NAMED_ESCAPES.get(ch)
    if named is not None:
        return named
    data = ch.encode("utf-8", "surrogateescape")
    return "".join(f"\\{b:03o}" for b in data)


def shell_escape(name: str) -> str:
    """``name`` as GNU ``ls --quoting-style=shell-escape`` shows it (see the module doc)."""
    if not name:
        return "''"
    if not all(_printable(ch) for ch in name):
        return _with_escapes(name)
    if not _needs_quotes(name):
        return name
    if "'" not in name:
        return f"'{name}'"
    if all(ch in _DOUBLE_QUOTABLE or not ch.isascii() for ch in name):
        return f'"{name}"'
    return "'" + name.replace("'", "'\\''") + "'"


def _needs_quotes(name: str) -> bool:
    if name[0] in _SPECIAL_FIRST or name in ("{", "}"):
        return True
    return any(ch in _SHELL_SPECIAL for ch in name)


def _with_escapes(name: str) -> str:
    """Quoted pieces: printable runs in '...', the rest in $'...', quotes as \\'."""
    out = ["'"]
    escaping = False  # inside $'...' rather than '...'
    for ch in name:
        if ch == "'":
            # closes whichever quoting is open, adds the quote, reopens '...'
            out.append("'\\''")
            escaping = False
        elif _printable(ch):
            if escaping:
                out.append("''")  # closes $'...' and opens '...'
                escaping = False
            out.append(ch)
        else:
            if not escaping:
                out.append("'$'")  # closes '...' and opens $'...'
                escaping = True
            out.append(_escape(ch))
    out.append("'")
    return "".join(out)


def escape_controls(text: str) -> str:
    """Free text (a message) with every unprintable character as a backslash escape."""
    if all(_printable(ch) for ch in text):
        return text
    return "".join(ch if _printable(ch) else _escape(ch) for ch in text)
