"""DUSE: the Fourier prompt, the memory bank, the losses, and adapt()'s guarantees (weights
restored bit-exactly, nothing leaking between images, checkpoints untouched)."""

import dataclasses
import io
import math

import numpy as np
import pytest
import torch
from netutil import TINY_CNM, images, require_nmode

from networks import DUSEConfig, build_model
from networks.duse import (
    PromptMemory,
    adaptive_batch_norm,
    apply_prompt,
    f_statistics_loss,
    low_frequency_amplitude,
    prompt_shape,
)
from odekern.testing import assert_close

# ---------------------------------------------------------------------------- pure pieces


def test_prompt_of_ones_is_the_identity():
    x = images(2, size=20, dtype=torch.float64)
    assert_close(apply_prompt(x, torch.ones(1, 3, 3, 3, dtype=torch.float64)), x, "rounding")


def test_dc_prompt_scales_each_channels_mean_only():
    """A 1x1 prompt sits on the zero frequency: scaling its amplitude by c scales the channel mean
    by c and leaves the rest of the image unchanged (x - mean + c * mean), for even and odd sizes."""
    for size in (16, 17):
        x = images(1, size=size, dtype=torch.float64) + 0.2
        c = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64).view(1, 3, 1, 1)
        mean = x.mean(dim=(2, 3), keepdim=True)
        assert_close(apply_prompt(x, c), x - mean + c * mean, "rounding")


def test_prompt_shape_and_key():
    assert prompt_shape(352, 352, 0.01) == (3, 3)  # the paper's Polyp size
    assert prompt_shape(256, 200, 0.01) == (2, 2)
    assert prompt_shape(32, 32, 0.01) == (1, 1)  # never empty
    x = images(1, size=16, dtype=torch.float64)
    key = low_frequency_amplitude(x, 1, 1)
    assert_close(key.flatten(), x.sum(dim=(2, 3)).flatten().abs(), "rounding")  # |DC| = |sum|


def test_memory_bank_fifo_and_neighbour_initialisation():
    bank = PromptMemory()
    keys = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0])]
    prompts = [torch.full((1, 1, 1, 1), v) for v in (1.0, 2.0, 3.0)]
    for key, prompt in zip(keys, prompts):
        bank.push(key, prompt, capacity=2)
    assert len(bank) == 2 and torch.equal(bank.prompts[0], prompts[1])  # oldest evicted
    assert bank.initial_prompt(torch.tensor([1.0, 0.0]), neighbours=3, temperature=0.2) is None
    query = torch.tensor([2.0, 1.0])
    sims = torch.tensor([1 / 5**0.5, 3 / 10**0.5])  # cosine to [0, 1] and [1, 1]
    w = torch.softmax(sims / 0.2, dim=0)
    expected = w[0] * 2.0 + w[1] * 3.0
    got = bank.initial_prompt(query, neighbours=2, temperature=0.2)
    assert_close(got.flatten(), expected.reshape(1), "rounding")
    bank.push(keys[0], prompts[0], capacity=0)  # capacity 0 disables the bank
    assert len(bank) == 2


def test_f_statistics_loss_eq4():
    f0 = torch.tensor([1.0, 3.0]).view(1, 1, 1, 2)  # mean 2, std sqrt(2)
    f1 = torch.tensor([0.0, 0.0]).view(1, 1, 1, 2)  # mean 0, std 0
    mean = torch.tensor([[1.0], [0.5]])
    var = torch.tensor([[2.0], [4.0]])
    # t0: |2 - 1| + |sqrt2 - sqrt2| = 1;  t1: |0 - 0.5| + |0 - 2| = 2.5;  mean over t: 1.75
    assert f_statistics_loss(f0, f1, mean, var).item() == pytest.approx(1.75)


