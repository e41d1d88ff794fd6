"""`d2r`: D2R + CAG (Liu et al. 2025): a small guide and a large target trained together from
scratch by one optimiser (docs/methods.md, "D2R + CAG"), as the released code
(lusti-Yu/D2R@832b29f D2R/D2R.py and D2R/train_D2R_cifar100.py).

Per step: CAG makes x' for the target from the guide's clean output (both models in eval mode,
`attacks.cag`, D2R.py:34-49); then, in train mode, the target runs on x' and then on x (its
BatchNorm statistics updated in that order), the guide on x (D2R.py:70-79), and
`losses.d2r_loss` combines the three outputs (D2R.py:81-109). Nothing is detached: the gradient
reaches both models' parameters, and the one SGD optimiser of the TrainState updates both
(train_D2R_cifar100.py:256). The KLs add `kl_eps` = 1e-5 to the reference probabilities inside
their log, as the released `kl_loss` does (D2R.py:27-29, 81-83). Defaults: CAG eps 0.031, step
0.007, 10 steps (train_D2R_cifar100.py:48-53); weights 20 and 30 on the element-mean KLs
(D2R.py:109), i.e. 20 / C and 30 / C per example. Metrics: "accuracy" is the target's on x', also
"clean_accuracy" (target on x) and "guide_accuracy" (guide on x).
"""

from regmix_jax import attacks, losses
from regmix_jax.methods import base

NAME = "d2r"
ROLES = ("target", "guide")
DEFAULTS = {"epsilon": 0.031, "step_size": 0.007, "num_steps": 10, "clean_term": "abs_diff",
            # Per-example weights; 0 = the released element-mean weights 20 and 30 as 20 / C and
            # 30 / C (C classes).
            "w_sym": 0.0, "w_adv": 0.0, "kl_eps": 1e-5}
CHOICES = {"clean_term": losses.D2R_CLEAN_TERMS}
# Accuracies of the target on x' and x and of the guide on x; the four terms of `losses.d2r_loss`.
METRICS = ("loss", "accuracy", "clean_accuracy", "guide_accuracy", "guide_ce", "mse", "clean",
           "adv_kl")
RANGES = {"epsilon": base.POSITIVE, "step_size": base.POSITIVE, "num_steps": (1, None),
          "w_sym": (0.0, None), "w_adv": (0.0, None), "kl_eps": (0.0, 1e-2)}


def loss(params, batch_stats, batch, keys, *, models, cfg, axis_name=None):
  x, y = batch["image"], batch["label"]
  guide_eval = base.logits_fn(models, "guide", params, batch_stats, train=False)
  target_eval = base.logits_fn(models, "target", params, batch_stats, train=False)
  x_adv = attacks.cag(target_eval, guide_eval(x), x, keys, epsilon=cfg["epsilon"],
                      step_size=cfg["step_size"], num_steps=cfg["num_steps"])
  target_adv, stats = base.apply_model(models, "target", params, batch_stats, x_adv, train=True)
  target_clean, stats = base.apply_model(models, "target", params,
                                         {**batch_stats, "target": stats}, x, train=True)
  guide_clean, guide_stats = base.apply_model(models, "guide", params, batch_stats, x,
                                              train=True)
  per_example, terms = losses.d2r_loss(
      guide_clean, target_clean, target_adv, y, w_sym=cfg["w_sym"] or None,
      w_adv=cfg["w_adv"] or None, clean_term=cfg["clean_term"], kl_eps=cfg["kl_eps"],
      axis_name=axis_name)
  metrics = {"loss": per_example.mean(), "accuracy": losses.correct(target_adv, y).mean(),
             "clean_accuracy": losses.correct(target_clean, y).mean(),
             "guide_accuracy": losses.correct(guide_clean, y).mean(),
             **{k: v.mean() for k, v in terms.items()}}
  new_stats = {**batch_stats, "target": stats, "guide": guide_stats}
  return base.LossOutput(per_example.mean(), new_stats, metrics)
