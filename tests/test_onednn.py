"""`cpu.onednn`: convolutions on oneDNN through an XLA FFI call give lax's values and derivatives
(of any order), run only where asked and supported, and a missing oneDNN names the fix.

Needs the `onednn` extra and g++ (`.ci/run` installs it); the tests of oneDNN's values skip
without them, the error-message tests do not."""

import functools
import re
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from regmix_jax import config as config_lib
from regmix_jax import cpu, evaluate, models, train
from regmix_jax.cpu import fast_conv, host, onednn

import tiny_runs

try:
  onednn.load()
  _MISSING = None
except onednn.OnednnUnavailable as e:
  _MISSING = str(e)
needs_onednn = pytest.mark.skipif(_MISSING is not None, reason=f"oneDNN unavailable: {_MISSING}")

NHWC = ("NHWC", "HWIO", "NHWC")


def _lax(strides, padding):
  return lambda x, w: lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)


def _ours(strides, padding, pack=False):
  return lambda x, w: onednn.conv(x, w, strides, padding, 1, pack)


# ResNet's convolutions (3x3 stride 1 and 2, 1x1 stride 2), an odd size, asymmetric padding.
CASES = [((16, 16), 3, (1, 1), ((1, 1), (1, 1))), ((16, 16), 3, (2, 2), ((1, 1), (1, 1))),
         ((17, 17), 3, (2, 2), ((1, 1), (1, 1))), ((16, 16), 1, (2, 2), ((0, 0), (0, 0))),
         ((16, 18), 3, (1, 2), ((0, 2), (1, 0))), ((16, 16), 1, (1, 1), ((1, 1), (1, 1))),
         ((16, 16), 3, (1, 1), ((3, 3), (3, 3)))]


@needs_onednn
@pytest.mark.parametrize("hw,k,strides,padding", CASES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("pack", [False, True], ids=["", "packed"])
def test_values_and_gradients_are_lax_s(hw, k, strides, padding, dtype, pack):
  if dtype == jnp.bfloat16 and "avx512f" not in host.cpu_flags():
    pytest.skip("oneDNN 3.2 has no bfloat16 convolutions on a CPU without AVX-512 (the library "
                "routes bfloat16 only on CPUs with AVX512-BF16 or AMX)")
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  # A strided 1x1 convolution is routed only from MIN_STRIDED_POINTWISE_CHANNELS input channels.
  ci = 16 if k == 1 and max(strides) > 1 else 5
  x = jax.random.normal(k1, (3, *hw, ci), dtype)
  w = jax.random.normal(k2, (k, k, ci, 7), dtype)
  ref, ours = _lax(strides, padding), _ours(strides, padding, pack)
  y = ref(x, w)
  g = jax.random.normal(k3, y.shape, dtype)
  tol = dict(rtol=1e-5, atol=1e-4) if dtype == jnp.float32 else dict(rtol=2e-2, atol=0.25)
  f32 = lambda t: np.asarray(t, np.float32)
  np.testing.assert_allclose(f32(jax.jit(ours)(x, w)), f32(y), **tol)
  for a, b in zip(jax.vjp(ours, x, w)[1](g), jax.vjp(ref, x, w)[1](g)):
    assert a.dtype == b.dtype == dtype
    np.testing.assert_allclose(f32(a), f32(b), **tol)


@needs_onednn
@pytest.mark.parametrize("pack", [False, True], ids=["", "packed"])
def test_second_order_gradients_are_lax_s(pack):
  """An input gradient inside a loss differentiated again (an attack in a training loss): each of
  the three oneDNN maps differentiates through the other two."""
  k1, k2 = jax.random.split(jax.random.key(1), 2)
  x = jax.random.normal(k1, (2, 16, 16, 3))
  w = jax.random.normal(k2, (3, 3, 3, 4)) * 0.3

  def make(conv):
    def loss(x, w):
      inner = jax.grad(lambda x: jnp.sum(jnp.sin(conv(x, w))))(x)
      return jnp.sum(jnp.cos(conv(x + 0.1 * inner, w))) + jnp.sum(
          jax.grad(lambda w: jnp.sum(conv(x, w) ** 2))(w) ** 2)
    return jax.jit(jax.grad(loss, (0, 1)))

  strides, padding = (2, 2), ((1, 1), (1, 1))
  for a, b in zip(make(_ours(strides, padding, pack))(x, w),
                  make(_lax(strides, padding))(x, w)):
    # values up to 1e4 with cancellations: float32 rounding of the largest terms
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * float(np.abs(b).max()))


