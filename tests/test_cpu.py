"""`regmix_jax.cpu`, the CPU plug-in, seen from the core: the library's models are plain JAX by
default, the plug-in is a value the commands pass down, the JAX internals its rewrite uses are
pinned here, and XLA flags are set only where the installed jaxlib knows them."""

import os
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from regmix_jax import cpu, models
from regmix_jax.cpu import fast_conv, host, rewrite

_CUSTOM = ("custom_jvp_call", "custom_vjp_call")
_SIZES = {"small_cnn": dict(width=4), "wrn": dict(depth=10, width=1),
          "dm_wrn": dict(depth=10, width=1)}


def _convs_under_custom_rules(jaxpr) -> tuple[int, int]:
  """(convolutions in all, convolutions inside a custom derivative rule's call) of a jaxpr."""
  total = custom = 0

  def walk(jaxpr, inside):
    nonlocal total, custom
    for eqn in jaxpr.eqns:
      if eqn.primitive is lax.conv_general_dilated_p:
        total += 1
        custom += inside
      for sub in rewrite.jex.jaxprs_in_params(eqn.params):
        walk(sub, inside or eqn.primitive.name in _CUSTOM)
  walk(jaxpr.jaxpr, False)
  return total, custom


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_a_library_default_model_differentiates_as_lax_does(name):
  """Built with the library's defaults, no convolution of any model sits under a custom
  derivative rule: its gradients and forward-mode derivatives are lax's own. Built with the
  plug-in's `conv`, every one does (what this test would see if the default changed)."""
  size = 64 if name == "preact_resnet18_fgsm_pgk" else 32
  x = jnp.zeros((1, size, size, 3))

  def jaxpr(conv):
    net = models.get_model(name, 10, conv=conv, **_SIZES.get(name, {}))
    variables = jax.eval_shape(lambda: net.init(jax.random.key(0), x, train=False))
    return jax.make_jaxpr(lambda v, x: net.apply(v, x, train=False))(variables, x), net

  plain, net = jaxpr(None)
  assert net.conv_general_dilated is lax.conv_general_dilated
  total, custom = _convs_under_custom_rules(plain)
  assert total > 0 and custom == 0, (total, custom)
  total_fast, custom_fast = _convs_under_custom_rules(jaxpr(fast_conv.FastConv())[0])
  assert custom_fast == total_fast == total


def test_forward_mode_through_a_default_model_works():
  net = models.get_model("small_cnn", 10, width=4)
  x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
  variables = net.init(jax.random.key(0), x, train=False)
  f = lambda x: net.apply(variables, x, train=False)
  _, tangent = jax.jvp(f, (x,), (jnp.ones_like(x),))
  np.testing.assert_allclose(tangent, jax.jacfwd(lambda t: f(x + t * jnp.ones_like(x)))(0.0),
                             rtol=1e-4, atol=1e-5)


def _conv_fn(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_the_jax_internals_the_rewrite_uses():
  """What `rewrite._evaluate` relies on, in the installed JAX: a nested jit is one equation whose
  primitive name is in INLINED and whose `jaxpr` param is a ClosedJaxpr; equations carry
  `ctx.manager`; primitives have `get_bind_params`; the convolution primitive is CONV. If a JAX
  upgrade changes one of these, this test names it (and the rewrite falls back, with a warning)."""
  x, w = jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2))
  closed = jax.make_jaxpr(jax.jit(lambda x: jnp.sin(_conv_fn(x, w))))(x)
  (outer,) = closed.jaxpr.eqns
  assert outer.primitive.name in rewrite.INLINED
  assert isinstance(outer.params["jaxpr"], rewrite.jex.ClosedJaxpr)
  inner = outer.params["jaxpr"].jaxpr.eqns
  assert [e.primitive for e in inner if e.primitive is rewrite.CONV]
  for eqn in inner:
    assert hasattr(eqn.ctx, "manager")
    params = eqn.primitive.get_bind_params(eqn.params)  # a dict (or, before JAX 0.7, a pair)
    assert isinstance(params, dict) or (isinstance(params, tuple) and len(params) == 2)
  assert isinstance(closed.jaxpr.invars[0], rewrite.jex.Var)
  literal = jax.make_jaxpr(lambda x: x * 2.0)(x).jaxpr.eqns[0].invars[1]
  assert isinstance(literal, rewrite.jex.Literal) and literal.val == 2.0
  closed, shape = jax.make_jaxpr(lambda x: {"y": x}, return_shape=True)(x)
  assert isinstance(closed, rewrite.jex.ClosedJaxpr) and shape["y"].shape == x.shape


