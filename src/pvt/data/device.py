"""DeiT's training augmentation for a batch of encoded images, run on the training device.

At ImageNet scale the CPU loader workers, not the GPUs, set the pace: PIL decoding plus RandAugment costs
a few milliseconds per image per core (``benchmarks/data_pipeline.py`` measures it), and an 8-GPU machine
training PVTv2-B0 wants thousands of images per second. With ``device_augment`` the workers only read
files; the training step decodes the batch with nvJPEG (``torchvision.io.decode_jpeg(device="cuda")``)
and augments it with tensor operations on the GPU. The same code runs on CPU tensors, which is how its
semantics are tested without a GPU.

The augmentation follows the PIL pipeline of :func:`pvt.data.transforms.train_transform` (timm's) step by
step, with the same random parameters drawn the same way; timm's own code draws the crop boxes
(``RandomResizedCropAndInterpolation.get_params``), the RandAugment op choices, magnitudes and signs
(its ``AugmentOp`` level functions) and does the random erasing (``RandomErasing`` on the device).
What differs, all at the level of pixel rounding:

* decoding: nvJPEG's IDCT instead of libjpeg-turbo's (a few grey levels on some pixels); other formats
  are decoded on the CPU (torchvision, else PIL) and copied over;
* resizing: torchvision's antialiased bicubic on tensors instead of PIL's (built to match PIL; off by
  about one grey level);
* RandAugment's geometric ops (rotate, shear, translate) sample with ``grid_sample``, whose bicubic
  kernel has a = -0.75 where PIL's has a = -0.5, with the fill blended at the borders;
* Color / Contrast use torchvision's float grayscale (PIL: integer luma, mean rounded);
* the random draws happen in another order (all crops, then all flips, ...), so a given seed gives other
  augmentations than the PIL pipeline, from the same distributions.
"""

from __future__ import annotations

import io
import math
import random
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..base.constants import IMAGENET_MEAN, IMAGENET_STD
from .transforms import _safe_policy

__all__ = ["DeviceAugment", "decode_batch", "DeviceRandAugment"]

_JPEG_MAGIC = (0xFF, 0xD8)


def _is_jpeg(data: Tensor) -> bool:
    return data.numel() > 2 and int(data[0]) == _JPEG_MAGIC[0] and int(data[1]) == _JPEG_MAGIC[1]


def _decode_one_cpu(data: Tensor) -> Tensor | None:
    """A (3, H, W) uint8 RGB tensor on the CPU (torchvision's decoders, else PIL's), or None."""
    from torchvision.io import ImageReadMode, decode_image

    try:
        return decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError:
        pass
    from PIL import UnidentifiedImageError

    from .folder import load_rgb

    try:
        img = load_rgb(io.BytesIO(data.numpy().tobytes()))
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return None
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def decode_batch(encoded: list[Tensor], device: torch.device) -> tuple[list[Tensor], list[int]]:
    """Decode encoded images (1-D uint8 tensors) to ``(3, H, W)`` uint8 RGB tensors on ``device``.

    On CUDA the JPEGs are decoded together by nvJPEG; anything else (other formats, a JPEG nvJPEG
    refuses) on the CPU. Returns the images and the indices of the inputs they come from (images that
    cannot be decoded are left out)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    out: list[Tensor | None] = [None] * len(encoded)
    if device.type == "cuda":
        jpegs = [i for i, e in enumerate(encoded) if _is_jpeg(e)]
        if jpegs:
            try:
                decoded = decode_jpeg([encoded[i] for i in jpegs], mode=ImageReadMode.RGB, device=device)
                for i, img in zip(jpegs, decoded):
                    out[i] = img
            except RuntimeError:  # one bad file fails the batch: decode those one by one below
                pass
    for i, e in enumerate(encoded):
        if out[i] is None:
            img = _decode_one_cpu(e)
            out[i] = img.to(device, non_blocking=True) if img is not None else None
    keep = [i for i, img in enumerate(out) if img is not None]
    return [out[i] for i in keep], keep


# ---------------------------------------------------------------------------------------------- ops
def _affine(x: Tensor, mats: list[tuple[float, ...]], mode: str, fill: tuple[int, ...]) -> Tensor:
    """PIL's ``Image.transform(size, AFFINE, (a, b, c, d, e, f))`` for a batch: output pixel centre
    ``(x, y)`` takes the input at ``(a x + b y + c, d x + e y + f)``; outside the image, ``fill``."""
    n, _, h, w = x.shape
    m = torch.tensor(mats, dtype=torch.float32, device=x.device).view(n, 2, 3)
    ys, xs = torch.meshgrid(torch.arange(h, device=x.device, dtype=torch.float32) + 0.5,
                            torch.arange(w, device=x.device, dtype=torch.float32) + 0.5, indexing="ij")
    pts = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).view(1, h * w, 3)
    src = pts @ m.transpose(1, 2)  # (n, h*w, 2): input coordinates
    grid = torch.stack([src[..., 0] * (2.0 / w) - 1.0, src[..., 1] * (2.0 / h) - 1.0], dim=-1).view(n, h, w, 2)
    xf = torch.cat([x.float(), torch.ones_like(x[:, :1], dtype=torch.float32)], dim=1)
    mode = mode if mode in ("nearest", "bilinear", "bicubic") else "bilinear"
    y = F.grid_sample(xf, grid, mode=mode, padding_mode="zeros", align_corners=False)
    inside = y[:, 3:].clamp(0, 1)
    fill_t = torch.tensor(fill, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    out = y[:, :3] + fill_t * (1 - inside)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _rotate_matrix(deg: float, w: int, h: int) -> tuple[float, ...]:
    """The inverse matrix PIL's ``Image.rotate(deg)`` uses (about the centre, counter-clockwise)."""
    angle = -math.radians(deg)
    a, b, d, e = round(math.cos(angle), 15), round(math.sin(angle), 15), round(-math.sin(angle), 15), \
        round(math.cos(angle), 15)
    cx, cy = w / 2.0, h / 2.0
    c = a * -cx + b * -cy + cx
    f = d * -cx + e * -cy + cy
    return (a, b, c, d, e, f)


