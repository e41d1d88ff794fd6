"""Pure, per-example losses: `[B, C]` logits in, `[B]` values out; the caller reduces.

All losses work on log-probabilities from `jax.nn.log_softmax`, never on the log of a softmax, so
they stay finite for logits as large as 1e4. KL divergences name their direction in the signature:
`kl_div(p_logits, q_logits)` is `KL(P(p) || Q(q))`.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Cross-entropy per example.

  Args:
    logits: `[B, C]`.
    targets: integer labels `[B]`, or a probability distribution `[B, C]` (soft targets, e.g.
      smoothed labels).

  Returns:
    `[B]`: `-sum_c t_c log_softmax(logits)_c` (for integer labels, `-log_softmax(logits)_y`).
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  if targets.ndim == logits.ndim - 1:
    return -jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return -jnp.sum(targets * log_probs, axis=-1)


def correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """`[B]` float: 1.0 where the arg-max of `logits [B, C]` equals the integer label."""
  return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)


def margin(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """C&W margin per example, `[B, C] -> [B]`: `max_{j != y} z_j - z_y` (positive = misclassified).

  Maximising it is the C&W-inf attack objective `-(z_y - max_{j != y} z_j)`.
  """
  logits = logits.astype(jnp.float32)
  true = jnp.take_along_axis(logits, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
  is_true = jax.nn.one_hot(labels, logits.shape[-1], dtype=bool)
  other = jnp.max(jnp.where(is_true, -jnp.inf, logits), axis=-1)
  return other - true


def dlr(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Difference-of-logits-ratio loss of APGD-DLR (Croce & Hein 2020), `[B, C] -> [B]`:
  `-(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3 + 1e-12)`, with `pi` sorting the logits in
  descending order (needs C >= 3). Positive once misclassified; invariant to shifting and
  rescaling the logits."""
  logits = logits.astype(jnp.float32)
  top = jax.lax.top_k(logits, 3)[0]
  return margin(logits, labels) / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_targeted(logits: jax.Array, labels: jax.Array, target_labels: jax.Array) -> jax.Array:
  """Targeted DLR loss of APGD-T, `[B, C] -> [B]`:
  `-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)` for the target class `t`
  (`target_labels [B]`; needs C >= 4)."""
  logits = logits.astype(jnp.float32)
  top = jax.lax.top_k(logits, 4)[0]
  pick = lambda c: jnp.take_along_axis(logits, c[:, None].astype(jnp.int32), axis=-1)[:, 0]
  return (pick(target_labels) - pick(labels)) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def smooth_labels(labels: jax.Array, num_classes: int, factor: float) -> jax.Array:
  """FGSM-PGK's label smoothing, `[B] -> [B, C]`: the true class gets `factor`, every other class
  `(1 - factor) / (C - 1)` (note: `factor` is the mass kept on the true class, not the mass
  removed as in the usual convention)."""
  other = (1.0 - factor) / (num_classes - 1)
  return jnp.where(jax.nn.one_hot(labels, num_classes, dtype=bool), factor, other)


def kl_div(p_logits: jax.Array, q_logits: jax.Array, eps: float = 0.0) -> jax.Array:
  """`KL(P || Q)` per example, `[B, C], [B, C] -> [B]`, with `P = softmax(p_logits)` (the
  reference, first argument) and `Q = softmax(q_logits)`: `sum_c P_c (log P_c - log Q_c)`.

  Computed from log-softmax on both sides, so it is finite (and has finite gradients) for logits
  as large as 1e4 and for one-hot-like distributions; no stop-gradient inside. With `eps > 0` the
  reference's log is `log(P_c + eps)`, as D2R's released `kl_loss` computes it
  (`-a * b + log(b + 1e-5) * b`, D2R.py:27-29, 81-83).
  """
  log_p = jax.nn.log_softmax(p_logits.astype(jnp.float32), axis=-1)
  log_q = jax.nn.log_softmax(q_logits.astype(jnp.float32), axis=-1)
  p = jnp.exp(log_p)
  if eps:
    log_p = jnp.log(p + eps)
  return jnp.sum(p * (log_p - log_q), axis=-1)


