"""networks.train: bit-exact resume (epoch boundary and Ctrl-C mid-epoch), checkpoints and
history on disk, paper defaults, loss, CLI."""

import json
import os
import signal

import pytest
import torch
from torch import nn

from networks import checkpoint as ckpt
from networks import train as training
from networks.train import TrainConfig, TrainingInterrupted
from odekern.testing import assert_close

TINY = dict(model="unet", block="pln", model_options={"base_filters": 4, "levels": 2}, size=32, num_train=12,
            num_val=4, batch_size=4, progress=False, threads=1)


def _cfg(tmp_path, name, **over):
    return TrainConfig(**{**TINY, "out": str(tmp_path / name), **over})


def _weights(path):
    return ckpt.torch_load(path)["model_state"]


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_after_an_epoch_is_bit_exact(tmp_path):
    straight = training.run(_cfg(tmp_path, "straight", epochs=2))
    training.run(_cfg(tmp_path, "split", epochs=1))
    resumed = training.run(_cfg(tmp_path, "split", epochs=2, resume="auto"))
    assert resumed["step_losses"] == straight["step_losses"]
    assert [e["train_loss"] for e in resumed["epochs"]] == [e["train_loss"] for e in straight["epochs"]]
    assert [e["val_dice"] for e in resumed["epochs"]] == [e["val_dice"] for e in straight["epochs"]]
    _assert_same_weights(_weights(tmp_path / "split" / "last.pt"), _weights(tmp_path / "straight" / "last.pt"))


def test_resume_refuses_settings_it_would_not_apply(tmp_path):
    """The resumed run keeps the checkpoint's settings; a different one given with --resume was
    dropped silently (training went on at the stored learning rate), now it is named."""
    training.run(_cfg(tmp_path, "run", epochs=1))
    with pytest.raises(ValueError, match=r"--lr 0\.1 \(stored: 0\.001\); --seed 3 \(stored: 0\) would not apply"):
        training.run(_cfg(tmp_path, "run", epochs=2, resume="auto", lr=0.1, seed=3))
    assert ckpt.torch_load(tmp_path / "run" / "last.pt")["epoch"] == 1  # nothing trained or written
    # The stored values themselves, and the settings a resume may change, are fine.
    history = training.run(_cfg(tmp_path, "run", epochs=2, resume="auto", lr=0.001, workers=0))
    assert len(history["epochs"]) == 2


class _DropoutNet(nn.Module):
    """Test-only stand-in with dropout, so resume must also restore the global RNG."""

    def __init__(self, in_channels=3, num_classes=1):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                                  nn.Dropout(0.3), nn.Conv2d(6, num_classes, 3, padding=1))

    def forward(self, x):
        return self.body(x)


def test_ctrl_c_mid_epoch_saves_and_resumes_bit_exactly(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt, "build_network", lambda name, c, k, options, size=None: _DropoutNet(c, k))
    base = dict(model="dropout-standin", model_options={})
    straight = training.run(_cfg(tmp_path, "straight", epochs=2, **base))

    def press_ctrl_c(info):
        if info["epoch"] == 1 and info["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)  # a real SIGINT through the handler

    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN when run under nohup
    with pytest.raises(TrainingInterrupted) as stopped:
        training.run(_cfg(tmp_path, "cut", epochs=2, **base), step_callback=press_ctrl_c)
    saved = ckpt.torch_load(stopped.value.checkpoint_path)
    assert (saved["epoch"], saved["step_in_epoch"]) == (1, 2)
    assert json.loads((tmp_path / "cut" / "history.json").read_text())["status"] == "interrupted"
    assert signal.getsignal(signal.SIGINT) is handler_before  # handler restored

    resumed = training.run(_cfg(tmp_path, "cut", epochs=2, resume=str(stopped.value.checkpoint_path), **base))
    assert resumed["step_losses"] == straight["step_losses"]
    assert resumed["epochs"] == [{**e, "seconds": r["seconds"]} for e, r in zip(straight["epochs"], resumed["epochs"])]
    _assert_same_weights(_weights(tmp_path / "cut" / "last.pt"), _weights(tmp_path / "straight" / "last.pt"))


def test_outputs_on_disk(tmp_path):
    history = training.run(_cfg(tmp_path, "run", epochs=2))
    out = tmp_path / "run"
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "history.json", "last.pt"]
    on_disk = json.loads((out / "history.json").read_text())
    assert on_disk["status"] == "complete" and len(on_disk["epochs"]) == 2
    assert on_disk["step_losses"] == history["step_losses"]
    state = ckpt.torch_load(out / "last.pt")
    assert state["epoch"] == 2 and state["model"]["options"] == {"base_filters": 4, "levels": 2, "block": "pln"}
    model, _ = ckpt.load_model(out / "best.pt")
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 1, 32, 32)