@needs_onednn
@pytest.mark.parametrize("pack", [False, True], ids=["", "packed"])
def test_gradients_under_vmap_are_lax_s(pack):
  """FAB takes a vjp per class under vmap: the FFI calls run once per element (packed: the
  kernel once, unbatched; per-example kernels, batched, one pack per element)."""
  k1, k2, k3 = jax.random.split(jax.random.key(4), 3)
  x = jax.random.normal(k1, (2, 16, 16, 3))
  w = jax.random.normal(k2, (3, 3, 3, 4))
  strides, padding = (2, 2), ((1, 1), (1, 1))
  gs = jax.random.normal(k3, (5, 2, 8, 8, 4))
  for a, b in zip(jax.vmap(jax.vjp(_ours(strides, padding, pack), x, w)[1])(gs),
                  jax.vmap(jax.vjp(_lax(strides, padding), x, w)[1])(gs)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
  ws = jax.random.normal(k3, (5, 3, 3, 3, 4))
  np.testing.assert_allclose(jax.vmap(_ours(strides, padding, pack), (None, 0))(x, ws),
                             jax.vmap(_lax(strides, padding), (None, 0))(x, ws),
                             rtol=1e-5, atol=1e-4)


def _hlo(fn, *args) -> str:
  return jax.jit(fn).lower(*args).as_text()


@needs_onednn
def test_routed_only_where_asked_and_supported():
  def conv(fast, **kw):
    return lambda x, w: fast(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC, **kw)
  dnnl = fast_conv.FastConv(onednn=True, onednn_min_size=16)
  w = jnp.ones((3, 3, 4, 4))
  assert onednn.TARGET in _hlo(conv(dnnl), jnp.ones((2, 16, 16, 4)), w)
  assert onednn.TARGET not in _hlo(conv(dnnl), jnp.ones((2, 8, 8, 4)), w)  # below the minimum
  assert onednn.TARGET in _hlo(conv(fast_conv.FastConv(onednn=True, onednn_min_size=8)),
                               jnp.ones((2, 8, 8, 4)), w)
  assert onednn.TARGET not in _hlo(conv(dnnl, feature_group_count=2), jnp.ones((2, 16, 16, 4)),
                                   jnp.ones((3, 3, 2, 4)))
  assert onednn.TARGET not in _hlo(conv(fast_conv.FastConv()), jnp.ones((2, 16, 16, 4)), w)
  # oneDNN 3.2 corrupts memory computing the input gradient of a strided 1x1 convolution with
  # few input channels (on AVX2): those stay on XLA.
  pointwise = lambda x, w: dnnl(x, w, (2, 2), "VALID", dimension_numbers=NHWC)
  assert onednn.TARGET not in _hlo(pointwise, jnp.ones((2, 16, 16, 4)), jnp.ones((1, 1, 4, 8)))
  assert onednn.TARGET in _hlo(pointwise, jnp.ones((2, 16, 16, 16)), jnp.ones((1, 1, 16, 8)))


@needs_onednn
@pytest.mark.parametrize("native_bf16", [True, False])
def test_bf16_routed_only_on_a_cpu_with_bf16_units(monkeypatch, native_bf16):
  """Without AVX512-BF16 or AMX oneDNN emulates bf16, slower than XLA: those stay on XLA."""
  monkeypatch.setattr(onednn, "cpu_has_bf16", lambda: native_bf16)
  conv = lambda x, w: fast_conv.FastConv(onednn=True)(x, w, (1, 1), ((1, 1), (1, 1)),
                                                     dimension_numbers=NHWC)
  x, w = jnp.ones((2, 16, 16, 4), jnp.bfloat16), jnp.ones((3, 3, 4, 4), jnp.bfloat16)
  assert (onednn.TARGET in _hlo(conv, x, w)) == native_bf16
  assert onednn.TARGET in _hlo(lambda x, w: conv(x, w), x.astype(jnp.float32),
                               w.astype(jnp.float32))


@needs_onednn
def test_a_models_training_gradients_are_the_same():
  """The small CNN on 16x16 inputs (its first convolutions on oneDNN, the strided rest on XLA
  where the CPU's threshold is 16, on oneDNN where it is 1):
  the gradient of a loss around an input-gradient step, oneDNN's against XLA's."""
  x = jax.random.uniform(jax.random.key(2), (4, 16, 16, 3))
  labels = jnp.arange(4)
  grads = {}
  for name in ("onednn", "xla"):
    net = models.get_model("small_cnn", 10, width=4, conv=cpu.Convolutions(name).conv)
    variables = net.init(jax.random.key(3), x, train=False)

    def loss(params):
      ce = lambda x: optax.softmax_cross_entropy_with_integer_labels(
          net.apply({**variables, "params": params}, x, train=False), labels).sum()
      return ce(x + 0.5 * jax.grad(ce)(x))

    fn = jax.jit(jax.grad(loss))
    assert (onednn.TARGET in fn.lower(variables["params"]).as_text()) == (name == "onednn")
    grads[name] = fn(variables["params"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               grads["onednn"], grads["xla"])


def test_an_unknown_setting_names_the_field():
  config = config_lib.base_config()
  config.cpu_convolutions = "mkl"
  with pytest.raises(ValueError, match="`cpu_convolutions`.*auto, xla, onednn, plain"):
    config_lib.validate(config)
  with pytest.raises(ValueError, match="`cpu_convolutions`"):
    cpu.choose("mkl")


def _vendor(monkeypatch, vendor: str, avx512: bool | None = None) -> None:
  """This CPU's vendor as `vendor` for the test, with or without AVX-512 when `avx512` says (its
  other flags this CPU's), and `default_min_size` recomputed."""
  monkeypatch.setattr(onednn.host, "cpu_vendor", lambda: vendor)
  if avx512 is not None:
    flags = host.cpu_flags() - {"avx512f"} | ({"avx512f"} if avx512 else set())
    monkeypatch.setattr(onednn.host, "cpu_flags", lambda: flags)
  onednn.default_min_size.cache_clear()
  monkeypatch.setattr(onednn, "default_min_size",
                      functools.cache(onednn.default_min_size.__wrapped__))


@pytest.mark.parametrize("vendor, avx512, size", [("GenuineIntel", True, 16),
                                                  ("AuthenticAMD", True, 1),
                                                  ("AuthenticAMD", False, 16), ("", True, 16)])
def test_narrow_maps_go_to_onednn_on_the_cpus_where_that_was_measured_faster(monkeypatch, vendor,
                                                                            avx512, size):
  """`cpu_onednn_min_size` 0 (the default) is the threshold measured for the CPU: every map on
  AMD CPUs with AVX-512, maps at least 16 wide on Intel, unknown and AVX2-only CPUs; a run's
  value wins; a bad value fails at start naming the field; the run's first line says which maps
  go to oneDNN."""
  _vendor(monkeypatch, vendor, avx512)
  assert onednn.default_min_size() == size
  assert fast_conv.FastConv().min_size == size
  assert fast_conv.FastConv(onednn_min_size=8).min_size == 8
  config = config_lib.base_config()
  assert config.cpu_onednn_min_size == 0
  assert cpu.convolutions_for(config).conv.min_size == size
  picked = cpu.Convolutions("onednn", 'cpu_convolutions="onednn"')
  assert picked.describe() == (
      "Convolutions on CPU: oneDNN's " + ("for every map" if size == 1 else
                                         "for input maps at least 16 wide, XLA's for the rest")
      + ' (cpu_convolutions="onednn").')
  config.cpu_onednn_min_size = 8
  assert cpu.convolutions_for(config).onednn_min_size == 8
  for bad in (-1, -16):
    config.cpu_onednn_min_size = bad
    with pytest.raises(ValueError, match="`cpu_onednn_min_size` must be an integer >= 0"):
      config_lib.validate(config)
  with pytest.raises(ValueError, match="onednn_min_size must be >= 0"):
    fast_conv.FastConv(onednn_min_size=-1)


@needs_onednn
@pytest.mark.parametrize("vendor", ["GenuineIntel", "AuthenticAMD"])
def test_the_default_routes_8x8_maps_to_onednn_on_amd_only(monkeypatch, vendor):
  _vendor(monkeypatch, vendor, avx512=True)
  conv = lambda x, w: fast_conv.FastConv(onednn=True)(x, w, (1, 1), ((1, 1), (1, 1)),
                                                      dimension_numbers=NHWC)
  hlo = _hlo(conv, jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 4)))
  assert (onednn.TARGET in hlo) == (vendor == "AuthenticAMD")


