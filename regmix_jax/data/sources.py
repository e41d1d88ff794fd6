"""`load_dataset(config.data)`: CIFAR from TFDS, from local files (official downloads or .npz),
Tiny ImageNet from its folder (`data.name = "tiny_imagenet"`), or the synthetic set; checks layout
and labels, and carves an optional validation split from train."""

from __future__ import annotations

import os

import numpy as np

from regmix_jax.data import cifar_files, tiny_imagenet
from regmix_jax.data.dataset import Dataset, Split
from regmix_jax.data.synthetic_set import synthetic

# Where a dataset comes from (`config.data.source`).
SOURCES = ("tfds", "files", "synthetic")
_NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "tiny_imagenet": 200}


def _load_tfds(name: str, data_dir: str, download: bool) -> dict[str, np.ndarray]:
  # Imported here, not at the top: tensorflow_datasets takes seconds to import, and only the
  # "tfds" source needs it.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  out = {}
  try:
    for split in ("train", "test"):
      source = tfds.data_source(name, split=split, data_dir=data_dir or None, download=download)
      records = [source[i] for i in range(len(source))]
      out[f"x_{split}"] = np.stack([np.asarray(r["image"], np.uint8) for r in records])
      out[f"y_{split}"] = np.asarray([int(r["label"]) for r in records], np.int64)
  except Exception as e:  # not prepared, no network, wrong file format, ...
    where = data_dir or "the TFDS default data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
    flag = f" --data_dir={data_dir}" if data_dir else ""
    raise FileNotFoundError(
        f"Could not load TFDS dataset {name!r} from {where}: {type(e).__name__}: {e}\n"
        f"Fixes: (1) on a machine with internet, run `tfds build {name} "
        f"--file_format=array_record{flag}` and copy that data_dir here (random access needs the "
        "array_record format); or (2) use local files: `--config.data.source=files "
        "--config.data.dir=<directory with the CIFAR python or binary batches, or an .npz>`."
    ) from e
  return out


def _integer_labels(y: np.ndarray, what: str) -> np.ndarray:
  """`y` as int64; ValueError naming `what` for labels that are not whole numbers (1.5, NaN,
  strings): truncating them would train on labels nobody gave."""
  y = np.asarray(y)
  if np.issubdtype(y.dtype, np.integer):
    return y.astype(np.int64)
  if not np.issubdtype(y.dtype, np.floating):
    raise ValueError(f"{what}: labels must be integers (class indices), got {y.dtype}.")
  bad = ~np.isfinite(y) | (y != np.round(y))
  if bad.any():
    i = int(np.flatnonzero(bad.reshape(-1))[0])
    raise ValueError(f"{what}: labels must be whole class indices, got {y.reshape(-1)[i]} at "
                     f"index {i} ({int(bad.sum())} such labels). Save the labels as integers.")
  return y.astype(np.int64)


def _check(x: np.ndarray, y: np.ndarray, what: str, num_classes: int) -> Split:
  if x.ndim and len(x) == 0:
    raise ValueError(f"{what}: the split has no images (shape {x.shape}): training or evaluating "
                     "on it would report nothing. Give it at least one image.")
  if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
    raise ValueError(f"{what}: images hold {int((~np.isfinite(x)).sum())} NaN or infinite "
                     "values; images must be uint8 0-255.")
  if x.dtype != np.uint8 and np.issubdtype(x.dtype, np.number) and x.size:
    low, high = float(x.min()), float(x.max())
    fix = ("(x * 255).round().astype(np.uint8)" if 0.0 <= low and high <= 1.0 else
           "x.round().astype(np.uint8)" if 0.0 <= low and high <= 255.0 else
           "rescale them to 0-255 first")
    raise ValueError(f"{what}: images must be uint8 0-255, got {x.dtype} with values in "
                     f"[{low:g}, {high:g}]. Convert them: {fix}.")
  if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1] != x.shape[2] or x.shape[3] != 3:
    hint = ": looks like NCHW" if x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[3] > 3 else ""
    raise ValueError(f"{what}: images must be uint8 [N, H, W, 3] with H == W (NHWC), got "
                     f"{x.dtype} {x.shape}{hint}.")
  if y.shape != (len(x),):
    raise ValueError(f"{what}: labels must be [N] = [{len(x)}], got {y.shape}.")
  if len(y) and (y.min() < 0 or y.max() >= num_classes):
    raise ValueError(f"{what}: labels must be in [0, {num_classes}), got [{y.min()}, {y.max()}].")
  return Split(x=x, y=y.astype(np.int32))


