"""The `micro` and `dtype` suites: single convolutions and matrix products timed on one device
(lax's own, so XLA:CPU's kernels under the case's flags), and sync BatchNorm's all-reduce between
2 host devices."""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from harness import BATCH, best_seconds

# (`lax.conv_general_dilated` for NHWC inputs and HWIO kernels, as the models' convolutions.)
NHWC = ("NHWC", "HWIO", "NHWC")


def taps_kernel_grad_conv(lhs, rhs, window_strides, padding):
  """`lax.conv_general_dilated` (NHWC, HWIO) whose kernel gradient, for a 3x3 stride-1 'same'
  convolution on a map of at least 16x16, is nine dots `X_s^T @ dY` over the flattened padded
  image, where `X_s` is the image shifted by tap s's offset (a contiguous row slice) and dY is
  zero in the padding, so wrapped rows add nothing; XLA's kernel gradient for any other
  convolution. The micro suite times it beside XLA's (an attempt, not library code)."""
  strides, pads = tuple(window_strides), tuple(tuple(p) for p in padding)
  conv = functools.partial(jax.lax.conv_general_dilated, window_strides=strides, padding=pads,
                           dimension_numbers=NHWC)
  kh, kw, c, o = rhs.shape
  n, h, w_, _ = lhs.shape
  if not ((kh, kw) == (3, 3) and strides == (1, 1) and pads == ((1, 1), (1, 1))
          and h >= 16 and w_ >= 16):
    return conv(lhs, rhs)

  def kernel_grad_taps(x, dy):
    rows = n * (h + 2) * (w_ + 2)
    xf = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(rows, c)
    xf = jnp.pad(xf, ((0, 2 * (w_ + 2) + 2), (0, 0)))
    dyf = jnp.pad(dy, ((0, 0), (0, 2), (0, 2), (0, 0))).reshape(rows, o)
    return jnp.stack([
        jax.lax.dot_general(xf[i * (w_ + 2) + j:i * (w_ + 2) + j + rows], dyf,
                            (((0,), (0,)), ((), ())))
        for i in range(3) for j in range(3)])

  @jax.custom_vjp
  def f(x, w):
    return conv(x, w)

  def fwd(x, w):
    return conv(x, w), (x, w)

  def bwd(res, dy):
    x, w = res
    dx = jax.vjp(lambda x_: conv(x_, w), x)[1](dy)[0]
    return dx, kernel_grad_taps(x, dy).reshape(kh, kw, c, o).astype(w.dtype)

  f.defvjp(fwd, bwd)
  return f(lhs, rhs)


def _same_3x3(x, w):
  """A 3x3 stride-1 'same' convolution (NHWC, HWIO), lax's."""
  return jax.lax.conv_general_dilated(x, w, (1, 1), [(1, 1)] * 2, dimension_numbers=NHWC)


