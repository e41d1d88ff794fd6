"""Convolution gradient rules for XLA:CPU: the same values as `lax.conv_general_dilated`, with
derivatives laid out so that XLA:CPU runs them on its fast kernels. CPU only; GPU and TPU
compilers choose convolution layouts themselves.

What each rule fixes (figures: docs/performance.md):
- Input gradients inside loops (every gradient attack, and the attacks inside PGD-AT, TRADES and
  MART training). lax's input gradient convolves with the kernel's feature dimensions swapped;
  XLA:CPU makes such kernels canonical only in the entry computation
  (xla/service/cpu/conv_canonicalization.h), so inside a `fori_loop` it ran a naive loop nest.
  Here the input tangent convolves with the kernel physically transposed (`_canonical`), the same
  linear map, so its transpose sees a canonical kernel.
- Input gradients of strided convolutions: lax's convolves the stride-dilated output gradient,
  and XLA:CPU computes the inserted zeros; here the tangent is a sum over the stride's phases of
  unstrided convolutions (`_phases`).
- Kernel gradients: XLA:CPU fused the elementwise producers of the layer input and the output
  gradient (BatchNorm, ReLU, their gradients) into strided transposes; here both are moved by
  plain transposes XLA cannot fuse into (`_batch_minor`), and 1x1 kernels' gradients are one
  matrix product (`_pointwise`).

`FastConv` is the public form: a `conv_general_dilated` to give a model, optionally routing to
oneDNN (`onednn.py`). Values equal lax's up to float rounding.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from regmix_jax.cpu import onednn as onednn_lib
from regmix_jax.cpu import rewrite

_CONV = rewrite.CONV


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
  transpose's strided reads, several times slower. `witness` must not be a tangent (it comes from
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
  the output gradient as a strided "kernel" the size of the image (several times slower)."""
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
  are plain transposes of computed arrays (the output's, transposed by JAX, moves the gradient):
  the layer's kernel gradient is then its bare convolution plus about two elementwise passes.
  Values are exact: only data movement changes."""
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
  slices).
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


@dataclasses.dataclass(frozen=True)
class FastConv:
  """`lax.conv_general_dilated` (same arguments, same values up to float rounding) with the CPU
  gradient rules of this module, and, with `onednn=True`, the convolutions `onednn.supports` on
  oneDNN (inputs at least `onednn_min_size` wide; 0: `onednn.default_min_size()`, this CPU's
  measured threshold). A value: pass it to a model as its
  `conv_general_dilated` (`models.build_models(..., conv=...)`); `bind` is what
  `rewrite.replace_convolutions` uses for a function the library did not build. The CPU paths run
  on CPU only (`lax.platform_dependent`); elsewhere the rules compute lax's layouts. Grouped
  convolutions keep lax's rule. `jax.jvp` through a convolution routed to oneDNN raises (its rule
  is reverse-mode, custom_vjp). `onednn_threads`: OpenMP threads per oneDNN call (0: the cores
  shared among the host devices, `onednn.threads_per_device`). `onednn_pack`: each oneDNN call's
  kernel reordered to oneDNN's layout by a call of its own, which XLA hoists out of the loops that
  reuse the weights (an attack's iterations); slower outside loops (`onednn._packed`)."""

  onednn: bool = False
  onednn_min_size: int = 0
  onednn_threads: int = 0
  onednn_pack: bool = False

  def __post_init__(self):
    if self.onednn_min_size < 0:
      raise ValueError(f"onednn_min_size must be >= 0 (0: this CPU's default), got "
                       f"{self.onednn_min_size}.")
    if self.onednn_threads < 0:
      raise ValueError(f"onednn_threads must be >= 0 (0: per host device), got "
                       f"{self.onednn_threads}.")
    if self.onednn:
      onednn_lib.load()  # registers the FFI target; raises OnednnUnavailable naming the fix

  @property
  def min_size(self) -> int:
    """The narrowest input map routed to oneDNN (`onednn_min_size`, or this CPU's default)."""
    return onednn_lib.resolve_min_size(self.onednn_min_size)

  def bind(self, lhs: jax.Array, rhs: jax.Array, **params) -> jax.Array:
    """The `conv_general_dilated` primitive (its full parameters) through this module's rules."""
    if params.get("feature_group_count", 1) != 1 or params.get("batch_group_count", 1) != 1:
      return _CONV.bind(lhs, rhs, **params)
    key = _params_key(params)
    if self.onednn and onednn_lib.supports(lhs.shape, rhs.shape, lhs.dtype, rhs.dtype, params,
                                           min_size=self.min_size):
      return lax.platform_dependent(
          lhs, rhs, cpu=lambda l, r: onednn_lib.conv_for(l, r, params, self.onednn_threads,
                                                self.onednn_pack),
          default=lambda l, r: _conv(l, r, key))
    return _conv(lhs, rhs, key)

  def __call__(self, lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
               dimension_numbers=None, feature_group_count=1, batch_group_count=1,
               precision=None, preferred_element_type=None):
    # lax's own argument handling (padding strings, defaults, dimension-number specs) traced to
    # its primitive, which is then bound through `bind`.
    return rewrite.replace_convolutions(functools.partial(
        lax.conv_general_dilated, window_strides=window_strides, padding=padding,
        lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type), self.bind)(lhs, rhs)
