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


def test_components_take_on_off_words_as_the_command_line_gives_them():
    """Booleans are parsed once, by the component that uses them: configs pass ``@key`` unchanged."""
    import torch

    from monai_uda.data.synthetic import RandSyntheticMaskd
    from monai_uda.inference.network import SegmentationNetwork
    from monai_uda.networks.adain import AdaINGenerator, DomainTranslator
    from monai_uda.transforms.intensity import ChannelPolicy

    assert ChannelPolicy(3, "false").invert is False and ChannelPolicy(3, "true").invert is True
    image = torch.tensor([[[0.0, 1.0]]])
    assert torch.equal(ChannelPolicy(1, "false")(image), image)  # "false" must not invert
    generator = AdaINGenerator(2, 1, channels=(4, 8, 8), num_res_blocks=1, mlp_channels=4, encoder_adain="false")
    assert DomainTranslator(generator, ternary="false").ternary is False
    assert SegmentationNetwork(torch.nn.Identity(), amp="false").amp is False
    assert RandSyntheticMaskd(["image", "label"], shape=(16, 16), ternary="true").masks.ternary is True
    with pytest.raises(ValueError, match="expected true or false"):
        ChannelPolicy(3, "maybe")