def _blend(x: Tensor, degenerate: Tensor, factors: list[float]) -> Tensor:
    """``factor * x + (1 - factor) * degenerate`` per image, clamped and truncated to uint8 (as PIL's
    ``ImageEnhance`` and torchvision do)."""
    f = torch.tensor(factors, dtype=torch.float32, device=x.device).view(-1, 1, 1, 1)
    return (x.float() * f + degenerate * (1 - f)).clamp_(0, 255).to(torch.uint8)


def _gray(x: Tensor) -> Tensor:
    r, g, b = x.float().unbind(dim=1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _smooth(x: Tensor) -> Tensor:
    """PIL's ``ImageFilter.SMOOTH`` (3x3, weights 1 and a centre 5, over 13), the border left as it is."""
    xf = x.float()
    k = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], device=x.device) / 13.0
    blurred = F.conv2d(xf, k.expand(3, 1, 3, 3), groups=3).round_()
    out = xf.clone()
    out[..., 1:-1, 1:-1] = blurred
    return out


def _levels(args: list[tuple[Any, ...]], x: Tensor) -> Tensor:
    return torch.tensor([a[0] for a in args], dtype=torch.float32, device=x.device).view(-1, 1, 1, 1)


def _apply(name: str, x: Tensor, args: list[tuple[Any, ...]], mode: str, fill: tuple[int, ...]) -> Tensor:
    """timm's RandAugment op ``name`` on the uint8 batch ``x`` (n, 3, H, W), with each image's level
    arguments ``args`` (as timm's level functions return them)."""
    from torchvision.transforms.v2 import functional as TF

    n, _, h, w = x.shape
    if name == "AutoContrast":
        return TF.autocontrast(x)
    if name == "Equalize":
        return TF.equalize(x)
    if name == "Invert":
        return 255 - x
    if name.startswith("Posterize"):
        bits = [min(8, int(a[0])) for a in args]
        mask = torch.tensor([(0xFF << (8 - b)) & 0xFF for b in bits], dtype=torch.uint8, device=x.device)
        return x & mask.view(-1, 1, 1, 1)
    if name.startswith("Solarize") and name != "SolarizeAdd":
        t = _levels(args, x)
        return torch.where(x.float() >= t, 255 - x, x)
    if name == "SolarizeAdd":
        add = _levels(args, x)
        return torch.where(x < 128, (x.float() + add).clamp_(max=255).to(torch.uint8), x)
    if name.startswith("Color"):
        return _blend(x, _gray(x), [a[0] for a in args])
    if name.startswith("Contrast"):
        return _blend(x, _gray(x).floor_().mean(dim=(1, 2, 3), keepdim=True), [a[0] for a in args])
    if name.startswith("Brightness"):
        return _blend(x, torch.zeros_like(x, dtype=torch.float32), [a[0] for a in args])
    if name.startswith("Sharpness"):
        return _blend(x, _smooth(x), [a[0] for a in args])
    if name == "Rotate":
        return _affine(x, [_rotate_matrix(a[0], w, h) for a in args], mode, fill)
    if name == "ShearX":
        return _affine(x, [(1.0, a[0], 0.0, 0.0, 1.0, 0.0) for a in args], mode, fill)
    if name == "ShearY":
        return _affine(x, [(1.0, 0.0, 0.0, a[0], 1.0, 0.0) for a in args], mode, fill)
    if name == "TranslateXRel":
        return _affine(x, [(1.0, 0.0, a[0] * w, 0.0, 1.0, 0.0) for a in args], mode, fill)
    if name == "TranslateYRel":
        return _affine(x, [(1.0, 0.0, 0.0, 0.0, 1.0, a[0] * h) for a in args], mode, fill)
    if name == "TranslateX":
        return _affine(x, [(1.0, 0.0, a[0], 0.0, 1.0, 0.0) for a in args], mode, fill)
    if name == "TranslateY":
        return _affine(x, [(1.0, 0.0, 0.0, 0.0, 1.0, a[0]) for a in args], mode, fill)
    raise ValueError(f"RandAugment op {name!r} has no device version (supported: timm's 'rand' policies' ops)")