@pytest.mark.parametrize("machine", ["x86_avx512", "no_avx512", "aarch64", "not_installed",
                                     "does_not_build"])
def test_auto_takes_onednn_only_where_it_was_measured_faster_and_builds(monkeypatch, caplog,
                                                                       machine):
  """config.cpu_convolutions="auto" (the default): oneDNN's convolutions on x86-64 Linux with
  AVX-512, oneDNN installed and its handler built; XLA's elsewhere, never an error; a oneDNN
  that is installed but cannot be built warns, naming the cause."""
  flags = {"sse4_2", "avx2"} | (set() if machine == "no_avx512" else {"avx512f"})
  monkeypatch.setattr(onednn.host, "cpu_flags", lambda: frozenset(flags))
  _vendor(monkeypatch, "GenuineIntel")
  monkeypatch.setattr(onednn.platform, "machine",
                      lambda: "aarch64" if machine == "aarch64" else "x86_64")
  monkeypatch.setattr(onednn.platform, "system", lambda: "Linux")
  if machine == "not_installed":
    monkeypatch.setattr(onednn, "HEADERS_DIST", "no-such-onednn-headers")
  else:  # as if the extra were installed, here or not
    monkeypatch.setattr(onednn.importlib.metadata, "distribution", lambda name: name)

  def load():
    if machine == "does_not_build":
      raise onednn.OnednnUnavailable("No C++ compiler found to build onednn_conv.cc")
  monkeypatch.setattr(onednn, "load", load)
  with caplog.at_level("WARNING"):
    picked = cpu.choose("auto", backend="cpu")
  assert picked.name == ("onednn" if machine == "x86_avx512" else "xla")
  reason = onednn.auto_choice()[1]
  assert {"no_avx512": "lacks avx512f", "aarch64": "x86-64 Linux, not Linux aarch64",
          "not_installed": "not installed", "does_not_build": "installed but unusable",
          "x86_avx512": "AVX-512, and oneDNN installed"}[machine] in reason
  assert ("No C++ compiler found" in caplog.text) == (machine == "does_not_build")
  where = " for input maps at least 16 wide, XLA's for the rest" if picked.name == "onednn" else ""
  assert picked.describe() == (  # a run's first line of output
      f"Convolutions on CPU: {'oneDNN' if picked.name == 'onednn' else 'XLA'}'s{where} "
      f'(cpu_convolutions="auto": {reason}).')


