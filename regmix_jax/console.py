"""What the command-line entry points set up first: a console that shows progress and one-line
errors, not library logs (a library import changes nothing here)."""

from __future__ import annotations

import os
import sys

from absl import logging


def quiet_console(flag_values) -> None:
  """absl shows warnings and errors only, unless the command line set `--verbosity` (Orbax and
  JAX log every checkpoint read and save at INFO); and `sys.unraisablehook` drops the echoes of a
  restore that failed (a checkpoint of another config, or a damaged one), which Orbax 0.12.8
  leaves by the dozen, 50-700 lines, after the error has been raised and reported:
  `RuntimeError("Event loop is closed")` from tensorstore's threads, and its array-read
  coroutines' `Encountered error while reading array index` when they are collected
  (`_is_restore_echo`). Any other unraisable exception goes to the hook that was there."""
  if not flag_values["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  previous = sys.unraisablehook

  def hook(unraisable):
    if not _is_restore_echo(unraisable):
      previous(unraisable)
  sys.unraisablehook = hook


def _is_restore_echo(unraisable) -> bool:
  """Whether an unraisable exception (`sys.UnraisableHookArgs`) is one that Orbax's array reads
  leave behind after a failed restore (`quiet_console`); saves never match."""
  error = unraisable.exc_value
  if (unraisable.object is None and isinstance(error, RuntimeError)
      and str(error) == "Event loop is closed"):
    return True
  code = getattr(unraisable.object, "cr_code", None)  # a coroutine's
  return (code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename
          and str(error).startswith("Encountered error while reading array index"))


HELP_ARGUMENTS = ("--help", "-h", "-?", "--helpshort")


def exit_on_help(argv, usage: str, flag_values, module_name: str) -> None:
  """Prints `usage` and the flags the command's module defines (help text and default, in the
  order defined) and exits 0 when `argv` asks for help. absl's own `--help` prints only "Try
  --helpfull" under `python -m` and exits 1; `--helpfull` (every flag of every library) is left
  to absl. absl files a module's flags under its script path when it runs as `python -m`, else
  under `module_name`."""
  if not any(a in HELP_ARGUMENTS for a in argv[1:]):
    return
  by_module = flag_values.flags_by_module_dict()
  print(usage.strip() + "\n\nflags:")
  for flag in by_module.get(argv[0]) or by_module.get(module_name, []):
    name = flag.name
    default = "" if flag.default in (None, "") else f" (default: {flag.default_as_str})"
    print(f"  --{name}: {flag.help}{default}")
  print("  --verbosity=1: show library logs and tracebacks\n  --helpfull: every flag")
  sys.exit(0)