def load_dataset(cfg) -> Dataset:
  """Loads `config.data` (fields: source, name, dir, download, val_size, seed, synthetic)."""
  if cfg.source == "synthetic":
    s = cfg.synthetic
    ds = synthetic(num_train=s.num_train, num_test=s.num_test, image_size=s.image_size,
                   num_classes=s.num_classes, seed=s.seed, name=cfg.name)
    arrays = {"x_train": ds.train.x, "y_train": ds.train.y, "x_test": ds.test.x,
              "y_test": ds.test.y}
    num_classes = ds.num_classes
  elif cfg.source == "tfds":
    if cfg.name == "tiny_imagenet":
      raise ValueError("Config field `data.source` = 'tfds': TFDS has no Tiny ImageNet builder. "
                       "Use --config.data.source=files --config.data.dir=<tiny-imagenet-200/>.")
    arrays = _load_tfds(cfg.name, cfg.dir, cfg.download)
    num_classes = _NUM_CLASSES.get(cfg.name, 0)  # 0: the labels'
  elif cfg.source == "files":
    if cfg.dir.endswith(".npz"):
      if not os.path.isfile(cfg.dir):
        raise FileNotFoundError(f"Config field `data.dir`: no such .npz file {cfg.dir!r}.")
      arrays = cifar_files.load_npz(cfg.dir)
      num_classes = _NUM_CLASSES.get(cfg.name, 0)  # 0: the labels' (an .npz of another dataset)
    elif cfg.name == "tiny_imagenet":
      arrays = tiny_imagenet.load_tiny_imagenet_dir(cfg.dir)
      num_classes = _NUM_CLASSES[cfg.name]
    else:
      arrays = cifar_files.load_cifar_dir(cfg.dir, cfg.name)
      num_classes = _NUM_CLASSES[cfg.name]
  else:
    raise ValueError(f"Config field `data.source` = {cfg.source!r} is not one of {SOURCES}.")

  what = f"data.source={cfg.source} ({cfg.dir or cfg.name})"
  for split in ("train", "test"):
    arrays[f"y_{split}"] = _integer_labels(arrays[f"y_{split}"], f"{what} {split}")
  num_classes = num_classes or int(arrays["y_train"].max(initial=0)) + 1
  train = _check(arrays["x_train"], arrays["y_train"], what + " train", num_classes)
  test = _check(arrays["x_test"], arrays["y_test"], what + " test", num_classes)
  if train.x.shape[1:] != test.x.shape[1:]:
    raise ValueError(f"{what}: train images {train.x.shape[1:]} and test images "
                     f"{test.x.shape[1:]} differ in shape.")
  val = None
  if cfg.val_size > 0:
    if cfg.val_size >= len(train.y):
      raise ValueError(f"Config field `data.val_size` = {cfg.val_size} must be smaller than the "
                       f"training set ({len(train.y)} examples).")
    perm = np.random.default_rng(cfg.seed).permutation(len(train.y))
    val_idx, train_idx = np.sort(perm[:cfg.val_size]), np.sort(perm[cfg.val_size:])
    val = Split(x=train.x[val_idx], y=train.y[val_idx])
    train = Split(x=train.x[train_idx], y=train.y[train_idx])
  return Dataset(train=train, val=val, test=test, num_classes=num_classes, name=cfg.name)
