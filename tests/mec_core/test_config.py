"""The one config model: named recipes fill what a run does not set."""

import pytest
from pydantic import ValidationError

from mec_core.config import (
    METHOD_RECIPES,
    RECIPES,
    TrainConfig,
    image_size,
    resolve_precision,
    resolve_teacher,
    resolved,
    small_stem,
    stored_config,
)


def test_recipe__small_images_get_the_small_recipe():
    for dataset in ("fashion-mnist", "digits", "cifar10", "synthetic"):
        config = TrainConfig(dataset=dataset)
        assert config.recipe == "small"
        for field, value in (RECIPES["small"] | METHOD_RECIPES["small", "mec"]).items():
            assert getattr(config, field) == value, field
    # a recipe's method-specific part stays with its method: BYOL keeps its EMA teacher
    assert TrainConfig(dataset="fashion-mnist").teacher_momentum == 0.0
    assert TrainConfig(dataset="fashion-mnist", method="byol").teacher_momentum == 0.99
    # the entropy weight lambda*m = d / eps^2 is the paper's 2048 / 64 = 32
    small = TrainConfig(dataset="fashion-mnist")
    assert small.proj_dim / small.eps_sq == 2048 / 64


def test_recipe__large_images_keep_the_papers_recipe():
    for config in (TrainConfig(dataset="imagefolder"),
                   TrainConfig(dataset="fashion-mnist", image_size=96)):
        assert config.recipe == "imagenet"
        assert (config.proj_dim, config.eps_sq, config.order, config.teacher_momentum,
                config.warmup_epochs) == (2048, 64.0, 4, 0.996, 10.0)
    assert not small_stem(TrainConfig(dataset="imagefolder"))
    assert small_stem(TrainConfig(dataset="fashion-mnist")) and \
        image_size(TrainConfig(dataset="fashion-mnist")) == 28


def test_recipe__by_name_and_what_the_caller_sets_wins():
    assert TrainConfig(dataset="fashion-mnist", recipe="imagenet").eps_sq == 64.0
    assert TrainConfig(dataset="imagefolder", recipe="small").eps_sq == 16.0
    given = TrainConfig(dataset="fashion-mnist", eps_sq=64.0, order=4)
    assert (given.eps_sq, given.order, given.proj_dim) == (64.0, 4, 512)
    assert TrainConfig(dataset="imagefolder", order=None).order is None  # an explicit null


def test_recipe__small_images_keep_a_2x2_feature_grid_and_old_configs_pool_globally():
    assert TrainConfig(dataset="fashion-mnist").feature_grid == 2
    assert TrainConfig(dataset="imagefolder").feature_grid == 1
    written_before = TrainConfig(dataset="fashion-mnist").model_dump(mode="json")
    del written_before["feature_grid"]  # a checkpoint, export or job row of an older version
    assert stored_config(written_before).feature_grid == 1
    assert stored_config(written_before | {"feature_grid": 2}).feature_grid == 2


def test_recipe__the_stored_config_reloads_unchanged():
    for config in (TrainConfig(dataset="fashion-mnist"), TrainConfig(dataset="imagefolder"),
                   TrainConfig(dataset="cifar10", method="vicreg", eps_sq=3.0)):
        assert TrainConfig(**config.model_dump(mode="json")) == config


@pytest.mark.parametrize("bad,field", [
    ({"recipe": "huge"}, "recipe"), ({"method": "moco"}, "method"),
    ({"dataset": ["x"]}, "dataset"), ({"image_size": "big"}, "image_size"),
    ({"crop_min_scale": 0.0}, "crop_min_scale"), ({"monitor_every": -1}, "monitor_every"),
])
def test_config__bad_values_name_their_field(bad, field):
    with pytest.raises(ValidationError) as info:
        TrainConfig(**bad)
    assert field in {str(e["loc"][0]) for e in info.value.errors()}


def test_config__batch_size_must_divide_among_the_processes():
    assert TrainConfig(batch_size=64, processes=4).processes == 4
    with pytest.raises(ValidationError, match="batch_size 30 does not divide among 4 processes"):
        TrainConfig(batch_size=30, processes=4)
    with pytest.raises(ValidationError, match="processes"):
        TrainConfig(processes=0)


def test_config__batch_size_must_divide_among_nodes_times_processes():
    assert TrainConfig(batch_size=64, nodes=2, processes=4).world_size == 8
    with pytest.raises(ValidationError, match="batch_size 36 does not divide among 8 processes "
                       r"\(nodes x processes\)"):
        TrainConfig(batch_size=36, nodes=2, processes=4)
    with pytest.raises(ValidationError, match="nodes"):
        TrainConfig(nodes=0)


