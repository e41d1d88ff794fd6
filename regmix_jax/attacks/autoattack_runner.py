"""`run_autoattack`: the official `AutoAttack.run_standard_evaluation` for any JAX `logits_fn`.

Reference: fra31/auto-attack (MIT), `autoattack/autoattack.py:81-260` (the evaluation),
`autoattack/checks.py` (the checks, `checks.py` here) and `autoattack/state.py` (the state file).
The order of work is the official one:

1. the checks on the first `batch_size` points (`:111-119`): randomised model (not for "rand"),
   probability output, dynamic defence, number of target classes;
2. clean accuracy, in batches (`:124-144`);
3. each attack of the version in turn, only on the points still robust (`:155-240`), every
   attack from the clean points. A point is non-robust once an attack's output for it is
   misclassified; that output is kept (the point-wise worst case). The robust accuracy and the
   time after each attack are recorded (and logged with the official wording);
4. the Square check (`:243`).

Where the time goes, and how it is kept down. Every attack is a sequence of passes (APGD: restarts;
APGD-T / FAB-T: target classes x restarts; Square: restarts, each cut into segments of queries),
and each pass runs only on the points not yet fooled, as the official `perturb` loops do. Between
passes the still-unfooled points are gathered on the host into batches of at most `batch_size`,
padded up to the next size of a fixed ladder (16, then powers of two and 1.5 times powers of two),
so an attack compiles once per ladder size it meets (the pass index is a traced argument) and
padding wastes less than a third of a batch (or of 16 points). On CPU the gradient attacks'
points are cut into batches of at most 64 (`grad_batch_size`, `split_sizes`: the fewest padded
points), which XLA:CPU runs faster per point. Square's query loop stops for a batch once every
point in it is fooled and its unfooled points are re-gathered at the schedule's breakpoints (10,
50, 200, 500, 1000, 2000, 3000, 4000 queries). With `devices`, each batch is split across those
devices. The `logits_fn` runs as given: on CPU, `regmix_jax.cpu.accelerate(logits_fn)` gives a
model the library did not build the commands' speed (its input gradients inside the attack loops
on XLA:CPU's fast kernels; docs/performance.md).

Randomness: example b of `x` uses the key `fold_in(key, b)` and attack i folds in i, so the robust
flags equal `attacks.autoattack(logits_fn, x, labels, key)`'s on the same points (for a
deterministic model in inference mode), whatever `batch_size` and however the points are
gathered, and a resumed run gives what an uninterrupted one gives.

Resume (`state_path`): after the clean pass and after each attack, the robust flags, predicted
labels, accuracies, times and warnings are written to `state_path` (JSON) and the adversarial
points found so far to `state_path + ".x_adv.npz"`, each written to a temporary file and renamed
(the points first), so a kill leaves the last complete state. A run given an existing state
skips the attacks it records as done and continues from its flags; a state made for other
attacks, norm, radius or points is refused. Unlike the official `state.py`, this state resumes
(the official saves the attack set as a string and compares it to a set, so it always refuses,
and leaves `y_adv` undefined on restore) and it keeps the adversarial points, so a resumed run
returns all of them. The official writes the state after every batch; here after every attack.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from regmix_jax import rng
from regmix_jax.attacks import checks, norms
from regmix_jax.attacks.apgd import CLEAN_CALL, as_model, model_key
from regmix_jax.attacks.autoattack import (CHECK_CALL, AttackSpec, attack_specs,
                                           resolve_version, target_counts, version_name)
from regmix_jax.attacks.square import check_square_args, square_init, square_steps

_LOG = logging.getLogger(__name__)
STATE_FORMAT = 1
# The gradient attacks' batch cap on CPU (`grad_batch_size`'s default there): XLA:CPU's
# forward-backward costs less per point in batches of up to 64 (the activations fit the caches;
# docs/performance.md). Forward passes (Square, the checks) gain from larger batches and keep
# `batch_size`.
CPU_GRAD_BATCH_SIZE = 64
# Square's segments: the unfooled points are re-gathered at these query counts.
SQUARE_CUTS = (10, 50, 200, 500, 1000, 2000, 3000, 4000)


@dataclasses.dataclass(frozen=True)
class AutoAttackResult:
  """What `run_autoattack` returns (numpy arrays, host memory).

  x_adv: `[N, H, W, C]`, for each non-robust point the adversarial example that fooled it (for a
    point misclassified clean, the clean image), else the clean image.
  robust: `[N]` bool, correct on the clean image and under every attack.
  y_adv: `[N]` int, the predicted class at `x_adv` (the official `return_labels`).
  accuracy: `{"clean": fraction, attack name: robust accuracy after it (cumulative)}`, the
    official `robust_accuracy_dict`; attacks skipped because no point was left are absent.
  seconds: `{attack name: wall seconds}` (the checks and clean pass under "clean").
  warnings: the checks' warnings, in order (texts of `checks.py`).
  norm, version ("standard", "plus", "rand" or "custom"), attacks (names in order), epsilon.
  """

  x_adv: np.ndarray
  robust: np.ndarray
  y_adv: np.ndarray
  accuracy: Mapping[str, float]
  seconds: Mapping[str, float]
  warnings: tuple[str, ...]
  norm: str
  version: str
  attacks: tuple[str, ...]
  epsilon: float

  @property
  def robust_accuracy(self) -> float:
    return float(np.mean(self.robust)) if len(self.robust) else 0.0

  @property
  def clean_accuracy(self) -> float:
    return self.accuracy["clean"]


def _ladder(batch_size: int, multiple: int = 1, fine: bool = False) -> list[int]:
  """The batch sizes points are padded to: 16, 24, 32, 48, 64, ... (powers of two and 1.5 times
  powers of two from 16; `fine`: every multiple of 8 up to 128, then also 1.25 and 1.75 times
  powers of two) below `batch_size`, and `batch_size`, each rounded up to a multiple of
  `multiple`."""
  cap = -(-batch_size // multiple) * multiple
  ladder, k = {cap}, 16
  if fine:
    ladder.update(range(16, 129, 8))
  while k < cap:
    ladder.update({k, 3 * k // 2} | ({5 * k // 4, 7 * k // 4} if fine else set()))
    k *= 2
  return sorted({-(-s // multiple) * multiple for s in ladder if 0 < s <= cap})


def bucket_size(n: int, batch_size: int, multiple: int = 1, fine: bool = False) -> int:
  """The batch size a set of `n <= batch_size` points is padded to: the smallest size of the
  ladder (`_ladder`) that holds them. Sets under 16 points share one size: their padding costs
  little, and every size is a compile."""
  return next(s for s in _ladder(batch_size, multiple, fine) if s >= n)


def split_sizes(n: int, batch_size: int, multiple: int = 1) -> list[int]:
  """Padded sizes, each on the ladder (`_ladder(batch_size)`), of the batches `n` points are cut
  into for the gradient attacks: the fewest padded points in all, then the fewest batches and
  sizes, the largest first (e.g. 70 points under a cap of 64: [48, 24], not [64, 16]). All but the last
  `batch_size + n % batch_size` points go in full batches."""
  if n <= 0:
    return []
  ladder = _ladder(batch_size, multiple)
  full = max(n // ladder[-1] - 1, 0)
  rest = n - full * ladder[-1]

  def rank(sizes):  # fewest padded points, batches, distinct sizes (compiles); larger first
    return sum(sizes), len(sizes), len(set(sizes)), tuple(-s for s in sizes)

  best = [()] + [None] * rest  # best[m]: the sizes (largest first) that cover m points
  for m in range(1, rest + 1):
    best[m] = min((tuple(sorted(best[max(m - s, 0)] + (s,), reverse=True)) for s in ladder),
                  key=rank)
  return [ladder[-1]] * full + list(best[rest])


def _key_data(key: jax.Array, n: int) -> np.ndarray:
  """`[n, ...]` uint32 key data of the per-example keys `fold_in(key, b)` (host memory)."""
  key = rng.as_typed_key(key)
  if key.ndim != 0:
    raise ValueError(f"run_autoattack takes one key (per-example keys are fold_in(key, b)); "
                     f"got keys of shape {key.shape}.")
  return np.asarray(jax.random.key_data(rng.example_keys(key, jnp.arange(n))))


class _Batcher:
  """Runs a jitted function over gathered points in padded batches (module docstring)."""

  def __init__(self, batch_size: int, devices: Sequence[jax.Device] | None):
    self.batch_size = batch_size
    self.devices = list(devices) if devices else []
    self.sharding = None
    if len(self.devices) > 1:
      mesh = jax.sharding.Mesh(np.array(self.devices), ("batch",))
      self.sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))

  def chunks(self, index: np.ndarray, split_at: int | None = None, fine: bool = False):
    """`(chunk of index, padded index)` pairs covering `index`: batches of `batch_size`, each
    padded to `bucket_size` (`fine`: on the finer ladder); or, with `split_at`, batches of at
    most `split_at` points cut by `split_sizes`."""
    multiple = len(self.devices) if self.sharding is not None else 1
    if split_at is None:
      counts = [min(self.batch_size, len(index) - start)
                for start in range(0, len(index), self.batch_size)]
      sizes = [bucket_size(c, self.batch_size, multiple, fine) for c in counts]
    else:  # each batch filled in turn; the least padding leaves none of them empty
      sizes = split_sizes(len(index), split_at, multiple)
      counts = np.diff(np.minimum(np.cumsum([0] + sizes), len(index))).tolist()
    start = 0
    for count, size in zip(counts, sizes):
      chunk = index[start:start + count]
      start += count
      yield chunk, np.concatenate([chunk, np.repeat(chunk[:1], size - len(chunk))])

  def put(self, *arrays):
    if self.sharding is None:
      return arrays
    return tuple(jax.device_put(a, self.sharding) for a in arrays)


def _fingerprint(labels: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(labels, np.int64).tobytes()).hexdigest()[:16]


def _write_atomic(path: str, write: Callable[[str], None]) -> None:
  """`write(tmp)` then rename onto `path` (a kill leaves the old file or the new one)."""
  tmp = f"{path}.tmp{os.getpid()}"
  write(tmp)
  os.replace(tmp, path)


def _save_state(path: str, state: dict, x_adv: np.ndarray, x: np.ndarray) -> None:
  """The points first (`path.x_adv.npz`: the indices and points that differ from `x`), then the
  JSON; each atomically."""
  changed = np.nonzero(np.any((x_adv != x).reshape(len(x), -1), axis=1))[0]

  def points(tmp):
    with open(tmp, "wb") as f:
      np.savez(f, index=changed, x_adv=x_adv[changed])

  def js(tmp):
    with open(tmp, "w") as f:
      json.dump(state, f)

  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  _write_atomic(path + ".x_adv.npz", points)
  _write_atomic(path, js)


def _load_state(path: str, expected: Mapping[str, Any], x: np.ndarray
                ) -> tuple[dict, np.ndarray] | None:
  """`(state, x_adv)` from `path`, or None when there is none; refuses a state made for another
  evaluation."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    state = json.load(f)
  if set(state.get("attacks_to_run", [])) != set(expected["attacks_to_run"]):
    raise ValueError("The state was created with a different set of attacks to run. You are "
                     f"probably using the wrong state file. ({path}: "
                     f"{state.get('attacks_to_run')}, this run: {expected['attacks_to_run']}; "
                     "delete it or pass another state_path.)")  # autoattack.py:89-91
  for field in ("norm", "epsilon", "n_examples", "labels", "format"):
    if state.get(field) != expected[field]:
      raise ValueError(f"The state in {path} was made for another evaluation ({field}: "
                       f"{state.get(field)!r} there, {expected[field]!r} here); delete it or "
                       "pass another state_path.")
  x_adv = x.copy()
  points = path + ".x_adv.npz"
  if os.path.exists(points):
    with np.load(points) as saved:
      x_adv[saved["index"]] = saved["x_adv"]
  robust = np.asarray(state["robust_flags"], bool)
  x_adv[robust] = x[robust]  # points written after the last JSON (a kill between the two)
  return state, x_adv


