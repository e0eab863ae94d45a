"""unwrap_input_errors: the UDAInputError inside MONAI's RuntimeError reaches the caller."""

from __future__ import annotations

import pytest

from monai_uda.errors import UDAInputError
from monai_uda.transforms import inference_transforms, unwrap_input_errors


def test_input_error_is_unwrapped_and_other_errors_pass(tmp_path):
    chain = inference_transforms(2, channels=1)
    with pytest.raises(RuntimeError):  # what MONAI raises by itself
        chain({"image": str(tmp_path / "missing.png")})
    with pytest.raises(UDAInputError, match=r"missing.png: file does not exist"), unwrap_input_errors():
        chain({"image": str(tmp_path / "missing.png")})
    with pytest.raises(RuntimeError, match="unrelated"), unwrap_input_errors():
        raise RuntimeError("unrelated")
