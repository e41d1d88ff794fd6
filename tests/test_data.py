"""Tests of regmix_jax.data: sources (files, npz, tfds, synthetic), loaders and augmentation."""

import importlib
import os
import pickle

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from regmix_jax import data

import tiny_runs

SUBSET = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10_subset.npz")


def make_cfg(**kw):
  c = ml_collections.ConfigDict(dict(source="files", name="cifar10", dir="", download=False,
                                     val_size=0, seed=0))
  c.synthetic = ml_collections.ConfigDict(
      dict(num_train=200, num_test=50, image_size=32, num_classes=10, seed=0))
  c.update(kw)
  return c


def fake_chw(n, seed):
  return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def to_hwc(chw):
  return chw.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def dump(path, obj):
  with open(path, "wb") as f:
    pickle.dump(obj, f, protocol=2)


def write_cifar10_py(root, n=6):
  d = root / "cifar-10-batches-py"
  d.mkdir()
  xs, ys = [], []
  for i, fname in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
    x, y = fake_chw(n, i), [(i + j) % 10 for j in range(n)]
    dump(d / fname, {b"data": x, b"labels": y, b"batch_label": b"batch",
                     b"filenames": [b"f%d.png" % j for j in range(n)]})
    xs.append(x), ys.append(y)
  return xs, ys


def test_cifar10_python_batches(tmp_path):
  xs, ys = write_cifar10_py(tmp_path)
  ds = data.load_dataset(make_cfg(dir=str(tmp_path)))
  assert ds.num_classes == 10 and ds.image_shape == (32, 32, 3) and ds.val is None
  assert ds.train.x.dtype == np.uint8 and ds.train.y.dtype == np.int32
  np.testing.assert_array_equal(ds.train.x, to_hwc(np.concatenate(xs[:5])))
  np.testing.assert_array_equal(ds.train.y, np.concatenate(ys[:5]))
  np.testing.assert_array_equal(ds.test.x, to_hwc(xs[5]))
  # Pixel (row 1, col 2) of channel G (1) of image 0 sits at 1*1024 + 1*32 + 2 in CHW order.
  assert ds.train.x[0, 1, 2, 1] == xs[0][0, 1024 + 32 + 2]


def test_cifar_binary_batches(tmp_path):
  d = tmp_path / "any-name"  # any sub-folder is searched
  d.mkdir()
  xs, ys = [], []
  for i, fname in enumerate([f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]):
    x, y = fake_chw(4, i), (np.arange(4, dtype=np.uint8) + i) % 10
    np.concatenate([y[:, None], x], axis=1).tofile(d / fname)
    xs.append(x), ys.append(y)
  ds = data.load_dataset(make_cfg(dir=str(tmp_path)))
  np.testing.assert_array_equal(ds.train.x, to_hwc(np.concatenate(xs[:5])))
  np.testing.assert_array_equal(ds.train.y, np.concatenate(ys[:5]))
  np.testing.assert_array_equal(ds.test.y, ys[5])
  # CIFAR-100 binary: coarse byte then fine byte.
  d = tmp_path / "cifar-100-binary"
  d.mkdir()
  for fname, seed in (("train.bin", 0), ("test.bin", 1)):
    x = fake_chw(5, seed)
    np.concatenate([np.full((5, 1), 7, np.uint8), np.arange(90, 95, dtype=np.uint8)[:, None], x],
                   axis=1).tofile(d / fname)
  ds = data.load_dataset(make_cfg(name="cifar100", dir=str(tmp_path)))
  assert ds.num_classes == 100 and list(ds.test.y) == [90, 91, 92, 93, 94]
  np.testing.assert_array_equal(ds.test.x, to_hwc(fake_chw(5, 1)))


