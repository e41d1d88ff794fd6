"""Stage 5: loss landscapes of FGSM-PGK and FGSM-AGR (seed 0 of stage 2), as the RegMix paper
discusses: the mean cross-entropy of the evaluated model (EMA teacher) over the first 256
validation images at `x + a * sign(g) + b * r`, clipped to [0, 1], where `g` is the input gradient
of the cross-entropy at `x` (the adversarial direction) and `r` a random sign image, for a and b
on a 21 x 21 grid over [-16/255, 16/255]. A flat, low surface along `a` is what the paper's
robustness argument predicts for RegMix. Validation images, not test: the test images are read
once, by stage 3.

  python experiments/cifar10_subset/stage5_landscape.py --data=../shared/data/cifar10_subset.npz

Writes experiments/results/cifar10_subset_landscape.json (report.py draws it).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from regmix_jax import config as config_lib, cpu, data, evaluate, losses

import study  # pylint: disable=wrong-import-order

CONFIGS = ("fgsm_pgk", "fgsm_agr")
N_IMAGES, GRID, RADIUS = 256, 21, 16 / 255
OUT = os.path.join(study.RESULTS, "cifar10_subset_landscape.json")


def surface(workdir: str, data_path: str) -> np.ndarray:
  """`[GRID, GRID]` mean cross-entropy; axis 0 the adversarial direction, axis 1 the random one."""
  config = config_lib.load_json(os.path.join(workdir, "config.json"))
  config.data.dir = data_path
  dataset = data.load_dataset(config.data)
  nets, state, _ = evaluate.restore_state(  # convolutions as the run's evaluation computes them
      workdir, config, dataset.num_classes, dataset.image_shape,
      conv=cpu.convolutions_for(config).conv)
  variables = state.eval_variables("target")
  logits_fn = lambda x: nets["target"].apply(variables, x, train=False)
  x = jnp.asarray(dataset.val.x[:N_IMAGES], jnp.float32) / 255.0
  y = jnp.asarray(dataset.val.y[:N_IMAGES])
  ce = lambda z: losses.cross_entropy(logits_fn(z), y)  # [N]
  adv = jnp.sign(jax.grad(lambda z: ce(z).sum())(x))
  rand = jnp.sign(jax.random.normal(jax.random.key(0), x.shape))
  at = jax.jit(lambda a, b: ce(jnp.clip(x + a * adv + b * rand, 0.0, 1.0)).mean())
  steps = np.linspace(-RADIUS, RADIUS, GRID)
  return np.array([[float(at(a, b)) for b in steps] for a in steps])


def main():
  args = study.parse_args(__doc__)
  os.chdir(study.common.ROOT)
  out = {"radius": RADIUS, "grid": GRID, "n_images": N_IMAGES, "split": "val", "surfaces": {}}
  for config in CONFIGS:
    out["surfaces"][config] = surface(study.workdir(args, config, 0), args.data).tolist()
    print(config, "loss at 0:", out["surfaces"][config][GRID // 2][GRID // 2], flush=True)
  with open(OUT, "w") as f:
    json.dump(out, f)
  print("written", OUT)


if __name__ == "__main__":
  main()
