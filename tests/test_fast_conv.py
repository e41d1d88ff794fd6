"""`cpu.fast_conv`: the same values and derivatives as `lax.conv_general_dilated`, and, inside a
loop, only convolutions XLA:CPU runs on its Eigen kernels (kernel `01io`) where lax's input
gradient there has its kernel's feature dimensions swapped (`01oi`, XLA's naive loop nest).

The tests marked `xla_cpu_flaw` assert what the rules work around in jaxlib 0.10's XLA:CPU; they
skip, saying so, on another jaxlib, where the flaw may be gone."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from regmix_jax import attacks, cpu, models
from regmix_jax.cpu import fast_conv

import jaxlib_flaws

FAST = fast_conv.FastConv()


class _UserNet(nn.Module):
  """A model as a user would write it: Flax's own Conv (lax's convolution), strided and grouped
  convolutions (grouped ones keep lax's rule), a nested jit, a rematerialised block."""

  groups: int = 2

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3), strides=2)(x))
    x = jax.jit(nn.gelu)(x)
    x = nn.Conv(8, (3, 3), feature_group_count=self.groups)(x)
    x = jax.checkpoint(lambda z: jax.nn.softplus(z))(x)
    x = nn.Conv(6, (1, 1))(x)
    return nn.Dense(5)(x.mean((1, 2)))


def _user_model(groups=2):
  net = _UserNet(groups)
  x = jax.random.uniform(jax.random.key(0), (4, 9, 9, 3))
  variables = net.init(jax.random.key(1), x)
  return net, variables, x


def _conv_labels(fn, *args) -> set[str]:
  hlo = jax.jit(fn).lower(*args).compile().as_text()
  return set(re.findall(r"dim_labels=(\S+?)[,\s]", hlo))


def _in_a_loop(loss):
  """Three signed input-gradient steps in a `fori_loop`, as the attacks take them."""
  return lambda x: lax.fori_loop(0, 3, lambda i, z: z + 0.01 * jnp.sign(jax.grad(loss)(z)), x)


@pytest.mark.parametrize("strides,dilation,padding", [((1, 1), (1, 1), "SAME"),
                                                      ((2, 2), (1, 1), ((1, 1), (1, 1))),
                                                      ((1, 1), (2, 2), "VALID")])
def test_values_and_derivatives_are_lax_s(strides, dilation, padding):
  k1, k2, k3 = jax.random.split(jax.random.key(2), 3)
  x = jax.random.normal(k1, (3, 11, 11, 4))
  k = jax.random.normal(k2, (3, 3, 4, 6))
  dx = jax.random.normal(k3, x.shape)

  def make(conv):
    return lambda x, k: jnp.sum(jnp.sin(conv(x, k, strides, padding, rhs_dilation=dilation,
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))))

  ref, fast = make(lax.conv_general_dilated), make(FAST)
  close = lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                                                  atol=1e-5)
  close(fast(x, k), ref(x, k))
  for argnums in (0, 1, (0, 1)):
    jax.tree.map(close, jax.grad(fast, argnums)(x, k), jax.grad(ref, argnums)(x, k))
  # Second order (a gradient of an input gradient) and forward mode. The second-order values
  # reach a few hundred; rounding is relative to that scale (strided convolutions' input
  # gradients sum their phases in another order than lax).
  second = lambda f: jax.grad(lambda x: jnp.sum(jax.grad(f)(x, k) ** 2))(x)
  want = np.asarray(second(ref))
  np.testing.assert_allclose(np.asarray(second(fast)), want, rtol=1e-5,
                             atol=1e-6 * np.abs(want).max())
  close(jax.jvp(lambda x: fast(x, k), (x,), (dx,))[1], jax.jvp(lambda x: ref(x, k), (x,), (dx,))[1])


