"""Pure, jittable adversarial attacks over a `logits_fn` (see `pgd.py` for the conventions), and
`run_autoattack`, AutoAttack's evaluation for any JAX model (`autoattack_runner.py`)."""

from regmix_jax.attacks.apgd import apgd, apgd_targeted
from regmix_jax.attacks.autoattack import ATTACK_NAMES as AUTOATTACK_NAMES
from regmix_jax.attacks.autoattack import ATTACKS as AUTOATTACK_ATTACKS
from regmix_jax.attacks.autoattack import autoattack
from regmix_jax.attacks.autoattack import resolve_version as autoattack_version
from regmix_jax.attacks.cag import cag
from regmix_jax.attacks.fab import fab, fab_targeted
from regmix_jax.attacks.norms import NORMS as AUTOATTACK_NORMS
from regmix_jax.attacks.pgd import ATTACK_LOSSES, cw_linf, fgsm, pgd, project
from regmix_jax.attacks.autoattack_runner import (AutoAttackResult, StateMismatchError,
                                                  run_autoattack)
from regmix_jax.attacks.spec import AUTOATTACK_PARTS, parse_attacks
from regmix_jax.attacks.square import square

__all__ = ["ATTACK_LOSSES", "AUTOATTACK_ATTACKS", "AUTOATTACK_NAMES", "AUTOATTACK_NORMS",
           "AUTOATTACK_PARTS", "AutoAttackResult", "apgd", "apgd_targeted", "autoattack",
           "autoattack_version", "cag", "cw_linf", "fab", "fab_targeted", "fgsm",
           "parse_attacks", "pgd", "project", "run_autoattack", "square", "StateMismatchError"]
