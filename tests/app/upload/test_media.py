"""Sniffing, the allow-list, names and image re-encoding, without a server."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from app.upload import media
from app.settings import Settings
from tests import samples

ALLOWED = Settings().allowed_mime


def _convert(tmp_path: Path, data: bytes, mime: str, *, max_pixels: int = 40_000_000,
             thumb: int = 32) -> tuple[Path, Path, media.Converted]:
    src = tmp_path / "src"
    src.write_bytes(data)
    dst = tmp_path / f"out{media.TYPES[mime][0]}"
    conv = media.convert_image(src, dst, tmp_path / "out.thumb", mime, max_pixels=max_pixels, thumbnail_px=thumb)
    return dst, tmp_path / f"out.thumb{conv.thumb_ext}", conv


def _assert_clean(path: Path) -> Image.Image:
    raw = path.read_bytes()
    assert samples.SECRET not in raw
    assert b"Exif" not in raw and b"eXIf" not in raw and b"PK\x03\x04" not in raw
    im = Image.open(path)
    assert len(im.getexif()) == 0
    assert not {"exif", "xmp", "icc_profile", "comment", "Comment", "XML:com.adobe.xmp"} & set(im.info)
    return im


@pytest.mark.parametrize(("data", "mime"), [
    (samples.plain_png(), "image/png"), (samples.jpeg_with_gps(), "image/jpeg"),
    (samples.animated_gif(), "image/gif"), (samples.webp(), "image/webp"),
    (samples.pdf(), "application/pdf"), (samples.TEXT, "text/plain"),
    (samples.zip_bytes(), "application/zip"),
    (samples.docx(), "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
])
def test_sniff_allowed_types(data: bytes, mime: str) -> None:
    assert media.sniff(data[: media.SNIFF_BYTES]) == mime
    assert mime in ALLOWED


@pytest.mark.parametrize("data", [samples.elf(), samples.SHELL_SCRIPT, b"<html><script>x</script></html>",
                                  b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>'])
def test_dangerous_prefixes_are_refused_at_once(data: bytes) -> None:
    assert media.clearly_disallowed(media.sniff(data[: media.SNIFF_BYTES]), ALLOWED)


def test_inconclusive_prefixes_wait_for_processing() -> None:
    assert not media.clearly_disallowed(media.sniff(bytes(4096)), ALLOWED)
    assert not media.clearly_disallowed("application/CDFV2", ALLOWED)


def test_claimed_family_mismatch_and_off_list_are_rejected() -> None:
    media.check_type("image/jpeg", "photo.jpeg", "image/jpg", ALLOWED)  # spellings of one type: fine
    media.check_type("image/png", "upload", "application/octet-stream", ALLOWED)  # declares nothing
    media.check_type("text/plain", "data.csv", "application/vnd.ms-excel", ALLOWED)  # Windows' CSV type
    media.check_type("application/vnd.openxmlformats-officedocument.wordprocessingml.document", "r.docx",
                     "application/vnd.openxmlformats-officedocument.wordprocessingml.document", ALLOWED)
    # A specific declared type (Content-Type or a known extension) must be the sniffed one.
    with pytest.raises(media.Rejected, match="claims to be image/jpeg"):
        media.check_type("image/png", "x.jpg", "image/jpeg", ALLOWED)
    with pytest.raises(media.Rejected, match="claims to be image/jpeg .by its name"):
        media.check_type("image/png", "x.jpg", "application/octet-stream", ALLOWED)
    with pytest.raises(media.Rejected, match="claims to be image/png .by its Content-Type"):
        media.check_type("image/jpeg", "photo", "image/png", ALLOWED)
    media.check_type("text/plain", "notes", None, ALLOWED)  # no claim: the bytes decide
    media.check_type("application/zip", "report.docx", None, ALLOWED)  # a docx is a zip
    with pytest.raises(media.Rejected, match="claims to be image"):
        media.check_type("text/plain", "evil.png", "image/png", ALLOWED)
    with pytest.raises(media.Rejected, match="claims to be image"):
        media.check_type("application/pdf", "x", "image/jpeg", ALLOWED)
    with pytest.raises(media.Rejected, match="claims to be active"):
        media.check_type("text/plain", "run.sh", "text/plain", ALLOWED)
    with pytest.raises(media.Rejected, match="not allowed"):
        media.check_type("image/svg+xml", "a.svg", "image/svg+xml", ALLOWED)
    with pytest.raises(media.Rejected, match="not allowed"):
        media.check_type("image/svg+xml", "a.svg", None, ALLOWED + ("image/svg+xml",))  # no known way to serve it


@pytest.mark.parametrize(("raw", "shown"), [
    ("../../etc/passwd", "passwd"), ("..\\..\\boot.ini", "boot.ini"), ("a\r\nSet-Cookie: x.png", "aSet-Cookie: x.png"),
    ("", "file"), ("...", "file"), (".bashrc", "bashrc"), ("\u202egnp.exe", "gnp.exe"), ("ф€.txt", "ф€.txt"),
])
def test_display_names_are_harmless(raw: str, shown: str) -> None:
    assert media.display_name(raw) == shown


def test_long_names_keep_their_extension() -> None:
    name = media.display_name("x" * 500 + ".png")
    assert len(name) <= 200 and name.endswith(".png")


def test_names_take_the_sniffed_extension() -> None:
    assert media.name_for_type("photo.png", "image/jpeg") == "photo.jpg"
    assert media.name_for_type("photo.jpeg", "image/jpeg") == "photo.jpeg"
    assert media.name_for_type("passwd", "text/plain") == "passwd.txt"
    assert media.name_for_type("notes.py", "text/plain") == "notes.py.txt"


def test_content_disposition_rfc6266() -> None:
    header = media.content_disposition("attachment", 'Grüße "x";\\.txt')
    assert header == "attachment; filename=\"Gr__e _x___.txt\"; filename*=UTF-8''Gr%C3%BC%C3%9Fe%20%22x%22%3B%5C.txt"
    assert "\r" not in header and "\n" not in header


def test_media_paths_stay_under_the_root(tmp_path: Path) -> None:
    assert media.media_path(tmp_path, "incoming/abc") == tmp_path.resolve() / "incoming" / "abc"
    for bad in ("../etc/passwd", "/etc/passwd", "a/../../x"):
        with pytest.raises(ValueError):
            media.media_path(tmp_path, bad)


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


def test_polyglot_is_reencoded_without_its_payload(tmp_path: Path) -> None:
    data = samples.polyglot_png_zip()
    assert media.sniff(data[: media.SNIFF_BYTES]) == "image/png" and b"PK\x03\x04" in data
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


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")  # as app.upload.media sets it
def test_decompression_bomb_is_rejected(tmp_path: Path) -> None:
    data = samples.bomb_png(30000)
    assert len(data) < 200_000 and media.sniff(data[: media.SNIFF_BYTES]) == "image/png"
    with pytest.raises(media.Rejected, match="pixels|too large"):
        _convert(tmp_path, data, "image/png")
    # Between the limit and twice the limit Pillow only warns: that must refuse too.
    with pytest.raises(media.Rejected, match="pixels|too large"):
        _convert(tmp_path, samples.plain_png((100, 100)), "image/png", max_pixels=6000)


def test_only_the_sniffed_decoder_is_used(tmp_path: Path) -> None:
    with pytest.raises(media.Rejected, match="could not be decoded"):
        _convert(tmp_path, samples.jpeg_with_gps(), "image/png")
    with pytest.raises(media.Rejected, match="could not be decoded"):
        _convert(tmp_path, samples.plain_png()[:60], "image/png")  # truncated


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    bio = io.BytesIO()
    Image.new("CMYK", (20, 10), (0, 255, 255, 0)).save(bio, "JPEG")
    dst, _, _ = _convert(tmp_path, bio.getvalue(), "image/jpeg")
    assert Image.open(dst).mode == "RGB"
