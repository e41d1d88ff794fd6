"""RobustBench's architectures and checkpoints against PyTorch ports of its own code
(`robustbench_twins`, RobustBench@78fcc9e): every covered entry's PyTorch keys and shapes fit our
model; each architecture gives the same logits (inference and train mode) as its twin from the
same random weights, normalisation included; checkpoints saved the ways RobustBench's are, read
by `robustbench.load`, give the logits of the twin `load_model` would build; and the convert and
evaluate commands bring an entry to the leaderboard comparison."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="cross-framework tests need PyTorch: pip install -e '.[crosscheck]'")

from regmix_jax import models, robustbench  # noqa: E402
from regmix_jax.models import torch_weights  # noqa: E402
from crosscheck import robustbench_twins as twins  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
C10 = ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))


def _key(entry):
  return (entry.dataset, entry.threat_model, entry.name)


def test_the_twin_table_and_ours_hold_the_same_entries():
  assert set(twins.ENTRIES) == {_key(e) for e in robustbench.ENTRIES.values()}


def _twin_state_shapes(key):
  with torch.device("meta"):
    twin = twins.ENTRIES[key]()
  return {k: tuple(v.shape) for k, v in twin.state_dict().items()}


def test_every_entry_of_the_table_fits_the_model_robustbench_builds():
  """For each entry, the twin (RobustBench's constructor for it, built on the meta device: no
  memory) has exactly the PyTorch keys and shapes our model for the entry expects: nothing
  missing, nothing left over but what we skip (`num_batches_tracked`, TRADES' unused
  `sub_block1`, the normalisation buffers, whose values must be the entry's `normalize`).
  Entries of one architecture share the (costly, for 400M parameters) conversion."""
  checked = {}
  for key, entry in robustbench.ENTRIES.items():
    shapes = _twin_state_shapes(_key(entry))
    signature = (entry.model, entry.sizes, entry.num_classes, tuple(sorted(shapes.items())))
    if signature in checked:
      continue
    state = {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}
    if "mu" in state:  # persistent buffers: the class's values, which must be the entry's
      buffers = twins.ENTRIES[_key(entry)]().state_dict()
      state["mu"], state["sigma"] = buffers["mu"].numpy(), buffers["sigma"].numpy()
    if entry.wrapper:
      state = {entry.wrapper: state}
    params, _ = torch_weights.from_torch(robustbench.state_dict(entry, state), entry.model,
                                         entry.num_classes, **dict(entry.sizes))
    head = params.get("logits", params.get("linear", params.get("fc")))
    assert head["kernel"].shape[-1] == entry.num_classes, key
    checked[signature] = key
  assert len(checked) >= 30


def _randomised(twin, x):
  """The twin with non-trivial BatchNorm running statistics: one train-mode pass."""
  twin.train()
  with torch.no_grad():
    twin(x)
  return twin.eval()


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


_APPLY = {}


def _ours(model, num_classes, normalize, sizes):
  """Our model's jitted inference apply, one per architecture (each compiles once)."""
  spec = (model, num_classes, normalize, tuple(sorted(sizes.items())))
  if spec not in _APPLY:
    net = models.get_model(model, num_classes, normalize=normalize, **sizes)
    _APPLY[spec] = jax.jit(lambda v, x: net.apply(v, x, train=False))
  return _APPLY[spec]


# Architecture -> (twin constructor, our model, sizes, normalize): small sizes where the
# constructor takes them; every activation and shortcut kind RobustBench's entries use.
ARCHITECTURES = {
    "dm_wrn_swish": (lambda: twins.DMWideResNet(10, depth=16, width=2, activation_fn=twins.Swish,
                                                mean=C10[0], std=C10[1]),
                     "dm_wrn", {"depth": 16, "width": 2}, "cifar10"),
    "dm_wrn_silu": (lambda: twins.DMWideResNet(100, depth=10, width=3,
                                               activation_fn=torch.nn.SiLU,
                                               mean=twins.CIFAR100_MEAN, std=twins.CIFAR100_STD),
                    "dm_wrn", {"depth": 10, "width": 3}, "cifar100"),
    "dm_preact_resnet18": (lambda: twins.DMPreActResNet(10, depth=18, width=0,
                                                        activation_fn=twins.Swish, mean=C10[0],
                                                        std=C10[1]),
                           "dm_preact_resnet18", {}, "cifar10"),
    "wrn": (lambda: twins.WideResNet(depth=16, widen_factor=2, sub_block1=True), "wrn",
            {"depth": 16, "width": 2}, ""),
    "resnet18": (twins.ResNet18, "resnet18", {}, ""),
    "preact_resnet18_robustbench": (twins.Wong2020FastNet, "preact_resnet18_robustbench", {},
                                    "cifar10"),
    "preact_resnet18_rice": (twins.Rice2020OverfittingNetC100, "preact_resnet18_rice", {},
                             "cifar100_exact"),
}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_each_architecture_gives_its_twins_logits(arch):
  build, model, sizes, normalize = ARCHITECTURES[arch]
  torch.manual_seed(0)
  x = np.random.default_rng(1).uniform(size=(4, 32, 32, 3)).astype(np.float32)
  twin = _randomised(build(), _nchw(np.random.default_rng(2).uniform(
      size=(8, 32, 32, 3)).astype(np.float32)))
  state = {k: v.numpy() for k, v in twin.state_dict().items()}
  num_classes = state[[k for k in state if k.endswith(("logits.weight", "linear.weight",
                                                        "fc.weight"))][0]].shape[0]
  entry = robustbench.Entry("twin", "cifar10", "Linf", model, tuple(sizes.items()), normalize,
                            num_classes, "", "8/255", 1.0, 0.0, "", "", False)
  params, batch_stats = torch_weights.from_torch(robustbench.state_dict(entry, state), model,
                                                 num_classes, **sizes)
  variables = {"params": params, "batch_stats": batch_stats}
  with torch.no_grad():
    want = twin(_nchw(x)).numpy()
  got = np.asarray(_ours(model, num_classes, normalize, sizes)(variables, x))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # Train mode: batch statistics and PyTorch's running averages (unbiased variance).
  twin.train()
  with torch.no_grad():
    want_train = twin(_nchw(x)).numpy()
  net = models.get_model(model, num_classes, normalize=normalize, **sizes)
  got_train, updates = net.apply(variables, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(np.asarray(got_train), want_train, rtol=1e-4, atol=1e-4)
  back = torch_weights.to_torch(params, updates["batch_stats"])
  for key, value in twin.state_dict().items():
    if "running" in key and not key.startswith("sub_block1."):  # TRADES' unused block
      np.testing.assert_allclose(back[key], value.numpy(), rtol=1e-5, atol=1e-6, err_msg=key)


# Entries converted from a checkpoint saved as RobustBench's are (style, and whether the
# checkpoint carries the normalisation buffers): every architecture, normalisation and wrapper,
# at full size (the largest, over 50M parameters, only by their keys above).
CONVERTED = {
    ("cifar10", "Linf", "Andriushchenko2020Understanding"): ("last", True),
    ("cifar10", "Linf", "Carmon2019Unlabeled"): ("module", True),
    ("cifar10", "Linf", "Hendrycks2019Using"): ("plain", True),
    ("cifar10", "Linf", "Wong2020Fast"): ("state_dict", False),
    ("cifar10", "Linf", "Chen2020Efficient"): ("model", True),
    ("cifar10", "Linf", "Gowal2020Uncovering_28_10_extra"): ("plain", True),
    ("cifar10", "Linf", "Rebuffi2021Fixing_R18_ddpm"): ("state_dict", True),
    ("cifar10", "Linf", "Sehwag2021Proxy_R18"): ("module", True),
    ("cifar10", "Linf", "Zhang2019Theoretically"): ("state_dict", True),
    ("cifar10", "L2", "Rice2020Overfitting"): ("plain", False),
    ("cifar10", "L2", "Rony2019Decoupling"): ("state_dict", True),
    ("cifar10", "L2", "Augustin2020Adversarial_34_10"): ("plain", False),
    ("cifar10", "L2", "Rebuffi2021Fixing_28_10_cutmix_ddpm"): ("module", True),
    ("cifar100", "Linf", "Rice2020Overfitting"): ("state_dict", True),
    ("cifar100", "Linf", "Wu2020Adversarial"): ("plain", False),
    ("cifar100", "Linf", "Chen2020Efficient"): ("model", True),
    ("cifar100", "Linf", "Hendrycks2019Using"): ("state_dict", True),
    ("cifar100", "Linf", "Addepalli2022Efficient_RN18"): ("plain", True),
    ("cifar100", "Linf", "Rebuffi2021Fixing_R18_ddpm"): ("module", True),
    ("cifar100", "Linf", "Cui2023Decoupled_WRN-28-10"): ("state_dict", True),
}


@pytest.mark.parametrize("key", sorted(CONVERTED), ids="/".join)
def test_entry_converts_from_a_checkpoint_saved_as_robustbench_saves_it(key, tmp_path):
  style, with_buffers = CONVERTED[key]
  entry = robustbench.find("/".join(key))
  torch.manual_seed(3)
  twin = _randomised(twins.ENTRIES[key](), _nchw(np.random.default_rng(4).uniform(
      size=(8, 32, 32, 3)).astype(np.float32)))
  path = str(tmp_path / f"{entry.name}.pt")
  twins.save_like_robustbench(twin, path, style, without=() if with_buffers else (
      "mu", "sigma"), best={} if style == "last" else None)
  reference = twins.load_like_robustbench(key, path)
  x = np.random.default_rng(5).uniform(size=(2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    want = reference(_nchw(x)).numpy()
  params, batch_stats = robustbench.load(entry, path)
  got = _ours(entry.model, entry.num_classes, entry.normalize, dict(entry.sizes))(
      {"params": params, "batch_stats": batch_stats}, x)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_convert_and_evaluate_an_entry_print_the_leaderboard_beside_ours(tmp_path):
  key = ("cifar10", "Linf", "Wong2020Fast")
  torch.manual_seed(0)
  twin = twins.ENTRIES[key]().eval()
  checkpoint = tmp_path / "Wong2020Fast.pt"
  twins.save_like_robustbench(twin, str(checkpoint), "state_dict", without=("mu", "sigma"))
  workdir = tmp_path / "run"
  run = lambda *args: subprocess.run([sys.executable, "-m", *args], cwd=ROOT,
                                     capture_output=True, text=True, timeout=600)
  bad = run("regmix_jax.convert", "--robustbench=Wong2020Fast", "--model=wrn",
            f"--checkpoint={checkpoint}", f"--workdir={workdir}")
  assert bad.returncode != 0 and "drop --model" in bad.stderr
  done = run("regmix_jax.convert", "--robustbench=Wong2020Fast", f"--checkpoint={checkpoint}",
             f"--workdir={workdir}", "--data_source=synthetic")
  assert done.returncode == 0, done.stderr[-3000:]
  assert "leaderboard clean 83.34%, AutoAttack 43.21%" in done.stdout
  result = run("regmix_jax.evaluate", f"--workdir={workdir}", "--attacks=clean",
               "--n_examples=10")
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert "Linf eps 0.03137" in out  # the entry's threat model, without --norm / --epsilon
  assert "RobustBench cifar10/Linf/Wong2020Fast (PreActResNet-18), Linf eps 8/255:" in out
  assert "83.34" in out and "43.21" in out and "not run" in out
  l2 = run("regmix_jax.evaluate", f"--workdir={workdir}", "--attacks=clean", "--n_examples=10",
           "--norm=L2", "--epsilon=0.5")
  assert l2.returncode == 0 and "not compared" in l2.stdout, l2.stderr[-2000:]
