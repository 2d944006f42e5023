"""pfgm.networks.official_snapshot: official PFGM++/EDM training states, read without running their code.

Uses shared/reference/edm (skipped when absent): a tiny NCSN++ `training-state-*.pkl` and a tiny DDPM++
`training-state-*.pt`, whose `ema` equals <name>_state_dict.pth bit for bit, and whose `net` (the .pkl
only) is the EMA weights plus 0.01 * randn (README "Snapshots"). EDM's `network-snapshot-*.pkl` layout
and the malicious files are built here.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import json
import os
import pickle
import re
import subprocess
import sys
import types
import warnings
import zipfile
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pfgm.networks.edm import EDMPrecond, from_official_snapshot
from pfgm.networks.official_snapshot import (
    ModuleDictRecord,
    PersistentRecord,
    UnsafeSnapshotError,
    is_pfgmpp_snapshot,
    load_official_pickle,
    read_official_snapshot,
)

SNAPSHOTS = {"ncsnpp": "ncsnpp_snapshot.pkl", "ddpmpp": "ddpmpp_snapshot.pt"}
OFFICIAL_PACKAGES = ("torch_utils", "dnnlib", "training")  # what the official unpickling needs


class _ImportTrap(importlib.abc.MetaPathFinder):
    """Fails any import of the official packages (and remembers it, should the error be swallowed)."""

    def __init__(self) -> None:
        self.attempts: list[str] = []

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in OFFICIAL_PACKAGES:
            self.attempts.append(fullname)
            raise AssertionError(f"the snapshot reader tried to import {fullname}")
        return None


@contextmanager
def official_code_blocked():
    """Asserts the official code is absent, and that nothing tries to import it or exec its source."""
    for name in OFFICIAL_PACKAGES:
        assert name not in sys.modules and importlib.util.find_spec(name) is None, f"{name} is importable"
    modules_before = set(sys.modules)
    trap = _ImportTrap()
    sys.meta_path.insert(0, trap)
    try:
        yield
    finally:
        sys.meta_path.remove(trap)
    assert trap.attempts == []
    # The official loader execs module_src into a fresh module named _imported_module_<uuid>.
    assert not [m for m in set(sys.modules) - modules_before if m.startswith("_imported_module_")]


def test_the_import_trap_catches_an_import_of_the_official_code() -> None:
    with pytest.raises(AssertionError, match="tried to import dnnlib"), official_code_blocked():
        importlib.import_module("dnnlib")


def assert_bitwise_equal(got: OrderedDict, want: dict) -> None:
    """Same keys in the same order, and tensors with the same dtype, shape and bytes."""
    assert list(got) == list(want)
    for key, tensor in want.items():
        assert got[key].dtype == tensor.dtype and got[key].shape == tensor.shape, key
        assert got[key].device.type == "cpu", key
        as_bytes = [t.reshape(-1).contiguous().view(torch.uint8) for t in (got[key], tensor)]
        assert torch.equal(*as_bytes), key


def json_types_only(value: Any) -> bool:
    """Whether `value` is made of exact JSON types (numpy.float64 subclasses float, so check the type)."""
    if type(value) is dict:
        return all(type(k) is str and json_types_only(v) for k, v in value.items())
    if type(value) is list:
        return all(json_types_only(v) for v in value)
    return type(value) in (str, int, float, bool, type(None))


def reference_state_dict(edm_ref: Path, name: str) -> dict:
    return torch.load(edm_ref / f"{name}_state_dict.pth", weights_only=True)


@pytest.fixture(scope="module")
def configs(edm_ref: Path) -> dict[str, dict]:
    return {name: json.loads((edm_ref / f"{name}_config.json").read_text()) for name in SNAPSHOTS}


@pytest.mark.parametrize("name", SNAPSHOTS)
def test_fixture_snapshot_ema_is_the_reference_state_dict(edm_ref: Path, configs, name: str) -> None:
    with official_code_blocked():
        snapshot = read_official_snapshot(edm_ref / SNAPSHOTS[name])
    assert_bitwise_equal(snapshot.state_dict, reference_state_dict(edm_ref, name))
    assert len(snapshot.state_dict) == configs[name]["n_state_dict_entries"]
    assert snapshot.class_name == "EDMPrecond" and snapshot.key == "ema"
    assert snapshot.keys == tuple(configs[name]["snapshot"]["keys"]) and snapshot.step == 0


@pytest.mark.parametrize("name", SNAPSHOTS)
def test_init_kwargs_are_the_official_constructor_kwargs(edm_ref: Path, configs, name: str) -> None:
    init_kwargs = read_official_snapshot(edm_ref / SNAPSHOTS[name]).init_kwargs
    assert init_kwargs == configs[name]["edmprecond_kwargs"]
    assert json_types_only(init_kwargs)  # numpy scalars and tuples in the pickle are normalised


def test_net_key_gives_the_perturbed_training_weights(edm_ref: Path, configs) -> None:
    ema = read_official_snapshot(edm_ref / "ncsnpp_snapshot.pkl", key="ema").state_dict
    net = read_official_snapshot(edm_ref / "ncsnpp_snapshot.pkl", key="net").state_dict
    assert list(net) == list(ema)
    differences = torch.cat([(net[k] - ema[k]).flatten() for k in ema if not torch.equal(net[k], ema[k])])
    # Every parameter element moved (buffers are constructor constants), by 0.01 * randn.
    assert differences.numel() == configs["ncsnpp"]["n_params"]
    assert 0.0095 < float(differences.std()) < 0.0105


@pytest.mark.parametrize(("file", "key", "networks"), [
    ("ncsnpp_snapshot.pkl", "optimizer_state", "['ema', 'net']"),
    ("ncsnpp_snapshot.pkl", "model", "['ema', 'net']"),
    ("ddpmpp_snapshot.pt", "net", "['ema']"),  # the older .pt layout stores ema only
])  # fmt: skip
def test_a_key_that_is_not_a_network_is_refused_listing_those_present(edm_ref: Path, file, key, networks):
    with pytest.raises(ValueError, match=rf"key='{key}' is not a network .* one of {re.escape(networks)}"):
        read_official_snapshot(edm_ref / file, key=key)


def test_cuda_storage_locations_are_read_onto_the_cpu(edm_ref: Path, tmp_path: Path) -> None:
    """Real `.pt` training states were saved from the GPU: their persistent ids say cuda:0."""
    source, target = edm_ref / "ddpmpp_snapshot.pt", tmp_path / "training-state-cuda.pt"
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w") as copy:
        for entry in archive.namelist():
            data = archive.read(entry)
            if entry.endswith("/data.pkl"):  # protocol 2: each string is 'X', its length, its bytes
                assert data.count(b"X\x03\x00\x00\x00cpu") >= 1
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            copy.writestr(entry, data)
    snapshot = read_official_snapshot(target)
    assert_bitwise_equal(snapshot.state_dict, reference_state_dict(edm_ref, "ddpmpp"))


# --- EDM's network-snapshot-*.pkl, built here the way EDM's persistence pickles --------------------------


@contextmanager
def fake_persistence():
    """A stand-in `torch_utils.persistence` in sys.modules while pickling, so pickle can name the call."""

    def reconstruct(meta):
        raise AssertionError("the stand-in is only ever pickled, never called")

    reconstruct.__module__ = "torch_utils.persistence"
    reconstruct.__qualname__ = "_reconstruct_persistent_obj"
    package, module = types.ModuleType("torch_utils"), types.ModuleType("torch_utils.persistence")
    module._reconstruct_persistent_obj, package.persistence = reconstruct, module
    sys.modules.update({"torch_utils": package, "torch_utils.persistence": module})
    try:
        yield reconstruct
    finally:
        del sys.modules["torch_utils"], sys.modules["torch_utils.persistence"]


class _Persistent:
    """Pickles as `_reconstruct_persistent_obj(meta)`, as EDM's `@persistent_class` objects do."""

    def __init__(self, meta: dict, reconstruct) -> None:
        self.meta, self.reconstruct = meta, reconstruct

    def __reduce__(self):
        return self.reconstruct, (self.meta,)


