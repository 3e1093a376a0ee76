"""What a stored file is called and where it lives: display names, headers, paths under MEDIA_ROOT.

Names on disk are server-chosen (`<yyyy>/<mm>/<dd>/<uuid>[.thumb].<ext of the sniffed type>`,
`incoming/<uuid>` while an upload is received and processed); the client's file name is
only ever a sanitised display string, and a stored relative path never resolves outside
the root. Synchronous and disk-bound: callers run the file removals in a thread.
"""

from __future__ import annotations

import os
import re
import unicodedata
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

from app.upload.sniff import EXT_ALIASES, EXT_FAMILY, TYPES

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def display_name(raw: str | None) -> str:
    """The client's file name made harmless for display: no path, no control characters."""
    name = unicodedata.normalize("NFC", raw or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = _CONTROL.sub("", name).strip().lstrip(".").strip()
    if len(name) > 200:  # keep the extension when cutting
        stem, ext = os.path.splitext(name)
        name = stem[: 200 - len(ext[:20])] + ext[:20]
    return name or "file"


def name_for_type(name: str, mime: str) -> str:
    """The display name with the extension of the sniffed type (replaced if it named another type)."""
    ext = TYPES[mime][0]
    stem, cur = os.path.splitext(name)
    cur = cur.lower()
    if cur == ext or cur in EXT_ALIASES.get(ext, ()):
        return name
    if cur in EXT_FAMILY and stem:
        return stem + ext
    return name + ext


def content_disposition(kind: str, name: str) -> str:
    """RFC 6266 header: an ASCII fallback and the exact UTF-8 name (filename*)."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\%;' else "_" for c in name) or "file"
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


# -- paths under MEDIA_ROOT ---------------------------------------------------


def incoming_rel(file_id: str) -> str:
    """Where an upload lands while it is received and processed."""
    return f"incoming/{file_id}"


def final_rel(file_id: str, ext: str, when: datetime, suffix: str = "") -> str:
    """Per-day folder, server-chosen name: 2024/05/01/<uuid>[.thumb].<ext>."""
    return f"{when:%Y/%m/%d}/{file_id}{suffix}{ext}"


def media_path(root: str | Path, rel: str) -> Path:
    """Absolute path of a stored relative path; refuses anything outside the root."""
    base = Path(root).resolve()
    path = (base / rel).resolve()
    if base not in path.parents:
        raise ValueError(f"path outside media root: {rel!r}")
    return path


def remove(root: str | Path, *rels: str | None) -> None:
    """Delete stored files; a missing one is fine (sweeps and retries repeat this)."""
    for rel in rels:
        if rel:
            try:
                media_path(root, rel).unlink(missing_ok=True)
            except (OSError, ValueError):
                pass
