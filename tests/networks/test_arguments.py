"""The whole-number checks every model and dataset shares: exact integers in, or a ValueError."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from networks.arguments import (
    check_channel_list,
    check_finite_number,
    check_positive_int,
    image_size_pair,
    whole_number,
)
from networks.models import build_model


def test_whole_numbers_are_python_and_numpy_integers_only():
    assert whole_number(7) == 7 and type(whole_number(np.int16(7))) is int
    for value in (True, 7.0, "7", b"7", None, (7,), np.float64(7)):
        assert whole_number(value) is None, value


def test_check_positive_int_returns_a_python_int_or_names_the_argument():
    assert check_positive_int(np.uint8(3), "levels") == 3
    assert type(check_positive_int(np.int64(3), "levels")) is int
    assert check_positive_int(0, "seed", minimum=0) == 0
    for value in (0, -2, 2.0, 2.5, "2", True):
        with pytest.raises(ValueError, match=rf"levels must be an integer >= 1, got {value!r}"):
            check_positive_int(value, "levels")


@pytest.mark.parametrize("size", ["64", "6464", b"64", 64.0, (32.5, 32), (32, 32.0), (32,), (32, 32, 3), True,
                                  (True, 32), 0, (32, 0), (-32, 32), None, np.float32(32)])
def test_image_size_pair_refuses_what_is_not_one_or_two_positive_integers(size):
    # "64" was read per character as (6, 4), and (32.5, 32) truncated to (32, 32), without a word.
    with pytest.raises(ValueError, match=r"image_size must be a positive int or \(height, width\) of positive ints"):
        image_size_pair(size)


def test_image_size_pair_reads_ints_pairs_and_numpy():
    assert image_size_pair(32) == (32, 32)
    assert image_size_pair([16, 48]) == (16, 48)
    pair = image_size_pair(np.array([16, 48]))
    assert pair == (16, 48) and all(type(side) is int for side in pair)
    assert image_size_pair(np.int32(8)) == (8, 8)


@given(st.one_of(
    st.integers(-4, 300), st.floats(allow_nan=True), st.text(max_size=4), st.none(), st.booleans(),
    st.lists(st.one_of(st.integers(-4, 300), st.floats(-4, 300), st.booleans(), st.text(max_size=2)), max_size=3),
))
def test_image_size_pair_is_exact_or_refuses(size):
    """Whatever comes in: the very integers given, or a ValueError; never a reinterpretation."""
    try:
        height, width = image_size_pair(size)
    except ValueError as error:
        assert "image_size must be" in str(error)
        return
    exact = [size, size] if isinstance(size, int) else list(size)
    assert [height, width] == exact
    assert all(type(side) is int and side >= 1 for side in exact)


def test_check_channel_list_refuses_a_string_and_returns_ints():
    with pytest.raises(ValueError, match="encoder_widths must be a sequence of positive integers"):
        check_channel_list("48", "encoder_widths")
    widths = check_channel_list(np.array([4, 8]), "encoder_widths", length=2)
    assert widths == (4, 8) and all(type(w) is int for w in widths)
    with pytest.raises(ValueError, match="encoder_widths must be an integer >= 1, got 4.5"):
        check_channel_list((4.5, 8), "encoder_widths")


def test_a_cnm_unet_of_fractional_size_is_refused_not_truncated():
    with pytest.raises(ValueError, match="image_size must be a positive int"):
        build_model("cnm-unet", image_size=(32.9, 32), encoder_widths=(2, 2, 2, 2, 2))


@pytest.mark.parametrize("name, options", [
    ("vanilla-unet", {}),
    ("unet", {"base_filters": np.int64(2), "levels": np.int64(1)}),
    ("continuous-unet", {"base_filters": np.int64(2), "levels": np.int64(1)}),
])
def test_models_store_numpy_integer_arguments_as_python_ints(name, options):
    model = build_model(name, in_channels=np.int64(3), num_classes=np.int32(1), **options)
    assert type(model.in_channels) is int and type(model.num_classes) is int


def test_check_finite_number_bounds_and_types():
    assert check_finite_number(np.float32(0.5), "rate", minimum=0.0, below=1.0) == 0.5
    assert type(check_finite_number(np.int64(2), "rate")) is float
    assert check_finite_number(0.0, "rate", minimum=0.0) == 0.0
    for value, bounds in [(math.nan, {}), (math.inf, {}), (-math.inf, {"maximum": 1.0}), (True, {}), ("0.5", {}),
                          (None, {}), (0.0, {"above": 0.0}), (1.0, {"below": 1.0}), (1.5, {"maximum": 1.0}),
                          (-0.1, {"minimum": 0.0}), (1 + 2j, {})]:
        with pytest.raises(ValueError, match=r"^rate must be a finite number"):
            check_finite_number(value, "rate", **bounds)
    with pytest.raises(ValueError, match=r"rate must be a finite number >= 0 and < 1, got 1.0"):
        check_finite_number(1.0, "rate", minimum=0.0, below=1.0)


@pytest.mark.parametrize("option, value", [("dropout", 1.0), ("dropout", math.nan), ("dropout", "0.5"),
                                           ("delta_t", math.inf), ("delta_t", 0.0)])
def test_cnm_unet_refuses_rates_out_of_range(option, value):
    with pytest.raises(ValueError, match=f"CNMUNet: {option} must be a finite number"):
        build_model("cnm-unet", image_size=32, encoder_widths=(2, 2, 2, 2, 2), **{option: value})
