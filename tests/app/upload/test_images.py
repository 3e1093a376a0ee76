"""Image re-encoding and thumbnails, without a server: pixels survive, metadata and payloads do not."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from app.upload import Rejected, images, sniff
from tests import samples


def _convert(tmp_path: Path, data: bytes, mime: str, *, max_pixels: int = 40_000_000,
             thumb: int = 32) -> tuple[Path, Path, images.Converted]:
    src = tmp_path / "src"
    src.write_bytes(data)
    dst = tmp_path / f"out{sniff.TYPES[mime][0]}"
    conv = images.convert_image(src, dst, tmp_path / "out.thumb", mime, max_pixels=max_pixels, thumbnail_px=thumb)
    return dst, tmp_path / f"out.thumb{conv.thumb_ext}", conv


def _assert_clean(path: Path) -> Image.Image:
    raw = path.read_bytes()
    assert samples.SECRET not in raw
    assert b"Exif" not in raw and b"eXIf" not in raw and b"PK\x03\x04" not in raw
    im = Image.open(path)
    assert len(im.getexif()) == 0
    assert not {"exif", "xmp", "icc_profile", "comment", "Comment", "XML:com.adobe.xmp"} & set(im.info)
    return im


def test_jpeg_loses_exif_gps_and_gets_its_orientation(tmp_path: Path) -> None:
    assert samples.SECRET in samples.jpeg_with_gps()
    assert "icc_profile" in Image.open(io.BytesIO(samples.jpeg_with_gps())).info
    dst, thumb, conv = _convert(tmp_path, samples.jpeg_with_gps(), "image/jpeg")
    im = _assert_clean(dst)
    assert im.format == "JPEG" and im.size == (40, 60)
    r, g, b = im.convert("RGB").getpixel((20, 10))
    assert r > 200 and b < 60  # red on top after the 90 degree turn
    r, g, b = im.convert("RGB").getpixel((20, 50))
    assert b > 200 and r < 60
    assert conv.size == dst.stat().st_size
    assert Image.open(thumb).size == (21, 32)
    _assert_clean(thumb)


def test_png_loses_exif_text_and_xmp_keeps_alpha(tmp_path: Path) -> None:
    dst, thumb, _ = _convert(tmp_path, samples.png_with_gps(), "image/png")
    im = _assert_clean(dst)
    assert im.format == "PNG" and im.size == (40, 60) and im.mode == "RGBA"
    assert im.getpixel((20, 10))[:3] == (255, 0, 0)
    assert thumb.suffix == ".png"
    assert images.THUMB_TYPES[thumb.suffix] == "image/png"


def test_polyglot_is_reencoded_without_its_payload(tmp_path: Path) -> None:
    data = samples.polyglot_png_zip()
    assert sniff.sniff(data[: sniff.SNIFF_BYTES]) == "image/png" and b"PK\x03\x04" in data
    dst, _, _ = _convert(tmp_path, data, "image/png")
    _assert_clean(dst)


def test_animated_gif_and_webp_stay_animated(tmp_path: Path) -> None:
    for data, mime in ((samples.animated_gif(), "image/gif"), (samples.webp(animated=True), "image/webp")):
        dst, thumb, _ = _convert(tmp_path, data, mime)
        im = _assert_clean(dst)
        assert im.n_frames == 3
        colors = []
        for i in range(3):
            im.seek(i)
            colors.append(im.convert("RGB").getpixel((5, 5)))
        assert colors[0][0] > 200 and colors[1][1] > 200 and colors[2][2] > 200
        assert Image.open(thumb).size == (32, 19)


def test_still_webp(tmp_path: Path) -> None:
    dst, _, _ = _convert(tmp_path, samples.webp(), "image/webp")
    im = _assert_clean(dst)
    assert im.format == "WEBP" and im.size == (40, 60)


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")  # as app.upload.images sets it
def test_decompression_bomb_is_rejected(tmp_path: Path) -> None:
    data = samples.bomb_png(30000)
    assert len(data) < 200_000 and sniff.sniff(data[: sniff.SNIFF_BYTES]) == "image/png"
    with pytest.raises(Rejected, match="pixels|too large"):
        _convert(tmp_path, data, "image/png")
    # Between the limit and twice the limit Pillow only warns: that must refuse too.
    with pytest.raises(Rejected, match="pixels|too large"):
        _convert(tmp_path, samples.plain_png((100, 100)), "image/png", max_pixels=6000)


def test_only_the_sniffed_decoder_is_used(tmp_path: Path) -> None:
    with pytest.raises(Rejected, match="could not be decoded"):
        _convert(tmp_path, samples.jpeg_with_gps(), "image/png")
    with pytest.raises(Rejected, match="could not be decoded"):
        _convert(tmp_path, samples.plain_png()[:60], "image/png")  # truncated


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    bio = io.BytesIO()
    Image.new("CMYK", (20, 10), (0, 255, 255, 0)).save(bio, "JPEG")
    dst, _, _ = _convert(tmp_path, bio.getvalue(), "image/jpeg")
    assert Image.open(dst).mode == "RGB"
