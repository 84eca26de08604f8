"""Secrets never reach logs, metrics or status: every URL shown to a person goes through here."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@\s]*)@", re.I)


def redact_url(url: str) -> str:
    """`amqp://user:secret@host/vh` -> `amqp://user:***@host/vh`; anything unparsable is masked whole."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{netloc}", parts.path, parts.query, parts.fragment))


def redact_text(text: str) -> str:
    """Mask credentials of any URL embedded in free text (exception messages, for one)."""
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}{m.group('user')}:***@", text)
