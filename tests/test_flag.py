"""``monai_uda.flag``: on/off config values as the command line hands them over."""

from __future__ import annotations

import pytest

from monai_uda import flag, word_to_bool


@pytest.mark.parametrize("value, expected", [
    (True, True), (False, False), ("false", False), ("False", False), (" TRUE ", True), ("no", False), ("on", True),
    ("0", False), ("1", True), (0, False), (1, True),
])
def test_flag_reads_words_and_bools(value, expected):
    assert flag(value) is expected


@pytest.mark.parametrize("value", ["maybe", 2, None, "", 0.5])
def test_flag_refuses_anything_else(value):
    with pytest.raises(ValueError, match="expected true or false"):
        flag(value)


def test_word_to_bool_leaves_other_values_alone():
    assert word_to_bool("false") is False and word_to_bool("cuda") == "cuda" and word_to_bool(3) == 3
