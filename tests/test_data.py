"""pfgm.data: builders, the prepared format, checksums, atomic writes, the loader, features."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from pfgm import data as pdata
from pfgm import datafiles
from pfgm.data import features, images, store, toys
from raw_files import (
    CELEBA_COLORS,
    celeba_raw,
    centre_colors,
    encoded,
    lsun_colors_in_key_order,
    lsun_entries,
    lsun_key,
    near,
    write_lmdb,
)


def _png(path, size, color, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


# --- toys -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(toys.TOYS))
def test_toy_shape_scale_and_seed(name):
    a = toys.TOYS[name](2000, torch.Generator().manual_seed(0))
    b = toys.TOYS[name](2000, torch.Generator().manual_seed(0))
    c = toys.TOYS[name](2000, torch.Generator().manual_seed(1))
    assert a.shape == (2000, 2) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    # The documented box: [-1, 1]^2 up to the noise tails.
    assert a.abs().max() < 1.3
    assert a.abs().max() > 0.3


def test_build_toy_split_is_a_partition():
    prepared = pdata.build_toy("moons", n_points=1000, seed=3, test_fraction=0.2)
    train, test = prepared.arrays["train"], prepared.arrays["test"]
    assert train.shape == (800, 2) and test.shape == (200, 2) and train.dtype == np.float32
    full = toys.moons(1000, torch.Generator().manual_seed(3)).numpy()
    both = np.concatenate([train, test])
    assert np.array_equal(np.sort(both, axis=0), np.sort(full, axis=0))


def test_split_indices_seeded():
    train, test = pdata.split_indices(10, 0.3, seed=1)
    assert len(test) == 3 and sorted(np.concatenate([train, test])) == list(range(10))
    assert np.array_equal(test, pdata.split_indices(10, 0.3, seed=1)[1])
    with pytest.raises(pdata.DataError):
        pdata.split_indices(1, 0.5, seed=0)


# --- digits -----------------------------------------------------------------------------------

def test_digits_counts_and_range():
    prepared = pdata.build_digits(seed=0, test_fraction=0.167)
    train, test = prepared.arrays["train"], prepared.arrays["test"]
    assert train.shape == (1497, 1, 8, 8) and test.shape == (300, 1, 8, 8)
    assert train.dtype == np.uint8 and train.min() == 0 and train.max() == 255
    # 0..16 scaled by 255/16: only 17 distinct levels.
    assert len(np.unique(np.concatenate([train, test]))) == 17
    assert prepared.labels["train"].shape == (1497,) and set(prepared.labels["test"]) <= set(range(10))
    other = pdata.build_digits(seed=1, test_fraction=0.167)
    assert not np.array_equal(other.arrays["test"], test)


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    """Digits with the feature classifier, prepared once for this module (a few seconds)."""
    out = tmp_path_factory.mktemp("prepared") / "digits"
    prepared = pdata.add_digits_features(pdata.build_digits(seed=0, test_fraction=0.167), seed=0)
    manifest = pdata.write_prepared(prepared, out)
    return out, manifest


def test_digits_classifier_accuracy_and_files(digits_folder):
    out, manifest = digits_folder
    assert manifest["features"]["test_accuracy"] > 0.95
    assert 20_000 <= manifest["features"]["n_params"] <= 50_000
    state = torch.load(out / "features.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert json.loads((out / "features.json").read_text()) == {"n_classes": 10, "width": 16}


def test_digits_feature_extractor_and_cleanfid_adapter(digits_folder):
    out, manifest = digits_folder
    model = pdata.load_digits_classifier(out)
    extract = pdata.digits_feature_extractor(model)
    x_uint8 = torch.from_numpy(np.load(out / "test.npy")[:5])
    x_unit = pdata.load_split(out, "test")[:5]
    f = extract(x_uint8)
    assert f.shape == (5, manifest["features"]["n_features"])
    torch.testing.assert_close(extract(x_unit), f)
    # clean-fid hands over float RGB copies in 0..255, possibly resized (here: nearest x4).
    rgb = x_uint8.float().repeat(1, 3, 1, 1)
    adapted = pdata.cleanfid_extractor(extract)
    torch.testing.assert_close(adapted(rgb), f)
    big = rgb.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
    torch.testing.assert_close(adapted(big), f, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError):
        extract(rgb)


@pytest.mark.filterwarnings("ignore:The `disp` argument:DeprecationWarning")
def test_cleanfid_frechet_distance_with_adapter(digits_folder):
    """Features from the adapter feed clean-fid's Frechet distance: same set ~0, other set > 0."""
    from cleanfid.fid import frechet_distance

    out, _ = digits_folder
    adapted = pdata.cleanfid_extractor(pdata.digits_feature_extractor(pdata.load_digits_classifier(out)))
    train = torch.from_numpy(np.load(out / "train.npy")).float().repeat(1, 3, 1, 1)
    feats = adapted(train).numpy().astype(np.float64)
    noise = adapted(torch.rand(200, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 255)
    stats = lambda f: (f.mean(0), np.cov(f, rowvar=False))  # noqa: E731
    same = frechet_distance(*stats(feats[:700]), *stats(feats[700:]))
    far = frechet_distance(*stats(feats), *stats(noise.numpy().astype(np.float64)))
    assert far > 10 * same


def test_cleanfid_folder_features_match(digits_folder, tmp_path):
    """clean-fid's own folder reader + the adapter gives the features of the stored images."""
    from cleanfid.fid import get_folder_features

    out, _ = digits_folder
    x = np.load(out / "test.npy")[:6]
    for i, img in enumerate(x):
        Image.fromarray(img[0]).save(tmp_path / f"{i}.png")
    adapted = pdata.cleanfid_extractor(pdata.digits_feature_extractor(pdata.load_digits_classifier(out)))
    feats = get_folder_features(str(tmp_path), adapted, num_workers=0, batch_size=4, device=torch.device("cpu"),
                                custom_fn_resize=lambda img: img, verbose=False)
    expected = pdata.digits_feature_extractor(pdata.load_digits_classifier(out))(torch.from_numpy(x))
    np.testing.assert_allclose(feats, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_classifier_training_is_deterministic():
    prepared = pdata.build_digits(seed=0, test_fraction=0.167)
    x, y = prepared.arrays["train"][:256], prepared.labels["train"][:256]
    a = features.train_digits_classifier(x, y, seed=5, epochs=2)
    b = features.train_digits_classifier(x, y, seed=5, epochs=2)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


# --- prepared format, checksums, atomic writes, loader ------------------------------------------

def test_write_and_load_roundtrip(tmp_path):
    prepared = pdata.build_toy("8gaussians", n_points=100, seed=0, test_fraction=0.25)
    manifest = pdata.write_prepared(prepared, tmp_path / "toy")
    assert _listing(tmp_path) == ["toy"]
    assert _listing(tmp_path / "toy") == ["manifest.json", "test.npy", "train.npy"]
    assert manifest["counts"] == {"train": 75, "test": 25} and manifest["kind"] == "points"
    assert manifest["files"]["train.npy"] == store.sha256_file(tmp_path / "toy" / "train.npy")
    assert json.loads((tmp_path / "toy" / "manifest.json").read_text()) == manifest
    x = pdata.load_split(tmp_path / "toy", "train")
    assert torch.equal(x, torch.from_numpy(prepared.arrays["train"]))


def test_image_loader_scales_to_unit_interval(digits_folder):
    out, _ = digits_folder
    x = pdata.load_split(out, "train")
    assert x.dtype == torch.float32 and x.shape == (1497, 1, 8, 8)
    assert x.min() == -1.0 and x.max() == 1.0
    assert np.array_equal(pdata.unit_to_images(x).numpy(), np.load(out / "train.npy"))
    assert pdata.load_labels(out, "test").shape == (300,)


def test_checksum_mismatch_names_the_file(tmp_path):
    out = tmp_path / "toy"
    pdata.write_prepared(pdata.build_toy("heart", n_points=50, seed=0, test_fraction=0.2), out)
    a = np.load(out / "test.npy")
    a[0, 0] += 1.0
    np.save(out / "test.npy", a)
    pdata.load_split(out, "train")  # untouched split still loads
    with pytest.raises(pdata.ChecksumError, match=r"test\.npy"):
        pdata.load_split(out, "test")
    with pytest.raises(ValueError, match=r"test\.npy"):
        pdata.verify_folder(out)


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    out = tmp_path / "toy"
    first = pdata.write_prepared(pdata.build_toy("moons", n_points=50, seed=0, test_fraction=0.2), out)

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(store.np, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        pdata.write_prepared(pdata.build_toy("moons", n_points=50, seed=1, test_fraction=0.2), out)
    monkeypatch.undo()
    # The old folder is intact and no temporary folder is left beside it.
    assert _listing(tmp_path) == ["toy"]
    assert pdata.verify_folder(out) == first


def test_rewrite_replaces_folder(tmp_path):
    out = tmp_path / "toy"
    pdata.write_prepared(pdata.build_toy("moons", n_points=50, seed=0, test_fraction=0.2), out)
    (out / "stale.txt").write_text("left over")
    second = pdata.write_prepared(pdata.build_toy("moons", n_points=60, seed=1, test_fraction=0.2), out)
    assert _listing(tmp_path) == ["toy"] and "stale.txt" not in _listing(out)
    assert pdata.read_manifest(out) == second and second["counts"]["train"] == 48


def test_validate_rejects_bad_arrays(tmp_path):
    bad = pdata.Prepared(name="x", kind="image", arrays={"train": np.zeros((2, 1, 4, 4), np.float32),
                                                          "test": np.zeros((1, 1, 4, 4), np.float32)},
                         source="test", seed=0, split={})
    with pytest.raises(pdata.DataError, match="uint8"):
        pdata.write_prepared(bad, tmp_path / "x")
    assert _listing(tmp_path) == []


def test_random_hflip_driven_by_generator():
    x = torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).reshape(2, 1, 2, 3).repeat(50, 1, 1, 1)
    a = pdata.random_hflip(x, torch.Generator().manual_seed(0))
    b = pdata.random_hflip(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    flipped = (a == x.flip(-1)).flatten(1).all(1)
    kept = (a == x).flatten(1).all(1)
    assert torch.all(flipped | kept) and 20 < int(flipped.sum()) < 80
    assert torch.equal(pdata.random_hflip(x, torch.Generator(), p=0.0), x)
    with pytest.raises(ValueError):
        pdata.random_hflip(torch.zeros(4, 2), torch.Generator())


def test_iterate_batches_covers_data_once():
    x = torch.arange(10.0)[:, None, None, None].expand(10, 1, 2, 2).clone()
    batches = list(pdata.iterate_batches(x, 4, torch.Generator().manual_seed(0), hflip=True, drop_last=False))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(torch.cat(batches)[:, 0, 0, 0].tolist()) == list(range(10))


# --- image folders ----------------------------------------------------------------------------

def test_folder_resizes_and_crops(tmp_path):
    raw = tmp_path / "raw"
    for i in range(6):
        _png(raw / f"{i}.png", (20 + 4 * i, 12), (10 * i, 100, 200))
    _png(raw / "sub" / "grey.png", (16, 16), 77, mode="L")
    _png(raw / "opaque.png", (16, 16), (1, 2, 3, 255), mode="RGBA")
    (raw / "notes.txt").write_text("not an image, ignored")
    prepared = pdata.build_folder(raw, image_size=8, channels=3, seed=0, test_fraction=0.25)
    both = np.concatenate([prepared.arrays["train"], prepared.arrays["test"]])
    assert both.shape == (8, 3, 8, 8) and both.dtype == np.uint8
    assert prepared.arrays["test"].shape[0] == 2
    colors = {tuple(img[:, 4, 4]) for img in both}
    assert (50, 100, 200) in colors and (77, 77, 77) in colors and (1, 2, 3) in colors
    grey = pdata.build_folder(raw, image_size=4, channels=1, seed=0, test_fraction=0.25, max_images=4)
    assert grey.arrays["train"].shape == (3, 1, 4, 4)


def test_folder_corrupt_image_names_the_file(tmp_path):
    raw = tmp_path / "raw"
    _png(raw / "good.png", (8, 8), (0, 0, 0))
    _png(raw / "good2.png", (8, 8), (0, 0, 0))
    (raw / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with pytest.raises(pdata.DataError, match="broken.png"):
        pdata.build_folder(raw, image_size=8, channels=3, seed=0, test_fraction=0.5)


def test_folder_truncated_image_names_the_file(tmp_path):
    raw = tmp_path / "raw"
    good = _png(raw / "a.png", (32, 32), (5, 5, 5))
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(raw / "b.png")
    (raw / "b.png").write_bytes((raw / "b.png").read_bytes()[:200])
    assert good.exists()
    with pytest.raises(pdata.DataError, match="b.png"):
        pdata.build_folder(raw, image_size=8, channels=3, seed=0, test_fraction=0.5)


def test_folder_transparent_image_rejected(tmp_path):
    raw = tmp_path / "raw"
    _png(raw / "a.png", (8, 8), (0, 0, 0))
    _png(raw / "glass.png", (8, 8), (0, 0, 0, 10), mode="RGBA")
    with pytest.raises(pdata.DataError, match="glass.png.*alpha"):
        pdata.build_folder(raw, image_size=8, channels=3, seed=0, test_fraction=0.5)


def test_folder_empty_or_missing(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(pdata.DataError, match="no image files"):
        pdata.build_folder(tmp_path / "empty", image_size=8, channels=3, seed=0, test_fraction=0.5)
    with pytest.raises(pdata.MissingFilesError, match="nowhere"):
        pdata.build_folder(tmp_path / "nowhere", image_size=8, channels=3, seed=0, test_fraction=0.5)


def test_celeba_crop_then_resize():
    img = Image.new("RGB", (178, 218), (255, 0, 0))
    img.paste((0, 0, 255), (19, 39, 159, 179))  # the central 140 x 140 square is blue
    out = images.celeba_transform(img)
    assert out.size == (64, 64) and np.asarray(out)[..., 2].min() == 255


def test_resize_center_crop_keeps_aspect():
    img = Image.new("RGB", (300, 200), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 40, 200))  # a white band on the left, cropped away
    out = images.resize_center_crop(img, 100)
    assert out.size == (100, 100) and np.asarray(out).max() == 0


# --- CIFAR-10 ---------------------------------------------------------------------------------

def test_cifar10_missing_files_message(tmp_path):
    with pytest.raises(pdata.MissingFilesError) as info:
        pdata.build_cifar10(tmp_path / "raw")
    message = str(info.value)
    assert "data_batch_1" in message and "test_batch" in message
    assert str(tmp_path / "raw" / "cifar-10-batches-py") in message
    assert images.CIFAR10_URL in message and images.CIFAR10_MD5 in message and "data.download: true" in message
    assert "\n" not in message and not (tmp_path / "raw").exists()  # fast: nothing fetched, nothing written
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)


def test_cifar10_reads_python_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, name in enumerate([*images.CIFAR10_TRAIN, *images.CIFAR10_TEST]):
        batch = {b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), b"labels": [i, i, i]}
        (folder / name).write_bytes(pickle.dumps(batch))
    prepared = pdata.build_cifar10(tmp_path)
    assert prepared.arrays["train"].shape == (15, 3, 32, 32) and prepared.arrays["test"].shape == (3, 3, 32, 32)
    assert prepared.labels["test"].tolist() == [5, 5, 5] and prepared.split["method"] == "official"
    (folder / "test_batch").write_bytes(b"garbage")
    with pytest.raises(pdata.DataError, match="test_batch"):
        pdata.build_cifar10(tmp_path)



# --- CelebA: the official partition file ------------------------------------------------------

def test_celeba_official_partition(tmp_path):
    prepared = pdata.build_celeba64(celeba_raw(tmp_path), seed=0, test_fraction=0.5)
    train, test = prepared.arrays["train"], prepared.arrays["test"]
    assert train.shape == (4, 3, 64, 64) and test.shape == (2, 3, 64, 64)
    # train = partition 0 (images 1-4, file order), test = partition 2 (images 7, 8); valid left out.
    assert centre_colors(train) == CELEBA_COLORS[:4] and centre_colors(test) == CELEBA_COLORS[6:]
    assert prepared.split["method"] == "official" and prepared.seed is None
    assert prepared.split["partition_counts"] == {"train": 4, "valid": 2, "test": 2}
    capped = pdata.build_celeba64(tmp_path, seed=0, test_fraction=0.5, max_images=3)  # per split
    assert centre_colors(capped.arrays["train"]) == CELEBA_COLORS[:3] and len(capped.arrays["test"]) == 2


def test_celeba_without_partition_file_falls_back_to_the_seeded_split(tmp_path):
    prepared = pdata.build_celeba64(celeba_raw(tmp_path, partition=None), seed=0, test_fraction=0.25)
    assert prepared.split["method"] == "random" and "list_eval_partition.txt" in prepared.split["note"]
    assert len(prepared.arrays["train"]) == 6 and len(prepared.arrays["test"]) == 2
    both = centre_colors(np.concatenate([prepared.arrays["train"], prepared.arrays["test"]]))
    assert sorted(both) == sorted(CELEBA_COLORS)


def test_celeba_partition_file_errors(tmp_path):
    root = celeba_raw(tmp_path)
    (root / images.CELEBA_PARTITION).write_text("000001.jpg 0\n000002.jpg 3\n")
    with pytest.raises(pdata.DataError, match=r"list_eval_partition.txt:2"):
        pdata.build_celeba64(root, seed=0, test_fraction=0.5)
    (root / images.CELEBA_PARTITION).write_text("000001.jpg 0\n000099.jpg 2\n")
    with pytest.raises(pdata.MissingFilesError, match="000099.jpg"):
        pdata.build_celeba64(root, seed=0, test_fraction=0.5)


def test_celeba_missing_says_where_to_get_it(tmp_path):
    with pytest.raises(pdata.MissingFilesError) as info:
        pdata.build_celeba64(tmp_path / "raw", seed=0, test_fraction=0.5)
    message = str(info.value)
    assert "no stable unauthenticated download" in message and datafiles.CELEBA_URL in message
    assert str(tmp_path / "raw" / "img_align_celeba") in message and "list_eval_partition.txt" in message


# --- LSUN bedroom: the official LMDB export ---------------------------------------------------

def test_lsun_lmdb_first_keys_and_seeded_split(tmp_path):
    entries = lsun_entries(5)
    write_lmdb(tmp_path / images.LSUN_BEDROOM_LMDB, dict(reversed(entries.items())))  # LMDB sorts the keys
    prepared = pdata.build_lsun_bedroom256(tmp_path, seed=0, test_fraction=0.25, max_images=4)
    train, test = prepared.arrays["train"], prepared.arrays["test"]
    assert train.shape == (3, 3, 256, 256) and test.shape == (1, 3, 256, 256) and train.dtype == np.uint8
    got = centre_colors(np.concatenate([train, test]))
    assert near(sorted(got), sorted(lsun_colors_in_key_order(5)[:4]))  # the first 4 keys, and only those
    keys = prepared.split["keys"]
    assert prepared.split["method"] == "random" and keys["first"] == min(entries) and keys["count"] == 4
    assert prepared.source.endswith(images.LSUN_BEDROOM_LMDB)


def test_lsun_val_lmdb_is_the_test_split(tmp_path):
    write_lmdb(tmp_path / images.LSUN_BEDROOM_LMDB, lsun_entries(4))
    portrait = Image.new("RGB", (256, 300), (90, 90, 90))
    write_lmdb(tmp_path / images.LSUN_BEDROOM_VAL_LMDB, {lsun_key(100): encoded(portrait, "WEBP")})
    prepared = pdata.build_lsun_bedroom256(tmp_path, seed=0, test_fraction=0.25)
    assert near(centre_colors(prepared.arrays["train"]), lsun_colors_in_key_order(4))  # all, in key order
    assert centre_colors(prepared.arrays["test"]) == [(90, 90, 90)]  # lossless WebP: exact
    assert prepared.split["method"] == "official" and prepared.seed is None
    assert prepared.split["keys"]["test"]["count"] == 1


def test_lsun_crop_is_exact_when_the_shorter_side_is_256(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (256, 341, 3), dtype=np.uint8)
    write_lmdb(tmp_path / images.LSUN_BEDROOM_LMDB, {"a" * 40: encoded(Image.fromarray(noise), "PNG"),
                                                    "b" * 40: encoded(Image.fromarray(noise[:, ::-1]), "PNG")})
    prepared = pdata.build_lsun_bedroom256(tmp_path, seed=0, test_fraction=0.5)
    left = (341 - 256) // 2  # score_sde's crop_resize: offset (w - min(h, w)) // 2, then a resize by 1
    both = {prepared.arrays["train"][0].tobytes(), prepared.arrays["test"][0].tobytes()}
    assert noise[:, left:left + 256].transpose(2, 0, 1).tobytes() in both


def test_crop_resize_takes_the_central_square():
    img = Image.new("RGB", (768, 512), (255, 0, 0))
    img.paste((0, 0, 255), (128, 0, 640, 512))  # the central 512 x 512 square is blue
    out = np.asarray(images.crop_resize(img, 256))
    assert out.shape == (256, 256, 3) and out[..., 0].max() == 0 and out[..., 2].min() == 255


def test_lsun_lmdb_bad_value_names_the_key(tmp_path):
    write_lmdb(tmp_path / images.LSUN_BEDROOM_LMDB, {"a" * 40: encoded(Image.new("RGB", (256, 256))),
                                                    "b" * 40: b"not an image"})
    with pytest.raises(pdata.DataError, match="b" * 40):
        pdata.build_lsun_bedroom256(tmp_path, seed=0, test_fraction=0.5)


def test_lsun_exported_files_still_read(tmp_path):
    # The LSUN tool's `export`: <out>/<key[0]>/.../<key[5]>/<key>.webp holding JPEG bytes.
    for key, value in lsun_entries(3).items():
        path = tmp_path / images.LSUN_BEDROOM_DIR / "/".join(key[:6]) / f"{key}.webp"
        path.parent.mkdir(parents=True)
        path.write_bytes(value)
    prepared = pdata.build_lsun_bedroom256(tmp_path, seed=0, test_fraction=0.34)
    assert prepared.arrays["train"].shape == (2, 3, 256, 256) and prepared.split["method"] == "random"
    both = centre_colors(np.concatenate([prepared.arrays["train"], prepared.arrays["test"]]))
    assert near(sorted(both), sorted(lsun_colors_in_key_order(3)))
    assert prepared.source.endswith(images.LSUN_BEDROOM_DIR)


def test_lsun_missing_says_where_to_get_it(tmp_path):
    with pytest.raises(pdata.MissingFilesError) as info:
        pdata.build_lsun_bedroom256(tmp_path / "raw", seed=0, test_fraction=0.5)
    message = str(info.value)
    assert datafiles.LSUN_TOOLS_URL in message and "data.download does not fetch it" in message
    assert str(tmp_path / "raw" / "bedroom_train_lmdb") in message and "bedroom_val_lmdb" in message
