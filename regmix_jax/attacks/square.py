"""Square Attack (Andriushchenko et al. 2020) for the L-inf, L2 and L1 threat models: a
score-based black-box random search.

Reference: `SquareAttack.attack_single_run` (L-inf branch) and `perturb` of fra31/auto-attack,
`autoattack/square.py` (read at commit 1706c9b), and the authors' NumPy original,
max-andr/square-attack, `attack.py` (`square_attack_linf`, `p_selection`). The attack needs only
logits, no gradients, so it is not fooled by masked or obfuscated gradients.

The L-inf algorithm, per correctly classified example:
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

L2 and L1 (`square.py:305-420` and `:422-545` of fra31/auto-attack, MIT; NumPy original
`square_attack_l2`):
  * Start: a grid of `H // 5`-sided blocks, each `eta(s) * sign[c]` (a new sign per example,
    channel and block, a new transposition draw per block), `s = H // 5`, offset
    `(H - 5 s) // 2` (`:306-318`); L2 `x_best = clip(x + eps d / ||d||_2, 0, 1)`, L1
    `x_best = x + d + L1_projection(x, d, eps (1 - 1e-6))` (`:436-438`).
  * `eta(s)` (`:143-190`): two stacked blocks of concentric rectangles weighted `1/(n+1)^2` (L2)
    or `1/(n+1)^4` (L1), the lower one negated, normalised to unit L2 (L1) norm, transposed with
    probability 1/2. Tabulated in NumPy per side (`eta_table`).
  * Iteration `i`: side `s = max(round(sqrt(p H W)), 3)`, made odd, at most `min(H, W)`
    (`:341-344`); two windows W1, W2 at independent positions; per channel, the perturbation's
    mass in W1 u W2 plus the unused budget (`(eps^2 - ||d||^2) / C` for L2,
    `(eps - ||d||_1) / C` for L1, the L1 rescale times C as the official `:490-494`) goes into W1
    as `eta(s) sign[c] + d[W1] / ||d[W1]||`, W2 is zeroed; L2 renormalises the whole perturbation
    to norm eps and clips to the box, L1 projects with `L1_projection` onto `eps (1 - 1e-6)`.
  * The acceptance rule is the L-inf one (`:383-402`).
L2/L1 deviations: positions, signs and transpositions are drawn per example (the official draws
one position pair and one transposition per iteration for the whole batch); blocks of the start
grid that would cross the border (images under 25 pixels, where the official slicing fails) are
left out; images need at least 5 x 5 pixels (the official divides by `H // 5`).
"""

from __future__ import annotations

import itertools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from regmix_jax import losses, rng
from regmix_jax.attacks import norms
from regmix_jax.attacks.apgd import CLEAN_CALL, as_model, example_keys_for, model_key

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


def lp_square_side(p: float, height: int, width: int) -> int:
  """The official L2/L1 side (`square.py:341-344`): `max(round(sqrt(p H W)), 3)`, made odd,
  capped at `min(H, W)`."""
  s = max(int(round(math.sqrt(p * height * width))), 3)
  if s % 2 == 0:
    s += 1
  return min(s, min(height, width))


def _eta_rectangles(rows: int, cols: int, power: int) -> np.ndarray:
  """`eta_rectangles` (`square.py:143-170`): concentric rectangles, unnormalised."""
  d = np.zeros((rows, cols))
  xc, yc = rows // 2 + 1, cols // 2 + 1
  c0, c1 = xc - 1, yc - 1
  for n in range(max(xc, yc)):
    d[max(c0, 0):min(c0 + 2 * n + 1, rows), max(0, c1):min(c1 + 2 * n + 1, cols)] += 1.0 / (
        n + 1) ** power
    c0 -= 1
    c1 -= 1
  return d


