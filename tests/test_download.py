"""pfgm.data.download and CIFAR-10's download path, offline: a fake archive with the real layout served
from a file:// URL or a monkeypatched fetch; checksum refusals leave nothing behind; safe extraction."""
from __future__ import annotations

import hashlib
import pickle
import tarfile
import urllib.error

import pytest

from pfgm import data as pdata
from pfgm.data import download, images
from raw_files import CIFAR_BATCHES, add_bytes, fake_cifar_archive


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_official_url_and_checksum_are_torchvisions():
    # torchvision.datasets.CIFAR10: url and tgz_md5 (the md5 published with the archive).
    assert images.CIFAR10_URL == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert images.CIFAR10_MD5 == "c58f30108f718f92721af3b95e74349a"


def test_md5_file_matches_a_known_digest(tmp_path):
    (tmp_path / "abc").write_bytes(b"abc")
    assert download.md5_file(tmp_path / "abc") == "900150983cd24fb0d6963f7d28e17f72"  # RFC 1321 test suite


def test_fetch_from_file_url_extracts_and_builds(tmp_path):
    """The real fetch (urllib) on a file:// URL: verified, renamed, extracted, then read as CIFAR-10."""
    source = fake_cifar_archive(tmp_path / "served.tar.gz")
    root = tmp_path / "raw"
    folder = images.fetch_cifar10(root, url=source.as_uri(), md5=download.md5_file(source))
    assert folder == root / images.CIFAR10_DIR
    # Only the verified archive and the batches: no temporary file or staging folder is left.
    assert listing(root) == [images.CIFAR10_DIR, images.CIFAR10_ARCHIVE]
    assert set(CIFAR_BATCHES) <= set(listing(folder))
    assert (root / images.CIFAR10_ARCHIVE).read_bytes() == source.read_bytes()
    prepared = pdata.build_cifar10(root)
    assert prepared.arrays["train"].shape == (10, 3, 32, 32) and prepared.arrays["test"].shape == (2, 3, 32, 32)
    assert prepared.arrays["train"][::2, 0, 0, 0].tolist() == [10, 20, 30, 40, 50]
    assert prepared.labels["test"].tolist() == [5, 5]


def test_download_asks_for_the_official_url_and_refuses_a_wrong_checksum(tmp_path, monkeypatch):
    """build_cifar10(download=True) fetches CIFAR10_URL; an archive without the published md5 is deleted."""
    fake = fake_cifar_archive(tmp_path / "fake.tar.gz")
    asked = []

    def fetch(url, dest):
        asked.append(url)
        dest.write_bytes(fake.read_bytes())

    monkeypatch.setattr(download, "fetch_url", fetch)
    root = tmp_path / "raw"
    with pytest.raises(pdata.ChecksumError) as info:
        pdata.build_cifar10(root, download=True)
    assert asked == [images.CIFAR10_URL]
    message = str(info.value)
    assert "\n" not in message and images.CIFAR10_MD5 in message and download.md5_file(fake) in message
    assert listing(root) == []  # the download is gone; nothing extracted


def test_download_verified_removes_a_corrupted_file(tmp_path):
    good = b"the published bytes"
    served = tmp_path / "served.bin"
    served.write_bytes(good[:-1] + b"X")  # corrupted in transit
    target = tmp_path / "dl" / "archive.bin"
    published = hashlib.md5(good).hexdigest()
    with pytest.raises(pdata.ChecksumError, match="deleted it"):
        download.download_verified(served.as_uri(), target, published)
    assert listing(target.parent) == []
    # The same call with the right checksum leaves exactly the target.
    right = download.md5_file(served)
    assert download.download_verified(served.as_uri(), target, right) == target
    assert listing(target.parent) == ["archive.bin"] and target.read_bytes() == served.read_bytes()


def test_failed_fetch_leaves_no_partial_file(tmp_path):
    def half_then_fail(url, dest):
        dest.write_bytes(b"first half")
        raise urllib.error.URLError(ConnectionResetError("connection reset"))

    with pytest.raises(download.DownloadError, match="connection reset"):
        download.download_verified("https://example.invalid/a.tgz", tmp_path / "a.tgz", "0" * 32,
                                   fetch=half_then_fail)
    assert listing(tmp_path) == []


def test_offline_download_fails_fast_saying_what_to_put_where(tmp_path, monkeypatch):
    def offline(url, dest):
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    monkeypatch.setattr(download, "fetch_url", offline)
    root = tmp_path / "raw"
    with pytest.raises(pdata.MissingFilesError) as info:
        pdata.build_cifar10(root, download=True)
    message = str(info.value)
    assert isinstance(info.value, download.DownloadError) and "\n" not in message
    assert "Network is unreachable" in message and images.CIFAR10_URL in message and str(root) in message
    assert listing(root) == []


