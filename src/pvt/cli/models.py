"""`pvt models`, `pvt info NAME` and `pvt complexity`: argument parsing and printing around
:mod:`pvt.tools.reports`, which computes the variant table, one model's figures and the GFLOPs-against-input-size
curves of the PVT v2 paper's Figure 4. The reports module is imported inside the commands, so that
``pvt --help`` does not load it.
"""

from __future__ import annotations

import argparse
import json

from .command import command

__all__ = ["register"]


def register(sub) -> None:
    """Add ``models``, ``info`` and ``complexity`` to the pvt parser."""
    p = command(sub, "models", run_models,
            "every PVT variant: our parameters and GFLOPs at 224 beside the paper's (Table 2)",
            "List every registered variant with its parameter count and GFLOPs at 224x224 as counted here "
            "(one multiply-add = one FLOP; 'GFLOPs' includes the attention products Q.K^T and A.V, as both "
            "PVT papers count; 'modules only' leaves them out), beside the paper's parameters, GFLOPs and "
            "ImageNet top-1.", show_defaults=True)
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    out.add_argument("--markdown", action="store_true", help="print a Markdown table (docs/paper_tables.md)")
    p.add_argument("--pattern", default="*", metavar="GLOB", help="only names matching this shell pattern")
    p.add_argument(
        "--dense", action="store_true",
        help="list the dense-prediction models of pvt.dense instead (Tables 3 and 5: Semantic FPN GFLOPs at "
        "512x512, detectors at 800x1280 through forward_dummy); slower",
    )

    p = command(sub, "info", run_info,
            "one model: parameters, GFLOPs, per-stage shapes, config and the paper's figures",
            "Describe a PVT variant (see `pvt models`) or a dense-prediction model of pvt.dense "
            "(e.g. semfpn_pvt_v2_b2, retinanet_pvt_v2_b0): parameters, GFLOPs at the input size, the map "
            "of every stage, the configuration and what the paper reports.")
    p.add_argument("name", metavar="NAME", help="variant or dense-prediction model name")
    p.add_argument(
        "--input-size", nargs=2, type=int, metavar=("H", "W"), default=None,
        help="input height and width (default: 224 224; Semantic FPN 512 512; detectors 800 1280)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")

    p = command(sub, "complexity", run_complexity,
            "GFLOPs against input size (PVT v2 paper, Figure 4): writes figure4.csv and figure4.png",
            "Count the GFLOPs of ViT-Small/16 and /32, PVTv1-Small, ResNet-50, PVTv2-B2 and PVTv2-B2-Li "
            "at square input sizes and write DIR/figure4.csv and DIR/figure4.png (Figure 4 of the PVT v2 "
            "paper).")
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


def run_models(args: argparse.Namespace) -> int:
    from ..tools.reports import dense_rows, model_rows, render_markdown, render_text

    rows = dense_rows(args.pattern) if args.dense else model_rows(args.pattern)
    if not rows:
        raise ValueError(f"no {'dense-prediction ' if args.dense else ''}model matches --pattern {args.pattern!r}")
    if args.json:
        print(json.dumps(rows, indent=2))
    elif args.markdown:
        print(render_markdown(rows, args.dense))
    else:
        print(render_text(rows, args.dense))
    return 0


def run_info(args: argparse.Namespace) -> int:
    from ..tools.reports import info_dict, render_info

    size = tuple(args.input_size) if args.input_size else None
    if size is not None and min(size) < 1:
        raise ValueError(f"--input-size must be two positive integers, got {size[0]} {size[1]}")
    d = info_dict(args.name, size)  # type: ignore[arg-type]
    print(json.dumps(d, indent=2) if args.json else render_info(d))
    return 0


def run_complexity(args: argparse.Namespace) -> int:
    from ..tools.reports import render_complexity, write_figure4

    rows, csv_path, png_path = write_figure4(args.out, args.models, args.sizes)
    print(render_complexity(rows))
    print(f"wrote {csv_path} and {png_path}")
    return 0
