"""`pvt models`, `pvt info NAME` and `pvt complexity`: the variant table, one model's figures, and
the GFLOPs-against-input-size curves of the PVT v2 paper's Figure 4.

Every figure is computed (parameters, FLOPs) or read from :data:`pvt.variants.VARIANTS` (the paper's);
nothing is typed in here.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import difflib
import json
from pathlib import Path
from typing import Any

__all__ = ["register", "model_rows", "dense_rows", "render_markdown", "info_dict", "complexity_rows"]


def register(sub) -> None:
    """Add ``models``, ``info`` and ``complexity`` to the pvt parser."""
    p = sub.add_parser(
        "models",
        help="every PVT variant: our parameters and GFLOPs at 224 beside the paper's (Table 2)",
        description=(
            "List every registered variant with its parameter count and GFLOPs at 224x224 as counted here "
            "(one multiply-add = one FLOP; 'GFLOPs' includes the attention products Q.K^T and A.V, as both "
            "PVT papers count; 'modules only' leaves them out), beside the paper's parameters, GFLOPs and "
            "ImageNet top-1."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    out.add_argument("--markdown", action="store_true", help="print a Markdown table (docs/paper_tables.md)")
    p.add_argument("--pattern", default="*", metavar="GLOB", help="only names matching this shell pattern")
    p.add_argument(
        "--dense", action="store_true",
        help="list the dense-prediction models of pvt.tasks instead (Tables 3 and 5: Semantic FPN GFLOPs at "
        "512x512, detectors at 800x1280 through forward_dummy); slower",
    )
    p.set_defaults(func=run_models)

    p = sub.add_parser(
        "info",
        help="one model: parameters, GFLOPs, per-stage shapes, config and the paper's figures",
        description=(
            "Describe a PVT variant (see `pvt models`) or a dense-prediction model of pvt.tasks "
            "(e.g. semfpn_pvt_v2_b2, retinanet_pvt_v2_b0): parameters, GFLOPs at the input size, the map "
            "of every stage, the configuration and what the paper reports."
        ),
    )
    p.add_argument("name", metavar="NAME", help="variant or dense-prediction model name")
    p.add_argument(
        "--input-size", nargs=2, type=int, metavar=("H", "W"), default=None,
        help="input height and width (default: 224 224; Semantic FPN 512 512; detectors 800 1280)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_info)

    p = sub.add_parser(
        "complexity",
        help="GFLOPs against input size (PVT v2 paper, Figure 4): writes figure4.csv and figure4.png",
        description=(
            "Count the GFLOPs of ViT-Small/16 and /32, PVTv1-Small, ResNet-50, PVTv2-B2 and PVTv2-B2-Li "
            "at square input sizes and write DIR/figure4.csv and DIR/figure4.png (Figure 4 of the PVT v2 "
            "paper)."
        ),
    )
    p.add_argument("--out", metavar="DIR", default=".", help="output folder (default: the current one)")
    p.add_argument(
        "--sizes", nargs="+", type=int, metavar="S", default=None,
        help="square input sides (default: 224 256 384 ... 1280)",
    )
    p.add_argument(
        "--models", nargs="+", metavar="KEY", default=None,
        help="reference models (default: all of vit_small_patch16 vit_small_patch32 pvt_v1_small resnet50 "
        "pvt_v2_b2 pvt_v2_b2_li; any PVT variant name also works)",
    )
    p.set_defaults(func=run_complexity)


# ----------------------------------------------------------------------------------------- models
def model_rows(pattern: str = "*") -> list[dict[str, Any]]:
    """One dict per registered variant matching ``pattern``: our counts at 224x224 and the paper's figures."""
    from ..flops import variant_flops
    from ..registry import list_models
    from ..variants import VARIANTS

    rows = []
    for name in list_models(pattern):
        v = VARIANTS[name]
        report = variant_flops(name, 224)
        head = v.config.embed_dims[-1] * 1000 + 1000
        rows.append(
            {
                "name": name,
                "description": v.description,
                "family": v.family,
                "params": report.params,
                "params_without_head": report.params - head,
                "gflops": round(report.gflops, 4),
                "gflops_modules_only": round(report.module_flops / 1e9, 4),
                "attention_gflops": round(report.attention_flops / 1e9, 4),
                "paper": dataclasses.asdict(v.paper),
            }
        )
    return rows


def dense_rows(pattern: str = "*") -> list[dict[str, Any]]:
    """One dict per dense-prediction model of :mod:`pvt.tasks` matching ``pattern`` (see ``pvt info``)."""
    try:
        from ..dense import list_dense_models
    except ImportError as e:  # pragma: no cover - the tasks package ships with pvt
        raise ValueError(f"the dense-prediction models are unavailable: {e}") from None
    keep = ("name", "head", "backbone", "input_size", "params", "gflops", "gflops_modules_only", "paper")
    return [{k: info_dict(n)[k] for k in keep} for n in list_dense_models(pattern)]


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