@pytest.mark.parametrize("setting", cpu.CHOICES)
def test_off_cpu_nothing_of_the_plug_in_is_traced(setting):
  """On GPU and TPU every setting is "plain": the models keep lax's convolution, and
  `accelerate` returns the function itself."""
  chosen = cpu.choose(setting, backend="gpu")
  assert chosen.name == "plain" and chosen.conv is None
  fn = lambda x: x
  assert chosen.accelerate(fn) is fn


def test_onednn_where_unavailable_runs_xla_s_with_a_warning(monkeypatch, caplog):
  """An explicit "onednn" (a run's config from another machine) never stops a run: XLA's
  convolutions, with a warning naming the cause, and the run's first line says so."""
  def unavailable():
    raise onednn.OnednnUnavailable("onednn-devel-cpu-gomp is not installed")
  monkeypatch.setattr(onednn, "load", unavailable)
  with caplog.at_level("WARNING"):
    chosen = cpu.choose("onednn", backend="cpu")
  assert chosen.name == "xla" and "onednn-devel-cpu-gomp is not installed" in caplog.text
  assert chosen.describe() == ('Convolutions on CPU: XLA\'s (cpu_convolutions="onednn", but '
                               'oneDNN is unavailable here).')


def test_a_default_config_trains_on_what_auto_picks():
  """The config's default is "auto", and the trainer resolves it before anything is traced (on
  an x86-64 CPU with AVX-512 and the extra installed: oneDNN's)."""
  config = tiny_runs.tiny_config("fgsm_pgk", num_epochs=1)
  assert config.cpu_convolutions == config_lib.base_config().cpu_convolutions == "auto"
  trainer = train.build_trainer(config)
  assert trainer.convolutions.name == onednn.auto_choice()[0]
  assert trainer.models["target"].conv_general_dilated == trainer.convolutions.conv


