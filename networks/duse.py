"""DUSE: the CNM-UNet paper's dual self-updating test-time adaptation (Algorithm 1, Eq. 3-6).

Per test image ``x`` (one at a time; a batch is split)::

    x_hat = IFFT([OnePad(P) * |FFT(x)|, angle(FFT(x))])       Eq. 5, low-frequency prompt P
    pass 1: forward x_hat -> L_n (Eq. 4) and L_p (Eq. 6)
            theta_gamma <- step(grad L_n);  P <- step(grad L_p)
    pass 2: recompute x_hat; forward -> L_n;  theta_gamma <- step(grad L_n)
    output: forward x_hat with the adapted theta_gamma (no grad) -> logits

- ``L_n = 1/2 sum_{t in {t0, t1}} mean_c(|mu_t - M_t| + |sigma_t - sqrt(V_t)|)``: per-image,
  per-channel mean / std of the nmODE right-hand side f at t0 and t1 (the fused solve's
  ``return_f``) against the running statistics ``M, V`` tracked in training (Eq. 3). Only
  ``theta_gamma`` -- the conv producing C(gamma) -- is updated with it.
- ``L_p = 1/L sum_l H_l mean_c(|mu_s - mu_t| + |sigma_s - sigma_t|)`` over the L batch-norm
  layers: source (running) statistics vs the image's per-channel statistics at that layer's
  input; ``H_l = k * H_base`` for the CNM-Block's two BNs, ``H_base`` for the others. Only the
  prompt P is updated with it.
- ``theta_gamma`` is adapted on a *copy* passed functionally to the NmODE
  (``torch.func.functional_call``): the model's parameters and buffers are never written, so
  "restore the pre-trained weights after every image" holds by construction (bit-exact), and
  a fresh optimiser per image (``procedure="paper"``) means no optimiser moment leaks either.

Choices where the paper is vague, following the authors' published code:

- Batch norm during adaptation (all passes) normalises with a warm-up mix of the image's
  statistics and the source statistics, ``m = 1 / (sqrt(n) / warm_n + 1)`` for the n-th image
  (VPTTA's AdaBN); the running statistics themselves are not changed. With
  ``continual=False`` every image is treated as the first (n = 1).
- ``L_p`` uses the source statistics as in Eq. 6; the authors' code compares against the
  mixed statistics instead, which gives the identical gradient for one image (the mix is a
  convex combination with the detached image statistic, so the sign of every |.| term is the
  same) and only rescales the reported loss value.
- sigma in Eq. 4 / 6 is a standard deviation: the authors track variances and compare their
  square roots with per-image standard deviations.
- Prompt: side ``max(1, int(alpha * H))`` x ``max(1, int(alpha * W))``, initialised to ones (the
  identity) or, once the memory bank holds ``neighbours`` entries, to the softmax(cosine / 0.2)
  weighted mean of the prompts of the ``neighbours`` most similar stored images (key: the
  image's low-frequency amplitude; VPTTA's memory bank, size ``memory_size``, FIFO). The window
  is centred on the zero frequency (the authors' padding misses it for some sizes).
- Optimiser: Adam with betas (0.9, 0.99), lr 0.01 for theta_gamma (paper: 0.01 Polyp, 0.005
  OD/OC) and 0.01 for the prompt (authors); ``optimizer="sgd"`` gives Algorithm 1's literal
  ``theta <- theta - eta * grad`` instead.
- Algorithm 1 is followed literally for the passes (theta_gamma accumulates two steps within
  an image, the output uses it). The authors' code instead restarts theta_gamma from the
  pre-trained weights inside every forward and keeps one Adam state across images.
- Momentum ``m = 0.2`` in Eq. 3 as the paper states (the authors' code uses 0.8 in the same
  formula).

``procedure="official"`` follows the authors' code instead of Algorithm 1 where they differ:
momentum 0.8 (unless given); theta_gamma restarts from the pre-trained weights for the output
forward and takes exactly one Adam step there (pass 1 only learns the prompt); the Adam states
of theta_gamma and of the prompt are carried from image to image (in ``DUSEState``; reset with
``reset_adaptation()``). One difference remains: the authors' ``odeint_adjoint`` call carries no
gradient to C(gamma) through the solve (gamma is not among its adjoint parameters), so their
L_n gradient holds y(t1) fixed; here it is the full gradient of L_n.

Cross-image state (memory bank, image count) is a ``DUSEState`` outside the model's
``state_dict``; with ``continual=False`` nothing at all carries over between images.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from networks.arguments import as_sequence, check_finite_number, check_positive_int


PROCEDURES = ("paper", "official")
# Eq. 3's m: the paper's text says 0.2, the authors' code uses 0.8.
PROCEDURE_MOMENTUM = {"paper": 0.2, "official": 0.8}


@dataclasses.dataclass(frozen=True)
class DUSEConfig:
    """DUSE hyper-parameters; defaults are the paper's Polyp configuration.

    Immutable: set a new one on the model (``model.duse_config = dataclasses.replace(
    model.duse_config, k=500.0, lr=0.005)`` for the paper's OD/OC setting), so the model always
    sees a validated whole.

    alpha: prompt size as a fraction of the image side (paper 0.01).
    momentum: m of Eq. 3 for the running f-statistics; None: 0.2 (paper) or 0.8 (authors' code)
        by ``procedure``.
    h_base: H_base of Eq. 6 (paper 0.5).
    k: H_CNM = k * H_base for the CNM-Block's BNs (paper 1000 Polyp, 500 OD/OC).
    lr: learning rate of theta_gamma (paper 0.01 Polyp, 0.005 OD/OC).
    prompt_lr: learning rate of the prompt (authors' code 0.01).
    optimizer: "adam" (paper / authors) or "sgd" (Algorithm 1's plain gradient step).
    betas: Adam betas (authors' code (0.9, 0.99)).
    memory_size: prompt memory bank capacity (authors 40); 0 disables the bank.
    neighbours: stored prompts averaged to initialise a new one (authors 16).
    temperature: softmax temperature over cosine similarities (authors 0.2).
    warm_n: warm-up constant of the BN statistics mix (authors 5).
    continual: keep the memory bank and image count across images (authors); False treats
        every image independently, as if it were the first.
    procedure: "paper" (Algorithm 1: two passes, both stepping theta_gamma, fresh optimisers
        per image) or "official" (the authors' code; see the module docstring).
    """

    alpha: float = 0.01
    momentum: float | None = None
    h_base: float = 0.5
    k: float = 1000.0
    lr: float = 0.01
    prompt_lr: float = 0.01
    optimizer: str = "adam"
    betas: tuple[float, float] = (0.9, 0.99)
    memory_size: int = 40
    neighbours: int = 16
    temperature: float = 0.2
    warm_n: float = 5.0
    continual: bool = True
    procedure: str = "paper"

    def __post_init__(self):
        if self.procedure not in PROCEDURES:
            raise ValueError(f"DUSEConfig: procedure must be one of {PROCEDURES}, got {self.procedure!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"DUSEConfig: optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if not isinstance(self.continual, bool):
            raise ValueError(f"DUSEConfig: continual must be True or False, got {self.continual!r}")
        momentum = PROCEDURE_MOMENTUM[self.procedure] if self.momentum is None else self.momentum
        betas = as_sequence(self.betas) or ()
        if len(betas) != 2:
            raise ValueError(f"DUSEConfig: betas must be a pair of numbers in [0, 1), got {self.betas!r}")
        checked = {
            "alpha": check_finite_number(self.alpha, "DUSEConfig: alpha", above=0.0, maximum=1.0),
            "momentum": check_finite_number(momentum, "DUSEConfig: momentum", minimum=0.0, maximum=1.0),
            **{name: check_finite_number(getattr(self, name), f"DUSEConfig: {name}", minimum=0.0)
               for name in ("h_base", "k", "lr", "prompt_lr")},
            "betas": tuple(check_finite_number(b, "DUSEConfig: betas", minimum=0.0, below=1.0) for b in betas),
            "memory_size": check_positive_int(self.memory_size, "DUSEConfig: memory_size", minimum=0),
            "neighbours": check_positive_int(self.neighbours, "DUSEConfig: neighbours"),
            "temperature": check_finite_number(self.temperature, "DUSEConfig: temperature", above=0.0),
            "warm_n": check_finite_number(self.warm_n, "DUSEConfig: warm_n", above=0.0),
        }
        for name, value in checked.items():  # frozen: the checked values are written once, here
            object.__setattr__(self, name, value)


# --------------------------------------------------------------------------- Fourier prompt (Eq. 5)


def prompt_shape(height: int, width: int, alpha: float) -> tuple[int, int]:
    return max(1, int(height * alpha)), max(1, int(width * alpha))


def _low_frequency_window(height: int, width: int, ph: int, pw: int) -> tuple[slice, slice]:
    """Rows/cols of the fftshift-ed spectrum covering ``ph x pw`` bins around zero frequency."""
    top, left = height // 2 - ph // 2, width // 2 - pw // 2
    return slice(top, top + ph), slice(left, left + pw)


def apply_prompt(x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    """Eq. 5: scale the low-frequency amplitude of ``x`` by ``prompt``, keep the phase."""
    height, width = x.shape[-2:]
    rows, cols = _low_frequency_window(height, width, prompt.shape[-2], prompt.shape[-1])
    spectrum = torch.fft.fft2(x, dim=(-2, -1))
    amplitude, phase = spectrum.abs(), spectrum.angle()
    # OnePad: ones everywhere except the centred window, which holds the prompt.
    top, left = rows.start, cols.start
    one_pad = F.pad(prompt - 1.0, (left, width - left - prompt.shape[-1], top, height - top - prompt.shape[-2])) + 1.0
    amplitude = torch.fft.ifftshift(torch.fft.fftshift(amplitude, dim=(-2, -1)) * one_pad, dim=(-2, -1))
    return torch.fft.ifft2(torch.polar(amplitude, phase), dim=(-2, -1)).real


def low_frequency_amplitude(x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """The memory bank's key: the ``ph x pw`` centred block of the shifted amplitude spectrum."""
    rows, cols = _low_frequency_window(x.shape[-2], x.shape[-1], ph, pw)
    return torch.fft.fftshift(torch.fft.fft2(x, dim=(-2, -1)).abs(), dim=(-2, -1))[..., rows, cols]


# --------------------------------------------------------------------------- memory bank


class PromptMemory:
    """FIFO bank of (low-frequency key, learned prompt); initialises prompts from neighbours."""

    def __init__(self):
        self.keys: list[torch.Tensor] = []
        self.prompts: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.keys)

    def push(self, key: torch.Tensor, prompt: torch.Tensor, capacity: int) -> None:
        if capacity <= 0:
            return
        self.keys.append(key.detach().flatten().clone())
        self.prompts.append(prompt.detach().clone())
        while len(self.keys) > capacity:
            self.keys.pop(0)
            self.prompts.pop(0)

    def initial_prompt(self, key: torch.Tensor, neighbours: int, temperature: float) -> torch.Tensor | None:
        if len(self.keys) < neighbours:
            return None
        keys = torch.stack(self.keys)
        query = key.detach().flatten().to(keys.dtype)
        similarity = F.cosine_similarity(keys, query.unsqueeze(0), dim=1)
        top = similarity.topk(neighbours).indices
        weights = torch.softmax(similarity[top] / temperature, dim=0)
        stacked = torch.stack([self.prompts[i] for i in top.tolist()])
        return (weights.view(-1, *[1] * (stacked.dim() - 1)).to(stacked.dtype) * stacked).sum(dim=0)


@dataclasses.dataclass
class DUSEState:
    """What DUSE carries from one image to the next when ``continual`` (never model weights)."""

    memory: PromptMemory = dataclasses.field(default_factory=PromptMemory)
    images_seen: int = 0
    # procedure="official": optimiser states (``Optimizer.state_dict()``) carried across images.
    optimizer_states: dict = dataclasses.field(default_factory=dict)

    def reset(self) -> None:
        self.memory = PromptMemory()
        self.images_seen = 0
        self.optimizer_states = {}


# --------------------------------------------------------------------------- losses


def f_statistics_loss(f0: torch.Tensor, f1: torch.Tensor, running_mean: torch.Tensor,
                      running_var: torch.Tensor) -> torch.Tensor:
    """Eq. 4 for one image: mean over the two time points of |mu - M| + |sigma - sqrt(V)|."""
    terms = []
    for row, f in enumerate((f0, f1)):
        mean = f.mean(dim=(2, 3))
        std = f.std(dim=(2, 3))
        terms.append((mean - running_mean[row]).abs().mean() + (std - running_var[row].sqrt()).abs().mean())
    return sum(terms) / len(terms)


class _AdaptiveBatchNorm:
    """Forward hooks making every BatchNorm2d normalise with warm-up mixed statistics and
    record its Eq. 6 term; removed on exit (the modules and their buffers are untouched)."""

    def __init__(self, model: nn.Module, cnm_modules: set[int], images_seen: int, warm_n: float):
        self.mix = 1.0 / (math.sqrt(images_seen) / warm_n + 1.0)
        self.terms: list[tuple[bool, torch.Tensor]] = []
        self.handles = []
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                in_cnm = id(module) in cnm_modules
                self.handles.append(module.register_forward_hook(self._hook(in_cnm)))

    def _hook(self, in_cnm: bool):
        def hook(module: nn.BatchNorm2d, args, output):
            x = args[0]
            source_mean = module.running_mean.view(1, -1, 1, 1)
            source_var = module.running_var.view(1, -1, 1, 1)
            image_mean = x.mean(dim=(2, 3), keepdim=True)
            image_std = x.std(dim=(2, 3), keepdim=True)
            self.terms.append((in_cnm, (source_mean - image_mean).abs().mean()
                               + (source_var.sqrt() - image_std).abs().mean()))
            batch_mean = x.mean(dim=(0, 2, 3), keepdim=True).detach()
            batch_var = x.var(dim=(0, 2, 3), keepdim=True).detach()
            mean = self.mix * batch_mean + (1.0 - self.mix) * source_mean
            var = self.mix * batch_var + (1.0 - self.mix) * source_var
            out = (x - mean) / torch.sqrt(var + module.eps)
            if module.affine:
                out = out * module.weight.view(1, -1, 1, 1) + module.bias.view(1, -1, 1, 1)
            return out
        return hook

    def prompt_loss(self, h_base: float, k: float) -> torch.Tensor:
        weighted = [(k * h_base if in_cnm else h_base) * term for in_cnm, term in self.terms]
        return sum(weighted) / len(weighted)

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


@contextlib.contextmanager
def adaptive_batch_norm(model: nn.Module, cnm_block: nn.Module, images_seen: int, warm_n: float):
    cnm_ids = {id(m) for m in cnm_block.modules() if isinstance(m, nn.BatchNorm2d)}
    hooks = _AdaptiveBatchNorm(model, cnm_ids, images_seen, warm_n)
    try:
        yield hooks
    finally:
        hooks.close()


# --------------------------------------------------------------------------- Algorithm 1


def _optimizer(params, lr: float, config: DUSEConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=config.betas)
    return torch.optim.SGD(params, lr=lr)


def _step(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], grads) -> None:
    for p, g in zip(params, grads):
        p.grad = torch.zeros_like(p) if g is None else g
    optimizer.step()


def adapt_one(model: nn.Module, image: torch.Tensor, config: DUSEConfig, state: DUSEState) -> torch.Tensor:
    """Algorithm 1 on one image [1, C, H, W]; returns its logits [1, num_classes, H, W]."""
    block = model.cnm_block
    images_seen = state.images_seen + 1 if config.continual else 1
    ph, pw = prompt_shape(image.shape[-2], image.shape[-1], config.alpha)
    key = low_frequency_amplitude(image, ph, pw)
    init = state.memory.initial_prompt(key, config.neighbours, config.temperature) if config.continual else None
    prompt = (init if init is not None else image.new_ones(1, image.shape[1], ph, pw)).to(image.dtype)
    prompt = prompt.detach().clone().requires_grad_(True)
    theta = {name: p.detach().clone().requires_grad_(True) for name, p in block.gamma_conv_parameters().items()}
    theta_list = list(theta.values())
    theta_opt = _optimizer(theta_list, config.lr, config)
    prompt_opt = _optimizer([prompt], config.prompt_lr, config)
    running = (block.f_running_mean, block.f_running_var)
    official = config.procedure == "official"
    if official:
        _restore(theta_opt, state, "theta")
        _restore(prompt_opt, state, "prompt")

    with adaptive_batch_norm(model, block, images_seen, config.warm_n) as bn:
        if official:
            logits = _official_passes(model, image, prompt, theta, theta_opt, prompt_opt, bn, running, config)
        else:
            logits = _paper_passes(model, image, prompt, theta, theta_opt, prompt_opt, bn, running, config)

    if official:
        state.optimizer_states = {"theta": theta_opt.state_dict(), "prompt": prompt_opt.state_dict()}
    if config.continual:
        state.images_seen = images_seen
        state.memory.push(key, prompt, config.memory_size)
    return logits.detach()


def _restore(optimizer: torch.optim.Optimizer, state: DUSEState, name: str) -> None:
    saved = state.optimizer_states.get(name)
    if saved is not None:
        optimizer.load_state_dict(saved)


def _official_passes(model, image, prompt, theta, theta_opt, prompt_opt, bn, running, config) -> torch.Tensor:
    """Pass 1 learns the prompt (theta_gamma at its pre-trained value); the output forward takes
    one Adam step on theta_gamma from the pre-trained value and uses it."""
    theta_list = list(theta.values())
    model.forward_parts(apply_prompt(image, prompt), need_f=True, nmode_params=theta)
    (grad_prompt,) = torch.autograd.grad(bn.prompt_loss(config.h_base, config.k), [prompt], allow_unused=True)
    _step(prompt_opt, [prompt], [grad_prompt])
    bn.terms.clear()
    adapted = apply_prompt(image, prompt.detach())
    _, f0, f1 = model.forward_parts(adapted, need_f=True, nmode_params=theta)
    _step(theta_opt, theta_list, torch.autograd.grad(f_statistics_loss(f0, f1, *running), theta_list,
                                                     allow_unused=True))
    bn.terms.clear()
    with torch.no_grad():
        return model.forward_parts(adapted, nmode_params={n: p.detach() for n, p in theta.items()})


def _paper_passes(model, image, prompt, theta, theta_opt, prompt_opt, bn, running, config) -> torch.Tensor:
    """Algorithm 1: two passes stepping theta_gamma, the first also the prompt."""
    theta_list = list(theta.values())
    # First forward / backward pass: L_n -> theta_gamma, L_p -> prompt.
    _, f0, f1 = model.forward_parts(apply_prompt(image, prompt), need_f=True, nmode_params=theta)
    loss_n = f_statistics_loss(f0, f1, *running)
    loss_p = bn.prompt_loss(config.h_base, config.k)
    grads_theta = torch.autograd.grad(loss_n, theta_list, retain_graph=True, allow_unused=True)
    (grad_prompt,) = torch.autograd.grad(loss_p, [prompt], allow_unused=True)
    _step(theta_opt, theta_list, grads_theta)
    _step(prompt_opt, [prompt], [grad_prompt])
    bn.terms.clear()
    # Second pass on the recomputed adapted image: L_n -> theta_gamma.
    _, f0, f1 = model.forward_parts(apply_prompt(image, prompt.detach()), need_f=True, nmode_params=theta)
    loss_n = f_statistics_loss(f0, f1, *running)
    _step(theta_opt, theta_list, torch.autograd.grad(loss_n, theta_list, allow_unused=True))
    bn.terms.clear()
    with torch.no_grad():
        detached = {name: p.detach() for name, p in theta.items()}
        return model.forward_parts(apply_prompt(image, prompt.detach()), nmode_params=detached)


def adapt_images(model: nn.Module, images: torch.Tensor, config: DUSEConfig, state: DUSEState) -> torch.Tensor:
    """DUSE on every image of the batch in turn (in eval mode, grad enabled); logits [B, K, H, W]."""
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            outs = [adapt_one(model, images[i:i + 1], config, state) for i in range(images.shape[0])]
    finally:
        model.train(was_training)
    return torch.cat(outs, dim=0)
