"""Every number that enters the library is checked, and a damaged file is named in one line
(issue 34): method and evaluation radii, other config numbers, data files, PyTorch weights,
metrics.jsonl, a hand-edited config.json and the training command's --workdir."""

import json
import math
import os
import pickle
import re
import struct
import subprocess
import sys
import textwrap

import ml_collections
import numpy as np
import pytest

from regmix_jax import config as config_lib
from regmix_jax import data, methods, reporting
from regmix_jax.data import tiny_imagenet
from regmix_jax.models import torch_weights

import tiny_runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(ROOT, "configs", "quickstart.py")


def _method_config(name, **fields):
  c = config_lib.base_config()
  c.method = methods.method_config(name, **fields)
  return c


# --- Method radii, step sizes and the other numeric method fields ------------------------------


def test_every_numeric_method_field_has_a_range():
  for name, method in methods.METHODS.items():
    numeric = {k for k, v in method.defaults.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert numeric <= set(method.ranges), (name, sorted(numeric - set(method.ranges)))
    config_lib.validate(_method_config(name))  # the defaults lie in their ranges


RADIUS_FIELDS = [(name, field) for name, method in sorted(methods.METHODS.items())
                 for field in method.defaults if field in config_lib._RADII]


def test_radius_fields_cover_every_attacking_method():
  assert {name for name, _ in RADIUS_FIELDS} == set(methods.METHODS) - {"standard"}


@pytest.mark.parametrize("value", [-0.03, float("nan"), float("inf")])
@pytest.mark.parametrize("name,field", RADIUS_FIELDS)
def test_negative_or_non_finite_radius_refused_naming_the_field(name, field, value):
  with pytest.raises(ValueError, match=rf"`method\.{field}`"):
    config_lib.validate(_method_config(name, **{field: value}))


def test_negative_epsilon_names_the_bound_and_the_default():
  """The reporter's case: `--config.method.epsilon=-0.03` trained FGSM-RS."""
  with pytest.raises(ValueError, match=r"`method\.epsilon` must be > 0\.0, got -0\.03 \(the "
                                       r"default of method 'fgsm_rs': 0\.0313"):
    config_lib.validate(_method_config("fgsm_rs", epsilon=-0.03))


@pytest.mark.parametrize("name", [n for n in sorted(methods.METHODS) if n != "standard"])
def test_zero_radius_and_step_refused(name):
  for field in ("epsilon", "step_size"):
    with pytest.raises(ValueError, match=rf"`method\.{field}` must be > 0\.0, got 0"):
      config_lib.validate(_method_config(name, **{field: 0.0}))


@pytest.mark.parametrize("name,field", [("n_fgsm", "noise_radius"), ("trades", "init_std"),
                                        ("mart", "init_std")])
def test_zero_noise_accepted(name, field):
  config_lib.validate(_method_config(name, **{field: 0.0}))  # no noise: meaningful


@pytest.mark.parametrize("name,field,value,message", [
    ("mart", "num_steps", 0, r"`method\.num_steps` must be >= 1, got 0"),
    ("trades", "beta", -1.0, r"`method\.beta` must be >= 0\.0, got -1\.0"),
    ("mart", "beta", -1.0, r"`method\.beta` must be >= 0\.0"),
    ("trades", "init_std", -0.001, r"`method\.init_std` must be >= 0\.0"),
    ("trades", "init_std", 2.0, r"`method\.init_std` = 2 is larger than the whole \[0, 1\]"),
    ("n_fgsm", "noise_radius", -0.1, r"`method\.noise_radius` must be >= 0\.0"),
])
def test_other_method_numbers_out_of_range(name, field, value, message):
  with pytest.raises(ValueError, match=message):
    config_lib.validate(_method_config(name, **{field: value}))


# --- Generic config numbers --------------------------------------------------------------------


@pytest.mark.parametrize("path,value,message", [
    # `evaluate` scales the step by epsilon / eval.epsilon: 0 crashed every later evaluation.
    ("eval.epsilon", 0.0, r"`eval\.epsilon` must be positive, got 0\.0 \(its default: 0\.0313"),
    ("eval.epsilon", -0.01, r"`eval\.epsilon` must be positive"),
    ("eval.step_size", 0.0, r"`eval\.step_size` must be positive, got 0\.0 \(its default: "
                            r"0\.0078"),
    ("eval.num_examples", -1, r"`eval\.num_examples` must be >= 0, got -1 \(its default: 1000"),
    ("optim.momentum", 1.5, r"`optim\.momentum` must be in \[0\.0, 1\.0\], got 1\.5"),
    ("optim.gamma", -0.1, r"`optim\.gamma` must be >= 0\.0"),
    ("optim.grad_clip_norm", -1.0, r"`optim\.grad_clip_norm` must be >= 0\.0"),
    ("optim.rates", (0.1, -0.1), r"`optim\.rates` must hold numbers >= 0, got \(0\.1, -0\.1\)"),
    ("optim.milestones", (-1, 5), r"`optim\.milestones` must hold numbers >= 0"),
    ("cpu_devices", -2, r"`cpu_devices` must be >= 0, got -2"),
    ("cpu_collective_timeout_s", 0, r"`cpu_collective_timeout_s` must be positive"),
    ("model.width", -1, r"`model\.width` must be >= 0"),
    ("guide_model.depth", -1, r"`guide_model\.depth` must be >= 0"),
    ("data.synthetic.num_test", 0, r"`data\.synthetic\.num_test` must be positive"),
    ("data.synthetic.num_classes", 1, r"`data\.synthetic\.num_classes` must be >= 2"),
])
def test_generic_numbers_out_of_range_name_the_field(path, value, message):
  c = config_lib.base_config()
  c.model.name, c.guide_model.name = "small_cnn", "wrn"  # models that take width and depth
  *groups, field = path.split(".")
  group = c
  for name in groups:
    group = group[name]
  group[field] = value
  with pytest.raises(ValueError, match=message):
    config_lib.validate(c)


# --- Data files --------------------------------------------------------------------------------


def _files_config(path):
  """`config.data` reading CIFAR-10 from local files: a directory or an .npz."""
  return ml_collections.ConfigDict(dict(source="files", name="cifar10", dir=str(path),
                                        download=False, val_size=0, seed=0))


def _npz_config(tmp_path, **change):
  return tiny_runs.cifar_npz_config(tmp_path, **change)


@pytest.mark.parametrize("change,message", [
    ({"y_train": np.where(np.arange(20) == 3, 1.5, np.arange(20) % 10)},
     r"train: labels must be whole class indices, got 1\.5 at index 3 \(1 such labels\)\. "
     r"Save the labels as integers"),
    ({"y_test": np.where(np.arange(10) == 0, np.nan, np.arange(10) % 10)},
     r"test: labels must be whole class indices, got nan at index 0"),
    ({"y_train": np.array(["cat"] * 20)}, r"train: labels must be integers .*got <U3"),
    ({"x_test": np.full((10, 32, 32, 3), np.nan, np.float32)},
     r"test: images hold 30720 NaN or infinite values"),
    ({"x_test": np.zeros((0, 32, 32, 3), np.uint8), "y_test": np.zeros((0,), np.int64)},
     r"data\.npz\) test: the split has no images .*Give it at least one image"),
    ({"x_train": np.zeros((0, 32, 32, 3), np.uint8), "y_train": np.zeros((0,), np.int64)},
     r"data\.npz\) train: the split has no images"),
])
def test_bad_labels_images_and_empty_splits_refused(tmp_path, change, message):
  with pytest.raises(ValueError, match=message):
    data.load_dataset(_npz_config(tmp_path, **change))


def test_whole_float_labels_accepted(tmp_path):
  ds = data.load_dataset(_npz_config(tmp_path, y_train=(np.arange(20) % 10).astype(np.float32)))
  assert ds.train.y.dtype == np.int32
  np.testing.assert_array_equal(ds.train.y, np.arange(20) % 10)


def test_unknown_dataset_with_nan_labels_names_the_labels_not_a_cast(tmp_path):
  cfg = _npz_config(tmp_path, y_train=np.full(20, np.nan))
  cfg.name = "other"  # the class count would come from the labels
  with pytest.raises(ValueError, match=r"train: labels must be whole class indices, got nan"):
    data.load_dataset(cfg)


def test_truncated_or_garbled_npz_is_named_damaged(tmp_path):
  cfg = _npz_config(tmp_path)
  content = open(cfg.dir, "rb").read()
  middle = len(content) // 2  # inside x_train's data: the archive opens, the member fails its CRC
  garbled = content[:middle] + bytes(b ^ 0xFF for b in content[middle:middle + 16]) + content[
      middle + 16:]
  for damaged in (content[:middle], content[:len(content) - 30], content[:10], garbled):
    with open(cfg.dir, "wb") as f:
      f.write(damaged)
    with pytest.raises(ValueError, match=rf"{re.escape(cfg.dir)} is damaged: .*Extract or copy "
                                         r"the file again"):
      data.load_dataset(cfg)


def test_npy_under_an_npz_name_is_named(tmp_path):
  path = tmp_path / "data.npz"
  with open(path, "wb") as f:
    np.save(f, np.zeros(3))
  with pytest.raises(ValueError, match=r"data\.npz holds one array, not an \.npz .*np\.savez"):
    data.load_dataset(_files_config(path))


def _cifar10_python(root):
  folder = root / "cifar-10-batches-py"
  folder.mkdir()
  for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
    batch = {b"data": np.full((4, 3072), i, np.uint8), b"labels": [0, 1, 2, 3]}
    with open(folder / name, "wb") as f:
      pickle.dump(batch, f, protocol=2)
  return folder


def test_truncated_cifar_python_batch_is_named_damaged(tmp_path):
  folder = _cifar10_python(tmp_path)
  path = folder / "data_batch_3"
  path.write_bytes(path.read_bytes()[:100])
  with pytest.raises(ValueError, match=r"data_batch_3 is damaged: not a complete pickle"):
    data.load_dataset(_files_config(tmp_path))


def test_truncated_cifar_binary_batch_is_named_damaged(tmp_path):
  folder = tmp_path / "cifar-10-batches-bin"
  folder.mkdir()
  for name in [f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]:
    (folder / name).write_bytes(bytes(2 * 3073))
  (folder / "test_batch.bin").write_bytes(bytes(3073 + 100))
  with pytest.raises(ValueError, match=r"test_batch\.bin is damaged: 3173 bytes, not a whole "
                                       r"number of 3073-byte records"):
    data.load_dataset(_files_config(tmp_path))


def test_damaged_tiny_imagenet_image_is_named(tmp_path):
  path = tmp_path / "val_0.JPEG"
  path.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
  with pytest.raises(ValueError, match=r"val_0\.JPEG is damaged .*extract the official"):
    tiny_imagenet._read_image(str(path))


# --- PyTorch weights ---------------------------------------------------------------------------


def _not_a_checkpoint(path, rest):
  """The message `torch_weights` gives for a damaged file `path`, then the regex `rest`."""
  return rf"{re.escape(str(path))} is damaged or not a checkpoint: {rest}"


def _safetensors(path, tensors, header_length=None):
  header, data, offset = {}, b"", 0
  for name, array in tensors.items():
    raw = np.ascontiguousarray(array, np.float32).tobytes()
    header[name] = {"dtype": "F32", "shape": list(array.shape),
                    "data_offsets": [offset, offset + len(raw)]}
    data, offset = data + raw, offset + len(raw)
  text = json.dumps(header).encode()
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(text) if header_length is None else header_length))
    f.write(text + data)