def eta_table(side: int, norm: str) -> np.ndarray:
  """`eta(s)` before its random transposition (`square.py:172-190`), `[s, s]` float32: the
  upper `s // 2` rows a block of rectangles, the lower ones its negation, unit L2 (L2) or L1 (L1)
  norm (each block normalised first, as `eta_rectangles` does)."""
  power = 2 if norm == "L2" else 4

  def normed(a):
    if a.size == 0:
      return a
    return a / (np.sqrt((a ** 2).sum()) if norm == "L2" else np.abs(a).sum())

  d = np.concatenate([normed(_eta_rectangles(side // 2, side, power)),
                      -normed(_eta_rectangles(side - side // 2, side, power))], axis=0)
  d = normed(d)
  return d.astype(np.float32)


def _lp_tables(norm, p_init, num_queries, rescale_schedule, height, width):
  """`(side per iteration [Q], index into the eta tables per iteration [Q], eta tables
  [n, S, S] (each side's table in the top-left corner), S)` for the L2/L1 search."""
  sides = [lp_square_side(p_selection(p_init, i, num_queries, rescale_schedule), height, width)
           for i in range(max(num_queries, 1))]
  distinct = sorted(set(sides))
  big = max(distinct)
  tables = np.zeros((len(distinct), big, big), np.float32)
  for j, s in enumerate(distinct):
    tables[j, :s, :s] = eta_table(s, norm)
  index = [distinct.index(s) for s in sides]
  return (jnp.asarray(np.array(sides, np.int32)), jnp.asarray(np.array(index, np.int32)),
          jnp.asarray(tables), big)


def _place(block: jax.Array, vh, vw, height: int, width: int) -> jax.Array:
  """`block [S, S]` (content in its top-left corner) placed at `(vh, vw)` of an `[H, W]` zero
  image (no wrap-around: the content fits)."""
  size = block.shape[0]
  canvas = jnp.zeros((max(height, size), max(width, size)), block.dtype)
  canvas = canvas.at[:size, :size].set(block)
  return jnp.roll(canvas, (vh, vw), axis=(0, 1))[:height, :width]


def _lp_init_delta(key, x, norm):
  """The L2/L1 start's block grid `delta [H, W, C]` for one example (`square.py:306-318`)."""
  height, width, channels = x.shape
  s0 = height // 5
  offset = (height - 5 * s0) // 2
  eta = eta_table(s0, norm)
  delta = jnp.zeros_like(x)
  blocks = [(offset + a * s0, offset + b * s0) for a in range(height // s0)
            for b in range(width // s0)]
  for n, (vh, vw) in enumerate(blocks):
    if vh + s0 > height or vw + s0 > width:
      continue  # the official slicing fails on these (images under 25 pixels)
    k_sign, k_t = jax.random.split(jax.random.fold_in(key, n))
    sign = jax.random.rademacher(k_sign, (channels,), x.dtype)
    block = jnp.where(jax.random.bernoulli(k_t), jnp.asarray(eta.T), jnp.asarray(eta))
    delta = delta.at[vh:vh + s0, vw:vw + s0, :].add(block[:, :, None] * sign)
  return delta


def _lp_propose(key, x, x_best, side, table, norm, epsilon):
  """One L2/L1 proposal for one example (`x`, `x_best` `[H, W, C]`): the new perturbation
  `delta [H, W, C]` before the final rescale / projection (`square.py:346-375`, `:466-496`)."""
  height, width, channels = x.shape
  k = jax.random.split(key, 6)
  span = lambda kk, n: jax.random.randint(kk, (), 0, jnp.maximum(n - side, 1))
  vh, vw, vh2, vw2 = span(k[0], height), span(k[1], width), span(k[2], height), span(k[3], width)
  rows = jax.lax.broadcasted_iota(jnp.int32, (height, width), 0)
  cols = jax.lax.broadcasted_iota(jnp.int32, (height, width), 1)
  in_window = lambda a, b: ((rows >= a) & (rows < a + side) & (cols >= b) & (cols < b + side))
  w1, w2 = in_window(vh, vw)[..., None], in_window(vh2, vw2)[..., None]
  delta = x_best - x
  if norm == "L2":
    cnorm = lambda v: jnp.sqrt(jnp.sum(v * v, axis=(0, 1)))  # [C]
    n_img = jnp.sqrt(jnp.sum(delta * delta))
  else:
    cnorm = lambda v: jnp.sum(jnp.abs(v), axis=(0, 1))
    n_img = jnp.sum(jnp.abs(delta))
  n_w1 = cnorm(jnp.where(w1, delta, 0.0))
  n_union = cnorm(jnp.where(w1 | w2, delta, 0.0))
  block = jnp.where(jax.random.bernoulli(k[4]), table.T, table)  # the table's transposition
  eta = _place(block, vh, vw, height, width)[..., None]
  sign = jax.random.rademacher(k[5], (channels,), x.dtype)
  new = jnp.where(w1, eta * sign + delta / (1e-12 + n_w1), 0.0)
  if norm == "L2":
    scale = jnp.sqrt(jnp.maximum(epsilon ** 2 - n_img ** 2, 0.0) / channels + n_union ** 2)
  else:
    scale = (jnp.maximum(epsilon - n_img, 0.0) / channels + n_union) * channels
  new = new / (1e-12 + cnorm(new)) * scale
  delta = jnp.where(w2, 0.0, delta)
  return jnp.where(w1, new, delta)


def _lp_finish(x, delta, norm, epsilon):
  """L2: `clip(x + eps delta / ||delta||_2, 0, 1)`; L1: `x + delta + L1_projection(x, delta,
  eps (1 - 1e-6))` (`square.py:319`, `:377`, `:437`, `:497`)."""
  if norm == "L2":
    return jnp.clip(x + epsilon * norms.normalize(delta, "L2"), 0.0, 1.0)
  return x + delta + norms.l1_projection(x, delta, epsilon * (1.0 - 1e-6))


def square_init(model, x, labels, keys, r, *, norm, epsilon, loss):
  """The start of restart `r` on every example: `(x_best, margin_min, loss_min)`.

  Args:
    model: `(x, key) -> logits`; x: clean `[B, H, W, C]`; labels `[B]`; keys `[B]` per-example
      keys of the attack.
  """
  keys = rng.fold(keys, r)
  init_keys, _ = rng.split_keys(keys, 2)
  if norm == "Linf":
    x_best = jax.vmap(_stripes, in_axes=(0, 0, None))(init_keys, x, epsilon)
  else:
    delta = jax.vmap(_lp_init_delta, in_axes=(0, 0, None))(init_keys, x, norm)
    x_best = _lp_finish(x, delta, norm, epsilon)
  margin_min, loss_min = _margin_and_loss(model(x_best, model_key(keys, 0)), labels, loss)
  return x_best, margin_min, loss_min


def square_steps(model, x, labels, keys, r, state, start, stop, *, norm, epsilon, num_queries,
                 p_init, loss, rescale_schedule, attack=None):
  """Iterations `start <= i < stop` of restart `r` (traced ints are fine), stopping early once
  no example of `attack [B]` (default: all) has a positive margin. Returns the new state.

  Running `[0, a)` then `[a, b)` gives what `[0, b)` gives (every draw comes from
  `fold_in(key, i)`); `run_autoattack` uses this to gather the examples still unfooled between
  segments, as the official loop does every query.
  """
  _, height, width, channels = x.shape
  keys = rng.fold(keys, r)
  _, loop_keys = rng.split_keys(keys, 2)
  attack = jnp.ones(x.shape[0], bool) if attack is None else attack
  if norm == "Linf":
    sides = _side_table(p_init, num_queries, rescale_schedule, height, width)
    sign_vectors = jnp.asarray(
        np.array(list(itertools.product((-1.0, 1.0), repeat=channels)), np.float32))
    propose = jax.vmap(_propose, in_axes=(0, 0, 0, None, None, None))
    proposal = lambda i, x_best: propose(rng.fold(loop_keys, i), x, x_best, sides[i], epsilon,
                                         sign_vectors)
  else:
    sides, index, tables, _ = _lp_tables(norm, p_init, num_queries, rescale_schedule, height,
                                         width)
    propose = jax.vmap(_lp_propose, in_axes=(0, 0, 0, None, None, None, None))
    proposal = lambda i, x_best: _lp_finish(
        x, propose(rng.fold(loop_keys, i), x, x_best, sides[i], tables[index[i]], norm, epsilon),
        norm, epsilon)

  def cond(carry):
    i, _, margin_min, _ = carry
    return (i < stop) & jnp.any(attack & (margin_min > 0))

  def body(carry):
    i, x_best, margin_min, loss_min = carry
    to_fool = attack & (margin_min > 0)
    x_new = proposal(i, x_best)
    margin, loss_new = _margin_and_loss(model(x_new, model_key(keys, i + 1)), labels, loss)
    improved = to_fool & (loss_new < loss_min)  # :383-402
    loss_min = jnp.where(improved, loss_new, loss_min)
    improved = improved | (to_fool & (margin <= 0))
    margin_min = jnp.where(improved, margin, margin_min)
    x_best = jnp.where(improved[:, None, None, None], x_new, x_best)
    return i + 1, x_best, margin_min, loss_min

  x_best, margin_min, loss_min = state
  start = jnp.asarray(start, jnp.int32)
  out = jax.lax.while_loop(cond, body, (start, x_best, margin_min, loss_min))
  return out[1:]


def check_square_args(x_shape, norm: str, loss: str) -> None:
  """Raises a ValueError naming the problem for inputs Square cannot attack."""
  norms.check_norm(norm)
  if loss not in ("margin", "ce"):
    raise ValueError(f"loss must be 'margin' or 'ce', got {loss!r}.")
  height, width = x_shape[1], x_shape[2]
  least = 2 if norm == "Linf" else 5
  if min(height, width) < least:
    raise ValueError(f"Square ({norm}) needs images of at least {least}x{least} pixels, got "
                     f"{height}x{width}.")


def square(
    logits_fn: LogitsFn,
    x: jax.Array,
    labels: jax.Array,
    key: jax.Array,
    *,
    epsilon: float,
    norm: str = "Linf",
    num_queries: int = 5000,
    p_init: float = 0.8,
    num_restarts: int = 1,
    loss: str = "margin",
    rescale_schedule: bool = False,
    randomized: bool = False,
) -> jax.Array:
  """Untargeted Square Attack; the defaults are AutoAttack's.

  Args:
    logits_fn: `x [B, H, W, C] -> logits [B, K]`; only its outputs are used. With
      `randomized=True`, `(x, key) -> logits`.
    x: clean images `[B, H, W, C]` in [0, 1] (`H, W >= 2`; L2/L1: `>= 5`).
    labels: `[B]` integer labels.
    key: one key (per-example keys are `fold_in(key, b)`) or `[B]` per-example keys (see
      `regmix_jax.rng`); typed keys or raw `uint32` key data.
    epsilon: radius in `norm`.
    norm: "Linf", "L2" or "L1".
    num_queries: iterations (one query each) per restart, after the query of the start.
    p_init: initial fraction of pixels a square changes.
    num_restarts: searches from new starts, each on the examples not yet fooled.
    loss: what the search minimises: "margin" (`z_y - max_{j != y} z_j`) or "ce" (`-CE`).
    rescale_schedule: map iteration `i` to `i / num_queries * 10000` in `p_selection`.

  Returns:
    `x_adv [B, H, W, C]`, no gradient path: a fooling point inside the ball and [0, 1] for
    fooled examples, `x` for the others (including those misclassified at the start).
  """
  check_square_args(x.shape, norm, loss)
  model = as_model(logits_fn, randomized)
  x = jax.lax.stop_gradient(x)
  labels = labels.astype(jnp.int32)
  keys = example_keys_for(key, x.shape[0])
  settings = dict(norm=norm, epsilon=epsilon, num_queries=num_queries, p_init=p_init, loss=loss,
                  rescale_schedule=rescale_schedule)

  def restart(r, carry):
    x_adv, robust = carry
    state = square_init(model, x, labels, keys, r, norm=norm, epsilon=epsilon, loss=loss)
    x_best = square_steps(model, x, labels, keys, r, state, 0, num_queries, attack=robust,
                          **settings)[0]
    fooled = robust & (jnp.argmax(model(x_best, model_key(keys, r, CLEAN_CALL)), axis=-1)
                       != labels)
    return jnp.where(fooled[:, None, None, None], x_best, x_adv), robust & ~fooled

  robust = jnp.argmax(model(x, model_key(keys, CLEAN_CALL)), axis=-1) == labels
  x_adv, _ = jax.lax.fori_loop(0, num_restarts, restart, (x, robust))
  return jax.lax.stop_gradient(norms.project(x_adv, x, epsilon, norm))
