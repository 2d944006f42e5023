"""Official PFGM++ / EDM training states, read without executing the code they carry.

Newbeeer/pfgmpp (a fork of NVlabs/edm) pickles each network class through `torch_utils.persistence`:
an object becomes the call `_reconstruct_persistent_obj(meta)`, with meta = {type, version, module_src,
class_name, state}, where `module_src` is the full source of `training/networks.py` and `state` the
object's `__dict__`. The official loader `exec`s `module_src`, so opening such a file with it runs code
from the file. Here a restricted unpickler allows only the globals these files need (`_ALLOWED`): the
persistence call becomes a `PersistentRecord` that keeps `meta` as plain data (its source stays a string,
never imported or executed), tensors are rebuilt by our own functions, and any other global is refused
when the unpickler meets it, before anything is called.

Layouts read (shared/reference/edm/README.md, "Snapshots"):
    training-state-*.pkl    pickle.dump(dict(optimizer_state, step, ema, net)); each storage inline as
                            torch.storage._load_from_bytes(<legacy torch.save bytes of one storage>)
    training-state-*.pt     torch.save zip: <archive>/data.pkl, whose persistent ids
                            ('storage', torch.<T>Storage, key, location, numel) name <archive>/data/<key>
    network-snapshot-*.pkl  EDM's pickle.dump(dict(ema, loss_fn, augment_pipe, dataset_kwargs))
Every storage is loaded on the CPU whatever its recorded location (real `.pt` files say `cuda:0`).
`is_pfgmpp_snapshot` tells such a file from a PFGM (score_sde) checkpoint by its content, not its name.

The state dict is rebuilt by walking a module's `_parameters`, its persistent `_buffers`, then its
`_modules`, which is the order of `nn.Module.state_dict()`.
"""
from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "NETWORK_KEYS",
    "ModuleDictRecord",
    "OfficialSnapshot",
    "PersistentRecord",
    "UnsafeSnapshotError",
    "is_pfgmpp_snapshot",
    "load_official_pickle",
    "read_official_snapshot",
]

NETWORK_KEYS = ("ema", "net")  # the entries of the official layouts that hold an EDMPrecond
_META_KEYS = {"type", "version", "module_src", "class_name", "state"}
_MODULE_DICTS = ("_parameters", "_buffers", "_modules")  # what makes a pickled __dict__ a module's
_LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # first object of a pre-zip torch.save stream
#: How a pre-zip torch.save stream starts: protocol 2, then the magic number as a 10-byte LONG1.
_LEGACY_TORCH_HEAD = b"\x80\x02\x8a\x0a" + _LEGACY_TORCH_MAGIC.to_bytes(10, "little")


class UnsafeSnapshotError(pickle.UnpicklingError):
    """A snapshot asked for something outside the allow-list; nothing of it was run."""


@dataclass(frozen=True, eq=False)
class PersistentRecord:
    """What `torch_utils.persistence._reconstruct_persistent_obj(meta)` stood for, kept as data."""

    meta: dict[str, Any]

    @property
    def class_name(self) -> str:
        return self.meta["class_name"]

    @property
    def state(self) -> dict[str, Any]:
        return self.meta["state"]


class ModuleDictRecord:
    """A pickled `torch.nn.ModuleDict` (NEWOBJ then BUILD): only its `__dict__` is kept, as `state`."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"ModuleDict state must be a dict, got {type(state).__name__}")
        self.state = state


@dataclass(frozen=True, eq=False)
class OfficialSnapshot:
    """One network of an official snapshot, as data.

    class_name: the recorded class (`EDMPrecond`); init_kwargs: its recorded constructor kwargs, made of
    JSON types only; state_dict: key -> CPU tensor, keys and order as the module's `state_dict()`;
    step: the recorded `step` (images seen) or None; keys: the file's top-level keys; key: the one read.
    """

    class_name: str
    init_kwargs: dict[str, Any]
    state_dict: OrderedDict[str, Tensor]
    step: int | None
    keys: tuple[str, ...]
    key: str


# --- the allowed globals: each one our own small function or a harmless builtin ----------------------


def _persistent_record(meta: Any) -> PersistentRecord:
    """Stands in for `_reconstruct_persistent_obj`: keeps `meta`, never looks at `module_src`."""
    if not isinstance(meta, dict) or not _META_KEYS <= meta.keys():
        raise pickle.UnpicklingError(f"a persistent object's meta must be a dict with {sorted(_META_KEYS)}")
    if meta["type"] != "class" or not isinstance(meta["class_name"], str):
        raise pickle.UnpicklingError(f"unexpected persistent object meta (type {meta['type']!r})")
    if not isinstance(meta["state"], dict):
        raise pickle.UnpicklingError(f"the state of persistent {meta['class_name']} is not a dict")
    return PersistentRecord(meta)


def _latin1_bytes(text: Any, encoding: Any = "latin1") -> bytes:
    """`_codecs.encode` as protocol 2 uses it for bytes: only str -> latin1."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafeSnapshotError(f"_codecs.encode is allowed for latin1 bytes only, not {encoding!r}")
    return text.encode("latin1")


