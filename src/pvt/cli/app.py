"""``pvt app``: a local web page (Gradio) to try models trained by ``pvt train`` on an image, side by side.

Each checkpoint gets a column: its top-5 with bars (classification), the drawn prediction (top-k bars,
boxes and masks with their names, or a segmentation overlay with its legend), the attention maps of every
stage and their rollout (:mod:`pvt.models.attention`), the time the prediction took and the precision path. The
page answers through :class:`pvt.api.Predictor`, the code path of ``pvt predict``; an upload that is no
image, a decompression bomb or an absurdly elongated image gets a one-line message on the page.
Gradio is the ``app`` extra: ``pip install 'pyramid-vision-transformer[app]'``. See docs/app.md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from .command import command, precision_flags

__all__ = ["register", "find_demo_checkpoint", "answer", "build_page"]

MAX_UPLOAD = "20mb"
"""The largest upload the page accepts (Gradio refuses bigger files before they reach the model)."""


def find_demo_checkpoint(runs: str | Path = "runs") -> Path:
    """The newest run folder under ``runs`` (where ``pvt demo`` and ``pvt train`` write) that holds a
    ``best.safetensors`` or ``last.safetensors``; a ValueError saying what to do when there is none."""
    from ..weights.run_folder import RunFolder

    root = Path(runs)
    found = [p for p in root.glob("*/*.safetensors") if p.name in (RunFolder.BEST, RunFolder.LAST)]
    if not found:
        raise ValueError(f"no checkpoint given and no run folder with best.safetensors under {str(root)!r}: run "
                         "`pvt demo` first (it writes runs/<name>/), or pass CHECKPOINT paths or --runs DIR")
    newest = max({p.parent for p in found}, key=lambda d: max(f.stat().st_mtime for f in d.glob("*.safetensors")))
    return newest


def _one_line(e: BaseException) -> str:
    return " ".join((str(e) or type(e).__name__).split())


def _enlarged(path: str | None, side: int = 384):
    """The drawing at ``path`` scaled up by a whole factor (nearest) until its short side reaches ``side``
    pixels: the built-in data's 32 and 64 px images are otherwise specks on the page."""
    if path is None:
        return None
    from PIL import Image

    img = Image.open(path)
    img.load()
    k = max(1, side // max(1, min(img.size)))
    return img if k == 1 else img.resize((img.size[0] * k, img.size[1] * k), Image.Resampling.NEAREST)


def answer(predictors: list[Any], image: str | None, query: tuple[float, float] | None = None,
           out_dir: str | Path | None = None, score_thresh: float = 0.3) -> tuple[str, list[dict[str, Any]]]:
    """What the page shows for ``image`` (a file path): a status line and, per predictor, ``{"top": {class:
    prob} or None, "picture": PIL image or None, "attention": PIL image or None, "info": markdown}``. Bad input
    never raises: the status line says what was wrong and every column is left empty."""
    empty = [{"top": None, "picture": None, "attention": None, "info": ""} for _ in predictors]
    if not image:
        return "Drop an image above, or pick an example.", empty
    out_dir = Path(out_dir or tempfile.mkdtemp(prefix="pvt-app-"))
    shown = []
    for i, pr in enumerate(predictors):
        try:
            t0 = time.perf_counter()
            # a folder per column: the drawings of one image by two models share a name
            rec = pr.predict([image], topk=5, out_dir=out_dir / str(i), score_thresh=score_thresh)[0]
            took = time.perf_counter() - t0
            t1 = time.perf_counter()
            pics = pr.attention(image, query=query)
            took_attention = time.perf_counter() - t1
        except (ValueError, OSError) as e:  # unreadable, a bomb, too elongated, not an image
            return f"**Refused:** {_one_line(e)}", empty
        except Exception as e:  # noqa: BLE001  (the page keeps serving whatever one image does)
            return f"**Failed on this image:** {type(e).__name__}: {_one_line(e)}", empty
        top = {t["class"]: t["prob"] for t in rec.get("top", [])} or None
        lines = [f"prediction **{1000 * took:.1f} ms**, attention maps {1000 * took_attention:.0f} ms",
                 f"precision path: {pr.precision}"]
        if "detections" in rec:
            lines.append(f"{len(rec['detections'])} detections: " + ", ".join(
                f"{d['class']} {d['score']:.2f}" for d in rec["detections"][:10]))
        if "class_fractions" in rec:
            lines.append("pixels: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in rec["class_fractions"].items()))
        shown.append({"top": top, "picture": _enlarged(rec.get("output")), "attention": pics.panel(size=200, columns=3),
                      "info": "  \n".join(lines)})
    return f"`{Path(image).name}`", shown


def build_page(predictors: list[Any], checkpoints: list[str], examples: list[str]):
    """The Gradio page (a ``gr.Blocks``): upload and query controls, then one column per checkpoint."""
    import gradio as gr

    with gr.Blocks(title="PVT: try a checkpoint") as page:
        gr.Markdown("## Pyramid Vision Transformer: try a trained checkpoint\n"
                    "Drop an image (or pick an example): each model answers in its own column, with its attention "
                    "maps (each stage's attention over its reduced key map, and the rollout; docs/attention.md).")
        with gr.Row():
            upload = gr.File(label="image", type="filepath", elem_id="upload")
            with gr.Column():
                one_query = gr.Checkbox(label="attention of one query (else: the mean of every query)", value=False)
                qy = gr.Slider(0, 1, value=0.5, step=0.01, label="query y (fraction of the height)")
                qx = gr.Slider(0, 1, value=0.5, step=0.01, label="query x (fraction of the width)")
                thresh = gr.Slider(0, 1, value=0.3, step=0.05, label="detections: lowest score shown")
        status = gr.Markdown(elem_id="status")
        outputs: list[Any] = [status]
        with gr.Row():
            for i, (pr, ck) in enumerate(zip(predictors, checkpoints)):
                with gr.Column():
                    gr.Markdown(f"### {pr.name} ({pr.task})\n`{ck}`")
                    if pr.task == "classification":
                        outputs.append(gr.Label(num_top_classes=5, label="top-5", elem_id=f"top5-{i}"))
                    outputs.append(gr.Image(label="prediction", type="pil", elem_id=f"picture-{i}"))
                    outputs.append(gr.Image(label="attention: input, stages 1-4, rollout", type="pil",
                                            elem_id=f"attention-{i}"))
                    outputs.append(gr.Markdown(elem_id=f"info-{i}"))
        if examples:
            gr.Examples(examples=[[e] for e in examples], inputs=[upload], label="examples (held-out images)")

        def run(path, use_query, y, x, score):
            text, shown = answer(predictors, path, (float(y), float(x)) if use_query else None,
                                 score_thresh=float(score))
            values: list[Any] = [text]
            for pr, s in zip(predictors, shown):
                if pr.task == "classification":
                    values.append(s["top"])
                values += [s["picture"], s["attention"], s["info"]]
            return values

        for trigger in (upload.change, one_query.change, qy.release, qx.release, thresh.release):
            trigger(run, inputs=[upload, one_query, qy, qx, thresh], outputs=outputs)
    return page


def _cmd_app(args: argparse.Namespace) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local page: no calls home
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ValueError("the web page needs the app extra: pip install 'pyramid-vision-transformer[app]' "
                         "(Gradio)") from None
    from ..api import load_predictor

    checkpoints = [str(c) for c in args.checkpoints] or [str(find_demo_checkpoint(args.runs))]
    predictors = [load_predictor(c, device=args.device, precision=args.precision, calibration=args.calibration) for c in checkpoints]
    examples = list(dict.fromkeys(e for pr in predictors for e in pr.example_images(args.examples)))
    page = build_page(predictors, checkpoints, examples)
    print(f"pvt app: {len(predictors)} model(s) at http://{args.host}:{args.port}  (Ctrl-C stops)", flush=True)
    page.launch(server_name=args.host, server_port=args.port, share=False, inbrowser=False, quiet=True,
                max_file_size=MAX_UPLOAD, show_error=False)
    return 0


def register(sub) -> None:
    p = command(sub, "app", _cmd_app,
                "a local web page to try checkpoints on images: top-5, boxes / masks / segments, attention maps",
                "Serve a page (Gradio, the `app` extra) on 127.0.0.1 where an uploaded or example image goes "
                "through each CHECKPOINT (side by side), as pvt predict does. Without CHECKPOINT: the newest "
                "run under --runs (where pvt demo writes).")
    p.add_argument("checkpoints", nargs="*", metavar="CHECKPOINT",
                   help="a .safetensors written by pvt train, or its run folder (several: side by side)")
    p.add_argument("--runs", default="runs", help="where to look for a run without CHECKPOINT (default: runs)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--device", default="auto")
    precision_flags(p)
    p.add_argument("--examples", type=int, default=6, help="example images from each model's held-out data")