def test_missing_onednn_names_the_fix(monkeypatch, tmp_path):
  monkeypatch.setenv("REGMIX_JAX_CACHE", str(tmp_path))
  monkeypatch.setattr(onednn, "HEADERS_DIST", "no-such-onednn-headers")
  with pytest.raises(onednn.OnednnUnavailable,
                     match=r'no-such-onednn-headers is not installed.*pip install "regmix_jax\[onednn\]"'
                           r'.*cpu_convolutions="xla"'):
    onednn.build()


def test_an_unwritable_cache_names_the_fix(monkeypatch, tmp_path):
  if _MISSING is not None and "not installed" in _MISSING:
    pytest.skip(f"oneDNN unavailable: {_MISSING}")
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  monkeypatch.setenv("REGMIX_JAX_CACHE", str(blocker / "cache"))  # below a file: mkdir fails
  with pytest.raises(onednn.OnednnUnavailable, match="REGMIX_JAX_CACHE to a writable directory"):
    onednn.build()


@needs_onednn
def test_a_failed_compile_says_why_and_leaves_no_file(monkeypatch, tmp_path):
  source = tmp_path / "broken.cc"
  source.write_text("this is not C++\n")
  monkeypatch.setenv("REGMIX_JAX_CACHE", str(tmp_path / "cache"))
  monkeypatch.setattr(onednn, "SOURCE", source)
  with pytest.raises(onednn.OnednnUnavailable, match="Compiling .*broken.cc failed"):
    onednn.build()
  assert list((tmp_path / "cache").iterdir()) == []


@needs_onednn
def test_the_one_time_build_says_so_and_how_long_it_took(monkeypatch, tmp_path, capsys):
  """A first run was silent for the build's 15-20 s. (The compiler is faked: a real build is
  the other tests'.)"""
  monkeypatch.setenv("REGMIX_JAX_CACHE", str(tmp_path / "cache"))

  def fake_compile(command, **kwargs):
    with open(command[command.index("-o") + 1], "wb") as f:
      f.write(b"\x7fELF")
    return subprocess.CompletedProcess(command, 0, "", "")

  monkeypatch.setattr(onednn.subprocess, "run", fake_compile)
  path = onednn.build()
  err = capsys.readouterr().err
  assert f"Building oneDNN's convolution handler into {tmp_path / 'cache'}" in err
  assert re.search(r"Built in \d+ s\.", err)
  assert onednn.build() == path and capsys.readouterr().err == ""  # built once, then silent


