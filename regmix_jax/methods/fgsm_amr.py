"""`fgsm_amr`: RegMix's FGSM-AMR (Liu & Ojha 2025): the FGSM-PGK loop with the logit MSE replaced
by the weighted adversarial mutual regulariser `amr_alpha * KL(P(z0) || P(z_adv)) + amr_beta *
KL(P(z_adv) || P(z0))` (`losses.amr_loss`). Same loss function as `fgsm_pgk`, other defaults.

`amr_alpha` / `amr_beta` (`losses.AMR_ALPHA`, `AMR_BETA`, shared by every RegMix entry point):
the paper's values are unknown. Ours, 4 and 2, are our choice from a
search on a validation split of the CIFAR-10 subset (experiments/regmix_hparams/results.md):
alpha in {0.5, 1, 2, 4} with beta = 0.5 alpha (the paper's summary), small CNN, 6 epochs; alpha 4
had the highest validation PGD-10 accuracy, though all four lay within 0.6 points, well inside the
noise of 1000 validation images. Revisit them at full scale.
"""

from regmix_jax.methods import fgsm_pgk

NAME = "fgsm_amr"
DEFAULTS = dict(fgsm_pgk.DEFAULTS, regularizer="amr", ce_target="smoothed")
CHOICES, RANGES, SAMPLE_STATE = fgsm_pgk.CHOICES, fgsm_pgk.RANGES, fgsm_pgk.SAMPLE_STATE
METRICS = fgsm_pgk.METRICS
loss = fgsm_pgk.loss
