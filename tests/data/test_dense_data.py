"""Dense-prediction data and metrics: the built-in shapes (COCO + ADE20K formats), loading, bad input,
COCO mAP and mIoU against hand-computed values."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from pvt.data.ade import IGNORE_INDEX, ADE20KDataset, segmentation_collate
from pvt.data.coco import CocoDataset, decode_mask, detection_collate
from pvt.data.synthetic import SHAPE_CLASSES, make_shapes_dataset
from pvt.tasks.metrics import ConfusionMatrix, coco_map, detections_to_coco


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("d") / "shapes", num_train=6, num_val=4, size=64, seed=3)


def _coco(root, split="train", **kw):
    return CocoDataset(root / "coco" / split, root / "coco" / "annotations" / f"instances_{split}.json", **kw)


def _copy_coco(shapes, tmp_path):
    dst = tmp_path / "coco"
    shutil.copytree(shapes / "coco", dst)
    ann = dst / "annotations" / "instances_train.json"
    return dst, ann, json.loads(ann.read_text())


# ------------------------------------------------------------------------------ shapes
def test_shapes_are_deterministic_and_labels_exact(shapes, tmp_path):
    again = make_shapes_dataset(tmp_path / "again", num_train=6, num_val=4, size=64, seed=3)
    for rel in ("coco/annotations/instances_train.json", "coco/train/00003.png", "ade/annotations/validation/00001.png"):
        assert (shapes / rel).read_bytes() == (again / rel).read_bytes()
    other = make_shapes_dataset(tmp_path / "other", num_train=6, num_val=4, size=64, seed=4)
    assert (other / "coco/train/00000.png").read_bytes() != (shapes / "coco/train/00000.png").read_bytes()
    # the same root with the same parameters is reused; other parameters are refused
    assert make_shapes_dataset(shapes, num_train=6, num_val=4, size=64, seed=3) == shapes
    with pytest.raises(ValueError, match="other parameters"):
        make_shapes_dataset(shapes, num_train=7, num_val=4, size=64, seed=3)

    data = json.loads((shapes / "coco/annotations/instances_train.json").read_text())
    assert [c["name"] for c in data["categories"]] == list(SHAPE_CLASSES)
    for img in data["images"]:
        anns = [a for a in data["annotations"] if a["image_id"] == img["id"]]
        sem = np.asarray(Image.open(shapes / "ade/annotations/training" / img["file_name"]))
        assert set(np.unique(sem)) <= {1, 2, 3, 4}
        union = np.zeros_like(sem, dtype=bool)
        for a in anns:
            m = decode_mask(a["segmentation"], 64, 64, "test").astype(bool)
            ys, xs = np.nonzero(m)
            assert a["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
            assert a["area"] == m.sum()
            assert (sem[m] == a["category_id"] + 1).all()  # ADE: 1 = background, shapes from 2
            union |= m
        assert (sem[~union] == 1).all()


def test_shapes_failure_leaves_nothing(tmp_path, monkeypatch):
    import pvt.data.synthetic as syn

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(syn, "_write_split", boom)
    with pytest.raises(RuntimeError):
        syn.make_shapes_dataset(tmp_path / "s", num_train=2, num_val=1, size=64)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ COCO loading
def test_coco_dataset_items(shapes):
    ds = _coco(shapes, masks=True)
    assert ds.class_names == list(SHAPE_CLASSES) and len(ds) == 6
    img, t = ds[0]
    assert img.shape == (3, 64, 64) and 0 <= img.min() and img.max() <= 1
    n = len(t["boxes"])
    assert n >= 1 and t["labels"].dtype == torch.int64 and t["masks"].shape == (n, 64, 64)
    for box, m in zip(t["boxes"], t["masks"]):  # exact boxes around exact masks
        ys, xs = torch.nonzero(m, as_tuple=True)
        assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
    images, targets, skipped = detection_collate([ds[0], None, ds[1]])
    assert len(images) == len(targets) == 2 and skipped == 1


def test_coco_polygons_and_flip(shapes, tmp_path):
    dst, ann, data = _copy_coco(shapes, tmp_path)
    a = data["annotations"][0]
    x, y, w, h = a["bbox"]
    a["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]  # a rectangle polygon
    ann.write_text(json.dumps(data))
    ds = CocoDataset(dst / "train", ann, masks=True, train=True, hflip=1.0)
    img_id = a["image_id"]
    idx = ds.ids.index(img_id)
    image, t = ds[idx]
    ref_img, ref = CocoDataset(dst / "train", ann, masks=True)[idx]
    assert torch.equal(image, ref_img.flip(-1))
    k = 0  # the first annotation of that image
    assert ref["masks"][k].sum() == pytest.approx(w * h, rel=0.15)
    assert t["boxes"][k].tolist() == [64 - ref["boxes"][k, 2].item(), ref["boxes"][k, 1].item(),
                                      64 - ref["boxes"][k, 0].item(), ref["boxes"][k, 3].item()]


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: d.pop("annotations"), "missing or non-list key 'annotations'"),
        (lambda d: d["annotations"][1].update(image_id=999), r"annotations\[1\] \(id 2\): image_id 999"),
        (lambda d: d["annotations"][2].update(category_id=7), r"annotations\[2\] \(id 3\): category_id 7"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), r"annotations\[0\].*bbox must be"),
        (lambda d: d["annotations"][0]["segmentation"].update(size=[32, 32]), r"annotations\[0\].*mask size \[32, 32\]"),
        (lambda d: d["images"][0].pop("file_name"), r"images\[0\] lacks 'file_name'"),
        # issue 14: non-finite numbers (JSON's NaN / Infinity) are refused at load, not met as a NaN loss
        (lambda d: d["annotations"][0].update(bbox=[float("nan"), 1, 5, 5]),
         r"annotations\[0\] \(id 1\): bbox \[nan, 1, 5, 5\] holds a non-finite number"),
        (lambda d: d["annotations"][0].update(bbox=[1, 1, float("inf"), 5]), r"annotations\[0\].*non-finite"),
        (lambda d: d["annotations"][0].update(segmentation=[[1, 1, float("nan"), 2, 3, 3]]),
         r"annotations\[0\].*polygon holds a non-finite"),
        # ... a file_name that leaves the image folder, duplicate and non-integer ids
        (lambda d: d["images"][0].update(file_name="../../etc/passwd"),
         r"images\[0\] \(id 1\) has file_name '../../etc/passwd': expected a path inside the image folder"),
        (lambda d: d["images"][0].update(file_name="/etc/passwd"), r"images\[0\].*inside the image folder"),
        (lambda d: d["images"][1].update(id=d["images"][0]["id"]),
         r"images\[1\] has id 1, as images\[0\] does: image ids must be unique"),
        (lambda d: d["images"][0].update(id="1"), r"images\[0\] has id '1'; COCO image ids are integers"),
    ],
)
def test_coco_bad_records_name_file_and_record(shapes, tmp_path, edit, match):
    dst, ann, data = _copy_coco(shapes, tmp_path)
    edit(data)
    ann.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=match) as e:
        CocoDataset(dst / "train", ann, masks=True)
    assert "instances_train.json" in str(e.value)


def test_coco_malformed_json_and_missing_image(shapes, tmp_path):
    dst, ann, data = _copy_coco(shapes, tmp_path)
    ann.write_text('{"images": [')
    with pytest.raises(ValueError, match="instances_train.json: not valid JSON"):
        CocoDataset(dst / "train", ann)
    ann.write_text(json.dumps(data))
    (dst / "train" / "00002.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"image id 3 file .*00002.png' does not exist"):
        CocoDataset(dst / "train", ann)


def test_coco_counted_skips(shapes, tmp_path):
    dst, ann, data = _copy_coco(shapes, tmp_path)
    anns = data["annotations"]
    anns[0]["bbox"] = [10, 10, 0, 5]          # zero width: skipped
    anns[1]["bbox"] = [70, 70, 10, 10]        # entirely outside the 64x64 image: skipped
    anns[2]["bbox"] = [-5, 50, 20, 30]        # partly outside: clipped to [0, 50, 15, 64]
    anns[3]["iscrowd"] = 1                    # crowd: not trained on
    ann.write_text(json.dumps(data))
    ds = CocoDataset(dst / "train", ann)
    assert ds.skipped["empty_boxes"] == 1 and ds.skipped["boxes_outside_image"] == 1
    assert ds.skipped["boxes_clipped"] == 1 and ds.skipped["crowd_regions"] == 1
    img_id = anns[2]["image_id"]
    _, t = ds[ds.ids.index(img_id)]
    assert [0.0, 50.0, 15.0, 64.0] in t["boxes"].tolist()
    total = sum(len(ds[i][1]["boxes"]) for i in range(len(ds)))
    assert total == len(anns) - 3


# ------------------------------------------------------------------------------ ADE20K
def test_ade_reduce_zero_label_and_pipelines(shapes):
    val = ADE20KDataset(shapes / "ade", "validation", scale=(256, 64))
    assert val.num_classes == 4 and val.class_names == ["background", *SHAPE_CLASSES]
    img, lab = val[0]
    raw = np.asarray(Image.open(val.samples[0][1]))
    assert torch.equal(lab, torch.from_numpy(raw.astype(np.int64) - 1))  # 1..4 -> 0..3
    assert img.shape == (3, 64, 64)
    train = ADE20KDataset(shapes / "ade", "train", train=True, crop_size=48, scale=(256, 64), ratio_range=(0.5, 2.0))
    for i in range(3):
        im, lb = train[i]
        assert im.shape == (3, 48, 48) and lb.shape == (48, 48)
        assert set(lb.unique().tolist()) <= {0, 1, 2, 3, IGNORE_INDEX}
    batch = segmentation_collate([train[0], train[1]])
    assert batch[0].shape == (2, 3, 48, 48)
    assert isinstance(segmentation_collate([val[0], ADE20KDataset(shapes / "ade", "val", scale=(256, 32))[1]])[0], list)


def _ade_copy(shapes, tmp_path):
    dst = tmp_path / "ade"
    shutil.copytree(shapes / "ade", dst)
    return dst


def test_ade_bad_input(shapes, tmp_path):
    dst = _ade_copy(shapes, tmp_path)
    lab = dst / "annotations/validation/00001.png"
    arr = np.asarray(Image.open(lab)).copy()
    arr[0, 0] = 9  # beyond the 4 classes (labels 1..4 before reduce-zero-label)
    Image.fromarray(arr).save(lab)
    ds = ADE20KDataset(dst, "validation")
    with pytest.raises(ValueError, match=r"00001.png: label values \[9\] exceed the 4 classes"):
        ds[1]
    Image.fromarray(arr[:32]).save(lab)
    with pytest.raises(ValueError, match=r"00001.png: label size 64x32 differs from image"):
        ds[1]
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(lab)
    with pytest.raises(ValueError, match="single-channel"):
        ds[1]
    lab.unlink()
    with pytest.raises(FileNotFoundError, match=r"images/validation/00001.png: no label map"):
        ADE20KDataset(dst, "validation")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ADE20KDataset(tmp_path / "nowhere", "validation")


# ------------------------------------------------------------------------------ metrics
def test_confusion_matrix_known_values():
    cm = ConfusionMatrix(3, ignore_index=255)
    target = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 255])
    pred = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 0, 1])
    cm.update(pred, target)
    assert cm.mat.tolist() == [[3, 1, 0], [0, 2, 1], [1, 0, 1]]
    r = cm.compute()
    # IoU: class 0: 3 / (4 + 4 - 3) = 0.6; class 1: 2 / (3 + 3 - 2) = 0.5; class 2: 1 / (2 + 2 - 1) = 1/3
    assert r["per_class_iou"] == pytest.approx([60.0, 50.0, 100 / 3])
    assert r["mIoU"] == pytest.approx((60 + 50 + 100 / 3) / 3)
    assert r["aAcc"] == pytest.approx(600 / 9)
    assert r["mAcc"] == pytest.approx((75 + 200 / 3 + 50) / 3)
    perfect = ConfusionMatrix(4)
    perfect.update(torch.tensor([[0, 1], [3, 3]]), torch.tensor([[0, 1], [3, 3]]))
    assert perfect.compute()["mIoU"] == 100.0  # class 2 absent from both: left out
    with pytest.raises(ValueError, match="shape"):
        perfect.update(torch.zeros(2, 2), torch.zeros(3, 2))


def _gt_as_dets(ds, drop_every=0):
    results, ids = [], []
    for i in range(len(ds)):
        _, t = ds[i]
        n = len(t["boxes"])
        keep = torch.ones(n, dtype=torch.bool)
        if drop_every:
            keep[::drop_every] = False
        det = {"boxes": t["boxes"][keep], "labels": t["labels"][keep], "scores": torch.ones(int(keep.sum()))}
        if "masks" in t:
            det["masks"] = t["masks"][keep][:, None].float()
        ids.append(int(t["image_id"]))
        results += detections_to_coco(ids[-1], det, ds.cat_ids, masks="masks" in t)
    return results, ids


def test_coco_map_perfect_half_and_empty(shapes):
    ds = _coco(shapes, "val", masks=True)
    res, ids = _gt_as_dets(ds)
    assert coco_map(ds.coco(), res, "bbox", ids)["mAP"] == pytest.approx(100.0)
    assert coco_map(ds.coco(), res, "segm", ids)["mAP"] == pytest.approx(100.0)
    assert coco_map(ds.coco(), [], "bbox", ids) == {k: 0.0 for k in ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")}


def test_coco_map_hand_computed(tmp_path):
    # one class, two objects, one exact detection: recall 0.5 at precision 1 -> 51 of COCO's 101
    # recall thresholds -> AP = 51 / 101
    Image.fromarray(np.zeros((50, 60, 3), np.uint8)).save(tmp_path / "a.png")
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 60, "height": 50}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [2, 3, 20, 30], "area": 600, "iscrowd": 0},
                            {"id": 2, "image_id": 1, "category_id": 5, "bbox": [30, 5, 25, 40], "area": 1000, "iscrowd": 0}],
            "categories": [{"id": 5, "name": "thing"}]}
    (tmp_path / "a.json").write_text(json.dumps(data))
    ds = CocoDataset(tmp_path, tmp_path / "a.json")
    det = {"boxes": torch.tensor([[2.0, 3.0, 22.0, 33.0]]), "labels": torch.tensor([0]), "scores": torch.tensor([0.9])}
    res = detections_to_coco(1, det, ds.cat_ids)
    assert res[0]["category_id"] == 5 and res[0]["bbox"] == [2.0, 3.0, 20.0, 30.0]
    assert coco_map(ds.coco(), res, "bbox")["mAP"] == pytest.approx(100 * 51 / 101, abs=1e-6)
