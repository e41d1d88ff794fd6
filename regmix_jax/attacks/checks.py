"""AutoAttack's gradient-masking and set-up checks, with the official warnings word for word.

A port of fra31/auto-attack (MIT), `autoattack/checks.py` (and `flags_doc.md`, which explains each
flag). Each check returns the warning text (without the official logger's "Warning: " prefix) or
None; `run_autoattack` records them in its result and prints them. What each warning means, in
short (docs/evaluation.md):

- randomized: the outputs differ between calls on the same input; use `version="rand"` (EOT)
  and pass the model as `logits_fn(x, key)` with `randomized=True`.
- probability output: the model returns probabilities, not logits; the losses (CE, DLR) and FAB's
  linearisation then work on a squashed scale and the attacks weaken.
- zero gradients: some points have an all-zero input gradient of the DLR loss at the start of
  APGD: gradient masking, so the gradient attacks may fail there.
- dynamic: the forward pass itself differentiates (a test-time defence); AutoAttack's gradients
  go through that, and an adaptive attack may be needed.
- target classes: more targets asked than the K - 1 other classes (capped here; the official code
  fails), or too few classes for the DLR losses.
- Square found more: the black-box Square lowered the robust accuracy after the white-box attacks:
  a sign that their gradients are masked.

JAX-specific: `check_dynamic` traces one call of `logits_fn` (`run_autoattack`: with
`jax.eval_shape`, so nothing is computed) and counts calls of JAX's differentiation API
(`jax.grad`, `value_and_grad`, `vjp`, `jvp`, `linearize`, `jacrev`, `jacfwd`, `hessian`), where the official counts torch's `grad`, `backward` and `_make_grads`
(`checks.py:9-13`, `:89-113`). It is a heuristic, as the official: a `logits_fn` that was already
compiled by `jax.jit` runs no Python and is not seen. Unlike the official, its counter starts from
zero on each call (the official's module-level counter is never reset, so after one hit it fires
on every later model).
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Mapping, Sequence

import numpy as np

DOC = "flags_doc.md"
_SUFFIX = f" See {DOC} for details."
# JAX's differentiation entry points, counted by `check_dynamic` when defined in JAX's api module.
_DIFF_FUNCTIONS = frozenset(
    {"grad", "value_and_grad", "vjp", "jvp", "linearize", "jacrev", "jacfwd", "hessian"})
_API_FILE = os.path.join("jax", "_src", "api.py")


def randomized_message() -> str:
  """`checks.py:36-37`."""
  return 'it seems to be a randomized defense! Please use version="rand".' + _SUFFIX


def check_randomized(outputs: Sequence[np.ndarray], labels: np.ndarray,
                     alpha: float = 1e-4) -> str | None:
  """`check_randomized` (`checks.py:18-41`): fires if the number of correct points differs
  between the `n` forward passes `outputs [n][B, K]` of the same input, or two passes' rows,
  each divided by its L2 norm (+1e-10), differ by more than `alpha` in L2."""
  correct = [int((np.argmax(o, -1) == labels).sum()) for o in outputs]
  unit = [o / (np.linalg.norm(o, axis=-1, keepdims=True) + 1e-10) for o in outputs]
  max_diff = 0.0
  for c in range(len(unit) - 1):
    for e in range(c + 1, len(unit)):
      max_diff = max(max_diff, float(np.linalg.norm(unit[c] - unit[e], axis=-1).max()))
  if any(c != correct[-1] for c in correct) or max_diff > alpha:
    return randomized_message()
  return None


def check_range_output(output: np.ndarray, alpha: float = 1e-5) -> str | None:
  """`check_range_output` (`checks.py:44-57`): fires if every output lies in [0, 1] and every
  row sums to 1 (within `alpha`)."""
  output = np.asarray(output, np.float64)
  if (output.max() < 1.0 + alpha and output.min() > -alpha
      and bool((np.abs(output.sum(-1) - 1.0) < alpha).all())):
    return ("it seems that the output is a probability distribution, please be sure that the "
            "logits are used!" + _SUFFIX)
  return None


def zero_gradients_message(count: int) -> str:
  """`check_zero_gradients` (`checks.py:60-70`) for `count > 0` points."""
  return (f"there are {count} points with zero gradient! This might lead to unreliable "
          "evaluation with gradient-based attacks." + _SUFFIX)


def check_square_sr(accuracy_after: Mapping[str, float], alpha: float = 0.002) -> str | None:
  """`check_square_sr` (`checks.py:73-86`): with Square and at least one other entry besides it,
  fires if Square's robust accuracy is below the smallest other one (clean included) by more
  than `alpha`."""
  if "square" in accuracy_after and len(accuracy_after) > 2:
    acc = min(v for k, v in accuracy_after.items() if k != "square")
    if accuracy_after["square"] < acc - alpha:
      return (f"Square Attack has decreased the robust accuracy of "
              f"{acc - accuracy_after['square']:.2%}. This might indicate that the robustness "
              "evaluation using AutoAttack is unreliable. Consider running Square Attack with "
              "more iterations and restarts or an adaptive attack." + _SUFFIX)
  return None


def check_dynamic(call: Callable[[], object]) -> str | None:
  """`check_dynamic` (`checks.py:89-113`): runs `call()` (one forward, traced or eager, not
  jitted) under `sys.settrace` and fires if it called JAX's differentiation API (see the module
  docstring)."""
  count = 0

  def trace(frame, event, arg):
    nonlocal count
    if (event == "call" and frame.f_code.co_name in _DIFF_FUNCTIONS
        and frame.f_code.co_filename.endswith(_API_FILE)):
      count += 1
    return None

  previous = sys.gettrace()
  sys.settrace(trace)
  try:
    call()
  finally:
    sys.settrace(previous)
  if count > 0:
    return ("it seems to be a dynamic defense! The evaluation with AutoAttack might be "
            "insufficient." + _SUFFIX)
  return None


def check_n_classes(num_classes: int, attacks: Sequence[str], apgd_targets: int,
                    fab_targets: int) -> str | None:
  """`check_n_classes` (`checks.py:117-140`), with its wording (including the official's
  `apgd_targets` in the FAB-T messages)."""
  msg = None
  if "apgd-dlr" in attacks or "apgd-t" in attacks:
    if num_classes <= 2:
      msg = f"with only {num_classes} classes it is not possible to use the DLR loss!"
    elif num_classes == 3:
      msg = f"with only {num_classes} classes it is not possible to use the targeted DLR loss!"
    elif "apgd-t" in attacks and apgd_targets + 1 > num_classes:
      msg = (f"it seems that more target classes ({apgd_targets}) than possible "
             f"({num_classes - 1}) are used in APGD-T!")
  if "fab-t" in attacks and fab_targets + 1 > num_classes:
    if msg is None:
      msg = (f"it seems that more target classes ({apgd_targets}) than possible "
             f"({num_classes - 1}) are used in FAB-T!")
    else:
      msg += (f" Also, it seems that too many target classes ({apgd_targets}) are used in "
              f"FAB-T ({num_classes - 1} possible)!")
  return msg
