"""One training step (forward, cross-entropy, backward, AdamW) of ours and timm's PVTv2, whole batches and
micro-batches, timed round-robin in one run:

    python benchmarks/train_step.py --model pvt_v2_b0 -b 16 --micro 8 --threads 2 --repeats 7

``--micro`` is the micro-batch size that ``pvt train`` picks on CPU (``--micro-batch``, auto): the
gradients are summed over the pieces, so the step computes the same update as the whole batch.
Running timm's model through the same micro-batches shows how much of the gain is the loop's.
``--allocator default`` keeps glibc's own malloc settings (``pvt.accel.runtime``); the last column counts the
new memory pages each step touched.
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
import torch.nn.functional as F

from pvt.accel.runtime import configure_allocator
from pvt.bench import reference_model, time_interleaved
from pvt.models.registry import create_model


def make_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, micro: int):
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        for xc, yc in zip(x.split(micro), y.split(micro)):
            (F.cross_entropy(model(xc), yc, reduction="sum") / len(x)).backward()
        opt.step()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="pvt_v2_b0")
    p.add_argument("-b", "--batch-size", type=int, default=16)
    p.add_argument("--micro", type=int, default=8)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--allocator", choices=["tuned", "default"], default=None, help="unset: $PVT_ALLOCATOR, else tuned")
    args = p.parse_args()
    mode = configure_allocator(args.allocator)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    y = torch.randint(0, 1000, (args.batch_size,))
    ours = create_model(args.model)
    theirs = reference_model("timm", args.model, ours)
    b, m = args.batch_size, args.micro
    steps = {
        "pvt": make_step(copy.deepcopy(ours), x, y, b),
        "timm": make_step(copy.deepcopy(theirs), x, y, b),
        f"pvt {b // m}x{m}": make_step(copy.deepcopy(ours), x, y, m),
        f"timm {b // m}x{m}": make_step(copy.deepcopy(theirs), x, y, m),
    }
    faults: dict[str, list[int]] = {}
    times = time_interleaved(steps, warmup=args.warmup, repeats=args.repeats, faults=faults)
    rate = {k: b / statistics.median(v) for k, v in times.items()}
    print(f"# {args.model}, batch {b}, {args.img_size}px, {torch.get_num_threads()} threads, allocator {mode}")
    for k, v in rate.items():
        print(f"{k:<14} {v:8.2f} img/s   ours-with-micro / this: {rate[f'pvt {b // m}x{m}'] / v:5.2f}   "
              f"page faults/step {statistics.median(faults[k]):8.0f}")


if __name__ == "__main__":
    main()