def test_training_reduces_the_loss(tmp_path):
    history = training.run(_cfg(tmp_path, "learn", epochs=4, lr=1e-2, num_train=16, augment=False))
    losses = [e["train_loss"] for e in history["epochs"]]
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize("model, optimizer, schedule", [
    ("cnm-unet", torch.optim.AdamW, torch.optim.lr_scheduler.CosineAnnealingLR),
    ("continuous-unet", torch.optim.Adam, torch.optim.lr_scheduler.StepLR),
])
def test_paper_defaults(model, optimizer, schedule):
    cfg = TrainConfig(model=model).resolved()
    opt, sched = training.build_optimizer(cfg, [nn.Parameter(torch.zeros(1))])
    assert type(opt) is optimizer and type(sched) is schedule
    if model == "cnm-unet":
        assert (sched.T_max, sched.eta_min, cfg.batch_size, cfg.loss) == (50, 1e-5, 8, "bce+dice")
    else:
        assert (sched.step_size, sched.gamma, cfg.lr, cfg.batch_size, cfg.loss) == (1, 0.999, 1e-3, 16, "bce")
    assert TrainConfig(model=model, lr=0.5).resolved().lr == 0.5  # explicit flags win


@pytest.mark.parametrize("model", ["cnm-unet", "continuous-unet"])
def test_fused_optimizer_steps_like_the_per_tensor_loop(model):
    """build_optimizer picks Adam(W)'s fused kernel on CPU; its updates are the textbook ones."""
    cfg = TrainConfig(model=model).resolved()
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(shape, generator=gen) for shape in ((7, 3), (5,))]
    grads = [[torch.randn(p.shape, generator=gen) for p in start] for _ in range(3)]
    results = []
    for build in (training.build_optimizer,
                  lambda c, ps: (type(training.build_optimizer(c, ps)[0])(ps, lr=c.lr, weight_decay=c.weight_decay),)):
        params = [nn.Parameter(p.clone()) for p in start]
        opt = build(cfg, params)[0]
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            opt.step()
        results.append([p.detach() for p in params])
    assert training.build_optimizer(cfg, [nn.Parameter(torch.zeros(1))])[0].defaults["fused"]
    for fused, loop in zip(*results):
        assert_close(fused, loop)


def test_bce_dice_loss_matches_formula():
    logits = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    target = (torch.rand(3, 1, 8, 8) > 0.5).double()
    p = torch.sigmoid(logits)
    bce = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()
    inter, total = (p * target).sum((1, 2, 3)), (p + target).sum((1, 2, 3))
    dice = (1 - (2 * inter + 1e-5) / (total + 1e-5)).mean()
    torch.testing.assert_close(training.SegmentationLoss("bce+dice")(logits, target), bce + dice)
    torch.testing.assert_close(training.SegmentationLoss("bce")(logits, target), bce)
    with pytest.raises(ValueError, match="loss"):
        training.SegmentationLoss("focal")


