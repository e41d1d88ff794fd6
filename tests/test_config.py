"""Bad configs fail at start with a message that names the field."""

import glob
import importlib.util
import json
import os

import pytest

from regmix_jax import config as config_lib
from regmix_jax import methods
from regmix_jax.cpu import host

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**method_overrides):
  c = config_lib.base_config()
  c.method = methods.method_config("pgd_at", **method_overrides)
  return c


def test_base_configs_validate():
  config_lib.validate(_config(), num_devices=4)


def test_unknown_method_names_field_and_choices():
  c = _config()
  c.method.name = "pgd_att"
  with pytest.raises(ValueError, match=r"method\.name.*Available: .*pgd_at"):
    config_lib.validate(c)


def test_unknown_model_name():
  c = _config()
  c.model.name = "resnet19"
  with pytest.raises(ValueError, match=r"model\.name.*resnet18"):
    config_lib.validate(c)


def test_unknown_field_suggests_the_close_one():
  c = _config()
  c.optim.unlock()
  c.optim.learning_rat = 0.1
  with pytest.raises(ValueError, match=r"optim\.learning_rat.*Did you mean `optim\.learning_rate`"):
    config_lib.validate(c)


def test_wrong_type_names_field():
  c = _config()
  c.data.unlock()
  del c.data["batch_size"]
  c.data.batch_size = "128"
  with pytest.raises(TypeError, match=r"data\.batch_size.*must be int.*'128'"):
    config_lib.validate(c)


def test_method_field_checked_against_method_schema():
  c = _config()
  c.method.unlock()
  c.method.num_step = 10
  with pytest.raises(ValueError, match=r"method\.num_step.*method\.num_steps"):
    config_lib.validate(c)
  c = _config(attack_bn="training")
  with pytest.raises(ValueError, match=r"method\.attack_bn.*train, eval"):
    config_lib.validate(c)


def test_inconsistent_values():
  c = _config()
  c.eval.attacks = "clean,pgd"
  with pytest.raises(ValueError, match=r"eval\.attacks.*'pgd'"):
    config_lib.validate(c)
  c = _config()
  c.eval.split = "val"
  with pytest.raises(ValueError, match=r"data\.val_size"):
    config_lib.validate(c)
  c = _config()
  c.data.batch_size = 130
  with pytest.raises(ValueError, match=r"data\.batch_size.*divisible.*4"):
    config_lib.validate(c, num_devices=4)


def test_model_size_fields_must_fit_the_model():
  c = _config()
  c.model.width = 4  # resnet18 has no width
  with pytest.raises(ValueError, match=r"model\.width.*resnet18"):
    config_lib.validate(c)
  c.model.name = "small_cnn"
  config_lib.validate(c)


def test_auto_cpu_devices_divide_the_batch(monkeypatch):
  c = _config()
  c.data.batch_size, c.data.eval_batch_size = 128, 500
  monkeypatch.setattr("os.cpu_count", lambda: 6)
  assert host.cpu_device_count(c) == 4
  c.cpu_devices = 3
  assert host.cpu_device_count(c) == 3


def test_ynn_fusion_type_checked_and_given_to_xla_unless_xla_flags_sets_it():
  c = _config()
  c.cpu_ynn_fusion_type = "reduce,convolution"  # the kind is individual_convolution
  with pytest.raises(ValueError, match=r"cpu_ynn_fusion_type.*'reduce,convolution'"):
    config_lib.validate(c)
  flag = "--xla_cpu_experimental_ynn_fusion_type"
  assert host.with_ynn_fusion_type("", "reduce") == f"{flag}=reduce"
  assert (host.with_ynn_fusion_type("--xla_dump_to=/tmp/d", "eltwise,reduce")
          == f"--xla_dump_to=/tmp/d {flag}=eltwise,reduce")
  assert host.with_ynn_fusion_type(f"{flag}=dot", "reduce") == f"{flag}=dot"  # the user's wins
  assert host.with_ynn_fusion_type("--xla_dump_to=/tmp/d", "default") == "--xla_dump_to=/tmp/d"


def test_changing_only_the_method_name_reports_missing_fields():
  c = config_lib.base_config()  # method block of `standard`: no fields
  c.method.name = "pgd_at"
  with pytest.raises(ValueError, match=r"`method\.epsilon`.*missing.*method_config\('pgd_at'\)"):
    config_lib.validate(c)


@pytest.mark.parametrize("path,value,message", [
    ("ema.decay", 1.5, r"ema\.decay.*\[0\.0, 1\.0\]"),
    ("checkpoint.every_steps", -1, r"checkpoint\.every_steps.*>= 0"),
    ("optim.milestones", (105, 100), r"optim\.milestones.*increasing"),
    ("optim.cyclic_peak_fraction", 2.0, r"cyclic_peak_fraction"),
])
def test_out_of_range_values(path, value, message):
  c = _config()
  group, field = path.split(".")
  c[group][field] = value
  with pytest.raises(ValueError, match=message):
    config_lib.validate(c)