def test_accelerate_rewrites_a_user_function_without_warning():
  x, w = jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2))
  fn = jax.jit(lambda x: jnp.sin(_conv_fn(x, w)))
  fast = cpu.accelerate(fn, "xla")
  with warnings.catch_warnings():
    warnings.simplefilter("error", rewrite.RewriteWarning)
    total, custom = _convs_under_custom_rules(jax.make_jaxpr(fast)(x))
  assert total == custom == 1
  np.testing.assert_allclose(fast(x), fn(x), rtol=1e-6)


def test_a_rewrite_that_fails_runs_the_function_unchanged_with_one_warning(monkeypatch):
  """A JAX upgrade that breaks the internals: the same values as the plain function, one
  RewriteWarning for many calls."""
  def broken(*args):
    raise AttributeError("'JaxprEqn' object has no attribute 'ctx'")
  monkeypatch.setattr(rewrite, "_evaluate", broken)
  x, w = jax.random.normal(jax.random.key(0), (1, 4, 4, 2)), jnp.ones((3, 3, 2, 2))
  fn = lambda x: jnp.sum(jnp.sin(_conv_fn(x, w)))
  fast = cpu.accelerate(fn, "xla")
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("default")
    for _ in range(3):
      np.testing.assert_allclose(jax.grad(fast)(x), jax.grad(fn)(x), rtol=1e-6)
  messages = [str(w.message) for w in caught if issubclass(w.category, rewrite.RewriteWarning)]
  assert len(messages) == 1 and "no attribute 'ctx'" in messages[0], messages
  assert _convs_under_custom_rules(jax.make_jaxpr(fast)(x))[1] == 0


def test_an_error_of_the_rule_itself_is_raised_not_hidden():
  """The fallback is for JAX's internals; a failure of the convolution rule is the library's own
  bug and must surface (else a layer would silently leave the CPU path)."""
  def broken_bind(lhs, rhs, **params):
    raise ZeroDivisionError("a rule's bug")
  fn = rewrite.replace_convolutions(lambda x: _conv_fn(x, jnp.ones((3, 3, 2, 2))), broken_bind)
  with warnings.catch_warnings():
    warnings.simplefilter("error", rewrite.RewriteWarning)
    with pytest.raises(ZeroDivisionError, match="a rule's bug"):
      fn(jnp.ones((1, 4, 4, 2)))


def test_convolutions_is_a_value_chosen_once():
  """The choice travels as a value: equal choices give equal `conv`s (hashable, so a Flax
  module field), "plain" gives none, and a name outside cpu.CHOICES' resolutions is refused."""
  assert cpu.Convolutions("xla").conv == cpu.Convolutions("xla").conv
  assert hash(cpu.Convolutions("xla").conv) == hash(fast_conv.FastConv())
  assert cpu.Convolutions("plain").conv is None
  assert cpu.choose("plain", backend="cpu").name == "plain"
  assert cpu.choose("xla", backend="cpu") == cpu.Convolutions("xla", 'cpu_convolutions="xla"')
  with pytest.raises(ValueError, match="plain, xla, onednn"):
    cpu.Convolutions("auto")


_START = "import jax, jax.numpy as jnp; print(float(jnp.ones(2).sum()))"


def test_xla_ends_the_process_on_a_flag_it_does_not_know():
  """Why `host.xla_accepts` exists: an unknown XLA flag aborts at backend start."""
  env = dict(os.environ, XLA_FLAGS="--xla_cpu_no_such_flag_regmix=1", JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", _START], env=env, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode != 0 and "no_such_flag" in result.stderr


def test_flags_are_set_only_where_the_installed_jaxlib_knows_them(caplog):
  assert not host.xla_accepts("--xla_cpu_no_such_flag_regmix")
  # The whole name: neither the start nor the end of a flag XLA knows.
  assert not host.xla_accepts("--xla_cpu_experimental_ynn")
  assert not host.xla_accepts("--xla_cpu_fusion_type")
  with caplog.at_level("WARNING"):
    assert host.with_flag("--a=1", "--xla_cpu_no_such_flag_regmix", 3) == "--a=1"
  assert "unknown to the installed jaxlib" in caplog.text
  if not jax.__version__.startswith("0.10."):
    pytest.skip(f"the flags below were checked against jaxlib 0.10 (here {jax.__version__})")
  for flag in (host.YNN_FLAG, host.COLLECTIVE_TIMEOUT_FLAG):
    assert host.xla_accepts(flag), flag
  flags = host.with_collective_timeout(host.with_ynn_fusion_type("", "reduce"), 600)
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", _START], env=env, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0 and result.stdout.strip() == "2.0", result.stderr[-2000:]