def test_cifar100_python(tmp_path):
  d = tmp_path  # the batches directly in data.dir
  for fname, seed in (("train", 0), ("test", 1)):
    dump(d / fname, {b"data": fake_chw(5, seed), b"fine_labels": [99, 0, 50, 3, 4],
                     b"coarse_labels": [1] * 5, b"filenames": [b"x"] * 5})
  ds = data.load_dataset(make_cfg(name="cifar100", dir=str(tmp_path)))
  assert ds.num_classes == 100 and list(ds.train.y) == [99, 0, 50, 3, 4]
  np.testing.assert_array_equal(ds.train.x, to_hwc(fake_chw(5, 0)))


class Evil:
  def __reduce__(self):
    return (os.system, ("touch /tmp/regmix_pwned_test",))


def test_malicious_pickle_refused(tmp_path):
  write_cifar10_py(tmp_path)
  target = "/tmp/regmix_pwned_test"
  if os.path.exists(target):
    os.remove(target)
  dump(tmp_path / "cifar-10-batches-py" / "data_batch_1", {b"data": Evil()})
  with pytest.raises(pickle.UnpicklingError, match="system.*data_batch_1"):
    data.load_dataset(make_cfg(dir=str(tmp_path)))
  assert not os.path.exists(target)


def test_missing_files_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
    data.load_dataset(make_cfg(dir=str(tmp_path)))
  with pytest.raises(FileNotFoundError, match="data.dir"):
    data.load_dataset(make_cfg(dir=str(tmp_path / "nope")))


def test_npz_and_bad_layout(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
  y = np.arange(20) % 4
  np.savez(tmp_path / "ok.npz", x_train=x, y_train=y, x_test=x[:5], y_test=y[:5])
  ds = data.load_dataset(make_cfg(name="other", dir=str(tmp_path / "ok.npz")))
  assert ds.num_classes == 4 and ds.train.y.dtype == np.int32
  np.testing.assert_array_equal(ds.train.x, x)
  assert data.load_dataset(make_cfg(dir=str(tmp_path / "ok.npz"))).num_classes == 10
  xc = x.transpose(0, 3, 1, 2)
  np.savez(tmp_path / "nchw.npz", x_train=xc, y_train=y, x_test=xc[:5], y_test=y[:5])
  with pytest.raises(ValueError, match=r"NCHW"):
    data.load_dataset(make_cfg(dir=str(tmp_path / "nchw.npz")))
  with pytest.raises(ValueError, match="data.source"):
    data.load_dataset(make_cfg(source="imagenet"))


@pytest.mark.skipif(not os.path.exists(SUBSET), reason="no ../shared/data/cifar10_subset.npz")
def test_real_subset():
  ds = data.load_dataset(make_cfg(dir=SUBSET))
  assert (len(ds.train.y), len(ds.test.y), ds.num_classes) == (5085, 1017, 10)
  assert list(ds.test.y[:10]) == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]


def test_val_split():
  cfg = make_cfg(source="synthetic", val_size=30, seed=3)
  full = data.load_dataset(make_cfg(source="synthetic"))
  a, b = data.load_dataset(cfg), data.load_dataset(cfg)
  assert len(a.val.y) == 30 and len(a.train.y) == 170 and len(a.test.y) == 50
  np.testing.assert_array_equal(a.val.x, b.val.x)
  np.testing.assert_array_equal(a.test.x, full.test.x)
  flat = lambda s: {row.tobytes() for row in s.x}
  assert not flat(a.val) & flat(a.train) and flat(a.val) | flat(a.train) == flat(full.train)
  with pytest.raises(ValueError, match="data.val_size"):
    data.load_dataset(make_cfg(source="synthetic", val_size=200))


def test_synthetic():
  a, b = data.synthetic(300, 60, seed=1), data.synthetic(300, 60, seed=1)
  np.testing.assert_array_equal(a.train.x, b.train.x)
  assert not np.array_equal(a.train.x, data.synthetic(300, 60, seed=2).train.x)
  assert a.train.x.dtype == np.uint8 and a.train.x.shape == (300, 32, 32, 3)
  assert (np.bincount(a.train.y) == 30).all()
  means = np.stack([a.train.x[a.train.y == c].astype(float).mean(0) for c in range(10)])
  dist = np.sqrt(((means[:, None] - means[None]) ** 2).mean(axis=(2, 3, 4)))
  assert dist[~np.eye(10, dtype=bool)].min() > 15  # in 0-255 units; noise std ~20


