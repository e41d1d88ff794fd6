"""Bring a PyTorch checkpoint over: `python -m regmix_jax.convert --checkpoint=model.pt
--model=wrn34_10 --num_classes=10 --workdir=DIR` writes a run directory (config.json and a
checkpoint) that `python -m regmix_jax.evaluate --workdir=DIR` evaluates, so a released PyTorch
CIFAR model goes through our PGD, C&W and AutoAttack.

`--robustbench=NAME` (with `--dataset` / `--threat_model` as RobustBench's `load_model`: CIFAR-10,
L-inf by default) takes the model, classes, sizes and normalisation from `robustbench.ENTRIES`
and reads the checkpoint as `load_model` does; the run records the entry (`model.robustbench`),
so evaluate defaults to its threat model and prints the leaderboard's figures.

The weights are read by `models.torch_weights.load_state_dict_file`: a `.pt` / `.pth` only
through `torch.load(weights_only=True)` (torch needed; anything but tensors is refused, never
executed), a `.safetensors` or an `.npz` without torch. `module.` prefixes (DataParallel) and the
common `state_dict` / `model_state_dict` wrappers are unwrapped. A name or shape that does not fit
the chosen model fails with the list of what did not match.
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags

from regmix_jax import checkpointing, config as config_lib, console, data, methods, models
from regmix_jax import robustbench, train_state, workdir as workdir_lib
from regmix_jax.models import torch_weights


def write_run(workdir: str, params, batch_stats, *, model: str, num_classes: int,
              width: int = 0, depth: int = 0, normalize: str = "", dataset: str = "cifar10",
              data_source: str = "tfds", data_dir: str = "", overwrite: bool = False,
              entry: robustbench.Entry | None = None) -> str:
  """Writes `workdir/config.json` and `workdir/checkpoints/0` holding a TrainState whose target
  has `params` and `batch_stats` (no EMA); returns the checkpoint directory. Holds the workdir's
  lock (`workdir.exclusive`). A workdir that holds a run is refused (WorkdirError), or with
  `overwrite` that run is moved into `<workdir>/replaced.<time>/`, never deleted. `entry`: the
  RobustBench entry the weights are (config `model.robustbench`; an L-inf entry's radius
  becomes `eval.epsilon`)."""
  config = config_lib.base_config()
  config.model.name, config.model.width, config.model.depth = model, width, depth
  config.model.normalize = normalize
  if entry is not None:
    config.model.robustbench = entry.key
    if entry.threat_model == "Linf":
      config.eval.epsilon = entry.radius
      config.eval.step_size = entry.radius / 4  # the default's 2/255 at 8/255
  config.data.name, config.data.source, config.data.dir = dataset, data_source, data_dir
  config.method = methods.method_config("standard")
  config_lib.validate(config)
  net = models.build_models(config, ("target",), num_classes)
  image = 64 if dataset == "tiny_imagenet" else 32
  state = train_state.create_train_state(config, net, (image, image, 3), steps_per_epoch=1)
  state = state.replace(params={"target": params}, batch_stats={"target": batch_stats})
  with workdir_lib.exclusive(workdir, "convert"):
    held = check_free(workdir, overwrite)
    if held:
      aside = os.path.join(workdir, time.strftime("replaced.%Y%m%d-%H%M%S"))
      os.makedirs(aside)
      for name in held:
        if not name.startswith("replaced."):
          os.replace(os.path.join(workdir, name), os.path.join(aside, name))
      print(f"Moved the run that was in {workdir} to {aside}.", flush=True)
    checkpointer = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                              async_save=False)
    try:
      checkpointer.save(0, state, {"epoch": 0, "step_in_epoch": 0, "sums": {}, "steps": 0,
                                   "converted_from": "pytorch"})
    finally:
      checkpointer.close()
    # Last: the workdir holds a whole run, or no config.json for evaluate to take for one.
    workdir_lib.write_atomic(os.path.join(workdir, "config.json"),
                             config.to_json_best_effort(indent=2))
  return checkpointer.directory


def check_free(workdir: str, overwrite: bool) -> list[str]:
  """What `workdir` holds (besides its lock); WorkdirError when that is a run and not
  `overwrite`. Checked before the weights are read (a large model takes a while) and again under the
  lock."""
  held = [n for n in sorted(os.listdir(workdir)) if n != workdir_lib.LOCK_FILE] if (
      os.path.isdir(workdir)) else []
  if held and not overwrite:
    raise workdir_lib.WorkdirError(
        f"{workdir} already holds a run ({', '.join(held[:6])}{', ...' if len(held) > 6 else ''}"
        "): convert writes a new run. Pass a new --workdir, or --overwrite to move what is "
        "there into a replaced.<time>/ folder inside it.")
  return held


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  console.quiet_console(f)  # Orbax logs its save at INFO: ~60 lines before the one that matters
  try:
    entry = _entry(f)
    if entry is not None:
      model, num_classes, normalize = entry.model, entry.num_classes, entry.normalize
      sizes, dataset = dict(entry.sizes), entry.dataset
    else:
      model, num_classes, normalize, dataset = f.model, f.num_classes, f.normalize, f.dataset
      sizes = {k: v for k, v in (("width", f.width), ("depth", f.depth)) if v}
    check_free(f.workdir, f.overwrite)
    if entry is not None:
      params, batch_stats = robustbench.load(entry, f.checkpoint)
    else:
      state_dict = torch_weights.load_state_dict_file(f.checkpoint)
      params, batch_stats = torch_weights.from_torch(state_dict, model, num_classes, **sizes)
    directory = write_run(f.workdir, params, batch_stats, model=model, num_classes=num_classes,
                          normalize=normalize, dataset=dataset, data_source=f.data_source,
                          data_dir=f.data_dir, overwrite=f.overwrite, entry=entry, **sizes)
  except (ValueError, ImportError, FileNotFoundError, workdir_lib.WorkdirError) as e:
    sys.exit(f"regmix_jax.convert: {type(e).__name__}: {e}")
  print(f"{f.checkpoint} -> {directory}/0 ({model}, {num_classes} classes"
        f"{', normalize=' + normalize if normalize else ''}).")
  if entry is not None:
    print(entry.describe())
  # PGD is L-inf only: an L2 entry's quick look is APGD-CE, AutoAttack's first attack.
  quick = "clean,pgd20" if entry is None or entry.threat_model == "Linf" else "clean,apgd-ce"
  print("Evaluate it with (100 points: minutes on a CPU; --n_examples=0 for the whole test set "
        f"on a GPU, and add aa for AutoAttack):\n  python -m regmix_jax.evaluate "
        f"--workdir={f.workdir} --attacks={quick} --n_examples=100")


def _entry(f) -> robustbench.Entry | None:
  """The RobustBench entry `--robustbench` names (None without it); ValueError when the flags
  that describe the model are also given, or when neither is."""
  if not f.robustbench:
    missing = [name for name in ("model", "num_classes") if f[name].value is None]
    if missing:
      raise ValueError(f"Pass --{' and --'.join(missing)} (the architecture the checkpoint was "
                       "trained as), or --robustbench=NAME for a RobustBench entry.")
    return None
  given = [name for name in ("model", "num_classes", "width", "depth", "normalize")
           if f[name].present]
  if given:
    raise ValueError(f"--robustbench={f.robustbench} sets the model itself; drop "
                     f"--{', --'.join(given)} (RobustBench's entry is what the checkpoint is).")
  return robustbench.find(f.robustbench, f.dataset, f.threat_model)


def define_flags() -> None:
  """The command's flags (defined only when it runs as a program, not on import)."""
  flags.DEFINE_string("checkpoint", None, "A PyTorch state_dict: .pt/.pth (needs torch), "
                      ".safetensors or .npz.")
  flags.DEFINE_enum("model", None, sorted(models.MODELS), "The architecture it was trained as.")
  flags.DEFINE_integer("num_classes", None, "Number of classes of its head.")
  flags.DEFINE_integer("width", 0, "small_cnn / wrn width (0: the model's default).")
  flags.DEFINE_integer("depth", 0, "wrn depth (0: the model's default).")
  flags.DEFINE_enum("normalize", "", ["", *models.NORMALIZATIONS],
                    "The per-channel normalisation the model expects on [0, 1] inputs, if any.")
  flags.DEFINE_enum("dataset", "cifar10", ["cifar10", "cifar100", "tiny_imagenet"],
                    "What evaluate reads (config data.name); with --robustbench, the entry's "
                    "dataset.")
  flags.DEFINE_string("robustbench", "", "A RobustBench model name (e.g. Carmon2019Unlabeled): "
                      "the model, classes and normalisation come from its entry "
                      "(docs/robustbench.md).")
  flags.DEFINE_enum("threat_model", "Linf", list(robustbench.THREAT_MODELS),
                    "With --robustbench: the entry's threat model (RobustBench's default Linf).")
  flags.DEFINE_enum("data_source", "tfds", list(data.SOURCES), "config data.source.")
  flags.DEFINE_string("data_dir", "", "config data.dir (files: a directory or an .npz).")
  flags.DEFINE_string("workdir", None, "Where to write config.json and checkpoints/0 (a new "
                      "directory, or an empty one).")
  flags.DEFINE_bool("overwrite", False, "When --workdir holds a run, move it into "
                    "<workdir>/replaced.<time>/ (never deleted) instead of refusing.")
  flags.mark_flags_as_required(["checkpoint", "workdir"])


if __name__ == "__main__":
  define_flags()
  console.exit_on_help(sys.argv, __doc__, flags.FLAGS, "regmix_jax.convert")
  app.run(main)
