"""Tiny ImageNet from a small generated folder with the official layout."""

import os

import numpy as np
import pytest
from PIL import Image

from regmix_jax import config as config_lib
from regmix_jax import data

WNIDS = ["n02", "n01", "n03"]  # sorted: n01 -> 0, n02 -> 1, n03 -> 2


def _image(path, value, mode="RGB"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  array = np.full((64, 64, 3) if mode == "RGB" else (64, 64), value, np.uint8)
  Image.fromarray(array, mode).save(path)


def _make(root):
  root = os.path.join(root, "tiny-imagenet-200")
  os.makedirs(root)
  with open(os.path.join(root, "wnids.txt"), "w") as f:
    f.write("\n".join(WNIDS) + "\n")
  for k, wnid in enumerate(WNIDS):
    for j in range(2):
      _image(os.path.join(root, "train", wnid, "images", f"{wnid}_{j}.JPEG"), 40 * k + j,
             mode="L" if (k, j) == (0, 1) else "RGB")  # one grayscale image, as in the real set
  lines = []
  for j, wnid in enumerate(["n03", "n01", "n02", "n03"]):
    _image(os.path.join(root, "val", "images", f"val_{j}.JPEG"), 10 * j)
    lines.append(f"val_{j}.JPEG\t{wnid}\t0\t0\t63\t63")
  with open(os.path.join(root, "val", "val_annotations.txt"), "w") as f:
    f.write("\n".join(lines) + "\n")
  return root


def _cfg(path):
  cfg = config_lib.base_config().data
  cfg.source, cfg.name, cfg.dir = "files", "tiny_imagenet", path
  return cfg


def test_reads_the_official_layout(tmp_path):
  _make(str(tmp_path))
  ds = data.load_dataset(_cfg(str(tmp_path)))  # the parent folder works too
  assert ds.num_classes == 200 and ds.image_shape == (64, 64, 3)
  assert ds.train.x.shape == (6, 64, 64, 3) and ds.test.x.shape == (4, 64, 64, 3)
  # Labels are positions in the sorted wnids; train folders are read in that order.
  np.testing.assert_array_equal(ds.train.y, [0, 0, 1, 1, 2, 2])
  np.testing.assert_array_equal(ds.test.y, [2, 0, 1, 2])
  assert abs(int(ds.train.x[0].mean()) - 40) <= 2  # n01 is WNIDS[1]: value 40 (JPEG is lossy)


def test_malformed_folder_errors_name_the_part(tmp_path):
  root = _make(str(tmp_path))
  with open(os.path.join(root, "val", "val_annotations.txt"), "a") as f:
    f.write("val_9.JPEG\tn99\t0\t0\t63\t63\n")
  with pytest.raises(ValueError, match=r"val_annotations.txt line 5 .* wnid"):
    data.load_dataset(_cfg(root))
  os.remove(os.path.join(root, "val", "val_annotations.txt"))
  with pytest.raises(ValueError, match="val/val_annotations.txt is missing"):
    data.load_dataset(_cfg(root))
  with pytest.raises(FileNotFoundError, match="no such directory"):
    data.load_dataset(_cfg(str(tmp_path / "nowhere")))


def test_tfds_source_says_to_use_files():
  cfg = _cfg("")
  cfg.source = "tfds"
  with pytest.raises(ValueError, match="no Tiny ImageNet builder"):
    data.load_dataset(cfg)
