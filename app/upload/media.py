"""Bytes on disk: sniffing, the allow-list, safe names and paths, image re-encoding.

Nothing here trusts the client: the type comes from the bytes (libmagic), names
on disk are server-chosen (`<uuid>.<ext of the sniffed type>`), and the
client's file name is only ever a sanitised display string. Everything here is
synchronous and CPU- or disk-bound: callers run it in a thread.
"""

from __future__ import annotations

import io
import os
import re
import unicodedata
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

import magic
from PIL import Image, ImageCms, ImageOps, ImageSequence

# Pillow warns (rather than fails) between MAX_IMAGE_PIXELS and twice that: make it fail.
warnings.simplefilter("error", Image.DecompressionBombWarning)

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
_EXT_FAMILY: dict[str, str] = {
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
_EXT_ALIASES = {".jpg": {".jpeg", ".jpe", ".jfif"}, ".txt": {".text", ".log", ".md", ".csv", ".tsv"}}

# libmagic calls any text with a comma on every line text/csv: it is still just text,
# stored and served as text/plain (always as an attachment).
_PLAIN_TEXT = {"text/csv": "text/plain", "text/tab-separated-values": "text/plain", "text/markdown": "text/plain"}

# Prefix sniffs that say "need more bytes", not "disallowed" (old Office files, odd zips).
INCONCLUSIVE = {"application/octet-stream", "application/CDFV2", "application/x-ole-storage",
                "application/vnd.ms-office", "application/x-empty"}

PILLOW_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/gif": "GIF", "image/webp": "WEBP"}
THUMB_TYPES = {".jpg": "image/jpeg", ".png": "image/png"}


class Rejected(Exception):
    """The upload is refused; the message is the reason shown to the uploader."""


# -- sniffing and the allow-list ----------------------------------------------


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
    if ext in _EXT_FAMILY:
        return _EXT_FAMILY[ext]
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
_EXT_TYPE.update({a: _EXT_TYPE[e] for e, aliases in _EXT_ALIASES.items() for a in aliases})


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


# -- names ------------------------------------------------------------------

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
    if cur == ext or cur in _EXT_ALIASES.get(ext, ()):
        return name
    if cur in _EXT_FAMILY and stem:
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


# -- images -------------------------------------------------------------------

_ORIENT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
           4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
           6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


@dataclass
class Converted:
    size: int
    thumb_ext: str


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA") or (im.mode in ("P", "L", "RGB") and "transparency" in im.info)


def _to_srgb(im: Image.Image) -> Image.Image:
    """Apply an embedded ICC profile before dropping it, so colours survive the strip."""
    icc = im.info.get("icc_profile")
    if not icc or im.mode not in ("RGB", "RGBA", "CMYK", "L"):
        return im
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        out_mode = "RGBA" if im.mode == "RGBA" else ("L" if im.mode == "L" else "RGB")
        return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode=out_mode) or im
    except Exception:  # noqa: BLE001 - a broken profile is dropped, not fatal
        return im


def _clean(im: Image.Image, keep_alpha: bool) -> Image.Image:
    """Pixels only: a new image in a plain mode with no info (EXIF, XMP, ICC, comments)."""
    im = _to_srgb(im)
    mode = "RGBA" if keep_alpha and _has_alpha(im) else ("L" if im.mode in ("1", "L") else "RGB")
    out = im.convert(mode)
    out.info = {}
    return out


def _save(im: Image.Image, path: Path, fmt: str) -> None:
    opts: dict = {"JPEG": {"quality": 88, "optimize": True}, "PNG": {"optimize": False},
                  "WEBP": {"quality": 90, "method": 4}, "GIF": {}}[fmt]
    im.save(path, fmt, **opts)


def convert_image(src: Path, dst: Path, thumb_base: Path, mime: str, *,
                  max_pixels: int, thumbnail_px: int) -> Converted:
    """Re-encode an image into a fresh file without metadata; write a thumbnail beside it.

    Only the decoder of the sniffed type is tried. Animated GIF/WebP stay animated
    (every frame re-encoded) within the same pixel budget as a still image.
    """
    fmt = PILLOW_FORMATS[mime]
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with Image.open(src, formats=[fmt]) as im:
            w, h = im.size
            frames_n = getattr(im, "n_frames", 1) if fmt in ("GIF", "WEBP") else 1
            if w * h * frames_n > max_pixels:
                raise Rejected(f"The image is too large ({w}x{h}, {frames_n} frame(s)).")
            if frames_n > 1:
                first = _save_animation(im, dst, fmt)
            else:
                im.load()
                first = _clean(ImageOps.exif_transpose(im) or im, keep_alpha=fmt != "JPEG")
                _save(first, dst, fmt)
        thumb_ext = _save_thumbnail(first, thumb_base, thumbnail_px)
    except Rejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise Rejected("The image has too many pixels.") from None
    except Exception as exc:  # noqa: BLE001 - hostile input can break a decoder in any way
        raise Rejected(f"The image could not be decoded ({type(exc).__name__}).") from None
    return Converted(size=dst.stat().st_size, thumb_ext=thumb_ext)


def _save_thumbnail(first: Image.Image, base: Path, px: int) -> str:
    """A small copy: PNG when it has transparency, else JPEG. Returns its extension."""
    thumb = first.copy()
    thumb.thumbnail((px, px), Image.Resampling.LANCZOS)
    ext = ".png" if _has_alpha(thumb) else ".jpg"
    if ext == ".jpg" and thumb.mode not in ("RGB", "L"):
        thumb = thumb.convert("RGB")
    thumb.info = {}
    _save(thumb, base.with_name(base.name + ext), "PNG" if ext == ".png" else "JPEG")
    return ext


def _save_animation(im: Image.Image, dst: Path, fmt: str) -> Image.Image:
    """Re-encode every frame (EXIF orientation applied to each); returns the first frame."""
    orient = _ORIENT.get(im.getexif().get(0x0112, 1))
    frames: list[Image.Image] = []
    durations: list[int] = []
    for frame in ImageSequence.Iterator(im):
        durations.append(int(frame.info.get("duration", 100) or 100))
        clean = _clean(frame, keep_alpha=True)
        frames.append(clean.transpose(orient) if orient is not None else clean)
    loop = int(im.info.get("loop", 0) or 0)
    opts = {"save_all": True, "append_images": frames[1:], "duration": durations, "loop": loop}
    if fmt == "GIF":
        opts["disposal"] = 2
    else:
        opts.update(quality=90, method=4)
    frames[0].save(dst, fmt, **opts)
    return frames[0]
