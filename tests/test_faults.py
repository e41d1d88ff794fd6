"""Faults a long run meets, injected for real: SIGKILL at seeded random moments and at named ones
(mid-step, during a checkpoint save, between the metrics write and the save, during the per-epoch
and the final evaluation), a full disk, a damaged latest checkpoint, and SIGTERM during an
evaluation or a save. Every interrupted run, resumed with the same command, must end exactly where
an uninterrupted one does: parameters, EMA, optimiser state, per-example buffers and metrics.jsonl.

The runs are the CLI on a tiny FGSM-PGK config (per-example buffers, EMA, 3 epochs of 8 steps,
a checkpoint every 2 steps). Compiled programs go to a persistent cache shared by the module's
runs, so each restart costs a process start, not a compile.
"""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import tiny_runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER = os.path.join(ROOT, "tests", "fault_driver.py")
CONFIG = os.path.join(ROOT, "configs", "cifar10", "fgsm_pgk.py")
TINY = tiny_runs.tiny_fgsm_pgk_flags(cpu_devices=2, num_train=256, max_to_keep=3)
STEPS = 3 * 8


@pytest.fixture(scope="module")
def env():
  """The commands' environment: conftest.py's shared compilation cache and cheap compiles."""
  return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}


def _cli(workdir, *extra):
  return [sys.executable, "-m", "regmix_jax.main", f"--config={CONFIG}", f"--workdir={workdir}",
          *TINY, *extra]


def _faulted(fault, workdir, *extra):
  return [sys.executable, DRIVER, fault, "--", f"--config={CONFIG}", f"--workdir={workdir}",
          *TINY, *extra]


