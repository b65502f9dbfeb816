"""Secrets out of everything dfscan prints, logs, stores or reports: the one masking function for URLs.

Database and broker URLs carry passwords (``postgresql://u:PASSWORD@h/db``,
``redis://:PASSWORD@h``, ``...?password=PASSWORD``).  Every URL that reaches a
terminal, a log, the audit record or a report goes through :func:`mask_url`
(a URL) or :func:`mask_text` (a message or an argv item that may hold URLs).

Masking works on the text, not on a parsed URL, so an unparseable URL (the very
one an error message quotes) is masked too.  Where the text is ambiguous it
masks too much rather than too little: everything between ``scheme://user:``
and the last ``@`` is the password.
"""

from __future__ import annotations

import re

__all__ = ["MASK", "mask_text", "mask_url"]

MASK = "***"

# Query or DSN parameters whose value is a secret: any name containing one of these words.
_SECRET_NAME = r"[A-Za-z0-9_.-]*(?:pass|pwd|secret|token|key|auth|credential|signature)[A-Za-z0-9_.-]*"
_SECRET_PARAM = re.compile(rf"([?&;]{_SECRET_NAME}=)[^&;#\s]*", re.IGNORECASE)
# libpq keyword/value strings and free text: ``password=secret``.
_SECRET_PAIR = re.compile(rf"(?<![?&;A-Za-z0-9_.-])({_SECRET_NAME}\s*=\s*)(?!{re.escape(MASK)})[^\s&;,'\"]+",
                          re.IGNORECASE)
# ``user:password@host`` without a scheme, inside free text.
_BARE_USERINFO = re.compile(r"(?<![\w:/@])([\w.+%-]*):(?!/)[^\s@'\"]+@")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# A URL inside free text: scheme:// up to white space or a quote.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]*")
# An AWS access key id (long-term AKIA..., temporary ASIA...), as a signed request's Credential= shows it.
_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")


def mask_url(url: str) -> str:
    """``url`` with its password and secret query parameters replaced by ``***``; anything else kept."""
    text = str(url)
    match = _SCHEME.search(text)
    if match is None:
        # Not a URL at all (``u:pw@host/db``): everything before the last "@" may be a secret.
        at = text.rfind("@")
        return _SECRET_PARAM.sub(rf"\g<1>{MASK}", f"{MASK}{text[at:]}" if at > 0 else text)
    head, rest = text[: match.end()], text[match.end() :]
    at = rest.rfind("@")
    if at >= 0:
        userinfo, tail = rest[:at], rest[at:]
        colon = userinfo.find(":")
        if colon >= 0:
            userinfo = f"{userinfo[:colon]}:{MASK}"
        rest = userinfo + tail
    return head + _SECRET_PARAM.sub(rf"\g<1>{MASK}", rest)


def mask_text(text: str) -> str:
    """``text`` (a message, an argv item) with every URL in it masked, and ``password=...`` pairs too."""
    masked = _URL_IN_TEXT.sub(lambda m: mask_url(m.group(0)), str(text))
    masked = _BARE_USERINFO.sub(rf"\g<1>:{MASK}@", masked)
    masked = _AWS_KEY_ID.sub(MASK, masked)
    return _SECRET_PAIR.sub(rf"\g<1>{MASK}", masked)
