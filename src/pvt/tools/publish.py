"""Publishing a model on the HF hub (``pvt push``): the folder that is uploaded, written by
:func:`prepare_push` (the weights in HF transformers' or timm's layout, and a model card), and the
upload itself (:func:`pvt.weights.hub.upload`).

The source is a run folder of ``pvt train`` (its weights, config and committed metrics, read back by
:class:`~pvt.weights.run_folder.RunFolder`) or any checkpoint file this library reads. The model card says what
the model is (variant, parameters, classes, input), the paper, the training config and the metrics of
the run, and how to load the repository in pvt, timm and transformers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..base.io import atomic_folder, atomic_write
from ..models.model import PyramidVisionTransformer
from ..models.variants import VARIANTS
from ..weights.files import Checkpoint, read_checkpoint
from ..weights.hub import check_repo_id
from ..weights.loading import create_pretrained
from ..weights.run_folder import RunFolder, resolve_checkpoint
from ..weights.writing import Preprocessing, check_replaceable, export_weights, source_labels

__all__ = ["PUSH_FORMATS", "PushFolder", "prepare_push", "model_card"]

PUSH_FORMATS = ("hf", "timm")
"""The layouts a hub repository is written in: one per repository (both use ``config.json``)."""

_PAPERS = {
    "v1": ("Pyramid Vision Transformer: A Versatile Backbone for Dense Prediction without Convolutions",
           "2102.12122", """@inproceedings{wang2021pyramid,
  title={Pyramid Vision Transformer: A Versatile Backbone for Dense Prediction without Convolutions},
  author={Wang, Wenhai and Xie, Enze and Li, Xiang and Fan, Deng-Ping and Song, Kaitao and Liang, Ding and
          Lu, Tong and Luo, Ping and Shao, Ling},
  booktitle={IEEE International Conference on Computer Vision (ICCV)},
  year={2021}
}"""),
    "v2": ("PVT v2: Improved Baselines with Pyramid Vision Transformer", "2106.13797", """@article{wang2022pvt,
  title={PVT v2: Improved Baselines with Pyramid Vision Transformer},
  author={Wang, Wenhai and Xie, Enze and Li, Xiang and Fan, Deng-Ping and Song, Kaitao and Liang, Ding and
          Lu, Tong and Luo, Ping and Shao, Ling},
  journal={Computational Visual Media},
  volume={8},
  number={3},
  pages={415--424},
  year={2022}
}"""),
}
# the training settings the card lists first (the whole config follows in a collapsed block)
_CARD_CONFIG = ("task", "model", "data", "pretrained", "epochs", "batch_size", "lr", "base_lr", "weight_decay",
                "img_size", "drop_path", "amp", "grad_checkpointing", "frozen_stages", "freeze_backbone")


@dataclass
class PushFolder:
    """What :func:`prepare_push` wrote: the folder to upload, its files and the export's notes."""

    path: Path
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    model: PyramidVisionTransformer | None = None


@dataclass
class RunSummary:
    """What a source tells beyond its weights, for the model card: the run's training config and its
    committed metrics, when it has them (:func:`run_summary`)."""

    train_config: dict[str, Any] | None
    records: list[dict[str, Any]]
    weights: Path


def run_summary(source: Path, ckpt: Checkpoint, weights: Path) -> RunSummary:
    """The training config ``weights`` record (else the run folder's config.yaml) and the run's committed
    metrics, read from the run folder of ``source`` (itself, or a file's folder) as untrusted: a config.yaml
    that is missing, a link or hostile (an anchor bomb) is skipped like a broken one, and damaged metrics
    lines are left out (``pvt train --resume`` refuses them; the card shows what it can read)."""
    folder = RunFolder(source if source.is_dir() else source.parent)
    config = ckpt.extra.get("train_config")
    if not isinstance(config, dict):
        try:
            config = folder.read_config()
        except (OSError, ValueError):
            config = None
    try:
        records = folder.read_records(skip_damaged=True)
    except (OSError, ValueError):  # a linked metrics.jsonl
        records = []
    return RunSummary(config, records, weights)


def _metrics_table(records: list[dict[str, Any]]) -> list[str]:
    """Each validation metric at the last epoch and its best over the run (lowest for losses)."""
    keys = [k for k in records[-1] if k.startswith("val_") and isinstance(records[-1][k], (int, float))]
    if not keys:
        return []
    rows = ["| metric | last epoch ({}) | best (epoch) |".format(records[-1].get("epoch", len(records))),
            "|---|---|---|"]
    for k in keys:
        scored = [r for r in records if isinstance(r.get(k), (int, float))]
        pick = min if "loss" in k else max
        best = pick(scored, key=lambda r: r[k])
        rows.append(f"| {k[4:]} | {records[-1][k]:.4g} | {best[k]:.4g} ({best.get('epoch', '?')}) |")
    return rows