def test_config_validation():
    with pytest.raises(ValueError, match="alpha must be a finite number > 0 and <= 1, got 0.0"):
        DUSEConfig(alpha=0.0)
    with pytest.raises(ValueError, match="optimizer must be 'adam' or 'sgd'"):
        DUSEConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="momentum must be a finite number >= 0 and <= 1, got 1.5"):
        DUSEConfig(momentum=1.5)
    assert DUSEConfig() == DUSEConfig(alpha=0.01, momentum=0.2, h_base=0.5, k=1000.0, lr=0.01)
    with pytest.raises(dataclasses.FrozenInstanceError):
        DUSEConfig().lr = 0.1  # replace the whole config on the model instead


@pytest.mark.parametrize("field, value", [
    ("lr", math.inf), ("k", math.nan), ("h_base", -1.0), ("prompt_lr", "0.01"), ("alpha", True),
    ("temperature", math.inf), ("warm_n", 0.0), ("momentum", math.nan), ("memory_size", 2.5),
    ("neighbours", 0), ("neighbours", 1.5), ("betas", (0.9, 1.0)), ("betas", (0.9,)), ("betas", 0.9),
    ("continual", "no"),
])
def test_config_refuses_what_would_adapt_wrongly_or_fail_later(field, value):
    # An infinite learning rate, a fractional bank size or a NaN momentum passed the range
    # checks (NaN compares false with every bound) and failed, or adapted wrongly, only later.
    with pytest.raises(ValueError, match=f"DUSEConfig: {field} must be"):
        DUSEConfig(**{field: value})


def test_betas_given_as_a_string_are_refused_as_a_pair():
    """A string is no pair of numbers, even one of two characters."""
    with pytest.raises(ValueError, match=r"betas must be a pair of numbers in \[0, 1\), got '01'"):
        DUSEConfig(betas="01")


def test_config_from_a_recorded_run_equals_the_original():
    # A training run records the config as JSON, so betas come back as a list; numbers may come
    # as NumPy scalars. The rebuilt config is the same config.
    original = DUSEConfig(k=500.0, lr=0.005, memory_size=8)
    recorded = {**dataclasses.asdict(original), "betas": list(original.betas), "memory_size": np.int64(8),
                "k": np.float64(500.0)}
    rebuilt = DUSEConfig(**recorded)
    assert rebuilt == original
    assert type(rebuilt.memory_size) is int and type(rebuilt.k) is float


# ---------------------------------------------------------------------------- on the model


@pytest.fixture
def source_model():
    """A tiny CNM-UNet with source-domain BN and f statistics (a few train-mode forwards)."""
    require_nmode()
    torch.manual_seed(0)
    model = build_model("cnm-unet", **TINY_CNM)
    model.train()
    with torch.no_grad():
        for seed in range(3):
            model(images(4, seed=seed))
    return model.eval()


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(model, snapshot):
    state = model.state_dict()
    assert state.keys() == snapshot.keys()
    for k, v in state.items():
        assert torch.equal(v, snapshot[k]), f"{k} changed"


def test_bn_terms_weight_the_cnm_block_by_k(source_model):
    block = source_model.cnm_block
    with adaptive_batch_norm(source_model, block, images_seen=1, warm_n=5.0) as bn:
        source_model.forward_parts(images(1))
    flags = [in_cnm for in_cnm, _ in bn.terms]
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in source_model.modules())
    assert len(flags) == n_bn and sum(flags) == 2  # BN_in and BN_out of the CNM-Block
    base = bn.prompt_loss(h_base=1.0, k=1.0)
    cnm = sum(term for in_cnm, term in bn.terms if in_cnm)
    assert_close(bn.prompt_loss(h_base=0.5, k=10.0), 0.5 * (base + 9.0 * cnm / n_bn), "rounding")


def test_adapt_restores_weights_bit_exactly_and_changes_the_prediction(source_model):
    shifted = 0.5 * images(2, seed=7) + 0.4  # a contrast / brightness shift of the domain
    before = _snapshot(source_model)
    with torch.no_grad():
        plain = source_model(shifted)
    adapted = source_model.adapt(shifted)
    _assert_same_state(source_model, before)
    assert adapted.shape == plain.shape and torch.isfinite(adapted).all()
    assert (adapted - plain).abs().max() > 1e-3
    assert all(p.grad is None for p in source_model.parameters())  # no stray gradients either
    assert not source_model.training


