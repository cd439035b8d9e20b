"""What the PVT papers report for each dense-prediction model, as data: PVT v2's Tables 3 (COCO, 1x),
4 (COCO, 3x multi-scale), 5 (ADE20K) and 6 (ablation), with PVT v1's rows as v2 quotes them.

``PAPER[(head, backbone)]`` is a :class:`DenseFigures`; every table and test reads this one place.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DenseFigures", "PAPER", "paper_figures"]


@dataclass(frozen=True)
class DenseFigures:
    """One model's figures in the paper (``None`` where the paper has no entry)."""

    params_m: float | None = None
    """Parameters in millions."""
    gflops: float | None = None
    """GFLOPs at the table's input size (1280x800 for detectors, 512x512 for Semantic FPN)."""
    metric: float | None = None
    """Box AP (detectors) or mIoU (Semantic FPN), in percent."""
    mask_metric: float | None = None
    """Mask AP (Mask R-CNN), in percent."""
    size: tuple[int, int] | None = None
    """``(H, W)`` the paper counted this row's FLOPs at, where it is not its head's (SegFormer-B5: 640x640)."""
    source: str = ""


# one block per (head, table): the columns, then one row per backbone ("-": no entry)
_TABLES = """
retinanet | PVT v2 Table 3 (RetinaNet 1x; GFLOPs from Table 6) | params_m metric gflops
pvt_v1_tiny   23.0 36.7 -
pvt_v1_small  34.2 40.4 285.8
pvt_v2_b0     13.0 37.2 -
pvt_v2_b1     23.8 41.2 -
pvt_v2_b2     35.1 44.6 290.7
pvt_v2_b2_li  32.3 43.6 227.4
pvt_v2_b3     55.0 45.9 -
pvt_v2_b4     72.3 46.1 -
pvt_v2_b5     91.7 46.2 -

mask_rcnn | PVT v2 Table 3 (Mask R-CNN 1x) | params_m metric mask_metric
pvt_v1_tiny   32.9 36.7 35.1
pvt_v1_small  44.1 40.4 37.8
pvt_v2_b0     23.5 38.2 36.2
pvt_v2_b1     33.7 41.8 38.8
pvt_v2_b2     45.0 45.3 41.2
pvt_v2_b2_li  42.2 44.1 40.5
pvt_v2_b3     64.9 47.0 42.5
pvt_v2_b4     82.2 47.5 42.7
pvt_v2_b5     101.6 47.4 42.5

semfpn | PVT v2 Table 5 (Semantic FPN, ADE20K, 40k iterations) | params_m gflops metric
pvt_v1_tiny   17.0 33.2 35.7
pvt_v1_small  28.2 44.5 39.8
pvt_v1_medium 48.0 61.0 41.6
pvt_v1_large  65.1 79.6 42.1
pvt_v2_b0     7.6 25.0 37.2
pvt_v2_b1     17.8 34.2 42.5
pvt_v2_b2     29.1 45.8 45.2
pvt_v2_b2_li  26.3 41.0 45.1
pvt_v2_b3     49.0 62.4 47.3
pvt_v2_b4     66.3 81.3 47.9
pvt_v2_b5     85.7 91.1 48.7

cascade_mask_rcnn | PVT v2 Table 4 (Cascade Mask R-CNN 3x, multi-scale) | params_m gflops metric
pvt_v2_b2     83 788 51.1
pvt_v2_b2_li  80 725 50.9

atss | PVT v2 Table 4 (ATSS 3x, multi-scale) | params_m gflops metric
pvt_v2_b2     33 258 49.9
pvt_v2_b2_li  30 194 48.9

gfl | PVT v2 Table 4 (GFL 3x, multi-scale) | params_m gflops metric
pvt_v2_b2     33 261 50.2
pvt_v2_b2_li  30 197 49.2

segformer | SegFormer Table 2 (ADE20K, 160k iterations, single scale; B5 at 640x640) | params_m gflops metric size
mit_b0        3.8 8.4 37.4 -
mit_b1        13.7 15.9 42.2 -
mit_b2        27.5 62.4 46.5 -
mit_b3        47.3 79.0 49.4 -
mit_b4        64.1 95.7 50.3 -
mit_b5        84.7 183.3 51.0 640

sparse_rcnn | PVT v2 Table 4 (Sparse R-CNN 3x, 300 proposals, multi-scale) | params_m gflops metric
pvt_v2_b2     107 215 50.1
pvt_v2_b2_li  104 151 48.9
"""


def _parse(text: str) -> dict[tuple[str, str], DenseFigures]:
    out: dict[tuple[str, str], DenseFigures] = {}
    for block in text.strip().split("\n\n"):
        header, *rows = block.strip().splitlines()
        head, source, columns = (part.strip() for part in header.split("|"))
        for row in rows:
            backbone, *values = row.split()
            fields: dict = {c: None if v == "-" else float(v) for c, v in zip(columns.split(), values, strict=True)}
            if fields.get("size") is not None:
                fields["size"] = (int(fields["size"]),) * 2
            out[(head, backbone)] = DenseFigures(**fields, source=source)
    return out


PAPER: dict[tuple[str, str], DenseFigures] = _parse(_TABLES)


def paper_figures(head: str, backbone: str) -> DenseFigures | None:
    """The paper's figures for ``head`` on ``backbone``, or None where no table has the pair."""
    return PAPER.get((head, backbone))