def model_card(model: PyramidVisionTransformer, repo_id: str, fmt: str, run: RunSummary, labels: list[str] | None,
               pre: Preprocessing, notes: list[str]) -> str:
    """The README.md of the repository (see the module doc)."""
    cfg = model.config
    variant = getattr(model, "variant_name", None)
    entry = VARIANTS.get(variant or "")
    family = entry.family if entry else ("v1" if cfg.pos_embed else "v2")
    title, arxiv, bibtex = _PAPERS[family]
    n = sum(p.numel() for p in model.parameters())
    task = (run.train_config or {}).get("task", "classification" if cfg.num_classes else "backbone")
    library = "transformers" if fmt == "hf" else "timm"
    tags = ["image-classification" if cfg.num_classes else "image-feature-extraction", "pvt", f"pvt-{family}",
            "pyramid-vision-transformer"]
    front: dict[str, Any] = {"library_name": library, "license": "apache-2.0", "tags": tags}
    if cfg.num_classes:
        front["pipeline_tag"] = "image-classification"
    front.update(_card_metadata(repo_id, run))
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {repo_id.split('/')[1]}", ""]
    what = entry.description if entry else "a PVT"
    lines += [
        f"{what} (`{variant or 'custom configuration'}`), "
        + (f"an image classifier over {cfg.num_classes} classes" if cfg.num_classes else "a backbone (no classifier head)")
        + f", published with the `pvt` library from `{run.weights.name}` (task: {task}).",
        "",
        "## Model",
        "",
        f"- Architecture: PVT {family}, {n:,} parameters, stages of {list(cfg.embed_dims)} channels and "
        f"{list(cfg.depths)} blocks" + (", linear spatial-reduction attention" if cfg.linear_sra else ""),
        f"- Input: {pre.img_size}x{pre.img_size} RGB, normalised with mean {list(pre.mean)} and std {list(pre.std)} "
        f"({pre.interpolation} resize, centre crop {pre.crop_pct:g})",
        f"- Weights: {'HF transformers' if fmt == 'hf' else 'timm'} layout (`model.safetensors`, `config.json`"
        + (", `preprocessor_config.json`" if fmt == "hf" else "") + ")",
        f"- Paper: [{title}](https://arxiv.org/abs/{arxiv}) (Wang et al.)",
    ]
    if labels:
        shown = ", ".join(labels[:20]) + (f", ... ({len(labels)} in all)" if len(labels) > 20 else "")
        lines.append(f"- Classes: {shown}")
    lines += [f"- Note: {note}" for note in notes]
    if run.train_config:
        lines += ["", "## Training", "", "| setting | value |", "|---|---|"]
        shown = _without_local_paths(run.train_config)
        lines += [f"| {k} | {shown[k]} |" for k in _CARD_CONFIG if shown.get(k) is not None]
        full = yaml.safe_dump(_without_local_paths(run.train_config), sort_keys=False).strip()
        lines += ["", "<details><summary>the whole training config (config.yaml)</summary>", "", "```yaml", full, "```",
                  "", "</details>"]
    table = _metrics_table(run.records) if run.records else []
    if table:
        lines += ["", "## Metrics", "", "Validation scores from the run's `metrics.jsonl`:", "", *table]
    hub = f"hf-hub:{repo_id}"
    other = "timm" if fmt == "hf" else "hf"
    lines += ["", "## How to use", "", "With `pvt` (which reads either layout):", "", "```python", "import pvt", "",
              f'model = pvt.create_model("{variant}", pretrained="{hub}").eval()', "```", ""]
    if fmt == "timm":
        lines += ["With timm:", "", "```python", "import timm", "",
                  f'model = timm.create_model("{hub}", pretrained=True).eval()', "```", ""]
    else:
        auto = "AutoModelForImageClassification" if cfg.num_classes else "AutoModel"
        lines += ["With transformers (the processor is timm's evaluation transform, as the model was evaluated; "
                  "it needs timm installed):", "", "```python",
                  f"from transformers import AutoImageProcessor, {auto}", "",
                  f'processor = AutoImageProcessor.from_pretrained("{repo_id}")',
                  f'model = {auto}.from_pretrained("{repo_id}").eval()', "```", ""]
    lines += [f"For {'timm' if other == 'timm' else 'transformers'}, convert the weights to its layout first "
              f"(`pvt convert {hub} DIR --to {other}`), then load `DIR` "
              + ("with `timm.create_model(\"local-dir:DIR\", pretrained=True)`." if other == "timm"
                 else "with `AutoModelForImageClassification.from_pretrained(\"DIR\")`."),
              "", "## Citation", "", "```bibtex", bibtex, "```", ""]
    return "\n".join(lines)


