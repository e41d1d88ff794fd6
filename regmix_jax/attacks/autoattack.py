"""AutoAttack (Croce & Hein 2020): its versions and attack settings for the L-inf, L2 and L1 threat
models, and `autoattack`, the fixed-shape composition (jittable, for use inside jit / pmap /
shard_map). `run_autoattack` (`autoattack_runner.py`) is the host-side evaluation of the official
`run_standard_evaluation`, which gathers the still-robust points between attacks and passes.

Reference: fra31/auto-attack (MIT), `autoattack/autoattack.py`: the constructor's defaults
(`:31-48`), `set_version` (`:302-337`) and the dispatch in `run_standard_evaluation`
(`:183-216`). `attack_specs(norm, version, num_classes)` returns exactly those settings:

  standard  apgd-ce, apgd-t, fab-t, square. Linf/L2: APGD 1 restart, APGD-T 9 targets; L1: APGD 5
            restarts and APGD-T 5 targets, both with `use_largereps`. FAB-T 9 targets x 1
            restart; Square 5000 queries.
  plus      apgd-ce, apgd-dlr, fab, square, apgd-t, fab-t: APGD 5 restarts, FAB 5 restarts,
            APGD-T and FAB-T 9 targets x 1 restart, Square 5000 queries.
  rand      apgd-ce, apgd-dlr: 1 restart, EOT over 20 draws (for randomised models).
  a list    any of ATTACK_NAMES in the given order, with the constructor's defaults: APGD 5
            restarts, FAB 5 restarts, FAB-T 9 targets x 1 restart (the dispatch sets
            `n_restarts=1` for fab-t), APGD-T 9 targets x 1 restart, Square 5000 queries.

Every attack runs 100 iterations (APGD, FAB), `rho=0.75`, FAB `alpha_max=0.1, eta=1.05,
beta=0.9`, Square `p_init=0.8`, 1 restart, margin loss. Target counts are capped at K - 1
(the official code only warns, `checks.check_n_classes`, then fails with an IndexError).

`autoattack` runs each attack on the points still robust after the ones before it; a point is
non-robust once any attack finds an adversarial example for it, and that example is kept: the
point-wise worst case. With fixed shapes, "runs only on the robust points" means masks, and an
attack (or a pass of one) whose turn comes when no point is robust is skipped (`lax.cond`).
Every attack starts from the clean points, as the official. Each candidate is projected onto the
norm ball and [0, 1] (a no-op up to rounding; the official applies no guard) and counts as
fooled iff its arg-max differs from the label, as `run_standard_evaluation` (`:218-228`).

Deviations from the official code, and the official bugs not copied:
- Randomness: per-example keys (`fold_in(key, b)` from one key), attack i uses
  `fold_in(example key, i)` and its passes fold in the pass index; the official reseeds torch's
  global generator with one seed for every batch of every attack, so its results depend on the
  batch size and composition and ours do not (for a deterministic model in inference mode).
- The `fab-t` dispatch's `fab.n_restarts = 1` persists in the official object, so a `fab` run
  after a `fab-t` in the same object gets 1 restart; here `fab` always gets its version's count.
- The official state file cannot be resumed (`state.py`: the attack set is saved as a string and
  compared to a set, so `run_standard_evaluation` always raises; `y_adv` is undefined on
  restore); `autoattack_runner.py` saves a state that resumes (see there).
- Too many target classes are capped at K - 1 instead of failing.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from regmix_jax import rng
from regmix_jax.attacks import norms
from regmix_jax.attacks.apgd import (CLEAN_CALL, apgd, apgd_pass, apgd_targeted, as_model,
                                     example_keys_for, model_key, run_passes)
from regmix_jax.attacks.fab import fab, fab_pass, fab_targeted
from regmix_jax.attacks.square import (check_square_args, square, square_init, square_steps)

ATTACK_NAMES = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
VERSIONS = {"standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
            "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
            "rand": ("apgd-ce", "apgd-dlr")}
# A model-call counter of the fooled check after each attack (see `apgd.model_key`).
CHECK_CALL = (1 << 20) + 2


@dataclasses.dataclass(frozen=True)
class AttackSpec:
  """One attack of a version, with its settings.

  name: one of ATTACK_NAMES. kind: "apgd", "fab" or "square". num_passes: the passes of the
  official `perturb` (targets x restarts; Square: restarts), each on the examples not yet fooled.
  settings: the keyword arguments of `apgd_pass` / `fab_pass` / Square (less the model and data).
  """

  name: str
  kind: str
  num_passes: int
  settings: Mapping[str, Any]

  def pass_fn(self, model: Callable) -> Callable:
    """`(x, labels, keys, p, active) -> (x_adv, fooled [B], zero_grad [B])` for APGD and FAB;
    for Square, one restart (start, every query while an `active` example is unfooled, the
    fooled check)."""
    s = dict(self.settings)
    if self.kind == "apgd":
      return lambda x, y, k, p, active=None: apgd_pass(model, x, y, k, p, **s)
    if self.kind == "fab":
      def run_fab(x, y, k, p, active=None):
        adv, fooled = fab_pass(model, x, y, k, p, **s)
        return adv, fooled, jnp.zeros_like(fooled)
      return run_fab

    def run_square(x, y, k, r, active=None):
      init = dict(norm=s["norm"], epsilon=s["epsilon"], loss=s["loss"])
      state = square_init(model, x, y, k, r, **init)
      x_best = square_steps(model, x, y, k, r, state, 0, s["num_queries"], attack=active,
                            **s)[0]
      fooled = jnp.argmax(model(x_best, model_key(k, r, CLEAN_CALL)), axis=-1) != y
      return x_best, fooled, jnp.zeros_like(fooled)
    return run_square


def resolve_version(version: str | Sequence[str]) -> tuple[str, ...]:
  """`"standard"`, `"plus"`, `"rand"` or a list of names in ATTACK_NAMES -> the attack names, in
  order."""
  names = VERSIONS.get(version) if isinstance(version, str) else tuple(version)
  if names is None or not names or any(n not in ATTACK_NAMES for n in names):
    raise ValueError(f"AutoAttack version {version!r}: use one of {sorted(VERSIONS)} or a list "
                     f"of attacks from {list(ATTACK_NAMES)} (a custom version).")
  return names


def version_name(version: str | Sequence[str]) -> str:
  """"standard", "plus", "rand", or "custom" for a list (the official name for a list)."""
  return version if isinstance(version, str) else "custom"


def attack_specs(norm: str, version: str | Sequence[str], num_classes: int, *,
                 epsilon: float, overrides: Mapping[str, Mapping[str, Any]] | None = None
                 ) -> tuple[AttackSpec, ...]:
  """The attacks of `version` for `norm`, with the official settings (module docstring).

  Args:
    num_classes: K; target counts are capped at K - 1.
    overrides: `{attack name: {setting: value}}` replacing settings (e.g. `{"square":
      {"num_queries": 100}}` or `{"apgd-t": {"num_steps": 10}}`, for tests and quick looks);
      `num_restarts` / `num_target_classes` change the passes. Not the official evaluation.
  """
  norms.check_norm(norm)
  names = resolve_version(version)
  named = isinstance(version, str) and version in VERSIONS
  l1_standard = version == "standard" and norm == "L1"
  apgd_restarts = {"standard": 5 if norm == "L1" else 1, "plus": 5, "rand": 1}.get(
      version if named else "", 5)
  overrides = dict(overrides or {})
  unknown = set(overrides) - set(ATTACK_NAMES)
  if unknown:
    raise ValueError(f"overrides: unknown attacks {sorted(unknown)}; use names from "
                     f"{list(ATTACK_NAMES)}.")
  specs = []
  for name in names:
    over = dict(overrides.get(name, {}))
    if name in ("apgd-ce", "apgd-dlr", "apgd-t"):
      targeted = name == "apgd-t"
      s = dict(norm=norm, epsilon=epsilon, num_steps=100, rho=0.75,
               loss="dlr-targeted" if targeted else name[5:],
               eot_iter=20 if version == "rand" else 1,
               num_restarts=1 if targeted else apgd_restarts, use_largereps=l1_standard)
      targets = (5 if l1_standard else 9) if targeted else 1
      targets = over.pop("num_target_classes", targets)
      s.update(over)
      targets = min(targets, num_classes - 1) if targeted else 1
      specs.append(AttackSpec(name, "apgd", max(targets, 0) * s["num_restarts"], s))
    elif name in ("fab", "fab-t"):
      targeted = name == "fab-t"
      s = dict(norm=norm, epsilon=epsilon, targeted=targeted, num_steps=100,
               num_restarts=1 if targeted else 5, alpha_max=0.1, eta=1.05, beta=0.9)
      targets = over.pop("num_target_classes", 9) if targeted else 1
      s.update(over)
      targets = min(targets, num_classes - 1) if targeted else 1
      specs.append(AttackSpec(name, "fab", max(targets, 0) * s["num_restarts"], s))
    else:
      s = dict(norm=norm, epsilon=epsilon, num_queries=5000, p_init=0.8, loss="margin",
               rescale_schedule=False)
      restarts = over.pop("num_restarts", 1)
      s.update(over)
      specs.append(AttackSpec(name, "square", restarts, s))
  return tuple(specs)


def target_counts(specs: Sequence[AttackSpec]) -> tuple[int, int]:
  """`(APGD-T targets, FAB-T targets)` as asked before the cap (for `checks.check_n_classes`),
  the official defaults when absent."""
  apgd_t = fab_t = 9
  for s in specs:
    restarts = s.settings.get("num_restarts", 1)
    if s.name == "apgd-t":
      apgd_t = s.num_passes // max(restarts, 1)
    if s.name == "fab-t":
      fab_t = s.num_passes // max(restarts, 1)
  return apgd_t, fab_t


def autoattack(logits_fn: Callable, x: jax.Array, labels: jax.Array, key: jax.Array, *,
               epsilon: float, norm: str = "Linf", version: str | Sequence[str] = "standard",
               randomized: bool = False,
               overrides: Mapping[str, Mapping[str, Any]] | None = None
               ) -> tuple[jax.Array, jax.Array]:
  """Runs the attacks of `version` in turn, each on the points still robust (fixed shapes).

  Args:
    logits_fn: `x [B, H, W, C] -> logits [B, K]`, the model in inference mode; with
      `randomized=True`, `(x, key) -> logits` (a randomised defence).
    x: clean images `[B, H, W, C]` in [0, 1].
    labels: `[B]` integer labels.
    key: one key (example b uses `fold_in(key, b)`, as `run_autoattack`) or `[B]` per-example
      keys; attack i uses `fold_in(example key, i)`.
    epsilon: the radius in `norm`.
    norm: "Linf", "L2" or "L1".
    version: "standard", "plus", "rand" or a list of names from ATTACK_NAMES.
    overrides: see `attack_specs` (changes the official settings).

  Returns:
    `(x_adv [B, H, W, C], robust [B] bool)`: for a non-robust point the adversarial example that
    fooled it (inside the ball and [0, 1]), for a robust one the clean image; `robust` is False
    for points misclassified clean or by any attack.
  """
  model = as_model(logits_fn, randomized)
  x = jax.lax.stop_gradient(x)
  labels = labels.astype(jnp.int32)
  keys = example_keys_for(key, x.shape[0])
  clean_logits = model(x, model_key(keys, CLEAN_CALL))
  specs = attack_specs(norm, version, clean_logits.shape[-1], epsilon=epsilon,
                       overrides=overrides)
  if any(s.kind == "square" for s in specs):
    check_square_args(x.shape, norm, "margin")
  robust = jnp.argmax(clean_logits, axis=-1) == labels
  x_adv = x
  for i, spec in enumerate(specs):
    def run(carry, spec=spec, i=i):
      x_adv, robust = carry
      keys_i = rng.fold(keys, i)
      pass_fn = spec.pass_fn(model)
      candidate, _ = run_passes(pass_fn, spec.num_passes, x, labels, keys_i, robust)
      candidate = norms.project(candidate, x, epsilon, norm)
      predicted = jnp.argmax(model(candidate, model_key(keys_i, CHECK_CALL)), axis=-1)
      fooled = robust & (predicted != labels)
      return jnp.where(norms.expand(fooled, x), candidate, x_adv), robust & ~fooled
    x_adv, robust = jax.lax.cond(jnp.any(robust), run, lambda c: c, (x_adv, robust))
  return jax.lax.stop_gradient(x_adv), robust


def _standard(attack, **fixed):
  """An attack with AutoAttack's standard settings for its name (any norm by keyword)."""
  def run(logits_fn, x, labels, key, *, epsilon, **kwargs):
    return attack(logits_fn, x, labels, key, epsilon=epsilon, **{**fixed, **kwargs})
  return run


# name -> attack(logits_fn, x, labels, key, *, epsilon, norm=...) with the standard version's
# settings (L-inf/L2; the custom-list defaults for apgd-dlr and fab): each attack alone.
ATTACKS: dict[str, Callable[..., jax.Array]] = {
    "apgd-ce": _standard(apgd, loss="ce", num_steps=100, num_restarts=1),
    "apgd-dlr": _standard(apgd, loss="dlr", num_steps=100, num_restarts=1),
    "apgd-t": _standard(apgd_targeted, num_steps=100, num_target_classes=9, num_restarts=1),
    "fab": _standard(fab, num_steps=100, num_restarts=5),
    "fab-t": _standard(fab_targeted, num_steps=100, num_target_classes=9, num_restarts=1),
    "square": _standard(square, num_queries=5000, p_init=0.8, num_restarts=1),
}