def run_conv_micro() -> dict:
  """Milliseconds (best of 3) of one convolution's forward pass, input gradient and kernel
  gradient on one device, batch 128: the 3x3 stride-1 convolutions of ResNet-18's four stages
  (with the kernel gradient as nine shifted dots, `taps_kernel_grad_conv`, beside XLA's) and its
  first stride-2 and 1x1 shortcut convolutions."""
  out = {}
  shapes = [(32, 64, 64, 3, 1), (16, 128, 128, 3, 1), (8, 256, 256, 3, 1), (4, 512, 512, 3, 1),
            (32, 64, 128, 3, 2), (32, 64, 128, 1, 2)]  # (map size, in, out, kernel, stride)
  for hw, cin, cout, k, stride in shapes:
    rng = np.random.RandomState(0)
    x = jax.numpy.asarray(rng.rand(BATCH, hw, hw, cin), np.float32)
    w = jax.numpy.asarray(rng.rand(k, k, cin, cout) * 0.01, np.float32)
    args = ((stride, stride), [(k // 2, k // 2)] * 2)
    conv = lambda x, w, a=args: jax.lax.conv_general_dilated(x, w, *a, dimension_numbers=NHWC)
    taps = lambda x, w, a=args: taps_kernel_grad_conv(x, w, *a)
    fns = {"forward": conv, "input_grad": jax.grad(lambda x, w, c=conv: c(x, w).sum()),
           "kernel_grad": jax.grad(lambda x, w, c=conv: c(x, w).sum(), argnums=1)}
    if stride == 1 and hw >= 16:
      fns["kernel_grad as 9 shifted dots"] = jax.grad(lambda x, w, c=taps: c(x, w).sum(), argnums=1)
    for name, fn in fns.items():
      out[f"{k}x{k} s{stride} {hw}x{hw} {cin}->{cout} {name}"] = 1000 * best_seconds(
          jax.jit(fn), (x, w), 3)
  return {"ms": out}


# `run_dtype_micro`'s matrix products ([M, K] x [K, N]): the first-stage layer's as one product
# over its 9 taps (M = batch x 32 x 32), and the last stage's (batch x 4 x 4, 9 x 512, 512).
DTYPE_PRODUCTS = ((BATCH * 32 * 32, 9 * 64, 64), (BATCH * 16, 9 * 512, 512))


def shifted_products_conv(x, w):
  """A 3x3 stride-1 'same' convolution (NHWC, HWIO) as 9 matrix products of the shifted input with
  each tap's [in, out] kernel, accumulated in float32 and cast back to `x.dtype`."""
  h, w_ = x.shape[1:3]
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return sum(jnp.einsum("bhwc,co->bhwo", xp[:, i:i + h, j:j + w_], w[i, j],
                        preferred_element_type=jnp.float32)
             for i in range(3) for j in range(3)).astype(x.dtype)


def run_dtype_micro() -> dict:
  """Milliseconds (best of 3) on one device in float32 and bfloat16 (inputs and kernel cast,
  output kept in the dtype), under the case's XLA flags: ResNet-18's first-stage convolution
  (batch 128, 32x32x64 -> 64, 3x3) forward, input gradient and kernel gradient; its last stage's
  (4x4x512 -> 512) forward as one convolution and as 9 shifted matrix products
  (`shifted_products_conv`); and the bare matrix products of `DTYPE_PRODUCTS` (float32
  accumulation). Whether XLA:CPU's bf16 products or convolutions use the CPU's bf16 units."""
  out = {}
  rng = np.random.RandomState(0)
  x32 = jnp.asarray(rng.rand(BATCH, 32, 32, 64), np.float32)
  w32 = jnp.asarray(rng.rand(3, 3, 64, 64) * 0.01, np.float32)
  deep_x32 = jnp.asarray(rng.rand(BATCH, 4, 4, 512), np.float32)
  deep_w32 = jnp.asarray(rng.rand(3, 3, 512, 512) * 0.01, np.float32)
  products = [(jnp.asarray(rng.rand(m, k), np.float32), jnp.asarray(rng.rand(k, n), np.float32))
              for m, k, n in DTYPE_PRODUCTS]
  product = lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32)
  for dtype in (jnp.float32, jnp.bfloat16):
    name = jnp.dtype(dtype).name
    x, w = x32.astype(dtype), w32.astype(dtype)
    fns = {"forward": _same_3x3,
           "input_grad": jax.grad(lambda x, w: _same_3x3(x, w).astype(jnp.float32).sum()),
           "kernel_grad": jax.grad(lambda x, w: _same_3x3(x, w).astype(jnp.float32).sum(),
                                   argnums=1)}
    for kind, fn in fns.items():
      out[f"{name} {kind}"] = 1000 * best_seconds(jax.jit(fn), (x, w), 3)
    deep = (deep_x32.astype(dtype), deep_w32.astype(dtype))
    out[f"{name} 4x4x512 forward"] = 1000 * best_seconds(jax.jit(_same_3x3), deep, 3)
    out[f"{name} 4x4x512 forward as 9 shifted products"] = 1000 * best_seconds(
        jax.jit(shifted_products_conv), deep, 3)
    for (m, k, n), (a, b) in zip(DTYPE_PRODUCTS, products):
      out[f"{name} product {m}x{k}x{n}"] = 1000 * best_seconds(
          jax.jit(product), (a.astype(dtype), b.astype(dtype)), 3)
  return {"ms": out}


def run_torch_dtype_micro(threads: int) -> dict:
  """`run_dtype_micro` in eager PyTorch (NCHW, channels_last memory format, as oneDNN prefers;
  the shifted products are JAX's alone)."""
  import torch  # pylint: disable=g-import-not-at-top  (only this case; not a dependency)
  torch.set_num_threads(threads)
  rng = np.random.RandomState(0)
  x32 = torch.from_numpy(rng.rand(BATCH, 64, 32, 32).astype(np.float32)).contiguous(
      memory_format=torch.channels_last)
  w32 = torch.from_numpy((rng.rand(64, 64, 3, 3) * 0.01).astype(np.float32))
  deep_x32 = torch.from_numpy(rng.rand(BATCH, 512, 4, 4).astype(np.float32)).contiguous(
      memory_format=torch.channels_last)
  deep_w32 = torch.from_numpy((rng.rand(512, 512, 3, 3) * 0.01).astype(np.float32))
  products = [(torch.from_numpy(rng.rand(m, k).astype(np.float32)),
               torch.from_numpy(rng.rand(k, n).astype(np.float32))) for m, k, n in DTYPE_PRODUCTS]
  out = {}
  for dtype in (torch.float32, torch.bfloat16):
    x, w = x32.to(dtype).requires_grad_(True), w32.to(dtype).requires_grad_(True)
    def forward():
      with torch.no_grad():
        torch.nn.functional.conv2d(x, w, padding=1)
    def grads(which):
      y = torch.nn.functional.conv2d(x, w, padding=1)
      torch.autograd.grad(y.float().sum(), [which])
    deep_x, deep_w = deep_x32.to(dtype), deep_w32.to(dtype)
    def deep_forward():
      with torch.no_grad():
        torch.nn.functional.conv2d(deep_x, deep_w, padding=1)
    cases = [("forward", forward), ("input_grad", lambda: grads(x)),
             ("kernel_grad", lambda: grads(w)), ("4x4x512 forward", deep_forward)]
    for (m, k, n), (a, b) in zip(DTYPE_PRODUCTS, products):
      cases.append((f"product {m}x{k}x{n}", functools.partial(
          torch.matmul, a.to(dtype), b.to(dtype))))
    for name, fn in cases:
      fn()
      times = []
      for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
      out[f"{str(dtype).split('.')[-1]} {name}"] = 1000 * min(times)
  return {"ms": out, "threads": threads, "torch": torch.__version__}


def run_allreduce_micro() -> dict:
  """Synchronised BatchNorm's cost between 2 host devices, in two measurements (best of 5 / 3):
  `us_per_allreduce`, 120 chained `pmean`s of 512 floats (each depending on the last, as the BN
  layers' do) in one pmapped program: an upper bound on one all-reduce's latency, dispatch and
  input transfer included; `barrier_ms`, 8 chained layers of a 3x3 convolution (64 x 32 x 32 x
  64 per device, forward or kernel gradient) each followed by a per-channel mean, taken per
  device or `pmean`ed across both: what the barrier costs when it sits between heavy ops."""

  def chain(x):
    for _ in range(120):
      x = jax.lax.pmean(x, "d") * 1.0001 + 1e-3
    return x
  out = {"us_per_allreduce": 1e6 * best_seconds(jax.pmap(chain, axis_name="d"),
                                                 (jnp.ones((2, 512)),), 5) / 120,
         "barrier_ms": {}}

  def layers(x, w, sync, kernel_grad):
    for _ in range(8):
      if kernel_grad:
        w = w + 1e-3 * jax.vjp(lambda w_, x=x: _same_3x3(x, w_), w)[1](x)[0]
        x = x * 0.999
      else:
        x = jnp.tanh(_same_3x3(x, w))
      m = x.mean((0, 1, 2))
      x = x - (jax.lax.pmean(m, "d") if sync else m)
    return x.sum() + w.sum()
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.rand(2, BATCH // 2, 32, 32, 64), jnp.float32)
  w = jnp.asarray(rng.rand(2, 3, 3, 64, 64) * 0.02, jnp.float32)
  for kernel_grad in (False, True):
    for sync in (False, True):
      fn = jax.pmap(lambda x, w, s=sync, k=kernel_grad: layers(x, w, s, k), axis_name="d")
      name = (f"{'kernel gradient' if kernel_grad else 'forward'}, "
              f"{'pmean (barrier)' if sync else 'per device'}")
      out["barrier_ms"][name] = 1000 * best_seconds(fn, (x, w), 3)
  return out
