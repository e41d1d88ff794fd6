"""The CIFAR-10-subset study's scripts: a missing data file stops each stage at once with a
message naming the path and the fix (before any run starts or JAX loads), and the
catastrophic-overfitting rule of the report. The benchmarks (`experiments/benchmarks/`):
`step_breakdown.py`'s stand-ins and arithmetic, `benchmark.py`'s cases, rounds and ratios."""

import dataclasses
import importlib
import os
import subprocess
import sys
import types

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDY = os.path.join(ROOT, "experiments", "cifar10_subset")
BENCHMARKS = os.path.join(ROOT, "experiments", "benchmarks")
STAGES = ("stage1_tune", "stage2_train", "stage3_evaluate", "stage4_overfit", "stage5_landscape")


@pytest.mark.parametrize("stage", STAGES)
def test_missing_data_names_the_path_and_the_flag(stage, tmp_path):
  missing = tmp_path / "nowhere" / "cifar10_subset.npz"
  result = subprocess.run(
      [sys.executable, os.path.join(STUDY, f"{stage}.py"), f"--data={missing}",
       f"--workdir_root={tmp_path / 'runs'}"], capture_output=True, text=True, timeout=60)
  assert result.returncode == 1
  assert f"No data at {missing}" in result.stderr and "--data=" in result.stderr
  assert not (tmp_path / "runs").exists()  # nothing started


def test_collapse_rule():
  sys.path.insert(0, STUDY)
  try:
    import study  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.remove(STUDY)
  assert study.collapsed([0.20, 0.25, 0.03])  # below half the best and under 5%
  assert not study.collapsed([0.20, 0.25, 0.12])  # a drop, not a collapse
  assert not study.collapsed([0.02, 0.03, 0.03])  # never robust: nothing collapsed


# Runs an experiment script up to its first training or evaluation call, in a fresh interpreter,
# with that call replaced by a check: a training run's config file and overrides must build and
# validate exactly as the command line would (`config.from_command_line`), an evaluation's
# attacks must parse and its run's saved config must load. The script stops there (exit 0,
# "REACHED ..."); a script that breaks before (a stale call, a renamed field) fails the test.
_DRIVER = r"""
import json, os, runpy, sys
script, *argv = sys.argv[1:]
sys.path[:0] = [os.path.dirname(script), os.path.join(os.getcwd(), "experiments")]
import common
from regmix_jax import attacks, config as config_lib, evaluate

def reached(what, **info):
  print("REACHED", what, json.dumps(info, default=str), flush=True)
  os._exit(0)

def run_cli(workdir_root, name, config, overrides):
  built = config_lib.from_command_line(os.path.join(common.ROOT, "configs", f"{config}.py"),
                                       overrides)
  config_lib.validate(built)
  reached("training", name=name, method=built.method.name, epochs=built.num_epochs)

def evaluate_checkpoint(workdir, *, attacks_spec, epsilon=None, **kwargs):
  run_config = config_lib.load_json(os.path.join(workdir, "config.json"))
  attacks.parse_attacks(attacks_spec, epsilon=epsilon or run_config.eval.epsilon)
  reached("evaluation", workdir=workdir, attacks=attacks_spec, **kwargs)

def restore_state(workdir, config, num_classes, image_shape, *, step=None, conv=None):
  config_lib.validate(config)
  reached("restore", workdir=workdir, method=config.method.name)

common.run_cli = run_cli
evaluate.evaluate_checkpoint = evaluate_checkpoint
evaluate.restore_state = restore_state
sys.argv = [script, *argv]
runpy.run_path(script, run_name="__main__")
print("finished without training or evaluating", flush=True)
sys.exit(3)
"""

SUBSET = os.path.join(ROOT, "..", "shared", "data", "cifar10_subset.npz")


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
  """The real CIFAR-10 subset when it is beside the project, else a stand-in .npz of the same
  form, big enough for the study's 1000-image validation split."""
  if os.path.exists(SUBSET):
    return SUBSET
  import numpy as np  # pylint: disable=g-import-not-at-top  (only this fixture's fallback)
  path = tmp_path_factory.mktemp("data") / "subset.npz"
  r = np.random.default_rng(0)
  np.savez(path, x_train=r.integers(0, 256, (1100, 32, 32, 3), dtype=np.uint8),
           y_train=np.arange(1100) % 10,
           x_test=r.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8), y_test=np.arange(16) % 10)
  return str(path)


