"""Entity tags for GET responses, so pollers can ask "has it changed?" and get 304 Not Modified.

The tag is a digest of the response body as sent: always right, whatever changed the case (a
step, a person, a reveal, an expiry), with nothing to keep in step. The body is the document the
one writer stored with the case's version, so answering either way is one indexed read and a
hash; what a 304 saves a poller is the transfer and its own parsing.
"""

from __future__ import annotations

import hashlib


def etag_of(body: bytes) -> str:
    """A strong entity tag for ``body`` (RFC 9110 section 8.8.3)."""
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def none_match(if_none_match: str | None, etag: str) -> bool:
    """Whether ``If-None-Match`` names ``etag`` (or is ``*``): the client's copy is current.

    Weak comparison, as RFC 9110 section 13.1.2 asks for If-None-Match: ``W/"x"`` matches ``"x"``.
    """
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        tag = candidate.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False
