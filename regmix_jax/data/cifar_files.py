"""Reading the official CIFAR-10/100 downloads (python pickles or binary records) and .npz files.

The python batches are pickles, and unpickling runs whatever the file says. `SafeUnpickler` admits
only the globals CIFAR's batches need (numpy's array reconstruction) and refuses everything else.
"""

from __future__ import annotations

import codecs
import os
import pickle

import numpy as np

_RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]  # numpy's `multiarray._reconstruct`


def _latin1_encode(obj, encoding):
  """`_codecs.encode` as Python 3 writes bytes in protocol-2 pickles; only latin1 is admitted."""
  if encoding not in ("latin1", "latin-1") or not isinstance(obj, str):
    raise pickle.UnpicklingError(f"Refused _codecs.encode({type(obj).__name__}, {encoding!r}).")
  return codecs.encode(obj, "latin1")


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class SafeUnpickler(pickle.Unpickler):
  """An Unpickler that resolves only numpy array reconstruction (plus latin1 bytes encoding)."""

  def __init__(self, file, path: str):
    super().__init__(file, encoding="bytes")
    self.path = path

  def find_class(self, module: str, name: str):
    try:
      return _ALLOWED[(module, name)]
    except KeyError:
      raise pickle.UnpicklingError(
          f"Refused to load global `{module}.{name}` from {self.path}: a CIFAR batch only holds "
          "numpy arrays, lists and strings. The file is corrupt or not a CIFAR batch.") from None


def load_pickle(path: str) -> dict:
  with open(path, "rb") as f:
    return SafeUnpickler(f, path).load()


def _chw_to_hwc(data: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(
      np.asarray(data, np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _read_python(paths: list[str], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
  batches = [load_pickle(p) for p in paths]
  x = np.concatenate([_chw_to_hwc(b[b"data"]) for b in batches])
  y = np.concatenate([np.asarray(b[label_key], np.int64) for b in batches])
  return x, y


def _read_binary(paths: list[str], label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
  rec = np.concatenate([np.fromfile(p, np.uint8).reshape(-1, label_bytes + 3072) for p in paths])
  return _chw_to_hwc(rec[:, label_bytes:]), rec[:, label_bytes - 1].astype(np.int64)


# name -> [(sub-folder, train files, test files, reader)]; the first layout found is used.
_LAYOUTS = {
    "cifar10": [
        ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
         lambda p: _read_python(p, b"labels")),
        ("cifar-10-batches-bin", [f"data_batch_{i}.bin" for i in range(1, 6)], ["test_batch.bin"],
         lambda p: _read_binary(p, 1)),
    ],
    "cifar100": [
        ("cifar-100-python", ["train"], ["test"], lambda p: _read_python(p, b"fine_labels")),
        ("cifar-100-binary", ["train.bin"], ["test.bin"], lambda p: _read_binary(p, 2)),
    ],
}


def load_npz(path: str) -> dict[str, np.ndarray]:
  with np.load(path, allow_pickle=False) as f:
    missing = {"x_train", "y_train", "x_test", "y_test"} - set(f.files)
    if missing:
      raise ValueError(f"{path} lacks arrays {sorted(missing)}; it needs x_train, y_train, x_test, "
                       f"y_test (it has {f.files}).")
    return {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}


def load_cifar_dir(directory: str, name: str) -> dict[str, np.ndarray]:
  """Finds the official CIFAR files for `name` in `directory` or one of its sub-folders."""
  if name not in _LAYOUTS:
    raise ValueError(f"Config field `data.name` = {name!r}: source `files` reads a directory only "
                     f"for {sorted(_LAYOUTS)} (or give an .npz as `data.dir`).")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"Config field `data.dir` = {directory!r} is neither a directory nor "
                            "an .npz file.")
  subdirs = sorted(e.path for e in os.scandir(directory) if e.is_dir())
  looked = []
  for folder, train, test, read in _LAYOUTS[name]:
    for d in [directory] + subdirs:
      if all(os.path.isfile(os.path.join(d, f)) for f in train + test):
        x_train, y_train = read([os.path.join(d, f) for f in train])
        x_test, y_test = read([os.path.join(d, f) for f in test])
        return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    looked.append(f"{folder}/{{{', '.join(train + test)}}}")
  raise FileNotFoundError(
      f"No {name} files found in {directory!r} or its sub-folders. Looked for: "
      f"{'; '.join(looked)}. Fix: extract the official {name} python or binary archive there, or "
      "set `--config.data.dir` to an .npz with x_train, y_train, x_test, y_test.")
