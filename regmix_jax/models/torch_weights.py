"""PyTorch `state_dict` <-> Flax params and batch statistics, for every model of the registry.

The Flax modules carry their PyTorch reference's attribute names (`models.common`), so a Flax
variable's path gives its PyTorch key: a name ending in `_<index>` was a `Sequential` entry
(`layer1_0` -> `layer1.0`, `shortcut_1` -> `shortcut.1`, WRN `block1/layer_0` ->
`block1.layer.0`); in the DeepMind models (`models.deepmind`), whose attribute names end in
digits of their own (`batchnorm_0`, `layer_0`), a `Sequential`'s children are modules named "0",
"1", ... and the path is joined as it is (`layer/0/block/3/batchnorm_1` ->
`layer.0.block.3.batchnorm_1`). The leaf names map as

  conv `kernel` [kh, kw, in, out]  <->  `weight` [out, in, kh, kw]
  dense `kernel` [in, out]         <->  `weight` [out, in]
  `bias`                           <->  `bias`
  BatchNorm `scale`                <->  `weight`
  batch_stats `mean`, `var`        <->  `running_mean`, `running_var`

PyTorch's `num_batches_tracked` counters carry nothing we use and are skipped on the way in
(written as 0 on the way out); so is the WideResNet's `sub_block1`, a block TRADES / MART / D2R
build but never call (TRADES models/wideresnet.py:63). A `state_dict` here is a mapping of names
to numpy arrays: `load_state_dict_file` reads one from a `.pt` / `.pth` (through
`torch.load(weights_only=True)`, which refuses pickled objects other than tensors), a
`.safetensors` or an `.npz` file, with no torch needed for the last two. Nothing imports torch
at import time.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import zipfile
import zlib
from typing import Any, Mapping

import flax
import jax
import numpy as np

from regmix_jax.models import get_model

# PyTorch keys that hold nothing a Flax model of ours has: (model name or "*", key regex).
_IGNORED = (("*", r"(^|\.)num_batches_tracked$"), ("wrn", r"^sub_block1\."),
            ("wrn34_10", r"^sub_block1\."))
# Wrappers a saved checkpoint commonly puts around its state_dict.
_WRAPPERS = ("state_dict", "model_state_dict", "model", "net")


def _verbatim(paths) -> bool:
  """Whether the modules are named as PyTorch's attributes verbatim, with a `Sequential`'s
  children named "0", "1", ... (`models.deepmind`): a path component of digits alone only
  occurs there."""
  return any(name.isdigit() for path in paths for name in path)


def _torch_prefix(path: tuple[str, ...], verbatim: bool = False) -> str:
  if verbatim:
    return ".".join(path)
  parts = []
  for name in path:
    match = re.fullmatch(r"(.+)_(\d+)", name)
    parts += [match.group(1), match.group(2)] if match else [name]
  return ".".join(parts)


def _expected(model_name: str, num_classes: int, image_size: int, sizes) -> dict[str, Any]:
  """PyTorch key -> (collection, Flax path, Flax shape) for `model_name`'s variables."""
  model = get_model(model_name, num_classes, **sizes)
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), np.float32)
  variables = jax.eval_shape(lambda k, x: model.init(k, x, train=False), jax.random.key(0), x)
  expected = {}
  flats = {c: flax.traverse_util.flatten_dict(flax.core.unfreeze(variables.get(c, {})))
           for c in ("params", "batch_stats")}
  verbatim = _verbatim(flats["params"])
  for collection, flat in flats.items():
    for path, leaf in flat.items():
      *module, name = path
      prefix = _torch_prefix(tuple(module), verbatim)
      torch_name = {"kernel": "weight", "scale": "weight", "bias": "bias",
                    "mean": "running_mean", "var": "running_var"}[name]
      expected[f"{prefix}.{torch_name}"] = (collection, path, tuple(leaf.shape))
  return expected


def _to_flax(array: np.ndarray, flax_shape) -> np.ndarray:
  if array.ndim == 4:  # conv weight [out, in, kh, kw] -> [kh, kw, in, out]
    return np.transpose(array, (2, 3, 1, 0))
  if array.ndim == 2 and len(flax_shape) == 2:  # linear weight [out, in] -> [in, out]
    return array.T
  return array


def _to_torch(array: np.ndarray) -> np.ndarray:
  if array.ndim == 4:
    return np.transpose(array, (3, 2, 0, 1))
  if array.ndim == 2:
    return array.T
  return array


def _image_size(model_name: str) -> int:
  return 64 if model_name == "preact_resnet18_fgsm_pgk" else 32


