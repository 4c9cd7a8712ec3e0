"""Image folders, DatasetSpec, --image-size and --normalize: what `imagefolder:PATH` reads and how."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adact.data import DeviceLoader, load_dataset
from adact.data.imagefolder import BadImageWarning, FileSplit
from adact.data.registry import normalization, resize_split
from adact.dataspec import DatasetSpec
from test_search import CLASSES, write_image_folder


def test_dataset_spec_parses_once_case_insensitively(tmp_path: Path) -> None:
    assert DatasetSpec.parse("Digits") == DatasetSpec("named", "digits")
    assert str(DatasetSpec.parse("NPZ:data/FER2013.npz")) == "npz:data/FER2013.npz"
    spec = DatasetSpec.parse("ImageFolder:some/where/Pets/")
    assert spec.kind == "imagefolder" and spec.slug == "imagefolder-Pets" and spec.display == "imagefolder:Pets"
    assert DatasetSpec.parse("npz:x/fmnist.npz").paper_key == "fmnist"
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        DatasetSpec.parse("mnist")
    with pytest.raises(ValueError, match="needs a path"):
        DatasetSpec.parse("imagefolder:")
    (tmp_path / "data" / "pets").mkdir(parents=True)
    assert DatasetSpec.parse("imagefolder:pets").resolve_path(tmp_path / "data") == tmp_path / "data" / "pets"
    with pytest.raises(FileNotFoundError, match="imagefolder folder not found"):
        DatasetSpec.parse("imagefolder:nowhere").check(tmp_path)


def test_train_and_val_folders_png_and_jpeg(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "pets", per_class={"train": 6, "val": 2})
    with pytest.warns(BadImageWarning, match=r"broken\.png"):
        data = load_dataset(f"imagefolder:{root}", quiet=True)
    assert data.classes == list(CLASSES) and data.image_size == (16, 16) and data.in_channels == 3
    assert len(data.train) == 18 and len(data.test) == 6  # 3 classes x 6 (the broken file skipped) / x 2
    assert data.info["bad_images"] == 1 and data.info["bad_image_files"][0].endswith("broken.png")
    assert data.train.class_counts() == [6, 6, 6]
    # Pixels survive decoding: the PNGs exactly, the JPEGs (quality 95) closely.
    png = np.asarray(Image.open(root / "train" / "dog" / "0.png"))
    idx = 6  # the first dog image (sorted by class, then file name: 0.png, 1.jpg, ...)
    assert np.array_equal(data.train.x[idx].permute(1, 2, 0).numpy(), png)


def test_bad_image_error_names_the_file(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "pets", per_class={"train": 2, "test": 2})
    with pytest.raises(ValueError, match=r"cannot decode image \S+broken\.png .*--on-bad-image skip"):
        load_dataset(f"imagefolder:{root}", on_bad_image="error")


def test_one_folder_is_split_stratified(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "pets", per_class={"all": 10}, corrupt=False)
    data = load_dataset(f"imagefolder:{root / 'all'}", quiet=True)  # class subfolders directly
    assert len(data.test) == 6 and data.test.class_counts() == [2, 2, 2]  # default 0.2
    data = load_dataset(f"imagefolder:{root / 'all'}", test_from_train=0.5, val_fraction=0.2, quiet=True)
    assert len(data.test) == 15 and data.val is not None and len(data.val) == 3
    assert "test carved from train" in str(data.info["protocol"])


def test_grayscale_sizes_and_resizing(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "g", per_class={"train": 2, "val": 2}, corrupt=False, gray=True)
    data = load_dataset(f"imagefolder:{root}", image_size=8)
    assert data.in_channels == 1 and data.image_size == (8, 8)
    Image.new("L", (20, 12)).save(root / "train" / "cat" / "odd.png")
    with pytest.raises(ValueError, match=r"different sizes .*--image-size S"):
        load_dataset(f"imagefolder:{root}")
    digits = load_dataset("digits", image_size=32)
    assert digits.image_size == (32, 32) and digits.train.x.dtype == torch.uint8
    same = resize_split(digits.train, 32)
    assert same is digits.train


def test_streamed_images_give_the_same_batches_as_cached_ones(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "pets", per_class={"train": 6, "val": 2}, corrupt=False)
    cached = load_dataset(f"imagefolder:{root}", quiet=True)
    streamed = load_dataset(f"imagefolder:{root}", cache_mb=0.0001, quiet=True)
    assert isinstance(streamed.train, FileSplit) and "streamed" in str(streamed.info["storage"])
    a = DeviceLoader(cached.train, 5, shuffle=True, seed=3, hflip=True)
    b = DeviceLoader(streamed.train, 5, shuffle=True, seed=3, hflip=True, workers=0)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_normalization() -> None:
    assert normalization("paper", 3) == ([0.5] * 3, [0.5] * 3)
    mean, std = normalization("imagenet", 3)
    assert mean == [0.485, 0.456, 0.406] and std == [0.229, 0.224, 0.225]
    mean, _ = normalization("imagenet", 1)
    assert mean == [pytest.approx((0.485 + 0.456 + 0.406) / 3)]


def _hard_folder(root: Path) -> dict[str, np.ndarray]:
    """Two classes of 8x12 images: 16-bit PNGs, an EXIF-rotated PNG, a truncated JPEG; returns the
    8-bit pixels each good file must decode to."""
    rng = np.random.default_rng(1)
    expected: dict[str, np.ndarray] = {}
    for c, name in enumerate(("dark", "light")):
        (root / name).mkdir(parents=True)
        for i in range(3):
            deep = rng.integers(0, 2**16, (8, 12)).astype(np.uint16) // (c + 1) + c * 20000
            Image.fromarray(deep).save(root / name / f"{i}.png")  # mode I;16
            expected[f"{name}/{i}.png"] = np.rint(deep / 257.0).astype(np.uint8)
        stored = rng.integers(0, 256, (12, 8), dtype=np.uint8)  # shot sideways: shown 90 degrees clockwise
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(stored).save(root / name / "turned.png", exif=exif)
        expected[f"{name}/turned.png"] = np.rot90(stored, k=-1)
    good = Image.fromarray(rng.integers(0, 256, (8, 12), dtype=np.uint8))
    good.save(root / "dark" / "cut.jpg", quality=90)
    whole = (root / "dark" / "cut.jpg").read_bytes()
    (root / "dark" / "cut.jpg").write_bytes(whole[:-40])  # its header intact: the cut shows only when decoded
    return expected


@pytest.mark.parametrize("cache_mb", [4096.0, 0.0])
def test_every_path_decodes_16_bit_exif_and_truncated_files_alike(tmp_path: Path, cache_mb: float) -> None:
    expected = _hard_folder(tmp_path / "deep")
    with pytest.warns(BadImageWarning, match=r"cut\.jpg: cannot decode it \(OSError: image file is truncated"):
        data = load_dataset(f"imagefolder:{tmp_path / 'deep'}", cache_mb=cache_mb, test_from_train=0.5, quiet=True)
    assert isinstance(data.train, FileSplit) == (cache_mb == 0.0)
    assert data.info["bad_images"] == 1 and str(data.info["bad_image_files"][0]).endswith("cut.jpg")
    assert data.in_channels == 1 and data.image_size == (8, 12) and len(data.train) + len(data.test) == 8
    got = [x for split in (data.train, data.test) for x in DeviceLoader(split, 8, mean=0.0, std=1.0, workers=0)]
    pixels = torch.cat([x for x, _ in got]).mul(255).round().to(torch.uint8)[:, 0].numpy()
    # every good file exactly once: 16-bit samples scaled (not clipped to white), the EXIF turn applied
    assert sorted(p.tobytes() for p in pixels) == sorted(e.tobytes() for e in expected.values())
    with pytest.raises(ValueError, match=r"cannot decode image \S+cut\.jpg \(OSError: image file is truncated"):
        load_dataset(f"imagefolder:{tmp_path / 'deep'}", cache_mb=cache_mb, on_bad_image="error")


def test_float_images_out_of_range_are_refused_as_undecodable(tmp_path: Path) -> None:
    from adact.data.imagefolder import decode_image

    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)).save(tmp_path / "half.tif")
    assert decode_image(tmp_path / "half.tif", "L", None).tolist() == [[[128] * 4] * 4]
    Image.fromarray(np.full((4, 4), 7.0, dtype=np.float32)).save(tmp_path / "seven.tif")
    with pytest.raises(ValueError, match=r"mode F samples span 7\.\.7, outside the 0\.\.1"):
        decode_image(tmp_path / "seven.tif", "L", None)


@pytest.mark.usefixtures("one_thread")
def test_a_dataset_path_that_is_not_utf8_renders_everywhere(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from adact.cli import main
    from adact.dataspec import printable

    if sys.platform == "darwin":
        pytest.skip("macOS file names must be UTF-8")
    root = Path(os.fsdecode(os.fsencode(tmp_path) + b"/d\xffata"))
    write_image_folder(root, per_class={"train": 4, "val": 2}, corrupt=False)
    assert printable("imagefolder:d\udcffata") == "imagefolder:d\\xffata"
    assert DatasetSpec.parse(f"imagefolder:{root}").display == "imagefolder:d\\xffata"
    out = tmp_path / "out"
    assert main(["search", "--dataset", f"imagefolder:{root}", "--epochs", "1", "--seeds", "0", "--channels", "4", "4",
                 "4", "4", "--out", str(out), "--quiet", "--jobs", "1", "--batch-size", "8"]) == 0
    assert main(["analyze", str(out)]) == 0  # the figures are titled, the table and report written, twice
    assert "d\\xffata" in (out / "table.md").read_text(encoding="utf-8")
    assert "d\\xffata" in capsys.readouterr().out
    assert list((out / "figures").glob("*_weights.png")) and (out / "results.json").is_file()


def test_what_an_image_folder_reads_and_leaves_out(tmp_path: Path) -> None:
    from adact.data.imagefolder import IgnoredFilesWarning

    root = write_image_folder(tmp_path / "pets", per_class={"all": 4}, corrupt=False) / "all"
    Image.new("P", (16, 16), 3).save(root / "cat" / "anim.gif")  # any format PIL opens is an image
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS metadata, not an image
    (root / "dog" / ".DS_Store").write_bytes(b"\x00")
    (root / ".hidden").mkdir()
    (root / "everything").symlink_to(root)  # a link back to the root: not a fourth class
    (root / "dog" / "again.png").symlink_to(root / "dog" / "0.png")  # the same image twice
    elsewhere = write_image_folder(tmp_path / "more", per_class={"x": 2}, corrupt=False) / "x" / "cat"
    (root / "cat" / "shared").symlink_to(elsewhere)  # images outside the dataset: followed
    with pytest.warns(IgnoredFilesWarning) as caught:
        data = load_dataset(f"imagefolder:{root}", test_from_train=0.25, quiet=True)
    messages = [str(w.message) for w in caught if w.category is IgnoredFilesWarning]
    assert any("ignored 1 file(s) that are not images PIL opens" in m and "notes.txt" in m for m in messages)
    assert any("did not follow 2 link(s) that lead back into the dataset" in m for m in messages)
    assert data.classes == list(CLASSES)
    counts = [a + b for a, b in zip(data.train.class_counts(3), data.test.class_counts(3))]
    assert counts == [4 + 1 + 2, 4, 4]  # cat: its 4, the GIF and the 2 linked from outside; dog: no twin
    assert data.info["ignored_files"] == 1 and data.info["links_not_followed"] == 2 and data.info["bad_images"] == 0


def test_a_class_without_images_is_refused(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "pets", per_class={"train": 2, "val": 1}, corrupt=False)
    (root / "train" / "empty").mkdir()
    (root / "train" / "empty" / "readme.md").write_text("to do")
    with pytest.raises(ValueError, match=r"the class folder\(s\) empty holds no images; add images or remove"):
        load_dataset(f"imagefolder:{root}", quiet=True)
    (root / "train" / "empty" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ValueError, match=r"class folder\(s\) empty holds no image that decodes"):
        load_dataset(f"imagefolder:{root}", quiet=True, cache_mb=0)


def test_cache_mb_0_means_always_stream(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from adact.cli import _train_config, build_parser
    from adact.config import TrainConfig
    from conftest import cli_error

    args = build_parser().parse_args(["train", "--cache-mb", "0"])
    assert _train_config(args, dataset="digits", seed=0, activation="adact").cache_mb == 0.0
    assert "argument --cache-mb: must be a finite number >= 0" in cli_error(capsys, ["train", "--cache-mb", "-1"])
    with pytest.raises(ValueError, match="cache_mb must be >= 0"):
        TrainConfig(cache_mb=-1.0)
    root = write_image_folder(tmp_path / "pets", per_class={"train": 2, "val": 1}, corrupt=False)
    data = load_dataset(f"imagefolder:{root}", cache_mb=0, quiet=True)
    assert isinstance(data.train, FileSplit) and "streamed from disk" in str(data.info["storage"])
