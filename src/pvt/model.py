"""The one model class of the family: a :class:`PyramidVisionTransformer` built from a :class:`PVTConfig`."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import PVTConfig
from .layers import Block, PatchEmbed, as_map
from .tracing import is_tracing

__all__ = ["PyramidVisionTransformer", "PVTStage"]


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
        for blk in self.blocks:
            x = blk(x, h, w)
        return x, h, w

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        x, h, w = self.forward_blocks(x)
        return (x if self.norm is None else self.norm(x)), h, w


class PyramidVisionTransformer(nn.Module):
    """Pyramid Vision Transformer, v1 or v2 as the config says.

    * ``model(x)``: ``(B, in_chans, H, W) -> (B, num_classes)`` logits (pooled features when
      ``num_classes == 0``).
    * ``model.forward_features(x)``: the per-stage maps ``[(B, C_i, H_i, W_i)]`` at strides 4, 8, 16, 32.
    * ``model.feature_info``: channels and stride of each map, for dense-prediction necks.
    """

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
        self.feature_info = [
            {"num_chs": c, "reduction": r, "module": f"stages.{i}"}
            for i, (c, r) in enumerate(zip(cfg.embed_dims, cfg.reduction))
        ]
        self.min_input_size = self._min_input_size()
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

    def forward_tokens(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """Run every stage: the list of NCHW maps and the last stage's token sequence."""
        self._check_input(x)
        maps: list[Tensor] = []
        tokens = x
        for stage in self.stages:
            tokens, h, w = stage(x)
            x = as_map(tokens[:, stage.num_prefix :] if stage.num_prefix else tokens, h, w)
            maps.append(x)
        return maps, tokens

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """``(B, C_in, H, W)`` -> the four maps ``(B, C_i, H_i, W_i)`` at strides 4, 8, 16, 32."""
        return self.forward_tokens(x)[0]

    def pool(self, tokens: Tensor) -> Tensor:
        """Last stage tokens ``(B, N, C) -> (B, C)``: the class token (v1) or the mean token (v2)."""
        return tokens[:, 0] if self.config.cls_token else tokens.mean(dim=1)

    def forward_head(self, pooled: Tensor) -> Tensor:
        return self.head(pooled)

    def forward(self, x: Tensor) -> Tensor:
        _, tokens = self.forward_tokens(x)
        return self.forward_head(self.pool(tokens))
