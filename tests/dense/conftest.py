"""What the dense-model tests share: a Table 4 model built on ``meta`` with its parameter count and its
FLOPs as the paper counted them."""

from types import SimpleNamespace

import pytest
import torch

import pvt
from pvt.dense import create_dense_model, get_dense_spec


def _count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="session")
def table4():
    """``table4(name)``: ``.model`` (on meta, no weights), ``.params``, ``.spec``, ``.flops`` (the paper's
    convention: ``forward_dummy`` at 800x1280, the modules mmcv 1.3 could not see left out) and ``.all_flops``
    (those counted too)."""
    def build(name):
        spec = get_dense_spec(name)
        with torch.device("meta"):
            model = create_dense_model(name)

        def count(**kw):
            return pvt.count_flops(model, spec.head.flops_input, method=spec.head.flops_method, **kw)

        built = SimpleNamespace(model=model, spec=spec, params=_count(model), flops=count(),
                                all_flops=count(uncounted=False), count=_count)
        built.params_match = lambda exact: _params_match(built, exact)
        built.gflops_match = lambda facts: _gflops_match(built, facts)
        return built

    return build


def _params_match(built, exact):
    """The exact count of the rebuilt official config (PAPER_FACTS), rounding to the paper's millions."""
    assert built.params == exact and round(exact / 1e6) == built.spec.paper_params_m


def _gflops_match(built, facts):
    """Within 1 % of the paper's Table 4 GFLOPs and 0.1 of PAPER_FACTS' figure."""
    assert built.flops.gflops == pytest.approx(built.spec.paper_gflops, rel=0.01)
    assert built.flops.gflops == pytest.approx(facts, abs=0.1)


@pytest.fixture
def odd_batch():
    """``odd_batch(n=2)``: ``(images, targets, sizes)``: two images of odd sizes (67x91, 75x61), ``n`` of the
    same two boxes on each (classes 0 and 2, with their masks), seeded."""
    def make(n=2):
        torch.manual_seed(0)
        sizes = [(67, 91), (75, 61)]
        targets = []
        for h, w in sizes:
            boxes = torch.tensor([[5.0, 7.0, 40.0, 50.0], [30.0, 20.0, w - 2.0, h - 3.0]])[:n]
            masks = torch.zeros(n, h, w, dtype=torch.uint8)
            for m, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist()):
                m[y1:y2, x1:x2] = 1
            targets.append({"boxes": boxes, "labels": torch.tensor([0, 2])[:n], "masks": masks})
        return [torch.rand(3, h, w) for h, w in sizes], targets, sizes

    return make


@pytest.fixture
def shapes_fit(tmp_path):
    """``shapes_fit(n, masks=False)``: ``n`` built-in shapes training images (64 px, seed 0) with
    ``.score(model)`` -> ``{"bbox": mAP, "bbox_50": mAP@0.5[, "segm": mask mAP]}`` on them and
    ``.train(model, steps, lr, clip)`` -> the losses of that many AdamW steps on all of them (weight decay
    1e-4, linear warm-up over 5 steps, gradient-norm clip)."""
    from pvt.data.coco import CocoDataset
    from pvt.data.synthetic import make_shapes_dataset
    from pvt.tasks.metrics import coco_map, detections_to_coco

    def make(n, masks=False):
        root = make_shapes_dataset(tmp_path / "shapes", num_train=n, num_val=1, size=64, seed=0) / "coco"
        ds = CocoDataset(root / "train", root / "annotations" / "instances_train.json", masks=masks)
        images, targets = (list(v) for v in zip(*[ds[i] for i in range(n)]))
        ids = [int(t.pop("image_id")) for t in targets]

        def score(model):
            model.eval()
            with torch.no_grad():
                dets = model(images)
            res = [r for i, d in zip(ids, dets) for r in detections_to_coco(i, d, ds.cat_ids, masks=masks)]
            box = coco_map(ds.coco(), res, "bbox", ids)
            out = {"bbox": box["mAP"], "bbox_50": box["mAP_50"]}
            if masks:
                out["segm"] = coco_map(ds.coco(), res, "segm", ids)["mAP"]
            return out

        def train(model, steps, lr, clip):
            opt = torch.optim.AdamW(model.parameters(), lr, weight_decay=1e-4)
            losses = []
            for step in range(1, steps + 1):
                model.train()
                for g in opt.param_groups:
                    g["lr"] = lr * min(1.0, step / 5)
                loss = sum(model(images, targets).values())
                losses.append(float(loss.detach()))
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                opt.step()
            return losses

        return SimpleNamespace(images=images, targets=targets, score=score, train=train)

    return make


@pytest.fixture
def one_thread():
    """One torch thread for the test (the learning tests: two threads on a busy 2-core machine spin-wait
    several times slower than one)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
