"""APGD (Croce & Hein 2020) for the L-inf, L2 and L1 threat models: untargeted on cross-entropy or
DLR, and APGD-T on the targeted DLR loss, with EOT and the L1 `use_largereps` schedule.

A port of the official PyTorch code (fra31/auto-attack, MIT, `autoattack/autopgd_base.py`,
`APGDAttack` and `APGDAttack_targeted`) to fixed shapes: one `lax.fori_loop` over iterations,
masks instead of index sets, so it compiles once per batch size. Per iteration and example, as
`attack_single_run` (`autopgd_base.py:200-440`):

- start (`:206-230`): Linf `x + eps u / max|u|`, `u ~ U(-1, 1)`; L2 `x + eps g / ||g||_2`,
  `g ~ N(0, 1)`; L1 `x + g + L1_projection(x, g, eps)`; clipped to [0, 1]. Step `2 eps` (Linf,
  L2) or `eps` (L1) (`:293`);
- Linf/L2 step with momentum (`:324-344`): `z = P(x_k + eta sign(g))` (Linf) or
  `P(x_k + eta g / ||g||_2)` (L2), `x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1}))`,
  `a = 1` on the first step and 0.75 after; P is the clip (Linf) or the radial shrink followed by
  the box clip (L2);
- L1 step, no momentum (`:346-356`): the gradient keeps its `topk` share of largest entries (ties
  all kept; the threshold, the official's `sort()[idx]`, found by `norms.kth_smallest` without a
  sort), `z = x_k + eta sign(g_s) / ||sign(g_s)||_1`, then `x_{k+1} = z + L1_projection`;
- the best-loss point and its gradient are kept (strict improvement, `:392-397`); the latest
  misclassified iterate is kept as the adversarial point (`:381-384`);
- Linf/L2 checkpoints (`checkpoints(num_steps)`: 22, 41, 57, 70, 80, 87, 93, 99 for 100 steps,
  `:406-424`): the step halves where the loss rose in at most `rho * k` of the last `k` steps,
  or where it was not halved at the previous checkpoint and the best loss has not improved since;
  a halved example restarts from its best point and gradient. The first window's first
  comparison is against 0, as the official's (it reads an unwritten row of its loss history);
- L1 checkpoints every `max(int(0.04 n_iter), 1)` iterations (`:300-310`, `:426-436`): where the
  sparsity of the best point fell below 95% of the last check's, the step resets to `eps` and the
  example restarts from its best point; elsewhere the step shrinks by 1.5 (within
  [eps/10, eps]); `topk` follows the best point's sparsity / 1.5;
- EOT (`:264-282`, `:362-379`): the gradient is the mean over `eot_iter` draws of the model; the
  logits and losses used afterwards are those of the last draw.

`perturb`'s outer loops are kept (`:445-524`, `:606-686`): restarts, and for APGD-T the target
classes (the 2nd, 3rd, ... most likely classes on the clean input), each run only on the
examples not yet fooled; examples misclassified on the clean input are returned unchanged.
`use_largereps` (L1 "standard", `decr_eps_pgd`, `:542-564`) runs each restart or target as three
stages of 30, 30 and 40 iterations at radius 3 eps, 2 eps and eps, each starting from the previous
stage's best-loss point projected onto the smaller ball; only the last stage decides success.

Deviations from the official code:
- Random numbers come from JAX keys per example (`regmix_jax.rng`), folded with the pass index
  (pass = target rank x restart); the starts match the official ones in distribution, not in
  value, and do not depend on how a batch is split.
- Fixed shapes: a pass always spends its iterations on the whole batch it is given; the official
  slices out the examples still to fool. Fooled examples are merged by mask: the same result.
  `run_autoattack` gathers the still-robust points between passes, as the official does.
- A randomised model (`logits_fn(x, key)`) gets one key per call, derived from the batch's first
  example key, the pass, the iteration and the EOT draw; its results depend on the batch, as the
  official's do on torch's global generator.
- Ties: the target ranking is a stable descending sort of the clean logits (torch's order among
  equal logits is unspecified).
- The checkpoint constants of the L-inf/L2 schedule come from the run's own `num_steps` (the
  official fixes them from the constructor's `n_iter`; the same for AutoAttack, which never
  changes `n_iter`).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from regmix_jax import losses, rng
from regmix_jax.attacks import norms

# A model as the attacks call it: `(x [B, H, W, C], key) -> logits [B, K]`; deterministic models
# ignore the key (`as_model`).
Model = Callable[[jax.Array, jax.Array], jax.Array]

APGD_LOSSES = {"ce": lambda logits, labels, target_class: losses.cross_entropy(logits, labels),
               "dlr": lambda logits, labels, target_class: losses.dlr(logits, labels),
               "dlr-targeted": losses.dlr_targeted}

# Stream indices folded into a pass's per-example keys.
_START, _LARGEREPS_START, _MODEL = 0, 1, 2
# Model-call counters of the calls outside the iterations (the clean forward, the target ranking).
CLEAN_CALL, RANK_CALL = 1 << 20, (1 << 20) + 1


def as_model(logits_fn: Callable, randomized: bool) -> Model:
  """`logits_fn(x)` (deterministic, or drawing its own randomness) or `logits_fn(x, key)`
  (`randomized=True`) -> the attacks' `model(x, key)`."""
  if randomized:
    return logits_fn
  return lambda x, key: logits_fn(x)


