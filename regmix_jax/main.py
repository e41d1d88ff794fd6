"""Command line: `python -m regmix_jax.main --config=configs/quickstart.py --workdir=DIR`.

Any config field can be overridden: `--config.num_epochs=5 --config.data.source=files`; radii
as the papers write them, `--config.method.epsilon=8/255`.
Also installed as the console script `regmix-train`.
"""

from __future__ import annotations

import errno
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from regmix_jax import checkpointing, config as config_lib, console, cpu, distributed, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs. A run "
                    "started again in the same workdir resumes from its latest checkpoint.")
flags.mark_flags_as_required(["config", "workdir"])


def _path_error(error: OSError, workdir: str) -> str | None:
  """The one-line message for an OSError a path causes once the run has started (a file where
  a directory should be or the reverse, no permission, a read-only file system), naming the
  workdir and the fix when the path is in it or above it; None for any other OSError. (A workdir
  unusable from the start is refused before anything is built: `workdir.check_writable`.)"""
  if not isinstance(error, (NotADirectoryError, FileExistsError, IsADirectoryError,
                            PermissionError)) and error.errno != errno.EROFS:
    return None
  path = os.path.abspath(os.fsdecode(error.filename)) if error.filename else ""
  run = os.path.abspath(workdir)
  if not path or os.path.commonpath([path, run]) not in (path, run):
    return f"regmix_jax: {type(error).__name__}: {error}"
  if path.startswith(run + os.sep):
    fix = f"move {path} aside (or make it writable), or pass another --workdir"
  else:
    fix = "pass a --workdir that is a directory you can write, or a new path under one"
  return (f"regmix_jax: --workdir={workdir} cannot hold the run: {error.strerror or error} "
          f"({path}). Fix: {fix}.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  console.quiet_console(FLAGS)
  config = FLAGS.config
  try:
    cpu.configure_cpu_for(config)
    distributed.initialize_distributed(config)
    train.train_and_evaluate(config, FLAGS.workdir)
  except (ValueError, TypeError, FileNotFoundError, FloatingPointError,
          checkpointing.CheckpointError) as e:
    if FLAGS.verbosity >= 1:  # --verbosity=1 shows the traceback
      raise
    sys.exit(f"regmix_jax: {type(e).__name__}: {e}")
  except OSError as e:
    if FLAGS.verbosity >= 1:
      raise
    if e.errno == errno.ENOSPC:
      sys.exit("regmix_jax: CheckpointError: " +
               checkpointing.disk_full_message(FLAGS.workdir, "The run's logs or checkpoints"))
    message = _path_error(e, FLAGS.workdir)
    if message is None:
      raise
    sys.exit(message)
  except KeyboardInterrupt:
    # Ctrl-C where the loop does not turn it into a checkpoint and a stop: while the data loads
    # or downloads, while the step compiles, or a second Ctrl-C. tfds' download threads kept the
    # process for minutes of retries after it (docs/faults.md); checkpoints are written
    # atomically, so leaving at once loses nothing a rerun does not redo.
    if FLAGS.verbosity >= 1:
      raise
    print("regmix_jax: interrupted. Checkpoints already in --workdir, if any, are kept: the same "
          "command resumes from them.", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(130)  # pylint: disable=protected-access


def _parse_flags(argv):
  """absl's flag parsing, with a mistyped `--config.<field>` override reported as an unknown
  config field with the closest name, not as ml_collections' KeyError, and a value of the wrong
  type in one line, not a traceback."""
  try:
    return FLAGS(argv)
  except flags.IllegalFlagValueError as e:  # `--config.num_epochs=abc`: absl names flag, value
    sys.exit(f"regmix_jax: {e}. Give the field a value of its type (see the config file).")
  except flags.Error as e:  # an unknown flag, a missing --workdir
    sys.exit(f"regmix_jax: {e}")
  except (KeyError, AttributeError) as e:
    files = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    if files:
      try:
        config_lib.check_override_paths(config_lib.from_command_line(files[-1]), argv)
      except (ValueError, FileNotFoundError) as error:
        sys.exit(f"regmix_jax: {error}")
    sys.exit(f"regmix_jax: a --config override names no field: {e}")


def run():
  """Console-script entry point. Renamed config fields on the command line are given their new
  names first (`config.RENAMED_FIELDS`), and fractions (`8/255`) their decimal values."""
  try:
    sys.argv = config_lib.fraction_arguments(config_lib.renamed_arguments(sys.argv))
  except ValueError as e:
    sys.exit(f"regmix_jax: {e}")
  console.exit_on_help(sys.argv, __doc__, FLAGS, __name__)
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