def test_nothing_leaks_between_images_when_not_continual(source_model):
    source_model.duse_config = DUSEConfig(continual=False)
    a, b = images(1, seed=21) * 0.7, images(1, seed=22) + 0.3
    alone = source_model.adapt(b)
    source_model.adapt(a)
    after_a = source_model.adapt(b)
    assert torch.equal(alone, after_a)
    both = source_model.adapt(torch.cat([a, b]))  # a batch is adapted image by image
    assert torch.equal(both[1:], alone)
    assert len(source_model.duse_state.memory) == 0 and source_model.duse_state.images_seen == 0


def test_continual_state_lives_outside_the_weights(source_model):
    source_model.duse_config = DUSEConfig(memory_size=2, neighbours=1)
    before = _snapshot(source_model)
    first = source_model.adapt(images(1, seed=31))
    source_model.adapt(images(2, seed=32))  # the second image's prompt starts from the bank
    assert source_model.duse_state.images_seen == 3 and len(source_model.duse_state.memory) == 2
    _assert_same_state(source_model, before)
    source_model.reset_adaptation()
    assert source_model.duse_state.images_seen == 0 and len(source_model.duse_state.memory) == 0
    assert torch.equal(source_model.adapt(images(1, seed=31)), first)  # reset == fresh


def test_adapt_never_mutates_a_saved_checkpoint(source_model, tmp_path):
    path = tmp_path / "model.pt"
    torch.save(source_model.state_dict(), path)
    saved_bytes = path.read_bytes()
    restored = build_model("cnm-unet", **TINY_CNM)
    restored.load_state_dict(torch.load(path))
    restored.eval()
    restored.duse_config = DUSEConfig(continual=False)
    source_model.duse_config = DUSEConfig(continual=False)
    x = images(1, seed=41) * 0.5
    assert torch.equal(restored.adapt(x), source_model.adapt(x))
    assert path.read_bytes() == saved_bytes
    buffer = io.BytesIO()
    torch.save(restored.state_dict(), buffer)
    reloaded = torch.load(io.BytesIO(buffer.getvalue()))
    for k, v in torch.load(path).items():
        assert torch.equal(v, reloaded[k]), f"{k} differs from the checkpoint after adapt()"


def test_use_duse_flag_routes_eval_forward_through_adapt(source_model):
    source_model.duse_config = DUSEConfig(continual=False)
    x = images(1, seed=51) + 0.2
    expected = source_model.adapt(x)
    source_model.use_duse = True
    with torch.no_grad():  # evaluation loops run under no_grad; DUSE re-enables grad itself
        assert torch.equal(source_model(x), expected)
    source_model.train()
    with torch.no_grad():
        assert not torch.equal(source_model(x), expected)  # training forward is the plain one
    source_model.eval()
    with pytest.raises(ValueError, match="in_channels=3"):
        source_model.adapt(images(1, channels=2))


def test_theta_gamma_and_prompt_both_take_part(source_model):
    """Switching off either update changes the result: L_n reaches the conv of C(gamma) and L_p
    reaches the prompt."""
    x = images(1, seed=61) * 0.6
    outs = {}
    for name, cfg in {"both": DUSEConfig(continual=False),
                      "no_theta": DUSEConfig(continual=False, lr=0.0),
                      "no_prompt": DUSEConfig(continual=False, prompt_lr=0.0)}.items():
        source_model.duse_config = cfg
        outs[name] = source_model.adapt(x)
    assert not torch.equal(outs["both"], outs["no_theta"])
    assert not torch.equal(outs["both"], outs["no_prompt"])


def test_adapt_needs_two_pixels_at_the_deepest_level():
    require_nmode()
    model = build_model("cnm-unet", image_size=16, encoder_widths=(2, 2, 2, 2, 2)).eval()
    with pytest.raises(ValueError, match="at least 32"):
        model.adapt(images(1, size=16))
