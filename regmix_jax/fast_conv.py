"""Convolutions whose input gradient XLA:CPU runs on its fast kernels, also inside loops.

Why. Reverse-mode differentiation of `lax.conv_general_dilated` with respect to its input emits
a convolution whose kernel has its feature dimensions swapped (HLO `dim_labels=b01f_01oi->b01f`
for an NHWC / HWIO model). XLA:CPU runs only "canonical" convolutions (kernel `01io`) with its
Eigen kernels; its `ConvCanonicalization` pass makes the others canonical, but only in the entry
computation ("all top-level convolutions", xla/service/cpu/conv_canonicalization.h). Anything
inside a `lax.fori_loop` / `while_loop` or a `lax.cond` is not top-level, so there the input
gradient runs on XLA's naive elemental loop nest (`conv_general_dilated.N_elemental_kernel_module`
in an XLA dump). Every gradient attack iterates in a loop (PGD, APGD, FAB, and the attack of
PGD-AT, TRADES and MART training), so on CPU each of their input gradients paid this: one PGD
iteration of the small CNN on 48 points took 43 ms inside `fori_loop` against 27 ms for the same
jitted gradient alone, and 21 ms with this module (jaxlib 0.10.2, 2 AMD EPYC cores,
experiments/results/autoattack_speed.md). GPU and TPU compilers assign convolution layouts
themselves; there this module changes nothing measurable.

What. `conv_general_dilated` is `lax.conv_general_dilated` with a custom JVP: the input tangent is
convolved with the kernel physically transposed (its input and output feature dimensions
swapped) under dimension numbers swapped to match. That is the same linear map, so values are
unchanged, but its transpose, the input gradient, now sees a canonical kernel. The forward pass
is lax's own. With `set_cpu_convolutions("onednn")`, the convolutions `onednn.supports` run on
oneDNN on CPU instead (`onednn.py`: its own forward pass and gradients; what follows then does not
apply to them). Grouped convolutions (`feature_group_count` or `batch_group_count` above 1) keep
lax's rule.

Kernel gradients, on CPU only (`lax.platform_dependent`; GPU and TPU keep lax's rule). lax's
kernel gradient convolves the layer's input, with its batch dimension moved minor-most, with the
output gradient, its batch moved next to its features; XLA:CPU fuses the elementwise work that
produced each (BatchNorm, ReLU, a residual sum, or their gradients) into those transposes, and
the fused loops read with a stride of a whole image: on ResNet-18's first stage 157 ms an
activation, against 88 ms for the convolution itself, a third of a FGSM-PGK step. Here both are
moved by plain transposes of computed arrays, in conditionals XLA cannot fuse across
(`_batch_minor`, `_unfused_transpose`; exact), and 1x1 convolutions' kernel gradients are one
matrix product (`_pointwise`, where XLA's convolution takes 4x longer); values equal lax's up to
rounding. Input gradients of strided convolutions, on CPU only: lax's convolves the output
gradient dilated by the stride, and XLA:CPU computes the inserted zeros (4x the work at stride 2
in 2-D); here the input tangent is a sum over the stride's phases of unstrided convolutions
(`_phases`), whose transposes read only the output gradient (ResNet-18's three stride-2 3x3
layers: 93 + 46 + 29 -> 46 + 25 + 26 ms at batch 128).

The library's models use it (`models.common.conv`); `with_fast_conv_grads(fn)` rewrites the
convolutions of any function, for models the library did not build (the attacks apply it to
the `logits_fn` they are given).

Limits: only the kernel's feature order is fixed; a model whose activations are not NHWC-like
(e.g. NCHW) is not canonical on XLA:CPU in any case. `with_fast_conv_grads` rewrites the
convolutions it meets at the top level of the traced function and inside nested `jit`s; those
inside a model's own loops, conditionals or custom derivative rules are left as they are.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any, Callable

import jax
import jax.extend.core as jex
import jax.numpy as jnp
from absl import logging
from jax import lax

from regmix_jax import onednn

_CONV = lax.conv_general_dilated_p
# Primitives whose body is inlined by `with_fast_conv_grads` (a nested `jax.jit`).
_INLINED = ("jit", "pjit", "closed_call", "core_call")


def _params_key(params: dict[str, Any]) -> tuple:
  return tuple(sorted(params.items()))


def _swapped(rhs: jax.Array, params: dict[str, Any]) -> tuple[jax.Array, dict[str, Any]]:
  """The kernel with its input and output feature dimensions physically swapped, and the
  parameters that describe it: the same convolution."""
  dn = params["dimension_numbers"]
  out_dim, in_dim = dn.rhs_spec[0], dn.rhs_spec[1]
  rhs_t = jnp.swapaxes(rhs, out_dim, in_dim)
  dn_t = lax.ConvDimensionNumbers(dn.lhs_spec, (in_dim, out_dim) + tuple(dn.rhs_spec[2:]),
                                  dn.out_spec)
  return rhs_t, dict(params, dimension_numbers=dn_t)


def _unfused_transpose(x: jax.Array, perm: tuple[int, ...], witness: jax.Array) -> jax.Array:
  """`x.transpose(perm)`, computed where XLA cannot fuse `x`'s producers into it: inside a
  conditional whose predicate is true for every value of the scalar `witness` (`w == w` or
  `w != w`) but that XLA cannot fold. A transpose fused with the elementwise work that produced
  its input (BatchNorm, ReLU, a residual sum, or their gradients) runs that work at the
  transpose's strided reads: 58.6 against 18 ms for one [128, 32, 32, 64] ReLU output moved
  batch-minor (jaxlib 0.10.2, 2 AMD EPYC cores). `witness` must not be a tangent (it comes from
  a primal), so that the conditional can be transposed; the other branch (zeros) never runs."""
  shape = tuple(x.shape[d] for d in perm)
  return lax.cond((witness == witness) | (witness != witness),
                  lambda x: x.transpose(perm), lambda x: jnp.zeros(shape, x.dtype), x)


def _is_pointwise(rhs_shape, params: dict[str, Any]) -> bool:
  """Whether the convolution is a 1x1 one (any strides) without padding or input dilation."""
  dn = params["dimension_numbers"]
  return (all(rhs_shape[d] == 1 for d in dn.rhs_spec[2:])
          and all(tuple(p) == (0, 0) for p in params["padding"])
          and all(d == 1 for d in (params.get("lhs_dilation") or ())))


def _pointwise(lhs: jax.Array, rhs: jax.Array, params: dict[str, Any]) -> jax.Array:
  """A 1x1 convolution (`_is_pointwise`) as a product over the feature dimension of `lhs` taken
  every `stride` positions: the same values up to rounding. Its transpose in `rhs`, the kernel
  gradient, is one matrix product over batch and positions, where XLA:CPU's convolution takes
  the output gradient as a strided "kernel" the size of the image: 75 against 20 ms for the
  forward pass and kernel gradient of ResNet-18's first 1x1 shortcut (64 -> 128 channels,
  stride 2, batch 128, its input computed elementwise)."""
  dn = params["dimension_numbers"]
  lhs_feature, lhs_spatial = dn.lhs_spec[1], dn.lhs_spec[2:]
  strides = [1] * lhs.ndim
  for d, stride in zip(lhs_spatial, params["window_strides"]):
    strides[d] = stride
  taken = lax.slice(lhs, (0,) * lhs.ndim, lhs.shape, strides)
  kernel = jnp.transpose(rhs, (dn.rhs_spec[1], dn.rhs_spec[0], *dn.rhs_spec[2:]))
  kernel = kernel.reshape(kernel.shape[:2])  # [in, out]
  out = lax.dot_general(taken, kernel, (((lhs_feature,), (0,)), ((), ())),
                        precision=params.get("precision"),
                        preferred_element_type=params.get("preferred_element_type"))
  # `out` holds lhs's dimensions but the feature one, in order, then the output feature: put
  # each where `out_spec` wants it.
  roles = [("spatial", lhs_spatial.index(d)) if d in lhs_spatial else ("batch",)
           for d in range(lhs.ndim) if d != lhs_feature] + [("feature",)]
  wanted = [None] * lhs.ndim
  wanted[dn.out_spec[0]], wanted[dn.out_spec[1]] = ("batch",), ("feature",)
  for i, d in enumerate(dn.out_spec[2:]):
    wanted[d] = ("spatial", i)
  return out.transpose([roles.index(role) for role in wanted])


def _kernel_tangent(lhs: jax.Array, d_rhs: jax.Array, params: dict[str, Any]) -> jax.Array:
  """`conv(lhs, d_rhs)`, whose transpose is the kernel gradient. On CPU: a 1x1 convolution as a
  matrix product (`_pointwise`); any other with `lhs` and the output in the layouts XLA:CPU's
  kernel-gradient convolution reads (`_batch_minor`); elsewhere as lax has it."""
  plain = lambda lhs, d_rhs: _CONV.bind(lhs, d_rhs, **params)
  if _is_pointwise(d_rhs.shape, params):
    on_cpu = lambda lhs, d_rhs: _pointwise(lhs, d_rhs, params)
  else:
    on_cpu = lambda lhs, d_rhs: _batch_minor(lhs, d_rhs, params)
  return lax.platform_dependent(lhs, d_rhs, cpu=on_cpu, default=plain)


def _batch_minor(lhs: jax.Array, d_rhs: jax.Array, params: dict[str, Any]) -> jax.Array:
  """`conv(lhs, d_rhs)` (the same values) with `lhs` moved to `[feature, spatial..., batch]` and
  the output computed as `[spatial..., batch, feature]`, each by `_unfused_transpose`.

  Its transpose, the kernel gradient, convolves `lhs` with the output gradient over the batch:
  XLA:CPU runs that convolution (made canonical) on `lhs` as `[feature, spatial..., batch]` and
  the output gradient as `[spatial..., batch, feature]`, and, left to itself, transposes both
  with their producers fused in: the transpose of `lhs` with the forward pass's BatchNorm and
  ReLU, the output gradient's with the next layer's BatchNorm and ReLU gradients. Here both moves
  are plain transposes of computed arrays (the output's, transposed by JAX, moves the gradient).
  On 2 AMD EPYC cores (avx512_bf16, no AMX; jaxlib 0.10.2), ResNet-18's forward pass and
  parameter gradient at batch 128 took 2823-2859 ms (best of 12, two runs) against 2921-2947
  with the batch moved by products with identity blocks, this function's previous form, and the
  FGSM-PGK step 19.35 against 18.98 img/s (means of 4 and 5 alternating runs;
  experiments/results/benchmark_steps_cpu.md). A plain transpose of a
  [128, 32, 32, 64] array costs 19 ms, 1.4x an elementwise pass over it (13 ms): the layer's
  kernel gradient is then its bare convolution (59 ms) plus about two such passes. Values are
  exact: only data movement changes."""
  dn = params["dimension_numbers"]
  n = lhs.ndim
  witness = lax.stop_gradient(lhs.reshape(-1)[0])
  lhs_t = _unfused_transpose(lhs, (dn.lhs_spec[1], *dn.lhs_spec[2:], dn.lhs_spec[0]), witness)
  out_spec_t = (n - 2, n - 1, *range(n - 2))  # [spatial..., batch, feature]
  params_t = dict(params, dimension_numbers=lax.ConvDimensionNumbers(
      (n - 1, 0, *range(1, n - 1)), dn.rhs_spec, out_spec_t))
  out_t = _CONV.bind(lhs_t, d_rhs, **params_t)
  # Dimension d of the output as `params` lays it out is dimension role[d] of `out_t`.
  role = {dn.out_spec[0]: n - 2, dn.out_spec[1]: n - 1,
          **{d: i for i, d in enumerate(dn.out_spec[2:])}}
  return _unfused_transpose(out_t, tuple(role[d] for d in range(n)), witness)


def _canonical(d_lhs: jax.Array, rhs: jax.Array, params: dict[str, Any]) -> jax.Array:
  """`conv(d_lhs, rhs)` with the kernel physically swapped (`_swapped`): its transpose, the
  input gradient, convolves with a canonical kernel."""
  rhs_t, params_t = _swapped(rhs, params)
  return _CONV.bind(d_lhs, rhs_t, **params_t)


def _is_strided(params: dict[str, Any]) -> bool:
  """Whether the convolution has a window stride above 1 and no dilation."""
  return (any(s > 1 for s in params["window_strides"])
          and all(d == 1 for d in (params.get("lhs_dilation") or ()))
          and all(d == 1 for d in (params.get("rhs_dilation") or ())))


def _input_tangent(d_lhs: jax.Array, rhs: jax.Array, params: dict[str, Any]) -> jax.Array:
  """`conv(d_lhs, rhs)`, whose transpose is the input gradient, with a canonical kernel
  (`_canonical`). On CPU a strided convolution is taken as a sum over its stride's phases
  (`_phases`); elsewhere, and without strides, as one convolution."""
  if not _is_strided(params):
    return _canonical(d_lhs, rhs, params)
  return lax.platform_dependent(d_lhs, rhs, cpu=lambda d, r: _phases(d, r, params),
                                default=lambda d, r: _canonical(d, r, params))


def _phases(d_lhs: jax.Array, rhs: jax.Array, params: dict[str, Any]) -> jax.Array:
  """A strided convolution as a sum of unstrided ones, one per phase of the stride: the same
  values up to rounding.

  Along a spatial dimension with stride `s`, padding `lo` and `k` taps, output `i` reads input
  `s * i + t - lo` with tap `t`. Write `t - lo = s * q + r` (`0 <= r < s`): tap `t` reads
  element `i + q` of the phase `x_r = x[r::s]`, so the convolution is the sum over phases `r`
  (products over the spatial dimensions) of `x_r` convolved without stride with the taps
  `t = t0, t0 + s, ...` of phase `r` (`t0 = (lo + r) % s`), padded by `-q` of its first tap
  (negative paddings are slices of `x_r`). A phase without taps adds nothing.

  Why: the transpose of a strided convolution, its input gradient, is a convolution of the
  output gradient dilated by the stride; XLA:CPU's Eigen kernel computes the inserted zeros
  (4x the work for stride 2 in 2-D). The transposes here are unstrided convolutions of the
  output gradient with each phase's taps, and one fusion that interleaves them (the transposed
  slices). ResNet-18's stride-2 3x3 layers at batch 128 (2 AMD EPYC cores, avx512_bf16, no
  AMX; jaxlib 0.10.2), each side timed in one process:
  input gradient 93 -> 46 ms (64 -> 128 channels, 32 x 32), 46 -> 25 (128 -> 256), 29 -> 26
  (256 -> 512); PyTorch's 82, 39, 25. The FGSM-PGK ResNet-18 step (2 host devices): 6.58 ->
  6.34 s, medians of 6 alternating pairs in one process (experiments/results/
  benchmark_steps_cpu.notes.md).
  """
  dn = params["dimension_numbers"]
  lhs_spatial, rhs_spatial = dn.lhs_spec[2:], dn.rhs_spec[2:]
  strides, padding = params["window_strides"], params["padding"]
  n_out = [(d_lhs.shape[d] + lo + hi - rhs.shape[r]) // s + 1
           for d, r, s, (lo, hi) in zip(lhs_spatial, rhs_spatial, strides, padding)]
  phase_params = dict(params, window_strides=(1,) * len(strides))
  tangent = None
  for phase in itertools.product(*(range(s) for s in strides)):
    lhs_start, lhs_limit, lhs_step = [0] * d_lhs.ndim, list(d_lhs.shape), [1] * d_lhs.ndim
    rhs_start, rhs_step = [0] * rhs.ndim, [1] * rhs.ndim
    pads, out_pads = [], [(0, 0, 0)] * d_lhs.ndim
    for i, r in enumerate(phase):
      s, lo = strides[i], padding[i][0]
      k, n_r = rhs.shape[rhs_spatial[i]], len(range(r, d_lhs.shape[lhs_spatial[i]], s))
      t0 = (lo + r) % s
      taps = len(range(t0, k, s))
      q0 = (t0 - lo - r) // s  # the first tap reads x_r[i + q0]; x_r has n_r elements
      pad_lo, pad_hi = -q0, n_out[i] + q0 + taps - 1 - n_r
      skip_lo, skip_hi = max(0, -pad_lo), max(0, -pad_hi)  # negative padding: slice x_r
      used = n_r - skip_lo - skip_hi
      if taps == 0 or used <= 0:
        break  # no tap reads this phase
      start = r + s * skip_lo
      lhs_start[lhs_spatial[i]], lhs_step[lhs_spatial[i]] = start, s
      lhs_limit[lhs_spatial[i]] = start + s * (used - 1) + 1
      rhs_start[rhs_spatial[i]], rhs_step[rhs_spatial[i]] = t0, s
      # Padding beyond `taps - 1` gives outputs that read padding alone: they are zeros
      # padded onto the output, so that the transpose's padding is not negative (XLA:CPU
      # reads uninitialised memory for a negatively padded convolution, jaxlib 0.10.2).
      pad_lo, pad_hi = max(pad_lo, 0), max(pad_hi, 0)
      pads.append((min(pad_lo, taps - 1), min(pad_hi, taps - 1)))
      out_pads[dn.out_spec[2 + i]] = (pad_lo - pads[-1][0], pad_hi - pads[-1][1], 0)
    else:
      x_r = lax.slice(d_lhs, lhs_start, lhs_limit, lhs_step)
      w_r = lax.slice(rhs, rhs_start, rhs.shape, rhs_step)
      term = _canonical(x_r, w_r, dict(phase_params, padding=tuple(pads)))
      if any(p != (0, 0, 0) for p in out_pads):
        term = lax.pad(term, jnp.zeros((), term.dtype), out_pads)
      tangent = term if tangent is None else tangent + term
  if tangent is None:  # every tap reads padding
    out = jax.eval_shape(lambda: _CONV.bind(d_lhs, rhs, **params))
    tangent = jnp.zeros(out.shape, out.dtype)
  return tangent


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _conv(lhs, rhs, params_key):
  return _CONV.bind(lhs, rhs, **dict(params_key))


def _conv_jvp(params_key, primals, tangents):
  lhs, rhs = primals
  d_lhs, d_rhs = tangents
  params = dict(params_key)
  out = _conv(lhs, rhs, params_key)
  tangent = None
  if not isinstance(d_lhs, jax.custom_derivatives.SymbolicZero):
    tangent = _input_tangent(d_lhs, rhs, params)
  if not isinstance(d_rhs, jax.custom_derivatives.SymbolicZero):
    t_rhs = _kernel_tangent(lhs, d_rhs, params)
    tangent = t_rhs if tangent is None else tangent + t_rhs
  if tangent is None:
    tangent = jnp.zeros_like(out)
  return out, tangent


_conv.defjvp(_conv_jvp, symbolic_zeros=True)


# What runs the convolutions on CPU (`set_cpu_convolutions`): oneDNN's where it was measured
# faster ("auto", `onednn.auto_choice`), XLA's own, or oneDNN's.
CPU_CONVOLUTIONS = ("auto", "xla", "onednn")
_cpu_convolutions = "xla"  # until set: a library import changes no convolution
_cpu_convolutions_why = "set_cpu_convolutions not called"


def set_cpu_convolutions(name: str) -> str:
  """Makes the convolutions traced from now on (`conv_general_dilated`, `with_fast_conv_grads`)
  run on XLA:CPU's own kernels ("xla", what runs until this is called) or, where
  `onednn.supports` them, on oneDNN ("onednn", building it first; raises
  `onednn.OnednnUnavailable` naming the fix), or on oneDNN where `onednn.auto_choice` picks it
  and on XLA's elsewhere ("auto", the config's default; logged, never raises). Returns what runs:
  "xla" or "onednn". CPU only: GPU and TPU keep XLA's. A process-wide setting, like the XLA flags
  `runtime` sets at start (the training and evaluation functions set it from
  `config.cpu_convolutions`). It is read when a function is traced, and JAX caches traces per
  Python function: a function traced before a change keeps its convolutions, even when jitted
  anew; set it before tracing. Routed convolutions are reverse-mode only (`onednn`)."""
  global _cpu_convolutions, _cpu_convolutions_why  # pylint: disable=global-statement
  if name not in CPU_CONVOLUTIONS:
    raise ValueError(f"Config field `cpu_convolutions`: {name!r} is not one of "
                     f"{', '.join(CPU_CONVOLUTIONS)}.")
  why = f'cpu_convolutions="{name}"'
  if name == "auto":
    name, reason = onednn.auto_choice()
    why = f'cpu_convolutions="auto": {reason}'
  elif name == "onednn":
    onednn.load()
  _cpu_convolutions, _cpu_convolutions_why = name, why
  logging.info("%s", describe_cpu_convolutions())
  return name


def cpu_convolutions() -> str:
  """What runs the convolutions traced now: "xla" or "onednn" (`set_cpu_convolutions`)."""
  return _cpu_convolutions


def describe_cpu_convolutions() -> str:
  """A line for a run's output: what runs the CPU convolutions traced now, and why."""
  return (f"Convolutions on CPU: {'oneDNN' if _cpu_convolutions == 'onednn' else 'XLA'}'s "
          f"({_cpu_convolutions_why}).")


