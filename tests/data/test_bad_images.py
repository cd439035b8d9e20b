"""Images that must never stop a run or crash a command (issue 14, findings 7 and 10): a valid 2,000,000 x 1
PNG, a decompression bomb, a truncated file, 16-bit grayscale (scaled, not clipped to white)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pvt.data import load_rgb, read_image


def _bad_images(root):
    """Add to a stripes tree: a bomb and a truncated PNG to train/, a 2,000,000 x 1 PNG and a 16-bit PNG
    to val/. Returns how many unreadable images each epoch meets (after the scan drops the bomb)."""
    Image.new("1", (20000, 20000)).save(root / "train" / "horizontal" / "bomb.png")  # 400M pixels, ~60 KB
    good = (root / "train" / "vertical" / "0.png").read_bytes()
    (root / "train" / "vertical" / "cut.png").write_bytes(good[: len(good) // 2])
    Image.new("L", (2_000_000, 1)).save(root / "val" / "vertical" / "wide.png")
    Image.fromarray((np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16)).save(root / "val" / "diagonal" / "g16.png")


SCRIPT = r"""
import json, resource, sys
import pvt, pvt.tasks.classification
size = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30), size + (1 << 30)))  # 1 GiB more than now
r = pvt.train(data=sys.argv[1], output=sys.argv[2], name="run", epochs=2, batch_size=4, workers=int(sys.argv[3]),
              threads=1, aa="none", img_size=32, model="pvt_v2_b0", repeated_aug=False, quiet=True)
print(json.dumps(r.metrics))
"""


@pytest.mark.parametrize("workers", [0, 1])
def test_bad_images_are_skipped_and_counted_never_a_crash(tmp_path, make_stripes, workers):
    data = make_stripes(tmp_path / "data", n_train=4, n_val=2)
    _bad_images(data)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(data), str(tmp_path / "runs"), str(workers)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    # epoch 1: the bomb (dropped at the scan), the truncated file (training), the wide image (evaluation);
    # epoch 2: the last two again; every count from training and evaluation adds up
    assert [m["skipped_images"] for m in metrics] == [3, 2]
    assert [m["val_images"] for m in metrics] == [7, 7]  # the 16-bit image is evaluated
    log = (tmp_path / "runs" / "run" / "train.log").read_text()
    assert "wide.png (ValueError: 2000000x1 pixels is more elongated than 100:1" in log


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    got = np.asarray(load_rgb(tmp_path / "g16.png"))[..., 0].astype(int)
    assert np.abs(got - np.round(ramp / 257)).max() <= 1
    assert (got == 255).mean() < 0.01  # clipped, 94% of it was white
    Image.fromarray(ramp.astype(np.int32), "I").save(tmp_path / "i32.tiff")  # 32-bit integers holding 16-bit data
    assert Image.open(tmp_path / "i32.tiff").mode == "I"
    assert np.abs(np.asarray(load_rgb(tmp_path / "i32.tiff"))[..., 0] - np.round(ramp / 257)).max() <= 1
    f = Image.fromarray((ramp / 65520).astype(np.float32), "F")
    f.save(tmp_path / "f.tiff")
    assert np.asarray(load_rgb(tmp_path / "f.tiff")).max() == 255


def test_read_image_turns_every_decoder_error_into_one_value_error(tmp_path):
    Image.new("1", (20000, 20000)).save(tmp_path / "bomb.png")
    Image.new("L", (2_000_000, 1)).save(tmp_path / "wide.png")
    with pytest.raises(ValueError, match="bomb.png' cannot be read: Image size \\(400000000 pixels\\) exceeds limit"):
        read_image(tmp_path / "bomb.png")
    with pytest.raises(ValueError, match="more elongated than 100:1"):
        read_image(tmp_path / "wide.png")