def model_key(keys: jax.Array, *counters) -> jax.Array:
  """One key for a call of a randomised model on a batch: the first example's key folded with
  `counters` (see the module docstring)."""
  key = rng.as_typed_key(keys)
  key = key if key.ndim == 0 else key[0]
  key = jax.random.fold_in(key, _MODEL)
  for c in counters:
    key = jax.random.fold_in(key, c)
  return key


def checkpoints(num_steps: int) -> list[tuple[int, int]]:
  """The official L-inf/L2 step-size checkpoints: `[(iteration, k)]`, 1-based iteration counts at
  which the step size is checked, and the length `k` of the window that check looks back over.

  Windows (`autopgd_base.py:153-155`, `:423`): `k_0 = max(int(0.22 N), 1)`, then
  `k_{j+1} = max(k_j - max(int(0.03 N), 1), max(int(0.06 N), 1))`: for N = 100, iterations 22,
  41, 57, 70, 80, 87, 93, 99.
  """
  k, it, out = max(int(0.22 * num_steps), 1), 0, []
  while it + k <= num_steps:
    it += k
    out.append((it, k))
    k = max(k - max(int(0.03 * num_steps), 1), max(int(0.06 * num_steps), 1))
  return out


def largereps_schedule(epsilon: float, num_steps: int) -> list[tuple[float, int]]:
  """`use_largereps` stages `[(radius, iterations)]` (`autopgd_base.py:485-493`): radii 3, 2, 1
  times `epsilon`, iterations `ceil(.3 N), ceil(.3 N), N - 2 ceil(.3 N)` ([30, 30, 40])."""
  first = math.ceil(0.3 * num_steps)
  return [(3.0 * epsilon, first), (2.0 * epsilon, first), (epsilon, num_steps - 2 * first)]


