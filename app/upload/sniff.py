"""What an upload is: the sniffed type (libmagic), the allow-list, and the client's claims checked against it.

Nothing here trusts the client: the type comes from the bytes, and a name or Content-Type
that says something else is a rejection. The tables are the one place that says which
types are stored, with which extension, and which family each belongs to (names.py
gives display names the same extensions). Synchronous and CPU-bound: callers run the
file sniff in a thread.
"""

from __future__ import annotations

import os
from pathlib import Path

import magic

from app.upload import Rejected

SNIFF_BYTES = 8192  # libmagic needs a real prefix, not just the signature (STACK.md)

# The sniffed type -> (extension on disk, family). Families group what a client may
# reasonably call the same thing (a .docx that libmagic sees as a plain zip).
TYPES: dict[str, tuple[str, str]] = {
    "image/png": (".png", "image"),
    "image/jpeg": (".jpg", "image"),
    "image/gif": (".gif", "image"),
    "image/webp": (".webp", "image"),
    "application/pdf": (".pdf", "pdf"),
    "text/plain": (".txt", "text"),
    "application/zip": (".zip", "document"),
    "application/msword": (".doc", "document"),
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": (".docx", "document"),
    "application/vnd.ms-excel": (".xls", "document"),
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": (".xlsx", "document"),
    "application/vnd.ms-powerpoint": (".ppt", "document"),
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": (".pptx", "document"),
    "application/vnd.oasis.opendocument.text": (".odt", "document"),
    "application/vnd.oasis.opendocument.spreadsheet": (".ods", "document"),
    "application/vnd.oasis.opendocument.presentation": (".odp", "document"),
}

# Name extensions a client may use, by family (what the claim is compared with).
EXT_FAMILY: dict[str, str] = {
    **{e: "image" for e in (".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".gif", ".webp", ".bmp",
                            ".tif", ".tiff", ".svg", ".svgz", ".ico", ".heic", ".heif", ".avif")},
    ".pdf": "pdf",
    **{e: "text" for e in (".txt", ".text", ".log", ".md", ".csv", ".tsv")},
    **{e: "document" for e in (".zip", ".doc", ".docx", ".xls", ".xlsx", ".ppt", ".pptx",
                               ".odt", ".ods", ".odp")},
    # Active content: whatever the bytes are, a name like this is never "the same thing".
    **{e: "active" for e in (".exe", ".dll", ".so", ".elf", ".bin", ".sh", ".bash", ".bat", ".cmd",
                             ".ps1", ".com", ".scr", ".msi", ".js", ".mjs", ".html", ".htm",
                             ".xhtml", ".php", ".jar", ".apk", ".vbs")},
}
# Other spellings of a type's extension that a display name may keep.
EXT_ALIASES: dict[str, set[str]] = {".jpg": {".jpeg", ".jpe", ".jfif"},
                                    ".txt": {".text", ".log", ".md", ".csv", ".tsv"}}

# libmagic calls any text with a comma on every line text/csv: it is still just text,
# stored and served as text/plain (always as an attachment).
_PLAIN_TEXT = {"text/csv": "text/plain", "text/tab-separated-values": "text/plain", "text/markdown": "text/plain"}

# Prefix sniffs that say "need more bytes", not "disallowed" (old Office files, odd zips).
INCONCLUSIVE = {"application/octet-stream", "application/CDFV2", "application/x-ole-storage",
                "application/vnd.ms-office", "application/x-empty"}


def sniff(buf: bytes) -> str:
    """The MIME type libmagic sees in these bytes (benign text flavours folded into text/plain)."""
    try:
        found = magic.from_buffer(buf, mime=True) or "application/octet-stream"
    except Exception:  # noqa: BLE001 - libmagic errors on odd input mean "unknown"
        return "application/octet-stream"
    return _PLAIN_TEXT.get(found, found)


