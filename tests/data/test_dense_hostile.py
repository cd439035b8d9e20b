"""Hostile and broken COCO / ADE20K data and calibration folders (issue 18, item 9): ids of the wrong JSON
type, malformed RLEs, duplicate ids and far-away polygon coordinates are one-line errors when the data set
is made (pycocotools' C code never sees them); images that cannot be decoded (truncated, decompression
bombs) are skipped and counted as classification skips them; validation label maps are checked before the
first epoch."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from pvt.data.ade import ADE20KDataset, segmentation_collate
from pvt.data.coco import CocoDataset, detection_collate
from pvt.data.synthetic import make_shapes_dataset


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("d") / "shapes", num_train=4, num_val=2, size=64, seed=1)


def _coco_copy(shapes, tmp_path):
    dst = tmp_path / "coco"
    shutil.copytree(shapes / "coco", dst)
    ann = dst / "annotations" / "instances_train.json"
    return dst, ann, json.loads(ann.read_text())


def _truncate(path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


_BAD_COCO = {
    "category id a string": (lambda d: d["categories"][0].update(id="1"),
                             r"categories\[0\] has id '1'; COCO category ids are integers"),
    "category id a float": (lambda d: d["categories"][0].update(id=1.0), r"categories\[0\] has id 1.0"),
    "duplicate category ids": (lambda d: d["categories"][1].update(id=d["categories"][0]["id"]),
                               r"categories\[1\] has id \d+, as categories\[0\] does: category ids must be unique"),
    "image_id a string": (lambda d: d["annotations"][0].update(image_id=str(d["annotations"][0]["image_id"])),
                          r"annotations\[0\] has image_id '\d+'; COCO image_ids are integers"),
    "category_id a float": (lambda d: d["annotations"][0].update(category_id=1.0),
                            r"annotations\[0\] has category_id 1.0"),
    "annotation id a list": (lambda d: d["annotations"][0].update(id=[1]), r"annotations\[0\] has id \[1\]"),
    "duplicate annotation ids": (lambda d: d["annotations"][1].update(id=d["annotations"][0]["id"]),
                                 r"annotations\[1\] has id 1, as annotations\[0\] does"),
    "iscrowd a string": (lambda d: d["annotations"][0].update(iscrowd="0"), r"iscrowd '0'; expected 0 or 1"),
    "area infinite": (lambda d: d["annotations"][0].update(area=float("inf")), r"area inf; expected a finite"),
    "RLE integer size": (lambda d: d["annotations"][0]["segmentation"].update(size=64),
                         r"annotations\[0\] .*RLE size 64; expected \[height, width\]"),
    "RLE counts a number": (lambda d: d["annotations"][0]["segmentation"].update(counts=5),
                            r"RLE counts int; expected a compressed string"),
    "RLE counts not adding up": (lambda d: d["annotations"][0].update(segmentation={"size": [64, 64],
                                                                                     "counts": [10, 5]}),
                                 r"adding up to height \* width \(4096\)"),
    "polygon coordinate 1e10": (lambda d: d["annotations"][0].update(segmentation=[[0, 0, 1e10, 0, 5, 5]]),
                                r"polygon coordinate 10000000000.0 lies far outside the 64x64 image"),
    "polygon coordinate -1e10": (lambda d: d["annotations"][0].update(segmentation=[[0, 0, 5, -1e10, 5, 5]]),
                                 r"polygon coordinate -10000000000.0 lies far outside"),
    "polygon coordinate a string": (lambda d: d["annotations"][0].update(segmentation=[[0, 0, "5", 0, 5, 5]]),
                                    r"non-numeric coordinate \('5'\)"),
}


@pytest.mark.parametrize("case", list(_BAD_COCO))
@pytest.mark.parametrize("masks", [False, True])
def test_a_crafted_coco_file_is_a_one_line_error_when_the_data_set_is_made(shapes, tmp_path, case, masks):
    dst, ann, data = _coco_copy(shapes, tmp_path)
    edit, match = _BAD_COCO[case]
    edit(data)
    ann.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=match) as e:
        CocoDataset(dst / "train", ann, masks=masks)
    assert "instances_train.json" in str(e.value) and "\n" not in str(e.value)


def test_a_polygon_near_the_image_still_decodes(shapes, tmp_path):
    dst, ann, data = _coco_copy(shapes, tmp_path)
    data["annotations"][0]["segmentation"] = [[-10, -10, 70, -10, 70, 70, -10, 70]]  # covers the whole image
    ann.write_text(json.dumps(data))
    ds = CocoDataset(dst / "train", ann, masks=True)
    _, t = ds[ds.ids.index(data["annotations"][0]["image_id"])]
    assert int(t["masks"][0].sum()) == 64 * 64


def test_unreadable_coco_images_are_skipped_and_counted(shapes, tmp_path, monkeypatch):
    dst, ann, data = _coco_copy(shapes, tmp_path)
    _truncate(dst / "train" / data["images"][1]["file_name"])
    ds = CocoDataset(dst / "train", ann, masks=True)
    items = [ds[i] for i in range(len(ds))]
    assert [x is None for x in items] == [False, True, False, False]
    images, targets, skipped = detection_collate(items)
    assert len(images) == len(targets) == 3 and skipped == 1
    # a decompression bomb (PIL's limit lowered, so that a 64x64 image is one) is skipped the same way
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert ds[0] is None


def test_unreadable_ade_images_and_label_maps_are_skipped_and_counted(shapes, tmp_path, monkeypatch):
    dst = tmp_path / "ade"
    shutil.copytree(shapes / "ade", dst)
    _truncate(dst / "images" / "training" / "00001.png")
    _truncate(dst / "annotations" / "training" / "00002.png")
    Image.new("1", (20000, 20000)).save(dst / "images" / "training" / "00003.png")  # 400M pixels, ~60 KB
    ds = ADE20KDataset(dst, "training", train=True, crop_size=32, scale=(128, 32))
    items = [ds[i] for i in range(len(ds))]
    assert [x is None for x in items] == [False, True, True, True]
    images, labels, skipped = segmentation_collate(items)
    assert images.shape == (1, 3, 32, 32) and labels.shape == (1, 32, 32) and skipped == 3
    assert segmentation_collate([None, None]) == ([], [], 2)
    assert ds.check_labels() == 1  # the truncated label map is counted, the others are fine
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # every 64x64 image is now a decompression bomb
    assert ds[0] is None


def test_ade_check_labels_finds_a_bad_label_map_at_once(shapes, tmp_path):
    dst = tmp_path / "ade"
    shutil.copytree(shapes / "ade", dst)
    ds = ADE20KDataset(dst, "validation")
    assert ds.check_labels() == 0
    lab = dst / "annotations" / "validation" / "00001.png"
    arr = np.asarray(Image.open(lab)).copy()
    arr[3, 3] = 40
    Image.fromarray(arr).save(lab)
    with pytest.raises(ValueError, match=r"00001.png: label values \[40\] exceed the 4 classes"):
        ds.check_labels()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(lab)
    with pytest.raises(ValueError, match="single-channel"):
        ds.check_labels()


def _dense_cfg(tmp_path, task):
    from pvt.tasks import resolve_config

    return resolve_config(task=task, model="pvt_v2_b0", epochs=1, batch_size=2, img_size=64, workers=0, seed=0,
                          output=str(tmp_path / "runs"), data_dir=str(tmp_path / "cache"),
                          task_options={"num_train": 4, "num_val": 2, "shapes_size": 64})


def test_bad_validation_labels_stop_a_segmentation_run_before_the_first_epoch(tmp_path, monkeypatch):
    from pvt.engine.trainer import Trainer
    from pvt.tasks import create_task
    from pvt.tasks.segmentation import SegmentationTask

    cfg = _dense_cfg(tmp_path, "segmentation")
    create_task(cfg).build_datasets()  # writes the built-in data
    lab = next((tmp_path / "cache").glob("shapes*/ade/annotations/validation/00001.png"))
    arr = np.asarray(Image.open(lab)).copy()
    arr[0, 0] = 77
    Image.fromarray(arr).save(lab)

    def no_training(*args, **kwargs):
        raise AssertionError("an epoch started")

    monkeypatch.setattr(SegmentationTask, "train_step", no_training)
    with pytest.raises(ValueError, match=r"00001.png: label values \[77\] exceed the 4 classes"):
        Trainer(cfg, create_task(cfg), quiet=True).fit()


@pytest.mark.slow  # ~35 s each on 2 busy cores: a one-epoch run of each task
@pytest.mark.parametrize("task, images", [("segmentation", "ade/images/{}/00001.png"),
                                          ("detection", "coco/{}/00001.png")])
def test_a_truncated_image_does_not_stop_a_dense_run(tmp_path, task, images):
    from pvt.engine.trainer import Trainer
    from pvt.tasks import create_task

    cfg = _dense_cfg(tmp_path, task)
    create_task(cfg).build_datasets()
    split = {"segmentation": ("training", "validation"), "detection": ("train", "val")}[task]
    for s in split:
        _truncate(next((tmp_path / "cache").glob("shapes*/" + images.format(s))))
    res = Trainer(cfg, create_task(cfg), quiet=True).fit()
    rec = res.metrics[-1]
    assert rec["skipped_images"] == 2  # one in training, one in validation
    assert {"segmentation": "val_mIoU", "detection": "val_bbox_mAP"}[task] in rec


def test_a_calibration_folder_skips_unreadable_images(tmp_path, monkeypatch, caplog):
    from pvt.data import eval_transform
    from pvt.tasks import calibration_batch

    for i in range(3):
        Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(tmp_path / f"{i}.png")
    _truncate(tmp_path / "1.png")
    batch = calibration_batch(tmp_path, eval_transform(32))
    assert batch.shape == (2, 3, 32, 32)
    assert "skipped 1 unreadable image(s) of 3" in caplog.text
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # a 40x40 image is now a decompression bomb
    with pytest.raises(ValueError, match=r"none of its 3 images can be read, e\.g\. .*DecompressionBombError"):
        calibration_batch(tmp_path, eval_transform(32))
    assert torch.is_tensor(batch)