def test_good_safetensors_still_read(tmp_path):
  path = tmp_path / "w.safetensors"
  _safetensors(path, {"fc.weight": np.arange(6.0).reshape(2, 3), "fc.bias": np.ones(2)})
  out = torch_weights.load_state_dict_file(str(path))
  np.testing.assert_array_equal(out["fc.weight"], np.arange(6.0).reshape(2, 3))


def test_truncated_safetensors_is_named_damaged(tmp_path):
  path = tmp_path / "w.safetensors"
  _safetensors(path, {"fc.weight": np.ones((4, 4))})
  content = path.read_bytes()
  for size, message in ((len(content) - 8, r"tensor 'fc\.weight'.*within the file's 56 data "
                                           r"bytes"),
                        (60, r"its header claims \d+ bytes, the file holds 52"),
                        (4, r"4 bytes, shorter than the 8-byte header length")):
    path.write_bytes(content[:size])
    with pytest.raises(ValueError, match=_not_a_checkpoint(path, message)):
      torch_weights.load_state_dict_file(str(path))


def test_safetensors_header_of_2_62_bytes_refused_before_reading(tmp_path):
  path = tmp_path / "w.safetensors"
  _safetensors(path, {"fc.weight": np.ones(3)}, header_length=2 ** 62)
  with pytest.raises(ValueError, match=_not_a_checkpoint(path, f"its header claims {2 ** 62} "
                                                             "bytes")):
    torch_weights.load_state_dict_file(str(path))