def _dense_cells(row: dict[str, Any]) -> list[str]:
    dash = lambda x: "-" if x is None else f"{x:.1f}"  # noqa: E731
    values = dict(
        row,
        params_m=row["params"] / 1e6,
        size="x".join(map(str, row["input_size"])),
        paper_params=dash(row["paper"]["params_m"]),
        paper_gflops=dash(row["paper"]["gflops"]),
        paper_metric=dash(row["paper"]["metric"]),
    )
    return [fmt.format(**values) for _, fmt in _DENSE_COLUMNS]


_COLUMNS = (
    ("model", "{name}"),
    ("params (M)", "{params_m:.2f}"),
    ("w/o head (M)", "{nohead_m:.2f}"),
    ("paper params (M)", "{paper[params_m]:.1f}"),
    ("GFLOPs", "{gflops:.2f}"),
    ("modules only", "{gflops_modules_only:.2f}"),
    ("paper GFLOPs", "{paper[gflops]:.1f}"),
    ("paper top-1 (%)", "{paper[top1]:.1f}"),
)


def _cells(row: dict[str, Any]) -> list[str]:
    values = dict(row, params_m=row["params"] / 1e6, nohead_m=row["params_without_head"] / 1e6)
    return [fmt.format(**values) for _, fmt in _COLUMNS]


