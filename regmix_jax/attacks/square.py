"""Square Attack, L-inf (Andriushchenko et al. 2020): a score-based black-box random search.

Reference: `SquareAttack.attack_single_run` (L-inf branch) and `perturb` of fra31/auto-attack,
`autoattack/square.py` (read at commit 1706c9b), and the authors' NumPy original,
max-andr/square-attack, `attack.py` (`square_attack_linf`, `p_selection`). The attack needs only
logits, no gradients, so it is not fooled by masked or obfuscated gradients.

The algorithm, per correctly classified example:
  * Start from vertical stripes: `x_best = clip(x + eps * r, 0, 1)`, `r` a random sign of shape
    `[1, W, C]` per example (official NCHW `[c, 1, w]`): constant along the height for each column
    and channel.
  * Keep `margin_min` and `loss_min`, the margin `z_y - max_{j != y} z_j` and the loss (the same
    margin for `loss="margin"`, AutoAttack's choice; `-CE` for `loss="ce"`) of `x_best`. An
    example is fooled once its margin is `<= 0` and then no longer changes.
  * Iteration `i` picks the fraction `p = p_selection(p_init, i, num_queries)` (halved at the
    official breakpoints), the side `s = max(round(sqrt(p * H * W)), 1)`, capped at `H - 1`, a
    window position `vh ~ U{0, ..., H - s - 1}`, `vw ~ U{0, ..., W - s - 1}` (as official, the
    last row and column are never inside a window; the stripes cover them), and one sign per
    channel. The proposal sets the window to `clip(x + eps * sign_c, 0, 1)` (official:
    `x_best + 2 eps sign` projected back onto the eps-ball and [0, 1], the same values) and keeps
    `x_best` elsewhere. It replaces `x_best` if its loss is lower than `loss_min` or it is
    misclassified; `loss_min` follows the loss.
  * Restarts (`num_restarts`) rerun the search from new stripes on the examples not yet fooled.

Shapes are fixed, so it is jittable and compiles once per batch size (also inside `pmap` or
`shard_map`): every example is queried every iteration and masks decide which ones update, the
window is a mask built from iota comparisons, and a `lax.while_loop` stops early once every example
is fooled (which changes no result, since fooled examples no longer move).

Deviations from the official code, and why:
  * Random numbers come from JAX's generator, so results match the official code in distribution
    only, not draw for draw. Every draw of an example comes from its own key (the stripes, and
    per iteration `fold_in(key, i)`), so results do not depend on how a batch is split.
  * Window position and signs are drawn per example. AutoAttack's PyTorch code draws one position
    and one sign vector per iteration for the whole batch; the NumPy original draws them per image,
    as here. A shared draw would make an example's result depend on its batch.
  * Resampling of the window signs: the NumPy original redraws the signs in a `while` loop as long
    as the proposal equals `x_best` in the whole window (tolerance 1e-7), i.e. it samples the signs
    uniformly among those that change something. Here the `2^C` sign vectors are enumerated and one
    is sampled uniformly among those that change the window: the same distribution, in fixed
    shapes and bounded time. Where no sign vector changes the window (e.g. `epsilon = 0`), where
    the official loop would never end, one is drawn uniformly among all. The PyTorch version read
    (commit 1706c9b) has no redraw at all; it would waste such queries.
  * The side cap `s <= H - 1` is from the NumPy original (the PyTorch version read has none; with
    `s = H` it would always put the window at 0); here it is `min(H, W) - 1`, the same for square
    images and valid for others.
  * Signs are exact +-1 (`jax.random.rademacher`); the official `sign(2 * rand - 1)` is 0 with
    probability about 2^-24.
  * The schedule is tabulated in Python at trace time from the official formula (Python floats,
    `int` truncation, `round`), so the traced loop only indexes a table of sides.
  * `rescale_schedule` defaults to False, as AutoAttack passes `resc_schedule=False` (the class
    default of the PyTorch code is True; the NumPy original always rescales).
  * Like the official `perturb`, an example is counted fooled when the arg-max of its final
    `x_best` is not the label; examples never fooled, and those misclassified at the start, are
    returned as the clean `x`.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from regmix_jax import losses, rng

LogitsFn = Callable[[jax.Array], jax.Array]

# Breakpoints of the official schedule on the iteration rescaled to 10000 queries: past
# `_BREAKPOINTS[k]`, `p = p_init / 2 ** (k + 1)`.
_BREAKPOINTS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
# The official resampling loop's tolerance for "the proposal does not change the window".
_SAME_TOL = 1e-7


def p_selection(p_init: float, it: int, num_queries: int, rescale_schedule: bool = False) -> float:
  """The official piecewise-constant schedule of `p`, the fraction of pixels a square changes.

  With `rescale_schedule`, `it` is first mapped to `int(it / num_queries * 10000)`. Then `p` is
  `p_init` up to 10 and is halved past 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000.
  """
  if rescale_schedule:
    it = int(it / num_queries * 10000)
  halvings = sum(it > b for b in _BREAKPOINTS)
  return p_init / 2**halvings


def square_side(p: float, height: int, width: int) -> int:
  """The official side of the square for fraction `p` on an `height x width` image:
  `max(int(round(sqrt(p * H * W))), 1)`, capped at `min(H, W) - 1`."""
  s = max(int(round(math.sqrt(p * height * width))), 1)
  return min(s, min(height, width) - 1)


def _side_table(p_init: float, num_queries: int, rescale_schedule: bool, height: int,
                width: int) -> jax.Array:
  """`[max(num_queries, 1)]` int32: the square side at each iteration."""
  sides = [square_side(p_selection(p_init, i, num_queries, rescale_schedule), height, width)
           for i in range(num_queries)]
  return jnp.asarray(np.array(sides or [1], np.int32))


def _margin_and_loss(logits: jax.Array, labels: jax.Array, loss: str):
  """`([B], [B])`: the margin `z_y - max_{j != y} z_j` and the loss the search minimises."""
  margin = -losses.margin(logits, labels)
  if loss == "margin":
    return margin, margin
  return margin, -losses.cross_entropy(logits, labels)


def _stripes(key: jax.Array, x: jax.Array, epsilon: float) -> jax.Array:
  """The vertical-stripe start of one example, `x [H, W, C]`: `clip(x + eps * r, 0, 1)` with one
  random sign `r [1, W, C]` per column and channel."""
  signs = jax.random.rademacher(key, (1,) + x.shape[1:], x.dtype)
  return jnp.clip(x + epsilon * signs, 0.0, 1.0)


def _propose(key: jax.Array, x: jax.Array, x_best: jax.Array, side: jax.Array, epsilon: float,
             sign_vectors: jax.Array) -> jax.Array:
  """One square proposal for one example (`x`, `x_best` `[H, W, C]`).

  A `side x side` window at a random position is set to `clip(x + eps * sign_c, 0, 1)`, with the
  per-channel signs `sign [C]` drawn uniformly among the `sign_vectors [2^C, C]` that change the
  window of `x_best` (among all if none does); `x_best` elsewhere.
  """
  height, width, _ = x.shape
  k_h, k_w, k_sign = jax.random.split(key, 3)
  vh = jax.random.randint(k_h, (), 0, height - side)
  vw = jax.random.randint(k_w, (), 0, width - side)
  rows = jax.lax.broadcasted_iota(jnp.int32, (height, width), 0)
  cols = jax.lax.broadcasted_iota(jnp.int32, (height, width), 1)
  window = ((rows >= vh) & (rows < vh + side) & (cols >= vw) & (cols < vw + side))[..., None]
  up = jnp.clip(x + epsilon, 0.0, 1.0)
  down = jnp.clip(x - epsilon, 0.0, 1.0)
  # [C]: whether sign +1 (-1) of a channel leaves that channel's window unchanged.
  same = lambda value: jnp.all(jnp.where(window, jnp.abs(value - x_best) < _SAME_TOL, True),
                               axis=(0, 1))
  same_up, same_down = same(up), same(down)
  unchanged = jnp.all(jnp.where(sign_vectors > 0, same_up, same_down), axis=-1)  # [2^C]
  allowed = ~unchanged | jnp.all(unchanged)
  choice = jax.random.categorical(k_sign, jnp.where(allowed, 0.0, -jnp.inf))
  sign = sign_vectors[choice]
  return jnp.where(window, jnp.where(sign > 0, up, down), x_best)


def square(
    logits_fn: LogitsFn,
    x: jax.Array,
    labels: jax.Array,
    key: jax.Array,
    *,
    epsilon: float,
    num_queries: int = 5000,
    p_init: float = 0.8,
    num_restarts: int = 1,
    loss: str = "margin",
    rescale_schedule: bool = False,
) -> jax.Array:
  """Untargeted L-inf Square Attack; the defaults are AutoAttack's.

  Args:
    logits_fn: `x [B, H, W, C] -> logits [B, K]`; only its outputs are used.
    x: clean images `[B, H, W, C]` in [0, 1] (`H, W >= 2`).
    labels: `[B]` integer labels.
    key: one key (per-example keys are `jax.random.split(key, B)`) or `[B]` per-example keys (see
      `regmix_jax.rng`); typed keys or raw `uint32` key data.
    epsilon: L-inf radius.
    num_queries: iterations (one query each) per restart, after the query of the start.
    p_init: initial fraction of pixels a square changes.
    num_restarts: searches from new stripes, each on the examples not yet fooled.
    loss: what the search minimises: "margin" (`z_y - max_{j != y} z_j`) or "ce" (`-CE`).
    rescale_schedule: map iteration `i` to `i / num_queries * 10000` in `p_selection`.

  Returns:
    `x_adv [B, H, W, C]`, no gradient path: a fooling point inside the eps-ball and [0, 1] for
    fooled examples, `x` for the others (including those misclassified at the start).
  """
  if loss not in ("margin", "ce"):
    raise ValueError(f"loss must be 'margin' or 'ce', got {loss!r}.")
  batch, height, width, channels = x.shape
  if min(height, width) < 2:
    raise ValueError(f"Square needs images of at least 2x2 pixels, got {height}x{width}.")
  x = jax.lax.stop_gradient(x)
  labels = labels.astype(jnp.int32)
  key = rng.as_typed_key(key)
  keys = jax.random.split(key, batch) if key.ndim == 0 else key
  sides = _side_table(p_init, num_queries, rescale_schedule, height, width)
  sign_vectors = jnp.asarray(
      np.array(list(itertools.product((-1.0, 1.0), repeat=channels)), np.float32))
  propose = jax.vmap(_propose, in_axes=(0, 0, 0, None, None, None))

  def single_run(run_keys, attack):
    """One search from new stripes on the examples where `attack [B]`; returns `x_best`."""
    init_keys, loop_keys = rng.split_keys(run_keys, 2)
    x_best = jax.vmap(_stripes, in_axes=(0, 0, None))(init_keys, x, epsilon)
    margin_min, loss_min = _margin_and_loss(logits_fn(x_best), labels, loss)

    def cond(state):
      i, _, margin_min, _ = state
      return (i < num_queries) & jnp.any(attack & (margin_min > 0))

    def body(state):
      i, x_best, margin_min, loss_min = state
      to_fool = attack & (margin_min > 0)
      x_new = propose(rng.fold(loop_keys, i), x, x_best, sides[i], epsilon, sign_vectors)
      margin, loss_new = _margin_and_loss(logits_fn(x_new), labels, loss)
      improved = to_fool & (loss_new < loss_min)
      loss_min = jnp.where(improved, loss_new, loss_min)
      improved = improved | (to_fool & (margin <= 0))
      margin_min = jnp.where(improved, margin, margin_min)
      x_best = jnp.where(improved[:, None, None, None], x_new, x_best)
      return i + 1, x_best, margin_min, loss_min

    state = (jnp.zeros((), jnp.int32), x_best, margin_min, loss_min)
    return jax.lax.while_loop(cond, body, state)[1]

  def restart(r, carry):
    x_adv, robust = carry
    x_best = single_run(rng.fold(keys, r), robust)
    fooled = robust & (jnp.argmax(logits_fn(x_best), axis=-1) != labels)
    return jnp.where(fooled[:, None, None, None], x_best, x_adv), robust & ~fooled

  robust = jnp.argmax(logits_fn(x), axis=-1) == labels
  x_adv, _ = jax.lax.fori_loop(0, num_restarts, restart, (x, robust))
  x_adv = jnp.clip(jnp.clip(x_adv, x - epsilon, x + epsilon), 0.0, 1.0)
  return jax.lax.stop_gradient(x_adv)