@pytest.mark.parametrize("header,message", [
    (b"[1, 2]", r"its header is not a JSON object"),
    (b"{not json", r"its header is not JSON"),
    (json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}).encode(),
     r"tensor 'w' of F32 \[4\] spans 8 bytes"),
    (json.dumps({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 8]}}).encode(),
     r"tensor 'w': .* is no dtype, shape and data_offsets"),
    (json.dumps({"w": [1, 2]}).encode(), r"tensor 'w': \[1, 2\] is no dtype"),
])
def test_safetensors_bad_header_is_named_damaged(tmp_path, header, message):
  path = tmp_path / "w.safetensors"
  path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
  with pytest.raises(ValueError, match=_not_a_checkpoint(path, message)):
    torch_weights.load_state_dict_file(str(path))


def test_damaged_weights_npz_is_named(tmp_path):
  path = tmp_path / "w.npz"
  np.savez(path, **{"fc.weight": np.ones((8, 8)), "fc.bias": np.ones(8)})
  content = path.read_bytes()
  middle = len(content) // 2
  garbled = content[:middle] + bytes(b ^ 0xFF for b in content[middle:middle + 16]) + content[
      middle + 16:]
  for damaged in (content[:middle], b"garbage" * 10, garbled):
    path.write_bytes(damaged)
    with pytest.raises(ValueError, match=_not_a_checkpoint(path, ".*Save the state_dict again")):
      torch_weights.load_state_dict_file(str(path))
  with open(path, "wb") as f:
    np.save(f, np.ones(3))
  with pytest.raises(ValueError, match=_not_a_checkpoint(
      path, r"it holds one array, not an \.npz archive")):
    torch_weights.load_state_dict_file(str(path))


