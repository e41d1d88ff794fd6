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
padded up to the next size of a fixed ladder (1, 2, 4, 8, 16, then powers of two and 1.5 times
powers of two), so an attack compiles once per ladder size it meets (the pass index is a traced
argument) and padding wastes less than a third of a batch (under half below 16 points). A
gradient attack's set that fits one batch and meets no size already compiled within its ladder
size runs at its own size (the compile happens either way; e.g. 28 points, not 32). On CPU the
gradient attacks' points are cut into batches of at most 64 (`grad_batch_size`, `split_sizes`:
the fewest padded points), which XLA:CPU runs faster per point. Square's query loop stops for a
batch once every point in it is fooled and its unfooled points are re-gathered at the schedule's
breakpoints (10, 50, 200, 500, 1000, 2000, 3000, 4000 queries), padded on a finer ladder (no
padding up to 16 points, at most 7 up to 128). With `devices`, each batch is split across those
devices. The `logits_fn` runs as given: on CPU, `regmix_jax.cpu.accelerate(logits_fn)` gives a
model the library did not build the commands' speed (its input gradients inside the attack loops
on XLA:CPU's fast kernels; docs/performance.md). With `params`, the weights are an argument of
every compiled function rather than constants compiled into it: XLA compiles a ResNet-18 pass
faster without a constant to fold per weight, and one compile, or JAX's persistent compilation
cache, serves every checkpoint of the architecture (the evaluate command passes them so).

Randomness: example b of `x` uses the key `fold_in(key, b)` and attack i folds in i, so the robust
flags equal `attacks.autoattack(logits_fn, x, labels, key)`'s on the same points (for a
deterministic model in inference mode), whatever `batch_size` and however the points are
gathered, and a resumed run gives what an uninterrupted one gives.