def run_autoattack(logits_fn: Callable, x, labels, key: jax.Array, *, epsilon: float,
                   norm: str = "Linf", version: str | Sequence[str] = "standard",
                   batch_size: int = 500, state_path: str | None = None, progress: bool = True,
                   randomized: bool = False,
                   overrides: Mapping[str, Mapping[str, Any]] | None = None,
                   devices: Sequence[jax.Device] | None = None,
                   grad_batch_size: int | None = None) -> AutoAttackResult:
  """AutoAttack's evaluation of `logits_fn` on `(x, labels)`, as the official
  `run_standard_evaluation` (see the module docstring).

  Args:
    logits_fn: `x [B, H, W, C] -> logits [B, K]`, the model in inference mode (e.g.
      `lambda x: model.apply(variables, x, train=False)`; it is jitted here). A randomised
      defence: `(x, key) -> logits` with `randomized=True`, drawing its randomness from `key`
      (one key per call), and `version="rand"`.
    x: `[N, H, W, C]` float images in [0, 1] (numpy or JAX).
    labels: `[N]` integer labels.
    key: one JAX key; example b uses `fold_in(key, b)`.
    epsilon: the radius in `norm` (e.g. 8/255 for Linf, 0.5 for L2, 12 for L1 on CIFAR-10).
    norm: "Linf", "L2" or "L1".
    version: "standard", "plus", "rand", or a list of names from `ATTACK_NAMES` (custom).
    batch_size: the most points per compiled batch (the official `bs`).
    state_path: a JSON file to save the evaluation state to after each attack and to resume
      from (module docstring).
    progress: a tqdm bar per attack and the official log lines.
    randomized: `logits_fn` takes `(x, key)`.
    overrides: `{attack: {setting: value}}` replacing official settings (`attack_specs`), for
      tests and quick looks; results are then not AutoAttack's.
    devices: devices to split each batch across (default: none, JAX's default device runs it
      unsplit; on a 2-core CPU, 2 CPU devices were not faster than one: docs/performance.md).
    grad_batch_size: the most points per batch of the gradient attacks (APGD, FAB), cut as
      `split_sizes` does (fewest padded points). Default: `CPU_GRAD_BATCH_SIZE` (64) on CPU,
      where smaller batches of input gradients run faster per point; elsewhere `batch_size`
      batches, padded as the forward passes are. Results do not depend on it.

  Returns:
    An `AutoAttackResult`.
  """
  norms.check_norm(norm)
  names = resolve_version(version)
  x = np.asarray(x, np.float32)
  labels = np.asarray(labels).astype(np.int32)
  if x.ndim != 4 or labels.shape != (len(x),):
    raise ValueError(f"run_autoattack needs x [N, H, W, C] and labels [N]; got x {x.shape} and "
                     f"labels {labels.shape}.")
  if len(x) and (x.min() < 0.0 or x.max() > 1.0):
    raise ValueError(f"run_autoattack needs images in [0, 1]; got values in [{x.min()}, "
                     f"{x.max()}]. Divide uint8 images by 255 (and put any normalisation "
                     "inside logits_fn).")
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}.")
  if grad_batch_size is not None and grad_batch_size <= 0:
    raise ValueError(f"grad_batch_size must be positive or None, got {grad_batch_size}.")
  n = len(x)
  batch_size = min(batch_size, max(n, 1))
  model = as_model(logits_fn, randomized)
  key_data = _key_data(key, n)
  batcher = _Batcher(batch_size, devices)
  platform = (list(devices)[0] if devices else jax.devices()[0]).platform
  if grad_batch_size is None and platform == "cpu":
    grad_batch_size = CPU_GRAD_BATCH_SIZE
  grad_split = None if grad_batch_size is None else min(grad_batch_size, batch_size)
  say = (lambda s: tqdm.tqdm.write(s)) if progress else (lambda s: None)
  warnings_list: list[str] = []

  def warn(msg):
    if msg and msg not in warnings_list:
      warnings_list.append(msg)
      _LOG.warning("Warning: %s", msg)
      say(f"Warning: {msg}")

  forward = jax.jit(lambda z, k, c: model(z, model_key(k, c)))

  def predict(index, call, images=None):
    """Arg-max predictions of the points `index` (or of `images`, aligned with `index`)."""
    out = np.zeros(len(index), np.int32)
    source = x if images is None else images
    pos = np.arange(len(index))
    for chunk, padded in batcher.chunks(pos):
      z, k = batcher.put(source[padded], key_data[index[padded]])
      out[chunk] = np.asarray(jnp.argmax(forward(z, k, call), axis=-1))[:len(chunk)]
    return out

  t0 = time.time()
  first = np.arange(min(batch_size, n))
  k_first = jnp.asarray(key_data[first])
  probe = np.asarray(forward(x[first], k_first, CLEAN_CALL))
  if probe.ndim != 2 or probe.shape[0] != len(first):
    raise ValueError(f"logits_fn must map x [B, H, W, C] to logits [B, K]; got {probe.shape} "
                     f"for {len(first)} points.")
  num_classes = probe.shape[1]
  specs = attack_specs(norm, version, num_classes, epsilon=epsilon, overrides=overrides)
  if any(s.kind == "square" for s in specs):
    check_square_args(x.shape, norm, "margin")

  expected = dict(format=STATE_FORMAT, attacks_to_run=sorted(names), norm=norm,
                  epsilon=float(epsilon), n_examples=n, labels=_fingerprint(labels))
  restored = _load_state(state_path, expected, x) if state_path else None

  # The checks (autoattack.py:111-119), on the first batch_size points, correct or not.
  if version_name(version) != "rand":
    outputs = [probe] + [np.asarray(forward(x[first], k_first, CLEAN_CALL + 16 + j))
                         for j in range(4)]
    warn(checks.check_randomized(outputs, labels[first]))
  warn(checks.check_range_output(probe))
  if randomized:
    warn(checks.check_dynamic(lambda: logits_fn(jnp.asarray(x[first]), jax.random.key(0))))
  else:
    warn(checks.check_dynamic(lambda: logits_fn(jnp.asarray(x[first]))))
  warn(checks.check_n_classes(num_classes, names, *target_counts_requested(
      norm, version, overrides)))

  if restored is not None:
    state, x_adv = restored
    robust = np.asarray(state["robust_flags"], bool)
    y_adv = np.asarray(state["y_adv"], np.int32)
    accuracy = dict(state["accuracy"])
    seconds = dict(state["seconds"])
    for w in state["warnings"]:
      warn(w)
    run_attacks = list(state["run_attacks"])
    say(f"Restored state from {state_path}")
    say(f"initial clean accuracy: {accuracy['clean']:.2%}")
    say(f"robust accuracy at the time of restoring the state: {np.mean(robust):.2%}")
  else:
    y_adv = predict(np.arange(n), CLEAN_CALL)
    robust = y_adv == labels
    x_adv = x.copy()
    accuracy = {"clean": float(np.mean(robust)) if n else 0.0}
    seconds = {"clean": time.time() - t0}
    run_attacks = []
    say(f"initial accuracy: {accuracy['clean']:.2%}")

  def save():
    if state_path:
      _save_state(state_path, dict(
          expected, run_attacks=run_attacks, robust_flags=robust.tolist(),
          y_adv=y_adv.tolist(), clean_accuracy=accuracy["clean"], accuracy=accuracy,
          seconds=seconds, warnings=warnings_list, version=version_name(version),
          attacks=list(names)), x_adv, x)

  if restored is None:
    save()
  todo = [s for s in specs if s.name not in run_attacks]
  say(f"using {version_name(version)} version including {', '.join(s.name for s in todo)}.")
  if run_attacks:
    say(f"{', '.join(run_attacks)} was/were already run.")

  start = time.time()
  for spec in specs:
    if spec.name in run_attacks:
      continue
    index = np.nonzero(robust)[0]
    if len(index) == 0:
      break  # autoattack.py:157-159
    i = names.index(spec.name)
    t_attack = time.time()
    keys_i = np.asarray(jax.random.key_data(rng.fold(jnp.asarray(key_data), i)))
    bar = tqdm.tqdm(total=spec.num_passes, desc=spec.name, disable=not progress, leave=False)
    if spec.kind == "square":
      candidate, fooled = _square_host(model, spec, x, labels, keys_i, index, batcher, bar)
      zero = np.zeros(len(index), bool)
    else:
      candidate, fooled, zero = _passes_host(model, spec, x, labels, keys_i, index, batcher,
                                             bar, grad_split)
    bar.close()
    if zero.any():
      warn(checks.zero_gradients_message(int(zero.sum())))
    # autoattack.py:218-228: a point is fooled iff its candidate is misclassified.
    hit = index[fooled]
    if len(hit):
      guarded = np.asarray(_project(candidate[fooled], x[hit], epsilon, norm))
      pred = predict(hit, CHECK_CALL, images=guarded)
      wrong = pred != labels[hit]
      x_adv[hit[wrong]] = guarded[wrong]
      y_adv[hit[wrong]] = pred[wrong]
      robust[hit[wrong]] = False
    accuracy[spec.name] = float(np.mean(robust))
    seconds[spec.name] = time.time() - t_attack
    run_attacks.append(spec.name)
    save()
    say(f"robust accuracy after {spec.name.upper()}: {accuracy[spec.name]:.2%} "
        f"(total time {time.time() - start:.1f} s)")

  warn(checks.check_square_sr(accuracy))
  save()
  if progress and n:
    res = np.asarray(norms.lp_norm(jnp.asarray(x_adv - x), norm))
    say(f"max {norm} perturbation: {res.max():.5f}, nan in tensor: {int(np.isnan(x_adv).sum())}"
        f", max: {x_adv.max():.5f}, min: {x_adv.min():.5f}")
    say(f"robust accuracy: {np.mean(robust):.2%}")
  return AutoAttackResult(x_adv=x_adv, robust=robust, y_adv=y_adv, accuracy=accuracy,
                          seconds=seconds, warnings=tuple(warnings_list), norm=norm,
                          version=version_name(version), attacks=names, epsilon=float(epsilon))


