"""APGD (Croce & Hein 2020), L-inf: untargeted on cross-entropy or DLR, and APGD-T on targeted DLR.

A port of the official PyTorch code (fra31/auto-attack, `autopgd_base.py`, `APGDAttack` and
`APGDAttack_targeted`, L-inf branch) to fixed shapes: one `lax.fori_loop` over iterations, masks
instead of index sets, so it compiles once per batch size. Per iteration and example, as there:

- start `x + eps * u / max|u|` with `u ~ U(-1, 1)`, clipped to [0, 1]; step size `2 eps`;
- `z = P(x_k + eta sign(g))`, `x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1}))`, `a = 1`
  on the first step and 0.75 after (P: eps-ball, then [0, 1]);
- the best-loss point and its gradient are kept (strict improvement); the first adversarial point
  found is kept (the official `x_best_adv`: the latest misclassified iterate);
- at the checkpoints (`checkpoints(num_steps)`: 22, 41, 57, 70, 80, 87, 93, 99 for 100 steps) the
  step halves where the loss rose in at most `rho * k` of the last `k` steps, or where the step was
  not halved at the previous checkpoint and the best loss has not improved since; a halved example
  restarts from its best point and gradient. The first window's first comparison is against 0, as
  the official code's (it reads an unwritten row of its loss history).

`perturb`'s outer loops are kept: restarts, and for APGD-T the target classes (the 2nd, 3rd, ...
most likely classes on the clean input), each run only on the examples not yet fooled; examples
misclassified on the clean input are returned unchanged. Deviations: random numbers come from JAX
keys per example (so the starts match the official ones in distribution, not in value); a run
always spends `num_steps` iterations on the whole batch (fixed shapes), the official code slices
out the examples still to fool; fooled examples are merged by mask, which gives the same result.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from regmix_jax import losses, rng
from regmix_jax.attacks.pgd import LogitsFn, project

APGD_LOSSES = {"ce": lambda logits, labels, target_class: losses.cross_entropy(logits, labels),
               "dlr": lambda logits, labels, target_class: losses.dlr(logits, labels),
               "dlr-targeted": losses.dlr_targeted}


def checkpoints(num_steps: int) -> list[tuple[int, int]]:
  """The official step-size checkpoints: `[(iteration, k)]`, 1-based iteration counts at which the
  step size is checked, and the length `k` of the window that check looks back over.

  Windows: `k_0 = max(int(0.22 N), 1)`, then `k_{j+1} = max(k_j - max(int(0.03 N), 1),
  max(int(0.06 N), 1))`: for N = 100, iterations 22, 41, 57, 70, 80, 87, 93, 99.
  """
  k, it, out = max(int(0.22 * num_steps), 1), 0, []
  while it + k <= num_steps:
    it += k
    out.append((it, k))
    k = max(k - max(int(0.03 * num_steps), 1), max(int(0.06 * num_steps), 1))
  return out


def _single_run(logits_fn: LogitsFn, x, labels, target_class, key, *, epsilon, num_steps, loss,
                rho):
  """One APGD run on every example: returns `(x_best_adv, fooled [B] bool)`."""
  objective = APGD_LOSSES[loss]
  expand = lambda v: v[:, None, None, None]

  def loss_grad(x_adv):
    def total(z):
      logits = logits_fn(z)
      per_example = objective(logits, labels, target_class)
      return jnp.sum(per_example), (per_example, logits)
    grad, (per_example, logits) = jax.grad(total, has_aux=True)(x_adv)
    return per_example, jnp.argmax(logits, axis=-1) == labels, grad

  u = rng.uniform_like(key, x, -1.0, 1.0)
  u_max = jnp.max(jnp.abs(u).reshape(u.shape[0], -1), axis=1)
  x_adv = jnp.clip(x + epsilon * u / expand(u_max + 1e-12), 0.0, 1.0)
  loss0, correct, grad = loss_grad(x_adv)

  table = checkpoints(num_steps)
  is_check = np.zeros(num_steps, bool)
  window = np.ones(num_steps, np.float32)
  for it, k in table:
    is_check[it - 1], window[it - 1] = True, k
  is_check, window = jnp.asarray(is_check), jnp.asarray(window)

  batch = x.shape[0]
  state = dict(
      x_adv=x_adv, x_old=x_adv, grad=grad, x_best=x_adv, grad_best=grad, loss_best=loss0,
      x_best_adv=x_adv, correct=correct, step=jnp.full((batch,), 2.0 * epsilon),
      prev_loss=jnp.zeros((batch,)), increases=jnp.zeros((batch,)),
      loss_best_last_check=loss0, reduced_last_check=jnp.ones((batch,), bool))

  def body(i, s):
    a = jnp.where(i > 0, 0.75, 1.0)
    x_adv = s["x_adv"]
    z = project(x_adv + expand(s["step"]) * jnp.sign(s["grad"]), x, epsilon)
    x_new = project(x_adv + (z - x_adv) * a + (x_adv - s["x_old"]) * (1 - a), x, epsilon)
    loss_i, pred_ok, grad = loss_grad(x_new)
    s = dict(s, x_old=x_adv, x_adv=x_new, grad=grad)
    s["correct"] = s["correct"] & pred_ok
    s["x_best_adv"] = jnp.where(expand(~pred_ok), x_new, s["x_best_adv"])
    s["increases"] = s["increases"] + (loss_i > s["prev_loss"])
    s["prev_loss"] = loss_i
    better = loss_i > s["loss_best"]
    s["x_best"] = jnp.where(expand(better), x_new, s["x_best"])
    s["grad_best"] = jnp.where(expand(better), grad, s["grad_best"])
    s["loss_best"] = jnp.where(better, loss_i, s["loss_best"])

    def step_size_check(s):
      oscillating = s["increases"] <= window[i] * rho
      no_improvement = ~s["reduced_last_check"] & (s["loss_best_last_check"] >= s["loss_best"])
      reduce = oscillating | no_improvement
      return dict(
          s, step=jnp.where(reduce, s["step"] / 2.0, s["step"]),
          x_adv=jnp.where(expand(reduce), s["x_best"], s["x_adv"]),
          grad=jnp.where(expand(reduce), s["grad_best"], s["grad"]),
          reduced_last_check=reduce, loss_best_last_check=s["loss_best"],
          increases=jnp.zeros_like(s["increases"]))

    # Only at the checkpoints (8 of 100 iterations): skip the image-sized selects elsewhere.
    return jax.lax.cond(is_check[i], step_size_check, lambda s: s, s)

  state = jax.lax.fori_loop(0, num_steps, body, state)
  return state["x_best_adv"], ~state["correct"]


def _attack(logits_fn, x, labels, key, *, epsilon, num_steps, loss, rho, num_restarts,
            num_target_classes):
  """`perturb`'s loops: target ranks (1 pass with no target when untargeted) x restarts, each on
  the examples still correctly classified."""
  x = jax.lax.stop_gradient(x)
  clean_logits = logits_fn(x)
  robust = jnp.argmax(clean_logits, axis=-1) == labels
  order = jnp.argsort(-clean_logits, axis=-1)  # classes by descending clean logit
  passes = max(num_target_classes, 1) * num_restarts

  def one_pass(p, carry):
    x_out, robust = carry
    # The attacked class, the (rank+2)-th most likely one; unused for ce/dlr.
    target_class = order[:, 1 + p // num_restarts]

    def run(carry):
      x_out, robust = carry
      adv, fooled = _single_run(logits_fn, x, labels, target_class, rng.fold(key, p),
                                epsilon=epsilon, num_steps=num_steps, loss=loss, rho=rho)
      newly = robust & fooled
      return jnp.where(newly[:, None, None, None], adv, x_out), robust & ~fooled

    return jax.lax.cond(jnp.any(robust), run, lambda c: c, (x_out, robust))

  x_out, _ = jax.lax.fori_loop(0, passes, one_pass, (x, robust))
  return jax.lax.stop_gradient(project(x_out, x, epsilon))


def apgd(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array, key: jax.Array, *,
         epsilon: float, num_steps: int = 100, loss: str = "ce", num_restarts: int = 1,
         rho: float = 0.75) -> jax.Array:
  """Untargeted APGD on cross-entropy (`loss="ce"`, AutoAttack's APGD-CE) or DLR (`"dlr"`).

  Args:
    logits_fn: `x [B, H, W, C] -> logits [B, K]` (inference mode).
    x: clean images `[B, H, W, C]` in [0, 1].
    labels: `[B]` integer labels.
    key: one key or `[B]` per-example keys, for the random starts.
    epsilon: L-inf radius.
    num_steps: iterations per run (official default 100).
    loss: "ce" or "dlr".
    num_restarts: runs from new random starts, each on the examples not yet fooled (AutoAttack
      "standard": 1).
    rho: the oscillation threshold of the step-size checks (0.75).

  Returns:
    `x_adv [B, H, W, C]`, no gradient path: an adversarial point for every example fooled, `x`
    for the others.
  """
  if loss not in ("ce", "dlr"):
    raise ValueError(f"apgd: loss must be 'ce' or 'dlr', got {loss!r} (APGD-T: apgd_targeted).")
  return _attack(logits_fn, x, labels, key, epsilon=epsilon, num_steps=num_steps, loss=loss,
                 rho=rho, num_restarts=num_restarts, num_target_classes=0)


def apgd_targeted(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array, key: jax.Array, *,
                  epsilon: float, num_steps: int = 100, num_target_classes: int = 9,
                  num_restarts: int = 1, rho: float = 0.75) -> jax.Array:
  """APGD-T: APGD on the targeted DLR loss, once per target class, for the `num_target_classes`
  most likely wrong classes on the clean input (AutoAttack "standard": 9, capped at K - 1), in
  order of likelihood, each on the examples not yet fooled. Needs K >= 4 classes. Arguments and
  result as `apgd`."""
  num_classes = jax.eval_shape(logits_fn, x).shape[-1]
  if num_classes < 4:
    raise ValueError(f"apgd_targeted needs at least 4 classes (the DLR-targeted loss), got "
                     f"{num_classes}.")
  return _attack(logits_fn, x, labels, key, epsilon=epsilon, num_steps=num_steps,
                 loss="dlr-targeted", rho=rho, num_restarts=num_restarts,
                 num_target_classes=min(num_target_classes, num_classes - 1))
