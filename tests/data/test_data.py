"""Data: the built-in digits, ImageFolder scanning/conversion/skipping, transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pvt.data import ImageFolderDataset, collate_skipping, digits_folder, eval_transform, train_transform
from pvt.data.transforms import _safe_policy
from pvt.tasks import resolve_config


def _img(path, mode="RGB", size=20, value=128):
    arr = np.full((size, size, 3), value, np.uint8)
    img = Image.fromarray(arr)
    if mode == "P":
        img = img.convert("P")
    elif mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return digits_folder(tmp_path_factory.mktemp("cache"))


def test_digits_split_is_real_fixed_and_held_out(digits, tmp_path_factory):
    train = sorted(p.name for p in (digits / "train").rglob("*.png"))
    val = sorted(p.name for p in (digits / "val").rglob("*.png"))
    assert (len(train), len(val)) == (1437, 360)
    assert not set(train) & set(val)  # held out: no image in both
    assert sorted(p.name for p in (digits / "train").iterdir()) == [str(i) for i in range(10)]
    assert {len(list((digits / "val" / str(c)).iterdir())) for c in range(10)} <= {35, 36, 37}  # stratified
    img = Image.open(next((digits / "val" / "3").iterdir()))
    assert img.size == (32, 32) and img.mode == "L"
    # written once: the second call returns the same tree without rewriting it
    mtime = (digits / ".complete").stat().st_mtime_ns
    assert digits_folder(digits.parent) == digits and (digits / ".complete").stat().st_mtime_ns == mtime
    # deterministic: another cache gets the same split
    other = digits_folder(tmp_path_factory.mktemp("cache2"))
    assert sorted(p.name for p in (other / "val").rglob("*.png")) == val


def test_modes_converted_and_corrupt_files_skipped_and_counted(tmp_path):
    root = tmp_path / "train"
    for i, mode in enumerate(["RGB", "L", "P", "RGBA", "LA"]):
        _img(root / "a" / f"{i}.png", mode)
    _img(root / "b" / "ok.jpg")
    (root / "b" / "garbage.png").write_bytes(b"not an image at all")
    good = _img(root / "b" / "cut.png", size=64)
    good.write_bytes(good.read_bytes()[:100])  # valid header, truncated data
    (root / "b" / "notes.txt").write_text("ignored: not an image extension")
    ds = ImageFolderDataset(root, eval_transform(16, 1.0))
    assert ds.class_names == ["a", "b"]
    assert [p.split("/")[-1] for p in ds.unreadable] == ["garbage.png"]
    assert len(ds) == 7  # 5 + ok.jpg + cut.png (caught later, at load time)
    items = [ds[i] for i in range(len(ds))]
    assert sum(x is None for x in items) == 1
    for x in items:
        if x is not None:
            assert x[0].shape == (3, 16, 16)
    images, labels, skipped = collate_skipping(items)
    assert images.shape == (6, 3, 16, 16) and skipped == 1
    assert labels.tolist() == [0, 0, 0, 0, 0, 1]


def test_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class folders"):
        ImageFolderDataset(tmp_path / "empty")
    _img(tmp_path / "t" / "a" / "0.png")
    (tmp_path / "t" / "b").mkdir()
    with pytest.raises(ValueError, match=r"class folder '.*t/b' has no images"):
        ImageFolderDataset(tmp_path / "t")
    _img(tmp_path / "v" / "zebra" / "0.png")
    with pytest.raises(ValueError, match="not among the training classes"):
        ImageFolderDataset(tmp_path / "v", class_names=["a", "b"])


def test_transforms_shapes_and_eval_is_deterministic():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    ev = eval_transform(32)
    a, b = ev(img), ev(img)
    assert a.shape == (3, 32, 32) and torch.equal(a, b)
    cfg = resolve_config(img_size=32, reprob=0.25).task_config
    tf = train_transform(cfg)
    assert tf(img).shape == (3, 32, 32)


def test_randaugment_at_full_magnitude_does_not_crash():
    # timm's increasing posterize at magnitude 10 keeps 0 bits, which Pillow >= 11 rejects
    assert _safe_policy("rand-m9-mstd0.5-inc1") == "rand-m9-mstd0.5-inc1-mmax9"
    assert _safe_policy("rand-m9-mmax8") == "rand-m9-mmax8"
    cfg = resolve_config(img_size=32, aa="rand-n8-m10-mstd0-inc1").task_config  # every op at magnitude 10 (capped)
    tf = train_transform(cfg)
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    for _ in range(30):
        tf(img)