def _numpy_dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    """`numpy.dtype` as numpy pickles it: `dtype(str, align, copy)`, numbers only are used afterwards."""
    if not isinstance(spec, str):
        raise UnsafeSnapshotError(f"numpy.dtype is allowed for type strings only, not {type(spec).__name__}")
    return np.dtype(spec, align=bool(align), copy=bool(copy))


def _numpy_scalar(dtype: Any, data: Any) -> np.generic:
    """`numpy(._)core.multiarray.scalar`: a number decoded from its bytes (object scalars are refused)."""
    if not isinstance(dtype, np.dtype) or not isinstance(data, bytes):
        raise UnsafeSnapshotError("numpy scalar must be (dtype, bytes)")
    # Rebuilt from its type string, so a dtype altered by a crafted BUILD cannot smuggle objects in.
    canonical = np.dtype(dtype.str)
    if canonical.kind not in "biufc" or canonical.itemsize != len(data):
        raise UnsafeSnapshotError(f"a numpy scalar of dtype {dtype.str!r}, {len(data)} bytes, is no number")
    return np.frombuffer(data, dtype=canonical, count=1)[0]


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                    backward_hooks: Any = None, metadata: Any = None) -> Tensor:
    """`torch._utils._rebuild_tensor_v2` on our flat storages: a strided view (torch checks its bounds)."""
    if not isinstance(storage, Tensor) or storage.dim() != 1:
        raise pickle.UnpicklingError("a tensor must be rebuilt from a storage")
    if backward_hooks or metadata:
        raise UnsafeSnapshotError("tensors with backward hooks or extra metadata are not part of a snapshot")
    try:
        return storage.as_strided(tuple(size), tuple(stride), int(offset))
    except RuntimeError as error:  # e.g. a crafted size reaching past the stored bytes
        raise pickle.UnpicklingError(f"a tensor does not fit its storage: {error}") from None


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any) -> Tensor:
    """`torch._utils._rebuild_parameter`: the data alone (a state dict holds plain tensors)."""
    if not isinstance(data, Tensor) or backward_hooks:
        raise UnsafeSnapshotError("a parameter must wrap a tensor and carry no backward hooks")
    return data


def _storage_from_bytes(data: Any) -> Tensor:
    """`torch.storage._load_from_bytes`: a legacy torch.save of one storage, read by torch's safe loader."""
    if not isinstance(data, bytes):
        raise pickle.UnpicklingError("a storage must be stored as bytes")
    storage = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    if not isinstance(storage, torch.TypedStorage):
        raise pickle.UnpicklingError(f"a storage's bytes hold a {type(storage).__name__}")
    # set_ accepts the TypedStorage as it is; its .untyped() would warn that TypedStorage is deprecated.
    return torch.empty(0, dtype=storage.dtype).set_(storage)


@dataclass(frozen=True)
class _StorageKind:
    """`torch.<T>Storage` inside a `.pt` persistent id: only its dtype is used (it cannot be called)."""

    dtype: torch.dtype


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}  # fmt: skip