def logit_mse(a: jax.Array, b: jax.Array) -> jax.Array:
  """`[B, C], [B, C] -> [B]`: `mean_c (a_c - b_c)^2`. Its batch mean equals PyTorch's
  `F.mse_loss(a, b)` (the mean over B*C elements)."""
  return jnp.mean(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)), axis=-1)


def trades_loss(clean_logits: jax.Array, adv_logits: jax.Array, labels: jax.Array, *,
                beta: float) -> jax.Array:
  """TRADES (Zhang et al. 2019) per example, `[B, C] x2, [B] -> [B]`:
  `CE(f(x), y) + beta * KL(P(f(x)) || P(f(x')))`, the clean distribution as the reference (first
  argument of the KL) and not detached."""
  return cross_entropy(clean_logits, labels) + beta * kl_div(clean_logits, adv_logits)


def mart_loss(clean_logits: jax.Array, adv_logits: jax.Array, labels: jax.Array, *,
              beta: float) -> jax.Array:
  """MART (Wang et al. 2020) per example, `[B, C] x2, [B] -> [B]`:
  `CE(f(x'), y) - log(1.0001 - P(f(x'))_{y'}) + beta * KL(P(f(x)) || P(f(x'))) *
  (1.0000001 - P(f(x))_y)`, with y' the most likely wrong class under `P(f(x'))` (the constants
  are the released code's). The first two terms are the boosted cross-entropy."""
  num_classes = adv_logits.shape[-1]
  adv_probs = jax.nn.softmax(adv_logits.astype(jnp.float32), axis=-1)
  clean_probs = jax.nn.softmax(clean_logits.astype(jnp.float32), axis=-1)
  is_true = jax.nn.one_hot(labels, num_classes, dtype=bool)
  wrong = jnp.argmax(jnp.where(is_true, -jnp.inf, adv_probs), axis=-1)
  p_wrong = jnp.take_along_axis(adv_probs, wrong[:, None], axis=-1)[:, 0]
  boosted_ce = cross_entropy(adv_logits, labels) - jnp.log(1.0001 - p_wrong)
  p_true_clean = jnp.take_along_axis(clean_probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
  return boosted_ce + beta * kl_div(clean_logits, adv_logits) * (1.0000001 - p_true_clean)


# RegMix (Liu & Ojha 2025): docs/methods.md, "RegMix". Three outputs of one model: clean `f(x)`
# (CLN), initial `f(x + d_init)` (Iadv, FGSM-PGK's z0) and final `f(x + d_final)` (Fadv, z_adv).


def amr_loss(init_logits: jax.Array, final_logits: jax.Array, *, alpha: float,
             beta: float) -> jax.Array:
  """Weighted adversarial mutual regularisation (AMR) per example, `[B, C] x2 -> [B]`:
  `alpha * KL(P(init) || P(final)) + beta * KL(P(final) || P(init))`.

  The first term (initial-perturbation output as the reference) is the main one; the paper's
  summary has `beta ~ 0.5 alpha`. No stop-gradient on either side (a caller that wants one
  applies it to an argument). `amr_loss(z, z) == 0`.
  """
  return alpha * kl_div(init_logits, final_logits) + beta * kl_div(final_logits, init_logits)


def agr_targets(smoothed_labels: jax.Array, clean_logits: jax.Array, *, gamma: float,
                stop_gradient_clean: bool = False) -> jax.Array:
  """Adversarial generalisation regularisation (AGR) target, `[B, C], [B, C] -> [B, C]`:
  `(1 - gamma) * y~ + gamma * P(clean)`, a distribution mixing the smoothed labels with the
  clean output. With `stop_gradient_clean`, `P(clean)` is detached (no gradient into the clean
  branch). `CE(final, agr_targets(...))` equals `(1 - gamma) CE(final, y~) + gamma *
  [KL(P(clean) || P(final)) + H(P(clean))]`.
  """
  p_clean = jax.nn.softmax(clean_logits.astype(jnp.float32), axis=-1)
  if stop_gradient_clean:
    p_clean = jax.lax.stop_gradient(p_clean)
  return (1.0 - gamma) * smoothed_labels + gamma * p_clean


# RegMix's weights, the one set of defaults: `regmix_loss`, the fgsm_amr / fgsm_agr methods and
# the README use these. The paper's values are not in what could be read of it; these were
# chosen on a validation split of the CIFAR-10 subset (experiments/regmix_hparams/results.md,
# docs/methods.md "RegMix"): alpha on KL(P(init) || P(final)), beta = alpha / 2 on the reverse
# KL, gamma the clean distribution's share of the AGR target.
AMR_ALPHA, AMR_BETA, AGR_GAMMA = 4.0, 2.0, 0.05

# What `regmix_loss` regularises with, and which distribution its cross-entropy aims at.
REGULARIZERS = ("mse", "amr")
CE_TARGETS = ("smoothed", "agr")


def regmix_loss(clean_logits: jax.Array | None, init_logits: jax.Array, final_logits: jax.Array,
                labels: jax.Array, *, label_smoothing: float = 0.5, regularizer: str = "amr",
                ce_target: str = "agr", lam: float = 5.6, alpha: float = AMR_ALPHA,
                beta: float = AMR_BETA, gamma: float = AGR_GAMMA,
                stop_gradient_clean: bool = False, target: str | None = None
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The FGSM-PGK / FGSM-AMR / FGSM-AGR objective per example, and its terms.

  `CE(final, t) + R(init, final)` with
    t = y~ (`ce_target="smoothed"`) or `agr_targets(y~, clean, gamma, stop_gradient_clean)`
        (`"agr"`), y~ the labels smoothed FGSM-PGK's way (`smooth_labels`, true class gets
        `label_smoothing`);
    R = `lam * logit_mse(final, init)` (`regularizer="mse"`, FGSM-PGK) or
        `amr_loss(init, final, alpha, beta)` (`"amr"`: alpha on KL(P(init) || P(final)), beta on
        KL(P(final) || P(init))).
  FGSM-PGK is ("mse", "smoothed"), FGSM-AMR ("amr", "smoothed"), FGSM-AGR ("amr", "agr").
  The weights default to RegMix's (`AMR_ALPHA`, `AMR_BETA`, `AGR_GAMMA`), `lam` to FGSM-PGK's
  CIFAR-10 value.

  Args:
    clean_logits: `[B, C]` `f(x)`; only read when `ce_target="agr"` (may be None otherwise).
    init_logits: `[B, C]` `f(x + d_init)`, the initial (prior) perturbation's output.
    final_logits: `[B, C]` `f(x + d_final)`, after the gradient step.
    labels: integer `[B]`, or already smoothed targets `[B, C]` (then `label_smoothing` is unused).

  Returns:
    target: the old name of `ce_target` (accepted, with a DeprecationWarning).

  Returns:
    `(loss [B], terms)`: terms `{"target_ce": [B], "regularizer": [B]}` (the cross-entropy to the
    CE target, and the weighted regulariser), whose sum is the loss. No stop-gradient inside
    except the optional one on the clean branch.
  """
  if target is not None:
    warnings.warn("regmix_loss(target=...) is now regmix_loss(ce_target=...).", DeprecationWarning,
                  stacklevel=2)
    ce_target = target
  if regularizer not in REGULARIZERS:
    raise ValueError(f"regularizer must be one of {REGULARIZERS}, got {regularizer!r}.")
  if ce_target not in CE_TARGETS:
    raise ValueError(f"ce_target must be one of {CE_TARGETS}, got {ce_target!r}.")
  num_classes = final_logits.shape[-1]
  smoothed = (labels if labels.ndim == final_logits.ndim
              else smooth_labels(labels, num_classes, label_smoothing))
  if ce_target == "agr":
    if clean_logits is None:
      raise ValueError("ce_target='agr' needs clean_logits.")
    smoothed = agr_targets(smoothed, clean_logits, gamma=gamma,
                           stop_gradient_clean=stop_gradient_clean)
  if regularizer == "mse":
    reg = lam * logit_mse(final_logits, init_logits)
  else:
    reg = amr_loss(init_logits, final_logits, alpha=alpha, beta=beta)
  terms = {"target_ce": cross_entropy(final_logits, smoothed), "regularizer": reg}
  return terms["target_ce"] + terms["regularizer"], terms


# D2R (Liu et al. 2025): docs/methods.md, "D2R + CAG" (released code). A guide g and a target t.

D2R_CLEAN_TERMS = ("abs_diff", "sum")


def d2r_loss(guide_clean_logits: jax.Array, target_clean_logits: jax.Array,
             target_adv_logits: jax.Array, labels: jax.Array, *, w_sym: float | None = None,
             w_adv: float | None = None, clean_term: str = "abs_diff", kl_eps: float = 0.0,
             axis_name: str | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The dual regularisation loss per example, `[B, C] x3, [B] -> ([B], terms)`:

    CE(g(x), y) + MSE(t(x'), g(x)) + w_sym * clean + w_adv * KL(P(t(x')) || P(g(x)))

  with clean = `|KLbar(P(t(x)) || P(g(x))) - KLbar(P(g(x)) || P(t(x)))|` ("abs_diff", the released
  code: the absolute difference of the two batch-mean KLs) or `KL(P(t(x)) || P(g(x))) +
  KL(P(g(x)) || P(t(x)))` ("sum", the symmetric KL as the paper words it). The guide alone gets
  the label loss; nothing is detached (the guide is pulled toward the target as well).

  Per example: "abs_diff" is a batch-level quantity, so its per-example term is `s * (KL1_b -
  KL2_b)` with `s` the (constant) sign of their mean over the global batch (`axis_name` sums over
  devices): the batch mean of the per-example loss, and its gradient, equal the released code's.

  Args:
    guide_clean_logits, target_clean_logits, target_adv_logits: `g(x)`, `t(x)`, `t(x')`, `[B, C]`.
    labels: integer `[B]`.
    w_sym, w_adv: per-example weights; default 20 / C and 30 / C, the released element-mean
      weights 20 and 30 (KL averaged over B * C there) as per-example batch-mean weights.
    clean_term: "abs_diff" or "sum".
    kl_eps: added to the reference probabilities inside the KLs' log (`kl_div`'s `eps`; the
      released code's 1e-5, D2R.py:81-83).
    axis_name: the data-parallel axis when called per device (for the sign of "abs_diff").

  Returns:
    `(loss [B], terms)`: terms "guide_ce", "mse", "clean", "adv_kl" (unweighted, `[B]`).
  """
  if clean_term not in D2R_CLEAN_TERMS:
    raise ValueError(f"clean_term must be one of {D2R_CLEAN_TERMS}, got {clean_term!r}.")
  num_classes = guide_clean_logits.shape[-1]
  w_sym = 20.0 / num_classes if w_sym is None else w_sym
  w_adv = 30.0 / num_classes if w_adv is None else w_adv
  kl_tg = kl_div(target_clean_logits, guide_clean_logits, kl_eps)  # KL(P(t(x)) || P(g(x)))
  kl_gt = kl_div(guide_clean_logits, target_clean_logits, kl_eps)  # KL(P(g(x)) || P(t(x)))
  if clean_term == "sum":
    clean = kl_tg + kl_gt
  else:
    diff = kl_tg - kl_gt
    total = jnp.stack([diff.sum(), jnp.asarray(diff.shape[0], diff.dtype)])
    if axis_name is not None:
      total = jax.lax.psum(total, axis_name)
    clean = jax.lax.stop_gradient(jnp.sign(total[0] / total[1])) * diff
  terms = {"guide_ce": cross_entropy(guide_clean_logits, labels),
           "mse": logit_mse(target_adv_logits, guide_clean_logits),
           "clean": clean,
           "adv_kl": kl_div(target_adv_logits, guide_clean_logits, kl_eps)}
  loss = terms["guide_ce"] + terms["mse"] + w_sym * clean + w_adv * terms["adv_kl"]
  return loss, terms
