"""Rebinding the convolutions of any JAX function: the way `FastConv` reaches models the library
did not build (a user's `logits_fn`).

`replace_convolutions(fn, bind)` traces `fn` to a jaxpr and evaluates it again, binding each
`conv_general_dilated` (at the top level and inside nested `jax.jit`s) through `bind` and every
other equation as it was. It uses JAX internals (`jax.extend.core`, `Primitive.get_bind_params`,
`JaxprEqn.ctx`, the nested-jit primitives' names; `tests/test_cpu.py` pins them): where they fail
(a JAX upgrade), the function runs unchanged, with one warning. Convolutions inside a model's own
loops, conditionals or custom derivative rules are left as they are.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable

import jax
import jax.extend.core as jex
from jax import lax

CONV = lax.conv_general_dilated_p
# Primitives whose body is inlined: a nested `jax.jit` ("pjit" before JAX 0.7). Other
# higher-order primitives (loops, conditionals, remat, custom rules) are bound as they are.
INLINED = ("jit", "pjit")
BindConv = Callable[..., jax.Array]  # (lhs, rhs, **conv_general_dilated_p params) -> out


class RewriteWarning(RuntimeWarning):
  """A function's convolutions could not be rebound; it ran unchanged."""


class _BindError(Exception):
  """An error raised by `bind` itself (the caller's rule, not JAX's internals): re-raised."""


def _evaluate(jaxpr: jex.Jaxpr, consts, args, bind: BindConv) -> list:
  """Evaluates `jaxpr`, binding every `conv_general_dilated` through `bind` and inlining nested
  jits."""
  env: dict = {}

  def read(v):
    return v.val if isinstance(v, jex.Literal) else env[v]

  env.update(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    if eqn.primitive is CONV:
      try:
        outs = [bind(*invals, **eqn.params)]
      except Exception as e:  # pylint: disable=broad-except  (passed on as it is, below)
        raise _BindError() from e
    elif eqn.primitive.name in INLINED and isinstance(eqn.params.get("jaxpr"), jex.ClosedJaxpr):
      inner = eqn.params["jaxpr"]
      outs = _evaluate(inner.jaxpr, inner.consts, invals, bind)
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


def replace_convolutions(fn: Callable, bind: BindConv) -> Callable:
  """`fn` (pytrees of arrays in and out) with every convolution it runs bound through `bind`.

  Traced at every call: call it inside `jax.jit` (as the attacks do), or jit the result; called
  eagerly it re-traces and runs `fn`'s nested jits op by op. Where JAX's internals fail the
  rebinding, `fn` itself runs, with a `RewriteWarning` (once per cause; equations with effects
  already bound then run twice); an error raised by `bind` itself is raised. Idempotent for an
  equal `bind` (a bound method of an equal object: `FastConv` is a value)."""
  marker = (getattr(bind, "__func__", bind), getattr(bind, "__self__", None))
  if getattr(fn, "_regmix_bind_conv", None) == marker:
    return fn

  @functools.wraps(fn)
  def wrapped(*args):
    flat, in_tree = jax.tree.flatten(args)
    closed, out_shape = jax.make_jaxpr(lambda *a: fn(*jax.tree.unflatten(in_tree, a)),
                                       return_shape=True)(*flat)
    try:
      outs = _evaluate(closed.jaxpr, closed.consts, flat, bind)
    except _BindError as e:
      raise e.__cause__  # pylint: disable=raise-missing-from  (the rule's own error)
    except Exception as e:  # pylint: disable=broad-except  (any failure of JAX's internals)
      warnings.warn(f"regmix_jax.cpu could not rebind a function's convolutions "
                    f"({type(e).__name__}: {e}); it runs unchanged (the same values, without "
                    f"the CPU speed-up). A JAX upgrade that changed the internals "
                    f"regmix_jax/cpu/rewrite.py uses does this.", RewriteWarning, stacklevel=2)
      return fn(*args)
    return jax.tree.unflatten(jax.tree.structure(out_shape), outs)

  wrapped._regmix_bind_conv = marker  # pylint: disable=protected-access
  return wrapped

