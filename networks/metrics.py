"""The papers' segmentation metrics, per image, from MONAI and torchmetrics.

Dice (DSC), IoU, pixel accuracy and the average Hausdorff distance (AHD). Thin wrappers:
the numbers come from ``monai.metrics`` and ``torchmetrics``; this module only fixes the
conventions the papers leave open, in one place:

* predictions are ``sigmoid(logits) > threshold`` (0.5);
* an image whose prediction and ground truth are both empty scores Dice = IoU = 1 and
  AHD = 0 (a perfect answer), matching MONAI's ``ignore_empty=False``;
* AHD is the mean of the two directed average surface distances (prediction -> truth and
  truth -> prediction, MONAI ``compute_average_surface_distance``), in pixels of the
  evaluated resolution; it is undefined (NaN) when exactly one of the two masks is empty,
  and such images are left out of the AHD mean and counted in ``ahd_undefined``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch

from networks.arguments import check_finite_number

# MONAI and torchmetrics are imported where used: importing MONAI costs seconds, which every
# torchrun worker and CLI start would pay before doing anything.

METRIC_NAMES = ("dice", "iou", "accuracy", "ahd")


def check_finite_logits(logits: torch.Tensor) -> None:
    """A model output with NaN or inf is no prediction: thresholded, NaN reads as background and
    would be scored (and saved) as if the model had answered."""
    if not bool(torch.isfinite(logits.detach()).all()):
        raise ValueError("the model's output (logits) contains NaN or inf, so there is no prediction to "
                         "threshold or score (weights that diverged in training give such output)")


def binarize(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    threshold = check_finite_number(threshold, "threshold", above=0.0, below=1.0)
    check_finite_logits(logits)
    return (torch.sigmoid(logits.detach().float()) > threshold).float()


def _check(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape or pred.dim() != 4 or pred.shape[1] != 1:
        raise ValueError(f"pred and target must both be [B, 1, H, W]; got {tuple(pred.shape)} and {tuple(target.shape)}")


def dice_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice of binary ``[B, 1, H, W]`` masks, one value per image."""
    _check(pred, target)
    from monai.metrics import compute_dice

    return compute_dice(pred.float(), target.float(), include_background=True, ignore_empty=False)[:, 0]


def iou_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    _check(pred, target)
    from monai.metrics import compute_iou

    return compute_iou(pred.float(), target.float(), include_background=True, ignore_empty=False)[:, 0]


def accuracy_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    _check(pred, target)
    from torchmetrics.functional.classification import binary_accuracy

    return binary_accuracy(pred.float(), target.int(), threshold=0.5, multidim_average="samplewise")


def ahd_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Average Hausdorff distance in pixels; 0 if both empty, NaN if exactly one is."""
    _check(pred, target)
    from monai.metrics import compute_average_surface_distance

    pred, target = pred.float().cpu(), target.float().cpu()
    with warnings.catch_warnings():
        # MONAI warns on every empty mask; emptiness is handled explicitly below.
        warnings.simplefilter("ignore")
        forward = compute_average_surface_distance(pred, target, include_background=True)[:, 0]
        backward = compute_average_surface_distance(target, pred, include_background=True)[:, 0]
    ahd = (forward + backward) / 2
    pred_empty = pred.flatten(1).sum(1) == 0
    target_empty = target.flatten(1).sum(1) == 0
    ahd = torch.where(pred_empty & target_empty, torch.zeros_like(ahd), ahd)
    return torch.where(pred_empty ^ target_empty, torch.full_like(ahd, math.nan), ahd)


def per_image_metrics(logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.5,
                      with_ahd: bool = True) -> dict[str, torch.Tensor]:
    pred = binarize(logits, threshold)
    target = target.float()
    out = {"dice": dice_per_image(pred, target), "iou": iou_per_image(pred, target),
           "accuracy": accuracy_per_image(pred, target)}
    if with_ahd:
        out["ahd"] = ahd_per_image(pred, target)
    return out


@dataclass
class MetricAccumulator:
    """Running sums of per-image metrics; ``summary()`` gives the dataset means."""

    sums: dict[str, float] = field(default_factory=lambda: {k: 0.0 for k in METRIC_NAMES})
    count: int = 0
    ahd_count: int = 0
    ahd_undefined: int = 0

    def update(self, values: dict[str, torch.Tensor]) -> None:
        n = int(values["dice"].numel())
        self.count += n
        for key in ("dice", "iou", "accuracy"):
            self.sums[key] += float(values[key].double().sum())
        if "ahd" in values:
            ahd = values["ahd"].double()
            finite = torch.isfinite(ahd)
            self.sums["ahd"] += float(ahd[finite].sum())
            self.ahd_count += int(finite.sum())
            self.ahd_undefined += int((~finite).sum())

    def summary(self) -> dict[str, float | int]:
        if self.count == 0:
            raise ValueError("no images were evaluated")
        out: dict[str, float | int] = {k: self.sums[k] / self.count for k in ("dice", "iou", "accuracy")}
        out["ahd"] = self.sums["ahd"] / self.ahd_count if self.ahd_count else math.nan
        out["ahd_undefined"] = self.ahd_undefined
        out["num_images"] = self.count
        return out