def _without_local_paths(config: dict[str, Any]) -> dict[str, Any]:
    """The training config as a card shows it: a string naming a local file or folder (``data``,
    ``output``, ``pretrained``, ...) keeps its last component only, so the card does not publish the
    trainer's directory layout; ``hf-hub:`` ids and other values stay."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, str) and not v.startswith("hf-hub:") and ("/" in v or "\\" in v or v.startswith("~")):
            v = Path(v.replace("\\", "/")).name
        out[k] = v
    return out


def _card_metadata(repo_id: str, run: RunSummary) -> dict[str, Any]:
    """The hub's model-card fields beyond the library and tags: ``base_model`` (the hub repository the run
    started from, when its ``pretrained`` is ``hf-hub:...``), ``datasets`` (the hub dataset, when the data
    is ``hf-hub:...``) and ``model-index`` (the run's last validation top-1 / top-5 on its data)."""
    tc = run.train_config or {}
    out: dict[str, Any] = {}
    pretrained = tc.get("pretrained")
    if isinstance(pretrained, str) and pretrained.startswith("hf-hub:"):
        out["base_model"] = pretrained[len("hf-hub:"):].split("@")[0]
    data = tc.get("data")
    if isinstance(data, str) and data.startswith("hf-hub:"):
        out["datasets"] = [data[len("hf-hub:"):].split("@")[0]]
    last = run.records[-1] if run.records else {}
    metrics = [{"type": "accuracy", "name": name, "value": round(float(last[key]), 4)}
               for key, name in (("val_top1", "top-1 accuracy"), ("val_top5", "top-5 accuracy"))
               if isinstance(last.get(key), (int, float))]
    if metrics:
        dataset = (out.get("datasets") or [None])[0] or (Path(data).name if isinstance(data, str) and data
                                                         else "scikit-learn digits")
        out["model-index"] = [{"name": repo_id.split("/")[1], "results": [{
            "task": {"type": "image-classification", "name": "Image Classification"},
            "dataset": {"name": dataset, "type": dataset, "split": "val"},
            "metrics": metrics,
        }]}]
    return out


def prepare_push(
    source: str | Path,
    repo_id: str,
    out: str | Path,
    *,
    to: str = "hf",
    model: str | None = None,
    force: bool = False,
) -> PushFolder:
    """Write at ``out`` the folder that ``pvt push`` uploads to ``repo_id``: the weights of ``source`` (a
    run folder or a checkpoint file) in ``to``'s layout (``"hf"`` or ``"timm"``) and a ``README.md`` model
    card. ``model``: the variant, when the source records none its shapes tell apart. ``out`` must be
    absent or empty unless ``force``; it is never a folder that is, contains or lies inside the source, nor
    one holding files other than those pvt writes there; it is written beside and swapped in as a whole."""
    check_repo_id(repo_id)
    if to not in PUSH_FORMATS:
        raise ValueError(f"--to {to!r}: a hub repository holds one of {', '.join(PUSH_FORMATS)}")
    out, source = Path(out), Path(source)
    weights = resolve_checkpoint(source)
    for part in (source, weights):
        check_replaceable(out, part, "--out")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ValueError(f"{out} exists and is not an empty folder; pass --force to replace it")
    ckpt = read_checkpoint(weights)
    net = create_pretrained(model, ckpt)
    labels = source_labels(ckpt.extra, ckpt.source)
    labels = labels if labels is not None and len(labels) == net.num_classes else None
    pre = Preprocessing.of(net.config, ckpt.extra)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; name a folder")
    with atomic_folder(out) as tmp:  # written beside, swapped in whole: an interruption keeps the old folder
        done = export_weights(net, to, tmp, class_names=labels, preprocessing=pre)
        card = model_card(net, repo_id, to, run_summary(source, ckpt, weights), labels, pre, done.notes)
        with atomic_write(tmp / "README.md", "w") as f:
            f.write(card)
    return PushFolder(out, [*(out / p.name for p in done.files), out / "README.md"], done.notes, net)
