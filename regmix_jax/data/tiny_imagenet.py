"""Reading Tiny ImageNet (200 classes, 64x64) from the standard `tiny-imagenet-200/` folder.

TFDS has no Tiny ImageNet builder, so the official zip's layout is read directly:

  tiny-imagenet-200/
    wnids.txt                        200 WordNet ids, one per line (label = position after sorting)
    train/<wnid>/images/*.JPEG       500 training images per class
    val/images/*.JPEG                10000 validation images
    val/val_annotations.txt          `<file>\t<wnid>\t<x0>\t<y0>\t<x1>\t<y1>` per validation image

The validation set (labelled) is used as the test split, as in the FGSM-PGK and RegMix papers; the
official test images carry no labels and are not read. Grayscale images are converted to RGB.
Decoding the 110000 JPEGs takes about a minute; pass the folder or its parent as `data.dir`.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

IMAGE_SIZE = 64


def _root(path: str) -> str:
  nested = os.path.join(path, "tiny-imagenet-200")
  return nested if os.path.isdir(nested) else path


def _read_image(path: str) -> np.ndarray:
  try:
    with Image.open(path) as image:
      array = np.asarray(image.convert("RGB"), np.uint8)
  except (OSError, ValueError, SyntaxError) as e:  # PIL: unidentified, truncated, bad header
    raise ValueError(f"Tiny ImageNet image {path} is damaged ({type(e).__name__}: {e}): extract "
                     "the official tiny-imagenet-200.zip again.") from None
  if array.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
    raise ValueError(f"Tiny ImageNet image {path} is {array.shape[:2]}, expected 64x64.")
  return array


def _malformed(root: str, what: str) -> ValueError:
  return ValueError(
      f"{root} is not a Tiny ImageNet folder: {what}. Expected the layout of the official "
      "tiny-imagenet-200.zip (wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, "
      "val/val_annotations.txt); point `data.dir` at that folder or its parent.")


def load_tiny_imagenet_dir(path: str) -> dict[str, np.ndarray]:
  """`{"x_train", "y_train", "x_test", "y_test"}` (uint8 NHWC 64x64x3, int labels) from `path`.

  Raises FileNotFoundError when `path` does not exist and ValueError naming the missing or
  inconsistent part of a malformed folder."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"Config field `data.dir`: no such directory {path!r} (expected a "
                            "tiny-imagenet-200/ folder).")
  root = _root(path)
  wnids_file = os.path.join(root, "wnids.txt")
  if not os.path.isfile(wnids_file):
    raise _malformed(root, "wnids.txt is missing")
  with open(wnids_file) as f:
    wnids = sorted(line.strip() for line in f if line.strip())
  label_of = {w: i for i, w in enumerate(wnids)}

  x_train, y_train = [], []
  for wnid in wnids:
    folder = os.path.join(root, "train", wnid, "images")
    if not os.path.isdir(folder):
      raise _malformed(root, f"train/{wnid}/images/ is missing")
    for name in sorted(os.listdir(folder)):
      if name.lower().endswith((".jpeg", ".jpg", ".png")):
        x_train.append(_read_image(os.path.join(folder, name)))
        y_train.append(label_of[wnid])

  annotations = os.path.join(root, "val", "val_annotations.txt")
  if not os.path.isfile(annotations):
    raise _malformed(root, "val/val_annotations.txt is missing")
  x_test, y_test = [], []
  with open(annotations) as f:
    for line_no, line in enumerate(f, 1):
      fields = line.strip().split("\t")
      if not line.strip():
        continue
      if len(fields) < 2 or fields[1] not in label_of:
        raise _malformed(root, f"val/val_annotations.txt line {line_no} ({line.strip()!r}) does "
                         "not name an image and a wnid of wnids.txt")
      image = os.path.join(root, "val", "images", fields[0])
      if not os.path.isfile(image):
        raise _malformed(root, f"val/images/{fields[0]} (annotations line {line_no}) is missing")
      x_test.append(_read_image(image))
      y_test.append(label_of[fields[1]])
  if not x_train or not x_test:
    raise _malformed(root, "no training or no validation images were found")
  return {"x_train": np.stack(x_train), "y_train": np.asarray(y_train, np.int64),
          "x_test": np.stack(x_test), "y_test": np.asarray(y_test, np.int64)}
