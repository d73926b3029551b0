"""Every source format, read from fixtures written by conftest.py."""

import gzip
import pickle

import cv2
import numpy as np
import pytest
from data_fixtures import (IDX_NAMES, make_cifar_tar, make_folder, make_idx_dir, make_npz, md5_of,
                      resize_each, trust_fixture)

from mongotune.data import DataSpec, prepare
from mongotune.data._idx import read_idx
from mongotune.data._sources import REMOTE
from mongotune.errors import DataError


def _check_dataset(ds, size, channels, n_total_train, n_test, num_classes):
    for split in ("train", "val", "test"):
        x, y = ds.split(split)
        assert isinstance(x, np.memmap), split
        assert x.dtype == np.uint8 and y.dtype == np.int64
        assert x.shape[1:] == (size, size, channels)
        assert len(x) == len(y)
        assert not x.flags.writeable
    assert len(ds.y_train) + len(ds.y_val) == n_total_train
    assert len(ds.y_test) == n_test
    assert ds.num_classes == num_classes
    assert ds.input_shape == (size, size, channels)


# --- IDX: Fashion-MNIST and MNIST ---------------------------------------------------


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist"])
def test_idx_source_from_hand_downloaded_folder(tmp_path, cache_dir, monkeypatch, name):
    src = tmp_path / "raw"
    arrays = make_idx_dir(src)
    trust_fixture(monkeypatch, name, src)
    ds = prepare(DataSpec(name, size=32, source=str(src)), cache_dir)
    _check_dataset(ds, 32, 1, 750, 100, 10)
    # The official test split is kept apart and in order, only resized.
    expected = resize_each(arrays.x_test[..., None], 32, cv2.INTER_AREA)
    np.testing.assert_array_equal(ds.x_test, expected)
    np.testing.assert_array_equal(ds.y_test, arrays.y_test)
    assert ds.class_names[0] == ("T-shirt/top" if name == "fashion_mnist" else "0")
    files = ds.meta["source"]["files"]
    assert files["train-images-idx3-ubyte.gz"]["md5"] == md5_of(src / "train-images-idx3-ubyte.gz")
    assert ds.meta["test_split"] == "official"


def test_idx_native_size_keeps_pixels(tmp_path, cache_dir, monkeypatch):
    src = tmp_path / "raw"
    arrays = make_idx_dir(src)
    trust_fixture(monkeypatch, "mnist", src)
    ds = prepare(DataSpec("mnist", source=str(src), val_fraction=0.2, seed=5), cache_dir)
    _check_dataset(ds, 28, 1, 750, 100, 10)
    # train + val are exactly the official training images, none lost or duplicated.
    pool = np.concatenate([ds.x_train, ds.x_val])[..., 0].reshape(len(arrays.x_train), -1)
    original = arrays.x_train.reshape(len(arrays.x_train), -1)
    assert sorted(map(bytes, pool)) == sorted(map(bytes, original))


def test_idx_checksum_mismatch_is_a_clear_error(tmp_path, cache_dir, monkeypatch):
    src = tmp_path / "raw"
    make_idx_dir(src)
    trust_fixture(monkeypatch, "fashion_mnist", src)
    good = md5_of(src / "train-images-idx3-ubyte.gz")
    make_idx_dir(src, seed=1)  # different bytes, same names
    with pytest.raises(DataError) as info:
        prepare(DataSpec("fashion_mnist", source=str(src)), cache_dir)
    msg = str(info.value)
    assert msg.startswith("fashion_mnist: checksum mismatch for train-images-idx3-ubyte.gz")
    assert f"expected md5 {good}" in msg
    assert f"got {md5_of(src / 'train-images-idx3-ubyte.gz')}" in msg
    assert "\n" not in msg
    assert not (cache_dir / DataSpec("fashion_mnist", source=str(src)).cache_key()).exists()


def test_published_checksums_are_the_real_ones():
    # A guard against someone "fixing" a test by editing the table.
    assert REMOTE["fashion_mnist"][0].md5 == "8d4fb7e6c68d591d4c3dfef9ec88bf0d"
    assert REMOTE["mnist"][3].md5 == "ec29112dd5afa0611ce80d1b7f02629c"
    assert REMOTE["cifar10"][0].md5 == "c58f30108f718f92721af3b95e74349a"
    assert REMOTE["cifar100"][0].sha256 == (
        "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7")


