"""Test set-up: 4 forced CPU devices and cheap compiles, before any JAX backend starts.

Compiles are most of a tiny model's test time, and many tests start the commands in fresh
processes that compile the same functions again. So every test worker and every process a test
starts (they inherit the environment) share one persistent compilation cache under the
repository's ignored `.jax_test_cache/` (empty in a fresh clone; delete it at will), and compile
with XLA's optimisations off. No size limit: with one, JAX rescans the whole cache under a file
lock at every write, which made the suite slower, not faster. Without one, JAX writes an entry
in place, unlocked: a process that reads it mid-write, or after a kill mid-write, finds it
truncated, warns and compiles. So a process a test SIGKILLs reads the cache but writes nothing
to it (`tiny_runs.killable_env`), and the processes tests start ignore that one warning (a
command's stderr is what many tests check).
"""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(ROOT, ".jax_test_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
_CACHE_READ_WARNING = "ignore:Error reading persistent compilation cache entry"
if _CACHE_READ_WARNING not in os.environ.get("PYTHONWARNINGS", ""):
  os.environ["PYTHONWARNINGS"] = ",".join(
      filter(None, [os.environ.get("PYTHONWARNINGS"), _CACHE_READ_WARNING]))

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_disable_most_optimizations", True)


# The modules whose tests run longest (`pytest --durations`): started first, so that the two
# workers do not end with one of them still running a long test alone.
LONGEST_FIRST = ("test_faults.py", "test_autoattack_official.py", "test_collective_timeout.py",
                 "test_multiprocess.py", "test_attack_strength.py", "test_autoattack_norms.py",
                 "test_robustbench_twins.py")


def pytest_collection_modifyitems(items):
  def rank(item):
    name = os.path.basename(str(item.fspath))
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
  items.sort(key=rank)  # stable: the order within a rank is kept
