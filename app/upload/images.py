"""Images re-encoded from their pixels alone, and their thumbnails (Pillow).

A stored image is a fresh file: only the decoder of the sniffed type is tried, the
pixel budget (MAX_IMAGE_PIXELS, all frames of an animation together) is enforced
before decoding, and nothing but pixels survives (EXIF orientation and ICC colours
are applied, then every metadata block is dropped). Anything a decoder does with
hostile input becomes `Rejected`. Synchronous and CPU-bound: callers run it in a thread.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageCms, ImageOps, ImageSequence

from app.upload import Rejected

# Pillow warns (rather than fails) between MAX_IMAGE_PIXELS and twice that: make it fail.
warnings.simplefilter("error", Image.DecompressionBombWarning)

# The sniffed types re-encoded here (the others are stored byte for byte), by Pillow format.
PILLOW_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/gif": "GIF", "image/webp": "WEBP"}
# What a thumbnail is served as, by its extension (PNG with transparency, else JPEG).
THUMB_TYPES = {".jpg": "image/jpeg", ".png": "image/png"}

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
