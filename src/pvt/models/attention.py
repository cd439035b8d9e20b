"""What each query of a PVT attends to: the attention weights of every block, and their rollout.

A PVT block's attention (:class:`pvt.layers.SpatialReductionAttention`) lets each query token of an
``h x w`` map attend to a *reduced* key map: an ``(h // R) x (w // R)`` map made by a stride-``R``
convolution (SRA, ``R`` the stage's ``sr_ratio``), the full map (``R == 1``), or a fixed ``7 x 7`` map
made by adaptive average pooling (linear SRA, v2-Li). :func:`attention_maps` records
``softmax(Q K^T / sqrt(d))`` of every block (per head, float32) and gives it back as maps over those key
grids; :meth:`AttentionMaps.rollout` chains them through the stages down to the stage-1 map.

The weights are recomputed from each attention module's own input with plain PyTorch operations, in
float32 and outside autocast, while forward pre-hooks keep the whole model on its plain forward: an
accelerated, bfloat16 or int8 model gives the same maps as its plain float32 self (the hooks are removed
afterwards; the plain forward itself is not changed). How to read them: docs/attention.md.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..layers import SpatialReductionAttention, as_tokens, map_part
from .model import PyramidVisionTransformer

__all__ = ["AttentionMaps", "attention_maps", "find_pvt"]


def find_pvt(model: nn.Module) -> PyramidVisionTransformer:
    """``model`` itself when it is a PVT, else the first PVT inside it (a detector's or segmenter's backbone)."""
    if isinstance(model, PyramidVisionTransformer):
        return model
    for m in model.modules():
        if isinstance(m, PyramidVisionTransformer):
            return m
    raise ValueError(f"{type(model).__name__} holds no Pyramid Vision Transformer: attention maps need one")


@dataclass
class AttentionMaps:
    """The attention weights of one forward pass.

    ``weights[s][b]``: stage ``s``, block ``b``: ``(B, heads, N, M)`` float32 on the CPU, rows summing to 1
    (``N`` queries: ``query_prefix[s]`` leading class tokens, then the ``query_grid[s]`` map in row-major
    order; ``M`` keys: ``key_prefix[s]`` class tokens, then the ``key_grid[s]`` map). ``key_windows[s]``: for
    each axis, the ``[start, stop)`` rows / columns of the stage's query map that each key cell summarises.
    ``strides[s]``: pixels of the input per query-map cell; ``input_size``: the input's ``(H, W)``.
    """

    weights: list[list[Tensor]]
    query_grid: list[tuple[int, int]]
    key_grid: list[tuple[int, int]]
    query_prefix: list[int]
    key_prefix: list[int]
    key_windows: list[tuple[list[tuple[int, int]], list[tuple[int, int]]]]
    embed_windows: list[tuple[list[tuple[int, int]], list[tuple[int, int]]]] = field(default_factory=list)
    input_size: tuple[int, int] = (0, 0)

    @property
    def num_stages(self) -> int:
        return len(self.weights)

    def _stage(self, stage: int) -> int:
        n = self.num_stages
        if isinstance(stage, bool) or not isinstance(stage, int) or not -n <= stage < n:
            raise ValueError(f"stage {stage!r} out of range: the model has {n} stages (0 .. {n - 1}, or -1 for the last)")
        return stage % n

    def query_index(self, stage: int, query: tuple[float, float] | None) -> int | None:
        """The token index of ``query`` = ``(y, x)`` as fractions of the image's height and width (``0.5, 0.5``:
        the centre) on stage ``stage``'s query map; None stays None (every map query)."""
        if query is None:
            return None
        y, x = query
        if not (0.0 <= y <= 1.0 and 0.0 <= x <= 1.0):
            raise ValueError(f"query {query!r}: expected (y, x) as fractions of the image in [0, 1]")
        s = self._stage(stage)
        h, w = self.query_grid[s]
        return self.query_prefix[s] + min(int(y * h), h - 1) * w + min(int(x * w), w - 1)

    def map(self, stage: int = -1, block: int = -1, head: int | None = None,
            query: tuple[float, float] | None = None) -> Tensor:
        """Attention over stage ``stage``'s reduced key map in block ``block``: ``(B, kh, kw)``.

        ``head``: one head, or None for the mean of the heads. ``query``: ``(y, x)`` fractions of the image
        (the query token under that point), or None for the mean over every query of the map. Each map sums
        to 1 less the weight on class-token keys (v1's last stage)."""
        s = self._stage(stage)
        blocks = self.weights[s]
        if isinstance(block, bool) or not isinstance(block, int) or not -len(blocks) <= block < len(blocks):
            raise ValueError(f"block {block!r} out of range: stage {s} has {len(blocks)} blocks")
        a = blocks[block]
        heads = a.shape[1]
        if head is not None:
            if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < heads:
                raise ValueError(f"head {head!r} out of range: stage {s} has {heads} heads (0 .. {heads - 1})")
            a = a[:, head]
        else:
            a = a.mean(1)
        q = self.query_index(s, query)
        a = a[:, self.query_prefix[s]:].mean(1) if q is None else a[:, q]
        kh, kw = self.key_grid[s]
        return a[:, self.key_prefix[s]:].reshape(a.shape[0], kh, kw)

    def on_query_map(self, stage: int = -1, block: int = -1, head: int | None = None,
                     query: tuple[float, float] | None = None) -> Tensor:
        """:meth:`map` laid on the stage's query map ``(B, h, w)``: each key cell's weight spread evenly over
        the query positions its window summarises (what a picture over the image shows)."""
        s = self._stage(stage)
        m = self.map(s, block, head, query)
        h, w = self.query_grid[s]
        return (m.flatten(1) @ _cover(*self.key_windows[s], h, w)).reshape(m.shape[0], h, w)

    def rollout(self, query: tuple[float, float] | None = None, residual: float = 0.5) -> Tensor:
        """Attention rollout (Abnar & Zuidema, 2020) through every block, down to the stage-1 map:
        ``(B, h1, w1)``, summing to 1: how much of the last stage's output comes from each stage-1 token.

        Start: the last stage's pooled output (the class token for v1, the mean of the map tokens for v2),
        or the token under ``query``. Each block, from the last back: ``v <- (1 - residual) * (v A) P +
        residual * v``, with ``A`` the head-mean attention and ``P`` spreading each key cell's weight evenly
        over the query tokens its window covers (the reduced keys upsampled to the query map; the residual
        path is the identity). Between stages, each token's weight is spread evenly over the
        previous stage's tokens of its patch embedding's stride footprint; weight left on a class token (it has
        no position below) is dropped and the rest renormalised."""
        last = self.num_stages - 1
        b = self.weights[last][-1].shape[0]
        n = self.weights[last][-1].shape[2]
        q = self.query_index(last, query)
        v = torch.zeros(b, n)
        if q is not None:
            v[:, q] = 1.0
        elif self.query_prefix[last]:
            v[:, 0] = 1.0  # v1 classifies from the class token
        else:
            v[:] = 1.0 / n
        for s in range(last, -1, -1):
            spread = _cover(*self.key_windows[s], *self.query_grid[s])  # (M_map, N_map)
            kp, qp = self.key_prefix[s], self.query_prefix[s]
            for a in reversed(self.weights[s]):
                va = torch.einsum("bn,bnm->bm", v, a.mean(1))  # weight on each key
                vk = torch.cat([va[:, :kp], va[:, kp:] @ spread], dim=1) if kp else va @ spread
                if kp != qp:  # no class-token key to put a class-token query's weight on: keep it aside
                    vk = torch.cat([torch.zeros(b, qp), vk], dim=1)
                v = (1 - residual) * vk + residual * v
            v = v[:, qp:]
            v = v / v.sum(1, keepdim=True).clamp_min(1e-30)
            if s > 0:
                v = v @ _cover(*self.embed_windows[s], *self.query_grid[s - 1])
        h1, w1 = self.query_grid[0]
        return v.reshape(b, h1, w1)