def test_truncated_gzip_idx_is_a_clear_error(tmp_path, cache_dir, monkeypatch):
    src = tmp_path / "raw"
    make_idx_dir(src)
    path = src / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:5000])
    trust_fixture(monkeypatch, "mnist", src)  # the checksum "matches": parsing must catch it
    with pytest.raises(DataError, match=r"mnist: train-images-idx3-ubyte.gz is truncated or corrupt"):
        prepare(DataSpec("mnist", source=str(src)), cache_dir)


def test_truncated_idx_payload_is_a_clear_error(tmp_path):
    src = tmp_path / "raw"
    make_idx_dir(src, gz=False)
    path = src / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError) as info:
        read_idx(path, dataset="mnist")
    assert str(info.value) == (
        "mnist: train-images-idx3-ubyte is truncated (dimensions 750x28x28 need 588000 data "
        "bytes, found 587900); delete it or pass --source")
    path.write_bytes(b"\x00\x00\x99\x03" + b"\x00" * 20)
    with pytest.raises(DataError, match="not a valid IDX file"):
        read_idx(path, dataset="mnist")


def test_read_idx_gzip_and_plain_agree(tmp_path):
    make_idx_dir(tmp_path / "gz")
    make_idx_dir(tmp_path / "plain", gz=False)
    a = read_idx(tmp_path / "gz" / IDX_NAMES[0])
    b = read_idx(tmp_path / "plain" / IDX_NAMES[0].removesuffix(".gz"))
    assert a.shape == (750, 28, 28) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert gzip.decompress((tmp_path / "gz" / IDX_NAMES[1]).read_bytes())[2] == 0x08


def test_uncompressed_files_are_pinned_on_first_use(tmp_path, cache_dir, monkeypatch):
    src = tmp_path / "raw"
    make_idx_dir(src, gz=False)
    spec = DataSpec("mnist", size=16, source=str(src))
    prepare(spec, cache_dir)
    pins = (cache_dir / "downloads" / "pins.json").read_text()
    assert "mnist/train-images-idx3-ubyte" in pins
    make_idx_dir(src, seed=9, gz=False)  # the files change under our feet
    with pytest.raises(DataError, match="recorded on first use"):
        prepare(spec, cache_dir, force=True)


def test_missing_offline_file(tmp_path, cache_dir, monkeypatch):
    src = tmp_path / "raw"
    make_idx_dir(src)
    trust_fixture(monkeypatch, "mnist", src)
    (src / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="mnist: t10k-labels-idx1-ubyte.gz not found in"):
        prepare(DataSpec("mnist", source=str(src)), cache_dir)


# --- CIFAR ----------------------------------------------------------------------


def test_cifar10_from_tarball(tmp_path, cache_dir, monkeypatch):
    tar = tmp_path / "dl" / "cifar-10-python.tar.gz"
    fx = make_cifar_tar(tar, "cifar10")
    trust_fixture(monkeypatch, "cifar10", tar.parent)
    ds = prepare(DataSpec("cifar10", source=str(tar), val_fraction=0.2), cache_dir)
    _check_dataset(ds, 32, 3, 300, 40, 10)
    np.testing.assert_array_equal(ds.x_test, fx["x_test"])  # native size: untouched
    np.testing.assert_array_equal(ds.y_test, fx["y_test"])
    assert ds.class_names == [f"class{k}" for k in range(10)]
    assert ds.extra_labels == {}
    # The pixel layout is NHWC with RGB planes taken from the CHW rows.
    first = fx["x_train"].reshape(300, -1)
    assert bytes(np.asarray(ds.x_train[0]).ravel()) in set(map(bytes, first))


def test_cifar10_directory_source_and_grey(tmp_path, cache_dir, monkeypatch):
    src = tmp_path / "dl"
    fx = make_cifar_tar(src / "cifar-10-python.tar.gz", "cifar10")
    trust_fixture(monkeypatch, "cifar10", src)
    ds = prepare(DataSpec("cifar10", source=str(src), size=16, channels=1), cache_dir)
    _check_dataset(ds, 16, 1, 300, 40, 10)
    grey = np.stack([cv2.cvtColor(im, cv2.COLOR_RGB2GRAY) for im in fx["x_test"]])[..., None]
    np.testing.assert_array_equal(ds.x_test, resize_each(grey, 16, cv2.INTER_AREA))


