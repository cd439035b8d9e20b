"""Cascade Mask R-CNN and Sparse R-CNN through the tasks (``pvt train --model <head>_<backbone>``): a tiny
run on the built-in shapes, its checkpoint reloaded with the head options it was trained with, evaluated to
the score the run recorded, and predicting."""

import json

import pytest
import torch

import pvt
from pvt.engine.trainer import Trainer
from pvt.tasks import create_task, load_trained, resolve_config


@pytest.mark.parametrize("name, task, metric, options", [
    ("cascade_mask_rcnn_pvt_v2_b0", "instance", "segm_mAP", {"rois_per_image": 32, "test_proposals": 50}),
    ("sparse_rcnn_pvt_v2_b0", "detection", "bbox_mAP", {"num_proposals": 30}),
])
def test_train_eval_predict_through_the_task(tmp_path, one_thread, name, task, metric, options):
    cfg = resolve_config(model=name, output=str(tmp_path / "runs"), data_dir=str(tmp_path / "cache"), workers=0,
                         seed=0, epochs=1, batch_size=4, task_options={"num_train": 8, "num_val": 4})
    assert cfg.task == task and cfg.task_config.img_size == 64  # the name implies the task; no --data: the shapes preset
    run = Trainer(cfg, create_task(cfg), quiet=True).fit().run_dir
    rec = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert f"val_{metric}" in rec and rec["train_loss"] == rec["train_loss"]  # finite
    # the shapes preset's head options are recorded and rebuilt with the checkpoint
    model = load_trained(run).model
    if task == "instance":
        assert model.roi_heads.rois_per_image == options["rois_per_image"]
        assert model.rpn._post_nms_top_n["testing"] == options["test_proposals"]
    else:
        assert model.num_proposals == options["num_proposals"]
    ev = pvt.evaluate(run / "last.safetensors", batch_size=2)
    assert ev["task"] == task and ev["images"] == 4
    assert ev[metric] == pytest.approx(rec[f"val_{metric}"], abs=1e-6)
    img = next((tmp_path / "cache").glob("shapes*/coco/val/00000.png"))
    out = pvt.predict(run, [img], out_dir=tmp_path / "pred", score_thresh=0.0)
    assert (tmp_path / "pred" / "00000_pred.png").is_file()
    dets = out[0]["detections"]
    # Sparse R-CNN keeps its top proposals (no threshold); after 2 steps the cascade's scores may all sit
    # below its own 0.05 threshold
    assert dets or task == "instance"
    assert all(d["class"] in ("circle", "square", "triangle") and len(d["box"]) == 4 for d in dets)
    assert torch.get_num_threads() == 1
