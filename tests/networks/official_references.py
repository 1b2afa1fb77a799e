"""Independent torchdiffeq-built equivalents of the two official networks, written here from
the papers and the facts measured on the authors' code (no code copied). Their parameter names
follow the authors' modules, so their ``state_dict()`` is what an authors' checkpoint holds and
``networks.load_official`` can be tested against them.

``AuthorsContinuousUNet`` (``ConvSODEUNet``, 4 levels): the raw image x0 is concatenated with
``g(x0)`` into the 2nf-channel state; each block solves ``dz/dt = F(z)`` over [0, 1] with
torchdiffeq (F: instance norm, 3x3 conv, act, instance norm, 1x1 conv, act; 2C -> 2C);
1x1 transitions 2C -> 4C going down, [up(z), skip] -> 2C going up; an unused ``input_1x1``.

``AuthorsCNMUNet`` (``CNM_UNet``): DoubleConv encoder, fusion by five 3x3 convs with constant
weights 1 and bias 0, softplus + BN, nmODE solved by ``torchdiffeq.odeint_adjoint`` whose RHS
holds C(Gamma) as a plain tensor (so Gamma and C get no gradient), BN, act, dropout, 1x1 conv.
Returns logits (the authors' forward ends in a sigmoid). f-statistics with momentum 0.8.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchdiffeq
from torch import nn

from networks.layers import activation


class AuthorsField(nn.Module):
    """norm1 -> conv1 (3x3) -> act -> norm2 -> conv2 (1x1) -> act, channels -> channels."""

    def __init__(self, channels: int, act: str):
        super().__init__()
        self.norm1 = nn.InstanceNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.InstanceNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 1)
        self.non_linearity = activation(act)

    def forward(self, t, z):
        out = self.non_linearity(self.conv1(self.norm1(z)))
        return self.non_linearity(self.conv2(self.norm2(out)))


class AuthorsInitialVelocity(AuthorsField):
    def forward(self, x0):
        return torch.cat([x0, super().forward(None, x0)], dim=1)


class AuthorsODEBlock(nn.Module):
    def __init__(self, channels: int, act: str, method: str, tol: float, adjoint: bool):
        super().__init__()
        self.odefunc = AuthorsField(channels, act)
        self.method, self.tol, self.adjoint = method, tol, adjoint

    def forward(self, z):
        t = torch.tensor([0.0, 1.0], dtype=z.dtype)
        solve = torchdiffeq.odeint_adjoint if self.adjoint else torchdiffeq.odeint
        return solve(self.odefunc, z, t, rtol=self.tol, atol=self.tol, method=self.method)[-1]


class AuthorsContinuousUNet(nn.Module):
    def __init__(self, num_filters: int = 3, output_dim: int = 1, act: str = "lrelu", method: str = "rk4",
                 tol: float = 1e-6, adjoint: bool = True):
        super().__init__()
        nf = num_filters

        def block(c):
            return AuthorsODEBlock(c, act, method, tol, adjoint)

        self.input_1x1 = nn.Conv2d(3, nf, 1)
        self.initial_velocity = AuthorsInitialVelocity(nf, act)
        self.odeblock_down1, self.conv_down1_2 = block(2 * nf), nn.Conv2d(2 * nf, 4 * nf, 1)
        self.odeblock_down2, self.conv_down2_3 = block(4 * nf), nn.Conv2d(4 * nf, 8 * nf, 1)
        self.odeblock_down3, self.conv_down3_4 = block(8 * nf), nn.Conv2d(8 * nf, 16 * nf, 1)
        self.odeblock_down4, self.conv_down4_embed = block(16 * nf), nn.Conv2d(16 * nf, 32 * nf, 1)
        self.odeblock_embedding = block(32 * nf)
        self.conv_up_embed_1, self.odeblock_up1 = nn.Conv2d(48 * nf, 16 * nf, 1), block(16 * nf)
        self.conv_up1_2, self.odeblock_up2 = nn.Conv2d(24 * nf, 8 * nf, 1), block(8 * nf)
        self.conv_up2_3, self.odeblock_up3 = nn.Conv2d(12 * nf, 4 * nf, 1), block(4 * nf)
        self.conv_up3_4, self.odeblock_up4 = nn.Conv2d(6 * nf, 2 * nf, 1), block(2 * nf)
        self.classifier = nn.Conv2d(2 * nf, output_dim, 1)
        self.non_linearity = activation(act)

    def forward(self, x):
        z = self.initial_velocity(x)
        skips = []
        for block, conv in ((self.odeblock_down1, self.conv_down1_2), (self.odeblock_down2, self.conv_down2_3),
                            (self.odeblock_down3, self.conv_down3_4), (self.odeblock_down4, self.conv_down4_embed)):
            skips.append(block(z))
            z = F.interpolate(self.non_linearity(conv(skips[-1])), scale_factor=0.5, mode="bilinear",
                              align_corners=False)
        z = self.odeblock_embedding(z)
        for conv, block in ((self.conv_up_embed_1, self.odeblock_up1), (self.conv_up1_2, self.odeblock_up2),
                            (self.conv_up2_3, self.odeblock_up3), (self.conv_up3_4, self.odeblock_up4)):
            z = F.interpolate(z, scale_factor=2, mode="bilinear", align_corners=False)
            z = block(self.non_linearity(conv(torch.cat([z, skips.pop()], dim=1))))
        return self.classifier(z)


# --------------------------------------------------------------------------- CNM-UNet


class AuthorsDoubleConv(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.double_conv = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())

    def forward(self, x):
        return self.double_conv(x)


class AuthorsDown(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), AuthorsDoubleConv(cin, cout))

    def forward(self, x):
        return self.maxpool_conv(x)


class _NmodeRHS(nn.Module):
    def __init__(self, phase: torch.Tensor):
        super().__init__()
        self.phase = phase  # a plain tensor: not a parameter, so the adjoint ignores it

    def forward(self, t, y):
        return -y + torch.sin(y + self.phase) ** 2


class AuthorsSolver(nn.Module):
    def __init__(self, channels: int, delta: float, rtol: float, atol: float, momentum: float = 0.8):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        for name, init in (("running_mean1", 0.0), ("running_var1", 1.0), ("running_mean2", 0.0),
                           ("running_var2", 1.0)):
            setattr(self, name, nn.Parameter(torch.full((channels,), init), requires_grad=False))
        self.delta, self.rtol, self.atol, self.momentum = delta, rtol, atol, momentum

    def forward(self, gamma, y0):
        rhs = _NmodeRHS(self.conv1(gamma))
        t = torch.tensor([0.0, self.delta], dtype=y0.dtype)
        solution = torchdiffeq.odeint_adjoint(rhs, y0, t, rtol=self.rtol, atol=self.atol, method="dopri5")
        if self.training:
            with torch.no_grad():
                m = self.momentum
                for k, y in enumerate(solution, start=1):
                    f = rhs(t, y)
                    mean, var = getattr(self, f"running_mean{k}"), getattr(self, f"running_var{k}")
                    mean.data = (1 - m) * mean.data + m * f.mean(dim=(0, 2, 3))
                    var.data = (1 - m) * var.data + m * f.var(dim=(0, 2, 3))
        return solution[-1]


class AuthorsCNMBlock(nn.Module):
    def __init__(self, widths, channels: int, delta: float, rtol: float, atol: float):
        super().__init__()
        for i, w in enumerate(widths, start=1):
            setattr(self, f"g{i}", nn.Conv2d(w, channels, 3, padding=1))
        self.sigma = nn.Sequential(nn.Softplus(), nn.BatchNorm2d(channels))
        self.sigma2 = nn.Sequential(nn.BatchNorm2d(channels))
        self.Con_solver = AuthorsSolver(channels, delta, rtol, atol)

    def forward(self, gamma, features):
        fused = 0.0
        for i, x in enumerate(features, start=1):
            fused = fused + F.interpolate(getattr(self, f"g{i}")(1.0 * x), scale_factor=2 ** (i - 1),
                                          mode="bilinear", align_corners=False)
        y0 = self.sigma(fused)
        return self.sigma2(self.Con_solver(gamma.expand(y0.shape[0], -1, -1, -1), y0))


class AuthorsCNMUNet(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 1, image_size: int = 256, channels: int = 3,
                 widths=(64, 128, 256, 512, 512), act: str = "gelu", delta: float = 0.05, rtol: float = 1e-7,
                 atol: float = 1e-9):
        super().__init__()
        self.inc = AuthorsDoubleConv(in_channels, widths[0])
        for i in range(1, 5):
            setattr(self, f"down{i}", AuthorsDown(widths[i - 1], widths[i]))
        self.Mult_up = AuthorsCNMBlock(widths, channels, delta, rtol, atol)
        self.outc = nn.Module()
        self.outc.conv = nn.Conv2d(channels, num_classes, 1)
        self.Gamma = nn.Parameter(torch.zeros(1, channels, image_size, image_size))
        self.act = activation(act)

    def forward(self, x):
        features = [self.inc(x)]
        for i in range(1, 5):
            features.append(getattr(self, f"down{i}")(features[-1]))
        return self.outc.conv(self.act(self.Mult_up(self.Gamma, features)))