def test_cifar100_fine_and_coarse(tmp_path, cache_dir, monkeypatch):
    tar = tmp_path / "cifar-100-python.tar.gz"
    fx = make_cifar_tar(tar, "cifar100")
    trust_fixture(monkeypatch, "cifar100", tmp_path)
    fine = prepare(DataSpec("cifar100", source=str(tar)), cache_dir)
    assert fine.class_names == [f"fine{k}" for k in range(20)]
    assert fine.extra_class_names == {"coarse": [f"coarse{k}" for k in range(5)]}
    np.testing.assert_array_equal(fine.y_test, fx["y_test"])
    np.testing.assert_array_equal(fine.extra_labels["coarse"]["test"], fx["coarse_test"])
    for split in ("train", "val"):
        np.testing.assert_array_equal(fine.extra_labels["coarse"][split], fine.split(split)[1] // 4)
    coarse = prepare(DataSpec("cifar100", source=str(tar), label_mode="coarse"), cache_dir)
    assert coarse.path == fine.path  # one cache holds both label sets
    assert coarse.num_classes == 5
    np.testing.assert_array_equal(coarse.y_train, fine.y_train // 4)
    np.testing.assert_array_equal(coarse.extra_labels["fine"]["train"], fine.y_train)


def test_cifar_extracted_folder_checks_member_checksums(tmp_path, cache_dir, monkeypatch):
    fx = make_cifar_tar(tmp_path / "unused.tar.gz", "cifar10", extract_to=tmp_path / "x")
    members = {name: __import__("hashlib").md5(blob).hexdigest() for name, blob in fx["members"].items()}
    layout = {**__import__("mongotune.data._sources", fromlist=["x"]).CIFAR_LAYOUT["cifar10"],
              "members_md5": members}
    monkeypatch.setitem(__import__("mongotune.data._sources", fromlist=["x"]).CIFAR_LAYOUT,
                        "cifar10", layout)
    ds = prepare(DataSpec("cifar10", source=str(tmp_path / "x")), cache_dir)
    np.testing.assert_array_equal(ds.x_test, fx["x_test"])
    batch = tmp_path / "x" / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:-10])
    with pytest.raises(DataError, match="cifar10: checksum mismatch for data_batch_3"):
        prepare(DataSpec("cifar10", source=str(tmp_path / "x"), size=8), cache_dir)


def test_cifar_truncated_tarball(tmp_path, cache_dir, monkeypatch):
    tar = tmp_path / "cifar-10-python.tar.gz"
    make_cifar_tar(tar, "cifar10")
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    trust_fixture(monkeypatch, "cifar10", tmp_path)
    with pytest.raises(DataError, match="cifar10: cifar-10-python.tar.gz is truncated or corrupt"):
        prepare(DataSpec("cifar10", source=str(tar)), cache_dir)