class DeviceRandAugment:
    """timm's RandAugment (``rand-m9-mstd0.5-inc1``-style policies) on a uint8 batch, batched per op.

    timm's own ``rand_augment_transform`` parses the policy; for every image, its op choices, the
    per-op probability test, the magnitude noise and the level arguments are drawn exactly as timm's
    ``RandAugment`` / ``AugmentOp`` draw them. Each layer then applies every op once to the images that
    chose it.
    """

    def __init__(self, policy: str, img_size: int, interpolation: str = "bicubic",
                 mean: tuple[float, ...] = IMAGENET_MEAN):
        from timm.data.auto_augment import rand_augment_transform

        if not policy.startswith("rand"):
            raise ValueError(f"config value aa={policy!r}: device augmentation supports RandAugment policies "
                             "('rand-...') or 'none'")
        fill = tuple(min(255, round(255 * m)) for m in mean)
        hparams = {"translate_const": int(img_size * 0.45), "img_mean": fill}
        self.ra = rand_augment_transform(_safe_policy(policy), hparams)
        for op in self.ra.ops:  # refuse unknown ops now, not mid-epoch
            if op.name not in _DEVICE_OPS:
                raise ValueError(f"RandAugment op {op.name!r} of aa={policy!r} has no device version")
        self.mode = interpolation if interpolation in ("bilinear", "bicubic", "nearest") else "bilinear"
        self.fill = fill

    def draw(self, n: int) -> list[list[tuple[str, tuple[Any, ...]] | None]]:
        """For each of ``n`` images, each layer's ``(op name, level arguments)`` (None: op skipped)."""
        ra = self.ra
        plans = []
        for _ in range(n):
            ops = np.random.choice(ra.ops, ra.num_layers, replace=ra.choice_weights is None, p=ra.choice_weights)
            layers: list[tuple[str, tuple[Any, ...]] | None] = []
            for op in ops:
                if op.prob < 1.0 and random.random() > op.prob:
                    layers.append(None)
                    continue
                magnitude = op.magnitude
                if op.magnitude_std > 0:
                    magnitude = (random.uniform(0, magnitude) if op.magnitude_std == float("inf")
                                 else random.gauss(magnitude, op.magnitude_std))
                magnitude = max(0.0, min(magnitude, op.magnitude_max or 10.0))
                args = op.level_fn(magnitude, op.hparams) if op.level_fn is not None else ()
                layers.append((op.name, tuple(args)))
            plans.append(layers)
        return plans

    def __call__(self, x: Tensor) -> Tensor:
        plans = self.draw(len(x))
        x = x.clone()
        for layer in range(self.ra.num_layers):
            groups: dict[str, list[int]] = {}
            for i, p in enumerate(plans):
                if p[layer] is not None:
                    groups.setdefault(p[layer][0], []).append(i)
            for name, idx in groups.items():
                args = [plans[i][layer][1] for i in idx]
                sel = torch.tensor(idx, device=x.device)
                x[sel] = _apply(name, x[sel], args, self.mode, self.fill)
        return x


