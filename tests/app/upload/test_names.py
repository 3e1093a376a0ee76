"""Display names, download headers and paths under MEDIA_ROOT, without a server."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.upload import names


@pytest.mark.parametrize(("raw", "shown"), [
    ("../../etc/passwd", "passwd"), ("..\\..\\boot.ini", "boot.ini"), ("a\r\nSet-Cookie: x.png", "aSet-Cookie: x.png"),
    ("", "file"), ("...", "file"), (".bashrc", "bashrc"), ("\u202egnp.exe", "gnp.exe"), ("ф€.txt", "ф€.txt"),
])
def test_display_names_are_harmless(raw: str, shown: str) -> None:
    assert names.display_name(raw) == shown


def test_long_names_keep_their_extension() -> None:
    name = names.display_name("x" * 500 + ".png")
    assert len(name) <= 200 and name.endswith(".png")


def test_names_take_the_sniffed_extension() -> None:
    assert names.name_for_type("photo.png", "image/jpeg") == "photo.jpg"
    assert names.name_for_type("photo.jpeg", "image/jpeg") == "photo.jpeg"
    assert names.name_for_type("passwd", "text/plain") == "passwd.txt"
    assert names.name_for_type("notes.py", "text/plain") == "notes.py.txt"


def test_content_disposition_rfc6266() -> None:
    header = names.content_disposition("attachment", 'Grüße "x";\\.txt')
    assert header == "attachment; filename=\"Gr__e _x___.txt\"; filename*=UTF-8''Gr%C3%BC%C3%9Fe%20%22x%22%3B%5C.txt"
    assert "\r" not in header and "\n" not in header


def test_media_paths_stay_under_the_root(tmp_path: Path) -> None:
    assert names.media_path(tmp_path, "incoming/abc") == tmp_path.resolve() / "incoming" / "abc"
    for bad in ("../etc/passwd", "/etc/passwd", "a/../../x"):
        with pytest.raises(ValueError):
            names.media_path(tmp_path, bad)


def test_remove_skips_missing_and_outside_paths(tmp_path: Path) -> None:
    kept = tmp_path.parent / f"{tmp_path.name}-outside"
    kept.write_bytes(b"x")
    (tmp_path / "incoming").mkdir()
    (tmp_path / "incoming" / "a").write_bytes(b"x")
    names.remove(tmp_path, "incoming/a", "incoming/missing", None, f"../{kept.name}")
    assert not (tmp_path / "incoming" / "a").exists() and kept.exists()
    kept.unlink()