def as_official(obj: Any, reconstruct) -> Any:
    """Our records turned back into what EDM pickles: persistent calls, bare ModuleDicts, Parameters."""
    if isinstance(obj, PersistentRecord):
        return _Persistent({**obj.meta, "state": as_official(obj.state, reconstruct)}, reconstruct)
    if isinstance(obj, ModuleDictRecord):
        module_dict = torch.nn.ModuleDict.__new__(torch.nn.ModuleDict)
        module_dict.__dict__.update(as_official(obj.state, reconstruct))
        return module_dict
    if isinstance(obj, dict):
        converted = type(obj)((k, as_official(v, reconstruct)) for k, v in obj.items())
        if "_parameters" in converted:
            converted["_parameters"] = OrderedDict(
                (k, None if t is None else torch.nn.Parameter(t, requires_grad=False))
                for k, t in converted["_parameters"].items()
            )
        return converted
    if isinstance(obj, (list, tuple)):
        return type(obj)(as_official(v, reconstruct) for v in obj)
    return obj


def persistent_meta(class_name: str, module_src: str, state: dict) -> dict:
    return dict(type="class", version=6, module_src=module_src, class_name=class_name, state=state)


EDM_LOSS_STATE = {"P_mean": -1.2, "P_std": 1.2, "sigma_data": 0.5}
AUGMENT_STATE = {"p": 0.12, "xflip": 1e8, "yflip": 1, "scale": 1, "rotate_frac": 1, "aniso": 1}
DATASET_KWARGS = {"class_name": "training.dataset.ImageFolderDataset", "path": "datasets/cifar10-32x32.zip",
                  "use_labels": False, "xflip": False, "cache": True, "resolution": 32, "max_size": 50000}


