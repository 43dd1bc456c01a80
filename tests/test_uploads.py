"""The part size of a multipart upload stays within S3's rules for any file size."""

from __future__ import annotations

import math

import pytest

from service.core.errors import ObjectTooLarge
from service.core.uploads import MAX_PARTS, MIB
from service.storage.uploads import MAX_OBJECT_SIZE, PART_SIZE, part_size_for


@pytest.mark.parametrize("size", [PART_SIZE, PART_SIZE * 2 + 12345, PART_SIZE * MAX_PARTS])
def test_the_usual_part_size_while_it_needs_at_most_10000_parts(size):
    assert part_size_for(size) == PART_SIZE


@pytest.mark.parametrize(
    ("size", "part_size"),
    [
        (PART_SIZE * MAX_PARTS + 1, 9 * MIB),
        (1024 * 1024 * MIB, 105 * MIB),  # 1 TiB
        (MAX_OBJECT_SIZE, 525 * MIB),
    ],
)
def test_beyond_that_the_smallest_whole_mib_that_fits(size, part_size):
    chosen = part_size_for(size)
    assert chosen == part_size
    assert math.ceil(size / chosen) <= MAX_PARTS < math.ceil(size / (chosen - MIB))
    assert 5 * MIB <= chosen <= 5 * 1024 * MIB


def test_a_file_larger_than_s3_stores_is_refused():
    with pytest.raises(ObjectTooLarge):
        part_size_for(MAX_OBJECT_SIZE + 1)