def _run(command, env, timeout=600):
  if command[1] == DRIVER:  # a run that may be SIGKILLed: it writes nothing to the cache
    env = tiny_runs.killable_env(env)
  return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env):
  """An uninterrupted run: its workdir, and the wall time of a whole run once its programs are
  in the compilation cache (a second run, timed)."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  result = _run(_cli(workdir), env)
  assert result.returncode == 0, result.stderr[-3000:]
  start = time.time()
  result = _run(_cli(str(tmp_path_factory.mktemp("timed"))), env)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, time.time() - start


def _latest(workdir):
  directory = os.path.join(workdir, "checkpoints")
  return max(int(d) for d in os.listdir(directory) if d.isdigit())


def _restore(workdir, item):
  path = os.path.join(workdir, "checkpoints", str(_latest(workdir)), item)
  return ocp.StandardCheckpointer().restore(path)


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  for r in records:
    r.pop("images_per_sec")  # wall-clock speed: the one field a resumed run cannot repeat
  return records


def _assert_same_run(reference_dir, workdir):
  assert _latest(workdir) == _latest(reference_dir) == STEPS
  with jax.default_device(jax.devices("cpu")[0]):
    for item in ("state", "sample"):
      want, got = _restore(reference_dir, item), _restore(workdir, item)
      paths_want = jax.tree_util.tree_flatten_with_path(want)[0]
      paths_got = jax.tree_util.tree_flatten_with_path(got)[0]
      assert [p for p, _ in paths_want] == [p for p, _ in paths_got]
      for (path, a), (_, b) in zip(paths_want, paths_got):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b),
                                      err_msg=f"{item} {jax.tree_util.keystr(path)}")
  assert _records(workdir) == _records(reference_dir)
  with open(os.path.join(reference_dir, "final_eval.json")) as f_want, open(
      os.path.join(workdir, "final_eval.json")) as f_got:
    assert json.load(f_got) == json.load(f_want)
  leftovers = [d for d in os.listdir(os.path.join(workdir, "checkpoints")) if not d.isdigit()]
  assert not leftovers, f"temporary checkpoint directories left behind: {leftovers}"


# The named moments: (fault, what it interrupts). Counts are per process: each run resumes from
# the previous one's last checkpoint and meets the events afresh.
NAMED = [("step:3", "mid-step"), ("save:2", "during a checkpoint save"),
         ("after_metrics:1", "between the metrics write and the save"),
         ("eval:1", "during the per-epoch evaluation"), ("save:1", "during a checkpoint save"),
         ("step:5", "mid-step"), ("after_metrics:1", "between the metrics write and the save"),
         ("save:3", "during a checkpoint save"), ("eval:1", "during the per-epoch evaluation"),
         ("eval:2", "during the final evaluation")]


def test_kills_anywhere_resume_to_the_uninterrupted_run(tmp_path, reference, env):
  reference_dir, wall = reference
  killed = 0
  # Named moments, one after the other on one run, then that run's final resume.
  workdir = str(tmp_path / "named")
  for fault, what in NAMED:
    result = _run(_faulted(fault, workdir), env)
    if result.returncode == 0:  # the run finished before the event came
      break
    assert result.returncode == -signal.SIGKILL, (fault, what, result.stderr[-3000:])
    killed += 1
  result = _run(_cli(workdir), env)
  assert result.returncode == 0, result.stderr[-3000:]
  _assert_same_run(reference_dir, workdir)
  # Seeded random moments over runs' lifetimes: each restart is killed at a random time between
  # 25% and 55% of what a whole run takes. A restart that finishes before its kill (the machine's
  # speed varies) completes its run: it is checked, and a new run starts, until 12 random kills.
  rng = random.Random(0)
  random_kills, chain = 0, 0
  workdir = str(tmp_path / "random0")
  for _ in range(60):
    if random_kills >= 12:
      break
    proc = subprocess.Popen(_cli(workdir), env=tiny_runs.killable_env(env), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(rng.uniform(0.25, 0.55) * wall)
    if proc.poll() is not None:  # finished before the kill: check it, start another run
      assert proc.returncode == 0
      _assert_same_run(reference_dir, workdir)
      chain += 1
      workdir = str(tmp_path / f"random{chain}")
      continue
    proc.kill()
    proc.wait()
    random_kills += 1
  result = _run(_cli(workdir), env)
  assert result.returncode == 0, result.stderr[-3000:]
  _assert_same_run(reference_dir, workdir)
  killed += random_kills
  print(f"kills survived: {killed} ({random_kills} at random moments over {chain + 1} runs)")
  assert killed >= 20


@pytest.mark.parametrize("fault,stops_at,records", [
    # During the 2nd epoch's evaluation: it is abandoned, the epoch's end (step 16) saved with
    # its evaluation still to do, so only the first epoch's record exists.
    ("term_eval:2", 16, 1),
    # During the 3rd save (step 6): the run stops at the next step, saved there.
    ("term_save:3", 7, 0)])
def test_sigterm_during_evaluation_or_save_stops_cleanly(tmp_path, reference, env, fault,
                                                          stops_at, records):
  reference_dir, _ = reference
  workdir = str(tmp_path / "run")
  result = _run(_faulted(fault, workdir), env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Stopped by a signal" in result.stdout
  assert _latest(workdir) == stops_at
  logged = os.path.exists(os.path.join(workdir, "metrics.jsonl"))
  assert (len(_records(workdir)) if logged else 0) == records
  result = _run(_cli(workdir), env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Resuming from" in result.stdout
  _assert_same_run(reference_dir, workdir)


def _flip_bytes(workdir, step):
  """Damages the checkpoint of `step`: flips bytes in the middle of its largest array file."""
  directory = os.path.join(workdir, "checkpoints", str(step), "state")
  files = [os.path.join(root, f) for root, _, names in os.walk(directory) for f in names]
  target = max(files, key=os.path.getsize)
  with open(target, "r+b") as f:
    data = bytearray(f.read())
    middle = len(data) // 2
    for i in range(middle, min(middle + 64, len(data))):
      data[i] ^= 0xFF
    f.seek(0)
    f.write(data)


def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, reference, env):
  reference_dir, _ = reference
  workdir = str(tmp_path / "run")
  result = _run(_faulted("save:5", workdir), env)  # killed: checkpoints up to step 8 exist
  assert result.returncode == -signal.SIGKILL
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert len(steps) >= 2
  _flip_bytes(workdir, steps[-1])
  result = _run(_cli(workdir), env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"checkpoint at step {steps[-1]}" in result.stderr and "skipped" in result.stderr
  assert f"Resuming from {os.path.join(workdir, 'checkpoints')}/{steps[-2]}" in result.stdout
  _assert_same_run(reference_dir, workdir)


def test_arrays_that_read_but_are_wrong_are_caught_by_the_fingerprint(tmp_path, env):
  """Damage Orbax cannot see: the newest checkpoint's state arrays replaced by the (readable)
  ones of the checkpoint before it. The CRC-32 fingerprints saved with each checkpoint catch it;
  the run resumes from the previous checkpoint."""
  workdir = str(tmp_path / "run")
  result = _run(_faulted("save:5", workdir), env)
  assert result.returncode == -signal.SIGKILL
  directory = os.path.join(workdir, "checkpoints")
  steps = sorted(int(d) for d in os.listdir(directory) if d.isdigit())
  newest, older = (os.path.join(directory, str(s), "state") for s in (steps[-1], steps[-2]))
  shutil.rmtree(newest)
  shutil.copytree(older, newest)
  result = _run(_cli(workdir), env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"checkpoint at step {steps[-1]} was skipped" in result.stderr
  assert "do not match the fingerprint" in result.stderr
  assert f"Resuming from {directory}/{steps[-2]}" in result.stdout


def test_no_good_checkpoint_left_names_every_step_tried(tmp_path, env):
  workdir = str(tmp_path / "run")
  result = _run(_faulted("save:4", workdir), env)
  assert result.returncode == -signal.SIGKILL
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  for step in steps:
    _flip_bytes(workdir, step)
  result = _run(_cli(workdir), env)
  assert result.returncode != 0
  message = result.stderr
  assert "No checkpoint" in message and "could be restored" in message
  # Every step, once, on the lines of the errors they failed with (`steps 6, 4: ...`).
  tried = [int(s) for line in re.findall(r"^  steps? ([\d, ]+): ", message, re.M)
           for s in line.split(", ")]
  assert sorted(tried) == steps, message
  assert "Traceback" not in message


def _mount_tmpfs(path, size):
  os.makedirs(path, exist_ok=True)
  result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                          capture_output=True, text=True)
  return result.returncode == 0, result.stderr.strip()


def test_full_disk_fails_clearly_keeps_the_last_checkpoint_and_resumes(tmp_path, reference, env):
  reference_dir, _ = reference
  disk = str(tmp_path / "disk")
  ok, why = _mount_tmpfs(disk, "6m")
  if not ok:
    pytest.skip(f"cannot mount a small tmpfs here (needs root): {why}")
  try:
    workdir = os.path.join(disk, "run")
    # Each checkpoint holds the per-example buffers (2 x 256 x 16 x 16 x 3 floats, 1.6 MB):
    # keeping 50 of them fills the 6 MB disk within the first epoch.
    result = _run(_cli(workdir, "--config.checkpoint.max_to_keep=50"), env)
    # Orbax's writer threads log their own errors; the run ends with our one-line message
    # naming the disk and the workdir (exit status 1: not a crash).
    assert result.returncode == 1, result.stderr[-3000:]
    ours = [line for line in result.stderr.splitlines()
            if line.startswith("regmix_jax: CheckpointError")]
    assert ours, result.stderr[-3000:]
    assert "disk" in ours[0] and "full" in ours[0] and workdir in ours[0], ours[0]
    good = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))
                  if d.isdigit())
    assert good, "no checkpoint survived"
    # More room, and the same command resumes from the last complete checkpoint.
    subprocess.run(["mount", "-o", "remount,size=200m", disk], check=True)
    result = _run(_cli(workdir, "--config.checkpoint.max_to_keep=50"), env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Resuming from {os.path.join(workdir, 'checkpoints')}/{good[-1]}" in result.stdout
    _assert_same_run(reference_dir, workdir)
  finally:
    subprocess.run(["umount", "-l", disk], capture_output=True)
    shutil.rmtree(disk, ignore_errors=True)


# A process that opens a checkpoint directory and exits at once (the evaluate command finding no
# checkpoint): Orbax's start-up clean-up of temporary directories, made slow here, must be
# finished by `Checkpointer.close`, not left running into interpreter shutdown (where its thread
# printed "RuntimeError: cannot schedule new futures after shutdown", 2 times in 6 before).
_OPEN_AND_EXIT = r"""
import asyncio, sys
from orbax.checkpoint._src.path import async_path
real_iterdir = async_path.iterdir

async def slow_iterdir(path):
  await asyncio.sleep(1.0)
  return await real_iterdir(path)

async_path.iterdir = slow_iterdir
from regmix_jax import checkpointing
checkpointing.Checkpointer(sys.argv[1], async_save=False).close()
sys.exit("no checkpoint")
"""


def test_closing_waits_for_orbax_start_up_clean_up(tmp_path, env):
  result = subprocess.run([sys.executable, "-c", _OPEN_AND_EXIT, str(tmp_path / "checkpoints")],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1 and "no checkpoint" in result.stderr, result.stderr[-2000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