def _single_run(model: Model, x, labels, target_class, keys, model_counter, *, norm, epsilon,
                num_steps, loss, rho, eot_iter, x_init=None):
  """One `attack_single_run` on every example.

  Returns a dict: `x_best` (best-loss point), `fooled [B]`, `x_best_adv` (latest misclassified
  iterate, or the start), `zero_grad [B]` (the initial gradient is all zero: the official
  `check_zero_gradients` for the DLR losses).
  """
  objective = APGD_LOSSES[loss]
  expand = lambda v: norms.expand(v, x)
  dims = int(np.prod(x.shape[1:]))

  def loss_grad(z, it):
    def one(j, key):
      def total(z):
        logits = model(z, key)
        per_example = objective(logits, labels, target_class)
        return jnp.sum(per_example), (per_example, logits)
      return jax.grad(total, has_aux=True)(z)

    key_of = lambda j: model_key(keys, model_counter, it, j)
    grad, (per_example, logits) = one(0, key_of(0))
    if eot_iter > 1:  # :264-282: the mean gradient; logits and losses of the last draw
      def body(j, carry):
        g, _ = carry
        g_j, aux = one(j, key_of(j))
        return g + g_j, aux
      grad, (per_example, logits) = jax.lax.fori_loop(1, eot_iter, body,
                                                      (grad, (per_example, logits)))
      grad = grad / float(eot_iter)
    return per_example, jnp.argmax(logits, axis=-1) == labels, grad

  start_key = rng.fold(keys, _START)
  if norm == "Linf":
    t = rng.uniform_like(start_key, x, -1.0, 1.0)
    x_adv = x + epsilon * norms.normalize(t, "Linf")
  elif norm == "L2":
    t = rng.normal_like(start_key, x)
    x_adv = x + epsilon * norms.normalize(t, "L2")
  else:
    t = rng.normal_like(start_key, x)
    x_adv = x + t + norms.l1_projection(x, t, epsilon)
  if x_init is not None:
    x_adv = x_init
  x_adv = jnp.clip(x_adv, 0.0, 1.0)
  loss0, correct, grad = loss_grad(x_adv, 0)
  zero_grad = jnp.sum(jnp.abs(norms.flat(grad)), axis=1) == 0

  alpha = 2.0 if norm in ("Linf", "L2") else 1.0  # :293
  if norm == "L1":  # :300-310
    window = max(int(0.04 * num_steps), 1)
    is_check = jnp.asarray((np.arange(num_steps) + 1) % window == 0)
    window_len = jnp.full((num_steps,), float(window))
    if x_init is None:
      topk = jnp.full_like(loss0, 0.2)
      sp_old = jnp.full_like(loss0, float(dims))
    else:
      topk = norms.l0_norm(x_adv - x) / dims / 1.5
      sp_old = norms.l0_norm(x_adv - x)
  else:
    table = checkpoints(num_steps)
    check_np = np.zeros(num_steps, bool)
    window_np = np.ones(num_steps, np.float32)
    for it, k in table:
      check_np[it - 1], window_np[it - 1] = True, k
    is_check, window_len = jnp.asarray(check_np), jnp.asarray(window_np)
    topk = sp_old = jnp.zeros_like(loss0)

  # `*_like(loss0)`: inside `shard_map` the loop carry must vary like the data.
  state = dict(
      x_adv=x_adv, x_old=x_adv, grad=grad, x_best=x_adv, grad_best=grad, loss_best=loss0,
      x_best_adv=x_adv, correct=correct, step=jnp.full_like(loss0, alpha * epsilon),
      prev_loss=jnp.zeros_like(loss0), increases=jnp.zeros_like(loss0),
      loss_best_last_check=loss0, reduced_last_check=jnp.ones_like(loss0, bool),
      topk=topk, sp_old=sp_old)

  def l2_project(z):  # :337-344: radial shrink onto the ball, then the box
    d = z - x
    n = norms.lp_norm(d, "L2")
    return jnp.clip(x + d / expand(n + 1e-12) * expand(jnp.minimum(epsilon, n)), 0.0, 1.0)

  def body(i, s):
    x_adv, grad = s["x_adv"], s["grad"]
    step = expand(s["step"])
    if norm == "Linf":  # :330-335
      a = jnp.where(i > 0, 0.75, 1.0)
      z = jnp.clip(jnp.clip(x_adv + step * jnp.sign(grad), x - epsilon, x + epsilon), 0.0, 1.0)
      x_new = x_adv + (z - x_adv) * a + (x_adv - s["x_old"]) * (1 - a)
      x_new = jnp.clip(jnp.clip(x_new, x - epsilon, x + epsilon), 0.0, 1.0)
    elif norm == "L2":  # :336-344
      a = jnp.where(i > 0, 0.75, 1.0)
      z = l2_project(x_adv + step * norms.normalize(grad, "L2"))
      x_new = l2_project(x_adv + (z - x_adv) * a + (x_adv - s["x_old"]) * (1 - a))
    else:  # :346-356
      g = norms.flat(grad)
      idx = jnp.clip((1.0 - s["topk"]) * dims, 0, dims - 1).astype(jnp.int32)
      thr = norms.kth_smallest(jnp.abs(g), idx)[:, None]  # the official's sort()[idx]
      sparse = jnp.sign(g * (jnp.abs(g) >= thr)).reshape(x.shape)
      z = x_adv + step * sparse / expand(norms.lp_norm(sparse, "L1") + 1e-10)
      x_new = z + norms.l1_projection(x, z - x, epsilon)
    loss_i, pred_ok, grad = loss_grad(x_new, i + 1)
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
      if norm == "L1":  # :426-436
        sp_curr = norms.l0_norm(s["x_best"] - x)
        reduce = (sp_curr / s["sp_old"]) < 0.95  # 0/0 = nan -> False, as torch
        step = jnp.where(reduce, alpha * epsilon, s["step"] / 1.5)
        step = jnp.clip(step, alpha * epsilon / 10.0, alpha * epsilon)
        return dict(s, step=step, topk=sp_curr / dims / 1.5, sp_old=sp_curr,
                    x_adv=jnp.where(expand(reduce), s["x_best"], s["x_adv"]),
                    grad=jnp.where(expand(reduce), s["grad_best"], s["grad"]))
      oscillating = s["increases"] <= window_len[i] * rho  # :406-424
      no_improvement = ~s["reduced_last_check"] & (s["loss_best_last_check"] >= s["loss_best"])
      reduce = oscillating | no_improvement
      return dict(
          s, step=jnp.where(reduce, s["step"] / 2.0, s["step"]),
          x_adv=jnp.where(expand(reduce), s["x_best"], s["x_adv"]),
          grad=jnp.where(expand(reduce), s["grad_best"], s["grad"]),
          reduced_last_check=reduce, loss_best_last_check=s["loss_best"],
          increases=jnp.zeros_like(s["increases"]))

    # Only at the checkpoints: skip the image-sized selects elsewhere.
    return jax.lax.cond(is_check[i], step_size_check, lambda s: s, s)

  state = jax.lax.fori_loop(0, num_steps, body, state)
  return dict(x_best=state["x_best"], fooled=~state["correct"], x_best_adv=state["x_best_adv"],
              zero_grad=zero_grad)


