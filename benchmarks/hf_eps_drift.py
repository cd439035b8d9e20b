"""How far HF transformers' single LayerNorm eps (1e-6) moves a PVT's outputs from the official code's
(1e-5 in the patch-embedding and spatial-reduction norms), for every variant:

    python benchmarks/hf_eps_drift.py [pvt_v2_b0 ...]

The weights are random with every bias and LayerNorm perturbed (N(0, 0.05^2)), as the parity tests use
them; the figures are max |difference| of the logits (1000-class head) and of the four feature maps
(headless) on two random 224x224 images (``pvt.weights.writing.eps_drift``, what ``pvt convert --to hf``
prints for the model it converts).
"""

from __future__ import annotations

import sys

import torch

import pvt
from pvt.weights.writing import eps_drift


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim <= 1 or bool((p == p.flatten()[0]).all()):
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def main() -> None:
    torch.set_num_threads(1)
    print("| variant | logits: max diff (max logit) | feature maps: max diff (max value) |")
    print("|---|---|---|")
    for name in sys.argv[1:] or pvt.list_models():
        row = []
        for classes in (1000, 0):
            torch.manual_seed(0)
            diff, scale = eps_drift(perturbed(pvt.create_model(name, num_classes=classes, accelerate=False)), 1e-6, 1e-6)
            row.append(f"{diff:.2e} ({scale:.2f})")
        print(f"| {name} | {row[0]} | {row[1]} |", flush=True)


if __name__ == "__main__":
    main()
