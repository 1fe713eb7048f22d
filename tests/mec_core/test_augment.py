"""Batched two-view augmentation."""

from dataclasses import replace

import pytest
import torch

from mec_core.augment import RECIPES, Normalization, ViewRecipe, augment, preprocess, recipe_for
from mec_core.data import synthetic


@pytest.fixture(scope="module")
def images():
    return synthetic("train", n=32).images


def _norm(images, size=24):
    return Normalization.fit(images, size)


@pytest.mark.parametrize("name", list(RECIPES))
def test_augment__shape_range_and_views_differ(images, name):
    v1, v2 = RECIPES[name]
    norm = _norm(images)
    g = torch.Generator().manual_seed(0)
    x1, x2 = augment(images, v1, norm, g), augment(images, v2, norm, g)
    assert x1.shape == x2.shape == (32, 3, 24, 24)
    assert torch.isfinite(x1).all()
    assert not torch.allclose(x1, x2)


def test_augment__same_seed_same_views(images):
    v1, _ = RECIPES["moco_v3"]
    norm = _norm(images)
    a = augment(images, v1, norm, torch.Generator().manual_seed(3))
    b = augment(images, v1, norm, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_augment__a_slice_of_the_global_batch_gets_the_same_views(images):
    """What makes a 2-process run see the views of a 1-process run."""
    v1, v2 = RECIPES["moco_v3"]
    norm = _norm(images)
    whole = augment(images, v2, norm, torch.Generator().manual_seed(5))
    half = augment(images[16:], v2, norm, torch.Generator().manual_seed(5), total=32,
                   offset=16)
    assert torch.allclose(whole[16:], half, atol=1e-6)


def test_augment__identity_recipe_reproduces_preprocessing(images):
    """Full-image crop, no flip, no colour, no blur: the view is the preprocessed image."""
    plain = ViewRecipe(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0,
                       gray_p=0.0, blur_p=0.0)
    norm = _norm(images, size=32)
    g = torch.Generator().manual_seed(0)
    out = augment(images, plain, norm, g)
    assert torch.allclose(out, preprocess(images, norm), atol=1e-4)


def test_augment__solarize_and_flip_do_what_they_say():
    img = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    img[..., :, :4] = 255  # left half white
    norm = Normalization(8, 1, (0.0,), (1.0,))
    base = dict(crop_scale=(1.0, 1.0), jitter_p=0.0, gray_p=0.0, blur_p=0.0)
    flipped = augment(img, ViewRecipe(flip_p=1.0, **base), norm, torch.Generator())
    assert flipped[0, 0, :, 6:].min() > 0.99 and flipped[0, 0, :, :2].max() < 0.01
    solar = augment(img, ViewRecipe(flip_p=0.0, solarize_p=1.0, **base), norm, torch.Generator())
    assert solar.max() < 0.51  # white became black, black stayed black
    assert solar.shape[1] == 3  # grayscale is expanded for 3-channel backbones


def test_recipe_for__auto_picks_by_channels_and_size():
    assert recipe_for("auto", 1) == RECIPES["small_gray"]
    assert recipe_for("auto", 3) == RECIPES["moco_v3"]
    assert recipe_for("auto", 3, small=True) == RECIPES["small_color"]
    assert all(v.blur_p == 0 for v in RECIPES["small_color"])  # no blur at 32 px
    wider = recipe_for("small_plain", 1, crop_min_scale=0.4)
    assert all(v.crop_scale == (0.4, 1.0) for v in wider)
    with pytest.raises(ValueError, match="unknown augmentation 'x'"):
        recipe_for("x", 3)


def test_recipe_for__without_hflip_no_view_is_ever_mirrored():
    img = torch.zeros(64, 1, 8, 8, dtype=torch.uint8)
    img[..., :, :4] = 255  # left half white: a mirrored view has its white on the right
    norm = Normalization(8, 1, (0.0,), (1.0,))
    views = recipe_for("small_plain", 1, crop_min_scale=1.0, hflip=False)
    assert all(v.flip_p == 0.0 for v in views) and views[0].crop_scale == (1.0, 1.0)
    still = replace(views[0], crop_ratio=(1.0, 1.0), jitter_p=0.0)
    out = augment(img, still, norm, torch.Generator().manual_seed(0))
    assert (out[:, 0, :, :2].min() > 0.99) and (out[:, 0, :, 6:].max() < 0.01)
    mirrored = augment(img, replace(still, flip_p=0.5), norm, torch.Generator().manual_seed(0))
    assert (mirrored[:, 0, :, 6:].amin((1, 2)) > 0.99).any()  # the same draws with flips: some
