"""The RobustBench name table and reading its checkpoints (no torch needed): the lookup as
`load_model` looks names up, every entry builds the architecture it names, the checkpoint
unwrapping `load_model` does, the normalisation buffers checked, the evaluate command's
leaderboard comparison and AutoAttack's device choice. The models against their PyTorch twins:
tests/crosscheck/test_robustbench_twins.py."""

import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regmix_jax import config as config_lib
from regmix_jax import evaluate, models, robustbench
from regmix_jax.models import torch_weights


def test_the_table_covers_most_of_the_leaderboard_and_every_entry_builds_its_model():
  entries = robustbench.ENTRIES
  assert len(entries) >= 100 and len(robustbench.NOT_COVERED) < len(entries) / 3
  by_threat = {(e.dataset, e.threat_model) for e in entries.values()}
  assert by_threat == {("cifar10", "Linf"), ("cifar10", "L2"), ("cifar100", "Linf")}
  built = {}
  for key, e in entries.items():
    assert key == e.key and e.model in models.MODELS
    assert e.num_classes == (10 if e.dataset == "cifar10" else 100)
    assert e.normalize == "" or e.normalize in models.NORMALIZATIONS
    assert 0 <= e.autoattack < e.clean < 100  # "Standard": not robust, 0.00
    assert e.radius == pytest.approx({"Linf": 8 / 255, "L2": 0.5}[e.threat_model], rel=0.02)
    spec = (e.model, e.sizes, e.num_classes)
    if spec not in built:  # traced only: nothing is computed
      net = models.get_model(e.model, e.num_classes, normalize=e.normalize, **dict(e.sizes))
      x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
      v = jax.eval_shape(lambda k, x: net.init(k, x, train=False), jax.random.key(0), x)
      built[spec] = jax.eval_shape(lambda v, x: net.apply(v, x, train=False), v, x).shape
    assert built[spec] == (2, e.num_classes)
  # Figures as the model cards give them (model_info/cifar10/Linf/Carmon2019Unlabeled.json).
  carmon = entries["cifar10/Linf/Carmon2019Unlabeled"]
  assert (carmon.model, dict(carmon.sizes), carmon.clean, carmon.autoattack) == (
      "wrn", {"depth": 28, "width": 10}, 89.69, 59.53)
  gowal = entries["cifar10/Linf/Gowal2020Uncovering_70_16"]
  assert (gowal.model, dict(gowal.sizes), gowal.normalize) == (
      "dm_wrn", {"depth": 70, "width": 16}, "cifar10")
  assert entries["cifar10/Linf/Zhang2019Theoretically"].radius == 0.031


def test_find_looks_names_up_as_load_model_and_says_where_else_a_name_is():
  assert robustbench.find("Carmon2019Unlabeled").key == "cifar10/Linf/Carmon2019Unlabeled"
  assert robustbench.find("Rice2020Overfitting", "cifar10", "L2").model == "preact_resnet18_rice"
  assert robustbench.find("cifar100/Linf/Rice2020Overfitting").normalize == "cifar100_exact"
  with pytest.raises(ValueError, match=r"--dataset=cifar10 --threat_model=L2 or "
                     r"--dataset=cifar100 --threat_model=Linf"):
    robustbench.find("Gowal2020Uncovering")
  with pytest.raises(ValueError, match="does not have"):
    robustbench.find("Engstrom2019Robustness")  # a ResNet-50: not covered
  with pytest.raises(ValueError, match="close: Carmon2019Unlabeled"):
    robustbench.find("Carmon2019Unlabelled")
  with pytest.raises(ValueError, match="threat model one of"):
    robustbench.find("Carmon2019Unlabeled", threat_model="L1")


def _state(entry, seed=0):
  """A random state_dict with the entry's PyTorch names and shapes (numpy, no torch)."""
  rng = np.random.default_rng(seed)
  net = models.get_model(entry.model, entry.num_classes, **dict(entry.sizes))
  v = net.init(jax.random.key(seed), np.zeros((1, 32, 32, 3), np.float32), train=False)
  state = torch_weights.to_torch(v["params"], v["batch_stats"])
  return {k: rng.standard_normal(a.shape).astype(np.float32) if a.dtype == np.float32 else a
          for k, a in state.items()}


@pytest.mark.parametrize("style", ["plain", "state_dict", "module", "model", "mu_sigma"])
def test_checkpoints_are_unwrapped_as_load_model_unwraps_them(style):
  entry = robustbench.find("Wong2020Fast")  # a PreActResNet-18 normalising with CIFAR-10's values
  state = _state(entry)
  mean, std = models.NORMALIZATIONS["cifar10"]
  checkpoint = {"plain": state, "state_dict": {"state_dict": state, "epoch": 3},
                "module": {"state_dict": {f"module.{k}": v for k, v in state.items()}},
                "model": {f"model.{k}": v for k, v in state.items()},
                "mu_sigma": {**state, "mu": np.float32(mean).reshape(1, 3, 1, 1),
                             "sigma": np.float32(std).reshape(1, 3, 1, 1)}}[style]
  got = robustbench.state_dict(entry, checkpoint)
  assert set(got) == set(state)
  params, _ = torch_weights.from_torch(got, entry.model, 10)
  np.testing.assert_array_equal(params["linear"]["kernel"], state["linear.weight"].T)