def test_precision__one_the_device_cannot_run_is_refused_naming_the_ones_it_can():
    with pytest.raises(ValidationError, match="fp16 is not supported on cpu; choose one of "
                                              "auto, fp32, bf16"):
        TrainConfig(device="cpu", precision="fp16")
    assert TrainConfig(device="cuda:0", precision="fp16").precision == "fp16"
    later = TrainConfig(device="auto", precision="fp16")  # the device is known at start
    with pytest.raises(ValueError, match="fp16 is not supported on cpu"):
        resolve_precision(later, "cpu")
    assert resolve_precision(later, "cuda") == "fp16"


def test_config__digits_views_default_to_no_flips_and_larger_crops():
    digits = TrainConfig(dataset="digits")
    assert (digits.hflip, digits.crop_min_scale) == (False, 0.5)
    mirrored = TrainConfig(dataset="digits", hflip=True, crop_min_scale=None)
    assert (mirrored.hflip, mirrored.crop_min_scale) == (True, None)  # what the caller sets wins
    assert TrainConfig(dataset="fashion-mnist").hflip is None  # on: the augmentation's
    # a digits config stored before `hflip` existed mirrored its views, and still does
    old = digits.model_dump(mode="json") | {"crop_min_scale": None}
    del old["hflip"]
    assert stored_config(old).hflip is True and stored_config(old).crop_min_scale is None
    assert stored_config(digits.model_dump(mode="json")) == digits
    # a folder stored with a built-in dataset was ignored when it ran: it reloads without
    stored = digits.model_dump(mode="json") | {"data_dir": "/data/digits"}
    assert stored_config(stored) == digits


def test_resolved__fills_what_the_run_decides_and_keeps_what_the_caller_set():
    config = TrainConfig(dataset="fashion-mnist", max_steps=40)
    values = resolved(config, total_steps=40)
    assert (values["image_size"], values["small_stem"], values["channels_last"],
            values["monitor_every"]) == (28, True, True, 4)
    assert resolved(config)["monitor_every"] is None  # the run's length is not known yet
    assert resolved(TrainConfig(dataset="digits"))["hflip"] is False  # the dataset's views
    mine = TrainConfig(dataset="cifar10", image_size=96, channels_last=False, monitor_every=0)
    assert {k: resolved(mine, 500)[k] for k in ("image_size", "small_stem", "channels_last",
                                                 "monitor_every")} == {
        "image_size": 96, "small_stem": False, "channels_last": False, "monitor_every": 0}
    # mec's own: a predictor, and the small recipe's momentum 0 shares the student's weights
    assert (values["teacher"], values["predictor"]) == ("stop_grad", True)
    assert {k: resolved(TrainConfig(method="simclr"))[k] for k in ("teacher", "predictor")} \
        == {"teacher": "none", "predictor": False}
    assert resolved(TrainConfig(teacher_momentum=0.996))["teacher"] == "ema"
    assert TrainConfig(**resolved(config, 40)) == TrainConfig(
        **config.model_dump() | {"image_size": 28, "small_stem": True, "channels_last": True,
                                 "hflip": True, "monitor_every": 4, "teacher": "stop_grad",
                                 "predictor": True})  # a valid config again


def test_config__teacher_defaults_to_the_methods_and_refuses_what_it_cannot_do():
    assert resolve_teacher(TrainConfig(dataset="fashion-mnist")) == "stop_grad"  # momentum 0
    assert resolve_teacher(TrainConfig(dataset="imagefolder")) == "ema"
    assert resolve_teacher(TrainConfig(method="simclr")) == "none"
    assert resolve_teacher(TrainConfig(method="simsiam")) == "stop_grad"
    assert resolve_teacher(TrainConfig(teacher="none")) == "none"
    assert resolve_teacher(TrainConfig(teacher="stop_grad", recipe="imagenet")) == "stop_grad"
    assert TrainConfig().teacher is None  # stored configs of before the field reload the same
    with pytest.raises(ValidationError, match="teacher 'none' does not apply to byol"):
        TrainConfig(method="byol", teacher="none")  # its objective stops the gradient
    with pytest.raises(ValidationError, match="'ema' does not apply to simclr; choose one of none"):
        TrainConfig(method="simclr", teacher="ema")
    with pytest.raises(ValidationError, match="teacher_momentum 0 is the student itself"):
        TrainConfig(dataset="fashion-mnist", teacher="ema")  # the small recipe's momentum 0
    assert resolve_teacher(TrainConfig(dataset="fashion-mnist", teacher="ema",
                                       teacher_momentum=0.99)) == "ema"
