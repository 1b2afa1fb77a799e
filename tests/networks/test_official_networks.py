"""The official architectures: parameter counts, outputs and gradients equal to torchdiffeq-built
equivalents of the authors' networks at equal weights, and ``load_official``'s key mapping."""

import pytest
import torch
from netutil import TINY_CNM, images, require_nmode
from official_references import AuthorsCNMUNet, AuthorsContinuousUNet

from networks import DUSEConfig, build_model, load_official
from networks.layers import layer_parameter_count, parameter_count
from networks.official import _cnm_name, _continuous_name
from odekern.testing import ADJOINT_GRADIENT_REL, SAME_STEPS_REL_FP64, assert_close, peak_relative_tol


def _randomised(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:  # the authors' f-statistics are frozen parameters
                p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def _grads(model, x, names=None):
    y = model(x)
    weights = torch.linspace(-1.0, 1.0, y.numel(), dtype=y.dtype).view_as(y)
    (y * weights).sum().backward()
    return y.detach(), x.grad.clone(), {n: p.grad for n, p in model.named_parameters()}


def test_parameter_counts_match_the_official_networks():
    ours = build_model("continuous-unet")
    assert ours.variant == "official"
    assert parameter_count(ours) == 169_585
    assert parameter_count(build_model("continuous-unet", variant="second-order")) == 192_526
    reference = AuthorsContinuousUNet(num_filters=3)
    unused = sum(p.numel() for p in reference.input_1x1.parameters())
    assert parameter_count(reference) - unused == 169_585
    with torch.device("meta"):
        authors_cnm = AuthorsCNMUNet(image_size=256)
    assert layer_parameter_count(authors_cnm) == 9_450_739


@pytest.mark.parametrize("gradient, kind", [("backprop", "rounding"), ("adjoint", "cross")])
def test_continuous_unet_equals_authors_network(gradient, kind):
    """Same weights (loaded by load_official), RK4 over [0, 1] in one step, leaky ReLU: logits,
    input gradient and every parameter gradient agree (rounding for backprop; both adjoints
    integrate the same reversed RK4 step, so they agree to rounding as well)."""
    reference = _randomised(AuthorsContinuousUNet(num_filters=3, adjoint=gradient == "adjoint")).double()
    model = load_official(reference.state_dict(), model=build_model("continuous-unet", gradient=gradient)).double()
    x = images(1, size=32, dtype=torch.float64).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    y, gx, grads = _grads(model, x)
    y_ref, gx_ref, grads_ref = _grads(reference, x_ref)

    def close(actual, expected, what):
        assert_close(actual, expected, "cross", what, **peak_relative_tol(expected, SAME_STEPS_REL_FP64))

    close(y, y_ref, "logits")
    close(gx, gx_ref, "input gradient")
    for name, g_ref in grads_ref.items():
        ours = _continuous_name(name)
        if ours:  # input_1x1 is unused by the authors' forward
            close(grads[ours], g_ref, f"gradient of {name}")
        else:
            assert g_ref is None


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_cnm_unet_equals_authors_network(mode):
    """The authors' behaviour (constant fusion, gamma and C untrained, f-statistics momentum
    0.8) against the torchdiffeq-built CNM_UNet: logits, gradients, running statistics."""
    require_nmode()
    tol = {"rtol": TINY_CNM["rtol"], "atol": TINY_CNM["atol"]}
    reference = AuthorsCNMUNet(image_size=32, widths=TINY_CNM["encoder_widths"], **tol)
    _randomised(reference).double().train(mode == "train")
    with torch.no_grad():
        reference.Gamma.copy_(torch.randn(reference.Gamma.shape, generator=torch.Generator().manual_seed(3)))
    model = build_model("cnm-unet", **TINY_CNM, learnable_fusion=False, train_gamma=False,
                        duse_config=DUSEConfig(procedure="official"))
    model = load_official(reference.state_dict(), model=model).double().train(mode == "train")
    x = images(2, dtype=torch.float64).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    y, gx, grads = _grads(model, x)
    y_ref, gx_ref, grads_ref = _grads(reference, x_ref)

    def close(actual, expected, what):
        assert_close(actual, expected, "cross", what, **peak_relative_tol(expected, ADJOINT_GRADIENT_REL))

    close(y, y_ref, "logits")
    close(gx, gx_ref, "input gradient")
    for name, g_ref in grads_ref.items():
        if name == "Gamma" or name.startswith("Mult_up.Con_solver."):
            assert g_ref is None and grads[_cnm_name(name) or "cnm_block.nmode.gamma"] is None, name
            continue
        close(grads[_cnm_name(name)], g_ref, f"gradient of {name}")
    if mode == "train":
        solver = reference.Mult_up.Con_solver
        close(model.cnm_block.f_running_mean, torch.stack([solver.running_mean1, solver.running_mean2]), "M")
        close(model.cnm_block.f_running_var, torch.stack([solver.running_var1, solver.running_var2]), "V")


def test_load_official_from_file_with_wrappers_and_inferred_model(tmp_path):
    reference = _randomised(AuthorsContinuousUNet(num_filters=3))
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    path = tmp_path / "authors.pt"
    torch.save({"epoch": 3, "state_dict": state}, path)
    model = load_official(path)
    assert model.variant == "official" and parameter_count(model) == 169_585
    assert torch.equal(model.classifier.weight, reference.classifier.weight)
    assert torch.equal(model.up_blocks[0].ode.dynamics.field[1].weight, reference.odeblock_up4.odefunc.conv1.weight)


def test_load_official_cnm_builds_the_authors_configuration():
    require_nmode()
    reference = AuthorsCNMUNet(image_size=32, widths=TINY_CNM["encoder_widths"])
    model = load_official(reference.state_dict())
    assert model.image_size == (32, 32) and not model.train_gamma
    assert torch.equal(model.fusion.weights, torch.ones(5)) and not model.fusion.bias.any()
    assert not any(p.requires_grad for p in (model.cnm_block.nmode.gamma, model.cnm_block.nmode.conv.weight))


def test_load_official_lists_unmapped_and_missing_keys():
    state = AuthorsContinuousUNet(num_filters=3).state_dict()
    state["extra_head.weight"] = torch.zeros(1)
    del state["classifier.bias"]
    with pytest.raises(ValueError) as err:
        load_official(state, model=build_model("continuous-unet"))
    assert "maps to nothing here: extra_head.weight" in str(err.value)
    assert "does not fill: classifier.bias" in str(err.value)
    with pytest.raises(ValueError, match="variant='official'"):
        load_official(AuthorsContinuousUNet(num_filters=3).state_dict(),
                      model=build_model("continuous-unet", variant="second-order"))
    with pytest.raises(TypeError, match="pass a ContinuousUNet"):
        load_official(AuthorsContinuousUNet(num_filters=3).state_dict(), model=build_model("vanilla-unet"))
    with pytest.raises(ValueError, match="shape mismatch"):
        load_official(AuthorsContinuousUNet(num_filters=3).state_dict(), model=build_model("continuous-unet",
                                                                                          num_classes=2))
    with pytest.raises(ValueError, match="not a state dict of either official code base"):
        load_official({"weight": torch.zeros(1)})


def test_variant_mismatch_is_named_when_loading_our_own_state_dicts():
    second = build_model("continuous-unet", variant="second-order")
    with pytest.raises(ValueError, match="variant='second-order'"):
        build_model("continuous-unet").load_state_dict(second.state_dict())
    with pytest.raises(ValueError, match="load_official"):
        build_model("continuous-unet").load_state_dict(AuthorsContinuousUNet(num_filters=3).state_dict())


def test_training_checkpoints_of_the_second_order_variant_still_load(tmp_path):
    """A run recorded without a variant option (all runs before the official variant existed)
    is rebuilt as the variant its weights belong to."""
    from networks import checkpoint as ckpt

    model = build_model("continuous-unet", variant="second-order", base_filters=2, levels=1)
    payload = {"format": ckpt.TRAIN_FORMAT, "model_state": model.state_dict(),
               "model": {"name": "continuous-unet", "in_channels": 3, "num_classes": 1,
                         "options": {"base_filters": 2, "levels": 1}, "image_size": 16}}
    ckpt.atomic_torch_save(payload, tmp_path / "old.pt")
    loaded, _ = ckpt.load_model(tmp_path / "old.pt")
    assert loaded.variant == "second-order"
    x = images(1, size=16)
    assert torch.equal(loaded(x), model.eval()(x))


def test_official_duse_procedure_carries_adam_across_images():
    require_nmode()
    assert DUSEConfig().momentum == 0.2 and DUSEConfig(procedure="official").momentum == 0.8
    assert DUSEConfig(procedure="official", momentum=0.5).momentum == 0.5
    with pytest.raises(ValueError, match="procedure"):
        DUSEConfig(procedure="authors")
    torch.manual_seed(0)
    model = build_model("cnm-unet", **TINY_CNM, duse_config=DUSEConfig(procedure="official", memory_size=0))
    assert model.cnm_block.momentum == 0.8
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.adapt(images(2))
    states = model.duse_state.optimizer_states
    # One Adam step on theta_gamma and one on the prompt per image, state kept across images.
    assert [s["step"].item() for s in states["theta"]["state"].values()] == [2.0, 2.0]
    assert [s["step"].item() for s in states["prompt"]["state"].values()] == [2.0]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    model.reset_adaptation()
    assert model.duse_state.optimizer_states == {}
