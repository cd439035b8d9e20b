"""The one model class of the family: a :class:`PyramidVisionTransformer` built from a :class:`PVTConfig`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from .config import PVTConfig
from .layers import Block, PatchEmbed, as_map
from .tracing import is_tracing

__all__ = ["PyramidVisionTransformer", "PVTStage", "FeatureInfo", "stage_indices"]


def stage_indices(num_stages: int, indices: int | Sequence[int] | None) -> list[int]:
    """Stage indices as timm takes them: ``None`` every stage, an int ``n`` the last ``n``, a sequence
    those stages (negative ones count from the end). Returned sorted, in ``0 .. num_stages - 1``; a
    ValueError for an index out of range, a repeated one or an empty selection."""
    if indices is None:
        return list(range(num_stages))
    if isinstance(indices, bool) or not isinstance(indices, (int, Sequence)) or isinstance(indices, str):
        raise ValueError(f"stage indices must be an int or a sequence of ints, got {indices!r}")
    if isinstance(indices, int):
        if not 1 <= indices <= num_stages:
            raise ValueError(f"{indices} stages asked for: an int selects the last n of the {num_stages} stages")
        return list(range(num_stages - indices, num_stages))
    out = []
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, int) or not -num_stages <= i < num_stages:
            raise ValueError(f"stage index {i!r} out of range: the model has {num_stages} stages "
                             f"(0 .. {num_stages - 1}, or -{num_stages} .. -1 from the end)")
        out.append(i % num_stages)
    if not out or len(set(out)) != len(out):
        raise ValueError(f"stage indices {tuple(indices)!r} must name each stage at most once, and at least one")
    return sorted(out)


class FeatureInfo(list):
    """The maps a model gives: one ``{"num_chs", "reduction", "module", "index"}`` dict per map, in the
    order of the maps (timm's keys), with timm's accessors ``channels()`` and ``reduction()``."""

    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self]

    def reduction(self) -> list[int]:
        return [f["reduction"] for f in self]


class PVTStage(nn.Module):
    """Patch embedding, optional position embedding / class token, blocks, optional LayerNorm.

    ``(B, C_in, H, W) -> (B, h*w [+1], C)`` tokens and ``(h, w)``.
    """

    def __init__(self, cfg: PVTConfig, index: int, in_chans: int, drop_path: list[float]):
        super().__init__()
        dim = cfg.embed_dims[index]
        last = index == cfg.num_stages - 1
        self.patch_embed = PatchEmbed(
            in_chans, dim, cfg.patch_strides[index], cfg.overlap_patch_embed, cfg.embed_norm_eps
        )
        # the grid the position embedding is laid out on: this stage's map at cfg.img_size
        grid = (cfg.img_size, cfg.img_size)
        for stage in range(index + 1):
            s = cfg.patch_strides[stage]
            k, p = (2 * s - 1, s - 1) if cfg.overlap_patch_embed else (s, 0)
            grid = tuple((g + 2 * p - k) // s + 1 for g in grid)
        self.grid: tuple[int, int] = grid  # type: ignore[assignment]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cfg.cls_token and last else None
        self.num_prefix = 1 if self.cls_token is not None else 0
        self.pos_embed = (
            nn.Parameter(torch.zeros(1, grid[0] * grid[1] + self.num_prefix, dim)) if cfg.pos_embed else None
        )
        self.pos_drop = nn.Dropout(cfg.drop_rate) if cfg.pos_embed else nn.Identity()
        self.blocks = nn.ModuleList(
            Block(
                dim,
                num_heads=cfg.num_heads[index],
                mlp_ratio=cfg.mlp_ratios[index],
                sr_ratio=cfg.sr_ratios[index],
                linear_sra=cfg.linear_sra,
                conv_ffn=cfg.conv_ffn,
                pool_size=cfg.pool_size,
                qkv_bias=cfg.qkv_bias,
                drop=cfg.drop_rate,
                attn_drop=cfg.attn_drop_rate,
                drop_path=drop_path[j],
                eps=cfg.layer_norm_eps,
                embed_eps=cfg.embed_norm_eps,
            )
            for j in range(cfg.depths[index])
        )
        has_norm = cfg.stage_norms or (last and cfg.final_norm)
        self.norm = nn.LayerNorm(dim, eps=cfg.layer_norm_eps) if has_norm else None
        self.grad_checkpointing = False
        """Recompute each block's activations in the backward pass instead of keeping them (see
        :meth:`PyramidVisionTransformer.set_grad_checkpointing`)."""

    def _pos_embed(self, h: int, w: int) -> Tensor:
        pos = self.pos_embed
        assert pos is not None
        if not is_tracing() and (h, w) == self.grid:
            return pos  # (traced graphs always resize: exact at the native grid, shape-generic elsewhere)
        prefix, grid = pos[:, : self.num_prefix], pos[:, self.num_prefix :]
        gh, gw = self.grid
        grid = grid.reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)
        return torch.cat([prefix, grid.flatten(2).transpose(1, 2)], dim=1)

    def forward_blocks(self, x: Tensor) -> tuple[Tensor, int, int]:
        """The stage up to its closing LayerNorm: patch embedding, class token, position embedding,
        blocks. ``(B, C_in, H, W) -> (B, h*w [+1], C), h, w``."""
        x, h, w = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if self.pos_embed is not None:
            x = self.pos_drop(x + self._pos_embed(h, w))
        recompute = self.grad_checkpointing and torch.is_grad_enabled() and not is_tracing()
        for blk in self.blocks:
            # non-reentrant: correct under DDP (no static graph needed), autocast and with inputs that
            # need no gradient; the RNG state is kept, so dropout / drop-path draw the same masks again
            x = checkpoint(blk, x, h, w, use_reentrant=False) if recompute else blk(x, h, w)
        return x, h, w

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        x, h, w = self.forward_blocks(x)
        return (x if self.norm is None else self.norm(x)), h, w


class PyramidVisionTransformer(nn.Module):
    """Pyramid Vision Transformer, v1 or v2 as the config says.

    * ``model(x)``: ``(B, in_chans, H, W) -> (B, num_classes)`` logits (pooled features when
      ``num_classes == 0``).
    * ``model.forward_features(x)``: the per-stage maps ``[(B, C_i, H_i, W_i)]`` at strides 4, 8, 16, 32.
    * ``model.forward_intermediates(x, indices)``: chosen stages' maps and the final tokens.
    * ``model.feature_info``: channels and stride of each map, for dense-prediction necks.

    Training as a backbone: :meth:`set_grad_checkpointing`, :meth:`set_frozen_stages` and
    :attr:`norm_eval` (as mmdetection's backbones define them).
    """

    norm_eval: bool = False
    """In training mode, keep every BatchNorm-like layer of the model (running statistics) in eval mode,
    as mmdetection's ``norm_eval``. PVT's own norms are LayerNorms, which keep no statistics: this
    changes only BatchNorm layers placed inside the model by its user."""

    def __init__(self, config: PVTConfig | None = None, **overrides: Any):
        super().__init__()
        cfg = (config or PVTConfig()).replace(**overrides) if overrides else (config or PVTConfig())
        self.config = cfg
        self.num_classes = cfg.num_classes
        self.num_features = cfg.embed_dims[-1]
        dpr = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths), device="cpu").tolist()
        stages, cur, in_chans = [], 0, cfg.in_chans
        for i in range(cfg.num_stages):
            stages.append(PVTStage(cfg, i, in_chans, dpr[cur : cur + cfg.depths[i]]))
            cur += cfg.depths[i]
            in_chans = cfg.embed_dims[i]
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(self.num_features, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.feature_info = FeatureInfo(
            {"num_chs": c, "reduction": r, "module": f"stages.{i}", "index": i}
            for i, (c, r) in enumerate(zip(cfg.embed_dims, cfg.reduction))
        )
        self.min_input_size = self._min_input_size()
        self.frozen_stages = -1
        """How many stages :meth:`set_frozen_stages` froze (-1: none; 0: the first patch embedding)."""
        self.reset_parameters()

    def _min_input_size(self) -> int:
        """Smallest side for which every stage's map is non-empty and covers its SR kernel."""
        cfg = self.config
        for size in range(1, 4096):
            n, ok = size, True
            for i, stage in enumerate(self.stages):
                n = stage.patch_embed.output_size(n, n)[0]
                need = 1 if cfg.linear_sra else cfg.sr_ratios[i]
                ok = ok and n >= need
            if ok:
                return size
        raise ValueError("this configuration accepts no input size below 4096")

    # ------------------------------------------------------------------ init
    def reset_parameters(self) -> None:
        """Initialise as the official code: truncated normal (std 0.02) for linear layers, position
        embeddings and the class token; unit LayerNorms; fan-out normal for v2's convolutions (v1 keeps
        PyTorch's default convolution init, as its official code does)."""
        v1_convs = self.config.pos_embed
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d) and not v1_convs:
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for stage in self.stages:
            if stage.pos_embed is not None:
                nn.init.trunc_normal_(stage.pos_embed, std=0.02)
            if stage.cls_token is not None:
                nn.init.trunc_normal_(stage.cls_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        """Parameter names the official recipe excludes from weight decay."""
        return {n for n, _ in self.named_parameters() if n.endswith(("pos_embed", "cls_token"))}

    # ------------------------------------------------------- training as a backbone
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every block's activations during the backward pass instead of storing them (per
        block, only while gradients are being recorded): less memory for the same gradients, at the
        cost of a second forward of the blocks."""
        for stage in self.stages:
            stage.grad_checkpointing = bool(enable)

    @property
    def grad_checkpointing(self) -> bool:
        return any(stage.grad_checkpointing for stage in self.stages)

    def _frozen_modules(self, n: int) -> list[nn.Module]:
        """What ``n`` frozen stages are: 0 the first patch embedding (and its position embedding),
        ``n >= 1`` the first ``n`` stages whole."""
        if n < 0:
            return []
        if n == 0:
            return [self.stages[0].patch_embed]
        return list(self.stages[:n])

    def _frozen_parameters(self, n: int) -> list[nn.Parameter]:
        params = [p for m in self._frozen_modules(n) for p in m.parameters()]
        if n == 0 and self.stages[0].pos_embed is not None:
            params.append(self.stages[0].pos_embed)
        return params

    def set_frozen_stages(self, n: int) -> None:
        """Freeze the first patch embedding (``n = 0``, with v1's first position embedding) or the
        first ``n`` stages whole, as mmdetection's ``frozen_stages``: their parameters stop requiring
        gradients and their modules stay in eval mode (no dropout or stochastic depth) even when the
        model trains. ``-1`` unfreezes what an earlier call froze."""
        if isinstance(n, bool) or not isinstance(n, int) or not -1 <= n <= len(self.stages):
            raise ValueError(f"frozen_stages must be an integer in -1 .. {len(self.stages)}, got {n!r}")
        for p in self._frozen_parameters(self.frozen_stages):
            p.requires_grad_(True)
        for p in self._frozen_parameters(n):
            p.requires_grad_(False)
        self.frozen_stages = n
        self.train(self.training)

    def train(self, mode: bool = True) -> "PyramidVisionTransformer":
        """``nn.Module.train``, keeping frozen stages (and, with :attr:`norm_eval`, BatchNorm layers) in
        eval mode."""
        super().train(mode)
        if mode:
            for m in self._frozen_modules(self.frozen_stages):
                m.eval()
            if self.norm_eval:
                for m in self.modules():
                    if isinstance(m, _BatchNorm):
                        m.eval()
        return self

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head by a freshly initialised one with ``num_classes`` outputs (0: none)."""
        self.num_classes = num_classes
        self.config = self.config.replace(num_classes=num_classes)
        ref = next(self.parameters())
        self.head = (
            nn.Linear(self.num_features, num_classes).to(ref.device, ref.dtype) if num_classes > 0 else nn.Identity()
        )
        if num_classes > 0:
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    # --------------------------------------------------------------- forward
    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise ValueError(f"expected a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}")
        if x.ndim != 4:
            raise ValueError(
                f"expected an NCHW tensor of shape (B, {self.config.in_chans}, H, W), got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.config.in_chans:
            raise ValueError(
                f"expected {self.config.in_chans} input channels (NCHW), got shape {tuple(x.shape)}; "
                f"create the model with in_chans={x.shape[1]} for {x.shape[1]}-channel input"
            )
        need = self.min_input_size
        if x.shape[2] < need or x.shape[3] < need:
            raise ValueError(
                f"input of size {tuple(x.shape[2:])} is too small: this model needs height and width "
                f"of at least {need} (every stage's map must be non-empty and at least as large as its "
                "spatial-reduction ratio)"
            )

    def forward_tokens(self, x: Tensor, stop: int | None = None) -> tuple[list[Tensor], Tensor]:
        """Run every stage (up to stage ``stop`` when given): the list of NCHW maps and the last run
        stage's token sequence."""
        self._check_input(x)
        maps: list[Tensor] = []
        tokens = x
        for stage in self.stages if stop is None else self.stages[: stop + 1]:
            tokens, h, w = stage(x)
            x = as_map(tokens[:, stage.num_prefix :] if stage.num_prefix else tokens, h, w)
            maps.append(x)
        return maps, tokens

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """``(B, C_in, H, W)`` -> the four maps ``(B, C_i, H_i, W_i)`` at strides 4, 8, 16, 32."""
        return self.forward_tokens(x)[0]

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        *,
        stop_early: bool = False,
        intermediates_only: bool = False,
    ) -> tuple[Tensor, list[Tensor]] | list[Tensor]:
        """The maps of the stages ``indices`` selects (see :func:`stage_indices`: every stage by default,
        an int ``n`` the last ``n``, negative indices from the end), in stage order, and the final tokens,
        as timm's ``forward_intermediates``.

        Returns ``(tokens, maps)``: ``tokens`` is the last stage's output sequence ``(B, N [+1], C)``
        after its LayerNorm (what :meth:`pool` reads); with ``stop_early`` the stages after the last
        selected one are not run and ``tokens`` is that stage's. ``intermediates_only``: the maps alone.
        """
        take = stage_indices(len(self.stages), indices)
        maps, tokens = self.forward_tokens(x, stop=take[-1] if stop_early or intermediates_only else None)
        selected = [maps[i] for i in take]
        return selected if intermediates_only else (tokens, selected)

    def pool(self, tokens: Tensor) -> Tensor:
        """Last stage tokens ``(B, N, C) -> (B, C)``: the class token (v1) or the mean token (v2)."""
        return tokens[:, 0] if self.config.cls_token else tokens.mean(dim=1)

    def forward_head(self, pooled: Tensor) -> Tensor:
        return self.head(pooled)

    def forward(self, x: Tensor) -> Tensor:
        _, tokens = self.forward_tokens(x)
        return self.forward_head(self.pool(tokens))
