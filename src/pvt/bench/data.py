"""The data pipeline alone: images per second per CPU core for each stage of the training input (read,
decode, DeiT's training transform at 224, the evaluation transform), beside the model's own training
throughput, so that a user can size the loader workers (``benchmarks/data_pipeline.py``).

One process and one torch thread time each stage over the same JPEG files: a loader worker is such a
process, so ``workers = model images/s / stage images/s`` keeps the model fed, when the machine has
those cores. The files are synthetic unless a folder of real JPEGs is given: multi-octave noise plus
grain, saved at ImageNet's most common size (500x375) and JPEG quality 90, which lands near ImageNet's
mean file size (about 110 kB); decode time follows pixel count and compressed size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

__all__ = ["synthetic_jpegs", "StageResult", "time_stage", "pipeline_stages", "time_training", "cores_needed"]


def synthetic_jpegs(folder: str | Path, n: int = 64, size: tuple[int, int] = (500, 375), quality: int = 90,
                    seed: int = 0) -> list[Path]:
    """``n`` natural-looking JPEGs (``size`` = width, height) in ``folder`` (kept when already there)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"{i:05d}_{w}x{h}_q{quality}.jpg"
        paths.append(path)
        if path.is_file():
            continue
        img = np.zeros((h, w, 3), np.float32)
        for octave in range(1, 9):
            s = 2 ** octave
            g = rng.normal(0, 1, (max(2, h * s // 512), max(2, w * s // 512), 3)).astype(np.float32)
            img += np.stack([np.asarray(Image.fromarray(g[..., c]).resize((w, h), Image.BICUBIC))
                             for c in range(3)], -1) / s ** 0.5
        img = (img - img.mean()) / img.std() * 50 + 115 + rng.normal(0, 24, img.shape)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path, "JPEG", quality=quality)
    return paths


@dataclass
class StageResult:
    name: str
    images_per_s: float
    """Wall-clock images/s of this process: the median over rounds."""
    images_per_cpu_s: float
    """Images per second of CPU time this process used (median over rounds): what one dedicated core
    gives, unaffected by other jobs sharing the machine."""
    rounds: list[float]


class _Clock:
    """Wall and CPU seconds of one timed round."""

    def __enter__(self) -> "_Clock":
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def _result(name: str, images: int, clocks: list[_Clock]) -> StageResult:
    rates = [images / c.wall for c in clocks]
    return StageResult(name, float(np.median(rates)), float(np.median([images / max(c.cpu, 1e-9) for c in clocks])),
                       rates)


def time_stage(name: str, fn: Callable[[Path], Any], files: list[Path], rounds: int = 3) -> StageResult:
    """``fn`` over all ``files``, ``rounds`` times (after a warm-up pass over a few)."""
    for p in files[:4]:
        fn(p)
    clocks = []
    for _ in range(rounds):
        with _Clock() as c:
            for p in files:
                fn(p)
        clocks.append(c)
    return _result(name, len(files), clocks)


def pipeline_stages(img_size: int = 224) -> dict[str, Callable[[Path], Any]]:
    """The stages a loader worker runs per image: read the file (all a worker does with
    ``device_augment``), decode (PIL, RGB), decode + DeiT's training transform, decode + evaluation."""
    from ..data import eval_transform, load_rgb, train_transform
    from ..tasks.configs import ClassificationConfig

    cfg = ClassificationConfig(img_size=img_size)
    train_tf, eval_tf = train_transform(cfg), eval_transform(img_size, cfg.crop_pct, cfg.interpolation)
    return {
        "read file": lambda p: p.read_bytes(),
        "decode (PIL)": lambda p: load_rgb(p),
        f"decode + training transform ({img_size}: crop, flip, RandAugment, erasing)": lambda p: train_tf(load_rgb(p)),
        f"decode + evaluation transform ({img_size})": lambda p: eval_tf(load_rgb(p)),
    }


def time_device_augment(files: list[Path], device: str, batch: int = 64, img_size: int = 224,
                        rounds: int = 3) -> StageResult:
    """Images/s of the device path (:class:`pvt.data.device.DeviceAugment`): batches of ``batch`` encoded
    files decoded and augmented on ``device`` (file reading excluded: the workers do it)."""
    from ..data.device import DeviceAugment
    from ..tasks.configs import ClassificationConfig
    from .timing import sync

    aug = DeviceAugment.from_config(ClassificationConfig(img_size=img_size))
    dev = torch.device(device)
    encoded = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in files]
    batches = [encoded[i:i + batch] for i in range(0, len(encoded), batch)]
    aug(batches[0], dev)
    clocks = []
    for _ in range(rounds):
        sync(device)
        with _Clock() as c:
            for b in batches:
                aug(b, dev)
            sync(device)
        clocks.append(c)
    return _result(f"device augment on {device} (decode + training transform, batches of {batch})", len(encoded),
                   clocks)


def time_training(model_name: str, batch: int, img_size: int = 224, device: str = "cpu", steps: int = 3,
                  rounds: int = 3, amp: bool = False) -> StageResult:
    """The model's own training throughput (images/s): forward, cross-entropy, backward and AdamW on a
    random batch, ``steps`` steps per round, median of ``rounds`` after a warm-up step."""
    import torch.nn.functional as F

    from ..models.registry import create_model
    from .timing import sync

    model = create_model(model_name).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()

    step()
    clocks = []
    for _ in range(rounds):
        sync(device)
        with _Clock() as c:
            for _ in range(steps):
                step()
            sync(device)
        clocks.append(c)
    return _result(f"{model_name} training step ({device}, batch {batch}, {img_size}px{', bf16' if amp else ''})",
                   batch * steps, clocks)


def cores_needed(model_images_per_s: float, per_core_images_per_s: float) -> int:
    """Loader processes (one core each) that keep a model training at ``model_images_per_s`` fed."""
    return int(np.ceil(model_images_per_s / per_core_images_per_s))