def unwrap_state_dict(checkpoint: Any) -> dict[str, np.ndarray]:
  """A checkpoint's `state_dict` as {name: numpy array}: unwraps the common wrappers
  (`state_dict`, `model_state_dict`, `model`, `net`) and the `module.` prefix that
  `nn.DataParallel` adds."""
  while isinstance(checkpoint, Mapping) and not any(
      hasattr(v, "shape") for v in checkpoint.values()):
    inner = [k for k in _WRAPPERS if k in checkpoint]
    if not inner:
      raise ValueError("The checkpoint holds no tensors and none of the usual wrappers "
                       f"({', '.join(_WRAPPERS)}); its keys: {sorted(checkpoint)[:20]}.")
    checkpoint = checkpoint[inner[0]]
  if not isinstance(checkpoint, Mapping):
    raise ValueError(f"Expected a state_dict (a mapping of names to tensors), got "
                     f"{type(checkpoint).__name__}.")
  out = {}
  for name, value in checkpoint.items():
    if not hasattr(value, "shape"):
      continue  # e.g. an epoch counter stored beside the tensors
    name = name[len("module."):] if name.startswith("module.") else name
    out[name] = as_numpy(value)
  return out


def as_numpy(value) -> np.ndarray:
  if isinstance(value, np.ndarray):
    return value
  value = value.detach().cpu()  # a torch tensor
  if str(value.dtype) == "torch.bfloat16":
    value = value.float()
  return value.numpy()


def from_torch(state_dict: Mapping[str, np.ndarray], model_name: str, num_classes: int,
               **sizes) -> tuple[dict, dict]:
  """`(params, batch_stats)` of registry model `model_name` (`sizes`: its width / depth) from a
  PyTorch `state_dict` (numpy arrays; `unwrap_state_dict` first for a raw checkpoint). Raises
  ValueError listing every key that is missing, unexpected or of the wrong shape."""
  expected = _expected(model_name, num_classes, _image_size(model_name), sizes)
  ignored = [pattern for model, pattern in _IGNORED if model in ("*", model_name)]
  given = {k: v for k, v in state_dict.items() if not any(re.search(p, k) for p in ignored)}
  missing = sorted(set(expected) - set(given))
  unexpected = sorted(set(given) - set(expected))
  wrong = []
  out = {"params": {}, "batch_stats": {}}
  for key, (collection, path, shape) in expected.items():
    if key not in given:
      continue
    array = _to_flax(np.asarray(given[key]), shape)
    if tuple(array.shape) != shape:
      wrong.append(f"{key}: {tuple(given[key].shape)} does not fit {shape} (as Flax has it)")
      continue
    out[collection][path] = array.astype(np.float32)  # a copy: never the caller's memory
  if missing or unexpected or wrong:
    lines = [f"The state_dict does not fit model {model_name!r} with {num_classes} classes"
             f"{' ' + str(sizes) if sizes else ''}:"]
    for title, items in (("missing", missing), ("unexpected", unexpected),
                         ("wrong shape", wrong)):
      if items:
        lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:12])
                     + (" ..." if len(items) > 12 else ""))
    lines.append("Pick the --model (and --num_classes, --width/--depth) the checkpoint was "
                 "trained with; see `regmix_jax.models.MODELS`.")
    raise ValueError("\n".join(lines))
  return (flax.traverse_util.unflatten_dict(out["params"]),
          flax.traverse_util.unflatten_dict(out["batch_stats"]))


def to_torch(params: Mapping, batch_stats: Mapping) -> dict[str, np.ndarray]:
  """The PyTorch `state_dict` (numpy arrays) of one model's Flax `params` and `batch_stats`,
  loadable into the reference module (`strict=True`; for the WideResNet, whose reference also
  builds the unused `sub_block1`, `strict=False`)."""
  out = {}
  verbatim = _verbatim(flax.traverse_util.flatten_dict(flax.core.unfreeze(params)))
  for collection, tree in (("params", params), ("batch_stats", batch_stats)):
    for path, leaf in flax.traverse_util.flatten_dict(flax.core.unfreeze(tree)).items():
      *module, name = path
      prefix = _torch_prefix(tuple(module), verbatim)
      if collection == "params":
        torch_name = "bias" if name == "bias" else "weight"
        out[f"{prefix}.{torch_name}"] = _to_torch(np.asarray(leaf, np.float32))
      else:
        out[f"{prefix}.{ {'mean': 'running_mean', 'var': 'running_var'}[name]}"] = np.asarray(
            leaf, np.float32)
        out[f"{prefix}.num_batches_tracked"] = np.zeros((), np.int64)
  return out


def load_state_dict_file(path: str) -> dict[str, np.ndarray]:
  """{name: numpy array} from a `.pt` / `.pth` (needs torch: read with
  `torch.load(weights_only=True)`, so a file holding anything but tensors and plain containers
  is refused, never executed), a `.safetensors` or an `.npz` (no torch needed) file: the
  checkpoint `read_checkpoint` reads, unwrapped by `unwrap_state_dict`."""
  return unwrap_state_dict(read_checkpoint(path))


