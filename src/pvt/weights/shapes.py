"""What a state dict (in this library's names) says about its architecture, and which registered
variant it fits: used to turn a shape mismatch into "looks like pvt_v2_b2, not pvt_v2_b0".

Weights fix every architecture field except the number of attention heads (heads split channels,
they do not change any tensor's shape), so variants are matched on the other fields.
"""

from __future__ import annotations

import re
from typing import Any

from torch import Tensor

from ..models.config import PVTConfig
from ..models.variants import VARIANTS

__all__ = ["ARCH_FIELDS", "infer_architecture", "matching_variants", "describe_architecture"]

# the fields that shapes determine (num_heads is not among them)
ARCH_FIELDS = (
    "embed_dims",
    "depths",
    "mlp_ratios",
    "sr_ratios",
    "patch_strides",
    "overlap_patch_embed",
    "conv_ffn",
    "linear_sra",
    "pos_embed",
    "cls_token",
)


def infer_architecture(sd: dict[str, Tensor]) -> dict[str, Any] | None:
    """Architecture fields read from tensor shapes, plus ``num_classes`` and ``in_chans``.

    ``None`` if ``sd`` does not have the ``stages.{i}.patch_embed.proj.weight`` layout, or its tensors are not
    of the ranks a PVT's are (a crafted file: a 1-D patch embedding, a 0-D MLP weight).
    """
    n = 0
    while f"stages.{n}.patch_embed.proj.weight" in sd:
        n += 1
    if n == 0:
        return None
    proj = [sd[f"stages.{i}.patch_embed.proj.weight"] for i in range(n)]
    ranks = {"mlp.fc1.weight": 2, "attn.sr.weight": 4}
    if any(p.ndim != 4 for p in proj) or any(
            k.endswith(f".blocks.0.{name}") and getattr(v, "ndim", -1) != rank for k, v in sd.items()
            for name, rank in ranks.items()):
        return None
    dims = tuple(int(p.shape[0]) for p in proj)
    kernels = [int(p.shape[-1]) for p in proj]
    overlap = kernels[0] % 2 == 1 and kernels[0] > 1  # v2: 2S-1 (odd); v1: S
    strides = tuple((k + 1) // 2 if overlap else k for k in kernels)
    depths = tuple(
        len({int(m[1]) for k in sd if (m := re.match(rf"stages\.{i}\.blocks\.(\d+)\.", k))}) for i in range(n)
    )
    mlp, sr = [], []
    # linear SRA: a 1x1 "sr" conv in every stage, the last one included (SRA has none where R = 1)
    last_sr = sd.get(f"stages.{n - 1}.blocks.0.attn.sr.weight")
    linear = last_sr is not None and last_sr.shape[-1] == 1
    for i in range(n):
        fc1 = sd.get(f"stages.{i}.blocks.0.mlp.fc1.weight")
        mlp.append(float(fc1.shape[0]) / dims[i] if fc1 is not None else 0.0)
        w = sd.get(f"stages.{i}.blocks.0.attn.sr.weight")
        sr.append(int(w.shape[-1]) if w is not None and not linear else 1)
    head = sd.get("head.weight")
    return {
        "embed_dims": dims,
        "depths": depths,
        "mlp_ratios": tuple(mlp),
        "sr_ratios": tuple(sr),
        "patch_strides": strides,
        "overlap_patch_embed": overlap,
        "conv_ffn": any(".mlp.dwconv." in k for k in sd),
        "linear_sra": linear,
        "pos_embed": any(k.endswith(".pos_embed") for k in sd),
        "cls_token": any(k.endswith(".cls_token") for k in sd),
        "num_classes": int(head.shape[0]) if head is not None and head.ndim == 2 else 0,
        "in_chans": int(proj[0].shape[1]),
    }


def _same(arch: dict[str, Any], cfg: PVTConfig, ignore_sr: bool) -> bool:
    for f in ARCH_FIELDS:
        if f == "sr_ratios" and ignore_sr:
            continue
        want = getattr(cfg, f)
        if (tuple(arch[f]) != tuple(want)) if isinstance(want, tuple) else (arch[f] != want):
            return False
    return True


def matching_variants(arch: dict[str, Any]) -> list[str]:
    """Registered variants whose architecture (all but heads) equals ``arch``; of rows with one config
    (MiT-B5 is PVT v2-B5) only the first registered."""
    found = {v.config: name for name, v in reversed(VARIANTS.items()) if _same(arch, v.config, v.config.linear_sra)}
    return [name for name in VARIANTS if name in found.values()]


def describe_architecture(arch: dict[str, Any]) -> str:
    """A one-line summary: channels, depths, MLP ratios and switches."""
    switches = [f for f in ("overlap_patch_embed", "conv_ffn", "linear_sra", "pos_embed", "cls_token") if arch[f]]
    mlp = tuple(int(r) if float(r).is_integer() else r for r in arch["mlp_ratios"])
    return (
        f"embed_dims {arch['embed_dims']}, depths {arch['depths']}, mlp_ratios {mlp}"
        f"{', ' + ', '.join(switches) if switches else ''}"
    )
