"""RFC 6266 / 8187 Content-Disposition values and media types."""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote, unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.core.disposition import _truncate_utf8, content_disposition
from service.core.media_types import safe_content_type

SHAPE = re.compile(
    r"^attachment; filename=\"([ !#-$&-\[\]-~]*)\"; filename\*=UTF-8''([A-Za-z0-9!#$&+\-.^_`|~%]+)$"
)


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("report.pdf", "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf"),
        (
            "€ rates.pdf",
            "attachment; filename=\"_ rates.pdf\"; filename*=UTF-8''%E2%82%AC%20rates.pdf",
        ),
        ("naïve.txt", "attachment; filename=\"naive.txt\"; filename*=UTF-8''na%C3%AFve.txt"),
        (
            'a"b\\c%41.txt',
            "attachment; filename=\"a_b_c_41.txt\"; filename*=UTF-8''a%22b_c%2541.txt",
        ),
        ("x\r\ny.txt", "attachment; filename=\"xy.txt\"; filename*=UTF-8''xy.txt"),
        ("\u202egnp.exe", "attachment; filename=\"gnp.exe\"; filename*=UTF-8''gnp.exe"),
        ("dir/evil.sh", "attachment; filename=\"dir_evil.sh\"; filename*=UTF-8''dir_evil.sh"),
        (
            "it's (1),*.txt",
            "attachment; filename=\"it's (1),_.txt\"; filename*=UTF-8''it%27s%20%281%29%2C%2A.txt",
        ),
        # Compatibility forms that decompose to `..` and `/` in the ASCII fallback.
        (
            "\u2025\uff0f\u2025\uff0fetc\uff0fpasswd",
            'attachment; filename="_.._etc_passwd"; '
            "filename*=UTF-8''%E2%80%A5%EF%BC%8F%E2%80%A5%EF%BC%8Fetc%EF%BC%8Fpasswd",
        ),
        ("\u2025", "attachment; filename=\"download\"; filename*=UTF-8''%E2%80%A5"),
        # A name spelling a parameter of its own: one `filename*` in the header, ours.
        (
            "report.pdf; filename*=UTF-8''payload.exe; .pdf",
            "attachment; filename=\"report.pdf_ filename_=UTF-8''payload.exe_ .pdf\"; "
            "filename*=UTF-8''report.pdf%3B%20filename%2A%3DUTF-8%27%27payload.exe%3B%20.pdf",
        ),
        ("\r\n", "attachment; filename=\"download\"; filename*=UTF-8''download"),
        ("...", "attachment; filename=\"download\"; filename*=UTF-8''download"),
        ("😀", "attachment; filename=\"_\"; filename*=UTF-8''%F0%9F%98%80"),
    ],
)
def test_known_filenames(filename, expected):
    assert content_disposition(filename) == expected


def test_long_names_are_cut_to_255_bytes_keeping_the_extension():
    value = content_disposition("é" * 300 + ".pdf")
    encoded = SHAPE.match(value).group(2)
    name = unquote(encoded)
    assert name.endswith(".pdf")
    assert len(name.encode()) <= 255


@given(st.text(min_size=0, max_size=400))
def test_any_filename_gives_a_well_formed_ascii_header(filename):
    value = content_disposition(filename)
    assert value.isascii()
    match = SHAPE.match(value)
    assert match, value
    fallback, encoded = match.groups()
    assert fallback and not set(fallback) & set('"\\%\r\n/;*')
    assert fallback == fallback.strip(" .")  # never `..`, nor a hidden file's dot
    assert value.count(";") == 2 and value.count("filename*=") == 1
    assert len(unquote(encoded).encode()) <= 255
    assert len(fallback) <= 255


def test_the_ascii_fallback_is_cut_to_255_bytes_too():
    """Cut to 255 bytes, a name may still grow as its compatibility forms decompose for the
    ASCII fallback: U+FDFA is one character of 3 bytes and 18 of ASCII."""
    value = content_disposition("\ufdfa" * 100 + ".txt")
    fallback, encoded = SHAPE.match(value).groups()
    assert len(fallback) <= 255 and fallback.endswith(".txt")
    assert set(fallback.removesuffix(".txt")) == {"_", " "}  # the Arabic words' letters
    # Cut where the words' space falls, it does not end on it.
    fallback = SHAPE.match(content_disposition("a" * 17 + "\ufdfa" * 90)).group(1)
    assert len(fallback) <= 255 and fallback == fallback.strip(" .")
    assert len(unquote(encoded).encode()) <= 255


def reference_disposition(filename: str) -> str:
    """content_disposition as it was written before its ASCII shortcuts and table encoder:
    every character looked at, urllib's quote."""
    chars = [c for c in filename if unicodedata.category(c) not in ("Cc", "Cf", "Cs")]
    name = "".join(chars).replace("/", "_").replace("\\", "_").strip(" .")
    name = _truncate_utf8(name, 255) if name else "download"
    decomposed = unicodedata.normalize("NFKD", name)
    without_marks = "".join(c for c in decomposed if not unicodedata.combining(c))
    fallback = re.sub(r'[^\x20-\x7e]|["\\%/;*]', "_", without_marks).strip(" .")
    fallback = _truncate_utf8(fallback, 255).strip(" .") or "download"
    encoded = quote(name, safe="!#$&+^`|", encoding="utf-8", errors="strict")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


@given(
    st.one_of(
        st.text(max_size=300),
        st.text(st.characters(max_codepoint=127), max_size=80),  # the shortcut's own
        st.text(st.sampled_from(' ./\\"%;\r\n\x7fé\u0301\u202ea😀'), max_size=40),
    )
)
def test_shortcuts_give_the_same_header_as_looking_at_every_character(filename):
    assert content_disposition(filename) == reference_disposition(filename)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("text/plain", "text/plain"),
        ("text/plain; charset=utf-8", "text/plain; charset=utf-8"),
        ('multipart/mixed; boundary="a b"', 'multipart/mixed; boundary="a b"'),
        ("text/html\r\nX-Evil: 1", "application/octet-stream"),
        ("image/png\n", "application/octet-stream"),  # a regex's "$" matches before it
        ("nonsense", "application/octet-stream"),
        ("", "application/octet-stream"),
        (None, "application/octet-stream"),
        ("image/" + "x" * 300, "application/octet-stream"),
    ],
)
def test_content_types(value, expected):
    assert safe_content_type(value) == expected