def test_real_fetch_of_a_missing_url_is_a_download_error(tmp_path):
    with pytest.raises(download.DownloadError, match="nowhere.tar.gz"):
        download.download_verified((tmp_path / "nowhere.tar.gz").as_uri(), tmp_path / "out" / "a", "0" * 32)
    assert listing(tmp_path / "out") == []


def test_archive_already_there_is_verified_then_extracted_without_download(tmp_path, monkeypatch):
    root = tmp_path / "raw"
    root.mkdir()
    archive = fake_cifar_archive(root / images.CIFAR10_ARCHIVE)
    monkeypatch.setattr(images, "CIFAR10_MD5", download.md5_file(archive))
    monkeypatch.setattr(download, "fetch_url", lambda url, dest: pytest.fail("must not download"))
    prepared = pdata.build_cifar10(root, download=False)
    assert prepared.arrays["train"].shape == (10, 3, 32, 32)
    assert listing(root) == [images.CIFAR10_DIR, images.CIFAR10_ARCHIVE]


def test_corrupt_archive_already_there_is_refused_and_kept(tmp_path):
    root = tmp_path / "raw"
    root.mkdir()
    (root / images.CIFAR10_ARCHIVE).write_bytes(b"a half-finished browser download")
    with pytest.raises(pdata.ChecksumError, match="delete it"):
        pdata.build_cifar10(root, download=True)
    assert listing(root) == [images.CIFAR10_ARCHIVE]  # a file the user put there is not deleted


def test_truncated_archive_extracts_nothing(tmp_path, monkeypatch):
    root = tmp_path / "raw"
    root.mkdir()
    whole = fake_cifar_archive(tmp_path / "whole.tar.gz").read_bytes()
    (root / images.CIFAR10_ARCHIVE).write_bytes(whole[: len(whole) // 2])
    monkeypatch.setattr(images, "CIFAR10_MD5", download.md5_file(root / images.CIFAR10_ARCHIVE))
    with pytest.raises(pdata.DataError, match="tar archive"):
        pdata.build_cifar10(root)
    assert listing(root) == [images.CIFAR10_ARCHIVE]


def test_partial_batches_folder_is_not_overwritten(tmp_path, monkeypatch):
    root = tmp_path / "raw"
    (root / images.CIFAR10_DIR).mkdir(parents=True)
    (root / images.CIFAR10_DIR / "data_batch_1").write_bytes(b"mine")
    archive = fake_cifar_archive(root / images.CIFAR10_ARCHIVE)
    monkeypatch.setattr(images, "CIFAR10_MD5", download.md5_file(archive))
    with pytest.raises(pdata.DataError, match="remove it"):
        pdata.build_cifar10(root)
    assert listing(root / images.CIFAR10_DIR) == ["data_batch_1"]
    assert listing(root) == [images.CIFAR10_DIR, images.CIFAR10_ARCHIVE]


def _hostile(tar: tarfile.TarFile, kind: str) -> None:
    if kind == "parent":
        add_bytes(tar, "cifar-10-batches-py/../../escaped.txt", b"x")
    elif kind == "absolute":
        add_bytes(tar, "/tmp/escaped.txt", b"x")
    elif kind in ("symlink", "hardlink"):
        link = tarfile.TarInfo("cifar-10-batches-py/link")
        link.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
        link.linkname = "../../escaped.txt"
        tar.addfile(link)
    else:  # a device file
        dev = tarfile.TarInfo("cifar-10-batches-py/dev")
        dev.type = tarfile.CHRTYPE
        tar.addfile(dev)


@pytest.mark.parametrize("kind", ["parent", "absolute", "symlink", "hardlink", "device"])
def test_safe_extract_refuses_members_outside_plain_files(tmp_path, kind):
    archive = tmp_path / "hostile.tar"
    with tarfile.open(archive, "w") as tar:
        add_bytes(tar, "cifar-10-batches-py/ok.txt", b"fine")
        _hostile(tar, kind)
    dest = tmp_path / "a" / "b"
    with pytest.raises(pdata.DataError, match="refusing to extract"):
        download.safe_extract_tar(archive, dest)
    # Checked before anything is written: not even the harmless member.
    assert not dest.exists() and not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path / "a" / "escaped.txt").exists()


def test_safe_extract_keeps_plain_files(tmp_path):
    archive = fake_cifar_archive(tmp_path / "ok.tar.gz")
    names = download.safe_extract_tar(archive, tmp_path / "out")
    assert f"{images.CIFAR10_DIR}/test_batch" in names
    batch = pickle.loads((tmp_path / "out" / images.CIFAR10_DIR / "test_batch").read_bytes())
    assert batch[b"labels"] == [5, 5]