def write_network_snapshot(path: Path, ema: PersistentRecord, protocol: int) -> None:
    """EDM's `pickle.dump(dict(ema, loss_fn, augment_pipe, dataset_kwargs))`, without EDM's code."""
    with fake_persistence() as reconstruct:
        loss_fn = persistent_meta("EDMLoss", "# training/loss.py\n", dict(EDM_LOSS_STATE))
        augment_pipe = persistent_meta("AugmentPipe", "# training/augment.py\n", dict(AUGMENT_STATE))
        data = dict(
            ema=as_official(ema, reconstruct),
            loss_fn=_Persistent(loss_fn, reconstruct),
            augment_pipe=_Persistent(augment_pipe, reconstruct),
            dataset_kwargs=dict(DATASET_KWARGS),
        )
        payload = pickle.dumps(data, protocol=protocol)
    if protocol == 2:  # as numpy < 2 (the 2023 checkpoints) names it; GLOBAL lines carry no length
        assert b"cnumpy._core.multiarray\nscalar\n" in payload
        payload = payload.replace(b"cnumpy._core.multiarray\nscalar\n", b"cnumpy.core.multiarray\nscalar\n")
    path.write_bytes(payload)


@pytest.mark.parametrize("protocol", [2, 4])
def test_edm_network_snapshot_layout(edm_ref: Path, configs, tmp_path: Path, protocol: int) -> None:
    ema = load_official_pickle(edm_ref / "ncsnpp_snapshot.pkl")["ema"]
    path = tmp_path / "network-snapshot-000000.pkl"
    write_network_snapshot(path, ema, protocol)
    assert "torch_utils" not in sys.modules
    with official_code_blocked():
        snapshot = read_official_snapshot(path)
        records = load_official_pickle(path)
    assert_bitwise_equal(snapshot.state_dict, reference_state_dict(edm_ref, "ncsnpp"))
    assert snapshot.init_kwargs == configs["ncsnpp"]["edmprecond_kwargs"]
    assert json_types_only(snapshot.init_kwargs)
    assert snapshot.keys == ("ema", "loss_fn", "augment_pipe", "dataset_kwargs") and snapshot.step is None
    assert (records["loss_fn"].class_name, records["loss_fn"].state) == ("EDMLoss", EDM_LOSS_STATE)
    augment_pipe = records["augment_pipe"]
    assert (augment_pipe.class_name, augment_pipe.state) == ("AugmentPipe", AUGMENT_STATE)
    assert records["dataset_kwargs"] == DATASET_KWARGS
    with pytest.raises(ValueError, match=r"key='loss_fn' is not a network .* use one of \['ema'\]"):
        read_official_snapshot(path, key="loss_fn")