def apgd_pass(model: Model, x: jax.Array, labels: jax.Array, keys: jax.Array, p, *,
              norm: str, epsilon: float, num_steps: int, loss: str, rho: float, eot_iter: int,
              num_restarts: int, use_largereps: bool
              ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Pass `p` of `perturb` (target rank `p // num_restarts + 2` for "dlr-targeted", restart
  `p % num_restarts`) on every example of `x`, which should all be clean-correct.

  Args:
    model: `(x, key) -> logits` (`as_model`).
    x: clean images `[B, H, W, C]`; labels `[B]`; keys `[B]` per-example keys of the attack.
    p: the pass index (a traced int is fine: one compile for every pass).

  Returns:
    `(x_adv [B, H, W, C], fooled [B] bool, zero_grad [B] bool)`: the point that fooled each
    fooled example (anything for the others), and which examples had an all-zero initial
    gradient (DLR losses only, else all False).
  """
  keys = rng.fold(keys, p)
  target_class = None
  if loss == "dlr-targeted":  # :661-668: rank on the clean logits of the subset
    order = jnp.argsort(-model(x, model_key(keys, RANK_CALL)), axis=-1, stable=True)
    target_class = jnp.take(order, p // num_restarts + 1, axis=1)
  kwargs = dict(norm=norm, loss=loss, rho=rho, eot_iter=eot_iter)
  if not use_largereps:
    out = _single_run(model, x, labels, target_class, keys, 0, epsilon=epsilon,
                      num_steps=num_steps, **kwargs)
    zero = out["zero_grad"]
  else:  # decr_eps_pgd, :542-564
    if norm != "L1":
      raise ValueError(f"use_largereps is the L1 schedule of the official code "
                       f"(autopgd_base.py:545 asserts norm == 'L1'); got norm={norm!r}.")
    schedule = largereps_schedule(epsilon, num_steps)
    noise = rng.normal_like(rng.fold(keys, _LARGEREPS_START), x)
    x_init = x + noise
    x_init = x_init + norms.l1_projection(x, x_init - x, schedule[0][0])
    zero = jnp.zeros_like(labels, bool)
    for stage, (eps_s, steps_s) in enumerate(schedule):
      x_init = x_init + norms.l1_projection(x, x_init - x, eps_s)
      out = _single_run(model, x, labels, target_class, rng.fold(keys, 10 + stage), stage,
                        epsilon=eps_s, num_steps=steps_s, x_init=x_init, **kwargs)
      x_init = out["x_best"]
      zero = zero | out["zero_grad"]
  if loss == "ce":
    zero = jnp.zeros_like(zero)
  return out["x_best_adv"], out["fooled"], zero


def run_passes(pass_fn, num_passes: int, x: jax.Array, labels: jax.Array, keys: jax.Array,
               robust: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`perturb`'s merge over passes, fixed shapes: pass p runs (`lax.cond`: skipped when no
  example is left) and each example keeps the point of the first pass that fooled it.

  Args:
    pass_fn: `(x, labels, keys, p, active) -> (x_adv, fooled, ...)`; `active [B]` marks the
      examples still to fool (only Square uses it, to stop its query loop early).
    robust: `[B]` bool, the examples to attack (the others are returned unchanged).

  Returns:
    `(x_adv [B, H, W, C], still robust [B])`.
  """
  def one_pass(p, carry):
    def run(carry):
      x_out, robust = carry
      adv, fooled = pass_fn(x, labels, keys, p, robust)[:2]
      newly = robust & fooled
      return jnp.where(norms.expand(newly, x), adv, x_out), robust & ~newly

    return jax.lax.cond(jnp.any(carry[1]), run, lambda c: c, carry)

  return jax.lax.fori_loop(0, num_passes, one_pass, (x, robust))


def _attack(logits_fn, x, labels, key, *, norm, epsilon, num_steps, loss, rho, num_restarts,
            num_target_classes, eot_iter, use_largereps, randomized):
  norms.check_norm(norm)
  model = as_model(logits_fn, randomized)
  x = jax.lax.stop_gradient(x)
  labels = labels.astype(jnp.int32)
  keys = example_keys_for(key, x.shape[0])
  robust = jnp.argmax(model(x, model_key(keys, CLEAN_CALL)), axis=-1) == labels
  passes = max(num_target_classes, 1) * num_restarts
  pass_fn = lambda x, y, k, p, active: apgd_pass(
      model, x, y, k, p, norm=norm, epsilon=epsilon, num_steps=num_steps, loss=loss, rho=rho,
      eot_iter=eot_iter, num_restarts=num_restarts, use_largereps=use_largereps)
  x_out, _ = run_passes(pass_fn, passes, x, labels, keys, robust)
  return jax.lax.stop_gradient(norms.project(x_out, x, epsilon, norm))


def example_keys_for(key: jax.Array, batch: int) -> jax.Array:
  """`[B]` per-example keys: `key` itself when it is `[B]` keys, else `fold_in(key, b)` for
  example b (`rng.example_keys`, as `run_autoattack` derives them from its key)."""
  key = rng.as_typed_key(key)
  if key.ndim == 0:
    return rng.example_keys(key, jnp.arange(batch))
  return key


def apgd(logits_fn: Callable, x: jax.Array, labels: jax.Array, key: jax.Array, *,
         epsilon: float, norm: str = "Linf", num_steps: int = 100, loss: str = "ce",
         num_restarts: int = 1, rho: float = 0.75, eot_iter: int = 1,
         use_largereps: bool = False, randomized: bool = False) -> jax.Array:
  """Untargeted APGD on cross-entropy (`loss="ce"`, AutoAttack's APGD-CE) or DLR (`"dlr"`).

  Args:
    logits_fn: `x [B, H, W, C] -> logits [B, K]` (inference mode), or `(x, key) -> logits` with
      `randomized=True` (a randomised defence: EOT draws one key per call).
    x: clean images `[B, H, W, C]` in [0, 1].
    labels: `[B]` integer labels.
    key: one key (per-example keys `fold_in(key, b)`) or `[B]` per-example keys.
    epsilon: radius in `norm`.
    norm: "Linf", "L2" or "L1".
    num_steps: iterations per run (official default 100).
    loss: "ce" or "dlr".
    num_restarts: runs from new random starts, each on the examples not yet fooled.
    rho: the oscillation threshold of the L-inf/L2 step-size checks (0.75).
    eot_iter: gradient draws averaged per iteration (AutoAttack "rand": 20).
    use_largereps: the L1 schedule of 3 stages at 3, 2, 1 eps (AutoAttack "standard" L1).
    randomized: `logits_fn` takes `(x, key)`.

  Returns:
    `x_adv [B, H, W, C]`, no gradient path: an adversarial point for every example fooled
    (inside the ball and [0, 1]), `x` for the others.
  """
  if loss not in ("ce", "dlr"):
    raise ValueError(f"apgd: loss must be 'ce' or 'dlr', got {loss!r} (APGD-T: apgd_targeted).")
  return _attack(logits_fn, x, labels, key, norm=norm, epsilon=epsilon, num_steps=num_steps,
                 loss=loss, rho=rho, num_restarts=num_restarts, num_target_classes=0,
                 eot_iter=eot_iter, use_largereps=use_largereps, randomized=randomized)


def apgd_targeted(logits_fn: Callable, x: jax.Array, labels: jax.Array, key: jax.Array, *,
                  epsilon: float, norm: str = "Linf", num_steps: int = 100,
                  num_target_classes: int = 9, num_restarts: int = 1, rho: float = 0.75,
                  eot_iter: int = 1, use_largereps: bool = False,
                  randomized: bool = False) -> jax.Array:
  """APGD-T: APGD on the targeted DLR loss, once per target class, for the `num_target_classes`
  most likely wrong classes on the clean input (AutoAttack "standard": 9, L1: 5; capped at
  K - 1), in order of likelihood, each on the examples not yet fooled. Needs K >= 4 classes.
  Arguments and result as `apgd`."""
  model = as_model(logits_fn, randomized)
  num_classes = jax.eval_shape(model, x, jax.random.key(0)).shape[-1]
  if num_classes < 4:
    raise ValueError(f"apgd_targeted needs at least 4 classes (the DLR-targeted loss), got "
                     f"{num_classes}.")
  return _attack(logits_fn, x, labels, key, norm=norm, epsilon=epsilon, num_steps=num_steps,
                 loss="dlr-targeted", rho=rho, num_restarts=num_restarts,
                 num_target_classes=min(num_target_classes, num_classes - 1),
                 eot_iter=eot_iter, use_largereps=use_largereps, randomized=randomized)
