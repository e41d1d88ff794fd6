"""Data: CIFAR-10/100 (TFDS, local files or .npz) and a synthetic set, host-side sharded loaders,
and on-device augmentation."""

from regmix_jax.data.augment import PAD_MODES, augment
from regmix_jax.data.loader import (TrainLoader, epoch_order, eval_batch_size, eval_batches,
                                    num_eval_batches)
from regmix_jax.data.dataset import EVAL_SPLITS, Dataset, Split
from regmix_jax.data.sources import SOURCES, load_dataset
from regmix_jax.data.synthetic_set import synthetic

__all__ = ["EVAL_SPLITS", "PAD_MODES", "SOURCES", "Dataset", "Split", "TrainLoader", "augment", "epoch_order",
           "eval_batch_size", "eval_batches", "load_dataset", "num_eval_batches", "synthetic"]