def sniff_file(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(1024 * 1024)  # enough for OOXML/CFB directory lookups
    return sniff(head)


def clearly_disallowed(prefix_mime: str, allowed: tuple[str, ...]) -> bool:
    """True when a prefix sniff already proves the type is off the list (the 415 at once)."""
    return prefix_mime not in allowed and prefix_mime not in INCONCLUSIVE


def claimed_family(name: str, claimed_mime: str | None) -> str | None:
    """The family the client says the file is in, from its name and Content-Type, or None."""
    ext = os.path.splitext(name)[1].lower()
    if ext in EXT_FAMILY:
        return EXT_FAMILY[ext]
    mime = (claimed_mime or "").split(";")[0].strip().lower()
    if mime in TYPES:
        return TYPES[mime][1]
    if mime.startswith("image/"):
        return "image"
    if mime.startswith("text/") and mime not in ("text/html", "text/javascript"):
        return "text"
    return None


# The mismatch rule (docs/api.md): a claim that names a specific type must agree with the
# sniffed type exactly, up to these spellings and the ambiguities of the containers.
_OOXML_ODF = {m for m, (_e, fam) in TYPES.items() if fam == "document"} - {
    "application/msword", "application/vnd.ms-excel", "application/vnd.ms-powerpoint"}
_CFB = {"application/msword", "application/vnd.ms-excel", "application/vnd.ms-powerpoint"}
# Claims that declare nothing: the bytes decide.
_NO_CLAIM = {"", "application/octet-stream", "binary/octet-stream", "application/unknown",
             "application/x-unknown", "application/binary", "*/*"}
_MIME_ALIASES = {
    "image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "image/x-png": "image/png",
    "application/x-pdf": "application/pdf", "application/x-zip-compressed": "application/zip",
    "application/x-zip": "application/zip", "text/csv": "text/plain", "text/markdown": "text/plain",
    "text/x-markdown": "text/plain", "text/tab-separated-values": "text/plain", "text/x-log": "text/plain",
}
_EXT_TYPE = {e: m for m, (e, _f) in TYPES.items()}
_EXT_TYPE.update({a: _EXT_TYPE[e] for e, aliases in EXT_ALIASES.items() for a in aliases})


def _accepted_for(claimed: str) -> set[str]:
    """The sniffed types that agree with a claimed specific type."""
    if claimed in _CFB:
        return set(_CFB)  # libmagic tells the old Office formats apart only loosely
    if claimed in _OOXML_ODF or claimed == "application/zip":
        return {claimed, "application/zip"} if claimed != "application/zip" else {"application/zip", *_OOXML_ODF}
    return {claimed}


def claimed_types(name: str, claimed_mime: str | None) -> list[tuple[str, str]]:
    """What the client declared, as (where, type): the part's Content-Type and the name's extension.

    A type/* Content-Type declares only a family; octet-stream and unknown extensions declare nothing.
    """
    out: list[tuple[str, str]] = []
    mime = (claimed_mime or "").split(";")[0].strip().lower()
    mime = _MIME_ALIASES.get(mime, mime)
    if mime not in _NO_CLAIM and not mime.endswith("/*"):
        out.append(("Content-Type", mime))
    ext = os.path.splitext(name)[1].lower()
    if ext in _EXT_TYPE:
        out.append(("name", _EXT_TYPE[ext]))
    return out


def check_type(sniffed: str, name: str, claimed_mime: str | None, allowed: tuple[str, ...]) -> None:
    """Raise Rejected when the sniffed type is off the list or contradicts the client's claim.

    The family rule (a .png name for a PDF, a .sh name for anything) and then the exact rule:
    a declared specific type (Content-Type, or an extension we know) must be the sniffed one.
    """
    if sniffed not in allowed or sniffed not in TYPES:
        raise Rejected(f"File type {sniffed} is not allowed.")
    claim = claimed_family(name, claimed_mime)
    family = TYPES[sniffed][1]
    if claim is not None and claim != family:
        raise Rejected(f"The file claims to be {claim} but its content is {sniffed}.")
    for where, claimed in claimed_types(name, claimed_mime):
        if sniffed not in _accepted_for(claimed):
            # A CSV from Windows comes as application/vnd.ms-excel: its name still says text.
            if where == "Content-Type" and claimed in _CFB and sniffed == "text/plain":
                continue
            raise Rejected(f"The file claims to be {claimed} (by its {where}) but its content is {sniffed}.")
