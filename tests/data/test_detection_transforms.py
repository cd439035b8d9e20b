"""The crop augmentation of the official Sparse R-CNN / Cascade Mask R-CNN configs (mmdet's AutoAugment of a
plain multi-scale resize, or resize to 400/500/600 + absolute random crop 384-600 + multi-scale resize)."""

import pytest
import torch

from pvt.data.detection_transforms import RandomCropPolicy, crop_detection


def _target():
    masks = torch.zeros(3, 40, 60, dtype=torch.uint8)
    masks[0, 5:15, 5:20] = 1
    masks[1, 20:40, 30:60] = 1
    masks[2, 0:4, 50:58] = 1
    return {"boxes": torch.tensor([[5.0, 5.0, 20.0, 15.0], [30.0, 20.0, 60.0, 40.0], [50.0, 0.0, 58.0, 4.0]]),
            "labels": torch.tensor([0, 1, 2]), "masks": masks, "image_id": torch.tensor(7)}


def test_crop_shifts_clips_and_drops_boxes_with_their_labels_and_masks():
    image = torch.arange(40 * 60, dtype=torch.float32).reshape(1, 40, 60).expand(3, 40, 60)
    out_img, out = crop_detection(image, _target(), 10, 8, 45, 30)  # x 10..45, y 8..30
    assert out_img.shape == (3, 22, 35)
    assert torch.equal(out_img, image[:, 8:30, 10:45])
    # box 0 clipped on the left and top, box 1 on the right and bottom, box 2 (y 0..4) falls outside
    assert out["boxes"].tolist() == [[0.0, 0.0, 10.0, 7.0], [20.0, 12.0, 35.0, 22.0]]
    assert out["labels"].tolist() == [0, 1]
    assert out["masks"].shape == (2, 22, 35)
    assert torch.equal(out["masks"], _target()["masks"][:2, 8:30, 10:45])
    assert int(out["image_id"]) == 7


def test_a_crop_may_keep_no_box():
    # mmdet's allow_negative_crop=True: the image stays, with an empty target
    _, out = crop_detection(torch.rand(3, 40, 60), _target(), 21, 15, 29, 19)
    assert out["boxes"].shape == (0, 4) and out["labels"].shape == (0,) and out["masks"].shape == (0, 4, 8)


def test_region_is_drawn_on_the_resized_image():
    policy = RandomCropPolicy(p=1.0)
    torch.manual_seed(0)
    for _ in range(200):
        x0, y0, x1, y1 = policy.region(480, 640)
        assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 480
        # the shorter side goes to 400, 500 or 600 (x 0.83..1.25), the crop is 384..600 px there
        assert 384 / 1.25 - 1 <= y1 - y0 <= 480 and 384 / 1.25 - 1 <= x1 - x0 <= 600 / (400 / 480) + 1
    # a small image: the crop is at most the image
    for _ in range(50):
        x0, y0, x1, y1 = policy.region(20, 30)
        assert 0 <= x0 < x1 <= 30 and 0 <= y0 < y1 <= 20
    # on 64 px images the policy scales with the image size
    small = RandomCropPolicy.scaled(64)
    assert small.scales == pytest.approx((32, 40, 48)) and small.crop == pytest.approx((30.72, 48.0))
    regions = [small.region(64, 64) for _ in range(100)]
    widths = {x1 - x0 for x0, _, x1, _ in regions}
    # resized to 32-48 px, cropped to 31-48 px there, i.e. 41-64 px of the original
    assert min(widths) >= 40 and max(widths) <= 64 and len(widths) > 5


def test_policy_probability_and_determinism():
    image, target = torch.rand(3, 40, 60), _target()
    assert RandomCropPolicy(p=0.0)(image, target)[0] is image
    torch.manual_seed(1)
    kept = sum(RandomCropPolicy(p=0.5)(image, target)[0] is image for _ in range(400))
    assert 150 < kept < 250  # one of two policies per image
    torch.manual_seed(3)
    a = RandomCropPolicy(p=1.0)(image, target)
    torch.manual_seed(3)
    b = RandomCropPolicy(p=1.0)(image, target)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    with pytest.raises(ValueError, match="crop low <= high"):
        RandomCropPolicy(crop=(600, 384))


def test_coco_dataset_applies_the_policy(tmp_path):
    from pvt.data.coco import CocoDataset
    from pvt.data.synthetic import make_shapes_dataset

    root = make_shapes_dataset(tmp_path / "s", num_train=4, num_val=1, size=64, seed=0) / "coco"
    ann = root / "annotations" / "instances_train.json"
    plain = CocoDataset(root / "train", ann, masks=True, train=True, hflip=0.0)
    torch.manual_seed(0)
    cropped = CocoDataset(root / "train", ann, masks=True, train=True, hflip=0.0,
                          transform=RandomCropPolicy.scaled(64, p=1.0))
    shapes = [cropped[i][0].shape[-2:] for i in range(4)]
    assert all(h <= 64 and w <= 64 for h, w in shapes) and any(h < 64 or w < 64 for h, w in shapes)
    for i in range(4):
        img, t = cropped[i]
        assert t["masks"].shape[-2:] == img.shape[-2:] and len(t["masks"]) == len(t["boxes"]) == len(t["labels"])
        if len(t["boxes"]):
            assert (t["boxes"][:, 2:] > t["boxes"][:, :2]).all()
            assert t["boxes"][:, 2].max() <= img.shape[-1] and t["boxes"][:, 3].max() <= img.shape[-2]
    assert plain[0][0].shape[-2:] == (64, 64)
