"""Model registry tests: exact PyTorch parameter counts, shapes, BatchNorm behaviour, errors.

The big models are only traced (jax.eval_shape), so nothing real is computed for them.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regmix_jax import models

# Parameter counts of the PyTorch reference models with 10 classes (sum of p.numel()).
PYTORCH_PARAM_COUNTS = {
    # kuangliu/pytorch-cifar ResNet18().
    "resnet18": 11_173_962,
    # LBGAT / D2R guide: ResNet-18 with stage strides 1, 1, 2, 2; strides add no parameters.
    "lbgat_resnet18": 11_173_962,
    # Wong et al. fast_adversarial PreActResNet18() (the FGSM-PGK code's model): kuangliu's
    # PreActResNet18 has 11_171_146; Wong's adds the final BatchNorm2d(512) before pooling
    # (+2 * 512 = 1_024). Equivalently: ResNet-18's 11_173_962 minus its BN parameters
    # (9_600: stem 128, blocks 7_680, three shortcut BNs 1_792) plus the pre-activation BNs
    # (6_784: bn1 over each block's input width, bn2 over its output width) plus the final BN 1_024.
    "preact_resnet18": 11_172_170,
    # Rice et al.'s PreActResNet18 (robust_overfitting preactresnet.py): the same layers; only
    # what the shortcut convolution sees differs.
    "preact_resnet18_rice": 11_172_170,
    # FGSM-PGK's Tiny ImageNet PreActResNet18 (ImageNet_models/preact_resnet.py), at 64x64: no
    # final BatchNorm (-1_024), a Linear(2048, 10) head (+3 * 5_120 weights). At 200 classes
    # 11_575_816, the count the issue and REFERENCE.md give (checked below).
    "preact_resnet18_fgsm_pgk": 11_186_506,
    # TRADES / MART WideResNet(depth=34, widen_factor=10), without TRADES' unused sub_block1.
    "wrn34_10": 46_160_474,
}


def _shapes(name, num_classes, hw, batch=2, **kwargs):
  """(param count, logits ShapeDtypeStruct, variables shapes) by tracing only."""
  model = models.get_model(name, num_classes, **kwargs)
  x = jax.ShapeDtypeStruct((batch, hw, hw, 3), jnp.float32)
  variables = jax.eval_shape(lambda k, x: model.init(k, x, train=False), jax.random.key(0), x)
  logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))
  return count, logits, variables


@pytest.mark.parametrize("name", sorted(PYTORCH_PARAM_COUNTS))
def test_param_count_and_shapes(name):
  tiny_imagenet_only = name == "preact_resnet18_fgsm_pgk"
  count, logits, _ = _shapes(name, 10, 64 if tiny_imagenet_only else 32)
  assert count == PYTORCH_PARAM_COUNTS[name]
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  sizes = ((200, 64), (10, 64)) if tiny_imagenet_only else ((100, 32), (100, 64), (10, 64))
  for num_classes, hw in sizes:
    _, logits, _ = _shapes(name, num_classes, hw, batch=3)
    assert logits.shape == (3, num_classes) and logits.dtype == jnp.float32
  if tiny_imagenet_only:
    assert _shapes(name, 200, 64)[0] == 11_575_816
    with pytest.raises(ValueError, match="64x64"):
      _shapes(name, 10, 32)


@pytest.mark.parametrize("name,final_hw", [("resnet18", 4), ("lbgat_resnet18", 8)])
def test_final_feature_map(name, final_hw):
  """ResNet-18 ends on 4x4 at 32x32 input, the LBGAT guide (strides 1, 1, 2, 2) on 8x8."""
  model = models.get_model(name, 10)
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(lambda k, x: model.init(k, x, train=False), jax.random.key(0), x)
  _, state = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=False, capture_intermediates=True), variables, x)
  (last,) = state["intermediates"]["layer4_1"]["__call__"]
  assert last.shape == (1, final_hw, final_hw, 512)


def test_wrn_depth_width_kwargs():
  count, logits, variables = _shapes("wrn", 7, 32, depth=16, width=2)
  assert logits.shape == (2, 7)
  blocks = [k for k in variables["params"] if k.startswith("block")]
  assert blocks == ["block1", "block2", "block3"]
  assert all(len(variables["params"][b]) == 2 for b in blocks)  # (16 - 4) / 6 blocks each
  assert _shapes("wrn", 10, 32)[0] == PYTORCH_PARAM_COUNTS["wrn34_10"]  # defaults 34, 10


def _small(axis_name=None, **kwargs):
  return models.get_model("small_cnn", 5, axis_name=axis_name, width=8, **kwargs)


def _images(batch, hw=16, seed=0):
  return jax.random.uniform(jax.random.key(seed), (batch, hw, hw, 3))


def test_small_cnn_train_updates_batch_stats():
  model, x = _small(), _images(8)
  variables = model.init(jax.random.key(1), x, train=False)
  logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert logits.shape == (8, 5) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  old, new = jax.tree.leaves(variables["batch_stats"]), jax.tree.leaves(updates["batch_stats"])
  assert len(old) == len(new) == 6  # mean and var of three BN layers
  for a, b in zip(old, new):
    assert not np.allclose(a, b)


def test_small_cnn_eval_is_deterministic_and_per_example():
  model, x = _small(), _images(8)
  variables = model.init(jax.random.key(1), x, train=False)
  _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  variables = {"params": variables["params"], **updates}  # non-trivial running statistics
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  out = apply(variables, x)
  np.testing.assert_array_equal(out, apply(variables, x))
  perm = np.array([3, 7, 0, 5, 1, 6, 2, 4])
  np.testing.assert_allclose(apply(variables, x[perm]), out[perm], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(apply(variables, x[:1]), out[:1], rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model, x = _small(dtype=jnp.bfloat16), _images(4)
  variables = model.init(jax.random.key(1), x, train=False)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert logits.dtype == jnp.float32 and np.all(np.isfinite(logits))


def test_synchronised_batch_norm_matches_single_device():
  n = jax.local_device_count()
  assert n == 4, "conftest forces 4 CPU devices"
  x = _images(4 * n)
  local, synced = _small(), _small(axis_name="batch")
  variables = local.init(jax.random.key(1), x, train=False)
  ref_logits, ref_updates = jax.jit(
      lambda v, x: local.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)

  replicated = jax.tree.map(lambda a: jnp.broadcast_to(a, (n, *a.shape)), variables)
  logits, updates = jax.pmap(
      lambda v, x: synced.apply(v, x, train=True, mutable=["batch_stats"]),
      axis_name="batch")(replicated, x.reshape(n, 4, *x.shape[1:]))
  np.testing.assert_allclose(logits.reshape(ref_logits.shape), ref_logits, rtol=1e-5, atol=1e-5)
  for got, want in zip(jax.tree.leaves(updates), jax.tree.leaves(ref_updates)):
    for d in range(n):  # every device holds the global-batch statistics
      np.testing.assert_allclose(got[d], want, rtol=1e-5, atol=1e-5)


def test_unknown_model_name_lists_available():
  with pytest.raises(ValueError) as err:
    models.get_model("resnet19", 10)
  message = str(err.value)
  assert "resnet19" in message and "model.name" in message
  for name in models.MODELS:
    assert name in message


def test_unknown_kwargs_and_bad_depth():
  with pytest.raises(ValueError, match=r"resnet18.*width"):
    models.get_model("resnet18", 10, width=4)
  with pytest.raises(ValueError, match="depth=30"):
    models.get_model("wrn", 10, depth=30)
  with pytest.raises(ValueError, match="small_cnn.*depth"):
    models.get_model("small_cnn", 10, depth=3)
  assert set(models.MODELS) == {"small_cnn", "resnet18", "preact_resnet18", "lbgat_resnet18",
                                "preact_resnet18_rice", "preact_resnet18_fgsm_pgk", "wrn",
                                "wrn34_10", "preact_resnet18_robustbench", "dm_wrn",
                                "dm_preact_resnet18"}
  with pytest.raises(ValueError, match="depth=30"):
    models.get_model("dm_wrn", 10, depth=30)


@pytest.mark.parametrize("name,shape", [
    ("resnet18", (2, 32, 32, 1)),      # grey images
    ("resnet18", (2, 3, 32, 32)),      # NCHW
    ("wrn34_10", (2, 48, 48, 3)),      # unsupported size
    ("preact_resnet18", (32, 32, 3)),  # no batch axis
    ("small_cnn", (2, 4, 4, 3)),       # too small
    ("small_cnn", (2, 16, 12, 3)),     # not square
])
def test_wrong_image_shape_raises(name, shape):
  model = models.get_model(name, 10)
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
    jax.eval_shape(lambda k, x: model.init(k, x, train=False), jax.random.key(0), x)


def test_batch_norm_running_variance_is_the_unbiased_one():
  """PyTorch's BatchNorm2d: running_var = 0.9 running_var + 0.1 * n / (n - 1) * biased batch var
  (n values per channel); normalisation with the biased one."""
  from regmix_jax.models.common import BatchNorm  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.key(0), (3, 2, 2, 5)) * 2.0 + 1.0
  bn = BatchNorm(use_running_average=False)
  variables = bn.init(jax.random.key(1), x)
  y, updates = bn.apply(variables, x, mutable=["batch_stats"])
  flat = np.asarray(x).reshape(-1, 5)
  n = flat.shape[0]
  np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.1 * flat.mean(0), rtol=1e-5)
  np.testing.assert_allclose(updates["batch_stats"]["var"],
                             0.9 + 0.1 * flat.var(0) * n / (n - 1), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(y).reshape(-1, 5),
                             (flat - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5), rtol=1e-4,
                             atol=1e-5)


def test_batch_norm_matches_pytorch_with_its_gradients():
  """Train-mode BatchNorm then ReLU, its output and its gradients in the input, scale and bias,
  against torch.nn.BatchNorm2d on activations far from zero mean (mean 3, std 0.5), where the
  linear form x * a + b (PyTorch's CPU kernel's and ours) could lose digits. The tolerance is
  the one-pass batch variance's (E[x^2] - E[x]^2, what synchronised BatchNorm averages across
  devices): 5.5e-5 from float64 here, with this form or (x - mean) * a + bias alike."""
  torch = pytest.importorskip("torch")
  from regmix_jax.models.common import BatchNorm  # pylint: disable=g-import-not-at-top
  x = np.asarray(jax.random.normal(jax.random.key(0), (8, 6, 6, 5))) * 0.5 + 3.0
  g = np.asarray(jax.random.normal(jax.random.key(1), x.shape))
  bn = BatchNorm(use_running_average=False)
  variables = bn.init(jax.random.key(2), jnp.asarray(x))
  params = {"scale": jnp.linspace(0.5, 2.0, 5), "bias": jnp.linspace(-1.0, 1.0, 5)}

  def loss(params, x):
    y, _ = bn.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                    mutable=["batch_stats"])
    return jnp.sum(jax.nn.relu(y) * g), y

  (dparams, dx), y = jax.grad(loss, (0, 1), has_aux=True)(params, jnp.asarray(x))
  ref = torch.nn.BatchNorm2d(5).train()
  with torch.no_grad():
    ref.weight.copy_(torch.from_numpy(np.asarray(params["scale"])))
    ref.bias.copy_(torch.from_numpy(np.asarray(params["bias"])))
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
  yt = ref(xt)
  (torch.relu(yt) * torch.from_numpy(g.transpose(0, 3, 1, 2).copy())).sum().backward()
  nhwc = lambda t: t.detach().numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(y, nhwc(yt), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(dx, nhwc(xt.grad), rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(dparams["scale"], ref.weight.grad.numpy(), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(dparams["bias"], ref.bias.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_batch_norm_passes_over_the_activations_twice_for_its_gradient():
  """The guarded behaviour (XLA:CPU): train-mode BatchNorm and ReLU, differentiated, write an
  activation-sized array in two fusions (one pass for the forward, whose output the gradient
  recomputes, one for the input gradient after the reductions). Written as (x - mean) * a + bias
  it took four, each a pass over memory (on ResNet-18's first stage ~7 ms per pass per device)."""
  if jax.default_backend() != "cpu":
    pytest.skip("the fusions counted are XLA:CPU's")
  from regmix_jax.models.common import BatchNorm  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.key(0), (16, 8, 8, 32)) * 0.5 + 3.0
  g = jax.random.normal(jax.random.key(1), x.shape)
  bn = BatchNorm(use_running_average=False)
  variables = bn.init(jax.random.key(2), x)

  def loss(params, x):
    y, _ = bn.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                    mutable=["batch_stats"])
    return jnp.sum(jax.nn.relu(y) * g)

  hlo = jax.jit(jax.grad(loss, (0, 1))).lower(variables["params"], x).compile().as_text()
  entry = hlo[hlo.index("\nENTRY"):]
  assert len(re.findall(r"= f32\[16,8,8,32\]\{[^}]*\} fusion\(", entry)) <= 2


def test_normalize_is_a_fixed_first_layer():
  """`normalize="cifar10"` equals feeding (x - mean) / std to the un-normalised model."""
  x = _images(2, hw=32)
  plain, normed = models.get_model("small_cnn", 5, width=4), models.get_model(
      "small_cnn", 5, width=4, normalize="cifar10")
  variables = plain.init(jax.random.key(1), x, train=False)
  mean, std = (np.asarray(v, np.float32) for v in models.NORMALIZATIONS["cifar10"])
  np.testing.assert_allclose(normed.apply(variables, x, train=False),
                             plain.apply(variables, (x - mean) / std, train=False), rtol=1e-5,
                             atol=1e-6)
  with pytest.raises(ValueError, match="model.normalize"):
    models.get_model("small_cnn", 5, normalize="imagenet")