_DEVICE_OPS = {"AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "PosterizeIncreasing",
               "PosterizeOriginal", "Solarize", "SolarizeIncreasing", "SolarizeAdd", "Color", "ColorIncreasing",
               "Contrast", "ContrastIncreasing", "Brightness", "BrightnessIncreasing", "Sharpness",
               "SharpnessIncreasing", "ShearX", "ShearY", "TranslateX", "TranslateY", "TranslateXRel",
               "TranslateYRel"}


class DeviceAugment:
    """Encoded images -> a normalised, augmented ``(B, 3, S, S)`` float batch on the device: decode,
    random-resized crop, horizontal flip, RandAugment (or colour jitter when ``aa`` is 'none'), ImageNet
    normalisation, random erasing; the parameters of :func:`pvt.data.transforms.train_transform`."""

    def __init__(self, *, img_size: int, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (0.75, 4 / 3), hflip: float = 0.5, aa: str = "rand-m9-mstd0.5-inc1",
                 color_jitter: float = 0.4, interpolation: str = "bicubic", reprob: float = 0.25,
                 remode: str = "pixel", recount: int = 1, mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD):
        self.img_size, self.scale, self.ratio, self.hflip = img_size, tuple(scale), tuple(ratio), hflip
        self.interpolation = interpolation
        use_aa = str(aa).lower() not in ("none", "", "null")
        self.rand_augment = DeviceRandAugment(aa, img_size, interpolation, mean) if use_aa else None
        self.jitter = None
        if not use_aa and color_jitter:
            from torchvision.transforms import ColorJitter

            self.jitter = ColorJitter(color_jitter, color_jitter, color_jitter)
        self.mean, self.std = tuple(mean), tuple(std)
        self.reprob, self.remode, self.recount = reprob, remode, recount

    @classmethod
    def from_config(cls, cfg: Any) -> "DeviceAugment":
        """The augmentation a TrainConfig describes (the fields :func:`train_transform` reads)."""
        return cls(img_size=cfg.img_size, scale=tuple(cfg.scale), ratio=tuple(cfg.ratio), hflip=cfg.hflip,
                   aa=cfg.aa, color_jitter=cfg.color_jitter, interpolation=cfg.interpolation, reprob=cfg.reprob,
                   remode=cfg.remode, recount=cfg.recount)

    def crop(self, images: list[Tensor]) -> Tensor:
        """Random-resized crops of the decoded images, resized to ``img_size``: a uint8 batch."""
        from timm.data.transforms import RandomResizedCropAndInterpolation
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        mode = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
                "nearest": InterpolationMode.NEAREST}.get(self.interpolation, InterpolationMode.BICUBIC)
        s = self.img_size
        out = []
        for img in images:
            i, j, h, w = RandomResizedCropAndInterpolation.get_params(img, self.scale, self.ratio)
            out.append(TF.resized_crop(img, i, j, h, w, [s, s], interpolation=mode, antialias=True))
        return torch.stack(out)

    def augment(self, x: Tensor) -> Tensor:
        """Flip, RandAugment / jitter, normalise and erase a uint8 batch of crops."""
        from timm.data.random_erasing import RandomErasing

        flip = torch.rand(len(x)) < self.hflip
        if flip.any():
            idx = flip.nonzero().flatten().to(x.device)
            x = x.clone()
            x[idx] = x[idx].flip(-1)
        if self.rand_augment is not None:
            x = self.rand_augment(x)
        elif self.jitter is not None:
            x = torch.stack([self.jitter(img) for img in x])
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        out = (x.float() / 255.0 - mean) / std
        if self.reprob > 0:
            out = RandomErasing(self.reprob, mode=self.remode, max_count=self.recount, device=str(x.device))(out)
        return out

    def __call__(self, encoded: list[Tensor], device: torch.device) -> tuple[Tensor, list[int]]:
        """The augmented batch, and the indices of the inputs in it (undecodable images are left out)."""
        images, keep = decode_batch(encoded, device)
        if not images:
            return torch.empty(0, 3, self.img_size, self.img_size, device=device), keep
        return self.augment(self.crop(images)), keep
