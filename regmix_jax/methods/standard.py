"""`standard`: clean training with cross-entropy (no attack)."""

from regmix_jax.methods import base

NAME = "standard"
DEFAULTS = {}
METRICS = base.SUPERVISED_METRICS


def loss(params, batch_stats, batch, keys, *, models, cfg, axis_name=None):
  """Mean `CE(f(x), y)` over the batch; the model in train mode."""
  del keys, cfg, axis_name
  return base.supervised_ce(models, params, batch_stats, batch["image"], batch["label"])
