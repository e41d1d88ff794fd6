"""The `eval` suite: PGD-20 as the training loop evaluates, and AutoAttack's worst case."""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp

from regmix_jax import attacks, data as data_lib, evaluation, train

import harness

AA_POINTS = 32  # AutoAttack's worst case costs ~2,000 forward-backward passes per point


def run_eval(attack, model, variant, data) -> dict:
  """Rows per second of `attack` on the trainer's target model (PGD-AT's config, its
  convolutions `harness.convolutions`): "pgd20", `evaluation.eval_step` on 3 batches, the last
  one padded (one compile); "aa-worst", `attacks.autoattack` on AA_POINTS points that all stay
  robust to the end (logits `1e-6 * f(x) + 10 * onehot(0)`, label 0: every attack runs its full
  budget on every point, all the network's work, no early exit)."""
  counter = harness.CompileCounter()
  config = harness.load_config("pgd_at", model, variant, data)
  trainer = train.build_trainer(config, harness.convolutions(config, variant))
  data_parallel = trainer.data_parallel
  device_state = data_parallel.put_state(trainer.create_state())
  net = trainer.models["target"]
  if attack == "pgd20":
    n = 2 * harness.BATCH + harness.BATCH // 2  # 3 batches, the last one padded
    fn = data_parallel.map(functools.partial(
        evaluation.eval_step, model=net, role="target",
        attack_list=attacks.parse_attacks("pgd20")), donate_state=False, per_device_outputs=True)
  elif attack == "aa-worst":
    n = AA_POINTS

    def aa_step(state, batch, *, axis_name):
      del axis_name
      variables = state.eval_variables("target")
      pinned = 10.0 * jax.nn.one_hot(0, 10)
      logits_fn = lambda x: 1e-6 * net.apply(variables, x, train=False) + pinned
      x = batch["image"].astype(jnp.float32) / 255.0
      labels = jnp.zeros_like(batch["label"])
      _, robust = attacks.autoattack(logits_fn, x, labels, jax.random.key(0), epsilon=8 / 255)
      return {"aa": robust.sum()[None], "count": batch["mask"].sum()[None]}
    fn = data_parallel.map(aa_step, donate_state=False, per_device_outputs=True)
  else:
    raise ValueError(f"unknown eval attack {attack!r}")
  mark, counts, seconds = counter.mark(), [], []
  size = min(n, harness.BATCH)
  for b in data_lib.eval_batches(trainer.dataset.test, batch_size=size, num_examples=n):
    start = time.perf_counter()
    counts.append(data_parallel.host_sum(fn(device_state, data_parallel.put_batch(b))))
    seconds.append(time.perf_counter() - start)
  stats = counter.since(mark)
  # Rows computed per second (a padded batch costs a full one) after the first batch, which
  # compiles; with a single batch (aa-worst), its time less the compile time.
  rate = ((len(seconds) - 1) * size / sum(seconds[1:]) if len(seconds) > 1
          else size / (seconds[0] - stats["compile_s"]))
  return {"images_per_s": rate, "batch_s": seconds, "examples": n, "batches": len(counts),
          "compiles": stats["compiles"], "traces": stats["traces"],
          "compile_s": stats["compile_s"], "devices": jax.device_count(),
          "counts": {k: float(sum(c[k] for c in counts)) for k in counts[0]},
          "convolutions": trainer.convolutions.name,
          "onednn_min_size": harness.onednn_min_size(trainer.convolutions)}