def target_counts_requested(norm, version, overrides) -> tuple[int, int]:
  """The target counts the version asks for before the K - 1 cap (for the class-count check)."""
  return target_counts(attack_specs(norm, version, 1 << 30, epsilon=1.0, overrides=overrides))


_project = jax.jit(norms.project, static_argnames=("norm",))


def _passes_host(model, spec: AttackSpec, x, labels, keys, index, batcher, bar, split_at):
  """APGD / FAB passes over the points `index`, each on the points not yet fooled, gathered into
  padded batches (of at most `split_at` points, cut by `split_sizes`, when given). Returns `(candidate [n, ...], fooled [n], zero_grad [n])`, aligned with
  `index`."""
  pass_fn = jax.jit(spec.pass_fn(model))
  candidate = x[index].copy()
  fooled = np.zeros(len(index), bool)
  zero = np.zeros(len(index), bool)
  for p in range(spec.num_passes):
    todo = np.nonzero(~fooled)[0]
    if len(todo) == 0:
      bar.update(spec.num_passes - p)
      break
    pending = []
    for chunk, padded in batcher.chunks(todo, split_at):
      rows = index[padded]
      xs, ys, ks = batcher.put(x[rows], labels[rows], keys[rows])
      pending.append((chunk, pass_fn(xs, ys, ks, np.int32(p))))  # dispatched asynchronously
    for chunk, (adv, hit, zg) in pending:
      hit = np.asarray(hit)[:len(chunk)]
      adv = np.asarray(adv)[:len(chunk)]
      zero[chunk] |= np.asarray(zg)[:len(chunk)]
      candidate[chunk[hit]] = adv[hit]
      fooled[chunk[hit]] = True
    bar.update(1)
    bar.set_postfix(left=int((~fooled).sum()))
  return candidate, fooled, zero


