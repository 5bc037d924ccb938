"""Safe reader and writer of PyTorch ``torch.save`` zip archives, without executing pickled code.

Upstream GPT-SoVITS checkpoints are ``torch.save`` archives whose pickle references a handful of
globals (``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``, ``torch.HalfStorage``
and, for SoVITS files, upstream's ``utils.HParams`` config class).  ``torch.load`` with
``weights_only=False`` would import and run whatever a file names; this reader instead resolves
only an allow-list of names to our own implementations and refuses everything else.

Archive layout (torch >= 1.6): ``<root>/data.pkl``, ``<root>/data/<key>`` (raw little-endian
storages), ``<root>/version`` (+ optional ``byteorder``, ``.format_version`` ...).  The root folder
name is arbitrary (upstream's files use a timestamp), so it is discovered.
"""
from __future__ import annotations

import collections
import io
import pickle
import zipfile
from typing import Any

import numpy as np
import torch

from gsv.errors import CheckpointError, UnsafeCheckpointError

# torch storage class name -> dtype
_STORAGE_DTYPES = {
    "HalfStorage": torch.float16,
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
_DTYPE_STORAGE = {v: k for k, v in _STORAGE_DTYPES.items()}


class HParams:
    """Attribute bag standing in for upstream's ``utils.HParams`` (state = plain ``__dict__``)."""

    def __setstate__(self, state: dict) -> None:
        if not isinstance(state, dict):
            raise UnsafeCheckpointError("HParams state is not a dict")
        self.__dict__.update(state)

    def to_dict(self) -> dict:
        return {k: v.to_dict() if isinstance(v, HParams) else v for k, v in self.__dict__.items()}

    def __repr__(self) -> str:
        return f"HParams({self.to_dict()!r})"


def hparams_to_plain(value: Any) -> Any:
    """Recursively turn HParams objects into plain dicts."""
    if isinstance(value, HParams):
        return {k: hparams_to_plain(v) for k, v in value.__dict__.items()}
    if isinstance(value, dict):
        return {k: hparams_to_plain(v) for k, v in value.items()}
    return value


class _StorageType:
    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if not isinstance(storage, torch.Tensor):
        raise UnsafeCheckpointError("tensor rebuilt from something that is not a storage")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or any(s < 0 for s in size) or storage_offset < 0:
        raise CheckpointError("corrupt tensor header in checkpoint")
    extent = storage_offset + sum((n - 1) * st for n, st in zip(size, stride)) + 1 if all(size) else 0
    if extent > storage.numel():
        raise CheckpointError("corrupt checkpoint: a tensor reaches past the end of its storage")
    return torch.as_strided(storage, size, stride, storage_offset)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("utils", "HParams"): HParams,
    ("GPT_SoVITS.utils", "HParams"): HParams,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, root: str, byteorder: str):
        super().__init__(file)
        self._archive = archive
        self._root = root
        self._byteorder = byteorder
        self._storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"refusing to load: the checkpoint's pickle references {module}.{name}, "
                "which is not a tensor, a plain container or upstream's HParams"
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise UnsafeCheckpointError(f"unexpected persistent id in checkpoint: {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise UnsafeCheckpointError("storage of an unknown type in checkpoint")
        if key in self._storages:
            return self._storages[key]
        try:
            raw = self._archive.read(f"{self._root}data/{key}")
        except KeyError:
            raise CheckpointError(f"corrupt checkpoint: storage {key} is missing from the archive") from None
        except (zipfile.BadZipFile, EOFError, OSError) as e:
            raise CheckpointError(f"corrupt or truncated checkpoint ({e})") from None
        itemsize = torch.empty((), dtype=storage_type.dtype).element_size()
        if len(raw) < numel * itemsize:
            raise CheckpointError(f"corrupt checkpoint: storage {key} is shorter than its header says")
        arr = np.frombuffer(raw, dtype=np.uint8, count=numel * itemsize).copy()
        t = torch.from_numpy(arr).view(storage_type.dtype)
        if self._byteorder == "big" and itemsize > 1:
            t = torch.from_numpy(t.numpy().byteswap())
        self._storages[key] = t
        return t


def _find_root(names: list[str]) -> str:
    roots = [n[: -len("data.pkl")] for n in names if n.endswith("data.pkl") and n.count("/") <= 1]
    if len(roots) != 1:
        raise CheckpointError("not a PyTorch checkpoint (no single data.pkl in the archive)")
    return roots[0]


def load_torch_zip(data: bytes) -> Any:
    """Unpickle a ``torch.save`` zip archive given as bytes (first two bytes must be ``PK``)."""
    if data[:2] != b"PK":
        raise CheckpointError("not a PyTorch zip checkpoint")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        for info in archive.infolist():
            # torch stores entries uncompressed; a compressed one declaring far more bytes than the
            # whole file would be inflated in memory (a zip bomb)
            if info.file_size > 4 * len(data) + (1 << 20):
                raise CheckpointError(f"corrupt checkpoint: {info.filename} would expand to {info.file_size} bytes "
                                      f"from a {len(data)}-byte file (a zip bomb?)")
        root = _find_root(archive.namelist())
        pkl = archive.read(root + "data.pkl")
        byteorder = "little"
        if root + "byteorder" in archive.namelist():
            byteorder = archive.read(root + "byteorder").decode("ascii", "replace").strip() or "little"
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"corrupt or truncated checkpoint ({e})") from None
    _check_memo(pkl)
    try:
        return _RestrictedUnpickler(io.BytesIO(pkl), archive, root, byteorder).load()
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError, RuntimeError,
            MemoryError) as e:
        raise CheckpointError(f"corrupt checkpoint: cannot read its pickle ({e})") from None


