"""Receiving files: multipart streaming, type sniffing, safe names, image conversion."""
