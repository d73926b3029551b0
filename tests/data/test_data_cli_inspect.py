"""`mongotune data ...` through typer's CliRunner, and the inspect PNGs."""

import json

import cv2
import numpy as np
import pytest
from data_fixtures import make_folder
from typer.testing import CliRunner

from mongotune.cli.data import data_app
from mongotune.data import DataSpec, inspect, prepare

runner = CliRunner()


def _png(path):
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, path
    return img


def test_prepare_list_verify(cache_dir):
    res = runner.invoke(data_app, ["prepare", "digits", "--size", "10", "--seed", "3",
                                   "--cache-dir", str(cache_dir)])
    assert res.exit_code == 0, res.output
    key = DataSpec("digits", size=10, seed=3).cache_key()
    assert key in res.stdout
    assert "1294" in res.stdout and "10x10x1" in res.stdout
    assert (cache_dir / key / "meta.json").is_file()

    res = runner.invoke(data_app, ["list", "--cache-dir", str(cache_dir)])
    assert res.exit_code == 0, res.output
    assert "1294/144/359" in res.stdout and " ok " in res.stdout

    res = runner.invoke(data_app, ["verify", "digits", "--size", "10", "--seed", "3",
                                   "--cache-dir", str(cache_dir)])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith(f"ok: {key}")


def test_list_empty(cache_dir):
    res = runner.invoke(data_app, ["list", "--cache-dir", str(cache_dir)])
    assert res.exit_code == 0
    assert res.stdout.startswith("nothing cached in")


@pytest.mark.parametrize("args, message", [
    (["prepare", "digits", "--channels", "2"], "error: DataSpec.channels must be 1 or 3, got 2\n"),
    (["prepare", "imagenet"], "error: unknown dataset 'imagenet'; choose one of digits, "
                              "fashion_mnist, mnist, cifar10, cifar100, folder, npz\n"),
    (["prepare", "npz"], "error: npz: a source path is required (--source PATH)\n"),
    (["prepare", "npz", "--source", "/nonexistent/x.npz"],
     "error: npz: source file /nonexistent/x.npz does not exist\n"),
    (["verify", "digits"], None),
])
def test_user_errors_exit_2_with_one_line(cache_dir, args, message):
    res = runner.invoke(data_app, [*args, "--cache-dir", str(cache_dir)])
    assert res.exit_code == 2
    assert res.stdout == ""
    if message is not None:
        assert res.stderr == message
    else:
        assert res.stderr.startswith("error: digits-snative") and res.stderr.count("\n") == 1


def test_inspect_cli_with_tensorflow(tmp_path, cache_dir):
    out = tmp_path / "inspect"
    res = runner.invoke(data_app, ["inspect", "digits", "--size", "32", "--out", str(out),
                                   "--cache-dir", str(cache_dir), "--per-class", "4"])
    assert res.exit_code == 0, res.output
    for name in ("samples.png", "resize_compare.png", "label_distribution.png"):
        assert str(out / name) in res.stdout
        img = _png(out / name)
        assert img.shape[0] > 200 and img.shape[1] > 200
        assert img.std() > 10  # not a blank canvas
    stats = json.loads((out / "resize_compare.json").read_text())
    assert stats["size"] == 32 and stats["tensorflow"].startswith("tf.image.resize")
    methods = stats["methods"]
    assert set(methods) >= {"cv2 area", "cv2 lanczos", "tf bilinear", "tf bicubic", "tf area"}
    assert methods["cv2 area"]["mean_abs_diff_vs_cv2_area"] == 0.0
    assert methods["cv2 linear"]["mean_abs_diff_vs_cv2_area"] > 1.0
    # bicubic overshoots: the float output leaves [0, 255] before rounding
    assert methods["tf bicubic"]["values_outside_0_255"] > 0
    assert methods["tf bilinear"]["values_outside_0_255"] == 0


def test_inspect_library_rgb_folder_without_tf(tmp_path, cache_dir):
    root = tmp_path / "imgs"
    make_folder(root)
    calls = []
    paths = inspect(DataSpec("folder", source=str(root), size=16), tmp_path / "out", cache_dir,
                    progress=lambda *a: calls.append(a), per_class=3, compare_tf=False)
    assert [p.name for p in paths] == ["samples.png", "resize_compare.png",
                                       "resize_compare.json", "label_distribution.png"]
    stats = json.loads(paths[2].read_text())
    assert stats["tensorflow"] == "not compared"
    assert not any(k.startswith("tf ") for k in stats["methods"])
    samples = _png(paths[0])
    # the samples are colour: channels differ somewhere
    assert np.abs(samples[..., 0].astype(int) - samples[..., 2].astype(int)).max() > 50
    assert ("inspect", 3, 3) in calls
    # inspect reuses the cache it prepared
    assert prepare(DataSpec("folder", source=str(root), size=16), cache_dir).path.exists()
