"""Reports on the model zoo: the variant table (Table 2 of the PVT v2 paper), the dense-prediction table
(Tables 3 and 5), one model's description, and the GFLOPs-against-input-size curves of Figure 4.

Every figure is counted on the built model (parameters, FLOPs, stage maps) or read from the paper's
records (:data:`pvt.models.variants.VARIANTS`, :mod:`pvt.dense`); nothing is typed in here. Models are built on
the ``meta`` device, so no weights are allocated. The functions return rows, dicts and strings; the
``pvt models``, ``pvt info`` and ``pvt complexity`` commands only parse their arguments and print these.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..base.io import atomic_via, atomic_write
from ..base.naming import unknown_name
from ..models.registry import create_model, list_models
from ..models.variants import VARIANTS
from .flops import FIGURE4_MODELS, FIGURE4_SIZES, FlopReport, complexity_curve, count_flops, variant_flops

__all__ = [
    "model_rows",
    "dense_rows",
    "render_markdown",
    "render_text",
    "info_dict",
    "variant_info",
    "dense_info",
    "render_info",
    "MIN_COMPLEXITY_SIZE",
    "complexity_rows",
    "render_complexity",
    "plot_complexity",
    "write_figure4",
]


def _meta_variant(name: str) -> nn.Module:
    """Variant ``name`` (1000-class head) on the meta device: shapes and parameter counts, no storage."""
    with torch.device("meta"):
        return create_model(name)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------ variant table
def model_rows(pattern: str = "*") -> list[dict[str, Any]]:
    """One dict per registered variant matching ``pattern``: our counts at 224x224 beside the paper's
    figures. ``params_without_head`` is the built model's count less its classifier's (the paper's
    Table 2 lists the PVT v2 B0 size without it)."""
    rows = []
    for name in list_models(pattern):
        v = VARIANTS[name]
        report = variant_flops(name, 224)
        rows.append(
            {
                "name": name,
                "description": v.description,
                "family": v.family,
                "params": report.params,
                "params_without_head": report.params - _count(_meta_variant(name).head),
                "gflops": round(report.gflops, 4),
                "gflops_modules_only": round(report.module_flops / 1e9, 4),
                "attention_gflops": round(report.attention_flops / 1e9, 4),
                "paper": dataclasses.asdict(v.paper),
            }
        )
    return rows


def dense_rows(pattern: str = "*") -> list[dict[str, Any]]:
    """One dict per dense-prediction model of :mod:`pvt.dense` matching ``pattern``: the fields of
    :func:`dense_info` that the table shows, at each model's default input size."""
    from ..dense import list_dense_models

    keep = ("name", "head", "backbone", "input_size", "params", "gflops", "gflops_modules_only", "paper")
    rows = []
    for name in list_dense_models(pattern):
        info = dense_info(name)
        rows.append({k: info[k] for k in keep})
    return rows


_DENSE_COLUMNS = (
    ("model", "{name}"),
    ("params (M)", "{params_m:.2f}"),
    ("paper params (M)", "{paper_params}"),
    ("input", "{size}"),
    ("GFLOPs", "{gflops:.2f}"),
    ("modules only", "{gflops_modules_only:.2f}"),
    ("paper GFLOPs", "{paper_gflops}"),
    ("paper AP / mIoU", "{paper_metric}"),
)


