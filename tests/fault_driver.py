"""The training command with a fault injected at a named moment, for tests/test_faults.py.

  python tests/fault_driver.py KIND:N -- <regmix_jax.main arguments>

runs `python -m regmix_jax.main` in this process, and SIGKILLs it (no cleanup, no handler: as a
preempted machine) at the N-th (1-based) event of KIND:

  save            right after the N-th checkpoint save started (Orbax still writing it)
  after_metrics   right after the N-th per-epoch record reached metrics.jsonl, before the save
                  that follows it
  eval            during the N-th evaluation, after its first batch was dispatched
  step            right after the N-th train step of this process was dispatched

or sends itself SIGTERM instead of SIGKILL with KIND `term_save` / `term_eval` (the same moments
as `save` / `eval`), to check that a stop request there ends cleanly with the state saved.
"""

import os
import signal
import sys

from regmix_jax import checkpointing, evaluation, main, reporting, train

kind, count = sys.argv[1].split(":")
count = int(count)
seen = {"n": 0}
sig = signal.SIGTERM if kind.startswith("term_") else signal.SIGKILL
event = kind.removeprefix("term_")


def _hit():
  seen["n"] += 1
  if seen["n"] == count:
    sys.stdout.flush()
    os.kill(os.getpid(), sig)


def _after(fn):
  def wrapped(*args, **kwargs):
    out = fn(*args, **kwargs)
    _hit()
    return out
  return wrapped


if event == "save":
  checkpointing.Checkpointer.save = _after(checkpointing.Checkpointer.save)
elif event == "after_metrics":
  reporting.MetricsLog.append = _after(reporting.MetricsLog.append)
elif event == "eval":
  original = evaluation.accuracies

  def accuracies(batches, step_fn, fetch=None, **kwargs):
    def once_dispatched():
      for i, batch in enumerate(batches):
        yield batch
        if i == 0:
          _hit()
    return original(once_dispatched(), step_fn, **({} if fetch is None else {"fetch": fetch}),
                    **kwargs)
  evaluation.accuracies = accuracies
elif event == "step":
  build = train.build_trainer

  def build_trainer(config):
    trainer = build(config)
    return train.dataclasses.replace(trainer, train_step=_after(trainer.train_step))
  train.build_trainer = build_trainer
else:
  sys.exit(f"unknown fault kind {kind!r}")

sys.argv = [sys.argv[0]] + sys.argv[sys.argv.index("--") + 1:]
main.run()