def _check_memo(pkl: bytes) -> None:
    """Refuse a pickle that would make the unpickler allocate memory for nothing: its memo table is
    sized by the largest index a PUT opcode names, so one forged index (a damaged or hostile file)
    would ask for gigabytes.  A real pickle never stores more objects than it has bytes."""
    import pickletools

    try:
        for op, arg, _ in pickletools.genops(pkl):
            if op.name in ("PUT", "BINPUT", "LONG_BINPUT") and int(arg) > len(pkl):
                raise CheckpointError(f"corrupt checkpoint: its pickle names memo slot {arg} in {len(pkl)} bytes")
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - pickletools reports damage with assorted exception types
        raise CheckpointError(f"corrupt checkpoint: cannot read its pickle ({e})") from None


def save_torch_zip(obj: Any, path, *, archive_name: str | None = None, magic: bytes | None = None) -> None:
    """Write ``obj`` exactly like upstream's trainers do: ``torch.save`` (pickle protocol 2, zip)
    to ``<timestamp>.pth`` next to ``path``, then an atomic rename onto ``path``.

    The zip root folder is the temporary file's stem (torch uses it), a timestamp as upstream's.
    ``HParams`` instances are pickled as ``utils.HParams`` so that upstream's loaders accept the file.
    ``magic`` (two bytes) is written over the leading ``PK``, as upstream's ``my_save2`` marks
    v2Pro/v2ProPlus files.  A crash at any point leaves ``path`` either absent or complete.
    """
    import os
    import shutil
    import sys
    import tempfile
    import time
    import types
    from pathlib import Path

    path = Path(path)
    fake = types.ModuleType("utils")
    cls = type("HParams", (), {"__module__": "utils"})
    fake.HParams = cls

    def convert(v):
        if isinstance(v, HParams):
            o = cls.__new__(cls)
            o.__dict__.update({k: convert(x) for k, x in v.__dict__.items()})
            return o
        return v

    if isinstance(obj, dict):
        obj = type(obj)((k, convert(v)) for k, v in obj.items())
    tmpdir = tempfile.mkdtemp(prefix=".save-", dir=path.parent)
    try:
        tmp = Path(tmpdir) / f"{archive_name or repr(time.time())}.pth"
        saved = sys.modules.get("utils")
        sys.modules["utils"] = fake
        try:
            torch.save(obj, tmp, pickle_protocol=2)
        finally:
            if saved is None:
                sys.modules.pop("utils", None)
            else:
                sys.modules["utils"] = saved
        with open(tmp, "r+b") as f:
            if magic is not None:
                if len(magic) != 2:
                    raise ValueError("magic must be two bytes")
                f.write(magic)
                f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