def _bind_fast(lhs: jax.Array, rhs: jax.Array, **params) -> jax.Array:
  """The `conv_general_dilated` primitive with the fast input gradient (its full parameters);
  on oneDNN on CPU where `set_cpu_convolutions` asks and `onednn.supports` it."""
  if params.get("feature_group_count", 1) != 1 or params.get("batch_group_count", 1) != 1:
    return _CONV.bind(lhs, rhs, **params)
  key = _params_key(params)
  if _cpu_convolutions == "onednn" and onednn.supports(lhs.shape, lhs.dtype, rhs.dtype, params):
    return lax.platform_dependent(lhs, rhs, cpu=lambda l, r: onednn.conv_for(l, r, params),
                                  default=lambda l, r: _conv(l, r, key))
  return _conv(lhs, rhs, key)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated` (same arguments, same values) whose input gradient XLA:CPU runs
  on its fast kernels inside loops (module docstring). Pass it to `flax.linen.Conv` as
  `conv_general_dilated=`."""
  # lax's own argument handling (padding strings, defaults, dimension-number specs) traced to
  # its primitive, which is then bound through the custom rule.
  return with_fast_conv_grads(functools.partial(
      lax.conv_general_dilated, window_strides=window_strides, padding=padding,
      lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      batch_group_count=batch_group_count, precision=precision,
      preferred_element_type=preferred_element_type))(lhs, rhs)


def _evaluate(jaxpr: jex.Jaxpr, consts, args) -> list:
  """Evaluates `jaxpr`, binding every `conv_general_dilated` through `_bind_fast` and inlining
  nested jits."""
  env: dict = {}

  def read(v):
    return v.val if isinstance(v, jex.Literal) else env[v]

  env.update(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    name = eqn.primitive.name
    if eqn.primitive is _CONV:
      outs = [_bind_fast(*invals, **eqn.params)]
    elif name in _INLINED and isinstance(eqn.params.get("jaxpr"), jex.ClosedJaxpr):
      inner = eqn.params["jaxpr"]
      outs = _evaluate(inner.jaxpr, inner.consts, invals)
    else:
      params = eqn.primitive.get_bind_params(eqn.params)
      # JAX < 0.7 returned `(subfuns, params)`.
      subfuns, params = params if isinstance(params, tuple) else ((), params)
      with eqn.ctx.manager:
        outs = eqn.primitive.bind(*subfuns, *invals, **params)
      if not eqn.primitive.multiple_results:
        outs = [outs]
    env.update(zip(eqn.outvars, outs))
  return [read(v) for v in jaxpr.outvars]


def with_fast_conv_grads(fn: Callable) -> Callable:
  """`fn` with every convolution it runs (at its top level and in nested jits) replaced by
  `conv_general_dilated`: the same values, and an input gradient that XLA:CPU runs on its fast
  kernels inside loops. `fn` takes and returns pytrees of arrays (e.g. a `logits_fn`); it is
  traced once per call (under an outer `jax.jit`, once per compile). Idempotent."""
  if getattr(fn, "_fast_conv_grads", False):
    return fn

  @functools.wraps(fn)
  def wrapped(*args):
    flat, in_tree = jax.tree.flatten(args)
    closed, out_shape = jax.make_jaxpr(lambda *a: fn(*jax.tree.unflatten(in_tree, a)),
                                       return_shape=True)(*flat)
    outs = _evaluate(closed.jaxpr, closed.consts, flat)
    return jax.tree.unflatten(jax.tree.structure(out_shape), outs)

  wrapped._fast_conv_grads = True  # pylint: disable=protected-access
  return wrapped
