"""Every registry model against its PyTorch twin (`torch_models`, written as the released code):
the converted weights give the same logits and the same BatchNorm running statistics, the
conversion round-trips, our initialisation has PyTorch's distribution, and the convert command
brings a `.pt` / `.safetensors` / `.npz` over for the evaluate command while refusing a `.pt` that
pickles anything but tensors."""

import os
import pickle
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="cross-framework tests need PyTorch: pip install -e '.[crosscheck]'")

from regmix_jax import evaluate, models  # noqa: E402
from regmix_jax import config as config_lib  # noqa: E402
from regmix_jax.models import torch_weights  # noqa: E402
from crosscheck import torch_models  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# name -> (image size, extra kwargs); the WRN twice: a small one and the recipes' WRN-34-10.
ARCHITECTURES = {
    "small_cnn": (32, {"width": 8}),
    "resnet18": (32, {}),
    "lbgat_resnet18": (32, {}),
    "preact_resnet18": (32, {}),
    "preact_resnet18_rice": (32, {}),
    "preact_resnet18_fgsm_pgk": (64, {}),
    "wrn": (32, {"depth": 16, "width": 2}),
    "wrn34_10": (32, {}),
}


def _jax_model(name, num_classes=10, normalize=""):
  size, kwargs = ARCHITECTURES[name]
  net = models.get_model(name, num_classes, normalize=normalize, **kwargs)
  x = np.random.default_rng(0).uniform(size=(4, size, size, 3)).astype(np.float32)
  variables = net.init(jax.random.key(1), x, train=False)
  # Non-trivial running statistics: one train-mode pass.
  _, updates = net.apply(variables, x, train=True, mutable=["batch_stats"])
  return net, {"params": variables["params"], **updates}, x


def _twin(name, variables, num_classes=10, normalize=""):
  _, kwargs = ARCHITECTURES[name]
  net = torch_models.build(name, num_classes, normalize=normalize, **kwargs)
  state = {k: torch.from_numpy(np.array(v))
           for k, v in torch_weights.to_torch(variables["params"],
                                              variables["batch_stats"]).items()}
  result = net.load_state_dict(state, strict=not name.startswith("wrn"))
  if name.startswith("wrn"):  # the reference's unused sub_block1 only
    assert result.missing_keys and all(k.startswith("sub_block1.") for k in result.missing_keys)
    assert not result.unexpected_keys
  return net


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_converted_twin_gives_the_same_logits_and_running_statistics(name):
  net, variables, x = _jax_model(name, normalize="cifar10" if name == "preact_resnet18" else "")
  twin = _twin(name, variables, normalize="cifar10" if name == "preact_resnet18" else "")
  twin.eval()
  with torch.no_grad():
    want = twin(_nchw(x)).numpy()
  got = np.asarray(net.apply(variables, x, train=False))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # Train mode: batch statistics, and PyTorch's running-average update (unbiased variance).
  twin.train()
  with torch.no_grad():
    want_train = twin(_nchw(x)).numpy()
  got_train, updates = net.apply(variables, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(np.asarray(got_train), want_train, rtol=1e-4, atol=1e-4)
  converted = torch_weights.to_torch(variables["params"], updates["batch_stats"])
  twin_state = getattr(twin, "net", twin).state_dict()  # inside the normalisation wrapper
  for key, value in converted.items():
    if "running" in key:
      np.testing.assert_allclose(value, twin_state[key].numpy(), rtol=1e-5, atol=1e-6,
                                 err_msg=key)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_torch_state_dict_round_trips_and_torch_weights_come_in(name):
  _, kwargs = ARCHITECTURES[name]
  torch.manual_seed(0)
  twin = torch_models.build(name, 10, **kwargs)
  state = {k: v.numpy() for k, v in twin.state_dict().items()}
  params, batch_stats = torch_weights.from_torch(state, name, 10, **kwargs)
  back = torch_weights.to_torch(params, batch_stats)
  for key, value in state.items():
    if key.startswith("sub_block1.") or key.endswith("num_batches_tracked"):
      continue
    np.testing.assert_array_equal(back[key], value, err_msg=key)
  size = ARCHITECTURES[name][0]
  x = np.random.default_rng(2).uniform(size=(2, size, size, 3)).astype(np.float32)
  net = models.get_model(name, 10, **kwargs)
  twin.eval()
  with torch.no_grad():
    want = twin(_nchw(x)).numpy()
  got = net.apply({"params": params, "batch_stats": batch_stats}, x, train=False)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["small_cnn", "resnet18", "preact_resnet18_fgsm_pgk", "wrn"])