def test_epoch_order():
  idx = np.arange(3, 50, 4)
  o = data.epoch_order(1, 2, 3, idx)
  np.testing.assert_array_equal(o, data.epoch_order(1, 2, 3, idx))
  assert sorted(o) == list(idx) and not np.array_equal(o, data.epoch_order(1, 3, 3, idx))


def small_split(n=103):
  x = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
  return data.Split(x=x, y=(np.arange(n) % 7).astype(np.int32))


def test_train_loader():
  split = small_split()
  kw = dict(batch_size=8, num_shards=4, seed=5)
  full = data.TrainLoader(split, shard_ids=[0, 1, 2, 3], **kw)
  assert full.steps_per_epoch == (103 // 4) // 2
  batches = list(full.epoch(1))
  assert len(batches) == full.steps_per_epoch
  b0 = batches[0]
  assert b0["image"].shape == (8, 4, 4, 3) and b0["image"].dtype == np.uint8
  assert b0["label"].dtype == np.int32 and b0["index"].dtype == np.int32 and b0["mask"].all()
  seen = np.concatenate([b["index"] for b in batches])
  assert len(set(seen)) == len(seen)
  for b in batches:  # index maps back to the example; rows [2d, 2d+2) come from shard d
    np.testing.assert_array_equal(b["image"][:, 0, 0, 0], b["index"])
    np.testing.assert_array_equal(b["label"], split.y[b["index"]])
    np.testing.assert_array_equal(b["index"] % 4, np.repeat(np.arange(4), 2))
  lo, hi = (list(data.TrainLoader(split, shard_ids=s, **kw).epoch(1)) for s in ([0, 1], [2, 3]))
  for f, a, b in zip(batches, lo, hi):
    for k in f:
      np.testing.assert_array_equal(f[k], np.concatenate([a[k], b[k]]))
  tail = list(full.epoch(1, start_step=5))
  assert len(tail) == len(batches) - 5
  for f, t in zip(batches[5:], tail):
    np.testing.assert_array_equal(f["index"], t["index"])
  assert not np.array_equal(seen, np.concatenate([b["index"] for b in full.epoch(2)]))
  with pytest.raises(ValueError, match="data.batch_size"):
    data.TrainLoader(split, batch_size=6, num_shards=4, shard_ids=[0], seed=0)


@pytest.mark.parametrize("num_examples", [0, 50])
def test_eval_batches(num_examples):
  split, bs, procs = small_split(), 16, 2
  n = num_examples or 103
  per_proc = [list(data.eval_batches(split, batch_size=bs, process_index=p, process_count=procs,
                                     num_examples=num_examples)) for p in range(procs)]
  assert len(per_proc[0]) == data.num_eval_batches(n, bs) == -(-n // bs)
  got = []
  for batches in per_proc:
    for b in batches:
      assert b["image"].shape == (bs // procs, 4, 4, 3) and b["label"].shape == (bs // procs,)
      m = b["mask"]
      assert (b["index"][~m] == -1).all() and (b["label"][~m] == 0).all()
      assert (b["image"][~m] == 0).all()
      np.testing.assert_array_equal(b["label"][m], split.y[b["index"][m]])
      got.extend(b["index"][m])
  assert sorted(got) == list(range(n))


def test_augment():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(0.1, 1, (16, 8, 8, 3)), jnp.float32)
  keys = jax.random.split(jax.random.key(0), 16)
  out = np.asarray(jax.jit(data.augment)(x, keys))
  assert out.shape == x.shape
  offsets, flips = set(), set()
  for img, o in zip(np.asarray(x), out):
    found = [(dy, dx, f) for f in (0, 1) for dy in range(9) for dx in range(9)
             if np.array_equal(np.pad(img[:, ::-1] if f else img, ((4, 4), (4, 4), (0, 0)))
                               [dy:dy + 8, dx:dx + 8], o)]
    assert found, "output is not a window of the padded (flipped) input"
    offsets.add(found[0][:2]), flips.add(found[0][2])
  assert len(offsets) > 4 and flips == {0, 1}
  np.testing.assert_array_equal(out, np.asarray(data.augment(x, keys)))
  np.testing.assert_array_equal(np.asarray(data.augment(x, keys, pad=0, flip=False)), x)


def test_tfds_mock():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
    ds = data.load_dataset(make_cfg(source="tfds", name="cifar10"))
  assert ds.train.x.shape == (6, 32, 32, 3) and ds.train.x.dtype == np.uint8
  assert ds.test.y.shape == (6,) and ds.test.y.dtype == np.int32 and ds.num_classes == 10
  with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
    ds = data.load_dataset(make_cfg(source="tfds", name="cifar100", val_size=1))
  assert ds.num_classes == 100 and len(ds.train.y) == 3 and len(ds.val.y) == 1


def test_tfds_error(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  cfg = make_cfg(source="tfds", dir=str(tmp_path), download=False)
  with pytest.raises((FileNotFoundError, RuntimeError)) as e:
    data.load_dataset(cfg)
  msg = str(e.value)
  for part in ("cifar10", str(tmp_path), "tfds build cifar10 --file_format=array_record",
               "--config.data.source=files"):
    assert part in msg


def test_reflect_padding_and_rotation_match_their_references():
  """`pad_mode="reflect"` crops from the mirror-padded image (np.pad(mode="reflect"), Rice et
  al.'s utils.py:26-27); `rotate_degrees` rotates as PIL's Image.rotate with nearest neighbour
  (torchvision's RandomRotation on PIL images)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top  (only this test)
  # The module (the package exports its `augment` function under the same name).
  augment_lib = importlib.import_module("regmix_jax.data.augment")
  rng_np = np.random.default_rng(0)
  images = rng_np.integers(0, 256, (6, 8, 8, 3)).astype(np.float32)
  keys = jax.vmap(jax.random.key)(jnp.arange(6))
  out = np.asarray(data.augment(images, keys, pad=4, flip=False, pad_mode="reflect"))
  for image, key, got in zip(images, keys, out):
    k_y, k_x, _ = jax.random.split(key, 3)
    oy, ox = int(jax.random.randint(k_y, (), 0, 9)), int(jax.random.randint(k_x, (), 0, 9))
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)), mode="reflect")
    np.testing.assert_array_equal(got, padded[oy:oy + 8, ox:ox + 8])
  picture = rng_np.integers(0, 256, (32, 32, 3), dtype=np.uint8)
  for angle in (-15.0, 7.5, 15.0):
    ours = np.asarray(augment_lib._rotate_nearest(jnp.asarray(picture), angle))  # pylint: disable=protected-access
    theirs = np.asarray(Image.fromarray(picture).rotate(angle, resample=Image.NEAREST))
    assert (ours == theirs).all(-1).mean() > 0.98, angle  # ties on pixel edges may round apart


def _npz(tmp_path, **arrays):
  return tiny_runs.cifar_npz_config(tmp_path, **arrays)


@pytest.mark.parametrize("change,message", [
    ({"x_train": np.random.default_rng(1).uniform(size=(20, 32, 32, 3)).astype(np.float32)},
     r"uint8 0-255, got float32 with values in \[.*\]\. Convert them: \(x \* 255\)\.round\(\)"),
    ({"x_test": np.full((10, 32, 32, 3), 300.0)},
     r"uint8 0-255, got float64 with values in \[300, 300\].*rescale"),
    ({"y_train": np.arange(20) % 11}, r"labels must be in \[0, 10\), got \[0, 10\]"),
    ({"y_test": np.arange(10) - 1}, r"labels must be in \[0, 10\), got \[-1, 8\]"),
    ({"y_test": None}, r"lacks arrays \['y_test'\]"),
])
def test_bad_npz_contents_name_the_problem_and_the_fix(tmp_path, change, message):
  with pytest.raises(ValueError, match=message):
    data.load_dataset(_npz(tmp_path, **change))
