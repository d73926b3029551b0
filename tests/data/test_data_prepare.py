"""Resizing, channels and the splits."""

import cv2
import numpy as np
import pytest
from data_fixtures import make_idx_dir, make_npz, resize_each, trust_fixture

from mongotune.data import DataSpec, prepare
from mongotune.data._prepare import resize_batch, stratified_split, transform_image

FLAGS = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC,
         "lanczos": cv2.INTER_LANCZOS4, "nearest": cv2.INTER_NEAREST}


@pytest.mark.parametrize("interpolation", sorted(FLAGS))
def test_resize_matches_cv2_per_image(interpolation):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (2100, 28, 28, 1), dtype=np.uint8)  # > one chunk: threads used
    got = resize_batch(x, 40, interpolation, threads=2)
    np.testing.assert_array_equal(got, resize_each(x, 40, FLAGS[interpolation]))
    small = resize_batch(x[:10], 7, interpolation)
    np.testing.assert_array_equal(small, resize_each(x[:10], 7, FLAGS[interpolation]))


def test_interpolations_differ():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
    outs = {k: resize_batch(x, 64, k) for k in FLAGS}
    assert len({o.tobytes() for o in outs.values()}) == len(FLAGS)


def test_channel_conversion():
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    grey = transform_image(rgb, None, "area", 1)
    assert grey.shape == (20, 30, 1)
    np.testing.assert_array_equal(grey[..., 0], cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    # luminance weights are RGB ones: pure red is darker than pure green
    red = transform_image(np.full((2, 2, 3), (255, 0, 0), np.uint8), None, "area", 1)
    green = transform_image(np.full((2, 2, 3), (0, 255, 0), np.uint8), None, "area", 1)
    assert int(red[0, 0, 0]) == 76 and int(green[0, 0, 0]) == 150
    one = rng.integers(0, 256, (8, 8, 1), dtype=np.uint8)
    three = transform_image(one, 16, "nearest", 3)
    assert three.shape == (16, 16, 3)
    for c in range(3):
        np.testing.assert_array_equal(three[..., c], cv2.resize(one[..., 0], (16, 16),
                                                                interpolation=cv2.INTER_NEAREST))


def test_stratified_split_proportions_and_sizes():
    y = np.repeat(np.arange(4), [100, 200, 300, 400])
    keep, held = stratified_split(y, 0.1, seed=0)
    assert len(held) == 100 and len(keep) == 900
    assert np.intersect1d(keep, held).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([keep, held])), np.arange(1000))
    np.testing.assert_array_equal(np.bincount(y[held]), [10, 20, 30, 40])
    # uneven shares: totals still add up and each class is within one of its share
    y = np.repeat(np.arange(3), [7, 11, 13])
    keep, held = stratified_split(y, 0.25, seed=4)
    assert len(held) == round(31 * 0.25)
    assert np.all(np.abs(np.bincount(y[held], minlength=3) - np.array([7, 11, 13]) * 0.25) < 1)
    # a singleton class stays in training
    keep, held = stratified_split(np.array([0, 1, 1, 1]), 0.5, seed=0)
    assert 0 in keep


def test_stratified_split_seeds():
    y = np.repeat(np.arange(5), 50)
    a = stratified_split(y, 0.2, seed=7)
    b = stratified_split(y, 0.2, seed=7)
    c = stratified_split(y, 0.2, seed=8)
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_val_split_is_stratified_in_prepared_data(tmp_path, cache_dir, monkeypatch):
    src = tmp_path / "raw"
    arrays = make_idx_dir(src)
    trust_fixture(monkeypatch, "mnist", src)
    ds = prepare(DataSpec("mnist", source=str(src), val_fraction=0.2, seed=11), cache_dir)
    overall = np.bincount(arrays.y_train, minlength=10) / len(arrays.y_train)
    val = np.bincount(ds.y_val, minlength=10) / len(ds.y_val)
    assert len(ds.y_val) == 150
    assert np.abs(val - overall).max() < 0.01  # largest remainder: within one image per class
    train = np.bincount(ds.y_train, minlength=10) / len(ds.y_train)
    assert np.abs(train - overall).max() < 0.01


def test_same_seed_same_arrays_other_seed_other_split(tmp_path, cache_dir, monkeypatch):
    path = tmp_path / "d.npz"
    make_npz(path, with_test=False)
    a = prepare(DataSpec("npz", source=str(path), size=20, seed=1), cache_dir / "a")
    b = prepare(DataSpec("npz", source=str(path), size=20, seed=1), cache_dir / "b")
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(a.split(split)[0], b.split(split)[0])
        np.testing.assert_array_equal(a.split(split)[1], b.split(split)[1])
    assert a.meta["content_hash"] == b.meta["content_hash"]
    c = prepare(DataSpec("npz", source=str(path), size=20, seed=2), cache_dir / "a")
    assert c.path != a.path
    assert not np.array_equal(np.asarray(a.x_val), np.asarray(c.x_val))
    # The carved test split does not move with the validation seed.
    np.testing.assert_array_equal(a.x_test, c.x_test)
    np.testing.assert_array_equal(a.y_test, c.y_test)


def test_zero_val_fraction(tmp_path, cache_dir):
    path = tmp_path / "d.npz"
    make_npz(path)
    ds = prepare(DataSpec("npz", source=str(path), val_fraction=0), cache_dir)
    assert ds.x_val.shape == (0, 16, 16, 1) and ds.y_val.shape == (0,)
    assert len(ds.y_train) == 300


def test_two_sizes_coexist(cache_dir):
    small = prepare(DataSpec("digits", size=12), cache_dir)
    large = prepare(DataSpec("digits", size=20), cache_dir)
    assert small.path != large.path and small.path.exists() and large.path.exists()
    assert small.input_shape == (12, 12, 1) and large.input_shape == (20, 20, 1)
    again = prepare(DataSpec("digits", size=12), cache_dir)
    assert again.meta["build_id"] == small.meta["build_id"]  # not rebuilt
    np.testing.assert_array_equal(small.y_test, large.y_test)