def _dash(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _dense_cells(row: dict[str, Any]) -> list[str]:
    values = dict(
        row,
        params_m=row["params"] / 1e6,
        size="x".join(map(str, row["input_size"])),
        paper_params=_dash(row["paper"]["params_m"]),
        paper_gflops=_dash(row["paper"]["gflops"]),
        paper_metric=_dash(row["paper"]["metric"]),
    )
    return [fmt.format(**values) for _, fmt in _DENSE_COLUMNS]


_COLUMNS = (
    ("model", "{name}"),
    ("params (M)", "{params_m:.2f}"),
    ("w/o head (M)", "{nohead_m:.2f}"),
    ("paper params (M)", "{paper_params}"),
    ("GFLOPs", "{gflops:.2f}"),
    ("modules only", "{gflops_modules_only:.2f}"),
    ("paper GFLOPs", "{paper_gflops}"),
    ("paper top-1 (%)", "{paper_top1}"),
)


def _cells(row: dict[str, Any]) -> list[str]:
    values = dict(row, params_m=row["params"] / 1e6, nohead_m=row["params_without_head"] / 1e6,
                  paper_params=_dash(row["paper"]["params_m"]), paper_gflops=_dash(row["paper"]["gflops"]),
                  paper_top1=_dash(row["paper"]["top1"]))
    return [fmt.format(**values) for _, fmt in _COLUMNS]


def _table(rows: list[dict[str, Any]], dense: bool) -> tuple[list[str], list[list[str]]]:
    """Header and cell strings of the variant table (of :func:`model_rows`) or the dense one."""
    columns, cells = (_DENSE_COLUMNS, _dense_cells) if dense else (_COLUMNS, _cells)
    return [c for c, _ in columns], [cells(r) for r in rows]


def render_markdown(rows: list[dict[str, Any]], dense: bool = False) -> str:
    """The variant table (``dense=True``: the dense-prediction one) as Markdown, numbers right-aligned."""
    head, body = _table(rows, dense)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join([":---"] + ["---:"] * (len(head) - 1)) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def render_text(rows: list[dict[str, Any]], dense: bool = False) -> str:
    """The variant table (``dense=True``: the dense-prediction one) as aligned plain text, with a line
    saying how the GFLOPs are counted."""
    head, body = _table(rows, dense)
    table = [head] + body
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    out = [fmt(head), "  ".join("-" * w for w in widths)] + [fmt(r) for r in body]
    where = "at the input size shown" if dense else "at 224x224"
    out.append(
        f"GFLOPs {where}, one multiply-add = one FLOP, attention products included (both papers' convention); "
        "'modules only' leaves them out."
    )
    return "\n".join(out)


# ------------------------------------------------------------------------------- one model
def _figures(report: FlopReport) -> dict[str, Any]:
    """The counts every model description starts with: input size, parameters, GFLOPs and their split."""
    return {
        "input_size": list(report.input_size),
        "params": report.params,
        "gflops": report.gflops,
        "gflops_modules_only": report.module_flops / 1e9,
        "attention_gflops": report.attention_flops / 1e9,
    }


def info_dict(name: str, input_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Everything known about variant or dense-prediction model ``name``, as a JSON-ready dict (keys
    ``params``, ``gflops``, ``paper``, ...): :func:`variant_info` or :func:`dense_info`. ``input_size``
    defaults to 224x224 for variants and to the paper's test size for dense models."""
    if name in VARIANTS:
        return variant_info(name, input_size or (224, 224))
    from ..dense import list_dense_models

    dense = list_dense_models()
    if name in dense:
        return dense_info(name, input_size)
    raise unknown_name(
        "model", name, [*VARIANTS, *dense], "accepted: a variant (`pvt models`) or a dense-prediction model "
        "(`pvt models --dense`)"
    )


def variant_info(name: str, input_size: tuple[int, int] = (224, 224)) -> dict[str, Any]:
    """Variant ``name`` at ``input_size``: parameters, GFLOPs (split into modules and attention products,
    by module type and by stage), every stage's map and tokens, the configuration and the paper's figures."""
    v = VARIANTS[name]
    cfg = v.config
    model = _meta_variant(name)
    with torch.device("meta"):
        maps = model.forward_pyramid(torch.empty(1, cfg.in_chans, *input_size))
    report = count_flops(model, input_size)
    per_stage = report.grouped(2)
    stages = []
    for i, (m, stage) in enumerate(zip(maps, model.stages)):
        h, w = m.shape[-2:]
        attn = stage.blocks[0].attn
        stages.append(
            {
                "stage": i + 1,
                "channels": m.shape[1],
                "height": h,
                "width": w,
                "stride": cfg.reduction[i],
                "tokens": h * w + stage.num_prefix,
                "kv_tokens": attn.reduced_tokens(h, w) + (stage.num_prefix if attn.sr is None else 0),
                "depth": cfg.depths[i],
                "heads": cfg.num_heads[i],
                "sr_ratio": None if cfg.linear_sra else cfg.sr_ratios[i],
                "mlp_ratio": cfg.mlp_ratios[i],
                "gflops": per_stage.get(f"stages.{i}", 0) / 1e9,
            }
        )
    return {
        "name": name,
        "kind": "classification",
        "description": v.description,
        "family": v.family,
        **_figures(report),
        "gflops_by_type": {k: x / 1e9 for k, x in sorted(report.by_type.items(), key=lambda kv: -kv[1])},
        "stages": stages,
        "config": cfg.to_dict(),
        "paper": dataclasses.asdict(v.paper),
        "official_num_params": v.num_params,
        "hub": {"hf": v.hf_hub_id, "timm": v.timm_hub_id, "official": v.official_url},
    }


def dense_info(name: str, input_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Dense-prediction model ``name`` of :mod:`pvt.dense`: parameters and GFLOPs at ``input_size``
    (default: the head's paper size, 512x512 for Semantic FPN and 800x1280 for the detectors), by part,
    and the paper's figures. Detectors are counted through ``forward_dummy`` (heads without box
    decoding), as the papers count them (:class:`pvt.dense.Head`)."""
    from ..dense import create_dense_model, get_dense_spec

    spec = get_dense_spec(name)
    size = input_size or spec.flops_input
    with torch.device("meta"):
        model = create_dense_model(spec.name)
    method = spec.head.flops_method
    report = count_flops(model, size, method=method)
    return {
        "name": spec.name,
        "kind": spec.task,
        "head": spec.head.name,
        "backbone": spec.backbone,
        **_figures(report),
        "counted": f"model.{method}(x)" if method else "model(x)",
        "gflops_by_part": {k: x / 1e9 for k, x in report.grouped(1).items()},
        "paper": {"params_m": spec.paper_params_m, "gflops": spec.paper_gflops, "metric": spec.paper_metric},
    }


def render_info(d: dict[str, Any]) -> str:
    """:func:`info_dict`'s result as a few aligned lines (a per-stage table for variants)."""
    h, w = d["input_size"]
    lines = [
        f"{d['name']}  ({d.get('description') or d['kind']})",
        f"  parameters       {d['params']:,}",
        f"  GFLOPs at {h}x{w}  {d['gflops']:.3f}  (modules {d['gflops_modules_only']:.3f} + attention "
        f"products {d['attention_gflops']:.3f}; one multiply-add = one FLOP)",
    ]
    if "stages" in d:
        lines.append("  stage  channels  map (h x w)  stride  tokens  kv tokens  depth  heads  GFLOPs")
        for s in d["stages"]:
            lines.append(
                f"  {s['stage']:>5}  {s['channels']:>8}  {s['height']:>5} x {s['width']:<5} {s['stride']:>6}  "
                f"{s['tokens']:>6}  {s['kv_tokens']:>9}  {s['depth']:>5}  {s['heads']:>5}  {s['gflops']:>6.3f}"
            )
        cfg = d["config"]
        switches = [k for k in ("overlap_patch_embed", "conv_ffn", "linear_sra", "pos_embed", "cls_token") if cfg[k]]
        lines.append(f"  switches         {', '.join(switches) or 'none'}")
    else:
        lines.append(f"  counted          {d['counted']} ({d['head']} on {d['backbone']})")
    paper = {k: x for k, x in d["paper"].items() if x is not None}
    lines.append("  paper            " + ", ".join(f"{k}={x}" for k, x in paper.items()))
    return "\n".join(lines)


# -------------------------------------------------------------------------------- Figure 4
MIN_COMPLEXITY_SIZE = 32
"""The smallest square side every Figure 4 model accepts (PVT's total stride, ViT-Small/32's patch)."""


def _check_complexity_args(models: list[str], sizes: list[int]) -> None:
    if not models or not sizes:
        raise ValueError("the complexity curves need at least one model and one input size")
    if min(sizes) < MIN_COMPLEXITY_SIZE:
        raise ValueError(
            f"input sizes must be at least {MIN_COMPLEXITY_SIZE} (the models' smallest input), got {min(sizes)}"
        )
    for key in models:
        if key not in FIGURE4_MODELS and key not in VARIANTS:
            raise unknown_name(
                "model", key, [*FIGURE4_MODELS, *VARIANTS], f"accepted: {', '.join(FIGURE4_MODELS)} or any PVT variant"
            )


def complexity_rows(models: list[str] | None = None, sizes: list[int] | None = None) -> list[dict[str, Any]]:
    """Long-format rows (model, label, input_size, gflops, attention_gflops, params) of Figure 4:
    each of ``models`` (default: the figure's, :data:`pvt.tools.flops.FIGURE4_MODELS`; any PVT variant name
    also works) at each square side in ``sizes`` (default :data:`pvt.tools.flops.FIGURE4_SIZES`)."""
    models, sizes = list(models or FIGURE4_MODELS), list(sizes or FIGURE4_SIZES)
    _check_complexity_args(models, sizes)
    rows = []
    for key in models:
        for s, r in zip(sizes, complexity_curve(key, sizes)):
            rows.append(
                {
                    "model": key,
                    "label": FIGURE4_MODELS.get(key, key),
                    "input_size": s,
                    "gflops": round(r.gflops, 4),
                    "attention_gflops": round(r.attention_flops / 1e9, 4),
                    "params": r.params,
                }
            )
    return rows


def _series(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The rows of each curve, by plot label, in the order the rows first name them."""
    labels = dict.fromkeys(r["label"] for r in rows)
    return {lab: [r for r in rows if r["label"] == lab] for lab in labels}


def render_complexity(rows: list[dict[str, Any]]) -> str:
    """:func:`complexity_rows` as a text table: one line per model, GFLOPs at each side, and the growth
    from the smallest side to the largest."""
    series = _series(rows)
    sizes = [p["input_size"] for p in next(iter(series.values()))]
    width = max(len(lab) for lab in [*series, "GFLOPs at side"])
    lines = ["GFLOPs at side".ljust(width) + "".join(f"{s:>8}" for s in sizes) + "   growth"]
    for lab, pts in series.items():
        vals = [p["gflops"] for p in pts]
        lines.append(lab.ljust(width) + "".join(f"{v:>8.1f}" for v in vals) + f"  x{vals[-1] / vals[0]:.1f}")
    return "\n".join(lines)


_COLORS = {
    "ViT-Small/16": "tab:red",
    "ViT-Small/32": "tab:purple",
    "PVTv1-Small": "tab:blue",
    "ResNet-50": "tab:gray",
    "PVTv2-B2": "tab:orange",
    "PVTv2-B2-Li": "tab:green",
}


def plot_complexity(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Draw :func:`complexity_rows` to the PNG file ``path`` (written atomically). Left: GFLOPs against
    input side (the paper's Figure 4). Right: growth relative to the smallest side on log axes, beside the
    pixel-count line (a cost linear in the number of pixels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, rel) = plt.subplots(1, 2, figsize=(13, 5.4), dpi=110)
    series = _series(rows)
    sizes = [p["input_size"] for p in next(iter(series.values()))]
    for lab in sorted(series, key=lambda lab: -series[lab][-1]["gflops"]):  # legend in the order of the ends
        pts = series[lab]
        xs, ys = [p["input_size"] for p in pts], [p["gflops"] for p in pts]
        style = "-" if lab.startswith("PVTv2") else "--"
        (line,) = ax.plot(xs, ys, style, marker="o", ms=3.5, lw=1.8, color=_COLORS.get(lab),
                          label=f"{lab} ({ys[-1]:.0f} at {xs[-1]})")
        rel.plot(xs, [y / ys[0] for y in ys], style, marker="o", ms=3.5, lw=1.8, color=line.get_color(),
                 label=f"{lab} (x{ys[-1] / ys[0]:.0f})")
    rel.plot(sizes, [(s / sizes[0]) ** 2 for s in sizes], ":", color="black", lw=1.2,
             label=f"pixel count (x{(sizes[-1] / sizes[0]) ** 2:.0f})")
    ax.set_title("GFLOPs under different input scales\n(PVT v2 paper, Figure 4, reproduced)")
    ax.set_ylabel("GFLOPs (10^9 multiply-adds)")
    ax.set_ylim(bottom=0)
    rel.set_title(f"Growth rate: GFLOPs relative to {sizes[0]}x{sizes[0]} (log-log)")
    rel.set_ylabel(f"GFLOPs / GFLOPs at {sizes[0]}")
    rel.set_xscale("log")
    rel.set_yscale("log")
    ticks = [sizes[0]]
    for size in sizes[1:]:  # labels at least ~20% apart on the log axis
        if size / ticks[-1] >= 1.2 and (size == sizes[-1] or sizes[-1] / size >= 1.2):
            ticks.append(size)
    rel.set_xticks(ticks + ([sizes[-1]] if sizes[-1] != ticks[-1] else []))
    rel.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    rel.get_xaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())
    for a in (ax, rel):
        a.set_xlabel("input size (square side, pixels)")
        a.grid(True, which="both", alpha=0.3)
        a.legend(loc="upper left", fontsize=8.5, frameon=False)
    fig.tight_layout()
    path = Path(path)
    try:  # the temporary file has no .png suffix: name the format
        atomic_via(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
    return path


def write_figure4(
    out_dir: str | Path, models: list[str] | None = None, sizes: list[int] | None = None
) -> tuple[list[dict[str, Any]], Path, Path]:
    """Count :func:`complexity_rows` and write ``out_dir/figure4.csv`` and ``out_dir/figure4.png``, each
    atomically (a kill leaves the old file or the new one). Returns the rows and the two paths. The
    folder and the arguments are checked before anything is counted."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a folder")
    rows = complexity_rows(models, sizes)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    csv_path, png_path = out / "figure4.csv", out / "figure4.png"
    with atomic_write(csv_path, "wb") as f:
        f.write(buf.getvalue().encode())
    plot_complexity(rows, png_path)
    return rows, csv_path, png_path
