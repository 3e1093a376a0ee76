"""Short-lived signed download links, so a browser can show a member's image in a plain <img>.

A link names the file, what is fetched of it (the bytes or the thumbnail), the member it was
handed to and when it expires, and carries an HMAC-SHA256 over exactly those. The key is
derived from the JWT secret (HMAC(jwt_secret, "media-url")), so a signature can never pass
as a token nor the reverse. The download still checks that the named user is a member of
the file's room at fetch time: a link given to someone who was since kicked stops working.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import datetime, timezone
from typing import Any, Literal
from urllib.parse import urlencode

from app.settings import Settings

Kind = Literal["file", "thumbnail"]


def _key(settings: Settings) -> bytes:
    return hmac.new(settings.jwt_secret.encode(), b"media-url", hashlib.sha256).digest()


def _signature(settings: Settings, file_id: str, kind: Kind, user_id: str, exp: int) -> str:
    msg = f"{file_id}\n{kind}\n{user_id}\n{exp}".encode()
    return hmac.new(_key(settings), msg, hashlib.sha256).hexdigest()


def sign(settings: Settings, *, file_id: str, kind: Kind, user_id: str, exp: int) -> str:
    """The path with its query: /files/{id}[/thumbnail]?u=&exp=&sig=."""
    path = f"/files/{file_id}" + ("/thumbnail" if kind == "thumbnail" else "")
    query = urlencode({"u": user_id, "exp": exp, "sig": _signature(settings, file_id, kind, user_id, exp)})
    return f"{path}?{query}"


def verify(settings: Settings, *, file_id: str, kind: Kind, user_id: str, exp: str, sig: str,
           now: float | None = None) -> bool:
    """True when the signature matches and the link has not expired."""
    try:
        exp_s = int(exp)
    except ValueError:
        return False
    if exp_s < (time.time() if now is None else now):
        return False
    expected = _signature(settings, file_id, kind, user_id, exp_s)
    return hmac.compare_digest(expected, sig)


def links(settings: Settings, file_obj: dict[str, Any], user_id: str, now: float | None = None) -> dict[str, Any]:
    """{url, thumbnail_url, expires_at} for a member; thumbnail_url is null when there is none."""
    exp = int((time.time() if now is None else now) + settings.media_url_ttl_s)
    fid = str(file_obj["id"])
    thumb = sign(settings, file_id=fid, kind="thumbnail", user_id=user_id, exp=exp) \
        if file_obj.get("thumbnail_url") else None
    expires_at = datetime.fromtimestamp(exp, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {"url": sign(settings, file_id=fid, kind="file", user_id=user_id, exp=exp),
            "thumbnail_url": thumb, "expires_at": expires_at}