def read_checkpoint(path: str) -> Any:
  """What a checkpoint file holds, as saved: for a `.pt` / `.pth`, the (possibly nested) dicts
  of tensors `torch.load(weights_only=True)` returns; for `.safetensors` and `.npz`, a flat
  {name: numpy array}. Raises FileNotFoundError, ImportError (a `.pt` without torch) or
  ValueError (unreadable, damaged, or pickling anything but tensors)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No checkpoint file {path!r}.")
  suffix = os.path.splitext(path)[1].lower()
  if suffix == ".npz":
    return _read_npz(path)
  if suffix == ".safetensors":
    return _read_safetensors(path)
  if suffix in (".pt", ".pth", ".bin", ".ckpt"):
    try:
      # torch is no dependency of the library: only this format needs it.
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ImportError(f"Reading {path} needs PyTorch (`pip install torch`), or save its "
                        "state_dict as .safetensors or .npz, which need no torch.") from None
    try:
      return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch's refusal of non-tensor pickles and unreadable files
      raise ValueError(f"{path} could not be read as tensors with torch.load(weights_only="
                       f"True): {type(e).__name__}: {str(e)[:500]}\nOnly files holding tensors "
                       "(a state_dict, possibly wrapped in plain dicts) are read; nothing else "
                       "in a checkpoint is ever unpickled.") from e
  raise ValueError(f"{path}: unknown checkpoint format {suffix!r}; use .pt / .pth (PyTorch), "
                   ".safetensors or .npz.")


_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
                       "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
                       "U8": np.uint8, "BOOL": np.bool_}


def _damaged(path: str, what: str) -> ValueError:
  return ValueError(f"{path} is damaged or not a checkpoint: {what}. Save the state_dict again "
                    "(or copy the file again: a download or copy may have been cut short).")


# What numpy and zipfile raise for a damaged or truncated .npz (ValueError: pickled data, a bad
# .npy header).
_NPZ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError)


def _read_npz(path: str) -> dict[str, np.ndarray]:
  """Every array of an .npz; a damaged or truncated file raises `_damaged`."""
  try:
    archive = np.load(path, allow_pickle=False)
  except _NPZ_ERRORS as e:
    raise _damaged(path, f"{type(e).__name__}: {e}") from e
  if not isinstance(archive, np.lib.npyio.NpzFile):  # np.load also reads a single .npy
    raise _damaged(path, "it holds one array, not an .npz archive of named arrays")
  with archive:
    try:
      return {k: archive[k] for k in archive.files}
    except _NPZ_ERRORS as e:  # a member cut short or failing its CRC
      raise _damaged(path, f"{type(e).__name__}: {e}") from e


_SAFETENSORS_ITEMSIZE = {"BF16": 2, **{k: np.dtype(v).itemsize
                                       for k, v in _SAFETENSORS_DTYPES.items()}}


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  """The safetensors format: an 8-byte little-endian header length, a JSON header of
  {name: {dtype, shape, data_offsets}}, then the raw little-endian data. Every length and offset
  is checked against the file's size before anything is read, so a damaged file raises
  `_damaged` and never makes us read (or allocate) more than it holds."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    if size < 8:
      raise _damaged(path, f"{size} bytes, shorter than the 8-byte header length")
    (length,) = struct.unpack("<Q", f.read(8))
    if length > size - 8:
      raise _damaged(path, f"its header claims {length} bytes, the file holds {size - 8} after "
                     "the header length")
    try:
      header = json.loads(f.read(length))
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
      raise _damaged(path, f"its header is not JSON ({e})") from None
    if not isinstance(header, dict):
      raise _damaged(path, "its header is not a JSON object")
    data_size = size - 8 - length
    spans = {}
    for name, info in header.items():
      if name == "__metadata__":
        continue
      try:
        dtype, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]
        valid = (isinstance(shape, list) and isinstance(dtype, str)
                 and all(isinstance(n, int) and n >= 0 for n in (*shape, start, end))
                 and start <= end <= data_size)
      except (TypeError, KeyError, ValueError):  # not a dict; a missing key; not two offsets
        valid = False
      if not valid:
        raise _damaged(path, f"tensor {name!r}: {str(info)[:200]} is no dtype, shape and "
                       f"data_offsets within the file's {data_size} data bytes")
      if dtype not in _SAFETENSORS_ITEMSIZE:
        raise ValueError(f"{path}: tensor {name!r} has dtype {dtype}, not supported.")
      if end - start != math.prod(shape) * _SAFETENSORS_ITEMSIZE[dtype]:
        raise _damaged(path, f"tensor {name!r} of {dtype} {shape} spans {end - start} bytes")
      spans[name] = (dtype, shape, start, end)
    data = f.read()
  out = {}
  for name, (dtype, shape, start, end) in spans.items():
    if dtype == "BF16":  # numpy has no bfloat16: widen to float32
      raw = np.frombuffer(data[start:end], np.uint16).astype(np.uint32) << 16
      array = raw.view(np.float32)
    else:
      array = np.frombuffer(data[start:end], _SAFETENSORS_DTYPES[dtype])
    out[name] = array.reshape(shape).copy()
  return out