@needs_onednn
def test_a_run_trains_on_onednn_and_evaluates_where_it_is_missing(tmp_path, monkeypatch, caplog,
                                                                  capsys):
  """Training with cpu_convolutions="onednn" (its 16x16 layers on oneDNN) writes it into the
  run's config; evaluating that run where oneDNN cannot load warns and uses XLA's convolutions,
  with the same accuracies as on oneDNN."""
  workdir = str(tmp_path / "run")
  config = tiny_runs.tiny_config("fgsm_pgk", num_epochs=1, cpu_convolutions="onednn",
                                 **{"eval.attacks": "clean"})
  train.train_and_evaluate(config, workdir)
  where = ("for every map" if onednn.default_min_size() == 1 else
           f"for input maps at least {onednn.default_min_size()} wide, XLA's for the rest")
  assert capsys.readouterr().out.startswith(
      f'Convolutions on CPU: oneDNN\'s {where} (cpu_convolutions="onednn").\n')
  on_onednn = evaluate.evaluate_checkpoint(workdir, attacks_spec="clean,pgd3", progress=False)

  # AutoAttack runs each batch on one device of the 4 here: its model asks for every core.
  seen = {}

  def capture(logits_fn, x, *args, params, **kwargs):
    seen["threads"] = _threads_of_calls(logits_fn, params, x[:2])
    raise KeyboardInterrupt  # stands for the rest of the evaluation
  monkeypatch.setattr(evaluate.attacks, "run_autoattack", capture)
  with pytest.raises(KeyboardInterrupt):
    evaluate.evaluate_checkpoint(workdir, attacks_spec="aa", progress=False, write=False)
  assert seen["threads"] and set(seen["threads"]) == {onednn.host_cores()}
  monkeypatch.undo()

  def unavailable():
    raise onednn.OnednnUnavailable("onednn-devel-cpu-gomp is not installed")
  monkeypatch.setattr(onednn, "load", unavailable)
  with caplog.at_level("WARNING"):
    on_xla = evaluate.evaluate_checkpoint(workdir, attacks_spec="clean,pgd3", progress=False)
  assert 'cpu_convolutions="onednn", but oneDNN is unavailable here' in caplog.text
  assert on_xla["accuracy"] == pytest.approx(on_onednn["accuracy"], abs=1 / 32)


def _threads_of_calls(fn, *args, target=onednn.TARGET) -> list[int]:
  """The `threads` attribute of each oneDNN call to `target` `fn` lowers to."""
  text = jax.jit(fn).lower(*args).as_text()
  return [int(t) for t in re.findall(rf"@{target}\([^\n]*?threads = (\d+) : i64", text)]


def _computations(hlo: str) -> dict[str, str]:
  """A compiled module's text split into its computations, by name ("ENTRY" for the entry)."""
  out = {}
  for block in hlo.split("\n\n"):
    head = block.strip().splitlines()[0] if block.strip() else ""
    m = re.match(r"(ENTRY )?%?([\w.\-]+)", head)
    if m and "{" in head:
      out["ENTRY" if m.group(1) else m.group(2)] = block
  return out


