"""Two-view augmentation as batched tensor operations on the training device.

The reference follows MoCo v3: random resized crop (scale 0.2-1), colour jitter
(0.4, 0.4, 0.2, 0.1) with p = 0.8, grayscale p = 0.2, Gaussian blur (p = 1.0 on view 1,
0.1 on view 2), solarize (p = 0.2, view 2 only), horizontal flip. Here every operation
acts on a whole uint8 batch at once (an affine grid for crop + flip, per-sample grouped
convolution for blur), so no per-image PIL work runs in loader processes. Random
parameters are drawn on the CPU from an explicit generator: the same seed gives the same
views on any device and any number of processes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ViewRecipe:
    """Probabilities and ranges of one view's augmentations (sigma as a fraction of the side)."""

    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    gray_p: float = 0.2
    blur_p: float = 1.0
    blur_sigma: tuple[float, float] = (0.1 / 224, 2.0 / 224)
    solarize_p: float = 0.0


RECIPES: dict[str, tuple[ViewRecipe, ViewRecipe]] = {
    # the paper's (MoCo v3) recipe for colour images
    "moco_v3": (ViewRecipe(blur_p=1.0), ViewRecipe(blur_p=0.1, solarize_p=0.2)),
    # small grayscale images (28-32 px): no hue/saturation/grayscale, milder blur,
    # the same asymmetry between the views
    "small_gray": (
        ViewRecipe(saturation=0.0, hue=0.0, gray_p=0.0, blur_p=0.5, blur_sigma=(0.1 / 28, 1 / 28)),
        ViewRecipe(saturation=0.0, hue=0.0, gray_p=0.0, blur_p=0.1, blur_sigma=(0.1 / 28, 1 / 28),
                   solarize_p=0.2),
    ),
    # small grayscale images, plainer: crop, flip and brightness/contrast only
    "small_plain": (
        ViewRecipe(saturation=0.0, hue=0.0, gray_p=0.0, blur_p=0.0),
        ViewRecipe(saturation=0.0, hue=0.0, gray_p=0.0, blur_p=0.0),
    ),
    # small colour images (CIFAR-like): MoCo v3 without blur, as the SSL libraries do at 32 px
    "small_color": (ViewRecipe(blur_p=0.0), ViewRecipe(blur_p=0.0, solarize_p=0.2)),
}


def recipe_for(name: str, channels: int, crop_min_scale: float | None = None,
               small: bool = False, hflip: bool = True) -> tuple[ViewRecipe, ViewRecipe]:
    """The two view recipes for `name`; 'auto' picks by the number of channels and by
    whether colour images are small (<= 64 px). `crop_min_scale` overrides the smallest
    area of the random resized crop; `hflip=False` never mirrors."""
    if name == "auto":
        name = "small_gray" if channels == 1 else "small_color" if small else "moco_v3"
    if name not in RECIPES:
        raise ValueError(f"unknown augmentation {name!r}; choose auto or one of {list(RECIPES)}")
    views = RECIPES[name]
    if crop_min_scale is not None:
        views = tuple(replace(v, crop_scale=(crop_min_scale, v.crop_scale[1])) for v in views)
    if not hflip:
        views = tuple(replace(v, flip_p=0.0) for v in views)
    return views


@dataclass(frozen=True)
class Normalization:
    """Input size, channels and per-channel mean/std of the encoder's preprocessing."""

    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_dict(cls, values: dict) -> Normalization:
        """The inverse of dataclasses.asdict, also from JSON (lists for tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    @staticmethod
    def fit(images: torch.Tensor, image_size: int, limit: int = 10_000) -> Normalization:
        """Channel statistics of up to `limit` uint8 images (N, C, H, W)."""
        x = images[:limit].float().div_(255)
        mean = x.mean(dim=(0, 2, 3))
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
        return Normalization(image_size, images.shape[1], tuple(mean.tolist()),
                             tuple(std.tolist()))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize floats in [0, 1] (B, C, H, W) and give them 3 channels."""
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        x = (x - mean) / std
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def preprocess(images: torch.Tensor, norm: Normalization) -> torch.Tensor:
    """Evaluation preprocessing: uint8 (B, C, H, W) -> resized, normalized (B, 3, S, S)."""
    x = images.float().div_(255)
    if x.shape[-2:] != (norm.image_size, norm.image_size):
        x = F.interpolate(x, size=(norm.image_size, norm.image_size), mode="bilinear",
                          align_corners=False, antialias=True)
    return norm.apply(x)


