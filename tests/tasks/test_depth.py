"""The depth task: the scale-invariant log loss and the standard metrics on hand-computed cases, the built-in
depth set, NYU Depth v2's layout and its bad inputs, a short GLPN run through the engine, and prediction."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from pvt.data.depth import NYUDepthFolder, SyntheticDepth, check_depth_pair, render_depth_sample
from pvt.tasks import create_task, resolve_config
from pvt.tasks.depth import colourise_depth, depth_metrics, silog_loss


def test_metrics_by_hand():
    t = torch.tensor([[1.0, 2.0], [4.0, 0.0]])  # one pixel without a depth
    p = torch.tensor([[1.0, 2.5], [2.0, 7.0]])
    m = depth_metrics(p, t)
    assert m["abs_rel"] == pytest.approx((0 + 0.25 + 0.5) / 3)
    assert m["sq_rel"] == pytest.approx((0 + 0.125 + 1.0) / 3)
    assert m["rmse"] == pytest.approx(math.sqrt((0 + 0.25 + 4) / 3))
    assert m["rmse_log"] == pytest.approx(math.sqrt((math.log(1.25) ** 2 + math.log(2) ** 2) / 3))
    # ratios 1, 1.25 (not < 1.25), 2 (above 1.25^3 = 1.953)
    assert (m["delta1"], m["delta2"], m["delta3"]) == pytest.approx((100 / 3, 200 / 3, 200 / 3))
    assert depth_metrics(p, torch.zeros(2, 2)) is None


def test_silog_is_scale_invariant_at_lambda_one_and_zero_when_exact():
    t = torch.rand(4, 8, 8, dtype=torch.float64) + 0.5
    assert float(silog_loss(t.clone(), t)) < 1e-5
    assert float(silog_loss(3 * t, t, lambd=1.0)) < 1e-4  # a global scale costs nothing at lambda 1
    assert float(silog_loss(3 * t, t)) == pytest.approx(math.sqrt(0.5) * math.log(3), rel=1e-4)


def test_synthetic_depth_is_known_and_deterministic():
    img, depth = render_depth_sample(3, 64)
    again = render_depth_sample(3, 64)
    assert np.array_equal(img, again[0]) and np.array_equal(depth, again[1])
    assert img.shape == (64, 64, 3) and depth.shape == (64, 64) and 1.5 <= depth.min() and depth.max() <= 10
    assert len(list(SyntheticDepth(5, 32, "val"))) == 5 and SyntheticDepth(5, 32)[0][1].shape == (32, 32)
    assert colourise_depth(depth, 10.0).shape == (64, 64, 3)


def _nyu(root, depth_mm, size=(40, 30)):
    d = root / "train" / "kitchen"
    d.mkdir(parents=True)
    Image.new("RGB", size, (90, 120, 30)).save(d / "rgb_00001.jpg")
    Image.fromarray(depth_mm.astype(np.uint16)).save(d / "sync_depth_00001.png")
    return root


def test_nyu_layout_and_its_bad_inputs(tmp_path):
    ds = NYUDepthFolder(_nyu(tmp_path / "ok", np.full((30, 40), 2500)), "train", 24, train=True)
    img, dep = ds[0]
    assert img.shape == (3, 24, 24) and dep.shape == (24, 24) and float(dep.mean()) == pytest.approx(2.5)
    wrong = NYUDepthFolder(_nyu(tmp_path / "size", np.full((20, 40), 2500)), "train", 24, train=True)
    with pytest.raises(ValueError, match=r"sync_depth_00001.png: depth map of size \(20, 40\) for an image of "
                                         r"\(30, 40\); they must be the same size"):
        wrong[0]
    with pytest.raises(ValueError, match="x: depth map holds NaN or infinite values"):
        check_depth_pair(torch.zeros(3, 2, 2), torch.tensor([[1.0, float("nan")], [1.0, 1.0]]), "x")
    (tmp_path / "empty" / "test").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no rgb_\\*.jpg with a sync_depth_\\*.png beside it"):
        NYUDepthFolder(tmp_path / "empty", "test", 24, train=False)


@pytest.mark.slow
def test_glpn_trains_and_predicts_on_the_builtin_depth_set(tmp_path):
    """One tiny epoch through the engine (the code path of pvt train --task depth), then a coloured depth map."""
    from pvt.engine.trainer import Trainer
    from pvt.tasks import load_trained

    cfg = resolve_config(task="depth", model="pvt_v2_b0", output=str(tmp_path / "runs"), epochs=1,
                         task_options={"num_train": 16, "num_val": 4, "shapes_size": 32}, seed=0)
    assert cfg.model == "pvt_v2_b0" and (cfg.task_config.img_size, cfg.batch_size) == (64, 8)
    task = create_task(cfg)
    assert task.spec.name == "glpn_pvt_v2_b0"
    res = Trainer(cfg, task, quiet=True).fit()
    last = res.metrics[-1]
    assert 0 < last["val_abs_rel"] < 10 and 0 <= last["val_delta1"] <= 100
    trained = load_trained(res.run_dir)
    img = (np.random.default_rng(0).random((33, 47, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "x.png")
    rec = trained.task.predict(trained.model, [tmp_path / "x.png"], trained.device, out_dir=tmp_path / "out")[0]
    assert 0 < rec["depth_min"] <= rec["depth_median"] <= rec["depth_max"] < 10
    with Image.open(rec["output"]) as im:
        assert im.size == (94, 33)
    # pvt convert --to hf: the trained GLPN as transformers' folder, the same depth there
    transformers = pytest.importorskip("transformers")
    from pvt.cli import main

    assert main(["convert", str(res.run_dir), str(tmp_path / "hf"), "--to", "hf"]) == 0
    hf = transformers.GLPNForDepthEstimation.from_pretrained(tmp_path / "hf").eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ours = trained.model(x)
        theirs = hf(pixel_values=(x - trained.model.mean) / trained.model.std).predicted_depth
    assert (ours - theirs).abs().max() < 1e-4


@pytest.mark.slow
def test_glpn_beats_a_constant_depth(tmp_path):
    """GLPN on MiT-B0 from scratch, 2 epochs of the built-in depth set (1024 images at 64 px): held-out AbsRel far
    below the best constant predictor's (the training set's median depth). Measured figures: docs/segformer_glpn.md."""
    from pvt.engine.trainer import Trainer

    cfg = resolve_config(task="depth", model="glpn_mit_b0", output=str(tmp_path / "runs"), epochs=2, seed=0,
                         task_options={"num_train": 1024, "num_val": 50, "shapes_size": 64})
    train = SyntheticDepth(1024, 64)
    median = float(torch.cat([train[i][1].flatten() for i in range(0, 1024, 8)]).median())
    val = SyntheticDepth(50, 64, "val")
    constant = sum(depth_metrics(torch.full_like(d, median), d)["abs_rel"] for _, d in val) / len(val)
    res = Trainer(cfg, create_task(cfg), quiet=True).fit()
    best = min(r["val_abs_rel"] for r in res.metrics)
    assert constant > 0.3 and best < 0.6 * constant, (best, constant)