def test_initialisation_has_the_references_distribution(name):
  """Each conv / linear weight of a fresh model: PyTorch's default U(+-1/sqrt(fan_in)) (or, for
  the WideResNet's convs, N(0, sqrt(2 / (k * k * out)))), judged by the largest |w| against the
  bound and the std against the distribution's, beside a freshly built PyTorch twin."""
  size, kwargs = ARCHITECTURES[name]
  net = models.get_model(name, 100, **kwargs)
  variables = net.init(jax.random.key(3), np.zeros((1, size, size, 3), np.float32), train=False)
  ours = torch_weights.to_torch(variables["params"], variables["batch_stats"])
  torch.manual_seed(3)
  twin = torch_models.build(name, 100, **kwargs)
  if name.startswith("wrn"):  # TRADES' own initialisation (wideresnet.py:74-82)
    for m in twin.modules():
      if isinstance(m, torch.nn.Conv2d):
        n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
        m.weight.data.normal_(0, (2.0 / n) ** 0.5)
      elif isinstance(m, torch.nn.Linear):
        m.bias.data.zero_()
  reference = {k: v.numpy() for k, v in twin.state_dict().items()}
  checked = 0
  for key, value in ours.items():
    if not (key.endswith(".weight") or key.endswith(".bias")) or value.ndim == 1 and (
        key.replace(".bias", ".running_mean") in ours or key.replace(".weight", ".running_mean")
        in ours):
      continue  # BatchNorm scale / bias: 1 and 0 in both
    want = reference[key]
    assert value.shape == want.shape, key
    if value.size < 64:
      continue  # too few values to judge a spread
    np.testing.assert_allclose(value.std(), want.std(), rtol=0.12, err_msg=key)
    np.testing.assert_allclose(np.abs(value).max(), np.abs(want).max(), rtol=0.25, err_msg=key)
    checked += 1
  assert checked >= 4


def _save_pt(path, state):
  torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, path)


def test_convert_command_brings_a_pt_checkpoint_to_the_evaluate_command(tmp_path):
  _, variables, x = _jax_model("small_cnn")
  state = torch_weights.to_torch(variables["params"], variables["batch_stats"])
  # As DataParallel and a training script save it: `module.` prefix inside a wrapper.
  checkpoint = tmp_path / "model.pt"
  torch.save({"epoch": 3, "state_dict": {f"module.{k}": torch.from_numpy(np.ascontiguousarray(v))
                                         for k, v in state.items()}}, checkpoint)
  workdir = tmp_path / "run"
  result = subprocess.run(
      [sys.executable, "-m", "regmix_jax.convert", f"--checkpoint={checkpoint}",
       "--model=small_cnn", "--width=8", "--num_classes=10", f"--workdir={workdir}",
       "--data_source=synthetic"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "python -m regmix_jax.evaluate" in result.stdout
  config = config_lib.load_json(str(workdir / "config.json"))
  net, restored, step = evaluate.restore_state(str(workdir), config, 10, (32, 32, 3))
  assert step == 0
  got = net["target"].apply(restored.eval_variables("target"), x, train=False)
  np.testing.assert_allclose(np.asarray(got), np.asarray(
      net["target"].apply(variables, x, train=False)), rtol=1e-6, atol=1e-6)
  # The same weights as .safetensors (written by hand: the format needs no library) and .npz.
  npz = tmp_path / "model.npz"
  np.savez(npz, **state)
  assert set(torch_weights.load_state_dict_file(str(npz))) == set(state)
  safe = tmp_path / "model.safetensors"
  _write_safetensors(safe, state)
  loaded = torch_weights.load_state_dict_file(str(safe))
  for k, v in state.items():
    np.testing.assert_array_equal(loaded[k], v)


def _write_safetensors(path, state):
  import json  # pylint: disable=g-import-not-at-top  (only this helper)
  import struct  # pylint: disable=g-import-not-at-top  (only this helper)
  header, blobs, offset = {}, [], 0
  for name, value in state.items():
    value = np.ascontiguousarray(value)
    dtype = {"float32": "F32", "int64": "I64"}[str(value.dtype)]
    header[name] = {"dtype": dtype, "shape": list(value.shape),
                    "data_offsets": [offset, offset + value.nbytes]}
    blobs.append(value.tobytes())
    offset += value.nbytes
  raw = json.dumps(header).encode()
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def test_mismatched_model_lists_what_did_not_fit():
  _, variables, _ = _jax_model("small_cnn")
  state = torch_weights.to_torch(variables["params"], variables["batch_stats"])
  with pytest.raises(ValueError) as error:
    torch_weights.from_torch(state, "resnet18", 10)
  message = str(error.value)
  assert "missing" in message and "layer1.0.conv1.weight" in message
  assert "unexpected" in message and "conv3.weight" in message
  with pytest.raises(ValueError, match=r"wrong shape.*linear\.weight"):
    torch_weights.from_torch(state, "small_cnn", 100, width=8)


class _Payload:
  """Unpickling this runs `open(marker, "w")`: what a hostile checkpoint would do."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (open, (self.marker, "w"))


def test_a_pt_holding_a_pickled_object_is_refused_without_running_it(tmp_path):
  marker = tmp_path / "executed"
  hostile = tmp_path / "hostile.pt"
  torch.save({"state_dict": {"conv1.weight": torch.zeros(2, 3, 3, 3)}, "hook": _Payload(
      str(marker))}, hostile, pickle_module=pickle)
  assert zipfile.is_zipfile(hostile)
  with pytest.raises(ValueError, match="weights_only"):
    torch_weights.load_state_dict_file(str(hostile))
  assert not marker.exists()
  result = subprocess.run(
      [sys.executable, "-m", "regmix_jax.convert", f"--checkpoint={hostile}",
       "--model=small_cnn", "--num_classes=10", f"--workdir={tmp_path / 'run'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0 and "weights_only" in result.stderr
  assert not marker.exists()