def render_markdown(rows: list[dict[str, Any]], dense: bool = False) -> str:
    """The variant table (or the dense-prediction one) as Markdown, numbers right-aligned."""
    columns, cells = (_DENSE_COLUMNS, _dense_cells) if dense else (_COLUMNS, _cells)
    head = [c for c, _ in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join([":---"] + ["---:"] * (len(head) - 1)) + "|"]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def _render_text(rows: list[dict[str, Any]], dense: bool = False) -> str:
    columns, cells = (_DENSE_COLUMNS, _dense_cells) if dense else (_COLUMNS, _cells)
    table = [[c for c, _ in columns]] + [cells(r) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    out = [fmt(table[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in table[1:]]
    where = "at the input size shown" if dense else "at 224x224"
    out.append(
        f"GFLOPs {where}, one multiply-add = one FLOP, attention products included (both papers' convention); "
        "'modules only' leaves them out."
    )
    return "\n".join(out)


def run_models(args: argparse.Namespace) -> int:
    rows = dense_rows(args.pattern) if args.dense else model_rows(args.pattern)
    if not rows:
        raise ValueError(f"no {'dense-prediction ' if args.dense else ''}model matches --pattern {args.pattern!r}")
    if args.json:
        print(json.dumps(rows, indent=2))
    elif args.markdown:
        print(render_markdown(rows, args.dense))
    else:
        print(_render_text(rows, args.dense))
    return 0


# ------------------------------------------------------------------------------------------- info
def _unknown(name: str) -> ValueError:
    from ..variants import VARIANTS

    names = list(VARIANTS) + _task_names()
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return ValueError(f"unknown model {name!r}; {hint}(`pvt models` lists the variants)")


def _task_names() -> list[str]:
    try:
        from ..dense import list_dense_models
    except ImportError:
        return []
    return list_dense_models()


def info_dict(name: str, input_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Everything ``pvt info`` prints, as a JSON-ready dict (keys ``params``, ``gflops``, ...)."""
    from ..variants import VARIANTS

    if name in VARIANTS:
        return _variant_info(name, input_size or (224, 224))
    if name in _task_names():
        return _task_info(name, input_size)
    raise _unknown(name)


def _variant_info(name: str, size: tuple[int, int]) -> dict[str, Any]:
    import torch

    from ..flops import count_flops
    from ..registry import create_model
    from ..variants import VARIANTS

    v = VARIANTS[name]
    with torch.device("meta"):
        model = create_model(name)
        maps = model.forward_features(torch.empty(1, v.config.in_chans, *size))
    report = count_flops(model, size)
    per_stage = report.grouped(2)
    cfg = v.config
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
        "input_size": list(size),
        "params": report.params,
        "gflops": report.gflops,
        "gflops_modules_only": report.module_flops / 1e9,
        "attention_gflops": report.attention_flops / 1e9,
        "gflops_by_type": {k: x / 1e9 for k, x in sorted(report.by_type.items(), key=lambda kv: -kv[1])},
        "stages": stages,
        "config": cfg.to_dict(),
        "paper": dataclasses.asdict(v.paper),
        "official_num_params": v.num_params,
        "hub": {"hf": v.hf_hub_id, "timm": v.timm_hub_id, "official": v.official_url},
    }


def _task_info(name: str, size: tuple[int, int] | None) -> dict[str, Any]:
    import torch

    from ..flops import count_flops
    from ..dense import create_dense_model, get_dense_spec

    spec = get_dense_spec(name)
    size = size or spec.head.flops_input
    with torch.device("meta"):
        model = create_dense_model(name)
    method = spec.head.flops_method
    report = count_flops(model, size, method=method)
    return {
        "name": spec.name,
        "kind": spec.task,
        "head": spec.head.name,
        "backbone": spec.backbone,
        "input_size": list(size),
        "params": report.params,
        "gflops": report.gflops,
        "gflops_modules_only": report.module_flops / 1e9,
        "attention_gflops": report.attention_flops / 1e9,
        "counted": f"model.{method}(x)" if method else "model(x)",
        "gflops_by_part": {k: x / 1e9 for k, x in report.grouped(1).items()},
        "paper": {"params_m": spec.paper_params_m, "gflops": spec.paper_gflops, "metric": spec.paper_metric},
    }


def _print_info(d: dict[str, Any]) -> None:
    h, w = d["input_size"]
    print(f"{d['name']}  ({d.get('description') or d['kind']})")
    print(f"  parameters       {d['params']:,}")
    print(
        f"  GFLOPs at {h}x{w}  {d['gflops']:.3f}  (modules {d['gflops_modules_only']:.3f} + attention "
        f"products {d['attention_gflops']:.3f}; one multiply-add = one FLOP)"
    )
    if "stages" in d:
        print("  stage  channels  map (h x w)  stride  tokens  kv tokens  depth  heads  GFLOPs")
        for s in d["stages"]:
            print(
                f"  {s['stage']:>5}  {s['channels']:>8}  {s['height']:>5} x {s['width']:<5} {s['stride']:>6}  "
                f"{s['tokens']:>6}  {s['kv_tokens']:>9}  {s['depth']:>5}  {s['heads']:>5}  {s['gflops']:>6.3f}"
            )
        cfg = d["config"]
        switches = [k for k in ("overlap_patch_embed", "conv_ffn", "linear_sra", "pos_embed", "cls_token") if cfg[k]]
        print(f"  switches         {', '.join(switches) or 'none'}")
    else:
        print(f"  counted          {d['counted']} ({d['head']} on {d['backbone']})")
    paper = {k: x for k, x in d["paper"].items() if x is not None}
    print("  paper            " + ", ".join(f"{k}={x}" for k, x in paper.items()))


def run_info(args: argparse.Namespace) -> int:
    size = tuple(args.input_size) if args.input_size else None
    if size is not None and min(size) < 1:
        raise ValueError(f"--input-size must be two positive integers, got {size[0]} {size[1]}")
    d = info_dict(args.name, size)  # type: ignore[arg-type]
    if args.json:
        print(json.dumps(d, indent=2))
    else:
        _print_info(d)
    return 0


# ------------------------------------------------------------------------------------- complexity
def complexity_rows(models: list[str], sizes: list[int]) -> list[dict[str, Any]]:
    """Long-format rows (model, label, input_size, gflops, attention_gflops, params) for Figure 4."""
    from ..flops import FIGURE4_MODELS, complexity_curve

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


_COLORS = {
    "ViT-Small/16": "tab:red",
    "ViT-Small/32": "tab:purple",
    "PVTv1-Small": "tab:blue",
    "ResNet-50": "tab:gray",
    "PVTv2-B2": "tab:orange",
    "PVTv2-B2-Li": "tab:green",
}


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Left: GFLOPs against input side (the paper's Figure 4). Right: growth relative to the smallest
    size on log axes, with the pixel-count line (cost linear in the number of pixels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, rel) = plt.subplots(1, 2, figsize=(13, 5.4), dpi=110)
    labels = list(dict.fromkeys(r["label"] for r in rows))
    series = {lab: [r for r in rows if r["label"] == lab] for lab in labels}
    sizes = [p["input_size"] for p in series[labels[0]]]
    for lab in sorted(labels, key=lambda lab: -series[lab][-1]["gflops"]):  # legend in the order of the ends
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def run_complexity(args: argparse.Namespace) -> int:
    from ..flops import FIGURE4_MODELS, FIGURE4_SIZES
    from ..variants import VARIANTS

    sizes = list(args.sizes or FIGURE4_SIZES)
    if min(sizes) < 32:
        raise ValueError(f"--sizes must be at least 32 (the models' smallest input), got {min(sizes)}")
    models = list(args.models or FIGURE4_MODELS)
    for key in models:
        if key not in FIGURE4_MODELS and key not in VARIANTS:
            close = difflib.get_close_matches(key, [*FIGURE4_MODELS, *VARIANTS], n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ValueError(f"unknown model {key!r} for --models; {hint}choose from {', '.join(FIGURE4_MODELS)}")
    rows = complexity_rows(models, sizes)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out / "figure4.csv", out / "figure4.png"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _plot(rows, png_path)
    labels = list(dict.fromkeys(r["label"] for r in rows))
    width = max(len(lab) for lab in labels + ["GFLOPs at side"])
    print("GFLOPs at side".ljust(width) + "".join(f"{s:>8}" for s in sizes) + "   growth")
    for lab in labels:
        vals = [r["gflops"] for r in rows if r["label"] == lab]
        print(lab.ljust(width) + "".join(f"{v:>8.1f}" for v in vals) + f"  x{vals[-1] / vals[0]:.1f}")
    print(f"wrote {csv_path} and {png_path}")
    return 0