@needs_onednn
def test_attacks_pack_each_kernel_once_outside_their_loop():
  """`for_attacks`: the forward pass's and the input gradient's kernels are reordered to oneDNN's
  layout by calls of their own, which XLA hoists out of the attack's loop (one reorder per call
  of the jitted attack, not per iteration); the same values as unpacked kernels, with the thread
  count the layout was chosen for. Without it, or with a thread count left to run time, no
  kernel is packed."""
  x = jax.random.uniform(jax.random.key(0), (3, 16, 16, 4))
  w = 0.3 * jax.random.normal(jax.random.key(1), (3, 3, 4, 5))
  chosen = cpu.Convolutions("onednn").on_one_device()

  def attack(conv):
    loss = lambda z, w: jnp.sum(jnp.tanh(conv(z, w, (1, 1), "SAME", dimension_numbers=NHWC)))

    def run(z, w):  # the weights an argument, as AutoAttack's passes take them
      step = lambda _, z: jnp.clip(z + 0.01 * jnp.sign(jax.grad(loss)(z, w)), 0, 1)
      return jax.lax.fori_loop(0, 5, step, z)
    return jax.jit(run)

  packed = attack(chosen.for_attacks().conv)
  comps = _computations(packed.lower(x, w).compile().as_text())
  bodies = [comps[b] for b in re.findall(r"body=%?([\w.\-]+)", comps["ENTRY"])]
  assert len(bodies) == 1
  assert comps["ENTRY"].count(onednn.PACK_TARGET) == 2  # forward and input-gradient layouts
  assert onednn.PACK_TARGET not in bodies[0] and bodies[0].count(onednn.TARGET) == 2
  for conv in (chosen.conv, lambda *a, **k: lax.conv_general_dilated(*a, **k)):
    np.testing.assert_allclose(packed(x, w), attack(conv)(x, w), atol=1e-6)
  with_packs = lambda c: jax.grad(lambda z, w: jnp.sum(c(z, w, (1, 1), "SAME",
                                                         dimension_numbers=NHWC) ** 2),
                                  argnums=(0, 1))
  assert _threads_of_calls(with_packs(chosen.for_attacks().conv), x, w,
                           target=onednn.PACK_TARGET) == [onednn.host_cores()] * 2
  assert _threads_of_calls(with_packs(chosen.conv), x, w, target=onednn.PACK_TARGET) == []
  at_run_time = lambda z, w: onednn.conv(z, w, (1, 1), ((1, 1), (1, 1)), 0, True)
  assert onednn.PACK_TARGET not in jax.jit(at_run_time).lower(x, w).as_text()


@needs_onednn
def test_a_computation_on_one_device_of_several_gets_every_core():
  """A step mapped over the host devices gives each oneDNN call the cores shared among them; a
  computation one device runs alone (AutoAttack on CPU: the evaluate command, `run_autoattack`
  without `devices`) asks `on_one_device` for every core, forward and gradient alike, and
  `evaluate.autoattack_net` gives it that model. (With the per-device share, a 2-core machine's 2
  host devices left a core idle: its passes 1.5-1.7x slower.)"""
  x, w = jnp.ones((2, 16, 16, 4)), jnp.ones((3, 3, 4, 5))
  conv = lambda c: (lambda x, w: jnp.sum(c(x, w, (1, 1), "SAME", dimension_numbers=NHWC) ** 2))
  chosen = cpu.Convolutions("onednn")
  shared = onednn.threads_per_device()
  assert shared == max(1, onednn.host_cores() // jax.local_device_count())
  assert set(_threads_of_calls(conv(chosen.conv), x, w)) == {shared}
  one = chosen.on_one_device()
  assert one.onednn_threads == onednn.host_cores() and one.name == "onednn"
  # The forward pass, the input gradient and the kernel gradient: all three kinds of call.
  threads = _threads_of_calls(jax.grad(conv(one.conv), argnums=(0, 1)), x, w)
  assert len(threads) == 3 and set(threads) == {onednn.host_cores()}
  with pytest.raises(ValueError, match="onednn_threads"):
    fast_conv.FastConv(onednn=True, onednn_threads=-1)

  net = models.get_model("small_cnn", 10, width=4, conv=chosen.conv)
  variables = net.init(jax.random.key(0), jnp.ones((1, 32, 32, 3)), train=False)
  image = jnp.ones((2, 32, 32, 3))
  logits = lambda m: (lambda z: m.apply(variables, z, train=False))
  aa_net = evaluate.autoattack_net(net, chosen, None)
  assert set(_threads_of_calls(logits(aa_net), image)) == {onednn.host_cores()}
  np.testing.assert_array_equal(jax.jit(logits(aa_net))(image), jax.jit(logits(net))(image))
  # Split over devices, each device runs its share at once: the per-device count stays.
  assert evaluate.autoattack_net(net, chosen, jax.local_devices()) is net
  assert evaluate.autoattack_net(net, cpu.Convolutions("plain"), None) is net
