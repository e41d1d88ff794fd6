"""`fgsm_agr`: RegMix's FGSM-AGR (Liu & Ojha 2025), the paper's headline variant: FGSM-AMR plus
the adversarial generalisation regulariser, whose target for the adversarial output mixes the
smoothed labels with the clean distribution, `(1 - agr_gamma) y~ + agr_gamma P(f(x))`
(`losses.agr_targets`; one extra clean forward pass, see `fgsm_pgk.loss` for its BatchNorm mode).
Same loss function as `fgsm_pgk`, other defaults.

`amr_alpha`, `amr_beta`, `agr_gamma`: the paper's values are unknown; ours were chosen on a
validation split of the CIFAR-10 subset (experiments/regmix_hparams/results.md). `P(f(x))` is not
detached by default (REFERENCE.md); `stop_gradient_clean=True` detaches it.
"""

from regmix_jax.methods import fgsm_amr, fgsm_pgk

NAME = "fgsm_agr"
DEFAULTS = dict(fgsm_amr.DEFAULTS, target="agr", agr_gamma=0.2)
CHOICES, RANGES, SAMPLE_STATE = fgsm_pgk.CHOICES, fgsm_pgk.RANGES, fgsm_pgk.SAMPLE_STATE
loss = fgsm_pgk.loss