def _finished_run(workdir, config_name, data):
  """A stand-in for a finished stage-2 run: its real config.json, final_eval.json and a
  checkpoint directory (the drivers stop before reading the checkpoint)."""
  sys.path.insert(0, STUDY)
  try:
    import study  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.remove(STUDY)
  from regmix_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.from_command_line(os.path.join(ROOT, "configs", "cifar10",
                                                     f"{config_name}.py"),
                                        study.budget(data, config_name))
  os.makedirs(os.path.join(workdir, "checkpoints", "160"))
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort())
  with open(os.path.join(workdir, "final_eval.json"), "w") as f:
    f.write('{"clean": 0.3, "pgd10": 0.2}')


@pytest.mark.parametrize("script, reaches", [
    ("cifar10_subset/stage1_tune.py", "training"),
    ("cifar10_subset/stage2_train.py", "training"),
    ("cifar10_subset/stage3_evaluate.py", "evaluation"),
    ("cifar10_subset/stage4_overfit.py", "training"),
    ("cifar10_subset/stage5_landscape.py", "restore"),
    ("method_comparison/run.py", "training"),
    ("regmix_hparams/search.py", "training"),
    ("precision/run.py", "training"),
])
def test_experiment_script_starts(script, reaches, data_path, tmp_path):
  root = tmp_path / "runs"
  for config_name in ("fgsm_rs", "fgsm_pgk"):  # stage 3's first method, stage 5's
    _finished_run(str(root / "eps8" / f"{config_name}_s0"), config_name, data_path)
  result = subprocess.run(
      [sys.executable, "-c", _DRIVER, os.path.join(ROOT, "experiments", script),
       f"--data={data_path}", f"--workdir_root={root}"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0 and f"REACHED {reaches}" in result.stdout, (
      result.stdout[-2000:] + result.stderr[-3000:])


@pytest.mark.parametrize("eps", [8, 16])
def test_every_final_run_of_the_study_builds_a_valid_config(eps):
  """Stages 2 and 4 train every method with `study.train_overrides`: each must build and pass
  validation as the command line would (stage 4 trains a subset of them at eps 16)."""
  sys.path.insert(0, STUDY)
  try:
    import study  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.remove(STUDY)
  from regmix_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  for name in study.METHODS.values():
    overrides = study.train_overrides("data.npz", name, 1, eps=eps)
    config = config_lib.from_command_line(os.path.join(ROOT, "configs", "cifar10", f"{name}.py"),
                                          overrides)
    config_lib.validate(config)
    assert config.seed == 1 and config.num_epochs == study.EPOCHS
    assert abs(config.eval.epsilon - eps / 255) < 1e-12


def _benchmarks(name: str):
  """The module `experiments/benchmarks/<name>.py` (the benchmarks import each other from that
  folder, and `common` from experiments/)."""
  added = [BENCHMARKS, os.path.join(ROOT, "experiments")]
  sys.path[:0] = added
  try:
    return importlib.import_module(name)
  finally:
    for path in added:
      sys.path.remove(path)


@pytest.mark.parametrize("cin,cout,size,kernel,stride", [
    (3, 64, 32, 3, 1), (64, 128, 32, 3, 2), (64, 128, 32, 1, 2), (512, 512, 4, 3, 1)])
def test_step_breakdown_stand_ins_have_each_convolution_s_output(cin, cout, size, kernel, stride):
  """`experiments/benchmarks/step_breakdown.py` replaces convolutions by stand-ins whose output
  must be the convolution's, in JAX (NHWC) and PyTorch (NCHW), or the step around them changes."""
  import jax  # pylint: disable=g-import-not-at-top  (JAX and torch only for this test)
  from jax import lax  # pylint: disable=g-import-not-at-top
  step_breakdown = _benchmarks("step_breakdown")
  pad = ((kernel // 2, kernel // 2),) * 2
  x = jax.numpy.ones((2, size, size, cin))
  w = jax.random.normal(jax.random.key(0), (kernel, kernel, cin, cout))
  ours = step_breakdown._jax_conv_stand_in(x, w, (stride, stride), pad)
  conv = lax.conv_general_dilated(x, w, (stride, stride), pad,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert ours.shape == conv.shape
  # Input ones: every output channel is the kernel's sum over its taps and inputs.
  assert jax.numpy.allclose(ours[0, 0, 0], w.sum((0, 1, 2)))
  torch = pytest.importorskip("torch")
  layer = torch.nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False)
  xt = torch.ones(2, cin, size, size)
  stand_in = step_breakdown._stand_in(
      xt, cout, stride, layer.weight.sum(dim=(1, 2, 3))[:, None, None], 1,
      lambda t, repeats: t.repeat(*repeats))
  assert stand_in.shape == layer(xt).shape


@pytest.mark.parametrize("part", ["no_kernel_grads", "no_input_grads"])
def test_step_breakdown_gradient_stand_ins_replace_one_gradient_each(part, monkeypatch):
  """The gradient cases replace one of `fast_conv`'s tangent rules, which the models' convolution
  (`FastConv`, XLA's) runs: that gradient becomes the output gradient's sum, broadcast; the other
  stays lax's."""
  import jax  # pylint: disable=g-import-not-at-top  (JAX only for this test)
  from regmix_jax.cpu import fast_conv  # pylint: disable=g-import-not-at-top
  step_breakdown = _benchmarks("step_breakdown")
  monkeypatch.setattr(fast_conv, *step_breakdown.TANGENT_STAND_INS[part])  # raises if gone
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x, w = jax.random.normal(kx, (2, 8, 8, 3)), jax.random.normal(kw, (3, 3, 3, 4))
  g = jax.random.normal(kg, (2, 4, 4, 4))

  def grads(conv):
    return jax.vjp(lambda x, w: conv(x, w, (2, 2), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC")), x, w)[1](g)
  (dx, dw), (lax_dx, lax_dw) = grads(fast_conv.FastConv()), grads(jax.lax.conv_general_dilated)
  if part == "no_kernel_grads":
    np.testing.assert_allclose(dw, np.full(w.shape, g.sum()), rtol=1e-5)
    np.testing.assert_allclose(dx, lax_dx, rtol=1e-4, atol=1e-4)
  else:
    np.testing.assert_allclose(dx, np.full(x.shape, g.sum()), rtol=1e-5)
    np.testing.assert_allclose(dw, lax_dw, rtol=1e-4, atol=1e-4)


def test_step_breakdown_no_convs_gives_the_models_the_stand_in():
  """`jax:no_convs` hands `train.build_trainer` convolutions whose `conv`, what the models
  convolve with, is the stand-in."""
  import jax  # pylint: disable=g-import-not-at-top  (JAX only for this test)
  from regmix_jax import models  # pylint: disable=g-import-not-at-top
  step_breakdown = _benchmarks("step_breakdown")
  convolutions = step_breakdown.StandInConvolutions(
      "xla", stand_in=step_breakdown._jax_conv_stand_in)
  assert convolutions.conv is step_breakdown._jax_conv_stand_in
  net = models.get_model("small_cnn", 10, width=4, conv=convolutions.conv)
  x = jax.numpy.ones((2, 8, 8, 3))
  variables = net.init(jax.random.key(0), x, train=False)
  plain = models.get_model("small_cnn", 10, width=4)
  assert net.apply(variables, x, train=False).shape == (2, 10)
  assert not np.allclose(net.apply(variables, x, train=False),
                         plain.apply(variables, x, train=False))


def test_benchmark_variant_narrows_onednn_inputs_through_the_convolutions():
  """`2dev-dnnl8` (oneDNN from input maps 8 wide) is a `cpu.Convolutions` value handed to
  `train.build_trainer`, no process-global setting."""
  from regmix_jax import cpu  # pylint: disable=g-import-not-at-top  (JAX only for this test)
  harness = _benchmarks("harness")
  assert harness.VARIANTS["2dev-dnnl8"]["onednn_min_size"] == 8
  config = types.SimpleNamespace(cpu_convolutions="xla", cpu_onednn_min_size=0)
  narrowed = harness.convolutions(config, {"devices": 2, "onednn_min_size": 8})
  assert narrowed == dataclasses.replace(cpu.choose("xla"), onednn_min_size=8)
  assert harness.convolutions(config, {"devices": 2}) == cpu.choose("xla")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_benchmark_shifted_products_are_the_convolution(dtype):
  """`suites_micro.run_dtype_micro` times `shifted_products_conv` as a 3x3 'same' convolution: its
  values must be lax's (in bf16 up to the output's rounding)."""
  import jax  # pylint: disable=g-import-not-at-top  (JAX only for this test)
  suites_micro = _benchmarks("suites_micro")
  kx, kw = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, (2, 5, 6, 8)).astype(dtype)
  w = jax.random.normal(kw, (3, 3, 8, 4)).astype(dtype)
  conv = jax.lax.conv_general_dilated(x.astype("float32"), w.astype("float32"), (1, 1),
                                      ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  ours = suites_micro.shifted_products_conv(x, w)
  assert ours.dtype == x.dtype
  tol = 1e-5 if dtype == "float32" else 2e-2
  np.testing.assert_allclose(np.asarray(ours, np.float32), conv, rtol=tol, atol=tol * 8)


def test_step_breakdown_rows():
  step_s = {"jax:full": 7.0, "jax:no_convs": 1.5, "jax:no_kernel_grads": 4.5,
            "jax:no_input_grads": 5.0, "torch:full": 6.0, "torch:no_convs": 1.0}
  breakdown = _benchmarks("step_breakdown").breakdown(step_s)
  rows = {row.strip(): (ours, theirs) for row, ours, theirs in breakdown}
  assert rows["convolutions (difference)"] == (5.5, 5.0)
  assert rows["of which kernel gradients"] == (2.5, None)
  assert rows["of which input gradients"] == (2.0, None)
  assert rows["of which forward passes (the rest)"] == (1.0, None)


def test_benchmark_schedule_pairs_each_train_case_with_its_pytorch_steps():
  """`benchmark.py --rounds`: each train case runs next to the PyTorch steps its ratios use (the
  same model and dtype), the pair's order alternating by round; other cases once."""
  benchmark, rounds = _benchmarks("benchmark"), _benchmarks("rounds")
  cases = benchmark.cases(benchmark.parse_args([
      "--suites=train,torch,torch-bf16,micro", "--methods=fgsm_pgk,trades",
      "--models=resnet18", "--variants=2dev,2dev-bf16"]))
  order = rounds.schedule(cases, 2)
  assert sorted(order) == sorted([(c, 0) for c in cases] + [
      (c, 1) for c in cases if not c.startswith("micro:")])
  round0 = [c for c, r in order if r == 0]
  round1 = [c for c, r in order if r == 1]
  assert round0[:2] == ["torch:resnet18:2", "train:fgsm_pgk:resnet18:2dev"]
  assert round1[:2] == ["train:fgsm_pgk:resnet18:2dev", "torch:resnet18:2"]
  trades = round0.index("train:trades:resnet18:2dev")
  assert round0[trades - 2:trades] == ["torch-trades:resnet18:2",
                                       "torch-trades_same_work:resnet18:2"]
  bf16 = round1.index("train:trades:resnet18:2dev-bf16")
  assert round1[bf16 + 1:bf16 + 3] == ["torch-trades:resnet18:2:bfloat16",
                                       "torch-trades_same_work:resnet18:2:bfloat16"]


def test_benchmark_rounds_keep_every_rate_and_report_medians():
  rounds, result_tables = _benchmarks("rounds"), _benchmarks("result_tables")
  record = None
  for r, rate in enumerate((20.0, 16.0, 18.5)):
    record = rounds.merge_round(record, {"images_per_s": rate, "step_s": 128 / rate,
                                         "date": f"d{r}"}, r)
  assert record["rounds_images_per_s"] == [20.0, 16.0, 18.5]
  assert record["images_per_s"] == 18.5 and record["step_s"] == 128 / 18.5
  assert record["rounds_dates"] == ["d0", "d1", "d2"]
  failed = rounds.merge_round(record, {"error": "Killed"}, 3)  # earlier rounds are kept
  assert failed["rounds_images_per_s"] == [20.0, 16.0, 18.5] and failed["images_per_s"] == 18.5
  assert failed["rounds_errors"] == ["round 4: Killed"]
  torch = {"images_per_s": 18.0, "rounds_images_per_s": [18.0, 20.0, 17.0]}
  results = {"train:fgsm_pgk:resnet18:2dev": record, "torch:resnet18:2": dict(torch, threads=2),
             "torch:resnet18:2:channels_last": dict(torch, threads=2, layout="channels_last",
                                                    images_per_s=20.0)}
  nchw, channels_last = result_tables.ratios(results)  # against each layout of the peer
  assert nchw.endswith("18.5 img/s, PyTorch fgsm_pgk float32 NCHW 18.0 -> 1.03x "
                       "(rounds: 1.11x, 0.80x, 1.09x)"), nchw
  assert channels_last.endswith("PyTorch fgsm_pgk float32 channels_last 20.0 -> 0.93x "
                                "(rounds: 1.11x, 0.80x, 1.09x)"), channels_last
