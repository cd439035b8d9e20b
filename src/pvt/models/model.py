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

from ..base.constants import EVAL_CROP_PCT, EVAL_INTERPOLATION, IMAGENET_MEAN, IMAGENET_STD
from ..base.tracing import is_tracing
from ..layers import PLAIN, Block, Ops, PatchEmbed, as_map
from .config import PVTConfig

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
    order of the maps (timm's keys), with the accessors of timm's ``FeatureInfo``: ``channels()``,
    ``reduction()``, ``module_name()``, ``get(key)`` and ``get_dicts(keys)``, each for every map or, with
    ``idx`` (an int or a sequence of ints), for those positions only."""

    def get(self, key: str, idx: int | Sequence[int] | None = None) -> Any:
        if idx is None:
            return [f[key] for f in self]
        if isinstance(idx, int):
            return self[idx][key]
        return [self[i][key] for i in idx]

    def get_dicts(self, keys: Sequence[str] | None = None, idx: int | Sequence[int] | None = None) -> Any:
        def pick(f: dict) -> dict:
            return dict(f) if keys is None else {k: f[k] for k in keys}

        if idx is None:
            return [pick(f) for f in self]
        if isinstance(idx, int):
            return pick(self[idx])
        return [pick(self[i]) for i in idx]

    def channels(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("num_chs", idx)

    def reduction(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("reduction", idx)

    def module_name(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("module", idx)


class PVTStage(nn.Module):
    """Patch embedding, optional position embedding / class token, blocks, optional LayerNorm.

    ``(B, C_in, H, W) -> (B, h*w [+1], C)`` tokens and ``(h, w)``.
    """

    ops: Ops = PLAIN
    """The operations of its closing LayerNorm (:class:`~pvt.layers.Ops`)."""

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
        return (x if self.norm is None else self.ops.pick(self, x).norm(self.norm, x)), h, w


class PyramidVisionTransformer(nn.Module):
    """Pyramid Vision Transformer, v1 or v2 as the config says.

    timm's model contract:

    * ``model(x)``: ``(B, in_chans, H, W) -> (B, num_classes)`` logits, i.e.
      ``forward_head(forward_features(x))`` (pooled features when ``num_classes == 0``; the unpooled
      last-stage output with ``global_pool=""`` too).
    * ``model.forward_features(x)``: the last stage's output, unpooled: ``(B, C, H/32, W/32)`` (NCHW, as
      timm's PVT v2) for a model without a class token; ``(B, 1 + h*w, C)`` tokens (NLC, class token
      first, as timm's ViT) for one with a class token (PVT v1), since its head reads that token.
      :attr:`output_fmt` says which.
    * ``model.forward_head(x, pre_logits=False)``: pooling (:attr:`global_pool`: ``"avg"``, ``"token"``
      for class-token models, ``""`` none) and the classifier on what ``forward_features`` returned.
    * ``model.forward_intermediates(x, indices)``: the chosen stages' NCHW maps and the final output;
      ``prune_intermediate_layers(indices)``; ``get_classifier()``, ``reset_classifier(n, global_pool)``;
      ``num_features``, ``head_hidden_size``, ``pretrained_cfg`` / ``default_cfg`` (input size,
      normalisation, evaluation crop and interpolation, first conv, classifier).
    * ``model.feature_info``: channels and stride of each map (:class:`FeatureInfo`).

    Beyond timm: ``model.forward_pyramid(x)``, every stage's map ``[(B, C_i, H_i, W_i)]`` at strides 4, 8,
    16, 32, for dense-prediction necks.

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
        dpr = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths), device="cpu").tolist()
        stages, cur, in_chans = [], 0, cfg.in_chans
        for i in range(cfg.num_stages):
            stages.append(PVTStage(cfg, i, in_chans, dpr[cur : cur + cfg.depths[i]]))
            cur += cfg.depths[i]
            in_chans = cfg.embed_dims[i]
        self.stages = nn.ModuleList(stages)
        self._describe_last_stage()
        self.global_pool = self._check_pool("token" if self.output_fmt == "NLC" else "avg", cfg.num_classes)
        """What :meth:`forward_head` pools with: ``"avg"`` (the mean of the last map, or of the patch
        tokens), ``"token"`` (the class token; class-token models only), ``""`` (nothing)."""
        self.head = nn.Linear(self.num_features, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.feature_info = FeatureInfo(
            {"num_chs": c, "reduction": r, "module": f"stages.{i}", "index": i}
            for i, (c, r) in enumerate(zip(cfg.embed_dims, cfg.reduction))
        )
        self.min_input_size = self._min_input_size()
        self.pretrained_cfg: dict[str, Any] = self._default_pretrained_cfg()
        """timm's ``pretrained_cfg`` (also :attr:`default_cfg`): the input and evaluation transform the
        model expects (``timm.data.resolve_data_config(model=model)`` reads it) and its first conv and
        classifier's names. A loader that knows the checkpoint's own transform may update it."""
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

    def _default_pretrained_cfg(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "url": "",
            "num_classes": cfg.num_classes,
            "input_size": (cfg.in_chans, cfg.img_size, cfg.img_size),
            "min_input_size": (cfg.in_chans, self.min_input_size, self.min_input_size),
            "fixed_input_size": False,
            "pool_size": self.stages[-1].grid,
            "crop_pct": EVAL_CROP_PCT,
            "crop_mode": "center",
            "interpolation": EVAL_INTERPOLATION,
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
            "first_conv": "stages.0.patch_embed.proj",
            "classifier": "head",
            "license": "apache-2.0",
        }

    @property
    def default_cfg(self) -> dict[str, Any]:
        """timm's older name of :attr:`pretrained_cfg` (the same dict)."""
        return self.pretrained_cfg

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

    def _describe_last_stage(self) -> None:
        """What the last kept stage makes of :meth:`forward_features`: ``num_features`` (=
        ``head_hidden_size``, its channels) and ``output_fmt`` (``"NLC"`` tokens for a class-token stage,
        else ``"NCHW"``)."""
        last = self.stages[-1]
        self.num_features = self.head_hidden_size = last.patch_embed.proj.out_channels
        self.output_fmt = "NLC" if last.num_prefix else "NCHW"

    def _check_pool(self, global_pool: str, num_classes: int) -> str:
        """``global_pool`` if this model can pool that way in front of ``num_classes`` outputs, else a
        ValueError naming what it accepts."""
        accepted = ("avg", "token", "") if self.output_fmt == "NLC" else ("avg", "")
        if global_pool not in accepted:
            raise ValueError(f"global_pool={global_pool!r} is not one this model has: one of {accepted}"
                             + ("" if "token" in accepted else " (\"token\" needs a class token)"))
        if global_pool == "" and num_classes > 0 and self.output_fmt == "NCHW":
            raise ValueError(f"global_pool='' leaves (B, C, H, W) maps, which a {num_classes}-class head cannot "
                             "take: pass num_classes=0 with it")
        return global_pool

    def set_global_pool(self, global_pool: str) -> None:
        """Pool with ``global_pool`` from now on (see :attr:`global_pool`); the head stays."""
        self.global_pool = self._check_pool(global_pool, self.num_classes)

    def get_classifier(self) -> nn.Module:
        """The classifier (``nn.Identity`` when the model has none)."""
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head by a freshly initialised one with ``num_classes`` outputs (0: none), and the
        pooling by ``global_pool`` when given (see :attr:`global_pool`), as timm's."""
        self.global_pool = self._check_pool(self.global_pool if global_pool is None else global_pool, num_classes)
        self.num_classes = num_classes
        self.config = self.config.replace(num_classes=num_classes)
        ref = next(self.parameters())
        self.head = (
            nn.Linear(self.num_features, num_classes).to(ref.device, ref.dtype) if num_classes > 0 else nn.Identity()
        )
        if num_classes > 0:
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def prune_intermediate_layers(
        self,
        indices: int | Sequence[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop the stages after the last one ``indices`` selects (see :func:`stage_indices`) and, with
        ``prune_head`` or when stages were dropped, the head and pooling, as timm's; returns the selected
        indices for :meth:`forward_intermediates`. ``prune_norm`` is accepted for timm's signature: every
        PVT norm belongs to its stage and stays with it."""
        take = stage_indices(len(self.stages), indices)
        prune_end = take[-1] < len(self.stages) - 1
        if prune_end:
            self.stages = self.stages[: take[-1] + 1]
            self._describe_last_stage()
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take

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

    @staticmethod
    def _final(stage: PVTStage, maps: list[Tensor], tokens: Tensor) -> Tensor:
        """What :meth:`forward_features` gives for a run ending at ``stage``: its tokens when it has a class
        token, else its map."""
        return tokens if stage.num_prefix else maps[-1]

    def forward_pyramid(self, x: Tensor) -> list[Tensor]:
        """``(B, C_in, H, W)`` -> every stage's map ``(B, C_i, H_i, W_i)``, at strides 4, 8, 16, 32."""
        return self.forward_tokens(x)[0]

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, C_in, H, W)`` -> the last stage's output, unpooled: the NCHW map, or the NLC tokens of a
        class-token model (:attr:`output_fmt`)."""
        maps, tokens = self.forward_tokens(x)
        return self._final(self.stages[-1], maps, tokens)

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> tuple[Tensor, list[Tensor]] | list[Tensor]:
        """The NCHW maps of the stages ``indices`` selects (see :func:`stage_indices`: every stage by
        default, an int ``n`` the last ``n``, negative indices from the end), in stage order, and the final
        output, as timm's ``forward_intermediates``.

        Returns ``(final, maps)``: ``final`` is what :meth:`forward_features` returns (what
        :meth:`forward_head` takes); with ``stop_early`` the stages after the last selected one are not run
        and ``final`` is that stage's output. ``intermediates_only``: the maps alone. ``norm`` is accepted
        for timm's signature (every stage's map is already the output of its own norm, where it has one);
        ``output_fmt`` must be ``"NCHW"``.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r}: the intermediates are NCHW maps (output_fmt='NCHW')")
        take = stage_indices(len(self.stages), indices)
        maps, tokens = self.forward_tokens(x, stop=take[-1] if stop_early or intermediates_only else None)
        selected = [maps[i] for i in take]
        if intermediates_only:
            return selected
        return self._final(self.stages[len(maps) - 1], maps, tokens), selected

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """What :meth:`forward_features` returned -> logits: pooled by :attr:`global_pool`, then the
        classifier (``pre_logits``: the pooled features, without it)."""
        if self.global_pool == "avg":
            x = x[:, self.stages[-1].num_prefix :].mean(dim=1) if self.output_fmt == "NLC" else x.mean(dim=(-2, -1))
        elif self.global_pool == "token":
            x = x[:, 0]
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))
