"""Model files, without torch: PyTorch `.pt` checkpoints read and written in numpy, and diffmem's saved model
directory (`model.json` + `params.msgpack`) that sampling and pruning load with `load_model`.

The DiT of the paper's image experiments (arXiv 2511.03202, Section 6.2) is facebookresearch/DiT's; with this module
diffmem.torch_dit.import_dit / export_dit bring a pretrained one (an official DiT-XL/2 checkpoint, or a model trained
with that code) in and a pruned one back out.

The `.pt` format (torch.save since torch 1.6): a zip of STORED records under one folder `<archive>/`: `data.pkl`
(a protocol-2 pickle), `data/<key>` (the raw little-endian bytes of each storage), `byteorder`, `version`,
`.format_version`, `.storage_alignment`, `.data/serialization_id`; every record's data starts at a multiple of 64
bytes. In the pickle a tensor is `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad,
hooks)` with the storage a persistent id `('storage', torch.<Type>Storage, key, device, numel)`.

`read_pt` unpickles with an allowlist (the tensor rebuilders, OrderedDict, argparse.Namespace - DiT's train.py
stores its args - torch.Size / device, numpy scalars): tensors become numpy arrays (C-contiguous copies of their
views), anything else (a pickled nn.Module, optimizer classes, custom objects) is refused with the name of the
global; nothing in the file is ever executed. `write_pt` writes the same format by hand (no torch), using only
globals on torch.load's `weights_only=True` allowlist, so `torch.load(path)` (weights_only by default since torch
2.6) reads it.
"""
from __future__ import annotations

import collections
import io as _io
import json
import pickle
import struct
import zipfile
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffmem import io
from diffmem.models import dit as dit_lib

PT_ALIGN = 64
_STORAGES = {"FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
             "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16",
             "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool", "UntypedStorage": "uint8"}
_TORCH_DTYPES = {"float32": "float32", "float": "float32", "float64": "float64", "double": "float64",
                 "float16": "float16", "half": "float16", "bfloat16": "bfloat16", "int64": "int64", "long": "int64",
                 "int32": "int32", "int": "int32", "int16": "int16", "int8": "int8", "uint8": "uint8", "bool": "bool"}


def _np_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes  # a jax dependency
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


class _StorageType:
    """A torch.<Type>Storage class or torch dtype, as the numpy dtype it stands for."""

    def __init__(self, dtype: str):
        self.dtype = _np_dtype(dtype)


class Namespace(dict):
    """argparse.Namespace as read from a checkpoint (DiT's train.py saves its args): a dict of its attributes."""

    def __setstate__(self, state):
        self.update(state)


def _view(storage: np.ndarray, offset, size, stride) -> np.ndarray:
    """The C-contiguous copy of the strided view (size, stride in elements) at `offset` of a 1-D storage."""
    size, stride, offset = tuple(int(s) for s in size), tuple(int(s) for s in stride), int(offset)
    if len(size) != len(stride) or min(stride, default=0) < 0 or min(size, default=0) < 0:
        raise ValueError(f"bad tensor view: size {size}, stride {stride}")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if offset < 0 or last >= storage.size:
        raise ValueError(f"tensor view (offset {offset}, size {size}, stride {stride}) runs past its storage of "
                         f"{storage.size} elements: a corrupt file")
    item = storage.dtype.itemsize
    return np.array(np.lib.stride_tricks.as_strided(storage[offset:], size, tuple(s * item for s in stride),
                                                    writeable=False), order="C")


def _rebuild_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    return _view(storage, offset, size, stride)


def _rebuild_v3(storage, offset, size, stride, requires_grad, hooks, dtype, metadata=None):
    return _view(storage.view(dtype.dtype), offset, size, stride)          # storage: raw bytes (UntypedStorage)


