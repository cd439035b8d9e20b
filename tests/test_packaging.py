"""How the package declares what it needs: ranges for the library (so ``pip install`` keeps a user's
torch), exact pins only in ``constraints.txt``, which the README's set-up and CI install with."""

from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> dict[str, Requirement]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {Requirement(d).name.lower(): Requirement(d) for d in deps}


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, v = line.partition("==")
            pins[name.strip().lower().replace("_", "-")] = Version(v.strip())
    return pins


def test_torch_is_a_range_and_the_pins_fall_inside_it():
    reqs, pins = _requirements(), _pins()
    for name in ("torch", "torchvision"):
        spec = reqs[name].specifier
        assert not any(s.operator in ("==", "===") for s in spec), f"{name} is pinned in pyproject.toml: {spec}"
        assert any(s.operator == ">=" for s in spec) and any(s.operator == "<" for s in spec), spec
        assert pins[name] in spec, f"constraints.txt pins {name} {pins[name]} outside {spec}"
        assert Version("2.13" if name == "torch" else "0.28") in spec  # the oldest tried (README: Install)
    # no core dependency is pinned exactly; every pin names a package the project installs
    assert not [r for r in reqs.values() if any(s.operator == "==" for s in r.specifier)]
    assert {"torch", "torchvision", "timm", "numpy", "pytest"} <= set(pins)


def test_the_installed_versions_satisfy_the_declared_ranges():
    for name, req in _requirements().items():
        assert Version(version(name)) in req.specifier or not req.specifier, (name, version(name), req)


def test_set_up_commands_install_with_the_constraints():
    readme = (ROOT / "README.md").read_text().split("\n```bash\n", 1)[1].split("\n```", 1)[0].splitlines()
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if "pip install" in line]
    assert len(readme) == 2 and len(ci) == 1
    for command in readme + ci:
        assert "pip install -q -c constraints.txt -e " in command, command


def test_pycocotools_is_an_extra_whose_absence_is_one_line(monkeypatch, tmp_path):
    """COCO data and its evaluation are the ``coco`` extra (in ``test`` too); without pycocotools, each place
    that needs it says so in one line naming the extra, and ``import pvt`` never needs it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = {k: {Requirement(r).name for r in v} for k, v in project["optional-dependencies"].items()}
    assert "pycocotools" not in _requirements() and "pycocotools" in extras["coco"] & extras["test"]
    for name in [m for m in sys.modules if m.split(".")[0] == "pycocotools"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pycocotools", None)  # as if not installed: its import fails
    from pvt.data.coco import CocoDataset, decode_mask, pycocotools
    from pvt.data.synthetic import _rle
    from pvt.tasks.metrics import coco_map, detections_to_coco

    det = {"boxes": torch.zeros(1, 4), "scores": torch.ones(1), "labels": torch.zeros(1, dtype=torch.long),
           "masks": torch.ones(1, 1, 2, 2)}
    message = r"^COCO annotations and their evaluation need pycocotools, which is not installed: " \
              r"pip install 'pyramid-vision-transformer\[coco\]'$"
    for call in (lambda: CocoDataset(tmp_path, tmp_path / "none.json"), lambda: pycocotools("cocoeval"),
                 lambda: decode_mask([[0, 0, 1, 0, 1, 1]], 2, 2, "x"), lambda: _rle(np.ones((2, 2), bool)),
                 lambda: coco_map(object(), [{"image_id": 1}]), lambda: detections_to_coco(1, det, [1], masks=True)):
        with pytest.raises(ValueError, match=message):
            call()