CONFIG_FILES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "**",
                                             "*.py"), recursive=True))


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_shipped_configs_validate(path):
  spec = importlib.util.spec_from_file_location("config_under_test", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config_lib.validate(module.get_config(), num_devices=2)


@pytest.mark.parametrize("method,field,value,message", [
    ("fgsm_pgk", "label_smoothing", 1.5, r"method\.label_smoothing.*<= 1\.0"),
    ("fgsm_pgk", "reset_every", 0, r"method\.reset_every.*>= 1"),
    ("fgsm_agr", "regularizer", "kl", r"method\.regularizer.*mse, amr"),
    ("fgsm_agr", "agr_gamma", -0.1, r"method\.agr_gamma"),
    ("d2r", "clean_term", "symmetric", r"method\.clean_term.*abs_diff, sum"),
])
def test_method_values_out_of_range_or_choice(method, field, value, message):
  c = config_lib.base_config()
  c.method = methods.method_config(method, **{field: value})
  with pytest.raises(ValueError, match=message):
    config_lib.validate(c)


def test_eval_roles_and_guide_model_checked():
  c = config_lib.base_config()
  c.method = methods.method_config("fgsm_rs")
  c.eval.roles = "target,guide"
  with pytest.raises(ValueError, match=r"eval\.roles.*fgsm_rs.*target"):
    config_lib.validate(c)
  c = config_lib.base_config()
  c.method = methods.method_config("d2r")
  c.eval.roles = "target,guide"
  config_lib.validate(c)
  c.guide_model.width = 8  # lbgat_resnet18 takes no width
  with pytest.raises(ValueError, match=r"guide_model\.width"):
    config_lib.validate(c)
  c.guide_model.name = "resnet19"
  with pytest.raises(ValueError, match=r"guide_model\.name"):
    config_lib.validate(c)


FGSM_AGR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                        "cifar10", "fgsm_agr.py")


def test_old_field_name_target_is_read_as_ce_target(tmp_path):
  # On the command line (what `main.run` applies to sys.argv) ...
  assert config_lib.renamed_arguments(["prog", "--config.method.target=smoothed"]) == [
      "prog", "--config.method.ce_target=smoothed"]
  built = config_lib.from_command_line(FGSM_AGR, ["--config.method.target=smoothed"])
  assert built.method.ce_target == "smoothed" and "target" not in built.method
  # ... in a saved run's config.json ...
  saved = config_lib.from_command_line(FGSM_AGR).to_dict()
  del saved["method"]["ce_target"]
  saved["method"]["target"] = "smoothed"
  path = tmp_path / "config.json"
  path.write_text(json.dumps(saved))
  assert config_lib.load_json(str(path)).method.ce_target == "smoothed"
  # ... and through `methods.method_config`, with a DeprecationWarning.
  with pytest.warns(DeprecationWarning, match="ce_target"):
    assert methods.method_config("fgsm_agr", target="smoothed").ce_target == "smoothed"
  # A config built in Python with the old name gets an error saying what it became.
  c = config_lib.from_command_line(FGSM_AGR)
  with c.unlocked():
    c.method.target = "agr"
  with pytest.raises(ValueError, match=r"`method.target` was renamed to `method.ce_target`"):
    config_lib.validate(c)


def test_from_command_line_parses_overrides_as_the_cli():
  built = config_lib.from_command_line(FGSM_AGR, [
      "--config.num_epochs=3", "--config.optim.milestones=(1,2)", "--config.method.agr_gamma=0.2"])
  assert built.num_epochs == 3 and tuple(built.optim.milestones) == (1, 2)
  assert built.method.agr_gamma == 0.2 and built.method.name == "fgsm_agr"
  with pytest.raises(Exception, match="optimizer"):  # a mistyped group is not silently added
    config_lib.from_command_line(FGSM_AGR, ["--config.optimizer.lr=0.1"])


@pytest.mark.parametrize("path,value,message", [
    ("method.epsilon", 8.0, r"method\.epsilon.*did you mean 8/255 = 0\.031373"),
    ("method.step_size", 2.0, r"method\.step_size.*did you mean 2/255"),
    ("eval.epsilon", 1.5, r"eval\.epsilon.*did you mean"),
    ("eval.epsilon", 300.0, r"eval\.epsilon.*larger than the whole \[0, 1\]"),
    ("optim.learning_rate", float("nan"), r"optim\.learning_rate.* not a finite number"),
    ("optim.weight_decay", float("inf"), r"optim\.weight_decay.* not a finite number"),
    ("ema.decay", float("nan"), r"ema\.decay.* not a finite number"),
    ("checkpoint.max_to_keep", 1, r"max_to_keep.* at least 2"),
])
def test_bad_numbers_name_the_field_and_the_fix(path, value, message):
  c = _config()
  group, field = path.rsplit(".", 1)
  c[group][field] = value
  with pytest.raises(ValueError, match=message):
    config_lib.validate(c)


