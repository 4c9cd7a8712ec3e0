"""Tests of adact.data on tiny fake files written in the real on-disk formats into tmp_path."""

from __future__ import annotations

import csv
import gzip
import hashlib
import pickle
import socket
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from adact.data import (
    DATASETS,
    EMOTIONS,
    ArrayDataset,
    DataSplits,
    DeviceLoader,
    load_dataset,
    stratified_split,
)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to go online fails at once instead of reaching (or hanging on) the network."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise ConnectionRefusedError("network disabled in tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def tagged_images(n: int, shape: tuple[int, ...], start: int = 0) -> np.ndarray:
    """Random uint8 images whose first two pixels encode a unique id (start + i)."""
    rng = np.random.default_rng(start + 1)
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    flat = x.reshape(n, -1)
    ids = np.arange(start, start + n)
    flat[:, 0], flat[:, 1] = ids % 256, ids // 256
    return x


def ids_of(ds: ArrayDataset) -> list[int]:
    flat = ds.x.reshape(len(ds), -1).long()
    return (flat[:, 0] + 256 * flat[:, 1]).tolist()


def balanced_labels(n: int, k: int) -> np.ndarray:
    return np.arange(n) % k


# --------------------------------------------------------------------------- Fashion-MNIST (IDX)


def idx_bytes(arr: np.ndarray) -> bytes:
    # IDX: magic 0x0000 08 <ndim> (08 = unsigned byte), big-endian int32 dims, then the bytes.
    return struct.pack(">I", 0x0800 + arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_fmnist(root: Path, n_train: int = 20, n_test: int = 10, *, raw: bool = True,
                 gz: bool = False) -> dict[str, np.ndarray]:
    folder = root / "FashionMNIST" / "raw"
    folder.mkdir(parents=True)
    arrays = {
        "train-images-idx3-ubyte": tagged_images(n_train, (28, 28)),
        "train-labels-idx1-ubyte": balanced_labels(n_train, 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": tagged_images(n_test, (28, 28), start=1000),
        "t10k-labels-idx1-ubyte": (balanced_labels(n_test, 10)[::-1]).astype(np.uint8),
    }
    for name, arr in arrays.items():
        data = idx_bytes(np.ascontiguousarray(arr))
        if raw:
            (folder / name).write_bytes(data)
        if gz:
            with gzip.open(folder / f"{name}.gz", "wb") as f:
                f.write(data)
    return arrays


def test_fmnist_reads_idx_files(tmp_path: Path) -> None:
    arrays = write_fmnist(tmp_path)
    data = load_dataset("fmnist", tmp_path)
    assert isinstance(data, DataSplits) and data.name == "fmnist"
    assert data.train.x.shape == (20, 1, 28, 28) and data.train.x.dtype == torch.uint8
    assert data.test.x.shape == (10, 1, 28, 28) and data.test.y.dtype == torch.int64
    assert np.array_equal(data.train.x[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(data.test.y.numpy(), arrays["t10k-labels-idx1-ubyte"])
    assert (data.in_channels, data.image_size, data.num_classes) == (1, (28, 28), 10)
    assert data.classes[0] == "T-shirt/top" and data.val is None
    assert data.info["counts"] == {"train": 20, "val": 0, "test": 10}


def test_fmnist_missing_names_files_and_download(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError) as err:
        load_dataset("fmnist", tmp_path)
    msg = str(err.value)
    assert "train-images-idx3-ubyte" in msg and "--download" in msg
    assert str(tmp_path / "FashionMNIST" / "raw") in msg


def test_fmnist_download_extracts_verified_archives_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.datasets import FashionMNIST

    write_fmnist(tmp_path, raw=False, gz=True)
    raw = tmp_path / "FashionMNIST" / "raw"
    with pytest.raises(RuntimeError, match=r"\.gz"):  # without --download the archives are not read
        load_dataset("fmnist", tmp_path)
    # Our fake archives stand in for the real ones: give torchvision their checksums.
    monkeypatch.setattr(FashionMNIST, "resources", [(n, md5(raw / n)) for n, _ in FashionMNIST.resources])
    data = load_dataset("fmnist", tmp_path, download=True)  # verified -> extract only, no network
    assert len(data.train) == 20 and len(data.test) == 10


def test_download_failure_is_explained(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError) as err:
        load_dataset("fmnist", tmp_path, download=True)
    msg = str(err.value)
    assert "download did not succeed" in msg and "train-images-idx3-ubyte" in msg


# --------------------------------------------------------------------------- CIFAR-10 (pickles)

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10(root: Path, per_batch: int = 4, n_test: int = 6) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for i, name in enumerate([f"data_batch_{b}" for b in range(1, 6)] + ["test_batch"]):
        n = n_test if name == "test_batch" else per_batch
        data = tagged_images(n, (3072,), start=100 * i)  # rows: 1024 R, 1024 G, 1024 B
        labels = [(j + i) % 10 for j in range(n)]
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": data, "labels": labels, "filenames": []}, f)
        batches[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR_NAMES, "num_cases_per_batch": per_batch, "num_vis": 3072}, f)
    return batches


def patch_cifar_md5(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    from torchvision.datasets import CIFAR10

    folder = root / "cifar-10-batches-py"
    monkeypatch.setattr(CIFAR10, "train_list", [[n, md5(folder / n)] for n, _ in CIFAR10.train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [[n, md5(folder / n)] for n, _ in CIFAR10.test_list])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5(folder / "batches.meta")})


def test_cifar10_reads_pickled_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    batches = write_cifar10(tmp_path)
    patch_cifar_md5(monkeypatch, tmp_path)
    data = load_dataset("cifar10", tmp_path)
    assert data.train.x.shape == (20, 3, 32, 32) and data.test.x.shape == (6, 3, 32, 32)
    first, labels = batches["data_batch_1"]
    assert np.array_equal(data.train.x[0].numpy(), first[0].reshape(3, 32, 32))  # channel-first, unchanged
    assert data.train.y[:4].tolist() == labels
    assert data.classes == CIFAR_NAMES and data.in_channels == 3


def test_cifar10_checksum_mismatch_is_reported(tmp_path: Path) -> None:
    write_cifar10(tmp_path)  # fake files: torchvision's real MD5s do not match
    with pytest.raises(RuntimeError) as err:
        load_dataset("cifar10", tmp_path)
    msg = str(err.value)
    assert "MD5" in msg and "data_batch_1" in msg and "--download" in msg


# --------------------------------------------------------------------------- SVHN (.mat)


def write_svhn(root: Path, n_train: int = 12, n_test: int = 7) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = tagged_images(n, (32, 32, 3), start=0 if split == "train" else 500)
        digits = balanced_labels(n, 10)
        # The .mat layout: X is (H, W, C, N) and the digit 0 is stored as label 10.
        scipy.io.savemat(root / f"{split}_32x32.mat",
                         {"X": np.ascontiguousarray(images.transpose(1, 2, 3, 0)),
                          "y": np.where(digits == 0, 10, digits).astype(np.uint8).reshape(-1, 1)})
        out[split] = images, digits
    return out


def test_svhn_reads_mat_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.datasets import SVHN

    arrays = write_svhn(tmp_path)
    patched = {k: list(v) for k, v in SVHN.split_list.items()}
    for split in ("train", "test"):
        patched[split][2] = md5(tmp_path / f"{split}_32x32.mat")
    monkeypatch.setattr(SVHN, "split_list", patched)
    data = load_dataset("svhn", tmp_path)
    assert data.train.x.shape == (12, 3, 32, 32) and data.test.x.shape == (7, 3, 32, 32)
    images, digits = arrays["train"]
    assert np.array_equal(data.train.x.numpy(), images.transpose(0, 3, 1, 2))
    assert data.train.y.tolist() == digits.tolist()  # 10 -> 0
    assert data.classes == [str(d) for d in range(10)]


def test_svhn_missing_names_files_and_download(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError) as err:
        load_dataset("svhn", tmp_path)
    msg = str(err.value)
    assert "train_32x32.mat" in msg and "test_32x32.mat" in msg and "--download" in msg


# --------------------------------------------------------------------------- FER2013


def write_fer_csv(path: Path, per_class: dict[str, int], header: list[str] | None = None) -> dict[str, list[int]]:
    """fer2013.csv rows; the first two pixels of row r encode r (its id). Returns ids per usage."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ids: dict[str, list[int]] = {u: [] for u in per_class}
    rows = []
    r = 0
    for usage, n in per_class.items():
        for i in range(n):
            pixels = np.full(48 * 48, 7, dtype=np.int64)
            pixels[0], pixels[1] = r % 256, r // 256
            rows.append([str(i % 7), " ".join(map(str, pixels)), usage])
            ids[usage].append(r)
            r += 1
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header or ["emotion", "pixels", "Usage"])
        w.writerows(rows)
    return ids


FER_COUNTS = {"Training": 70, "PublicTest": 14, "PrivateTest": 7}


def test_fer_csv_paper_split(tmp_path: Path) -> None:
    ids = write_fer_csv(tmp_path / "fer2013.csv", FER_COUNTS)
    data = load_dataset("fer2013", tmp_path)
    assert data.classes == list(EMOTIONS) and data.image_size == (48, 48) and data.in_channels == 1
    assert (len(data.train), len(data.test)) == (56, 14)
    assert data.train.class_counts(7) == [8] * 7 and data.test.class_counts(7) == [2] * 7
    train_ids, test_ids = set(ids_of(data.train)), set(ids_of(data.test))
    assert not train_ids & test_ids and train_ids | test_ids == set(ids["Training"])
    assert "paper" in str(data.info["protocol"]) and data.info["unused_source_test"] == 21
    again = load_dataset("fer2013", tmp_path)
    assert ids_of(again.test) == ids_of(data.test)
    other = load_dataset("fer2013", tmp_path, seed=1)
    assert set(ids_of(other.test)) != test_ids


def test_fer_csv_official_split_and_nested_location(tmp_path: Path) -> None:
    # Header names padded with spaces (as in icml_face_data.csv), in the root/fer2013/ location.
    ids = write_fer_csv(tmp_path / "fer2013" / "fer2013.csv", FER_COUNTS, header=["emotion", " pixels", " Usage"])
    data = load_dataset("fer2013", tmp_path, fer_split="official")
    assert (len(data.train), len(data.test)) == (70, 21)
    assert ids_of(data.train) == ids["Training"]
    assert ids_of(data.test) == ids["PublicTest"] + ids["PrivateTest"]
    assert data.info["usage_counts"] == FER_COUNTS


def test_fer_csv_bad_rows_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "fer2013.csv"
    path.write_text("emotion,pixels,Usage\n0,1 2 3,Training\n")
    with pytest.raises(ValueError, match=r"line 2: expected 2304 pixel values"):
        load_dataset("fer2013", tmp_path)
    path.write_text("label,pixels\n0,1 2 3\n")
    with pytest.raises(ValueError, match=r"lacks column\(s\) emotion, Usage; found label, pixels"):
        load_dataset("fer2013", tmp_path)


def write_fer_folders(folder: Path, train_per_class: int, test_per_class: int) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for emotion in EMOTIONS:
            d = folder / split / emotion
            d.mkdir(parents=True)
            for i in range(n):
                img = Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8), mode="L")
                img.save(d / (f"im{i}.jpg" if split == "test" and i == 0 else f"im{i}.png"))


def test_fer_image_folders(tmp_path: Path) -> None:
    write_fer_folders(tmp_path / "fer2013", train_per_class=5, test_per_class=2)
    (tmp_path / "fer2013" / "train" / "happy" / "notes.txt").write_text("ignored")
    official = load_dataset("fer2013", tmp_path, fer_split="official")
    assert (len(official.train), len(official.test)) == (35, 14)
    assert official.train.x.shape[1:] == (1, 48, 48)
    assert official.train.class_counts(7) == [5] * 7 and official.test.class_counts(7) == [2] * 7
    png = np.asarray(Image.open(tmp_path / "fer2013" / "train" / "angry" / "im0.png"))
    assert np.array_equal(official.train.x[0, 0].numpy(), png)
    paper = load_dataset("fer2013", tmp_path)  # 80/20 of train/
    assert (len(paper.train), len(paper.test)) == (28, 7) and paper.test.class_counts(7) == [1] * 7


def test_fer_missing_says_where_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("fer2013", tmp_path)
    msg = str(err.value)
    assert "Kaggle" in msg and "challenges-in-representation-learning" in msg
    assert str(tmp_path / "fer2013.csv") in msg and "angry" in msg
    with pytest.raises(FileNotFoundError, match="cannot fetch FER2013"):
        load_dataset("fer2013", tmp_path, download=True)


def test_fer_official_conflicts_with_test_from_train(tmp_path: Path) -> None:
    write_fer_csv(tmp_path / "fer2013.csv", FER_COUNTS)
    with pytest.raises(ValueError, match="test_from_train"):
        load_dataset("fer2013", tmp_path, fer_split="official", test_from_train=0.2)
    with pytest.raises(ValueError, match="fer_split must be one of paper, official"):
        load_dataset("fer2013", tmp_path, fer_split="kaggle")


# --------------------------------------------------------------------------- digits


def test_digits_offline_default() -> None:
    data = load_dataset("digits")
    assert data.train.x.shape[1:] == (1, 16, 16) and data.train.x.dtype == torch.uint8
    assert (len(data.train), len(data.test)) == (1437, 360)
    assert data.num_classes == 10 and int(data.train.x.max()) == 255
    assert load_dataset("digits", seed=5).test.x.equal(data.test.x)  # the test split is fixed


# --------------------------------------------------------------------------- npz


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez_compressed(path, **arrays)
    return path


def test_npz_grayscale_with_classes(tmp_path: Path) -> None:
    x_train, x_test = tagged_images(30, (12, 12)), tagged_images(9, (12, 12), start=100)
    path = write_npz(tmp_path / "faces.npz", x_train=x_train, y_train=balanced_labels(30, 3),
                     x_test=x_test, y_test=balanced_labels(9, 3), classes=np.array(["a", "b", "c", "d"]),
                     extra=np.zeros(3))
    data = load_dataset(f"npz:{path}")
    assert data.name == "npz:faces" and data.classes == ["a", "b", "c", "d"] and data.num_classes == 4
    assert data.train.x.shape == (30, 1, 12, 12) and np.array_equal(data.train.x[:, 0].numpy(), x_train)
    assert data.test.y.tolist() == balanced_labels(9, 3).tolist()


def test_npz_rgb_channels_last_without_classes_relative_to_root(tmp_path: Path) -> None:
    x_train = tagged_images(20, (8, 10, 3))
    write_npz(tmp_path / "rgb.npz", x_train=x_train, y_train=balanced_labels(20, 5).astype(np.uint8),
              x_test=tagged_images(5, (8, 10, 3), start=50), y_test=np.arange(5, dtype=np.int32))
    data = load_dataset("npz:rgb.npz", root=tmp_path)
    assert data.train.x.shape == (20, 3, 8, 10) and data.image_size == (8, 10)
    assert np.array_equal(data.train.x.numpy(), x_train.transpose(0, 3, 1, 2))
    assert data.classes == ["0", "1", "2", "3", "4"] and data.train.y.dtype == torch.int64


def test_npz_missing_keys_listed(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "bad.npz", x_train=tagged_images(4, (8, 8)), y_train=np.zeros(4, dtype=np.int64),
                     images=np.zeros(1))
    with pytest.raises(ValueError) as err:
        load_dataset(f"npz:{path}")
    msg = str(err.value)
    assert "lacks required array(s) x_test, y_test" in msg and "found x_train, y_train, images" in msg


def test_npz_validation_errors(tmp_path: Path) -> None:
    good = dict(x_train=tagged_images(6, (8, 8)), y_train=balanced_labels(6, 2),
                x_test=tagged_images(2, (8, 8)), y_test=balanced_labels(2, 2))
    cases = [
        (dict(x_train=good["x_train"].astype(np.float32)), r"x_train has dtype float32, but images must be uint8"),
        (dict(y_train=balanced_labels(5, 2)), r"y_train has 5 labels but x_train has 6 images"),
        (dict(y_test=np.array([0, 3]), classes=np.array(["a", "b"])), r"label 3 is out of range for 2 classes"),
        (dict(y_train=np.full(6, 0.5)), r"labels must be integers"),
        (dict(x_test=tagged_images(2, (9, 9))), r"both splits need one image shape"),
        (dict(x_train=tagged_images(6, (3, 16, 16))), r"looks channels-first"),
        (dict(classes=np.array(["a", None], dtype=object)), r"pickled Python objects"),
        # A stray huge label is an error, not a 10**9-way classifier that allocates until the OOM killer.
        (dict(y_train=np.array([0, 1, 0, 1, 0, 10**9])), r"label 1000000000 would mean 1,000,000,001 classes"),
        (dict(x_test=np.zeros((0, 8, 8), dtype=np.uint8), y_test=np.zeros(0, dtype=np.int64)), r"x_test is empty"),
        # Labels with a gap and no classes array: class 1 would be a class without images.
        (dict(y_train=np.array([0, 2, 0, 2, 0, 2]), y_test=np.array([0, 2])), r"no training image has label 1; without"),
        (dict(y_test=np.array([0, 2])), r"no training image has label 2; .* 0\.\.2 \(the largest label \+ 1\)"),
    ]
    for i, (change, pattern) in enumerate(cases):
        path = write_npz(tmp_path / f"case{i}.npz", **{**good, **change})
        with pytest.raises(ValueError, match=pattern):
            load_dataset(f"npz:{path}")
    with pytest.raises(FileNotFoundError, match="npz file not found"):
        load_dataset(f"npz:{tmp_path / 'nope.npz'}")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="cannot read"):
        load_dataset(f"npz:{tmp_path / 'junk.npz'}")


def test_splits_are_checked_for_use() -> None:
    from adact.data.arrays import MAX_CLASSES, check_splits

    d = load_dataset("digits")
    check_splits(d)
    cases = [
        (DataSplits("d", d.train, d.test.subset([]), None, d.classes), "the test split is empty"),
        (DataSplits("d", d.train.subset([]), d.test, None, d.classes), "the training split is empty"),
        (DataSplits("d", d.train, d.test, None, d.classes[:5]), r"train labels span 0..9, outside the 5 classes 0..4"),
        (DataSplits("d", d.train, d.test, None, [str(i) for i in range(MAX_CLASSES + 1)]), "adact supports 1 to"),
    ]
    for splits, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            check_splits(splits)


def test_npz_test_from_train_carves_the_paper_protocol(tmp_path: Path) -> None:
    y_train = balanced_labels(100, 4)
    path = write_npz(tmp_path / "fer.npz", x_train=tagged_images(100, (6, 6)), y_train=y_train,
                     x_test=tagged_images(10, (6, 6), start=500), y_test=balanced_labels(10, 4))
    data = load_dataset(f"npz:{path}", test_from_train=0.2)
    assert (len(data.train), len(data.test)) == (80, 20)
    assert data.test.class_counts(4) == [5] * 4
    assert set(ids_of(data.train)).isdisjoint(ids_of(data.test))
    assert set(ids_of(data.train)) | set(ids_of(data.test)) == set(range(100))  # from train only
    assert data.info["unused_source_test"] == 10
    # Same as scikit-learn's usual 80/20 split, so it can be reproduced outside adact.
    from sklearn.model_selection import train_test_split

    _, sk_test = train_test_split(np.arange(100), test_size=0.2, stratify=y_train, random_state=0)
    assert sorted(ids_of(data.test)) == sorted(sk_test.tolist())


# --------------------------------------------------------------------------- names, val split


def test_unknown_name_lists_valid_ones() -> None:
    with pytest.raises(ValueError) as err:
        load_dataset("mnist")
    msg = str(err.value)
    assert all(name in msg for name in DATASETS) and "npz:PATH" in msg
    assert DATASETS == ("fmnist", "cifar10", "svhn", "fer2013", "digits")


def test_val_fraction_stratified_and_disjoint(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "d.npz", x_train=tagged_images(100, (6, 6)), y_train=balanced_labels(100, 5),
                     x_test=tagged_images(10, (6, 6), start=500), y_test=balanced_labels(10, 5))
    data = load_dataset(f"npz:{path}", val_fraction=0.2, test_from_train=0.1, seed=3)
    assert data.val is not None
    assert (len(data.train), len(data.val), len(data.test)) == (72, 18, 10)
    assert max(data.val.class_counts(5)) - min(data.val.class_counts(5)) <= 1
    parts = [set(ids_of(d)) for d in (data.train, data.val, data.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == set(range(100))
    assert ids_of(load_dataset(f"npz:{path}", val_fraction=0.2, test_from_train=0.1, seed=3).val) == ids_of(data.val)
    assert data.info["counts"] == {"train": 72, "val": 18, "test": 10}
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset(f"npz:{path}", val_fraction=1.0)


def test_stratified_split_too_small_class() -> None:
    with pytest.raises(ValueError, match="class counts"):
        stratified_split(np.array([0, 0, 0, 1]), 0.5, 0)


# --------------------------------------------------------------------------- DeviceLoader


def make_ds(n: int = 50, shape: tuple[int, int, int] = (1, 6, 6)) -> ArrayDataset:
    x = tagged_images(n, shape)
    x[0] = 0
    x[1] = 255
    x[0].reshape(-1)[:2] = 0  # keep ids 0 and 1 intact
    x[1].reshape(-1)[:2] = [1, 0]
    return ArrayDataset(torch.from_numpy(x), torch.arange(n) % 3)


def loader_ids(batches: list[tuple[torch.Tensor, torch.Tensor]], mean: float = 0.5, std: float = 0.5) -> list[int]:
    out = []
    for x, _ in batches:
        raw = ((x * std + mean) * 255).round().long().reshape(len(x), -1)
        out += (raw[:, 0] + 256 * raw[:, 1]).tolist()
    return out


def test_loader_normalises_to_minus_one_one() -> None:
    ds = make_ds()
    x, y = next(iter(DeviceLoader(ds, 50)))
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (50, 1, 6, 6)
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert torch.allclose(x, ds.x.float() / 255 * 2 - 1, atol=1e-6) and torch.equal(y, ds.y)


def test_loader_per_channel_mean_std() -> None:
    ds = make_ds(shape=(3, 4, 4))
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 1.0)
    x, _ = next(iter(DeviceLoader(ds, 8, mean=mean, std=std)))
    want = (ds.x[:8].float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(x, want, atol=1e-6)
    with pytest.raises(ValueError, match="1 or 3 values"):
        DeviceLoader(ds, 8, mean=(0.5, 0.5))


def test_loader_epochs_cover_every_sample_once_and_reproduce() -> None:
    ds = make_ds()
    loader = DeviceLoader(ds, 8, shuffle=True, seed=7)
    assert len(loader) == 7
    loader.set_epoch(3)
    e3 = list(loader)
    ids3 = loader_ids(e3)
    assert sorted(ids3) == list(range(50)) and ids3 != list(range(50))
    assert [len(y) for _, y in e3] == [8] * 6 + [2]
    assert loader.epoch == 4  # iterating moves on to the next epoch
    ids4 = loader_ids(list(loader))
    assert sorted(ids4) == list(range(50)) and ids4 != ids3
    loader.set_epoch(3)
    assert loader_ids(list(loader)) == ids3
    fresh = DeviceLoader(ds, 8, shuffle=True, seed=7)  # a resumed run
    fresh.set_epoch(3)
    assert loader_ids(list(fresh)) == ids3
    other = DeviceLoader(ds, 8, shuffle=True, seed=8)
    other.set_epoch(3)
    assert loader_ids(list(other)) != ids3
    assert loader_ids(list(DeviceLoader(ds, 8))) == list(range(50))  # no shuffle: source order


def test_loader_drop_last() -> None:
    loader = DeviceLoader(make_ds(), 8, shuffle=True, drop_last=True)
    batches = list(loader)
    assert len(loader) == len(batches) == 6 and all(len(y) == 8 for _, y in batches)
    with pytest.raises(ValueError, match="batch_size"):
        DeviceLoader(make_ds(), 0)


def test_loader_augmentation_shapes_determinism_and_content() -> None:
    ds = make_ds(n=40, shape=(3, 8, 8))
    plain = DeviceLoader(ds, 16, shuffle=True, seed=1)
    aug = DeviceLoader(ds, 16, shuffle=True, seed=1, hflip=True, crop_padding=2)
    plain.set_epoch(2)
    aug.set_epoch(2)
    a = list(aug)
    p = list(plain)
    assert [x.shape for x, _ in a] == [x.shape for x, _ in p]
    assert all(torch.equal(ya, yp) for (_, ya), (_, yp) in zip(a, p))  # augmentation leaves the order alone
    assert not all(torch.equal(xa, xp) for (xa, _), (xp, _) in zip(a, p))
    aug.set_epoch(2)
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, list(aug)))
    assert not all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, list(aug)))  # epoch 3 differs

    flips = DeviceLoader(ds, 40, hflip=True, seed=0)
    (x, _), = list(flips)
    (src, _), = list(DeviceLoader(ds, 40))
    flipped = [bool(torch.equal(x[i], src[i].flip(2))) for i in range(40)]
    kept = [bool(torch.equal(x[i], src[i])) for i in range(40)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)

    crops = DeviceLoader(ds, 40, crop_padding=2, seed=0)
    (x, _), = list(crops)
    padded = torch.nn.functional.pad(src, (2, 2, 2, 2), value=-1.0)  # zero pixels normalise to -1
    for i in range(40):
        windows = [torch.equal(x[i], padded[i, :, t:t + 8, l:l + 8]) for t in range(5) for l in range(5)]
        assert any(windows)


def test_array_dataset_validates() -> None:
    with pytest.raises(ValueError, match="uint8"):
        ArrayDataset(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        ArrayDataset(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))
    ds = make_ds(10)
    assert len(ds) == 10 and "n=10" in repr(ds)
    assert ids_of(ds.subset([3, 1])) == [3, 1]
