"""The table percent-encoder against urllib.parse.quote, which it replaces on the hot path."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.core.percent import percent_encode

# The safe sets the gateway encodes with: object keys, query values, RFC 8187 values;
# and quote's own default.
SAFE_SETS = ("/~", "-_.~", "!#$&+^`|", "/", "")

any_text = st.one_of(
    st.text(max_size=80),  # any code point, lone surrogates included
    st.text(st.sampled_from("ab /+~%é😀.-_=&?#;\"'\x00\x7f\u202e"), max_size=40),
)


@given(text=any_text, safe=st.sampled_from(SAFE_SETS))
def test_percent_encode_equals_urllib_quote(text: str, safe: str) -> None:
    try:
        expected = quote(text, safe=safe)
    except UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError):
            percent_encode(text, safe)
        return
    assert percent_encode(text, safe) == expected


@pytest.mark.parametrize(
    ("text", "safe", "encoded"),
    [
        ('attachment; filename="a b.pdf"', "-_.~", "attachment%3B%20filename%3D%22a%20b.pdf%22"),
        ("ws/1/naïve ✓.txt", "/~", "ws/1/na%C3%AFve%20%E2%9C%93.txt"),
        ("~user/x", "", "~user%2Fx"),
    ],
)
def test_percent_encode_examples(text: str, safe: str, encoded: str) -> None:
    assert percent_encode(text, safe) == encoded
