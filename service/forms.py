"""The one shape of ``multipart/form-data`` upload that nearly every client sends, read
without a general parser.

curl ``-F file=@x.png``, browsers, requests, httpx and ``python -m service.client`` all send
a single part::

    --BOUNDARY\\r\\n
    Content-Disposition: form-data; name="file"; filename="x.png"\\r\\n
    Content-Type: image/png\\r\\n
    \\r\\n
    <the file>\\r\\n--BOUNDARY--\\r\\n

For a small image, python-multipart's streaming parser (a callback per header, per field
and per chunk) costs the event loop about as much as decoding the image and answering
together. :func:`single_file` reads that shape with a few ``bytes.find`` calls and answers
``None`` for anything else (a preamble, other headers or parameters, several parts, a quoted
boundary with escapes, ...), which then goes to the general parser: it either gives the same
file as the general parser would or leaves the body to it. tests/service/test_forms.py checks
that against python-multipart on generated forms.
"""

from __future__ import annotations

import re

# RFC 2046 boundary characters (bchars), 1-70 of them, not ending in a space
_BOUNDARY = re.compile(rb"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_CONTENT_TYPE = re.compile(
    rb"(?i:multipart/form-data)[ \t]*;[ \t]*(?i:boundary)="
    rb"(?:\"([^\"\\\r\n]*)\"|([^ \t;\"\\\r\n]+))[ \t]*"
)
# the file in the field ``file``, a filename without quotes, backslashes or line breaks;
# header names are case-insensitive, the field's name is not
_DISPOSITION = re.compile(
    rb"(?i:content-disposition):[ \t]*(?i:form-data);[ \t]*name=\"file\";[ \t]*"
    rb"filename=\"[^\"\\\r\n]*\"[ \t]*"
)
_PART_TYPE = re.compile(rb"(?i:content-type):[ \t]*[!#$%&'*+\-.^_`|~0-9A-Za-z/]+[ \t]*")
_HEADERS_END = b"\r\n\r\n"


def boundary_of(content_type: bytes) -> bytes | None:
    """The boundary of a ``multipart/form-data`` Content-Type with no other parameter."""
    match = _CONTENT_TYPE.fullmatch(content_type)
    if match is None:
        return None
    boundary = match.group(1) if match.group(1) is not None else match.group(2)
    return boundary if _BOUNDARY.fullmatch(boundary) else None


def single_file(body: bytes, content_type: bytes) -> bytes | None:
    """The content of the form's only part, a file in the field ``file``, when ``body`` is
    exactly that form in the common layout (above); ``None`` when it is anything else."""
    boundary = boundary_of(content_type)
    if boundary is None:
        return None
    opening = b"--" + boundary + b"\r\n"
    if not body.startswith(opening):
        return None
    headers_end = body.find(_HEADERS_END, len(opening))
    if headers_end < 0:
        return None
    disposition = False
    for line in body[len(opening) : headers_end].split(b"\r\n"):
        if _DISPOSITION.fullmatch(line) and not disposition:
            disposition = True
        elif not _PART_TYPE.fullmatch(line):
            return None  # another header, a repeated one, or a malformed line
    if not disposition:
        return None
    start = headers_end + len(_HEADERS_END)
    delimiter = b"\r\n--" + boundary
    end = body.find(delimiter, start)
    if end < 0:
        return None
    if body[end + len(delimiter) :] not in (b"--", b"--\r\n"):
        return None  # another part follows, or an epilogue
    return body[start:end]
