"""Attack names as configs and the evaluate command write them: `"clean,pgd20,cw20,aa"`.

`parse_attacks(spec, epsilon=, step_size=)` turns a comma-separated list into `(name, attack)`
pairs, each attack `fn(logits_fn, x, labels, key) -> x_adv` (None for `clean`):

  clean       no attack
  fgsm        one signed step of size eps from a uniform random start
  pgd<K>      PGD-K on cross-entropy, step `step_size`, one uniform random start
  cw<K>       PGD-K on the C&W margin (C&W-inf)
  aa          AutoAttack "standard" (APGD-CE, APGD-T, FAB-T, Square; `autoattack.py`); the
              evaluate command runs it through `run_autoattack` with its --norm and --version
  apgd-ce, apgd-dlr, apgd-t, fab, fab-t, square
              one of AutoAttack's attacks alone, official settings, in `norm`

FGSM, PGD and C&W stop moving a sample once it is misclassified (the evaluation protocol of
docs/methods.md, "Evaluation"). Errors name the config field `eval.attacks`.
"""

from __future__ import annotations

import functools
import re
from typing import Callable

from regmix_jax.attacks.autoattack import ATTACKS as AUTOATTACK_ATTACKS
from regmix_jax.attacks.autoattack import autoattack
from regmix_jax.attacks.pgd import cw_linf, fgsm, pgd

AUTOATTACK_PARTS = tuple(AUTOATTACK_ATTACKS)


def _autoattack_images(logits_fn, x, labels, key, *, epsilon, norm, version):
  return autoattack(logits_fn, x, labels, key, epsilon=epsilon, norm=norm, version=version)[0]


def parse_attacks(spec: str, *, epsilon: float = 8 / 255, step_size: float = 2 / 255,
                  norm: str = "Linf", version: str = "standard"
                  ) -> tuple[tuple[str, Callable | None], ...]:
  """`"clean,pgd10,cw20"` -> ((name, attack or None for clean), ...); errors name `eval.attacks`.

  `norm` and `version` apply to AutoAttack (`aa`, in `version`) and its attacks named alone;
  FGSM, PGD and C&W are L-inf attacks, so with another norm naming them is an error.
  """
  parsed = []
  for name in [s.strip() for s in spec.split(",") if s.strip()]:
    match = re.fullmatch(r"(pgd|cw)(\d+)", name)
    if name == "clean":
      fn = None
    elif name == "fgsm" and norm == "Linf":
      fn = functools.partial(fgsm, epsilon=epsilon, step_size=epsilon, early_stop=True)
    elif name == "aa":
      fn = functools.partial(_autoattack_images, epsilon=epsilon, norm=norm, version=version)
    elif name in AUTOATTACK_PARTS:
      fn = functools.partial(AUTOATTACK_ATTACKS[name], epsilon=epsilon, norm=norm)
    elif norm != "Linf" and (name == "fgsm" or match):
      raise ValueError(f"Config field `eval.attacks`: {name!r} is an L-inf attack; with "
                       f"norm={norm!r} use aa or AutoAttack's attacks "
                       f"({', '.join(AUTOATTACK_PARTS)}).")
    elif match and int(match.group(2)) > 0:
      attack = pgd if match.group(1) == "pgd" else cw_linf
      fn = functools.partial(attack, epsilon=epsilon, step_size=step_size,
                             num_steps=int(match.group(2)), early_stop=True)
    else:
      raise ValueError(f"Config field `eval.attacks`: unknown attack {name!r} in {spec!r}. "
                       "Use a comma-separated list of clean, fgsm, pgd<K>, cw<K> (e.g. pgd20), "
                       f"aa, {', '.join(AUTOATTACK_PARTS)}.")
    parsed.append((name, fn))
  if not parsed:
    raise ValueError("Config field `eval.attacks` is empty; use e.g. 'clean,pgd10'.")
  return tuple(parsed)
