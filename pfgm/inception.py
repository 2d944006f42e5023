"""clean-fid's Inception networks, read from local files, and the verified download of those files.

FID on images uses the Inception-v3 graph of 2015-12-05 that TensorFlow's FID and IS code used.
clean-fid offers it in three preprocessing modes (`cleanfid.features.build_feature_extractor`,
`cleanfid.resize.build_resizer`), which `InceptionFeatures` builds the same way but from a local file:

    clean               the StyleGAN2-ADA TorchScript port (INCEPTION_FILE); images resized to 299 x 299
                        outside the network by PIL bicubic on float arrays, then (x - 128) / 128
    legacy_tensorflow   the same TorchScript file, images fed at their own size: the network resizes
                        them inside (its port of TF 1.x bilinear resize) as TF's Inception did; this
                        is how the published PFGM / PFGM++ FIDs were computed
    legacy_pytorch      pytorch-fid's port (PYTORCH_FID_FILE, in torch.hub's checkpoint folder, where
                        clean-fid loads it from); images resized by torch bilinear (align_corners=False)

clean-fid itself downloads missing weights silently; here nothing is fetched unless asked
(`ensure_weights(..., download=True)`), and a download is checked against a pinned sha256 before it
takes the file's place. Only plain PyTorch and clean-fid: no tracking, no params.
"""
from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import urllib.request
from pathlib import Path
from typing import BinaryIO, Callable, Literal

import numpy as np
import torch
from cleanfid.inception_pytorch import FID_WEIGHTS_URL
from cleanfid.resize import build_resizer
from torch import Tensor

Mode = Literal["clean", "legacy_tensorflow", "legacy_pytorch"]
MODES: tuple[str, ...] = ("clean", "legacy_tensorflow", "legacy_pytorch")

#: The file clean-fid's InceptionV3W loads (the StyleGAN2-ADA TorchScript port of TF Inception).
INCEPTION_FILE = "inception-2015-12-05.pt"
#: clean-fid's own URL for it (cleanfid.downloads_helper.inception_url; StyleGAN2-ADA's metrics use it too).
INCEPTION_URL = ("https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/"
                 "inception-2015-12-05.pt")
#: Neither clean-fid nor StyleGAN2-ADA publishes a checksum of that file. This is the sha256 that
#: crowsonkb/k-diffusion pins for the same URL before loading it into clean-fid's InceptionV3W
#: (k_diffusion/evaluation.py, InceptionV3FeatureExtractor); other projects pin the same value. It
#: was not recomputed here: this project's machines have no network access.
INCEPTION_SHA256 = "f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4"
#: pytorch-fid's weights, as clean-fid's legacy_pytorch mode loads them (torch.hub's load_state_dict_from_url).
PYTORCH_FID_URL = FID_WEIGHTS_URL
PYTORCH_FID_FILE = PYTORCH_FID_URL.rsplit("/", 1)[1]
#: torch.hub's convention: the hex after the last "-" of the name is the start of the file's sha256
#: (what `load_state_dict_from_url(check_hash=True)` checks). pytorch-fid publishes no full digest.
PYTORCH_FID_SHA256_PREFIX = PYTORCH_FID_FILE.rsplit("-", 1)[1].split(".")[0]

Fetch = Callable[[str, BinaryIO], None]
Resize = Callable[[np.ndarray], np.ndarray]


class InceptionMissingError(FileNotFoundError):
    """The Inception weights are not on disk; the message says what to put where."""


class WeightsChecksumError(ValueError):
    """A downloaded weights file whose sha256 is not the published one; nothing was kept."""


def check_mode(mode: str) -> str:
    """`mode` if it is one of MODES, else ValueError listing them."""
    if mode not in MODES:
        raise ValueError(f"unknown Inception mode {mode!r}; one of {', '.join(MODES)}")
    return mode


def weights_location(mode: str, inception_path: str | os.PathLike) -> tuple[Path, str, str]:
    """(file, url, sha256 or its published prefix) of the weights `mode` needs.

    clean and legacy_tensorflow read the TorchScript file at `inception_path`; legacy_pytorch reads
    pytorch-fid's file where clean-fid looks for it: <torch.hub.get_dir()>/checkpoints (set TORCH_HOME
    to move it).
    """
    if check_mode(mode) == "legacy_pytorch":
        return Path(torch.hub.get_dir()) / "checkpoints" / PYTORCH_FID_FILE, PYTORCH_FID_URL, PYTORCH_FID_SHA256_PREFIX
    return Path(inception_path), INCEPTION_URL, INCEPTION_SHA256


