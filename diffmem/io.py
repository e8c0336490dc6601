"""Files: atomic writes by process 0, content stamps, and the JSON form of results.

Paths go through `etils.epath`, so a workdir may be local or remote (`gs://...`). Every write goes to a temporary
name unique to the process and is then renamed over the target, so a killed run never leaves a half-written file
and two writers never share a temporary. Only process 0 writes (`runtime.is_writer`); the other processes of a
multi-process run compute the same values and skip the write. Every call here that writes or reads a file (`exists`,
`read_json`, `read_bytes`, `load_npz`, `load_npy`, the writes, `remove`) is a barrier of all processes (a no-op with
one process): every process makes the same calls in the same order, a write returns once the file is in place and
a read returns only when every process has read (so process 0 cannot write over a file before another process has
looked at it), and all processes see the same files. Without it a process
could read a file process 0 had not yet written, or, looking just after process 0 wrote a cache or a stamp, take
another branch (reuse instead of compute, skip a write) than process 0 and leave the collectives out of step.

Stamps: a resumable piece of work (a trained model, a cached evaluation) is stored beside a JSON stamp of every
setting that changes its numbers; `check_stamp` refuses to resume from a stamp that differs and names the fields.
"""
from __future__ import annotations

import hashlib
import io as _io
import json
import math
import os
from typing import Any, Optional, Union

import numpy as np
from etils import epath

from diffmem import runtime

PathLike = Union[str, os.PathLike, epath.Path]


def path(p: PathLike) -> epath.Path:
    return epath.Path(p)


def makedirs(p: PathLike) -> epath.Path:
    p = path(p)
    if runtime.is_writer():
        p.mkdir(parents=True, exist_ok=True)
    return p


def _sync(what: str, p: epath.Path) -> None:
    """All processes meet here (see the module docstring); the name checks that they do the same thing."""
    runtime.barrier(f"diffmem.io {what} {p.name}")


def _atomic_write(p: PathLike, data: Union[bytes, str]) -> None:
    p = path(p)
    if runtime.is_writer():
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f"{p.name}.tmp{os.getpid()}")
        if isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)
        tmp.replace(p)
    _sync("write", p)   # every process returns once the file is there


def write_text(p: PathLike, text: str) -> None:
    _atomic_write(p, text)


def write_bytes(p: PathLike, blob: bytes) -> None:
    _atomic_write(p, blob)


def write_json(p: PathLike, obj) -> None:
    """JSON (sorted keys, indented; NaN allowed), written atomically by process 0."""
    _atomic_write(p, json.dumps(obj, indent=2, sort_keys=True, allow_nan=True))


def save_npz(p: PathLike, **arrays) -> None:
    """np.savez, written atomically by process 0."""
    buf = _io.BytesIO()
    np.savez(buf, **arrays)
    _atomic_write(p, buf.getvalue())


def save_npy(p: PathLike, array) -> None:
    """np.save, written atomically by process 0."""
    buf = _io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    _atomic_write(p, buf.getvalue())


def load_npy(p: PathLike) -> np.ndarray:
    out = np.load(_io.BytesIO(path(p).read_bytes()), allow_pickle=False)
    _sync("read", path(p))
    return out


def exists(p: PathLike) -> bool:
    out = path(p).exists()
    _sync("exists", path(p))
    return out


def read_json(p: PathLike) -> Optional[Any]:
    """The JSON at `p`, or None when the file does not exist."""
    p = path(p)
    out = json.loads(p.read_text()) if p.exists() else None
    _sync("read", p)
    return out


def read_bytes(p: PathLike) -> bytes:
    out = path(p).read_bytes()
    _sync("read", path(p))
    return out


def load_npz(p: PathLike) -> dict[str, np.ndarray]:
    """Every array of an .npz as a dict (read into memory)."""
    with np.load(_io.BytesIO(path(p).read_bytes()), allow_pickle=False) as f:
        out = {k: f[k] for k in f.files}
    _sync("read", path(p))
    return out


def remove(p: PathLike) -> None:
    p = path(p)
    if runtime.is_writer() and p.exists():
        if p.is_dir():
            p.rmtree()
        else:
            p.unlink()
    _sync("remove", p)


# ---------------------------------------------------------------------------------------------------- content

def jsonable(x):
    """numpy scalars / arrays, tuples -> Python; NaN / inf -> None (results.json stays standard JSON)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def sha1_arrays(*arrays) -> str:
    """SHA-1 of the arrays' dtypes, shapes and bytes (stamps of the data a cached result was made from)."""
    h = hashlib.sha1()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def hash_json(obj, length: int = 12) -> str:
    """Short SHA-1 of the canonical JSON of obj (a directory name for the settings it covers)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


def check_stamp(p: PathLike, stamp: dict, what: str, hint: str = "use a fresh workdir") -> None:
    """Writes the stamp at `p` the first time; afterwards refuses (ValueError naming the differing fields) to
    resume work made with other settings."""
    old = read_json(p)
    new = json.loads(json.dumps(stamp))
    if old is None:
        write_json(p, new)
        return
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        detail = {k: (old.get(k), new.get(k)) for k in diff}
        raise ValueError(f"{path(p).parent} holds a {what} made with other settings (fields {diff}: "
                         f"(stored, requested) = {detail}); {hint}")
