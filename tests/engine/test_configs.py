"""Typed per-task configs: the engine's TrainConfig holds only engine knobs and each task its own dataclass;
every ``pvt train`` flag reaches the config that declares it; each task's presets are complete; older flat
config files still read; the repeated-augmentation rule (on with more than one process, off in one, the flag
forcing either); skip counts travel in the step results."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils.data import DistributedSampler

from pvt.cli import build_parser
from pvt.cli.train import _config_fields, _overrides
from pvt.engine.config import RECIPE_KEYS, TrainConfig
from pvt.engine.task import InferenceTask, StepResult, TrainingTask
from pvt.tasks import get_task, list_tasks, read_config, resolve_config
from pvt.tasks.configs import BackboneConfig, ClassificationConfig, DenseConfig, use_repeated_aug

CLASSIFICATION_KEYS = {"mixup", "cutmix", "mixup_prob", "mixup_switch_prob", "aa", "smoothing", "repeated_aug",
                       "color_jitter", "reprob", "remode", "recount", "scale", "ratio", "interpolation", "crop_pct",
                       "drop", "device_augment"}


def test_the_engine_config_has_no_classification_field():
    engine = {f.name for f in dataclasses.fields(TrainConfig)}
    assert not engine & (CLASSIFICATION_KEYS | {f.name for f in dataclasses.fields(ClassificationConfig)})
    assert CLASSIFICATION_KEYS <= {f.name for f in dataclasses.fields(ClassificationConfig)}
    assert not CLASSIFICATION_KEYS & {f.name for f in dataclasses.fields(DenseConfig)}
    assert set(RECIPE_KEYS) <= engine and "task_config" in engine


# one non-default value per flag, and what the config holds then (None: the flag's text read as given)
FLAG_VALUES: dict[str, tuple[list[str], object]] = {
    "task": (["classification"], None), "model": (["pvt_v2_b1"], None), "data": (["/no/such/folder"], None),
    "data_dir": (["/tmp/cache"], None), "pretrained": (["/w.safetensors"], None), "output": (["out"], None),
    "name": (["r1"], None), "epochs": (["3"], 3), "batch_size": (["5"], 5), "micro_batch": (["2"], 2),
    "lr": (["0.01"], 0.01), "base_lr": (["0.001"], 0.001), "min_lr": (["1e-6"], 1e-6), "warmup_lr": (["1e-7"], 1e-7),
    "warmup_epochs": (["1.5"], 1.5), "weight_decay": (["0.02"], 0.02), "opt_eps": (["1e-6"], 1e-6),
    "clip_grad": (["2"], 2.0), "model_ema": ([], True), "model_ema_decay": (["0.9"], 0.9), "device": (["cpu"], None),
    "amp": (["bf16"], None), "channels_last": ([], True), "workers": (["1"], 1), "shuffle": ([], False),
    "shuffle_buffer": (["7"], 7), "threads": (["1"], 1), "seed": (["5"], 5), "log": (["none"], None),
    "img_size": (["48"], 48), "hflip": (["0.25"], 0.25), "drop_path": (["0.2"], 0.2),
    "grad_checkpointing": ([], True), "frozen_stages": (["1"], 1), "norm_eval": ([], True),
    "freeze_backbone": ([], True), "drop": (["0.1"], 0.1), "smoothing": (["0.2"], 0.2), "mixup": (["0.3"], 0.3),
    "cutmix": (["0.4"], 0.4), "mixup_prob": (["0.5"], 0.5), "mixup_switch_prob": (["0.6"], 0.6),
    "aa": (["none"], None), "color_jitter": (["0.1"], 0.1), "reprob": (["0.3"], 0.3), "remode": (["const"], None),
    "recount": (["2"], 2), "scale": (["0.5,1.0"], [0.5, 1.0]), "ratio": (["0.5,2"], [0.5, 2.0]),
    "interpolation": (["bilinear"], None), "crop_pct": (["0.9"], 0.9), "repeated_aug": ([], True),
    "device_augment": ([], True),
}


def _flag(name: str, args: list[str], value: object) -> list[str]:
    flag = "--" + name.replace("_", "-")
    if not args:  # a boolean flag: --x sets True, --no-x False
        return [flag if value else "--no-" + flag[2:]]
    return [flag, *args]


def test_every_flag_is_listed_and_reaches_the_config_that_declares_it():
    fields = {f.name: owner for f, _, owner in _config_fields()}
    assert set(fields) == set(FLAG_VALUES)  # a new field needs a line above
    parser = build_parser()
    for name, (args, want) in FLAG_VALUES.items():
        want = args[0] if want is None else want
        overrides = _overrides(parser.parse_args(["train", *_flag(name, args, want)]))
        assert overrides == {name: overrides[name]}, name
        if name in ("pretrained", "device_augment"):  # (checked later, when weights / data are read)
            continue
        cfg = resolve_config(**overrides, **({"min_lr": 0.0} if name == "lr" else {}))
        holder = cfg if fields[name] == "TrainConfig" else cfg.task_config
        assert getattr(holder, name) == want, name
    # a field every task shares reaches a dense task's config too; classification's are refused there
    cfg = resolve_config(task="detection", **_overrides(parser.parse_args(["train", "--img-size", "96"])))
    assert isinstance(cfg.task_config, DenseConfig) and cfg.task_config.img_size == 96
    with pytest.raises(ValueError, match="config key 'mixup' is another task's: the detection task does not take"):
        resolve_config(task="detection", mixup=0.5)


def test_the_help_lists_every_option_with_its_help(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for name in FLAG_VALUES:
        assert "--" + name.replace("_", "-") + " " in out or "--" + name.replace("_", "-") + "," in out, name
    assert "label smoothing" in out and "`imagenet`" in out and "`digits`" in out
    assert "Repeated augmentation is on under torchrun with more than one process and off in one process" in out


@pytest.mark.parametrize("task", sorted(["classification", "detection", "instance", "segmentation", "depth"]))
def test_each_preset_is_a_complete_recipe(task):
    cls = get_task(task)
    assert task in list_tasks() and len(cls.presets) == 2
    own = {f.name for f in dataclasses.fields(cls.config_class)} - {f.name for f in dataclasses.fields(BackboneConfig)}
    own -= {"device_augment"}  # where the augmentation runs, not what it is
    for name, preset in cls.presets.items():
        missing = (set(RECIPE_KEYS) | own | {"img_size", "hflip", "drop_path"}) - set(preset)
        assert not missing, (task, name, missing)
        read_config({"task": task, **preset})  # every value a valid one


def test_the_preset_then_yaml_then_flags(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("epochs: 7\nmixup: 0.5\n")
    cfg = resolve_config(y, mixup=0.25)
    assert (cfg.epochs, cfg.task_config.mixup, cfg.task_config.img_size) == (7, 0.25, 32)  # digits' size
    assert resolve_config(data="/x").task_config.img_size == 224  # the imagenet preset


def test_an_older_flat_config_of_a_dense_run_still_reads(tmp_path):
    """Before the split every config.yaml held every key: a detection run's, classification's too."""
    old = {**resolve_config(task="detection").to_dict(), "mixup": 0.0, "aa": "none", "repeated_aug": False}
    y = tmp_path / "config.yaml"
    y.write_text("".join(f"{k}: {v!r}\n".replace("'", "") if not isinstance(v, dict) else f"{k}: {{}}\n"
                         for k, v in old.items() if v is not None))
    assert resolve_config(y).to_dict() == resolve_config(task="detection").to_dict()
    assert read_config(old, recorded=True).task_config == resolve_config(task="detection").task_config
    with pytest.raises(ValueError, match="another task's"):
        read_config(old)  # as user input, classification's keys are refused


@pytest.mark.parametrize("setting, world, on", [(None, 1, False), (None, 2, True), (True, 1, True),
                                                 (False, 2, False), (None, 8, True)])
def test_repeated_augmentation_is_on_only_with_more_than_one_process_unless_forced(setting, world, on):
    assert use_repeated_aug(setting, world) is on
    kw = {} if setting is None else {"repeated_aug": setting}
    cfg = resolve_config(**kw)
    assert cfg.task_config.repeated_aug is setting  # (config.yaml records the setting, None: the rule)
    assert get_task("classification")(cfg).repeated_aug(world) is on
    assert get_task("detection")(resolve_config(task="detection")).repeated_aug(world) is False


@pytest.mark.parametrize("flags, want", [([], None), (["--repeated-aug"], True), (["--no-repeated-aug"], False)])
def test_the_repeated_aug_flag_is_three_way(flags, want):
    assert _overrides(build_parser().parse_args(["train", *flags])).get("repeated_aug") is want


@pytest.mark.parametrize("setting", [None, True])
def test_the_trainer_samples_as_the_task_says(setting):
    from pvt.engine.trainer import Trainer, _Run

    cfg = resolve_config(batch_size=4, workers=0, device="cpu", **({} if setting is None else {"repeated_aug": setting}))
    trainer = Trainer(cfg, get_task("classification")(cfg))
    run = _Run(model=torch.nn.Linear(1, 1), ddp_model=None, train_ds=list(range(300)), val_ds=list(range(10)))
    trainer._make_loaders(run)
    # one process: the plain sampler, every image once; forced: the repeated-augmentation sampler, whose epoch
    # is the official cut to a multiple of 256 images (each a third of them, 3 times)
    assert isinstance(run.sampler, DistributedSampler) is (not setting)
    assert run.steps == (256 if setting else 300) // 4


def test_skip_counts_travel_in_the_step_results():
    task = get_task("classification")(resolve_config(model="pvt_v2_b0", mixup=0.8, cutmix=0.0))
    task.class_names = [str(i) for i in range(4)]
    task._build_losses()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    step = task.train_step(model, (torch.randn(5, 3, 8, 8), torch.arange(5) % 4, 2), torch.device("cpu"))
    assert isinstance(step, StepResult) and (step.images, step.skipped) == (4, 2)  # mixup pairs: 5 -> 4
    assert step.loss is not None and step.loss.ndim == 0
    empty = task.train_step(model, (torch.zeros(0, 3, 8, 8), torch.zeros(0, dtype=torch.long), 3), torch.device("cpu"))
    assert (empty.loss, empty.images, empty.skipped) == (None, 0, 3)
    assert not hasattr(task, "end_epoch") and not hasattr(task, "batch_size_of")
    dense = get_task("segmentation")(resolve_config(task="segmentation"))  # every image of the batch unreadable
    none = dense.train_step(None, ([], [], 4), torch.device("cpu"))
    assert (none.loss, none.images, none.skipped) == (None, 0, 4)
    merged = task.merge_parts([{"images": 2, "top1": 1, "top5": 2, "loss_sum": 1.0, "skipped_images": 1},
                               {"images": 2, "top1": 2, "top5": 2, "loss_sum": 1.0, "skipped_images": 2}])
    assert merged["skipped_images"] == 3 and merged["top1"] == 75.0


def test_the_task_protocol_has_a_training_and_an_inference_half():
    training = {k for k in vars(TrainingTask) if not k.startswith("_")}
    inference = {k for k in vars(InferenceTask) if not k.startswith("_")}
    assert {"build_datasets", "train_step", "build_scheduler", "checkpoint_extra", "presets", "repeated_aug"} <= training
    assert {"from_checkpoint", "load_model", "predict", "eval_dataset", "summary", "evaluation_details"} <= inference
    assert not training & inference
    for name in list_tasks():
        assert issubclass(get_task(name), TrainingTask) and issubclass(get_task(name), InferenceTask)
