"""The README's "Using the losses in your own code" example runs and gives a sensible loss."""

import os
import re

import jax
import numpy as np

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def test_losses_example_runs():
  text = open(README).read()
  section = text.split("## Using the losses in your own code", 1)[1].split("\n## ", 1)[0]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  namespace = {}
  exec(compile(code, "README.md", "exec"), namespace)  # pylint: disable=exec-used
  loss, terms, grads = namespace["loss"], namespace["terms"], namespace["grads"]
  assert np.isfinite(float(loss)) and float(loss) > 0
  np.testing.assert_allclose(float(loss), float((terms["target_ce"] + terms["regularizer"]).mean()),
                             rtol=1e-6)
  assert float(terms["regularizer"].mean()) > 0  # init and final outputs differ
  assert any(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(grads))
