"""Receiving files: multipart streaming, type sniffing, safe names and paths, image conversion.

multipart (the request body to disk, the 413/415 gates while streaming), sniff (what the
bytes are, and whether that is allowed), names (what a file is called, and where it lives
under MEDIA_ROOT), images (re-encoding without metadata, thumbnails). Each later stage
refuses an upload by raising `Rejected`, whose message the uploader is shown.
"""


class Rejected(Exception):
    """The upload is refused; the message is the reason shown to the uploader."""
