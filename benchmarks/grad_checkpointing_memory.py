"""Peak memory of one training step of a dense model, with and without gradient checkpointing of its PVT
backbone (``--grad-checkpointing`` in ``pvt train``), each case in a fresh process on the CPU:

    python benchmarks/grad_checkpointing_memory.py semfpn_pvt_v2_b2:1024x1024 mask_rcnn_pvt_v2_b2:800x1333

One step is what ``pvt train`` does per batch: the model in training mode (random weights, the paper's
class count, stochastic depth 0.1), forward with the task's loss, backward, AdamW step. Two figures per
case: the peak of the bytes PyTorch allocated during the step beyond those live before it (the
profiler's memory events: activations, gradients, AdamW's state), and the process's peak resident set
(``ru_maxrss``: everything, the Python interpreter and the weights included). One thread by default.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def _batch(task: str, n: int, h: int, w: int, classes: int):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, h, w, generator=g)
    if task == "segmentation":
        return images, torch.randint(0, classes, (n, h, w), generator=g)
    targets = []
    for _ in range(n):  # five objects, with boxes and (for Mask R-CNN) their masks
        xy = torch.rand(5, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = torch.rand(5, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3]) + 16
        boxes = torch.cat([xy, xy + wh], dim=1)
        masks = torch.zeros(5, h, w, dtype=torch.uint8)
        for m, (x0, y0, x1, y1) in zip(masks, boxes.round().long().tolist()):
            m[y0:y1, x0:x1] = 1
        targets.append({"boxes": boxes, "labels": torch.randint(0, classes, (5,), generator=g), "masks": masks})
    return list(images), targets


def one_case(name: str, h: int, w: int, grad_checkpointing: bool, batch: int) -> dict:
    """Build the model, run one training step; the step's allocation peak and the process's peak RSS."""
    from pvt.bench import peak_memory
    from pvt.dense import create_dense_model, get_dense_spec
    from pvt.models.model import PyramidVisionTransformer

    spec = get_dense_spec(name)
    torch.manual_seed(0)
    kwargs = {} if spec.task == "segmentation" else {"min_size": min(h, w), "max_size": max(h, w)}
    model = create_dense_model(name, **kwargs).train()
    for body in (m for m in model.modules() if isinstance(m, PyramidVisionTransformer)):
        body.set_grad_checkpointing(grad_checkpointing)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    images, targets = _batch(spec.task, batch, h, w, spec.default_num_classes)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        if spec.task == "segmentation":
            loss = F.cross_entropy(model(images), targets)
        else:
            loss = sum(model(images, targets).values())
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    step_peak = peak_memory(step)
    return {"model": name, "size": f"{h}x{w}", "batch": batch, "grad_checkpointing": grad_checkpointing,
            "step_peak_mib": step_peak / 2**20, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "seconds": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cases", nargs="+", metavar="MODEL:HxW", help="e.g. semfpn_pvt_v2_b2:1024x1024")
    p.add_argument("-b", "--batch-size", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child: one case, one JSON line
    p.add_argument("--ckpt", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        name, size = args.cases[0].split(":")
        h, w = (int(v) for v in size.split("x"))
        print(json.dumps(one_case(name, h, w, args.ckpt, args.batch_size)))
        return
    print(f"| model | input | batch | checkpointing | step peak (MiB) | process peak RSS (MiB) | step time (s) |")
    print("|---|---|---|---|---|---|---|")
    for case in args.cases:
        rows = []
        for ckpt in (False, True):
            cmd = [sys.executable, __file__, case, "--one", "-b", str(args.batch_size), "--threads", str(args.threads)]
            out = subprocess.run(cmd + (["--ckpt"] if ckpt else []), capture_output=True, text=True,
                                 env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
            if out.returncode:
                sys.exit(f"{case} (checkpointing {ckpt}) failed:\n{out.stderr[-2000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(r)
            print(f"| {r['model']} | {r['size']} | {r['batch']} | {'on' if ckpt else 'off'} | {r['step_peak_mib']:,.0f} "
                  f"| {r['peak_rss_mib']:,.0f} | {r['seconds']:.1f} |", flush=True)
        off, on = rows
        print(f"|  |  |  | saved | {1 - on['step_peak_mib'] / off['step_peak_mib']:.0%} "
              f"| {1 - on['peak_rss_mib'] / off['peak_rss_mib']:.0%} | x{on['seconds'] / off['seconds']:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
