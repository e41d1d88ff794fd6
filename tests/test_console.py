"""`console.quiet_console`: what the command-line entry points set up first."""

import sys
import types

import pytest

from regmix_jax import console

ORBAX_READ = "/venv/site-packages/orbax/checkpoint/_src/serialization/serialization.py"


def _unraisable(error, filename=None):
  """Orbax's echoes: a closed loop's error with no object, a read error from its coroutine."""
  if filename is None:
    return types.SimpleNamespace(exc_value=error, object=None)
  code = types.SimpleNamespace(co_filename=filename)
  return types.SimpleNamespace(exc_value=error, object=types.SimpleNamespace(cr_code=code))


@pytest.fixture
def forwarded(monkeypatch):
  """The unraisable exceptions `quiet_console`'s hook passes on to the hook before it."""
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", seen.append)
  console.quiet_console({"verbosity": types.SimpleNamespace(present=True)})
  return seen


def test_quiet_console_drops_only_a_failed_restore_s_echoes(forwarded):
  echoes = [_unraisable(RuntimeError("Event loop is closed")),
            _unraisable(Exception("Encountered error while reading array index: ()"), ORBAX_READ)]
  others = [_unraisable(RuntimeError("Event loop is running")),
            _unraisable(Exception("Encountered error while reading array index: ()"),
                        "/home/me/my_reader.py"),
            _unraisable(Exception("Encountered error while writing"), ORBAX_READ),
            _unraisable(ValueError("Event loop is closed")),
            types.SimpleNamespace(exc_value=RuntimeError("Event loop is closed"),
                                  object=object())]  # e.g. a user's object's __del__
  for u in echoes + others:
    sys.unraisablehook(u)
  assert forwarded == others
