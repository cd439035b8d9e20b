"""Dense predictions drawn for images that share a name (issue 14, finding 10): ``a/x.png`` and ``b/x.png``
get two drawings, not one overwritten by the other."""

from __future__ import annotations

import torch
from PIL import Image

from pvt.tasks import create_task, resolve_config
from pvt.tasks.visualize import drawing_names


def test_names_take_as_many_folders_as_tell_images_apart():
    assert drawing_names(["a/x.png", "b/x.png", "y.png"]) == ["a_x_pred.png", "b_x_pred.png", "y_pred.png"]
    assert drawing_names(["x.png", "a/x.png", "/data/q/a/x.png"]) == ["x_pred.png", "a_x_pred.png", "q_a_x_pred.png"]
    assert drawing_names(["a/x.png", "a/x.png", "c/d/x.jpg", "e/d/x.png"]) == [
        "a_x_pred.png", "a_x_2_pred.png", "c_d_x_pred.png", "e_d_x_pred.png"]
    assert drawing_names(["../x.png", "x.jpg"]) == ["x_pred.png", "x_2_pred.png"]


def test_segmentation_predict_writes_one_drawing_per_image(tmp_path):
    cfg = resolve_config(task="segmentation", model="pvt_v2_b0", img_size=64, device="cpu")
    task = create_task(cfg)
    task.class_names = ["background", "square", "disc"]
    torch.manual_seed(0)
    model = task.build_model().eval()
    images = []
    for folder, colour in (("a", 40), ("b", 200)):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (64, 64), (colour, colour, colour)).save(tmp_path / folder / "x.png")
        images.append(tmp_path / folder / "x.png")
    out = tmp_path / "predictions"
    records = task.predict(model, images, torch.device("cpu"), out_dir=out)
    assert [r["output"] for r in records] == [str(out / "a_x_pred.png"), str(out / "b_x_pred.png")]
    assert sorted(p.name for p in out.iterdir()) == ["a_x_pred.png", "b_x_pred.png"]
