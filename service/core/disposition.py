"""Content-Disposition values that S3 will echo to the client.

RFC 6266 §4.3 and appendix D: an ASCII `filename` fallback for old clients plus an
RFC 8187 `filename*` in UTF-8 that current ones prefer. Both parts are pure ASCII,
which also keeps S3 from refusing the signature (boto/botocore#956).
"""

from __future__ import annotations

import re
import unicodedata

from .percent import percent_encode

FALLBACK_NAME = "download"
# Longest filename, in UTF-8 bytes, put into the header; file systems stop at 255.
MAX_FILENAME_BYTES = 255
# RFC 8187 attr-char beyond ALPHA / DIGIT, which quote() keeps anyway along with "_.-~".
_ATTR_CHAR_EXTRAS = "!#$&+^`|"
# What may stand in the quoted ASCII fallback: printable ASCII without `"`, `\` and `%`
# (RFC 6266 appendix D: a `%` there may be decoded by some clients), `/` (the name may be
# made from compatibility forms such as U+FF0F FULLWIDTH SOLIDUS only now), and `;` and
# `*`, with which a name could spell a parameter of its own (`x; filename*=UTF-8''y.exe`)
# for a client that splits the header or searches it without parsing the quotes.
_FALLBACK_UNSAFE = re.compile(r'[^\x20-\x7e]|["\\%/;*]')
# Unicode categories dropped from names: control, format and surrogate characters.
UNSHOWN = ("Cc", "Cf", "Cs")


def content_disposition(filename: str, disposition: str = "attachment") -> str:
    """`attachment; filename="<ASCII>"; filename*=UTF-8''<percent-encoded>`."""
    name = _clean(filename)
    fallback = _ascii_fallback(name)
    encoded = percent_encode(name, _ATTR_CHAR_EXTRAS)
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


def _clean(filename: str) -> str:
    # Control and format characters (CR, LF, NUL, DEL, U+202E right-to-left override...)
    # can spoof or split what the user sees; directory parts are not the file's name.
    # (Printable ASCII holds none of them: the common name skips the look at each.)
    if not (filename.isascii() and filename.isprintable()):
        filename = "".join(c for c in filename if unicodedata.category(c) not in UNSHOWN)
    name = filename.replace("/", "_").replace("\\", "_").strip(" .")
    if not name:
        return FALLBACK_NAME
    return _truncate_utf8(name, MAX_FILENAME_BYTES)


def _truncate_utf8(name: str, limit: int) -> str:
    if len(name.encode("utf-8")) <= limit:
        return name
    stem, dot, extension = name.rpartition(".")
    if not dot or len(extension.encode("utf-8")) > 16:
        stem, extension = name, ""
    suffix = "." + extension if extension else ""
    budget = limit - len(suffix.encode("utf-8"))
    kept = stem.encode("utf-8")[:budget].decode("utf-8", "ignore")
    return kept + suffix


def _ascii_fallback(name: str) -> str:
    # Keep the Latin letters of accented characters ("é" -> "e"); everything else
    # non-ASCII, and the characters unsafe inside the quoted string, become "_".
    # (ASCII has neither decompositions nor combining marks.)
    if not name.isascii():
        decomposed = unicodedata.normalize("NFKD", name)
        name = "".join(c for c in decomposed if not unicodedata.combining(c))
    # Stripped again: `‥` (U+2025) decomposes to `..`. Cut again too: one character may
    # decompose to many (U+FDFA to 18), so a name of 255 bytes may not stay within them.
    fallback = _truncate_utf8(_FALLBACK_UNSAFE.sub("_", name).strip(" ."), MAX_FILENAME_BYTES)
    return fallback.strip(" .") or FALLBACK_NAME  # (a cut may end on a space or a dot)