def _axis(windows: list[tuple[int, int]], n: int) -> Tensor:
    """``(len(windows), n)``: row ``i`` spreads 1 evenly over ``[start, stop)`` of ``windows[i]`` (clipped)."""
    m = torch.zeros(len(windows), n)
    for i, (a, b) in enumerate(windows):
        a, b = max(a, 0), min(b, n)
        m[i, a:b] = 1.0 / max(b - a, 1)
    return m


def _cover(rows: list[tuple[int, int]], cols: list[tuple[int, int]], h: int, w: int) -> Tensor:
    """Windows over an ``h x w`` map (row-major tokens) -> ``(len(rows) * len(cols), h * w)`` spreading matrix."""
    return torch.kron(_axis(rows, h), _axis(cols, w))


def _key_windows(module: SpatialReductionAttention, h: int, w: int):
    """The ``[start, stop)`` query rows and columns each key cell of ``module`` summarises."""
    if module.pool is not None:  # adaptive average pooling: PyTorch's bins
        p = module.pool.output_size
        ph, pw = (p, p) if isinstance(p, int) else p

        def bins(k: int, n: int) -> list[tuple[int, int]]:
            return [((i * n) // k, -((-(i + 1) * n) // k)) for i in range(k)]

        return bins(ph, h), bins(pw, w)
    r = module.sr.stride[0] if module.sr is not None else 1
    return [(i * r, i * r + r) for i in range(h // r)], [(j * r, j * r + r) for j in range(w // r)]


def _embed_windows(stage, out_h: int, out_w: int):
    """The ``[start, stop)`` rows and columns of the previous map that each token of ``stage``'s patch
    embedding stands for: its ``S x S`` stride footprint (v2's overlapping kernel reaches ``S - 1`` cells
    further on each side; the rollout counts a token for the cells it sits on, so that uniform attention
    rolls out to a uniform map instead of the kernels' border pattern)."""
    s = stage.patch_embed.proj.stride[0]
    return [(i * s, i * s + s) for i in range(out_h)], [(j * s, j * s + s) for j in range(out_w)]


def attention_weights(module: SpatialReductionAttention, x: Tensor, h: int, w: int) -> Tensor:
    """``softmax(Q K^T / sqrt(d))`` of ``module`` for its input tokens ``x (B, N, C)`` of an ``h x w`` map:
    ``(B, heads, N, M)`` in float32, from the module's parameters with plain operations."""
    x = x.float()
    b, n, c = x.shape
    nh, hd = module.num_heads, module.head_dim
    q = module.q(x).reshape(b, n, nh, hd).transpose(1, 2)
    source = x
    if module.sr is not None:
        m = map_part(x, h, w)
        if module.pool is not None:
            m = module.pool(m)
        source = module.norm(as_tokens(module.sr(m)))
        if module.act is not None:
            source = module.act(source)
    k = module.kv(source)[..., :c].reshape(b, -1, nh, hd).transpose(1, 2)
    return ((q @ k.transpose(-2, -1)) * hd ** -0.5).softmax(-1)


def _keep_plain(module: nn.Module, args: tuple) -> None:
    """A forward pre-hook that does nothing: its presence sends an accelerated module down its plain forward."""


@torch.no_grad()
def attention_maps(model: nn.Module, image: Tensor) -> AttentionMaps:
    """Run ``model``'s PVT (``model`` itself, or the backbone inside a detector / segmenter) on ``image``
    (``(3, H, W)`` or ``(B, 3, H, W)``, normalised as the model's input) and record every block's attention.

    Pick a map with :meth:`AttentionMaps.map` (stage, block, head, query) or chain them with
    :meth:`AttentionMaps.rollout`; the weights are exact float32 whatever the model's precision or
    acceleration (see the module text)."""
    pvt = find_pvt(model)
    if not isinstance(image, Tensor) or image.ndim not in (3, 4):
        raise ValueError(f"image: expected a (3, H, W) or (B, 3, H, W) tensor, got "
                         f"{tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__}")
    x = image[None] if image.ndim == 3 else image
    param = next(pvt.parameters())
    x = x.to(param.device, torch.float32)
    n_st = len(pvt.stages)
    weights: list[list[Tensor]] = [[] for _ in range(n_st)]
    grids: list[tuple[int, int]] = [(0, 0)] * n_st
    windows: list = [None] * n_st
    prefix: list[int] = [0] * n_st
    key_prefix: list[int] = [0] * n_st

    def hook_for(s: int):
        def hook(module, args):
            tokens, h, w = args[0], int(args[1]), int(args[2])
            a = attention_weights(module, tokens, h, w)
            weights[s].append(a.cpu())
            grids[s] = (h, w)
            prefix[s] = tokens.shape[1] - h * w
            if windows[s] is None:
                windows[s] = _key_windows(module, h, w)
                key_prefix[s] = a.shape[-1] - len(windows[s][0]) * len(windows[s][1])
        return hook

    was_training = pvt.training
    pvt.eval()
    try:
        with ExitStack() as stack:
            for s, stage in enumerate(pvt.stages):
                for blk in stage.blocks:
                    stack.callback(blk.attn.register_forward_pre_hook(hook_for(s)).remove)
                # any hook keeps an accelerated module on its plain forward: the patch embeddings too
                stack.callback(stage.patch_embed.register_forward_pre_hook(_keep_plain).remove)
            stack.enter_context(torch.autocast(x.device.type, enabled=False))
            pvt.forward_intermediates(x, intermediates_only=True)
    finally:
        pvt.train(was_training)
    embed = [([], [])]
    for s in range(1, n_st):
        embed.append(_embed_windows(pvt.stages[s], *grids[s]))
    return AttentionMaps(
        weights=weights,
        query_grid=grids,
        key_grid=[(len(r), len(c)) for r, c in windows],
        query_prefix=prefix,
        key_prefix=key_prefix,
        key_windows=windows,
        embed_windows=embed,
        input_size=(int(x.shape[-2]), int(x.shape[-1])),
    )
