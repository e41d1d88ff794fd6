"""Where AutoAttack's time goes, per iteration: one APGD-CE iteration and one FAB-T iteration of
ours (the jitted pass `run_autoattack` runs) against the official PyTorch attack's, and one
inference pass (a Square query), on the same network, the same points and the same cores, in one
process, compile time excluded.

  python experiments/benchmarks/autoattack_iteration_cost.py --model=small_cnn --workdir=RUN
  python experiments/benchmarks/autoattack_iteration_cost.py --model=resnet18 --points=32,64

Each side runs a pass of 10 and of 30 iterations (after a warm-up call of each), and the
per-iteration cost is the difference over 20 iterations, so set-up, the clean forward passes
and compilation drop out. Labels are the network's own predictions, so every point is attacked
on both sides (the official attacks skip misclassified points). The small CNN's weights come
from a small_cnn run (as experiments/benchmarks/autoattack_benchmark.py loads them); ResNet-18
is randomly initialised (the cost does not depend on the weights) and copied into the benchmark's
PyTorch twin. Ours computes its convolutions as the library's commands do on this CPU
(`cpu.choose("auto").on_one_device().for_attacks()`, given to the model; the forward part
times that model's single pass, as `--pack=false` does for the unpacked kernels). Official: fra31/auto-attack at
../shared/reference/auto-attack, torch CPU with --torch_threads threads (2). Results:
experiments/results/autoattack_speed.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

from regmix_jax import cpu, models
from regmix_jax.attacks.apgd import as_model, example_keys_for
from regmix_jax.attacks.square import square_init, square_steps
from regmix_jax.attacks.autoattack import attack_specs
from regmix_jax.cpu import host

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
# pylint: disable-next=g-import-not-at-top,wrong-import-position
import autoattack_benchmark as benchmark


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", default="small_cnn", choices=("small_cnn", "resnet18"))
  p.add_argument("--workdir", default="", help="a small_cnn run (for --model=small_cnn)")
  p.add_argument("--points", default="64,160")
  p.add_argument("--torch_threads", type=int, default=2)
  p.add_argument("--parts", default="apgd-ce,fab-t,square,forward",
                 help="apgd-ce, fab-t (one iteration each), square (one query in Square's loop), "
                 "forward (one jitted inference pass alone)")
  p.add_argument("--pack", default="true", choices=("true", "false"),
                 help="ours with the kernels packed for attack loops (`for_attacks`), as the "
                 "evaluate command runs them")
  args = p.parse_args()
  args.pack = args.pack == "true"
  host.configure_cpu_devices(os.cpu_count() or 1, "reduce")  # before JAX starts a backend
  import torch  # pylint: disable=g-import-not-at-top  (not a library dependency: only here)
  sys.path.insert(0, benchmark.REFERENCE)
  # The official code, found at benchmark.REFERENCE (just put on the path).
  from autoattack import autopgd_base, fab_pt  # pylint: disable=g-import-not-at-top
  from autoattack import square as square_pt  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(args.torch_threads)
  # The attacks take `logits_fn` as it is: the model gets the library's CPU convolutions itself.
  conv = cpu.choose("auto").on_one_device()  # one device runs it: every core
  conv = (conv.for_attacks() if args.pack else conv).conv
  if args.model == "small_cnn":
    model_cfg, variables = benchmark.load_variables(args.workdir)
    net = models.get_model("small_cnn", 10, width=model_cfg["width"], conv=conv)
  else:
    model_cfg = {"name": "resnet18"}
    net = models.get_model("resnet18", 10, conv=conv)
    variables = net.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32), train=False)
  logits_fn = lambda z: net.apply(variables, z, train=False)
  twin = benchmark.torch_twin(model_cfg, variables).eval()
  eps = 8 / 255
  x_all, _ = benchmark.load_points(max(int(n) for n in args.points.split(",")))

  def timed(run, repeats=10):
    """ms per call of `run()`, after a warm-up call."""
    run()
    start = time.perf_counter()
    for _ in range(repeats):
      run()
    return (time.perf_counter() - start) / repeats * 1000

  def per_iteration(run):
    """`run(num_steps)` blocks until done; the cost of one iteration in ms."""
    seconds = {}
    for steps in (10, 30):
      run(steps)  # warm-up (compiles ours)
      start = time.perf_counter()
      run(steps)
      seconds[steps] = time.perf_counter() - start
    return (seconds[30] - seconds[10]) / 20 * 1000

  print(f"{args.model}, torch {torch.__version__} ({args.torch_threads} threads), "
        f"jax {jax.__version__}", flush=True)
  for n in [int(v) for v in args.points.split(",")]:
    x = x_all[:n]
    y = np.asarray(jax.jit(logits_fn)(x)).argmax(-1).astype(np.int32)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    yt = torch.from_numpy(y.astype(np.int64))
    keys = example_keys_for(jax.random.key(0), n)
    model = as_model(logits_fn, False)
    cost = {}
    parts = args.parts.split(",")
    if "forward" in parts:
      forward = jax.jit(logits_fn)

      def ours_forward():
        jax.block_until_ready(forward(x))

      def official_forward():
        with torch.no_grad():
          twin(xt)

      cost["forward"] = tuple(timed(f) for f in (ours_forward, official_forward))
    if "square" in parts:
      # Every point stays unfooled on both sides (margins made positive), so each query runs.
      settings = dict({s.name: s for s in attack_specs("Linf", "standard", 10,
                                                       epsilon=eps)}["square"].settings)
      state = square_init(model, x, y, keys, 0, norm="Linf", epsilon=eps, loss="margin")
      state = (state[0], np.full(n, 1e9, np.float32), np.full(n, 1e9, np.float32))
      steps = jax.jit(lambda stop: square_steps(model, x, y, keys, 0, state, 0, stop,
                                                       **settings))

      def official_square(queries):
        attack = square_pt.SquareAttack(twin, p_init=settings["p_init"], n_queries=queries,
                                        eps=eps, norm="Linf", n_restarts=1, seed=0,
                                        device="cpu", resc_schedule=False)
        margin_and_loss = attack.margin_and_loss

        def never_fooled(z, t):  # one model call, as the official's
          margin, loss = margin_and_loss(z, t)
          return margin.abs() + 1, loss
        attack.margin_and_loss = never_fooled
        with torch.no_grad():
          attack.perturb(xt, yt)

      cost["square"] = (per_iteration(lambda q: jax.block_until_ready(steps(np.int32(q)))),
                        per_iteration(official_square))
    for name in [p for p in parts if p not in ("forward", "square")]:
      cache = {}

      def ours(steps, name=name):
        if steps not in cache:  # one compile per step count, outside the timed call
          spec = {s.name: s for s in attack_specs(
              "Linf", "standard", 10, epsilon=eps, overrides={name: {"num_steps": steps}})}[name]
          cache[steps] = jax.jit(spec.pass_fn(model))
        jax.block_until_ready(cache[steps](x, y, keys, np.int32(0)))

      def official(steps, name=name):
        if name == "apgd-ce":
          attack = autopgd_base.APGDAttack(twin, n_iter=steps, norm="Linf", n_restarts=1,
                                           eps=eps, seed=0, loss="ce", device="cpu")
        else:
          attack = fab_pt.FABAttack_PT(twin, norm="Linf", n_restarts=1, n_iter=steps, eps=eps,
                                       seed=0, targeted=True, n_target_classes=1, device="cpu")
        attack.perturb(xt, yt)

      cost[name] = (per_iteration(ours), per_iteration(official))
    print(f"{n} points: " + "; ".join(
        f"{name} ours {o:.1f} ms, official {t:.1f} ms (ratio official/ours {t / o:.2f})"
        for name, (o, t) in cost.items()), flush=True)


if __name__ == "__main__":
  main()