def test_accelerate_keeps_a_user_model_s_values_and_gradients():
  net, variables, x = _user_model()
  logits_fn = lambda z: net.apply(variables, z)
  fast = cpu.accelerate(logits_fn, "xla")
  np.testing.assert_allclose(np.asarray(fast(x)), np.asarray(logits_fn(x)), rtol=1e-6, atol=1e-6)
  loss = lambda f: lambda z: jnp.sum(jax.nn.log_softmax(f(z))[:, 0])
  np.testing.assert_allclose(np.asarray(jax.grad(loss(fast))(x)),
                             np.asarray(jax.grad(loss(logits_fn))(x)), rtol=1e-5, atol=1e-7)
  assert cpu.accelerate(fast, "xla") is fast
  # Pytrees in and out, and a key among the inputs.
  noisy = cpu.accelerate(
      lambda z, key: {"logits": logits_fn(z + 0.01 * jax.random.normal(key, z.shape))}, "xla")
  out = noisy(x, jax.random.key(3))
  np.testing.assert_allclose(np.asarray(out["logits"]), np.asarray(
      logits_fn(x + 0.01 * jax.random.normal(jax.random.key(3), x.shape))), rtol=1e-6, atol=1e-6)


@jaxlib_flaws.xla_cpu_flaw
def test_inside_a_loop_every_convolution_is_canonical():
  """The guarded behaviour: in a loop body (not XLA:CPU's entry computation) lax's input
  gradient keeps a `01oi` kernel; with `FastConv` every convolution has a `01io` kernel, for a
  user's model through `cpu.accelerate` and for the library's models built with it."""
  net, variables, x = _user_model(groups=1)
  loss = lambda f: lambda z: jnp.sum(jax.nn.log_softmax(f(z))[:, 0])
  logits_fn = lambda z: net.apply(variables, z)
  plain = _conv_labels(_in_a_loop(loss(logits_fn)), x)
  fast = _conv_labels(_in_a_loop(loss(cpu.accelerate(logits_fn, "xla"))), x)
  assert any("01oi" in label for label in plain), plain  # what this guards against, today
  assert fast == {"b01f_01io->b01f"}, fast
  # CIFAR-sized input: on 8x8 images the last layer's 2x2 input is smaller than its kernel and
  # XLA swaps the operands of that convolution (`01fb_o01i->f01b`), whatever the kernel layout.
  def labels(conv):
    model = models.get_model("small_cnn", 10, width=8, conv=conv)
    variables = model.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3)), train=False)
    return _conv_labels(_in_a_loop(loss(lambda z: model.apply(variables, z, train=False))),
                        jnp.zeros((2, 32, 32, 3)))
  assert labels(FAST) == {"b01f_01io->b01f"}
  assert any("01oi" in label for label in labels(None))  # the library's default: lax's


@jaxlib_flaws.xla_cpu_flaw
def test_the_attacks_run_the_logits_fn_they_are_given():
  """An attack runs a user's model as given (lax's layouts inside its loop); with the one line
  `cpu.accelerate(logits_fn)` every convolution of its loop is canonical."""
  net = nn.Sequential([nn.Conv(4, (3, 3)), nn.relu, lambda z: z.mean((1, 2)), nn.Dense(5)])
  x = jax.random.uniform(jax.random.key(0), (2, 6, 6, 3))
  variables = net.init(jax.random.key(1), x)
  plain = lambda z: net.apply(variables, z)
  labels = jnp.zeros(2, jnp.int32)
  for fn, canonical in ((plain, False), (cpu.accelerate(plain, "xla"), True)):
    for attack in (lambda x: attacks.pgd(fn, x, labels, jax.random.key(2), epsilon=0.1,
                                         step_size=0.02, num_steps=3),
                   lambda x: attacks.apgd(fn, x, labels, jax.random.key(2), epsilon=0.1,
                                          num_steps=3)):
      assert (_conv_labels(attack, x) == {"b01f_01io->b01f"}) == canonical


