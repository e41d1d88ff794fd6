"""The README's "AutoAttack on your own Flax or plain-JAX model" example runs (with few
iterations injected, and its state file in a temporary directory) on a model that learnt."""

import functools
import os
import re

import numpy as np

from regmix_jax import attacks

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
FEW = {"apgd-ce": dict(num_steps=3), "apgd-t": dict(num_steps=3, num_target_classes=2),
       "fab-t": dict(num_steps=3, num_target_classes=2), "square": dict(num_queries=10)}


def test_autoattack_example_runs(tmp_path, monkeypatch):
  text = open(README).read()
  section = text.split("### AutoAttack on your own Flax or plain-JAX model", 1)[1]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(attacks, "run_autoattack",
                      functools.partial(attacks.run_autoattack, overrides=FEW, progress=False))
  namespace = {}
  exec(compile(code, "README.md", "exec"), namespace)  # pylint: disable=exec-used
  result = namespace["result"]
  assert result.norm == "Linf" and result.version == "standard"
  assert list(result.accuracy)[0] == "clean" and result.x_adv.shape == (64, 32, 32, 3)
  assert np.all(result.robust <= (result.y_adv == namespace["y"]))
  assert os.path.exists(tmp_path / "aa_state.json")
  # The model learnt (an untrained one predicts one class, and no attack has anything to do),
  # and the attacks fool some of its points even with these few iterations.
  assert result.clean_accuracy > 0.8
  assert result.robust_accuracy < result.clean_accuracy - 0.05
