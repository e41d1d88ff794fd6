"""Reading the official CIFAR-10/100 downloads (python pickles or binary records) and .npz files.

The python batches are pickles, and unpickling runs whatever the file says. `SafeUnpickler` admits
only the globals CIFAR's batches need (numpy's array reconstruction) and refuses everything else.
"""

from __future__ import annotations

import codecs
import os
import pickle
import zipfile
import zlib

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


class RefusedGlobal(pickle.UnpicklingError):
  """A pickle naming a global `SafeUnpickler` does not admit (the message names the file)."""


class SafeUnpickler(pickle.Unpickler):
  """An Unpickler that resolves only numpy array reconstruction (plus latin1 bytes encoding)."""

  def __init__(self, file, path: str):
    super().__init__(file, encoding="bytes")
    self.path = path

  def find_class(self, module: str, name: str):
    try:
      return _ALLOWED[(module, name)]
    except KeyError:
      raise RefusedGlobal(
          f"Refused to load global `{module}.{name}` from {self.path}: a CIFAR batch only holds "
          "numpy arrays, lists and strings. The file is corrupt or not a CIFAR batch.") from None


def _damaged(path: str, what: str) -> ValueError:
  return ValueError(f"{path} is damaged: {what}. Extract or copy the file again (a download or "
                    "copy may have been cut short).")


def load_pickle(path: str) -> dict:
  with open(path, "rb") as f:
    try:
      return SafeUnpickler(f, path).load()
    except RefusedGlobal:
      raise
    # Cut short or garbled: the unpickler's own errors, or its stack's on nonsense opcodes.
    except (EOFError, ValueError, IndexError, KeyError, TypeError, OverflowError,
            pickle.UnpicklingError) as e:
      raise _damaged(path, f"not a complete pickle ({type(e).__name__}: {e})") from None


def _chw_to_hwc(data: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(
      np.asarray(data, np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _read_python(paths: list[str], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
  xs, ys = [], []
  for path in paths:
    batch = load_pickle(path)
    try:
      x, y = np.asarray(batch[b"data"]), np.asarray(batch[label_key])
    except (KeyError, TypeError):
      raise _damaged(path, f"not a CIFAR batch with {b'data'!r} and {label_key!r}") from None
    if x.size % 3072 or len(x.reshape(-1, 3072)) != len(y.reshape(-1)):
      raise _damaged(path, f"{x.size} image bytes (3072 per image) for {y.size} labels")
    xs.append(_chw_to_hwc(x))
    ys.append(y.reshape(-1))
  return np.concatenate(xs), np.concatenate(ys)


def _read_binary(paths: list[str], label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
  records = []
  for path in paths:
    raw = np.fromfile(path, np.uint8)
    if raw.size % (label_bytes + 3072):
      raise _damaged(path, f"{raw.size} bytes, not a whole number of {label_bytes + 3072}-byte "
                     "records")
    records.append(raw.reshape(-1, label_bytes + 3072))
  rec = np.concatenate(records)
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


# What numpy and zipfile raise for a damaged or truncated .npz (ValueError: a bad .npy header,
# pickled data).
_NPZ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError)


def load_npz(path: str) -> dict[str, np.ndarray]:
  """x_train, y_train, x_test, y_test of an .npz; ValueError naming the file when it lacks one
  or is damaged (truncated, not a zip archive)."""
  try:
    archive = np.load(path, allow_pickle=False)
  except _NPZ_ERRORS as e:
    raise _damaged(path, f"not an .npz archive ({type(e).__name__}: {e})") from None
  if not isinstance(archive, np.lib.npyio.NpzFile):  # np.load also reads a single .npy
    raise ValueError(f"{path} holds one array, not an .npz of x_train, y_train, x_test, y_test; "
                     "save them with np.savez.")
  with archive:
    missing = {"x_train", "y_train", "x_test", "y_test"} - set(archive.files)
    if missing:
      raise ValueError(f"{path} lacks arrays {sorted(missing)}; it needs x_train, y_train, x_test, "
                       f"y_test (it has {archive.files}).")
    try:
      return {k: archive[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except _NPZ_ERRORS as e:  # a member cut short or failing its CRC
      raise _damaged(path, f"{type(e).__name__}: {e}") from None


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
