"""Sniffing and the allow-list, without a server: what the bytes are, and whether the client's claim agrees."""

from __future__ import annotations

import pytest

from app.upload import Rejected, sniff
from app.settings import Settings
from tests import samples

ALLOWED = Settings().allowed_mime


@pytest.mark.parametrize(("data", "mime"), [
    (samples.plain_png(), "image/png"), (samples.jpeg_with_gps(), "image/jpeg"),
    (samples.animated_gif(), "image/gif"), (samples.webp(), "image/webp"),
    (samples.pdf(), "application/pdf"), (samples.TEXT, "text/plain"),
    (samples.zip_bytes(), "application/zip"),
    (samples.docx(), "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
])
def test_sniff_allowed_types(data: bytes, mime: str) -> None:
    assert sniff.sniff(data[: sniff.SNIFF_BYTES]) == mime
    assert mime in ALLOWED


@pytest.mark.parametrize("data", [samples.elf(), samples.SHELL_SCRIPT, b"<html><script>x</script></html>",
                                  b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>'])
def test_dangerous_prefixes_are_refused_at_once(data: bytes) -> None:
    assert sniff.clearly_disallowed(sniff.sniff(data[: sniff.SNIFF_BYTES]), ALLOWED)


def test_inconclusive_prefixes_wait_for_processing() -> None:
    assert not sniff.clearly_disallowed(sniff.sniff(bytes(4096)), ALLOWED)
    assert not sniff.clearly_disallowed("application/CDFV2", ALLOWED)


def test_claimed_family_mismatch_and_off_list_are_rejected() -> None:
    sniff.check_type("image/jpeg", "photo.jpeg", "image/jpg", ALLOWED)  # spellings of one type: fine
    sniff.check_type("image/png", "upload", "application/octet-stream", ALLOWED)  # declares nothing
    sniff.check_type("text/plain", "data.csv", "application/vnd.ms-excel", ALLOWED)  # Windows' CSV type
    sniff.check_type("application/vnd.openxmlformats-officedocument.wordprocessingml.document", "r.docx",
                     "application/vnd.openxmlformats-officedocument.wordprocessingml.document", ALLOWED)
    # A specific declared type (Content-Type or a known extension) must be the sniffed one.
    with pytest.raises(Rejected, match="claims to be image/jpeg"):
        sniff.check_type("image/png", "x.jpg", "image/jpeg", ALLOWED)
    with pytest.raises(Rejected, match="claims to be image/jpeg .by its name"):
        sniff.check_type("image/png", "x.jpg", "application/octet-stream", ALLOWED)
    with pytest.raises(Rejected, match="claims to be image/png .by its Content-Type"):
        sniff.check_type("image/jpeg", "photo", "image/png", ALLOWED)
    sniff.check_type("text/plain", "notes", None, ALLOWED)  # no claim: the bytes decide
    sniff.check_type("application/zip", "report.docx", None, ALLOWED)  # a docx is a zip
    with pytest.raises(Rejected, match="claims to be image"):
        sniff.check_type("text/plain", "evil.png", "image/png", ALLOWED)
    with pytest.raises(Rejected, match="claims to be image"):
        sniff.check_type("application/pdf", "x", "image/jpeg", ALLOWED)
    with pytest.raises(Rejected, match="claims to be active"):
        sniff.check_type("text/plain", "run.sh", "text/plain", ALLOWED)
    with pytest.raises(Rejected, match="not allowed"):
        sniff.check_type("image/svg+xml", "a.svg", "image/svg+xml", ALLOWED)
    with pytest.raises(Rejected, match="not allowed"):
        sniff.check_type("image/svg+xml", "a.svg", None, ALLOWED + ("image/svg+xml",))  # no known way to serve it