Resume (`state_path`): after the clean pass and after each attack, the robust flags, predicted
labels, accuracies, times and warnings are written to `state_path` (JSON) and the adversarial
points found so far to `state_path + ".x_adv.npz"`, each written to a temporary file and renamed
(the points first), so a kill leaves the last complete state. A run given an existing state
skips the attacks it records as done and continues from its flags. The state records what its
result depends on (`_evaluation_id`): hashes of the images, labels and key, the model's logits
on the first points (and the caller's `model_id`), the radius, norm, version, attacks,
overrides and `randomized`; a state whose record differs in any of them is refused, naming the
fields (StateMismatchError). Unlike the official `state.py`, this state resumes
(the official saves the attack set as a string and compares it to a set, so it always refuses,
and leaves `y_adv` undefined on restore) and it keeps the adversarial points, so a resumed run
returns all of them. The official writes the state after every batch; here after every attack,
and within an attack (`partial_every_s`, default every 60 s) after a pass of the gradient
attacks (a restart or a target class) or a segment of Square's queries: their arrays go to
`state_path + ".partial.npz"`, tagged, and the JSON names the tag, so a killed run resumes an
attack at the pass or segment it reached (the points' results do not depend on how they are
batched, so it gives the uninterrupted result); a partial file whose tag the JSON does not name
(a kill between the two writes) is ignored and the attack starts over.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import time
import zipfile
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
from regmix_jax.attacks.autoattack_progress import Progress, pass_cost
from regmix_jax.attacks.square import check_square_args, square_init, square_steps

_LOG = logging.getLogger(__name__)
# 2: the state records hashes of the images, key, model probe and settings (`_evaluation_id`).
STATE_FORMAT = 2
# The model's fingerprint in a state: its logits on the first PROBE_POINTS points, compared to
# PROBE_RTOL of their scale (a rerun of the same model on the same machine matches exactly;
# another model, or the same weights computing in another precision, differs far more).
PROBE_POINTS = 8
PROBE_RTOL = 1e-4


class StateMismatchError(ValueError):
  """An AutoAttack state file was made for another evaluation."""
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
  """The batch sizes points are padded to: 1, 2, 4, 8, then 16, 24, 32, 48, 64, ... (powers of
  two and 1.5 times powers of two from 16; `fine`: every size up to 16, every multiple of 8 up
  to 128, then also 1.25 and 1.75 times powers of two) below `batch_size`, and `batch_size`,
  each rounded up to a multiple of `multiple`."""
  cap = -(-batch_size // multiple) * multiple
  ladder, k = {cap, 1, 2, 4, 8}, 16
  if fine:
    ladder.update(range(1, 16), range(16, 129, 8))
  while k < cap:
    ladder.update({k, 3 * k // 2} | ({5 * k // 4, 7 * k // 4} if fine else set()))
    k *= 2
  return sorted({-(-s // multiple) * multiple for s in ladder if 0 < s <= cap})


def bucket_size(n: int, batch_size: int, multiple: int = 1, fine: bool = False) -> int:
  """The batch size a set of `n <= batch_size` points is padded to: the smallest size of the
  ladder (`_ladder`) that holds them. Every size is a compile, and every padded point costs as
  much as a real one: sets under 16 points take powers of two, so a large model's last few
  points are not padded to 16 (`experiments/results/autoattack_speed.md`, "ResNet-18 and
  WRN-28-10")."""
  return next(s for s in _ladder(batch_size, multiple, fine) if s >= n)


def split_sizes(n: int, batch_size: int, multiple: int = 1) -> list[int]:
  """Padded sizes, each on the ladder (`_ladder(batch_size)`), of the batches `n` points are cut
  into for the gradient attacks: the fewest padded points in all, then the fewest batches and
  sizes, the largest first (e.g. 70 points under a cap of 64: [48, 24], not [64, 16]). All but the last
  `batch_size + n % batch_size` points go in full batches. Under 16 points: one batch of
  `bucket_size(n)`; from 16, sizes from 16 up (a few padded points cost less than a compile)."""
  if n <= 0:
    return []
  ladder = _ladder(batch_size, multiple)
  if n < 16 and n <= ladder[-1]:
    return [bucket_size(n, batch_size, multiple)]
  ladder = [s for s in ladder if s >= min(16, ladder[-1])]
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

  def chunks(self, index: np.ndarray, split_at: int | None = None, fine: bool = False,
             compiled: set[int] | None = None):
    """`(chunk of index, padded index)` pairs covering `index`: batches of `batch_size`, each
    padded to `bucket_size` (`fine`: on the finer ladder); or, with `split_at`, batches of at
    most `split_at` points cut by `split_sizes`. `compiled`: the sizes one jitted function has
    run at (updated here); a set that fits one batch then takes the smallest of them that holds
    it and is no larger than its ladder size, else its own size (rounded up to the devices): a
    pass's points are not padded for a compile the ladder would make anyway, and as sets only
    shrink from pass to pass, no size is compiled that the ladder would not."""
    multiple = len(self.devices) if self.sharding is not None else 1
    if split_at is None:
      counts = [min(self.batch_size, len(index) - start)
                for start in range(0, len(index), self.batch_size)]
      sizes = [bucket_size(c, self.batch_size, multiple, fine) for c in counts]
    else:  # each batch filled in turn; the least padding leaves none of them empty
      sizes = split_sizes(len(index), split_at, multiple)
      counts = np.diff(np.minimum(np.cumsum([0] + sizes), len(index))).tolist()
    if compiled is not None:
      if len(sizes) == 1:
        fits = [c for c in compiled if counts[0] <= c <= sizes[0]]
        sizes = [min(fits) if fits else -(-counts[0] // multiple) * multiple]
      compiled.update(sizes)
    start = 0
    for count, size in zip(counts, sizes):
      chunk = index[start:start + count]
      start += count
      yield chunk, np.concatenate([chunk, np.repeat(chunk[:1], size - len(chunk))])

  def put(self, *arrays):
    if self.sharding is None:
      return arrays
    return tuple(jax.device_put(a, self.sharding) for a in arrays)

  def put_params(self, params):
    """`params` where the batches run: replicated over several devices, on the one given."""
    if self.sharding is not None:
      return jax.device_put(params, self.sharding.update(spec=jax.sharding.PartitionSpec()))
    return jax.device_put(params, self.devices[0]) if self.devices else params


def _digest(*arrays: np.ndarray) -> str:
  """A hash of the arrays' shapes, dtypes and bytes."""
  h = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(a)
    h.update(f"{a.shape}{a.dtype}".encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]


def _evaluation_id(*, x, labels, key_data, probe, epsilon, norm, version, names, overrides,
                   randomized, model_id) -> dict[str, Any]:
  """What a state's result depends on, as JSON values (compared field by field on resume;
  `probe` within PROBE_RTOL)."""
  return dict(format=STATE_FORMAT, images=_digest(x), labels=_digest(labels.astype(np.int64)),
              n_examples=len(x), key=_digest(key_data), model_id=model_id,
              probe=np.asarray(probe, np.float64).round(7).tolist(), epsilon=float(epsilon),
              norm=norm, version=version_name(version), attacks_to_run=list(names),
              overrides=json.loads(json.dumps(overrides or {}, sort_keys=True, default=repr)),
              randomized=bool(randomized))


def _differing_fields(saved: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
  """The fields of `expected` whose value in `saved` differs (the probe: beyond PROBE_RTOL)."""
  out = []
  for field, want in expected.items():
    got = saved.get(field)
    if field == "probe" and got is not None:
      got, want_a = np.asarray(got, np.float64), np.asarray(want, np.float64)
      scale = float(np.max(np.abs(want_a))) if want_a.size else 0.0
      if got.shape == want_a.shape and np.allclose(got, want_a, rtol=0,
                                                   atol=PROBE_RTOL * max(scale, 1e-6)):
        continue
      out.append(field)
    elif got != want:
      out.append(field)
  return out


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
  try:
    with open(path) as f:
      state = json.load(f)
    if not isinstance(state, dict):
      raise ValueError("not a JSON object")
  except ValueError as e:
    raise StateMismatchError(
        f"The AutoAttack state {path} cannot be read ({e}): it is not a state this library "
        "wrote, or it was damaged. Delete it (and its .x_adv.npz) to start over, or pass another "
        "state_path.") from None
  differ = _differing_fields(state, expected)
  if differ:
    shown = {f: (state.get(f), expected[f]) for f in differ if f != "probe"}
    details = "; ".join(f"{f}: {a!r} there, {b!r} here" for f, (a, b) in shown.items())
    raise StateMismatchError(
        f"The AutoAttack state {path} was made for another evaluation: its "
        f"{', '.join(differ)} differ{'s' if len(differ) == 1 else ''} from this call's"
        f"{' (' + details + ')' if details else ''}"
        f"{' (probe: the model gives other logits on the first points)' if 'probe' in differ else ''}"
        ". Resuming would report that evaluation's result as this one's. Pass another "
        "state_path, or delete the file (and its .x_adv.npz) to start over.")
  x_adv = x.copy()
  points = path + ".x_adv.npz"
  if os.path.exists(points):
    with np.load(points) as saved:
      x_adv[saved["index"]] = saved["x_adv"]
  robust = np.asarray(state["robust_flags"], bool)
  x_adv[robust] = x[robust]  # points written after the last JSON (a kill between the two)
  return state, x_adv


def _save_partial(path: str, tag: str, arrays: Mapping[str, np.ndarray]) -> None:
  """An attack's arrays so far, tagged, to `path` (atomically)."""
  def write(tmp):
    with open(tmp, "wb") as f:
      np.savez(f, tag=np.array(tag), **arrays)

  _write_atomic(path, write)


def _load_partial(path: str, meta: Mapping[str, Any] | None) -> dict | None:
  """The arrays of `meta`'s partial attack (its `tag`) from `path`, or None when the file is
  missing, unreadable or of another tag."""
  if not meta or not os.path.exists(path):
    return None
  try:
    with np.load(path) as saved:
      if str(saved["tag"]) != meta["tag"]:
        return None
      return {k: saved[k] for k in saved.files if k != "tag"}
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
    return None


def run_autoattack(logits_fn: Callable, x, labels, key: jax.Array, *, epsilon: float,
                   norm: str = "Linf", version: str | Sequence[str] = "standard",
                   batch_size: int = 500, state_path: str | None = None, progress: bool = True,
                   randomized: bool = False,
                   overrides: Mapping[str, Mapping[str, Any]] | None = None,
                   devices: Sequence[jax.Device] | None = None,
                   grad_batch_size: int | None = None, model_id: str = "",
                   partial_every_s: float = 60.0, params: Any = None) -> AutoAttackResult:
  """AutoAttack's evaluation of `logits_fn` on `(x, labels)`, as the official
  `run_standard_evaluation` (see the module docstring).

  Args:
    logits_fn: `x [B, H, W, C] -> logits [B, K]`, the model in inference mode (e.g.
      `lambda x: model.apply(variables, x, train=False)`; it is jitted here). A randomised
      defence: `(x, key) -> logits` with `randomized=True`, drawing its randomness from `key`
      (one key per call), and `version="rand"`. With `params`: `(params, x) -> logits` (or
      `(params, x, key)`).
    x: `[N, H, W, C]` float images in [0, 1] (numpy or JAX).
    labels: `[N]` integer labels.
    key: one JAX key; example b uses `fold_in(key, b)`.
    epsilon: the radius in `norm` (e.g. 8/255 for Linf, 0.5 for L2, 12 for L1 on CIFAR-10).
    norm: "Linf", "L2" or "L1".
    version: "standard", "plus", "rand", or a list of names from `ATTACK_NAMES` (custom).
    batch_size: the most points per compiled batch (the official `bs`).
    state_path: a JSON file to save the evaluation state to after each attack and to resume
      from (module docstring); a state made for another evaluation is refused
      (StateMismatchError).
    partial_every_s: with `state_path`, the least seconds between two saves within an attack
      (0: after every pass or segment).
    progress: the official log lines, and what `autoattack_progress` shows: a bar per attack
      that moves with results, compilations as they happen, the points each attack attacks and
      an estimate of the time left.
    randomized: `logits_fn` takes `(x, key)`.
    overrides: `{attack: {setting: value}}` replacing official settings (`attack_specs`), for
      tests and quick looks; results are then not AutoAttack's.
    devices: devices to split each batch across (default: none, JAX's default device runs it
      unsplit; on a 2-core CPU, 2 CPU devices were not faster than one: docs/performance.md).
    grad_batch_size: the most points per batch of the gradient attacks (APGD, FAB), cut as
      `split_sizes` does (fewest padded points). Default: `CPU_GRAD_BATCH_SIZE` (64) on CPU,
      where smaller batches of input gradients run faster per point; elsewhere `batch_size`
      batches, padded as the forward passes are. Results do not depend on it.
    model_id: names the model in the state (e.g. a hash of its weights and dtype), beside the
      logits on the first points the state always records.
    params: a pytree of arrays (e.g. Flax `variables`) passed to `logits_fn` as its first
      argument, as an argument of the compiled functions, not compiled in as constants: shorter
      compiles, and JAX's persistent compilation cache (`JAX_COMPILATION_CACHE_DIR`) then serves
      any weights of the same architecture (module docstring). The results are the same.

  Returns:
    An `AutoAttackResult`.
  """
  norms.check_norm(norm)
  names = resolve_version(version)
  check_epsilon(epsilon, norm)
  x = np.asarray(x, np.float32)
  labels = _integer_labels(labels)
  if x.ndim != 4 or labels.shape != (len(x),):
    raise ValueError(f"run_autoattack needs x [N, H, W, C] and labels [N]; got x {x.shape} and "
                     f"labels {labels.shape}.")
  if not np.isfinite(x).all():
    raise ValueError(f"run_autoattack needs finite images; {int((~np.isfinite(x)).sum())} "
                     "values are NaN or infinite.")
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
  weights_given = params is not None
  if weights_given:
    apply = logits_fn
  else:  # the weights (if any) are inside logits_fn
    apply, params = (lambda _, *args: logits_fn(*args)), ()
  key_data = _key_data(key, n)
  batcher = _Batcher(batch_size, devices)
  placed = batcher.put_params(params)

  def compile_with_model(fn: Callable) -> Callable:
    """`fn(model, *args)` as a jitted `(*args) -> ...`, the weights its argument."""
    jitted = jax.jit(lambda p, *args: fn(as_model(functools.partial(apply, p), randomized),
                                         *args))
    return functools.partial(jitted, placed)
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

  forward = compile_with_model(lambda model, z, k, c: model(z, model_key(k, c)))

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
  say(f"AutoAttack {version_name(version)}, {norm} eps {float(epsilon):.5g}, {n} points: "
      f"compiling the model for batches of {len(first)} ...")
  k_first = jnp.asarray(key_data[first])
  try:
    probe = np.asarray(forward(x[first], k_first, CLEAN_CALL))
  except TypeError as e:
    if not weights_given:
      raise
    raise TypeError(f"run_autoattack(params=...) calls logits_fn(params, x"
                    f"{', key' if randomized else ''}), and that call failed: {e}. Pass a "
                    "logits_fn that takes the weights first (e.g. a Flax module's `apply`), or "
                    "leave params out for a logits_fn(x) that holds its weights.") from e
  if probe.ndim != 2 or probe.shape[0] != len(first):
    raise ValueError(f"logits_fn must map x [B, H, W, C] to logits [B, K]; got {probe.shape} "
                     f"for {len(first)} points.")
  num_classes = probe.shape[1]
  if n and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"run_autoattack needs labels in [0, {num_classes}) (logits_fn gives "
                     f"{num_classes} classes); got labels in [{labels.min()}, {labels.max()}].")
  specs = attack_specs(norm, version, num_classes, epsilon=epsilon, overrides=overrides)
  if any(s.kind == "square" for s in specs):
    check_square_args(x.shape, norm, "margin")

  # Hashing every image costs a pass over them: only for a state to check or write.
  expected = _evaluation_id(
      x=x, labels=labels, key_data=key_data, probe=probe[:PROBE_POINTS], epsilon=epsilon,
      norm=norm, version=version, names=names, overrides=overrides, randomized=randomized,
      model_id=model_id) if state_path else None
  restored = _load_state(state_path, expected, x) if state_path else None

  # The checks (autoattack.py:111-119), on the first batch_size points, correct or not.
  if version_name(version) != "rand":
    outputs = [probe] + [np.asarray(forward(x[first], k_first, CLEAN_CALL + 16 + j))
                         for j in range(4)]
    warn(checks.check_randomized(outputs, labels[first]))
  warn(checks.check_range_output(probe))
  # Traced, not run: the check looks for differentiation calls in logits_fn's Python, which a
  # trace executes; an eager forward would compile each operation on its own to compute logits
  # nobody reads (the cost: experiments/results/autoattack_speed.md).
  model_args = (x[first], jax.random.key(0)) if randomized else (x[first],)
  warn(checks.check_dynamic(lambda: jax.eval_shape(apply, params, *model_args)))
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

  partial_path = state_path + ".partial.npz" if state_path else None
  partial_meta = restored[0].get("partial") if restored is not None else None

  def save(partial=None):
    if state_path:
      _save_state(state_path, dict(
          expected, run_attacks=run_attacks, robust_flags=robust.tolist(),
          y_adv=y_adv.tolist(), clean_accuracy=accuracy["clean"], accuracy=accuracy,
          seconds=seconds, warnings=warnings_list, version=version_name(version),
          attacks=list(names), partial=partial), x_adv, x)

  def checkpointer(spec, n_points):
    """Saves `spec`'s progress on its `n_points` points at most every `partial_every_s`."""
    if not state_path:
      return None
    last = [time.time()]

    def checkpoint(step: int, arrays: Mapping[str, np.ndarray]) -> None:
      if time.time() - last[0] < partial_every_s:
        return
      tag = f"{spec.name}:{step}:{n_points}:{time.time():.6f}"
      _save_partial(partial_path, tag, arrays)
      save(dict(attack=spec.name, step=step, n_points=n_points, tag=tag))
      last[0] = time.time()

    return checkpoint

  def resumed(spec, n_points):
    """The saved progress of `spec` on these `n_points` points, or None."""
    meta = partial_meta
    if not meta or meta.get("attack") != spec.name or meta.get("n_points") != n_points:
      return None
    arrays = _load_partial(partial_path, meta)
    if arrays is None:
      return None
    say(f"{spec.name}: resuming at its saved {'segment' if spec.kind == 'square' else 'pass'} "
        f"{meta['step']}")
    return dict(arrays, step=int(meta["step"]))

  if restored is None:
    save()
  todo = [s for s in specs if s.name not in run_attacks]
  if todo:
    say(f"using {version_name(version)} version including {', '.join(s.name for s in todo)}.")
  if run_attacks:
    say(f"{', '.join(run_attacks)} was/were already run"
        f"{': nothing left to run' if not todo else ''}.")

  start = time.time()
  shown = Progress(specs, say, progress)
  for spec in specs:
    if spec.name in run_attacks:
      continue
    index = np.nonzero(robust)[0]
    if len(index) == 0:
      break  # autoattack.py:157-159
    i = names.index(spec.name)
    t_attack = time.time()
    keys_i = np.asarray(jax.random.key_data(rng.fold(jnp.asarray(key_data), i)))
    shown.begin(spec, len(index))
    resume, checkpoint = resumed(spec, len(index)), checkpointer(spec, len(index))
    if spec.kind == "square":
      candidate, fooled = _square_host(compile_with_model, spec, x, labels, keys_i, index,
                                       batcher, shown, resume, checkpoint)
      zero = np.zeros(len(index), bool)
    else:
      candidate, fooled, zero = _passes_host(compile_with_model, spec, x, labels, keys_i, index,
                                             batcher, shown, grad_split, resume, checkpoint)
    shown.end()
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
    if partial_path and os.path.exists(partial_path):  # the JSON no longer names it
      os.remove(partial_path)
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


def check_epsilon(epsilon, norm: str) -> None:
  """Raises ValueError unless `epsilon` is a finite positive radius (at most 1 under Linf, where
  images span [0, 1])."""
  try:
    value = float(epsilon)
  except (TypeError, ValueError):
    raise ValueError(f"epsilon must be a number, got {epsilon!r}.") from None
  if not np.isfinite(value) or value <= 0:
    raise ValueError(f"epsilon must be a finite positive radius, got {epsilon!r} (e.g. 8/255 "
                     "for Linf, 0.5 for L2, 12 for L1 on CIFAR-10).")
  if norm == "Linf" and value > 1:
    raise ValueError(f"A Linf epsilon of {value:g} exceeds the [0, 1] image range: radii are "
                     f"fractions of it (8/255 = {8 / 255:.6f}).")


def _integer_labels(labels) -> np.ndarray:
  """`labels` as int32, refusing values that are not whole numbers (a silent floor would attack
  other classes than meant)."""
  labels = np.asarray(labels)
  if labels.dtype.kind == "f":
    if not np.isfinite(labels).all() or (labels != np.round(labels)).any():
      raise ValueError("run_autoattack needs integer labels; got non-integer or NaN values "
                       f"(e.g. {labels[~np.isfinite(labels) | (labels != np.round(labels))][:3]}).")
  elif labels.dtype.kind not in "iub":
    raise ValueError(f"run_autoattack needs integer labels; got dtype {labels.dtype}.")
  return labels.astype(np.int32)


def target_counts_requested(norm, version, overrides) -> tuple[int, int]:
  """The target counts the version asks for before the K - 1 cap (for the class-count check)."""
  return target_counts(attack_specs(norm, version, 1 << 30, epsilon=1.0, overrides=overrides))


_project = jax.jit(norms.project, static_argnames=("norm",))


def _passes_host(compile_with_model, spec: AttackSpec, x, labels, keys, index, batcher,
                 shown: Progress, split_at, resume=None, checkpoint=None):
  """APGD / FAB passes over the points `index`, each on the points not yet fooled, gathered into
  padded batches (of at most `split_at` points, cut by `split_sizes`, when given). Returns
  `(candidate [n, ...], fooled [n], zero_grad [n])`, aligned with `index`. `compile_with_model`:
  `run_autoattack`'s, jitting `fn(model, *args)` with the weights bound. `resume`: the arrays
  and next pass (`step`) a `checkpoint(step, arrays)` call saved after a pass."""
  pass_fn = compile_with_model(lambda model, *args: spec.pass_fn(model)(*args))
  compiled: set[int] = set()  # the batch sizes pass_fn has run at (`_Batcher.chunks`)
  cost = pass_cost(spec)
  candidate = x[index].copy()
  fooled = np.zeros(len(index), bool)
  zero = np.zeros(len(index), bool)
  first = 0
  if resume is not None:
    candidate, fooled, zero, first = (resume["candidate"], resume["fooled"], resume["zero"],
                                      resume["step"])
    done = first * len(index) + int(fooled.sum()) * (spec.num_passes - first)
    shown.skip(done, done * cost)  # what the run before this one did or saved
  for p in range(first, spec.num_passes):
    todo = np.nonzero(~fooled)[0]
    if len(todo) == 0:
      break
    pending, start = [], shown.group()
    for chunk, padded in batcher.chunks(todo, split_at, compiled=compiled):
      rows = index[padded]
      xs, ys, ks = batcher.put(x[rows], labels[rows], keys[rows])
      with shown.dispatch("pass", len(padded)):
        pending.append((chunk, pass_fn(xs, ys, ks, np.int32(p))))  # runs asynchronously
    later = spec.num_passes - p - 1
    for chunk, (adv, hit, zg) in pending:
      hit = np.asarray(hit)[:len(chunk)]
      adv = np.asarray(adv)[:len(chunk)]
      zero[chunk] |= np.asarray(zg)[:len(chunk)]
      candidate[chunk[hit]] = adv[hit]
      fooled[chunk[hit]] = True
      shown.result(len(chunk) * cost)
      shown.advance(len(chunk))
      shown.skip(int(hit.sum()) * later, int(hit.sum()) * later * cost)
      shown.left(int((~fooled).sum()))
    shown.measured(start, len(todo) * cost)
    if checkpoint is not None and p + 1 < spec.num_passes:
      checkpoint(p + 1, dict(candidate=candidate, fooled=fooled, zero=zero))
  return candidate, fooled, zero


def _square_host(compile_with_model, spec: AttackSpec, x, labels, keys, index, batcher,
                 shown: Progress, resume=None, checkpoint=None):
  """Square's restarts over the points `index`, its query loop cut into segments between which
  the unfooled points are re-gathered. Returns `(candidate, fooled)` aligned with `index`.
  `resume`: the arrays a `checkpoint(step, arrays)` call saved after a segment, `step` counting
  segments over the restarts (restart r's segment i is `r * len(cuts) + i + 1`)."""
  s = dict(spec.settings)
  queries = s["num_queries"]
  init = compile_with_model(lambda model, xs, ys, ks, r: square_init(
      model, xs, ys, ks, r, norm=s["norm"], epsilon=s["epsilon"], loss=s["loss"]))
  steps = compile_with_model(lambda model, xs, ys, ks, r, st, a, b: square_steps(
      model, xs, ys, ks, r, st, a, b, **s))
  check = compile_with_model(lambda model, z, ys, ks, r: jnp.argmax(
      model(z, model_key(ks, r, CLEAN_CALL)), axis=-1) != ys)
  cuts = [c for c in SQUARE_CUTS if c < queries] + [queries]
  query_cost = pass_cost(spec) / queries
  candidate = x[index].copy()
  fooled = np.zeros(len(index), bool)
  first_restart, first_segment = 0, 0
  if resume is not None:
    candidate, fooled = resume["candidate"], resume["fooled"]
    first_restart, first_segment = divmod(int(resume["step"]), len(cuts))
    done = first_restart * queries + (cuts[first_segment - 1] if first_segment else 0)
    shown.skip(done, 0)  # queries the run before this one made
  for r in range(first_restart, spec.num_passes):
    todo = np.nonzero(~fooled)[0]
    if len(todo) == 0:
      shown.skip((spec.num_passes - r) * queries, 0)
      break
    resuming = resume is not None and r == first_restart and first_segment > 0
    if resuming:
      todo, x_best, margin, loss = (resume["todo"], resume["x_best"], resume["margin"],
                                    resume["loss"])
    else:
      x_best = x[index[todo]].copy()
      margin = np.zeros(len(todo), np.float32)
      loss = np.zeros(len(todo), np.float32)
      for chunk, padded in batcher.chunks(np.arange(len(todo))):
        rows = index[todo[padded]]
        xs, ys, ks = batcher.put(x[rows], labels[rows], keys[rows])
        with shown.dispatch("init", len(padded)):
          xb, m, l = init(xs, ys, ks, np.int32(r))
        x_best[chunk] = np.asarray(xb)[:len(chunk)]
        margin[chunk] = np.asarray(m)[:len(chunk)]
        loss[chunk] = np.asarray(l)[:len(chunk)]
    segment = first_segment if resuming else 0
    begin, running = (cuts[segment - 1] if segment else 0), int((margin > 0).sum()) if (
        resuming) else len(todo)
    for cut in cuts[segment:]:
      active = np.nonzero(margin > 0)[0]
      shown.skip(0, (running - len(active)) * (queries - begin) * query_cost)  # fooled
      running = len(active)
      if len(active) and begin < cut:
        pending, start = [], shown.group()
        # Square runs 5000 forward passes on a set that rarely shrinks: the finer ladder pads
        # less (70 points: 72, not 96; 5 points: 5, not 8) for a few more compiles: on a large
        # model a padded point costs as much as a real one (WRN-28-10's last robust points;
        # docs/performance.md).
        for chunk, padded in batcher.chunks(active, fine=True):
          rows = index[todo[padded]]
          xs, ys, ks, xb = batcher.put(x[rows], labels[rows], keys[rows], x_best[padded])
          m, l = batcher.put(margin[padded], loss[padded])
          with shown.dispatch("steps", len(padded)):
            pending.append((chunk, steps(xs, ys, ks, np.int32(r), (xb, m, l), np.int32(begin),
                                         np.int32(cut))))
        for chunk, (xb, m, l) in pending:
          x_best[chunk] = np.asarray(xb)[:len(chunk)]
          margin[chunk] = np.asarray(m)[:len(chunk)]
          loss[chunk] = np.asarray(l)[:len(chunk)]
          shown.result(len(chunk) * (cut - begin) * query_cost)
        shown.measured(start, len(active) * (cut - begin) * query_cost)
      shown.advance(cut - begin)
      shown.left(int((margin > 0).sum()))
      begin = cut
      segment += 1
      if checkpoint is not None and cut < queries:
        checkpoint(r * len(cuts) + segment, dict(candidate=candidate, fooled=fooled, todo=todo,
                                                 x_best=x_best, margin=margin, loss=loss))
    hit = np.zeros(len(todo), bool)
    for chunk, padded in batcher.chunks(np.arange(len(todo))):
      rows = index[todo[padded]]
      z, ys, ks = batcher.put(x_best[padded], labels[rows], keys[rows])
      with shown.dispatch("check", len(padded)):
        hit[chunk] = np.asarray(check(z, ys, ks, np.int32(r)))[:len(chunk)]
    candidate[todo[hit]] = x_best[hit]
    fooled[todo[hit]] = True
    # The points fooled in this restart skip the later ones.
    shown.skip(0, int(hit.sum()) * (spec.num_passes - r - 1) * queries * query_cost)
  return candidate, fooled
