"""build_model: every name and block type gives logits [B, num_classes, H, W]; bad input raises."""

import pytest
import torch
from netutil import TINY_CNM, TINY_CONTINUOUS, images, require_nmode

from networks import MODEL_NAMES, build_model
from networks.unet_blocks import BLOCK_TYPES, make_block

SMALL_OPTIONS = {
    "cnm-unet": TINY_CNM,
    "continuous-unet": TINY_CONTINUOUS,
    "unet": {},
    "vanilla-unet": {},
}


def _build(name, **kw):
    if name == "cnm-unet":
        require_nmode()
    return build_model(name, **{**SMALL_OPTIONS[name], **kw})


def test_model_names_are_the_documented_ones():
    assert set(MODEL_NAMES) == {"cnm-unet", "continuous-unet", "unet", "vanilla-unet"}


@pytest.mark.parametrize("name", sorted(SMALL_OPTIONS))
def test_output_is_logits_with_input_spatial_size(name):
    model = _build(name, in_channels=2, num_classes=3).eval()
    x = images(2, channels=2)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 3, 32, 32)
    assert y.dtype == x.dtype and torch.isfinite(y).all()
    # Logits, not probabilities: shifting the final conv's bias shifts the output exactly (a
    # sigmoid after it would squash the shift).
    final = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        final.bias += 10.0
        shifted = model(x)
    torch.testing.assert_close(shifted, y + 10.0)


@pytest.mark.parametrize("block", sorted(BLOCK_TYPES))
def test_unet_skeleton_every_block_type(block):
    model = build_model("unet", block=block, num_classes=2)
    x = images(2)
    y = model(x)
    assert y.shape == (2, 2, 32, 32)
    y.sum().backward()
    assert all(p.grad is not None for p in model.encoders.parameters())


@pytest.mark.parametrize("block", sorted(BLOCK_TYPES))
def test_blocks_map_channels_and_keep_spatial_size(block):
    out = make_block(block, 5, 8)(images(2, channels=5, size=12))
    assert out.shape == (2, 8, 12, 12)


def test_block_names_are_case_insensitive_and_checked():
    assert isinstance(make_block("PLN", 3, 4), BLOCK_TYPES["pln"])
    with pytest.raises(ValueError, match="block must be one of"):
        make_block("vgg", 3, 4)
    with pytest.raises(ValueError, match="ODE options .* only apply to block='fo'"):
        build_model("unet", block="pln", method="euler")


def test_build_model_rejects_unknown_names_and_options():
    with pytest.raises(ValueError, match="name must be one of"):
        build_model("segformer")
    with pytest.raises(TypeError, match="build_model\\('vanilla-unet'\\).*unexpected keyword"):
        build_model("vanilla-unet", depth=3)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 1"):
        build_model("vanilla-unet", num_classes=0)
    with pytest.raises(ValueError, match="method must be one of"):
        build_model("continuous-unet", method="heun")


@pytest.mark.parametrize("name", sorted(SMALL_OPTIONS))
def test_bad_input_raises_clear_errors(name):
    model = _build(name).eval()
    with pytest.raises(ValueError, match="in_channels=3 channels"):
        model(images(1, channels=1))
    with pytest.raises(ValueError, match="empty batch"):
        model(images(1)[:0])
    with pytest.raises(TypeError, match="floating-point"):
        model((images(1) * 255).to(torch.uint8))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        model(images(1).numpy())
    with pytest.raises(ValueError, match="4-D"):
        model(images(1)[0])
    if name == "cnm-unet":
        with pytest.raises(ValueError, match="must be 32x32 .*image_size"):
            model(images(1, size=48))
    else:
        with pytest.raises(ValueError, match="divisible by 16"):
            model(images(1, size=40))


def test_continuous_unet_needs_two_pixels_at_the_deepest_level():
    model = build_model("continuous-unet", **TINY_CONTINUOUS)
    with pytest.raises(ValueError, match="at least 32"):
        model(images(1, size=16))


def test_cnm_unet_constructor_checks():
    require_nmode()
    with pytest.raises(ValueError, match="image_size must be divisible by 16"):
        build_model("cnm-unet", image_size=40)
    with pytest.raises(ValueError, match="encoder_widths must have 5 entries"):
        build_model("cnm-unet", image_size=32, encoder_widths=(4, 8))
    with pytest.raises(TypeError, match="duse_config must be a DUSEConfig"):
        build_model("cnm-unet", **TINY_CNM).duse_config = {"lr": 0.1}