# Strided convolutions' input gradients on CPU (`fast_conv._phases`): a sum over the stride's
# phases of unstrided convolutions.
_NHWC = ("NHWC", "HWIO", "NHWC")
_STRIDED_CASES = [
    # (image, kernel, strides, padding, dimension numbers)
    ((12, 12, 4), (3, 3, 4, 6), (2, 2), ((1, 1), (1, 1)), _NHWC),  # ResNet's downsampling
    ((9, 9, 3), (1, 1, 3, 5), (2, 2), "VALID", _NHWC),  # its 1x1 shortcut: one phase has taps
    ((10, 7, 2), (3, 2, 2, 3), (2, 3), "VALID", _NHWC),  # inputs no tap reads, at the end
    # Padding beyond a phase's taps (output rows that read padding alone) and a stride of 1.
    ((3, 6, 4), (2, 3, 2, 3), (1, 2), ((3, 1), (3, 0)), ("NCHW", "OIHW", "NCHW")),
    ((11, 3), (5, 3, 2), (3,), ((2, 1),), ("NWC", "WIO", "NWC")),  # 1-D, stride 3
    ((1, 2), (1, 2, 3), (3,), ((1, 1),), ("NWC", "WIO", "NWC")),  # every tap reads padding
]


@pytest.mark.parametrize("image,kernel,strides,padding,dn", _STRIDED_CASES)
def test_strided_input_gradients_are_lax_s(image, kernel, strides, padding, dn):
  k1, k2, k3 = jax.random.split(jax.random.key(len(image) + kernel[0]), 3)
  x = jax.random.normal(k1, (3, *image))
  k = jax.random.normal(k2, kernel)

  def make(conv):
    return lambda x, k: jnp.sum(jnp.sin(conv(x, k, strides, padding, dimension_numbers=dn)))

  ref, fast = make(lax.conv_general_dilated), make(FAST)
  close = lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                                                  atol=1e-5)
  for argnums in (0, (0, 1)):
    jax.tree.map(close, jax.jit(jax.grad(fast, argnums))(x, k),
                 jax.jit(jax.grad(ref, argnums))(x, k))
  second = lambda f: jax.jit(jax.grad(lambda x: jnp.sum(jax.grad(f)(x, k) ** 2)))(x)
  want = np.asarray(second(ref))
  np.testing.assert_allclose(np.asarray(second(fast)), want, rtol=1e-5,
                             atol=1e-6 * np.abs(want).max())
  dx = jax.random.normal(k3, x.shape)
  close(jax.jvp(lambda x: fast(x, k), (x,), (dx,))[1], jax.jvp(lambda x: ref(x, k), (x,), (dx,))[1])


@jaxlib_flaws.xla_cpu_flaw
def test_strided_input_gradients_compute_no_inserted_zeros():
  """The guarded behaviour (XLA:CPU): lax's input gradient of a strided convolution convolves
  the output gradient dilated by the stride (`lhs_dilate`), computing the inserted zeros; ours
  runs only unstrided, undilated convolutions."""
  x, k = jnp.ones((4, 16, 16, 8)), jnp.ones((3, 3, 8, 8))

  def input_grad_convs(conv):
    loss = lambda x: jnp.sum(jnp.sin(conv(x, k, (2, 2), ((1, 1), (1, 1)),
                                          dimension_numbers=_NHWC)))
    hlo = jax.jit(jax.grad(loss)).lower(x).compile().as_text()
    return [line for line in hlo.splitlines()
            if " convolution(" in line and "transpose(jvp" in line]

  assert any("lhs_dilate" in c for c in input_grad_convs(lax.conv_general_dilated))
  ours = input_grad_convs(FAST)
  assert ours and not any("lhs_dilate" in c or "stride" in c for c in ours), ours


# Kernel gradients on CPU (`fast_conv._kernel_tangent`): 1x1 convolutions take the matrix
# product, the others the batch-minor layouts (`_batch_minor`), whatever the batch.
_KERNEL_CASES = [
    # (batch, image, kernel, strides, padding, dimension numbers, dtype)
    (16, (9, 9, 4), (3, 3, 4, 6), (1, 1), "SAME", ("NHWC", "HWIO", "NHWC"), jnp.float32),
    (40, (10, 10, 5), (3, 3, 5, 7), (2, 2), "SAME", ("NHWC", "HWIO", "NHWC"), jnp.float32),
    (24, (4, 9, 9), (6, 4, 3, 3), (1, 2), ((2, 0), (1, 1)), ("NCHW", "OIHW", "NCHW"), jnp.float32),
    (24, (9, 9, 4), (1, 1, 4, 6), (2, 2), "VALID", ("NHWC", "HWIO", "NHWC"), jnp.float32),
    (5, (4, 9, 9), (6, 4, 1, 1), (2, 1), "VALID", ("NCHW", "OIHW", "NCHW"), jnp.float32),
    (16, (8, 8, 4), (3, 4, 1, 1), (1, 2), "VALID", ("NHWC", "OIHW", "NHCW"), jnp.float32),
    (32, (8, 8, 4), (3, 3, 4, 4), (1, 1), "SAME", ("NHWC", "HWIO", "NHWC"), jnp.bfloat16),
    (3, (7, 7, 2), (3, 3, 2, 5), (2, 1), "SAME", ("NHWC", "HWIO", "NHWC"), jnp.float32),
]


