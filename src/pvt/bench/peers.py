"""The peer implementations a benchmark compares with: timm's and HF transformers' PVT v2, built to hold
*our* model's weights (converted by :mod:`pvt.weights.keys`), so that a comparison times the same network
and can check that the outputs agree."""

from __future__ import annotations

from torch import Tensor, nn

from ..models.model import PyramidVisionTransformer

__all__ = ["IMPLS", "reference_model", "num_classes"]

IMPLS = ("pvt", "timm", "hf")
"""Implementation names: ours, timm's, HF transformers'."""


def reference_model(impl: str, name: str, model: PyramidVisionTransformer, *, drop_path_rate: float = 0.0) -> nn.Module:
    """timm's (``impl="timm"``) or transformers' (``"hf"``) implementation of ``name`` holding
    ``model``'s weights, in eval mode (``drop_path_rate``: stochastic depth when trained). Raises ValueError
    when that library lacks the variant."""
    from ..weights.keys import to_hf_v2, to_timm

    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if impl == "timm":
        import timm

        if name not in timm.list_models("pvt_v2*"):
            raise ValueError(f"timm has no {name!r}; it implements {', '.join(timm.list_models('pvt_v2*'))}")
        ref = timm.create_model(name, pretrained=False, num_classes=model.num_classes, drop_path_rate=drop_path_rate)
        ref.load_state_dict(to_timm(sd), strict=True)
    elif impl == "hf":
        from transformers import PvtV2Config, PvtV2ForImageClassification

        from ..weights.hf_config import pvt_to_hf_config

        fields = pvt_to_hf_config(model.config)
        if fields.pop("model_type") != "pvt_v2":
            raise ValueError("the HF comparison covers PVT v2 models only")
        fields["drop_path_rate"] = drop_path_rate
        ref = _HFLogits(PvtV2ForImageClassification(PvtV2Config(**fields, num_labels=max(model.num_classes, 1))))
        ref.inner.load_state_dict(to_hf_v2(sd), strict=True)
    else:
        raise ValueError(f"unknown implementation {impl!r}; choose from {', '.join(IMPLS)}")
    return ref.eval()


class _HFLogits(nn.Module):
    """transformers' classifier returning the logits tensor, like ours and timm's."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(pixel_values=x).logits


def num_classes(model: nn.Module) -> int:
    """Classifier outputs of ours or timm's (``num_classes``), or of the HF wrapper (``config.num_labels``);
    1000 when the model states none."""
    inner = getattr(model, "inner", None)
    if inner is not None:
        return int(inner.config.num_labels)
    n = getattr(model, "num_classes", 0)
    return n if isinstance(n, int) and n > 0 else 1000
