"""`fgsm_amr`: RegMix's FGSM-AMR (Liu & Ojha 2025): the FGSM-PGK loop with the logit MSE replaced
by the weighted adversarial mutual regulariser `amr_alpha * KL(P(z0) || P(z_adv)) + amr_beta *
KL(P(z_adv) || P(z0))` (`losses.amr_loss`). Same loss function as `fgsm_pgk`, other defaults.

`amr_alpha` / `amr_beta`: the paper's values are unknown; ours were chosen on a validation split
of the CIFAR-10 subset (experiments/regmix_hparams/results.md), with `beta = 0.5 alpha` as the
paper's summary describes.
"""

from regmix_jax.methods import fgsm_pgk

NAME = "fgsm_amr"
DEFAULTS = dict(fgsm_pgk.DEFAULTS, regularizer="amr", target="smoothed", amr_alpha=2.0,
                amr_beta=1.0)
CHOICES, RANGES, SAMPLE_STATE = fgsm_pgk.CHOICES, fgsm_pgk.RANGES, fgsm_pgk.SAMPLE_STATE
loss = fgsm_pgk.loss