_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_record,
    ("torch.nn.modules.container", "ModuleDict"): ModuleDictRecord,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,  # protocol 2 writes __builtin__.set: see _python3_name
    ("_codecs", "encode"): _latin1_bytes,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,  # numpy < 2, i.e. the 2023 checkpoints
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    **{("torch", name): _StorageKind(dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


_NEEDED = ", ".join(sorted({f"{m}.{n}" for m, n in _ALLOWED if m != "torch"} | {"torch.<T>Storage"}))


def _python3_name(module: str, name: str) -> tuple[str, str]:
    """Protocols 0-2 write Python 2 names (`__builtin__.set`, `commands.Popen`); map them as pickle does."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[module, name]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only `_ALLOWED` globals; storages come from `storages` (a `.pt` archive) or inline bytes."""

    def __init__(self, file: Any, *, source: str, storages: Callable[[Any], Tensor] | None = None):
        super().__init__(file)
        self._source, self._storages = source, storages

    def find_class(self, module: str, name: str) -> Any:
        module, name = _python3_name(module, name)
        try:
            return _ALLOWED[module, name]
        except KeyError:
            raise UnsafeSnapshotError(
                f"refusing global {module}.{name} in {self._source}: official snapshots only need {_NEEDED}; "
                "this file is not an official PFGM++/EDM snapshot (or was altered), and nothing in it was run"
            ) from None

    def persistent_load(self, pid: Any) -> Tensor:
        if self._storages is None:
            raise pickle.UnpicklingError(f"{self._source}: a plain pickle has no persistent ids, got {pid!r}")
        return self._storages(pid)


# --- the two containers --------------------------------------------------------------------------------


def _archive_storages(archive: zipfile.ZipFile, prefix: str, source: str) -> Callable[[Any], Tensor]:
    """persistent_load for a torch zip: ('storage', kind, key, location, numel) -> flat CPU tensor."""
    loaded: dict[str, Tensor] = {}

    def storage(pid: Any) -> Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"{source}: unexpected persistent id {pid!r}")
        _, kind, key, location, numel = pid
        if not (isinstance(kind, _StorageKind) and isinstance(key, str) and key.isalnum()
                and isinstance(location, str) and isinstance(numel, int)):
            raise pickle.UnpicklingError(f"{source}: malformed storage reference {pid!r}")
        if key not in loaded:  # `location` (cpu, cuda:N) is ignored: everything is read onto the CPU
            raw = bytearray(archive.read(f"{prefix}data/{key}"))
            itemsize = torch.empty(0, dtype=kind.dtype).element_size()
            if len(raw) != numel * itemsize:
                message = f"storage {key} has {len(raw)} bytes, not {numel} x {itemsize}"
                raise pickle.UnpicklingError(f"{source}: {message}")
            loaded[key] = torch.frombuffer(raw, dtype=kind.dtype) if raw else torch.empty(0, dtype=kind.dtype)
        return loaded[key]

    return storage


def _data_pickles(names: list[str]) -> list[str]:
    """The `<archive>/data.pkl` entries of a torch.save zip (one in a well-formed file)."""
    return [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]


def _load_torch_zip(path: Path) -> Any:
    """The object of a torch.save zip archive, its data.pkl read by the restricted unpickler."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = _data_pickles(names)
        if len(pickles) != 1:
            raise ValueError(f"{path}: a torch.save archive has one <archive>/data.pkl, found {pickles}")
        prefix = pickles[0].removesuffix("data.pkl")
        order = archive.read(prefix + "byteorder").decode() if prefix + "byteorder" in names else "little"
        if order != sys.byteorder:  # frombuffer reads in the host's order
            raise ValueError(f"{path}: storages are {order}-endian, this machine is {sys.byteorder}-endian")
        with archive.open(pickles[0]) as file:
            storages = _archive_storages(archive, prefix, str(path))
            return _RestrictedUnpickler(file, source=str(path), storages=storages).load()


def load_official_pickle(path: str | Path) -> Any:
    """The top-level object of an official snapshot (`.pkl` pickle or `.pt` torch zip), code-free.

    Persistent objects come back as `PersistentRecord`, ModuleDicts as `ModuleDictRecord`, tensors as CPU
    tensors. Raises `UnsafeSnapshotError` naming the first global outside the allow-list.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official snapshot {path} not found")
    if zipfile.is_zipfile(path):
        return _load_torch_zip(path)
    with path.open("rb") as file:
        data = _RestrictedUnpickler(file, source=str(path)).load()
    if isinstance(data, int) and data == _LEGACY_TORCH_MAGIC:
        raise ValueError(f"{path}: a pre-1.6 (non-zip) torch.save file; only zip .pt and .pkl are read")
    return data


def is_pfgmpp_snapshot(path: str | Path) -> bool:
    """Whether `path` is to be read as an official PFGM++/EDM snapshot, from its content, not its name.

    A torch.save zip is one when its pickle names `torch_utils.persistence` (the official networks are
    pickled through it; a PFGM checkpoint holds plain tensors). A file that is no zip is one unless it
    starts like a pre-1.6 torch.save stream (an old PFGM checkpoint): `.pkl` snapshots are plain pickles.
    """
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return any(b"torch_utils.persistence" in archive.read(n) for n in _data_pickles(archive.namelist()))
    with Path(path).open("rb") as file:
        return not file.read(len(_LEGACY_TORCH_HEAD)).startswith(_LEGACY_TORCH_HEAD)


# --- from records to a state dict and kwargs ------------------------------------------------------------


def _module_state(obj: Any, where: str) -> dict[str, Any]:
    """The `__dict__` of a pickled module (persistent class or ModuleDict), checked to be one."""
    state = getattr(obj, "state", None) if isinstance(obj, (PersistentRecord, ModuleDictRecord)) else None
    if not isinstance(state, dict) or not all(isinstance(state.get(k), dict) for k in _MODULE_DICTS):
        raise ValueError(f"{where}: expected a torch module, got {type(obj).__name__}")
    return state


def _module_tensors(state: dict[str, Any], prefix: str, where: str) -> Iterator[tuple[str, Tensor]]:
    """(key, tensor) in `nn.Module.state_dict()` order: own parameters, persistent buffers, then children."""
    transient = state.get("_non_persistent_buffers_set") or set()  # absent in modules pickled by old torch
    buffers = [(name, b) for name, b in state["_buffers"].items() if name not in transient]
    for name, tensor in [*state["_parameters"].items(), *buffers]:
        if tensor is None:
            continue
        if not isinstance(tensor, Tensor):
            raise ValueError(f"{where}.{name}: expected a tensor, got {type(tensor).__name__}")
        yield prefix + name, tensor
    for name, child in state["_modules"].items():
        if child is not None:
            child_where = f"{where}.{name}"
            yield from _module_tensors(_module_state(child, child_where), f"{prefix}{name}.", child_where)


def _plain(value: Any, where: str) -> Any:
    """`value` in JSON types: numpy scalars to Python numbers, tuples to lists, dicts kept (str keys)."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _plain(v, f"{where}.{k}") for k, v in value.items()}
    raise ValueError(f"{where}: a {type(value).__name__} is not a plain constructor argument")


def _init_kwargs(record: PersistentRecord, where: str) -> dict[str, Any]:
    """The constructor kwargs the persistence decorator recorded (`_init_args` must be empty)."""
    args, kwargs = record.state.get("_init_args", ()), record.state.get("_init_kwargs")
    if args or not isinstance(kwargs, dict):
        raise ValueError(f"{where}: expected constructor kwargs only (_init_kwargs), got args {args!r}")
    return _plain(kwargs, f"{where}._init_kwargs")


def _step(value: Any, where: str) -> int | None:
    value = _plain(value, where)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{where}: expected an image count, got {value!r}")
    return value


def _is_module(record: PersistentRecord) -> bool:
    return all(isinstance(record.state.get(k), dict) for k in _MODULE_DICTS)


def read_official_snapshot(path: str | Path, *, key: str = "ema") -> OfficialSnapshot:
    """Read network `key` ("ema" or "net") of an official PFGM++/EDM snapshot without running its code.

    Accepts `training-state-*.pkl`, `training-state-*.pt` and EDM's `network-snapshot-*.pkl`. Raises
    `UnsafeSnapshotError` for a file that asks for any other global, and ValueError when `key` is not a
    network of this file (the message lists those present).
    """
    data = load_official_pickle(path)
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise ValueError(f"{path}: expected a dict of named entries (ema, ...), got {type(data).__name__}")
    networks = [k for k in NETWORK_KEYS if isinstance(data.get(k), PersistentRecord) and _is_module(data[k])]
    if key not in networks:
        raise ValueError(f"{path}: key={key!r} is not a network of this snapshot; use one of {networks} "
                         f"(entries present: {list(data)})")
    record = data[key]
    return OfficialSnapshot(
        class_name=record.class_name,
        init_kwargs=_init_kwargs(record, key),
        state_dict=OrderedDict(_module_tensors(record.state, "", key)),
        step=_step(data.get("step"), "step"),
        keys=tuple(data),
        key=key,
    )
