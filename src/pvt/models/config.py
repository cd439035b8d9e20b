"""The typed configuration that describes every PVT model, v1 and v2 alike.

A PVT variant is nothing but a :class:`PVTConfig`: PVT v1 and PVT v2 differ only in field values.
The three designs that PVT v2 adds to PVT v1 are independent switches, so the paper's ablation
(Table 6) is a sequence of overrides on ``pvt_v1_small``:

* ``overlap_patch_embed``: patch embedding by a convolution of kernel ``2S - 1``, stride ``S`` and
  padding ``S - 1`` (v2) instead of a non-overlapping ``S x S`` patchify (v1).
* ``conv_ffn``: a 3x3 depth-wise convolution between ``fc1`` and the GELU of every MLP.
* ``linear_sra``: keys and values from a ``pool_size x pool_size`` adaptive average pool (then a
  1x1 conv, LayerNorm and GELU) instead of a strided ``R x R`` convolution: attention cost linear in
  the number of tokens. The MLP then also applies a ReLU after ``fc1``, as the official code does.

and the two v1 features that v2 drops are switches too: ``pos_embed`` (a learned position embedding
per stage, interpolated at other input sizes) and ``cls_token`` (a class token in the last stage, the
classifier's input). Without a class token, the classifier reads the mean of the last map and every
stage ends in a LayerNorm (``stage_norms``); with one, only the last stage does.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["PVTConfig"]


def _tuple4(value: Any, name: str, kind: type) -> tuple:
    try:
        out = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of {kind.__name__}, got {value!r}") from None
    for v in out:
        if isinstance(v, bool) or not isinstance(v, kind) and not (kind is float and isinstance(v, int)):
            raise ValueError(f"{name} must hold {kind.__name__} values, got {value!r}")
    return tuple(kind(v) for v in out)


@dataclass(frozen=True)
class PVTConfig:
    """Hyper-parameters of one Pyramid Vision Transformer.

    Per-stage fields are tuples with one entry per stage (four for every published variant).
    """

    embed_dims: tuple[int, ...] = (64, 128, 320, 512)
    """Channels C_i of each stage."""
    depths: tuple[int, ...] = (2, 2, 2, 2)
    """Number of transformer blocks L_i per stage."""
    num_heads: tuple[int, ...] = (1, 2, 5, 8)
    """Attention heads N_i per stage."""
    mlp_ratios: tuple[float, ...] = (8, 8, 4, 4)
    """Hidden width of the MLP as a multiple of the stage width (E_i)."""
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
    """Spatial-reduction ratio R_i of the keys and values (ignored when ``linear_sra``)."""
    patch_strides: tuple[int, ...] = (4, 2, 2, 2)
    """Stride S_i of each stage's patch embedding."""

    overlap_patch_embed: bool = True
    """v2: overlapping patch embedding (kernel 2S-1, stride S, padding S-1); v1: S x S patches."""
    conv_ffn: bool = True
    """v2: 3x3 depth-wise convolution inside the MLP."""
    linear_sra: bool = False
    """v2-Li: average-pool keys/values to ``pool_size``^2 tokens instead of strided convolution."""
    pool_size: int = 7
    """Side of the pooled key/value grid when ``linear_sra`` is on."""
    pos_embed: bool = False
    """v1: learned absolute position embedding per stage (resized at other input sizes)."""
    cls_token: bool = False
    """v1: a class token prepended in the last stage; the classifier reads it."""
    stage_norms: bool | None = None
    """LayerNorm after every stage (True) or only the last (False). Default: ``not cls_token``."""
    final_norm: bool = True
    """The last stage's LayerNorm when ``stage_norms`` is False (the official v1 detection and
    segmentation backbones have none: False)."""

    img_size: int = 224
    """Input size the position embeddings are laid out for (only matters with ``pos_embed``)."""
    in_chans: int = 3
    num_classes: int = 1000
    """Classifier outputs; 0 removes the head (``model(x)`` then returns pooled features)."""
    qkv_bias: bool = True
    drop_rate: float = 0.0
    """Dropout after the attention projection, in the MLP and on the position embedding."""
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    """Stochastic depth, linearly increasing from 0 to this value over all blocks."""
    layer_norm_eps: float = 1e-6
    """eps of the block and stage LayerNorms (official code and timm: 1e-6)."""
    embed_norm_eps: float = 1e-5
    """eps of the patch-embedding and spatial-reduction LayerNorms (official code and timm: 1e-5;
    HF transformers uses 1e-6 everywhere)."""

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (frozen dataclass)
        set_("embed_dims", _tuple4(self.embed_dims, "embed_dims", int))
        set_("depths", _tuple4(self.depths, "depths", int))
        set_("num_heads", _tuple4(self.num_heads, "num_heads", int))
        set_("mlp_ratios", _tuple4(self.mlp_ratios, "mlp_ratios", float))
        set_("sr_ratios", _tuple4(self.sr_ratios, "sr_ratios", int))
        set_("patch_strides", _tuple4(self.patch_strides, "patch_strides", int))
        n = len(self.embed_dims)
        if n == 0:
            raise ValueError("embed_dims must name at least one stage")
        for name in ("depths", "num_heads", "mlp_ratios", "sr_ratios", "patch_strides"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"{name} has {len(getattr(self, name))} entries but embed_dims has {n}: "
                    "every per-stage field needs one entry per stage"
                )
        for name in ("embed_dims", "depths", "num_heads", "sr_ratios", "patch_strides"):
            if any(v < 1 for v in getattr(self, name)):
                raise ValueError(f"{name} must be positive integers, got {getattr(self, name)}")
        if not all(0 < r <= 1024 for r in self.mlp_ratios):  # NaN fails too
            raise ValueError(f"mlp_ratios must be positive numbers (at most 1024), got {self.mlp_ratios}")
        for c, h in zip(self.embed_dims, self.num_heads):
            if c % h:
                raise ValueError(f"embed_dims {self.embed_dims} must be divisible by num_heads {self.num_heads}")
        for name in ("overlap_patch_embed", "conv_ffn", "linear_sra", "pos_embed", "cls_token", "qkv_bias",
                     "final_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.stage_norms is None:
            set_("stage_norms", not self.cls_token)
        elif not isinstance(self.stage_norms, bool):
            raise ValueError(f"stage_norms must be true, false or None, got {self.stage_norms!r}")
        for name in ("img_size", "in_chans", "pool_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(f"num_classes must be an integer >= 0, got {self.num_classes!r}")
        for name in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
                raise ValueError(f"{name} must be a number in [0, 1), got {v!r}")
            set_(name, float(v))
        for name in ("layer_norm_eps", "embed_norm_eps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v < 1 and math.isfinite(v)):
                raise ValueError(f"{name} must be a finite number in (0, 1) (typically 1e-6), got {v!r}")
            set_(name, float(v))

    @property
    def num_stages(self) -> int:
        return len(self.embed_dims)

    @property
    def reduction(self) -> tuple[int, ...]:
        """Cumulative stride of each stage's output map (4, 8, 16, 32 for every variant)."""
        out, r = [], 1
        for s in self.patch_strides:
            r *= s
            out.append(r)
        return tuple(out)

    def replace(self, **overrides: Any) -> "PVTConfig":
        """A copy with some fields changed; unknown names raise a ValueError listing the accepted ones."""
        unknown = sorted(set(overrides) - self.field_names())
        if unknown:
            raise ValueError(
                f"unknown config field(s) {unknown}; accepted: {sorted(self.field_names())}"
            )
        # stage_norms follows cls_token unless it is set explicitly
        if "cls_token" in overrides and "stage_norms" not in overrides:
            overrides["stage_norms"] = None
        return dataclasses.replace(self, **overrides)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PVTConfig":
        if not isinstance(data, dict):
            raise ValueError(f"a PVT config must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - cls.field_names())
        if unknown:
            raise ValueError(f"unknown config field(s) {unknown}; accepted: {sorted(cls.field_names())}")
        return cls(**data)