def _uniform(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _coin(g: torch.Generator, n: int, p: float) -> torch.Tensor:
    return torch.rand(n, generator=g) < p


def _gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma (B, 1, H, W) of RGB (B, 3, H, W); identity for one channel."""
    if x.shape[1] == 1:
        return x
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _rotate_hue(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate the chroma plane of YIQ by `turns` (B,) of a full circle."""
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322],
                           [0.211, -0.523, 0.312]], device=x.device)
    from_yiq = torch.linalg.inv(to_yiq)
    cos, sin = torch.cos(2 * math.pi * turns), torch.sin(2 * math.pi * turns)
    rot = torch.zeros(len(turns), 3, 3, device=x.device)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    mix = from_yiq @ rot @ to_yiq  # (B, 3, 3) colour transform per image
    return torch.einsum("bij,bjhw->bihw", mix, x)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma (pixels) per image; sigma 0 leaves it as is."""
    b, c, h, w = x.shape
    radius = max(1, min(math.ceil(3 * float(sigma.max())), min(h, w) // 2 - 1))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    s = sigma.to(x.device, x.dtype).clamp_min(1e-3).view(b, 1)
    kernel = torch.exp(-0.5 * (offsets / s) ** 2)  # (B, K)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B*C, K)
    y = F.pad(x.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="reflect")
    # one grouped convolution per axis: every (image, channel) plane has its own kernel
    y = F.conv2d(y, kernel.view(b * c, 1, -1, 1), groups=b * c)
    y = F.conv2d(y, kernel.view(b * c, 1, 1, -1), groups=b * c)
    return y.view(b, c, h, w)


def augment(images: torch.Tensor, view: ViewRecipe, norm: Normalization, g: torch.Generator,
            total: int | None = None, offset: int = 0) -> torch.Tensor:
    """One augmented view of a uint8 batch (B, C, H, W) -> normalized floats (B, 3, S, S).

    Parameters are drawn for the `total` images of the global batch that `images` is a
    part of (rows offset .. offset + B), so processes that each hold a slice of a global
    batch get the same views as one process holding all of it.
    """
    b = images.shape[0]
    n = total or b
    if offset + b > n:
        raise ValueError(f"rows {offset}..{offset + b} do not fit in a batch of {n}")
    rows = slice(offset, offset + b)
    device, size = images.device, norm.image_size
    # --- random resized crop and horizontal flip: one affine grid per image ----------
    area = _uniform(g, n, *view.crop_scale)
    log_ratio = _uniform(g, n, *(math.log(r) for r in view.crop_ratio))
    cw = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=1.0)  # crop width / image width
    ch = torch.sqrt(area / torch.exp(log_ratio)).clamp(max=1.0)
    cx = (2 * torch.rand(n, generator=g) - 1) * (1 - cw)  # centre in [-1, 1] coordinates
    cy = (2 * torch.rand(n, generator=g) - 1) * (1 - ch)
    flip = torch.where(_coin(g, n, view.flip_p), -1.0, 1.0)
    jitter = _coin(g, n, view.jitter_p)
    factors = [_uniform(g, n, 1 - v, 1 + v) for v in (view.brightness, view.contrast,
                                                      view.saturation)]
    hue = _uniform(g, n, -view.hue, view.hue)
    gray = _coin(g, n, view.gray_p)
    blur = _coin(g, n, view.blur_p)
    sigma = _uniform(g, n, *view.blur_sigma) * size
    solarize = _coin(g, n, view.solarize_p)

    def take(t: torch.Tensor) -> torch.Tensor:
        return t[rows].to(device, non_blocking=True)

    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = cw * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = ch, cy
    grid = F.affine_grid(take(theta), [b, images.shape[1], size, size], align_corners=False)
    x = F.grid_sample(images.float().div_(255), grid, mode="bilinear", padding_mode="reflection",
                      align_corners=False)  # (B, C, S, S)

    def where(mask: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        return torch.where(take(mask).view(-1, 1, 1, 1), new, old)

    # --- colour jitter (brightness, contrast, saturation, hue), then grayscale --------
    brightness, contrast, saturation = (take(f).view(-1, 1, 1, 1) for f in factors)
    y = (x * brightness).clamp_(0, 1)
    mean = _gray(y).mean(dim=(1, 2, 3), keepdim=True)
    y = ((y - mean) * contrast + mean).clamp_(0, 1)
    if x.shape[1] == 3:
        y = ((y - _gray(y)) * saturation + _gray(y)).clamp_(0, 1)
        if view.hue > 0:
            y = _rotate_hue(y, take(hue)).clamp_(0, 1)
    x = where(jitter, y, x)
    if x.shape[1] == 3 and view.gray_p > 0:
        x = where(gray, _gray(x).expand_as(x), x)
    # --- blur and solarize ------------------------------------------------------------
    if view.blur_p > 0:
        x = _blur(x, torch.where(take(blur), take(sigma), 0.0))
    if view.solarize_p > 0:
        x = where(solarize, torch.where(x >= 0.5, 1 - x, x), x)
    return norm.apply(x)