# --- files that ask for more than a snapshot needs ------------------------------------------------------


def os_system_pickle(marker: Path) -> bytes:
    """Protocol 0 by hand: {'ema': os.system('touch <marker>')}, the global spelled as an attacker would."""
    return b"(dp0\nVema\np1\ncos\nsystem\n(V" + f"touch {marker}".encode() + b"\ntRs."


def test_os_system_is_refused_before_it_runs(tmp_path: Path) -> None:
    control = tmp_path / "control"
    assert pickle.loads(os_system_pickle(control)) == {"ema": 0} and control.exists()  # the payload is live
    marker, path = tmp_path / "marker", tmp_path / "training-state-000000.pkl"
    path.write_bytes(os_system_pickle(marker))
    with pytest.raises(UnsafeSnapshotError, match=rf"refusing global os\.system in {re.escape(str(path))}: "):
        read_official_snapshot(path)
    assert not marker.exists()


class _Call:
    """Pickles as the call fn(*args), as a malicious file would."""

    def __init__(self, fn, *args) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("container", ["pkl", "pt"])
@pytest.mark.parametrize(("payload", "name"), [
    (lambda marker: _Call(eval, f"open({str(marker)!r}, 'w')"), "builtins.eval"),
    (lambda marker: _Call(subprocess.Popen, ["touch", str(marker)]), "subprocess.Popen"),
    (lambda marker: _Call(os.system, f"touch {marker}"), f"{os.system.__module__}.system"),
    (lambda marker: _Call(exec, f"open({str(marker)!r}, 'w')"), "builtins.exec"),
])  # fmt: skip
def test_any_other_global_is_refused_naming_it(tmp_path: Path, payload, name: str, container: str) -> None:
    marker, path = tmp_path / "marker", tmp_path / f"training-state-000000.{container}"
    data = {"step": 0, "ema": payload(marker)}
    if container == "pt":
        torch.save(data, path)
    else:
        path.write_bytes(pickle.dumps(data))
    with pytest.raises(UnsafeSnapshotError, match=rf"refusing global {re.escape(name)} in .*nothing in it"):
        read_official_snapshot(path)
    assert not marker.exists()


def test_codecs_encode_is_allowed_only_for_latin1_bytes(tmp_path: Path) -> None:
    path = tmp_path / "training-state-000000.pkl"
    path.write_bytes(b"c_codecs\nencode\n(Vabc\nVrot13\ntR.")
    with pytest.raises(UnsafeSnapshotError, match="latin1"):
        load_official_pickle(path)