def test_mistyped_config_group_on_the_command_line_names_the_close_one():
  config = config_lib.from_command_line(FGSM_AGR)
  with pytest.raises(ValueError, match=r"`optimizer`.*Did you mean `optim`"):
    config_lib.check_override_paths(config, ["--config.optimizer.lr=0.1"])
  with pytest.raises(ValueError, match=r"`optim\.lr`.*learning_rate"):
    config_lib.check_override_paths(config, ["--config.optim.lr=0.1"])
  config_lib.check_override_paths(config, ["--config.optim.learning_rate=0.1", "--workdir=x"])


def test_keep_best_needs_a_validation_split_and_an_evaluated_attack():
  c = _config()
  c.eval.attacks = "clean,pgd10"
  c.checkpoint.keep_best = "pgd10"
  with pytest.raises(ValueError, match=r"keep_best.*eval\.split.*val.*test split"):
    config_lib.validate(c)
  c.eval.split, c.data.val_size = "val", 100
  config_lib.validate(c)
  c.checkpoint.keep_best = "pgd20"
  with pytest.raises(ValueError, match=r"keep_best.*one of the evaluated attacks"):
    config_lib.validate(c)


# The network (and input normalisation) each recipe's released script trains; docs/methods.md
# cites the files. A recipe that drifts to another registry entry trains another model.
RELEASED_MODELS = {
    # FGSM-PGK, FGSM_PGK_CIFAR10.py / _CIFAR100.py: models/resnet.py ResNet18, no normalisation.
    "cifar10/fgsm_pgk.py": ("resnet18", "", None),
    "cifar10/fgsm_amr.py": ("resnet18", "", None),
    "cifar10/fgsm_agr.py": ("resnet18", "", None),
    "cifar100/fgsm_pgk.py": ("resnet18", "", None),
    "cifar100/fgsm_amr.py": ("resnet18", "", None),
    "cifar100/fgsm_agr.py": ("resnet18", "", None),
    # FGSM_PGK_TinyImageNet.py: ImageNet_models/preact_resnet.py, not Wong et al.'s network.
    "tiny_imagenet/fgsm_pgk.py": ("preact_resnet18_fgsm_pgk", "", None),
    "tiny_imagenet/fgsm_amr.py": ("preact_resnet18_fgsm_pgk", "", None),
    "tiny_imagenet/fgsm_agr.py": ("preact_resnet18_fgsm_pgk", "", None),
    # fast_adversarial train_fgsm.py / N-FGSM train.py: PreActResNet18 on normalised inputs.
    "cifar10/fgsm_rs.py": ("preact_resnet18", "cifar10", None),
    "cifar10/n_fgsm.py": ("preact_resnet18", "cifar10", None),
    "cifar100/fgsm_rs.py": ("preact_resnet18", "cifar100", None),
    # robust_overfitting train_cifar.py: its own PreActResNet18, normalised inputs.
    "cifar10/pgd_at.py": ("preact_resnet18_rice", "cifar10", None),
    "cifar100/pgd_at.py": ("preact_resnet18_rice", "cifar100", None),
    # TRADES train_trades_cifar10.py, MART train_wideresnet.py: WideResNet-34-10.
    "cifar10/trades.py": ("wrn34_10", "", None),
    "cifar10/mart.py": ("wrn34_10", "", None),
    # D2R: WRN-34-10 target (CIFAR-10) / PreActResNet-18 (CIFAR-100), LBGAT ResNet-18 guide.
    "cifar10/d2r.py": ("wrn34_10", "", "lbgat_resnet18"),
    "cifar100/d2r.py": ("preact_resnet18", "", "lbgat_resnet18"),
}


@pytest.mark.parametrize("path", sorted(RELEASED_MODELS))
def test_recipes_train_the_released_network(path):
  config = config_lib.from_command_line(os.path.join(ROOT, "configs", path))
  model, normalize, guide = RELEASED_MODELS[path]
  assert (config.model.name, config.model.normalize) == (model, normalize)
  if guide is not None:
    assert config.guide_model.name == guide


def test_every_recipe_has_a_released_network():
  recipes = {os.path.relpath(p, os.path.join(ROOT, "configs"))
             for p in glob.glob(os.path.join(ROOT, "configs", "*", "*.py"))}
  assert recipes - {"cifar10/standard.py"} == set(RELEASED_MODELS)