def test_cifar_pickles_cannot_run_code(tmp_path, cache_dir, monkeypatch):
    import io
    import tarfile

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    tar = tmp_path / "cifar-10-python.tar.gz"
    fx = make_cifar_tar(tar, "cifar10")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as out:
        for name, blob in fx["members"].items():
            if name == "batches.meta":
                blob = pickle.dumps({b"label_names": Evil()}, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            out.addfile(info, io.BytesIO(blob))
    tar.write_bytes(buf.getvalue())
    trust_fixture(monkeypatch, "cifar10", tmp_path)
    with pytest.raises(DataError, match=r"cifar10: batches.meta is not a CIFAR batch \(refusing to load (__builtin__|builtins).print\)"):
        prepare(DataSpec("cifar10", source=str(tar)), cache_dir)


# --- digits ---------------------------------------------------------------------


def test_digits_native_and_resized(cache_dir):
    from sklearn.datasets import load_digits

    ds = prepare(DataSpec("digits"), cache_dir)
    _check_dataset(ds, 8, 1, 1797 - 359, 359, 10)
    assert int(ds.x_train.max()) == 255 and int(ds.x_train.min()) == 0
    # 0..16 is scaled to 0..255: every stored value is a multiple of 255/16, rounded.
    allowed = set(np.rint(np.arange(17) * 255 / 16).astype(int))
    assert set(np.unique(ds.x_train).tolist()) <= allowed
    # every image comes from sklearn's set
    images = np.rint(load_digits().images * 255 / 16).astype(np.uint8).reshape(1797, -1)
    known = set(map(bytes, images))
    assert all(bytes(np.asarray(im).ravel()) in known for im in ds.x_test)
    assert ds.meta["test_split"].startswith("carved: 0.2")
    big = prepare(DataSpec("digits", size=16, channels=3), cache_dir)
    _check_dataset(big, 16, 3, 1438, 359, 10)
    np.testing.assert_array_equal(big.y_test, ds.y_test)
    np.testing.assert_array_equal(big.x_test[..., 1], resize_each(ds.x_test, 16, cv2.INTER_AREA)[..., 0])


# --- image folders ---------------------------------------------------------------


def test_folder_without_test_split(tmp_path, cache_dir):
    root = tmp_path / "imgs"
    fx = make_folder(root)
    ds = prepare(DataSpec("folder", source=str(root), size=12, interpolation="linear"), cache_dir)
    assert ds.class_names == ["cat", "dog", "emu"]
    _check_dataset(ds, 12, 3, 39 - len(ds.y_test), round(39 * 0.2), 3)
    expected = {bytes(r) for imgs in fx["train"].values()
                for r in resize_each(np.stack(imgs), 12, cv2.INTER_LINEAR)}
    assert all(bytes(np.asarray(im)) in expected for im in ds.x_train)  # RGB, not BGR


def test_folder_with_train_and_test_and_mixed_sizes(tmp_path, cache_dir):
    root = tmp_path / "imgs"
    fx = make_folder(root, split=True, sizes=((20, 24), (30, 18)))
    ds = prepare(DataSpec("folder", source=str(root), size=10, val_fraction=0.25), cache_dir)
    _check_dataset(ds, 10, 3, 39, 9, 3)
    expected = np.concatenate([
        np.stack([cv2.resize(im, (10, 10), interpolation=cv2.INTER_AREA) for im in fx["test"][c]])
        for c in ("cat", "dog", "emu")])
    np.testing.assert_array_equal(ds.x_test, expected)
    np.testing.assert_array_equal(ds.y_test, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    with pytest.raises(DataError, match="images differ in size"):
        prepare(DataSpec("folder", source=str(root)), cache_dir)


def test_folder_errors(tmp_path, cache_dir):
    with pytest.raises(DataError, match="is not a directory"):
        prepare(DataSpec("folder", source=str(tmp_path / "nope")), cache_dir)
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="without .png/.jpg images"):
        prepare(DataSpec("folder", source=str(tmp_path / "empty")), cache_dir)
    bad = tmp_path / "bad" / "cls"
    bad.mkdir(parents=True)
    (bad / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image"):
        prepare(DataSpec("folder", source=str(tmp_path / "bad")), cache_dir)


def test_folder_change_triggers_rebuild(tmp_path, cache_dir):
    root = tmp_path / "imgs"
    make_folder(root)
    spec = DataSpec("folder", source=str(root), size=8)
    first = prepare(spec, cache_dir)
    cv2.imwrite(str(root / "emu" / "new.png"), np.zeros((20, 24, 3), np.uint8))
    second = prepare(spec, cache_dir)
    assert second.meta["build_id"] != first.meta["build_id"]
    assert len(second.y_train) + len(second.y_val) + len(second.y_test) == 40


# --- npz -------------------------------------------------------------------------


def test_npz_with_test_split(tmp_path, cache_dir):
    path = tmp_path / "d.npz"
    fx = make_npz(path)
    ds = prepare(DataSpec("npz", source=str(path), size=24, interpolation="cubic"), cache_dir)
    _check_dataset(ds, 24, 1, 300, 50, 5)
    np.testing.assert_array_equal(ds.x_test, resize_each(fx["x_test"][..., None], 24, cv2.INTER_CUBIC))
    np.testing.assert_array_equal(ds.y_test, fx["y_test"])
    assert ds.meta["source"]["files"]["d.npz"]["md5"] == md5_of(path)


def test_npz_without_test_split_and_float_input(tmp_path, cache_dir):
    path = tmp_path / "f.npz"
    fx = make_npz(path, with_test=False, dtype=np.float32)
    ds = prepare(DataSpec("npz", source=str(path)), cache_dir)
    _check_dataset(ds, 16, 1, 240, 60, 5)
    pool = np.concatenate([ds.x_train, ds.x_val, ds.x_test])[..., 0]
    assert sorted(map(bytes, pool)) == sorted(map(bytes, fx["x"]))  # [0,1] floats scaled back


def test_npz_errors(tmp_path, cache_dir):
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(DataError, match="has no 'y' array"):
        prepare(DataSpec("npz", source=str(path)), cache_dir)
    np.savez(path, x=np.zeros((4, 8, 8), np.uint8), y=np.zeros(3, np.int64))
    with pytest.raises(DataError, match="has 3 labels for 4 images"):
        prepare(DataSpec("npz", source=str(path)), cache_dir)
    np.savez(path, x=np.full((4, 8, 8), 300, np.int32), y=np.zeros(4, np.int64))
    with pytest.raises(DataError, match="outside 0..255"):
        prepare(DataSpec("npz", source=str(path)), cache_dir)
    make_npz(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="npz: bad.npz is"):
        prepare(DataSpec("npz", source=str(path)), cache_dir)