def _square_host(model, spec: AttackSpec, x, labels, keys, index, batcher, bar):
  """Square's restarts over the points `index`, its query loop cut into segments between which
  the unfooled points are re-gathered. Returns `(candidate, fooled)` aligned with `index`."""
  s = dict(spec.settings)
  queries = s["num_queries"]
  init = jax.jit(lambda xs, ys, ks, r: square_init(model, xs, ys, ks, r, norm=s["norm"],
                                                   epsilon=s["epsilon"], loss=s["loss"]))
  steps = jax.jit(lambda xs, ys, ks, r, st, a, b: square_steps(model, xs, ys, ks, r, st, a, b,
                                                               **s))
  check = jax.jit(lambda z, ys, ks, r: jnp.argmax(model(z, model_key(ks, r, CLEAN_CALL)),
                                                  axis=-1) != ys)
  cuts = [c for c in SQUARE_CUTS if c < queries] + [queries]
  candidate = x[index].copy()
  fooled = np.zeros(len(index), bool)
  bar.reset(total=spec.num_passes * len(cuts))
  for r in range(spec.num_passes):
    todo = np.nonzero(~fooled)[0]
    if len(todo) == 0:
      break
    x_best = x[index[todo]].copy()
    margin = np.zeros(len(todo), np.float32)
    loss = np.zeros(len(todo), np.float32)
    for chunk, padded in batcher.chunks(np.arange(len(todo))):
      rows = index[todo[padded]]
      xs, ys, ks = batcher.put(x[rows], labels[rows], keys[rows])
      xb, m, l = init(xs, ys, ks, np.int32(r))
      x_best[chunk] = np.asarray(xb)[:len(chunk)]
      margin[chunk] = np.asarray(m)[:len(chunk)]
      loss[chunk] = np.asarray(l)[:len(chunk)]
    begin = 0
    for cut in cuts:
      active = np.nonzero(margin > 0)[0]
      if len(active) and begin < cut:
        pending = []
        # Square runs 5000 forward passes on a set that rarely shrinks: the finer ladder pads
        # less (70 points: 72, not 96) for a few more compiles.
        for chunk, padded in batcher.chunks(active, fine=True):
          rows = index[todo[padded]]
          xs, ys, ks, xb = batcher.put(x[rows], labels[rows], keys[rows], x_best[padded])
          m, l = batcher.put(margin[padded], loss[padded])
          pending.append((chunk, steps(xs, ys, ks, np.int32(r), (xb, m, l), np.int32(begin),
                                       np.int32(cut))))
        for chunk, (xb, m, l) in pending:
          x_best[chunk] = np.asarray(xb)[:len(chunk)]
          margin[chunk] = np.asarray(m)[:len(chunk)]
          loss[chunk] = np.asarray(l)[:len(chunk)]
      begin = cut
      bar.update(1)
      bar.set_postfix(left=int((margin > 0).sum()))
    hit = np.zeros(len(todo), bool)
    for chunk, padded in batcher.chunks(np.arange(len(todo))):
      rows = index[todo[padded]]
      z, ys, ks = batcher.put(x_best[padded], labels[rows], keys[rows])
      hit[chunk] = np.asarray(check(z, ys, ks, np.int32(r)))[:len(chunk)]
    candidate[todo[hit]] = x_best[hit]
    fooled[todo[hit]] = True
  return candidate, fooled