# --- metrics.jsonl -----------------------------------------------------------------------------


@pytest.mark.parametrize("lines,line_no,problem", [
    ([b'{"epoch": 0, "los', b'{"epoch": 1}'], 1, "is not JSON"),
    ([b'{"epoch": 0}', b"\xff\xfe garbage", b'{"epoch": 2}'], 2, "is not JSON"),
    ([b'{"epoch": 0}', b"[1, 2]"], 2, "is not a record with an integer `epoch`"),
    ([b'{"loss": 1.0}'], 1, "is not a record with an integer `epoch`"),
])
def test_damaged_metrics_line_names_file_line_and_fix(tmp_path, lines, line_no, problem):
  path = tmp_path / "metrics.jsonl"
  path.write_bytes(b"\n".join(lines) + b"\n")
  with pytest.raises(ValueError, match=(
      rf"{re.escape(str(path))} line {line_no} {re.escape(problem)}.*the file is damaged\. Move "
      rf"it aside \(e\.g\. `mv {re.escape(str(path))} {re.escape(str(path))}\.damaged`\).*its "
      r"checkpoints are unaffected")):
    reporting.MetricsLog(str(path))


def test_only_a_trailing_partial_line_is_dropped(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_bytes(b'{"epoch": 0}\n{"epoch": 1}\n{"epo')
  log = reporting.MetricsLog(str(path))
  assert log.epochs == {0, 1}
  assert path.read_bytes() == b'{"epoch": 0}\n{"epoch": 1}\n'


# --- A hand-edited config.json -----------------------------------------------------------------


@pytest.mark.parametrize("saved,message", [
    ([1, 2], r"holds a JSON list, not a config \(a JSON object of fields"),
    ("config", r"holds a JSON str, not a config"),
    ({"method": 3}, r"config field `method` must be a group of fields \(a JSON object\), got 3"),
    ({"data": "cifar10"}, r"config field `data` must be a group of fields .*got 'cifar10'"),
    ({"data": {"synthetic": [1]}}, r"config field `data\.synthetic` must be a group of fields"),
    ({"method": {"name": 3}}, r"config field `method\.name` = 3 names no training method "
                              r"\(known: d2r, "),
    ({"method": {"name": "nope"}}, r"`method\.name` = 'nope' names no training method"),
    ({"num_epochs": "ten"}, r"config field `num_epochs` must be int \(like 110\), got str 'ten'"),
    ({"optim": {"momentum": {"a": 1}}}, r"config field `optim\.momentum` must be float"),
    ({"num_epochs": -1}, r"Config field `num_epochs` must be positive, got -1"),
    ({"num_epochs": 1.5}, r"config field `num_epochs` must be int \(like 110\), got float 1\.5"),
])
def test_misshapen_config_json_names_file_and_field(tmp_path, saved, message):
  path = tmp_path / "config.json"
  path.write_text(json.dumps(saved))
  with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:? .*{message}"):
    config_lib.load_json(str(path))


# --- The training command's --workdir ----------------------------------------------------------

ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def test_workdir_that_is_a_file_is_one_line(tmp_path):
  """Through the command line: it fails before data, models or compiles."""
  workdir = tmp_path / "run"
  workdir.write_text("")
  result = subprocess.run([sys.executable, "-m", "regmix_jax.main", f"--config={QUICKSTART}",
                           f"--workdir={workdir}"], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  assert re.fullmatch(rf"regmix_jax: \w+: --workdir={re.escape(str(workdir))} is a file, not a "
                      r"directory: pass a directory.*", result.stderr.strip().splitlines()[-1])


# Runs main() in one child for several workdirs. A read-only directory needs a user other than
# root: for root the child's os.access answers as the kernel would for another user. The last
# cases replace `train.train_and_evaluate` by one raising what a run meets when its workdir, or
# a path in it, turns unusable after the start (another process's doing, a full quota, ...).
_CHILD = textwrap.dedent("""
    import json, os, sys
    from regmix_jax import main, train
    cases = json.loads(sys.argv[1])
    real_access = os.access
    def access(path, mode, **kw):
      if os.path.abspath(path) == cases["read_only"] and mode & os.W_OK:
        return False
      return real_access(path, mode, **kw)
    if os.geteuid() == 0:
      os.access = access
    main.FLAGS(["regmix_jax.main", "--config=" + cases["config"], "--workdir=."])
    out = {}
    for name, workdir, raised in cases["runs"]:
      if raised:
        def raise_from_training(config, workdir, raised=raised):
          kind, number, path = raised
          raise getattr(__builtins__, kind, OSError)(number, os.strerror(number), path)
        train.train_and_evaluate = raise_from_training
      main.FLAGS.workdir = workdir
      try:
        main.main(["regmix_jax.main"])
      except SystemExit as e:
        out[name] = str(e.code)
    print(json.dumps(out))
""")


def test_workdir_unusable_before_or_during_the_run_is_one_line(tmp_path):
  (tmp_path / "file").write_text("")
  read_only = tmp_path / "read_only"
  read_only.mkdir()
  read_only.chmod(0o555)
  run = str(tmp_path / "run")
  in_run = os.path.join(run, "checkpoints")
  runs = [("under_file", str(tmp_path / "file" / "run"), None),
          ("read_only", str(read_only / "run"), None),
          ("permission", run, ("PermissionError", 13, in_run)),
          ("not_a_directory", run, ("NotADirectoryError", 20, in_run)),
          ("exists", run, ("FileExistsError", 17, in_run)),
          ("is_a_directory", run, ("IsADirectoryError", 21, os.path.join(run, "final_eval.json"))),
          ("read_only_fs", run, ("OSError", 30, run)),
          ("parent", run, ("PermissionError", 13, str(tmp_path))),
          ("elsewhere", run, ("PermissionError", 13, "/elsewhere/cache"))]
  cases = {"config": QUICKSTART, "read_only": str(read_only), "runs": runs}
  try:
    result = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(cases)], cwd=ROOT,
                            env=ENV, capture_output=True, text=True, timeout=120)
  finally:
    read_only.chmod(0o755)
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert sorted(out) == sorted(name for name, _, _ in runs)
  assert all("\n" not in message and message.startswith("regmix_jax: ")
             for message in out.values()), out
  # Refused at the start (`workdir.check_writable`, before data, models or compiles).
  assert re.match(rf"regmix_jax: \w+: --workdir={re.escape(runs[0][1])} lies under "
                  rf"{re.escape(str(tmp_path / 'file'))}, which is a file: pass ",
                  out["under_file"])
  assert re.match(rf"regmix_jax: \w+: --workdir={re.escape(runs[1][1])}: "
                  rf"{re.escape(str(read_only))} is not writable.*: pass ", out["read_only"])
  # Met during the run: the workdir, the path and the fix.
  inside = f"Fix: move {in_run} aside (or make it writable), or pass another --workdir."
  assert out["permission"] == (f"regmix_jax: --workdir={run} cannot hold the run: Permission "
                               f"denied ({in_run}). {inside}")
  assert out["not_a_directory"] == (f"regmix_jax: --workdir={run} cannot hold the run: Not a "
                                    f"directory ({in_run}). {inside}")
  assert out["exists"] == (f"regmix_jax: --workdir={run} cannot hold the run: File exists "
                           f"({in_run}). {inside}")
  assert out["is_a_directory"].startswith(f"regmix_jax: --workdir={run} cannot hold the run: Is a "
                                          f"directory ({run}/final_eval.json). Fix: move ")
  top = "Fix: pass a --workdir that is a directory you can write, or a new path under one."
  assert out["read_only_fs"] == (f"regmix_jax: --workdir={run} cannot hold the run: Read-only "
                                 f"file system ({run}). {top}")
  assert out["parent"] == (f"regmix_jax: --workdir={run} cannot hold the run: Permission denied "
                           f"({tmp_path}). {top}")
  assert out["elsewhere"] == ("regmix_jax: PermissionError: [Errno 13] Permission denied: "
                              "'/elsewhere/cache'")
