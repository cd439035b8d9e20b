"""Device augmentation (``device_augment``): the batched tensor version of the training transforms agrees
with timm's PIL pipeline, op by op and end to end, draws its random parameters from the same
distributions, and trains. Tested on CPU tensors here; the tests marked ``gpu`` run the CUDA path (nvJPEG
decoding, the same augmentation on the GPU) and skip without CUDA."""

from __future__ import annotations

import io
import random
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import pvt
from pvt.data import train_transform
from pvt.data.device import DeviceAugment, DeviceRandAugment, _apply, decode_batch

FILL = (124, 116, 104)  # the ImageNet mean in grey levels: timm's fill for RandAugment's geometric ops

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _picture(size=64, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    img = np.stack([np.sin(xx / 5) * 100 + 120, np.cos(yy / 7) * 80 + 100, (xx + yy) * 1.5 + 20], -1)
    return (img + rng.normal(0, 12, img.shape)).clip(0, 255).astype(np.uint8)


def _encode(img: np.ndarray, fmt: str) -> torch.Tensor:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


def test_decoding_jpeg_and_png_and_leaving_out_what_is_not_an_image():
    img = _picture()
    batch = [_encode(img, "JPEG"), torch.frombuffer(bytearray(b"garbage!"), dtype=torch.uint8), _encode(img, "PNG")]
    out, keep = decode_batch(batch, torch.device("cpu"))
    assert keep == [0, 2] and [tuple(t.shape) for t in out] == [(3, 64, 64)] * 2
    assert torch.equal(out[1].permute(1, 2, 0), torch.from_numpy(img))  # PNG: lossless
    pil = np.asarray(Image.open(io.BytesIO(batch[0].numpy().tobytes())).convert("RGB"))
    assert np.abs(out[0].permute(1, 2, 0).numpy().astype(int) - pil).max() <= 1  # both libjpeg-turbo


@pytest.mark.parametrize("name, level", [
    ("AutoContrast", None), ("Equalize", None), ("Invert", None), ("PosterizeIncreasing", 7.0),
    ("SolarizeIncreasing", 7.0), ("SolarizeAdd", 7.0), ("ColorIncreasing", 7.0), ("ContrastIncreasing", 7.0),
    ("BrightnessIncreasing", 7.0), ("SharpnessIncreasing", 7.0), ("Rotate", 7.0), ("ShearX", 7.0),
    ("ShearY", 7.0), ("TranslateXRel", 7.0), ("TranslateYRel", 7.0),
])
def test_each_rand_augment_op_matches_timms_pil_op(name, level):
    from timm.data.auto_augment import LEVEL_TO_ARG, NAME_TO_OP

    img = _picture()
    random.seed(1)
    args = LEVEL_TO_ARG[name](level, {"translate_const": 28, "img_mean": FILL}) if level is not None else ()
    ref = np.asarray(NAME_TO_OP[name](Image.fromarray(img), *args, fillcolor=FILL, resample=Image.BICUBIC))
    out = _apply(name, torch.from_numpy(img).permute(2, 0, 1)[None], [args], "bicubic", FILL)
    diff = np.abs(out[0].permute(1, 2, 0).numpy().astype(float) - ref)
    assert diff.mean() > 0 or name in ("Equalize", "Invert", "PosterizeIncreasing", "SolarizeIncreasing",
                                       "SolarizeAdd", "BrightnessIncreasing", "AutoContrast", "SharpnessIncreasing")
    if name in ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"):
        # grid_sample's bicubic (a = -0.75) against PIL's (a = -0.5), the fill blended at the borders
        assert diff.mean() < 2.0, diff.mean()
        assert (np.abs(out[0].permute(1, 2, 0).numpy().astype(float) - img).mean()) > 5 * diff.mean()  # it moved
    else:  # pixel ops: within one grey level
        assert diff.max() <= 1 and diff.mean() < 0.2, (diff.max(), diff.mean())


def test_rand_augment_draws_as_timm_does():
    ra = DeviceRandAugment("rand-m9-mstd0.5-inc1", 224)
    random.seed(0)
    np.random.seed(0)
    plans = ra.draw(3000)
    layers = [p for plan in plans for p in plan]
    applied = [p for p in layers if p is not None]
    assert len(plans[0]) == 2 and abs(len(applied) / len(layers) - 0.5) < 0.03  # each op with probability 0.5
    counts = Counter(name for name, _ in applied)
    assert len(counts) == 15 and max(counts.values()) / min(counts.values()) < 1.5  # uniform over timm's 15 ops
    rot = [args[0] for name, args in applied if name == "Rotate"]
    assert max(abs(r) for r in rot) <= 27.0 + 1e-9 and min(rot) < 0 < max(rot)  # magnitude capped at 9 of 10: 27°
    with pytest.raises(ValueError, match="RandAugment policies"):
        DeviceRandAugment("v0", 224)


def _cfg(**kw):
    base = dict(img_size=32, scale=[1.0, 1.0], ratio=[1.0, 1.0], hflip=1.0, aa="none", color_jitter=0.0,
                interpolation="bicubic", reprob=0.0, remode="pixel", recount=1)
    return SimpleNamespace(**{**base, **kw})


def test_the_batch_pipeline_matches_the_pil_pipeline_when_nothing_is_random():
    """A whole-image crop, always flipped, resized 64 -> 32, normalised: the same as timm's PIL transform to
    a grey level."""
    cfg = _cfg()
    imgs = [_picture(seed=s) for s in range(3)]
    out, keep = DeviceAugment.from_config(cfg)([_encode(i, "PNG") for i in imgs], torch.device("cpu"))
    ref = torch.stack([train_transform(cfg)(Image.fromarray(i)) for i in imgs])
    assert keep == [0, 1, 2] and out.shape == ref.shape == (3, 3, 32, 32)
    assert (out - ref).abs().max() < 2.5 / 255 / 0.224  # within two grey levels, after normalisation


def test_the_full_recipe_gives_varied_normalised_batches():
    aug = DeviceAugment.from_config(_cfg(img_size=48, scale=[0.08, 1.0], ratio=[0.75, 4 / 3], hflip=0.5,
                                         aa="rand-m9-mstd0.5-inc1", reprob=0.25))
    batch = [_encode(_picture(size=80, seed=s), "JPEG") for s in range(8)]
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    a, _ = aug(batch, torch.device("cpu"))
    b, _ = aug(batch, torch.device("cpu"))
    assert a.shape == (8, 3, 48, 48) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert not torch.equal(a, b)  # new random crops, ops and erasing each call
    assert -3 < float(a.mean()) < 3 and 0.3 < float(a.std()) < 3


def test_training_with_device_augmentation(tmp_path, make_stripes):
    data = make_stripes(tmp_path / "data", n_train=4, n_val=2)
    run = pvt.train(data=str(data), output=str(tmp_path / "runs"), name="dev", device_augment=True, epochs=1,
                    batch_size=4, workers=0, threads=1, img_size=32, model="pvt_v2_b0", warmup_epochs=0.5,
                    lr=1e-3, quiet=True)
    r = run.metrics[0]
    assert np.isfinite(r["train_loss"]) and r["val_images"] == 6 and "skipped_images" not in r


# ---------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@cuda
def test_nvjpeg_decodes_as_the_cpu_does():
    batch = [_encode(_picture(seed=s), "JPEG") for s in range(4)] + [_encode(_picture(), "PNG")]
    gpu, keep = decode_batch(batch, torch.device("cuda"))
    cpu, _ = decode_batch(batch, torch.device("cpu"))
    assert keep == list(range(5)) and all(t.is_cuda for t in gpu)
    for g, c in zip(gpu, cpu):
        assert (g.cpu().int() - c.int()).abs().float().mean() < 1.0  # IDCTs differ by a grey level here and there


@pytest.mark.gpu
@cuda
def test_the_device_pipeline_on_the_gpu_equals_it_on_the_cpu():
    """The same random draws (host RNGs) give the same batch on the GPU as on the CPU, to interpolation
    rounding (random erasing, whose noise comes from the device's generator, is off)."""
    aug = DeviceAugment.from_config(_cfg(img_size=48, scale=[0.08, 1.0], ratio=[0.75, 4 / 3], hflip=0.5,
                                         aa="rand-m9-mstd0.5-inc1"))
    batch = [_encode(_picture(size=80, seed=s), "PNG") for s in range(16)]
    outs = []
    for dev in ("cpu", "cuda"):
        torch.manual_seed(0)
        random.seed(0)
        np.random.seed(0)
        outs.append(aug(batch, torch.device(dev))[0].cpu())
    assert (outs[0] - outs[1]).abs().mean() < 0.05


@pytest.mark.gpu
@cuda
def test_training_with_device_augmentation_on_the_gpu(tmp_path, make_stripes):
    data = make_stripes(tmp_path / "data", n_train=8, n_val=2)
    run = pvt.train(data=str(data), output=str(tmp_path / "runs"), name="gpu", device_augment=True, epochs=2,
                    batch_size=8, workers=2, img_size=32, model="pvt_v2_b0", device="cuda", quiet=True)
    assert all(np.isfinite(r["train_loss"]) for r in run.metrics)