_ALLOWED = {("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_v2,
            ("torch._utils", "_rebuild_tensor_v3"): _rebuild_v3,
            ("torch._utils", "_rebuild_tensor"): lambda storage, offset, size, stride: _view(storage, offset, size,
                                                                                           stride),
            ("torch._utils", "_rebuild_parameter"): lambda data, requires_grad=False, hooks=None: data,
            ("argparse", "Namespace"): Namespace,
            ("torch", "Size"): tuple, ("torch", "device"): str,
            ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
            ("numpy", "dtype"): np.dtype}
_NUMPY_SCALAR = {("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, zf: zipfile.ZipFile, prefix: str, byteorder: str):
        super().__init__(_io.BytesIO(data))
        self.zf, self.prefix, self.byteorder, self.cache = zf, prefix, byteorder, {}

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGES:
            return _StorageType(_STORAGES[name])
        if module == "torch" and name in _TORCH_DTYPES:
            return _StorageType(_TORCH_DTYPES[name])
        if (module, name) in _NUMPY_SCALAR:          # numpy's own scalar reconstructor
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"the checkpoint holds a {module}.{name} object, which diffmem's torch-free "
                                     f"reader does not rebuild (it reads tensors, dicts, lists, numbers, strings "
                                     f"and argparse.Namespace); save the state dict alone with torch: "
                                     f"torch.save(model.state_dict(), path)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r} (not a torch storage)")
        _, kind, key, _, numel = pid
        dtype = kind.dtype.newbyteorder(">") if self.byteorder == "big" and kind.dtype.itemsize > 1 else kind.dtype
        if (key, dtype) not in self.cache:
            raw = self.zf.read(f"{self.prefix}data/{key}")
            if len(raw) != int(numel) * dtype.itemsize:
                raise pickle.UnpicklingError(f"storage {key}: {len(raw)} bytes for {numel} x {dtype}")
            self.cache[(key, dtype)] = np.frombuffer(raw, dtype).astype(dtype.newbyteorder("="))
        return self.cache[(key, dtype)]


def read_pt(path) -> Any:
    """The object torch.save wrote to `path` (zip format), with every tensor as a numpy array; see the module doc.
    Raises ValueError for another format (a legacy pre-1.6 file, TorchScript) or a disallowed object."""
    with io.path(path).open("rb") as f:
        head = f.read(4)
        f.seek(0)
        if head != b"PK\x03\x04":
            legacy = head[:2] == b"\x80\x02"
            raise ValueError(f"{path}: not a zip-format PyTorch checkpoint"
                             f"{' (a legacy torch < 1.6 file)' if legacy else ''}; re-save it with a current "
                             f"torch: torch.save(torch.load(p, map_location='cpu'), p2)")
        with zipfile.ZipFile(f) as zf:
            names = zf.namelist()
            pkl = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
            if any(n.endswith("constants.pkl") for n in names) or len(pkl) != 1:
                raise ValueError(f"{path}: not a torch.save checkpoint (a TorchScript archive or another zip); "
                                 f"records: {names[:5]}")
            prefix = pkl[0][:-len("data.pkl")]
            byteorder = zf.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in names else "little"
            try:
                return _Unpickler(zf.read(pkl[0]), zf, prefix, byteorder).load()
            except pickle.UnpicklingError as e:
                raise ValueError(f"{path}: {e}") from None


def state_dict_of(obj: Any, key: str = "auto") -> tuple[dict[str, np.ndarray], str]:
    """The model state dict inside a loaded checkpoint -> ({name: array}, the key it was under ('' = top level)).

    key 'auto' follows DiT's `find_model`: 'ema' if present, else 'model', else 'state_dict', else the object itself;
    'ema' / 'model' / 'state_dict' pick that entry; '' the top level. A common 'module.' (DistributedDataParallel)
    or '_orig_mod.' (torch.compile) prefix of every name is removed."""
    if key == "auto":
        key = next((k for k in ("ema", "model", "state_dict") if isinstance(obj, Mapping) and k in obj), "")
    if key:
        if not isinstance(obj, Mapping) or key not in obj:
            keys = sorted(obj) if isinstance(obj, Mapping) else type(obj).__name__
            raise ValueError(f"key={key!r}: the checkpoint has no such entry (top level: {keys})")
        obj = obj[key]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise ValueError(f"the checkpoint{f' entry {key!r}' if key else ''} is not a state dict (a mapping of "
                         f"names to tensors); pick the entry holding one with key=...")
    sd = {str(k): v for k, v in obj.items()}
    for pre in ("module.", "_orig_mod."):
        if all(k.startswith(pre) for k in sd):
            sd = {k[len(pre):]: v for k, v in sd.items()}
    return sd, key


# ---------------------------------------------------------------------------------------------------- writing

_STORAGE_OF = {v: k for k, v in _STORAGES.items() if k != "UntypedStorage"}    # dtype name -> storage class


def _storage_name(dtype: np.dtype) -> str:
    if dtype.name not in _STORAGE_OF:
        raise ValueError(f"write_pt: dtype {dtype} has no torch storage; accepted: {sorted(_STORAGE_OF)}")
    return _STORAGE_OF[dtype.name]


class _Pickle:
    """Protocol-2 pickle opcodes, written by hand: torch globals are named without importing torch."""

    def __init__(self):
        self.out = bytearray(b"\x80\x02")

    def op(self, code: bytes) -> "_Pickle":
        self.out += code
        return self

    def glob(self, module: str, name: str) -> "_Pickle":
        return self.op(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

    def str(self, s: str) -> "_Pickle":
        b = s.encode("utf-8")
        return self.op(b"X" + struct.pack("<I", len(b)) + b)

    def int(self, v: int) -> "_Pickle":
        if 0 <= v < 256:
            return self.op(b"K" + bytes([v]))
        if -2 ** 31 <= v < 2 ** 31:
            return self.op(b"J" + struct.pack("<i", v))
        b = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
        return self.op(b"\x8a" + bytes([len(b)]) + b)

    def tuple(self, items) -> "_Pickle":
        self.op(b"(")
        for v in items:
            self.int(int(v))
        return self.op(b"t")


def pt_bytes(state_dict: Mapping[str, Any], archive: str = "archive") -> bytes:
    """A torch.save file (zip format) of an OrderedDict {name: tensor} from numpy arrays; see the module doc."""
    p = _Pickle().glob("collections", "OrderedDict").op(b")R(")
    blobs = []
    for i, (name, value) in enumerate(state_dict.items()):
        a = np.array(value, order="C", copy=None)            # (np.ascontiguousarray would make 0-d arrays 1-d)
        a = a.astype(a.dtype.newbyteorder("<")) if a.dtype.byteorder == ">" else a
        strides = [int(np.prod(a.shape[d + 1:])) for d in range(a.ndim)]
        p.str(str(name)).glob("torch._utils", "_rebuild_tensor_v2").op(b"((").str("storage")
        p.glob("torch", _storage_name(a.dtype)).str(str(i)).str("cpu").int(a.size).op(b"tQ").int(0)
        p.tuple(a.shape).tuple(strides).op(b"\x89").glob("collections", "OrderedDict").op(b")RtR")
        blobs.append((f"data/{i}", a.tobytes()))
    p.op(b"u.")
    records = [("data.pkl", bytes(p.out)), (".format_version", b"1"), (".storage_alignment", b"64"),
               ("byteorder", b"little"), *blobs, ("version", b"3\n"),
               (".data/serialization_id", io.sha1_arrays(np.frombuffer(bytes(p.out), np.uint8))[:40].encode())]
    buf = _io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in records:
            info = zipfile.ZipInfo(f"{archive}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
            start = buf.tell() + 30 + len(info.filename.encode()) + 4
            pad = -start % PT_ALIGN
            info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad           # torch's padding field
            zf.writestr(info, data)
    return buf.getvalue()


def write_pt(path, state_dict: Mapping[str, Any]) -> None:
    """Writes `pt_bytes(state_dict)` to path (process 0, atomically); `torch.load(path)` returns the state dict."""
    io.write_bytes(path, pt_bytes(state_dict))


# ------------------------------------------------------------------------------------ saved model directory

MODEL_FILE, PARAMS_FILE, FORMAT = "model.json", "params.msgpack", "diffmem.dit/1"
MODEL_FIELDS = ("image_size", "channels", "patch", "hidden", "depth", "heads", "head_dim", "mlp_ratio",
                "num_classes", "learn_sigma")


def model_fields(model: dit_lib.DiT) -> dict:
    """The DiT's fields as JSON (heads an int or a per-block list; dtype is chosen at load time)."""
    model.check_fields()
    out = {f: getattr(model, f) for f in MODEL_FIELDS}
    out["heads"] = out["heads"] if isinstance(out["heads"], (int, np.integer)) else list(out["heads"])
    return json.loads(json.dumps(io.jsonable(out)))


def _check_tree(model: dit_lib.DiT, params, what: str) -> None:
    s, c = model.image_size, model.channels
    want = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, s, s, c)), jnp.zeros((1,)))["params"])
    got = jax.tree.map(lambda a: tuple(np.shape(a)), params)
    if jax.tree.structure(got) != jax.tree.structure(jax.tree.map(lambda a: a.shape, want)) or \
            got != jax.tree.map(lambda a: tuple(a.shape), want):
        raise ValueError(f"{what}: the parameters do not match the DiT {model_fields(model)}")