@pytest.mark.parametrize("batch,image,kernel,strides,padding,dn,dtype", _KERNEL_CASES)
def test_kernel_gradients_are_lax_s(batch, image, kernel, strides, padding, dn, dtype):
  k1, k2, k3 = jax.random.split(jax.random.key(batch), 3)
  x = jax.random.normal(k1, (batch, *image), dtype)
  k = jax.random.normal(k2, kernel, dtype)

  def make(conv):
    return lambda x, k: jnp.sum(jnp.sin(conv(x, k, strides, padding, dimension_numbers=dn)
                                        .astype(jnp.float32)))

  ref, fast = make(lax.conv_general_dilated), make(FAST)
  tol = 1e-5 if dtype == jnp.float32 else 1e-2
  close = lambda a, b: np.testing.assert_allclose(np.asarray(a, np.float32),
                                                  np.asarray(b, np.float32), rtol=tol, atol=tol)
  for argnums in (1, (0, 1)):
    jax.tree.map(close, jax.jit(jax.grad(fast, argnums))(x, k),
                 jax.jit(jax.grad(ref, argnums))(x, k))
  dk = jax.random.normal(k3, kernel, dtype)
  close(jax.jvp(lambda k: fast(x, k), (k,), (dk,))[1], jax.jvp(lambda k: ref(x, k), (k,), (dk,))[1])


def _fusions(hlo: str) -> list[str]:
  return re.findall(r"\n%fused[\w.\-]* \(.*?\n\}", hlo, re.S)


@jaxlib_flaws.xla_cpu_flaw
def test_kernel_gradients_read_their_input_as_computed():
  """The guarded behaviour (XLA:CPU): lax's kernel gradient of a convolution whose input is
  computed elementwise (here a ReLU) has XLA fuse that computation into the transpose that
  moves the batch dimension minor-most, which then reads its inputs strided by a whole image;
  likewise the output gradient's producer (here the square's gradient, a multiply) into its
  transpose. Ours transposes computed arrays, so no fusion both computes and transposes. A 1x1
  convolution's kernel gradient is a matrix product, not a convolution."""
  x = jax.random.normal(jax.random.key(0), (32, 8, 8, 16))
  k3, k1 = jnp.ones((3, 3, 16, 16)), jnp.ones((1, 1, 16, 16))

  def kernel_grad(conv, k, strides):
    loss = lambda k, x: jnp.sum(conv(jax.nn.relu(x * 2.0 - 1.0), k, strides, "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC")) ** 2)
    return jax.jit(jax.grad(loss)).lower(k, x).compile().as_text()

  fused = lambda hlo, op: [f for f in _fusions(hlo) if "transpose(" in f and f"{op}(" in f]
  plain, ours = (kernel_grad(conv, k3, (1, 1))
                 for conv in (lax.conv_general_dilated, FAST))
  for op in ("maximum", "multiply"):
    assert fused(plain, op), op  # what this guards against
    assert not fused(ours, op), op
  # The forward pass is a convolution in both; lax's kernel gradient is a second one.
  assert kernel_grad(lax.conv_general_dilated, k1, (2, 2)).count(" convolution(") == 2
  pointwise = kernel_grad(FAST, k1, (2, 2))
  assert pointwise.count(" convolution(") == 1 and " dot(" in pointwise