def test_a_tensor_reaching_past_its_storage_is_refused(tmp_path: Path) -> None:
    """A crafted size must not read memory beyond the stored bytes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # .storage(): TypedStorage is deprecated, yet it is what files hold
        storage = torch.zeros(4).storage()
    path = tmp_path / "training-state-000000.pkl"
    tensor = _Call(torch._utils._rebuild_tensor_v2, storage, 0, (1000,), (1,), False, OrderedDict())
    path.write_bytes(pickle.dumps({"ema": tensor}))
    with pytest.raises(pickle.UnpicklingError, match="does not fit its storage.*out of bounds"):
        load_official_pickle(path)


def test_module_src_is_kept_as_text_and_never_executed(tmp_path: Path) -> None:
    marker, path = tmp_path / "marker", tmp_path / "training-state-000000.pkl"
    source = f"open({str(marker)!r}, 'w').write('module_src ran')\n"
    weight = torch.arange(6.0).reshape(2, 3)
    state = {
        "training": False, "_parameters": OrderedDict(weight=weight), "_buffers": OrderedDict(),
        "_non_persistent_buffers_set": set(), "_modules": OrderedDict(), "_init_args": (),
        "_init_kwargs": {"img_resolution": 8, "img_channels": 3, "channel_mult": (1, np.int64(2))},
    }  # fmt: skip
    with fake_persistence() as reconstruct:
        ema = as_official(PersistentRecord(persistent_meta("EDMPrecond", source, state)), reconstruct)
        path.write_bytes(pickle.dumps({"ema": ema, "step": np.int64(5)}))
    with official_code_blocked():
        snapshot = read_official_snapshot(path)
        record = load_official_pickle(path)["ema"]
    assert not marker.exists()
    assert record.meta["module_src"] == source  # kept, as data
    assert list(snapshot.state_dict) == ["weight"] and torch.equal(snapshot.state_dict["weight"], weight)
    assert snapshot.init_kwargs == {"img_resolution": 8, "img_channels": 3, "channel_mult": [1, 2]}
    assert snapshot.step == 5 and type(snapshot.step) is int


# --- telling a snapshot from a PFGM checkpoint by content ------------------------------------------------


def test_snapshot_detection_reads_the_content_not_the_name(edm_ref: Path, ref: Path, tmp_path: Path) -> None:
    renamed = tmp_path / "checkpoint_8.pth"  # a PFGM-like name does not make it a PFGM checkpoint
    renamed.write_bytes((edm_ref / "ncsnpp_snapshot.pkl").read_bytes())
    assert is_pfgmpp_snapshot(renamed) and is_pfgmpp_snapshot(edm_ref / "ddpmpp_snapshot.pt")
    assert not is_pfgmpp_snapshot(ref / "tiny_ddpmpp_checkpoint.pth")


def test_torch_save_files_of_plain_tensors_are_no_snapshots(tmp_path: Path) -> None:
    state = dict(model=dict(w=torch.ones(2)), step=3)
    torch.save(state, tmp_path / "zip.pth")
    torch.save(state, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)  # an old PFGM checkpoint
    assert not is_pfgmpp_snapshot(tmp_path / "zip.pth") and not is_pfgmpp_snapshot(tmp_path / "legacy.pth")
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps(state, protocol=2))  # a .pkl is read as a snapshot
    assert is_pfgmpp_snapshot(tmp_path / "plain.pkl")


# --- the snapshot as our EDMPrecond ---------------------------------------------------------------------


@pytest.mark.parametrize(("name", "key", "output"), [
    ("ncsnpp", "ema", "D_x"),
    ("ncsnpp", "net", "D_x_net"),  # the training weights: up to 0.25 away from D_x (README)
    ("ddpmpp", "ema", "D_x"),
])  # fmt: skip
def test_from_official_snapshot_reproduces_the_official_denoiser(edm_ref: Path, name, key, output) -> None:
    with official_code_blocked():
        net = from_official_snapshot(edm_ref / SNAPSHOTS[name], key=key)
    io = torch.load(edm_ref / f"{name}_io.pt", weights_only=True)
    assert isinstance(net, EDMPrecond) and not net.training
    assert not any(p.requires_grad for p in net.parameters())
    with torch.no_grad():
        D_x = net(io["x"], io["sigma"], augment_labels=io["augment_labels"])
    torch.testing.assert_close(D_x, io[output], atol=1e-5, rtol=1e-5)


def test_from_official_snapshot_refuses_a_network_of_another_class(tmp_path: Path) -> None:
    path = tmp_path / "training-state-000000.pkl"
    state = dict(_parameters=OrderedDict(), _buffers=OrderedDict(), _modules=OrderedDict(), _init_kwargs={})
    with fake_persistence() as reconstruct:
        record = PersistentRecord(persistent_meta("VPPrecond", "", state))
        path.write_bytes(pickle.dumps({"ema": as_official(record, reconstruct)}))
    with pytest.raises(ValueError, match="'ema' holds a VPPrecond, not an EDMPrecond"):
        from_official_snapshot(path)