def save_model(directory, model: dit_lib.DiT, params, **info) -> None:
    """Writes <directory>/params.msgpack (flax msgpack of the 'params' tree, float32) and <directory>/model.json
    (format, the DiT fields, num_params, params_sha1, and `info`: provenance such as the source checkpoint)."""
    from flax import serialization
    params = jax.tree.map(lambda a: np.asarray(a, np.float32), dit_lib.variables(params)["params"])
    _check_tree(model, params, f"save_model({directory})")
    blob = serialization.msgpack_serialize(params)
    io.makedirs(directory)
    io.write_bytes(io.path(directory) / PARAMS_FILE, blob)
    io.write_json(io.path(directory) / MODEL_FILE, io.jsonable(dict(
        format=FORMAT, fields=model_fields(model), num_params=dit_lib.count_params(params),
        params_sha1=io.sha1_arrays(np.frombuffer(blob, np.uint8)), **info)))


def model_info(directory) -> dict:
    """The model.json of a saved model directory: format, fields, num_params, params_sha1 and the provenance given
    to `save_model` (for imported checkpoints: source, source_sha1, key, time_input='discrete', reference_kwargs)."""
    meta = io.read_json(io.path(directory) / MODEL_FILE)
    if meta is not None and "format" not in meta and isinstance(meta.get("model"), dict) \
            and set(meta["model"]) >= {"image_size", "channels", "patch", "hidden", "depth", "heads"}:
        # prune_dit's exported/<method>_eta<eta>/ (unconditional eps DiTs): {"model": fields, ...}, no SHA-1
        fields = dict(dict(head_dim=None, mlp_ratio=4.0, num_classes=0, learn_sigma=False), **meta["model"])
        return dict(meta, format=FORMAT, fields={f: fields[f] for f in MODEL_FIELDS})
    if meta is None or meta.get("format") != FORMAT:
        raise ValueError(f"{directory}: not a saved diffmem model (expected {MODEL_FILE} with format {FORMAT!r}, "
                         f"written by diffmem.checkpoints.save_model or python -m diffmem.convert)")
    return meta


def load_model(directory, dtype: str = "float32") -> tuple[dit_lib.DiT, dict]:
    """(DiT, params) from a directory written by `save_model` (e.g. by `python -m diffmem.convert`); dtype is the
    computation dtype ('float32' or 'bfloat16'; parameters stay float32, as jax arrays)."""
    from flax import serialization
    meta = model_info(directory)
    dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
    if dtype not in dtypes:
        raise ValueError(f"dtype must be one of {sorted(dtypes)}, got {dtype!r}")
    f = dict(meta["fields"])
    f["heads"] = f["heads"] if isinstance(f["heads"], int) else tuple(f["heads"])
    model = dit_lib.DiT(**f, dtype=dtypes[dtype])
    blob = io.read_bytes(io.path(directory) / PARAMS_FILE)
    if "params_sha1" in meta and io.sha1_arrays(np.frombuffer(blob, np.uint8)) != meta["params_sha1"]:
        raise ValueError(f"{directory}: {PARAMS_FILE} is not the file {MODEL_FILE} describes (SHA-1 differs)")
    params = serialization.msgpack_restore(blob)
    _check_tree(model, params, str(directory))
    return model, jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
