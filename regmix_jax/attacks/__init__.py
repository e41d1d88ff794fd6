"""Pure, jittable adversarial attacks over a `logits_fn` (see `pgd.py` for the conventions)."""

from regmix_jax.attacks.cag import cag
from regmix_jax.attacks.pgd import ATTACK_LOSSES, cw_linf, fgsm, pgd, project

__all__ = ["ATTACK_LOSSES", "cag", "cw_linf", "fgsm", "pgd", "project"]
