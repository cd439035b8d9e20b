"""Cascade Mask R-CNN and Sparse R-CNN through the tasks (``pvt train --model <head>_<backbone>``): a tiny
run on the built-in shapes, its checkpoint reloaded with the head options it was trained with, evaluated to
the score the run recorded, and predicting."""

import json

import pytest
import torch

import pvt
from pvt.data import readable_images
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
    loaded = load_trained(run)
    model, predict_task = loaded.model, loaded.task
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
    # at score_thresh 0 predict returns exactly what the model gives for the image, in its order
    (_, image, _), = readable_images([img])
    with torch.no_grad():
        raw = model.eval()([image])[0]
    assert [d["score"] for d in dets] == [round(float(s), 4) for s in raw["scores"]]
    if task == "detection":  # Sparse R-CNN keeps its top proposals, no threshold
        assert len(dets) == options["num_proposals"]
    else:  # the cascade drops scores under its own 0.05 (after 2 steps maybe all); at 0 it keeps what NMS leaves
        model.roi_heads.score_thresh = 0.0
        with torch.no_grad():
            dets = predict_task.predict(model, [img], torch.device("cpu"), score_thresh=0.0)[0]["detections"]
        assert 0 < len(dets) <= model.roi_heads.detections_per_img
        assert all(isinstance(d["mask_area"], int) and 0 <= d["mask_area"] <= 64 * 64 for d in dets)
    assert all(d["class"] in ("circle", "square", "triangle") and len(d["box"]) == 4 for d in dets)
    assert torch.get_num_threads() == 1