def test_flags_reach_the_model_options():
    args = training.build_parser().parse_args(
        ["--model", "continuous-unet", "--solver", "euler", "--gradient", "adjoint", "--option", "base_filters=2",
         "--option", "act=relu"])
    options = training.config_from_args(args).network_options()
    assert options == {"base_filters": 2, "act": "relu", "method": "euler", "gradient": "adjoint"}


def test_cli_main_and_bad_arguments(tmp_path, capsys):
    argv = ["--model", "unet", "--block", "pln", "--option", "base_filters=4", "--option", "levels=2", "--size", "32",
            "--num-train", "8", "--num-val", "4", "--epochs", "1", "--batch-size", "4", "--no-progress",
            "--threads", "1", "--out", str(tmp_path / "cli")]
    assert training.main(argv) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["epoch"] == 1
    with pytest.raises(SystemExit) as exited:
        training.main(argv + ["--epochs", "0"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith("odekern-train: argument --epochs: must be an integer >= 1, got 0")
    assert training.main(argv + ["--data", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("odekern-train: --data must be")
    with pytest.raises(FileNotFoundError, match="last.pt"):
        training.run(_cfg(tmp_path, "never-trained", resume="auto"))


class _Standin(nn.Module):
    """A one-conv segmenter whose step ``poison_at`` (1-based forward count in training) gives
    either NaN logits or finite logits with a NaN gradient."""

    def __init__(self, poison_at, kind, in_channels=3, num_classes=1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_classes, 3, padding=1)
        self.poison_at, self.kind, self.calls = poison_at, kind, 0

    def forward(self, x):
        out = self.conv(x)
        if self.training:
            self.calls += 1
        if self.training and self.calls == self.poison_at:
            if self.kind == "logits":
                return out * float("nan")
            # sqrt's derivative at 0 is inf, times 0: a finite forward with a NaN gradient
            return out + 0 * torch.sqrt(self.conv.bias - self.conv.bias).sum()
        return out


def _standin_run(tmp_path, monkeypatch, poison_at, kind, name="run", epochs=1):
    net = {}

    def build(name_, c, k, options, size=None):
        net["model"] = _Standin(poison_at, kind, c, k)
        return net["model"]

    monkeypatch.setattr(ckpt, "build_network", build)
    snapshots = []
    cfg = _cfg(tmp_path, name, model="standin", model_options={}, epochs=epochs, augment=False)
    return net, snapshots, lambda: training.run(
        cfg, step_callback=lambda info: snapshots.append({k: v.clone() for k, v in net["model"].state_dict().items()}))


def test_a_nan_gradient_stops_training_before_the_step_is_applied(tmp_path, monkeypatch):
    # With 12 images in batches of 4: three steps an epoch; the fifth step's gradient is NaN.
    net, snapshots, run = _standin_run(tmp_path, monkeypatch, poison_at=5, kind="gradient", epochs=2)
    with pytest.raises(training.TrainingDiverged,
                       match=r"training diverged at epoch 2 step 2: the gradient is NaN or inf .* not applied"):
        run()
    weights = net["model"].state_dict()
    assert all(torch.isfinite(w).all() for w in weights.values())
    _assert_same_weights(weights, snapshots[-1])  # the state after step 4, untouched by step 5
    saved = ckpt.torch_load(tmp_path / "run" / "last.pt")
    assert saved["epoch"] == 1 and all(torch.isfinite(w).all() for w in saved["model_state"].values())


def test_nan_logits_stop_training_as_divergence_only_after_an_update(tmp_path, monkeypatch):
    _, _, run = _standin_run(tmp_path, monkeypatch, poison_at=2, kind="logits", name="late")
    with pytest.raises(training.TrainingDiverged, match=r"training diverged at epoch 1 step 2: the gradient is NaN "
                                                        r"or inf \(loss nan, learning rate"):
        run()
    # Before any update, the same failure is the model's or the data's, reported as it is.
    _, _, run = _standin_run(tmp_path, monkeypatch, poison_at=1, kind="logits", name="first")
    with pytest.raises(ValueError, match=r"^epoch 1 step 1: the gradient is NaN or inf \(loss nan\) before any "
                                         "weight update") as raised:
        run()
    assert not isinstance(raised.value, training.TrainingDiverged)


def test_a_resumed_run_counts_the_updates_made_before_it(tmp_path, monkeypatch):
    _, _, run = _standin_run(tmp_path, monkeypatch, poison_at=0, kind="", name="resumed")
    run()  # one clean epoch: three updates
    # The resumed process's first step gives NaN logits: weights that were updated, so divergence.
    monkeypatch.setattr(ckpt, "build_network", lambda name, c, k, options, size=None: _Standin(1, "logits", c, k))
    with pytest.raises(training.TrainingDiverged, match=r"^training diverged at epoch 2 step 1: the gradient is "
                                                        r"NaN or inf"):
        training.run(_cfg(tmp_path, "resumed", resume="auto", epochs=2, model="standin", model_options={},
                          augment=False))


def test_a_failure_met_after_updates_names_the_step_and_learning_rate(tmp_path, monkeypatch):
    # e.g. an ODE block's input check meeting the overflow of weights grown too large
    _, _, run = _standin_run(tmp_path, monkeypatch, poison_at=0, kind="", name="raise")
    original = _Standin.forward

    def forward(self, x):
        if self.training and self.calls == 2:
            raise ValueError("ODEBlock: x must be finite, but it contains NaN or inf")
        return original(self, x)

    monkeypatch.setattr(_Standin, "forward", forward)
    with pytest.raises(training.TrainingDiverged, match=r"^epoch 1 step 3, after 2 weight update\(s\) at learning "
                                                        r"rate .*: ODEBlock: x must be finite.*smaller --lr"):
        run()


def test_cli_reports_a_diverged_run_in_one_line(tmp_path, capsys):
    argv = ["--model", "vanilla-unet", "--optimizer", "sgd", "--lr", "1e8", "--schedule", "none", "--size", "32",
            "--num-train", "8", "--num-val", "4", "--epochs", "2", "--batch-size", "4", "--no-progress",
            "--threads", "1", "--out", str(tmp_path / "cli")]
    assert training.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("odekern-train: ") and "train again with a smaller --lr" in err and err.count("\n") == 1


@pytest.mark.parametrize("setting, value, says", [
    ("batch_size", 0, "batch_size must be an integer >= 1, got 0"),  # was range()'s "arg 3 must not be zero"
    ("epochs", 2.0, "epochs must be an integer >= 1, got 2.0"),
    ("lr", float("nan"), "lr must be a finite number > 0, got nan"),  # trained NaN weights
    ("val_fraction", 1.0, "val_fraction must be a finite number >= 0 and < 1, got 1.0"),
    ("max_steps_per_epoch", 0, "max_steps_per_epoch must be an integer >= 1, got 0"),  # meant "no limit"
])
def test_a_config_built_in_python_is_checked_as_the_command_line_is(tmp_path, setting, value, says):
    with pytest.raises(ValueError, match=f"^TrainConfig: {says}"):
        training.run(_cfg(tmp_path, "run", **{setting: value}))
    assert not (tmp_path / "run").exists()


def test_gradients_are_finite_is_exact():
    model = nn.Linear(1000, 2)
    assert training.gradients_are_finite(model)  # no gradient yet
    for bad in (float("nan"), float("inf"), float("-inf")):
        model.weight.grad, model.bias.grad = torch.zeros(2, 1000), torch.zeros(2)
        model.weight.grad[1, 7] = bad
        assert not training.gradients_are_finite(model), bad
    model.weight.grad[0, 0], model.weight.grad[1, 7] = float("inf"), float("-inf")  # a sum of NaN
    assert not training.gradients_are_finite(model)
    # Finite values whose float32 sum overflows are still finite gradients.
    model.weight.grad = torch.full((2, 1000), 3e36)
    assert torch.isinf(model.weight.grad.sum()) and training.gradients_are_finite(model)
