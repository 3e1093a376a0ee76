"""Files and images: upload bookkeeping, rendering, expiry (the files issue fills this in).

`file_object` is the API's `file` object of a message, used by every reader of messages.
"""

from __future__ import annotations

from typing import Any

from app.serialize import iso
from models.file import File


def file_object(f: File) -> dict[str, Any]:
    """The `file` object of API.md: {id, name, mime, size, url, thumbnail_url, expires_at, expired}."""
    fid = str(f.id)
    is_image = bool(f.mime and f.mime.startswith("image/"))
    return {
        "id": fid,
        "name": f.name,
        "mime": f.mime,
        "size": f.size,
        "url": f"/files/{fid}",
        "thumbnail_url": f"/files/{fid}/thumbnail" if is_image and f.thumbnail_path else None,
        "expires_at": iso(f.expires_at),
        "expired": f.expired,
    }