def test_the_last_wrapper_and_foreign_normalisation_buffers():
  entry = robustbench.find("Andriushchenko2020Understanding")
  state = _state(entry)
  assert set(robustbench.state_dict(entry, {"last": state, "best": {}})) == set(state)
  with pytest.raises(ValueError, match=r"checkpoint\['last'\]"):
    robustbench.state_dict(entry, state)
  wong = robustbench.find("Wong2020Fast")
  other = {**_state(wong), "mu": np.full((1, 3, 1, 1), 0.5, np.float32),
           "sigma": np.full((1, 3, 1, 1), 0.5, np.float32)}
  with pytest.raises(ValueError, match="normalisation buffer 'mu'.*a different model"):
    robustbench.state_dict(wong, other)


def test_a_converted_entry_is_recorded_in_the_config_and_validated():
  config = config_lib.base_config()
  config.model.robustbench = "cifar10/Linf/Carmon2019Unlabeled"
  config_lib.validate(config)
  config.model.robustbench = "Carmon2019Unlabeled"
  with pytest.raises(ValueError, match="model.robustbench"):
    config_lib.validate(config)


def test_the_leaderboard_is_compared_only_on_its_own_threat_model():
  entry = robustbench.find("Carmon2019Unlabeled")
  record = {"norm": "Linf", "split": "test", "epsilon": 8 / 255, "n_examples": 100,
            "accuracy": {"clean": 0.9, "pgd20": 0.6, "aa": 0.5}}
  lines = evaluate.leaderboard_lines(entry, record)
  assert "89.69" in lines[2] and "90.00 +- 3.00" in lines[2]  # sqrt(.9 * .1 / 100) = 0.03
  assert "59.53" in lines[3] and "50.00 +- 5.00" in lines[3]
  del record["accuracy"]["aa"]
  assert "not run" in evaluate.leaderboard_lines(entry, record)[3]
  for change in ({"norm": "L2", "epsilon": 0.5}, {"epsilon": 4 / 255}, {"split": "val"}):
    (line,) = evaluate.leaderboard_lines(entry, {**record, **change})
    assert "not compared" in line
  assert len(lines) == 4 and math.isclose(entry.radius, 8 / 255)


def test_autoattack_splits_over_accelerators_by_default_and_not_over_cpu_devices():
  gpus = [types.SimpleNamespace(platform="gpu", id=i) for i in range(4)]
  cpus = [types.SimpleNamespace(platform="cpu", id=i) for i in range(4)]
  assert evaluate.autoattack_devices("auto", gpus) == gpus
  assert evaluate.autoattack_devices("auto", cpus) is None
  assert evaluate.autoattack_devices("all", cpus) == cpus
  assert evaluate.autoattack_devices("one", gpus) is None
  assert evaluate.autoattack_devices("auto", gpus[:1]) is None
  with pytest.raises(ValueError, match="aa_devices"):
    evaluate.autoattack_devices("two", gpus)


@pytest.mark.parametrize("key,norm,epsilon,want", [
    ("cifar10/L2/Rice2020Overfitting", None, None, ("L2", 0.5)),
    ("cifar10/Linf/Zhang2019Theoretically", None, None, ("Linf", 0.031)),  # its card's radius
    ("cifar10/L2/Rice2020Overfitting", "Linf", None, ("Linf", None)),  # the run's eval.epsilon
    ("cifar10/L2/Rice2020Overfitting", "L2", 0.25, ("L2", 0.25)),
    ("", None, None, ("Linf", None)),
])
def test_evaluate_defaults_to_the_entrys_threat_model(key, norm, epsilon, want):
  config = config_lib.base_config()
  config.model.robustbench = key
  assert evaluate.threat_model(config, norm, epsilon) == want


def test_a_checkpoint_of_the_same_name_in_another_threat_model_is_named(tmp_path):
  """RobustBench reuses names (Rice2020Overfitting: a CIFAR-10 L-inf WRN-34-20, a CIFAR-10 L2
  PreActResNet-18, a CIFAR-100 one): the L2 checkpoint given for the default L-inf entry is
  refused naming the entry it is and the flags that pick it, not with --model advice."""
  l2 = robustbench.find("Rice2020Overfitting", "cifar10", "L2")
  path = tmp_path / "Rice2020Overfitting.npz"
  np.savez(path, **_state(l2))
  with pytest.raises(ValueError, match=r"fits cifar10/L2/Rice2020Overfitting \(PreActResNet-18\)"
                     r".*pass --dataset=cifar10 --threat_model=L2") as error:
    robustbench.load(robustbench.find("Rice2020Overfitting"), str(path))
  assert "--model" not in str(error.value)
  params, _ = robustbench.load(l2, str(path))
  assert params["linear"]["kernel"].shape == (512, 10)
  with pytest.raises(ValueError, match=r"(?s)is not RobustBench's checkpoint for "
                     r"cifar10/Linf/Carmon2019Unlabeled .*missing") as error:
    robustbench.load(robustbench.find("Carmon2019Unlabeled"), str(path))
  assert "--model" not in str(error.value)