def check_inception(path: str | os.PathLike) -> Path:
    """The TorchScript Inception file at `path`, or InceptionMissingError saying what to put where.

    clean-fid loads the file by its folder, so it must keep its published name.
    """
    path = Path(path)
    if path.name != INCEPTION_FILE:
        raise InceptionMissingError(
            f"evaluate.inception_path must end in {INCEPTION_FILE} (clean-fid loads that name from the folder), "
            f"got {str(path)!r}")
    if not path.is_file():
        raise InceptionMissingError(
            f"Inception weights not found at {path}. FID and IS on image data need clean-fid's TorchScript "
            f"Inception: on a machine with network access download {INCEPTION_URL} and put it at {path} "
            f"(or set evaluate.inception_path to where it is), or set evaluate.download_weights: true to "
            f"fetch it (sha256-checked). Nothing is downloaded otherwise.")
    return path


def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def urllib_fetch(url: str, out: BinaryIO) -> None:
    """Copy the body of `url` into `out` (a timeout keeps a dead network from hanging the run)."""
    with urllib.request.urlopen(url, timeout=60) as response:
        shutil.copyfileobj(response, out, length=1 << 20)


def download_verified(url: str, path: str | os.PathLike, sha256: str, *, fetch: Fetch = urllib_fetch) -> Path:
    """Download `url` to `path` only if its sha256 starts with `sha256` (a full digest or a published prefix).

    The body goes to a temporary file beside `path`, is hashed, and replaces `path` by one rename:
    `path` never holds a partial or unverified file. On a mismatch or a failed transfer the temporary
    file is removed and WeightsChecksumError (or the transfer's error) is raised.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{secrets.token_hex(6)}.part")
    try:
        with open(partial, "wb") as out:
            fetch(url, out)
            out.flush()
            os.fsync(out.fileno())
        actual = sha256_file(partial)
        if not actual.startswith(sha256.lower()):
            raise WeightsChecksumError(
                f"{url}: downloaded file has sha256 {actual}, expected {sha256}; it was not kept at {path}. "
                "Try again (a truncated or altered transfer), or download it by hand and check it.")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def ensure_weights(mode: str, inception_path: str | os.PathLike, *, download: bool = False,
                   fetch: Fetch = urllib_fetch) -> Path:
    """The weights file of `mode`, downloaded and verified first when missing and `download` is on.

    Without `download` a missing file is InceptionMissingError at once (offline runs fail fast).
    A file already on disk is used as it is (its sha256 keys the cached reference statistics).
    """
    path, url, sha256 = weights_location(mode, inception_path)
    if mode != "legacy_pytorch" and path.name != INCEPTION_FILE:
        check_inception(path)  # raises: clean-fid finds the file only under its published name
    if path.is_file():
        return path
    if download:
        return download_verified(url, path, sha256, fetch=fetch)
    if mode == "legacy_pytorch":
        raise InceptionMissingError(
            f"pytorch-fid's Inception weights not found at {path} (evaluate.fid_mode: legacy_pytorch). On a "
            f"machine with network access download {url} and put it there (TORCH_HOME moves the folder), or "
            f"set evaluate.download_weights: true. Nothing is downloaded otherwise.")
    return check_inception(path)


class InceptionFeatures:
    """clean-fid's feature network of one mode, loaded from a local file, never downloaded.

    `__call__(x)`: float (B, 3, H, W) in 0..255, already passed through `resizer()` -> pool features
    (B, 2048). `logits(x)`: the same input -> log class probabilities (B, 1008) for the Inception
    Score, from the TorchScript model's softmax without output bias (the original IS code's choice);
    None in legacy_pytorch mode, whose network clean-fid builds without its classifier.
    """

    def __init__(self, path: str | os.PathLike, device: torch.device | str = "cpu", mode: str = "clean"):
        self.mode = check_mode(mode)
        self.path = ensure_weights(mode, path)
        if mode == "legacy_pytorch":
            from cleanfid.inception_pytorch import InceptionV3

            # clean-fid's feature_extractor("pytorch_inception"): the final pool block, inputs in [0, 1].
            # The weights load from torch.hub's cache, where ensure_weights found them (no download).
            self.model = InceptionV3(output_blocks=[3], resize_input=False).to(device).eval()
        else:
            from cleanfid.inception_torchscript import InceptionV3W

            # clean-fid's build_feature_extractor: legacy_tensorflow lets the network resize inside.
            self.model = InceptionV3W(str(self.path.parent), download=False,
                                      resize_inside=mode == "legacy_tensorflow").to(device).eval()

    def resizer(self) -> Resize:
        """clean-fid's resize of this mode, on float (H, W, 3) arrays in 0..255 (identity for legacy_tensorflow)."""
        return build_resizer(self.mode)

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        if self.mode == "legacy_pytorch":
            return self.model(x / 255)[0].squeeze(-1).squeeze(-1)
        return self.model(x)

    @property
    def has_logits(self) -> bool:
        return self.mode != "legacy_pytorch"

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        if not self.has_logits:
            raise ValueError("legacy_pytorch mode has no class logits (no Inception Score); use clean or "
                             "legacy_tensorflow")
        # The TorchScript base resizes anything that is not 299 x 299 itself, as in legacy_tensorflow.
        probs = self.model.base(x, no_output_bias=True)
        return torch.log(probs.clamp_min(1e-30))
