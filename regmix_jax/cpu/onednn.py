"""Convolutions on oneDNN for XLA:CPU, as an XLA FFI call (optional: `pip install
"regmix_jax[onednn]"`, and a C++ compiler).

Why: on x86-64 CPUs with AVX-512, oneDNN (what PyTorch uses on CPUs) runs the large-map layers of
a CIFAR ResNet faster than XLA:CPU's Eigen kernels, most of all their kernel gradients; on small
maps it was slower on an Intel Xeon and faster on an AMD EPYC, so only convolutions whose input
maps are at least `default_min_size()` wide are routed here (figures and the threshold's
measurements: docs/performance.md).

What. `conv(x, w, strides, padding, threads)` is `lax.conv_general_dilated` for NHWC inputs and
HWIO kernels, without dilation or groups, float32 or bfloat16 (routed in bfloat16 only on CPUs
with AVX512-BF16 or AMX, `cpu_has_bf16`; elsewhere oneDNN emulates it, slower): the forward
pass, the input gradient and the kernel gradient are each one oneDNN primitive
(`csrc/onednn_conv.cc`); each of the three is differentiable through the other two, so gradients
of gradients (an attack inside a training loss) work, under vmap too (one call per element).
Reverse mode only: `jax.jvp` through a routed convolution raises (custom_vjp). Values equal lax's
up to float rounding. The handler is compiled on first use (`load`) into a per-user cache, keyed
by the source, jaxlib's and oneDNN's versions, the compiler and its flags.

`fast_conv.FastConv(onednn=True)` routes here on CPU only (`lax.platform_dependent`);
`convolutions.choose` picks it for `config.cpu_convolutions` "onednn", or "auto" where
`auto_choice` says so.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from absl import logging

from regmix_jax.cpu import host

TARGET = "regmix_onednn_conv"
PACK_TARGET = "regmix_onednn_pack"  # a kernel in the layout a convolution reads (`_packed`)
SOURCE = pathlib.Path(__file__).parent / "csrc" / "onednn_conv.cc"
# The oneDNN build the handler links (CPU only, GNU OpenMP threads; `pip install
# "regmix_jax[onednn]"`): its library and its headers.
LIBRARY_DIST, HEADERS_DIST = "onednn-cpu-gomp", "onednn-devel-cpu-gomp"
# Convolutions whose input maps are narrower than the minimum size stay on XLA. The default
# (`default_min_size`) is what was measured on each vendor's CPUs (docs/performance.md, "Narrow
# maps"): on an Intel Xeon with AVX-512 oneDNN was slower on 4 x 4 maps and the ResNet-18 step
# slower with 8 than with 16 (2026-11-28), hence MIN_SIZE; on an AMD EPYC with AVX-512 it was
# faster on the narrow maps in total from batch 4 to 128, the step fastest with every map
# (2026-12-07).
MIN_SIZE = 16
MIN_SIZE_BY_VENDOR = {"AuthenticAMD": 1}  # with AVX-512 (without it oneDNN runs its AVX2 kernels)
NHWC = ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))  # lax's lhs, rhs, out specs for NHWC / HWIO
INSTALL_HINT = ('install oneDNN with `pip install "regmix_jax[onednn]"` (and a C++ compiler, '
                'g++), or set config.cpu_convolutions="xla"')
_FWD, _INPUT_GRAD, _KERNEL_GRAD = 0, 1, 2


class OnednnUnavailable(RuntimeError):
  """oneDNN's convolutions were asked for but cannot be built or loaded here."""


def _dist_file(dist: str, suffix: str) -> pathlib.Path:
  """The installed file of distribution `dist` whose path ends with `suffix`."""
  try:
    files = importlib.metadata.distribution(dist).files or []
  except importlib.metadata.PackageNotFoundError:
    raise OnednnUnavailable(f"{dist} is not installed: {INSTALL_HINT}.") from None
  for f in files:  # RECORD paths are relative to site-packages ("../../libdnnl.so")
    path = pathlib.Path(f.locate()).resolve()
    if path.as_posix().endswith(suffix):
      return path
  raise OnednnUnavailable(f"{dist} has no {suffix}: reinstall it ({INSTALL_HINT}).")


def cache_dir() -> pathlib.Path:
  """Where the compiled handler is kept: $REGMIX_JAX_CACHE, else ~/.cache/regmix_jax."""
  return pathlib.Path(os.environ.get("REGMIX_JAX_CACHE",
                                     pathlib.Path.home() / ".cache" / "regmix_jax"))


def build() -> pathlib.Path:
  """The compiled handler's path, compiling it first if this source, jaxlib, oneDNN, compiler and
  flags have not been compiled together here before (written under a temporary name, then renamed, so that
  processes building at once never load a partial file)."""
  header = _dist_file(HEADERS_DIST, "include/oneapi/dnnl/dnnl.hpp")
  library = _dist_file(LIBRARY_DIST, "lib/libdnnl.so")
  compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
  if compiler is None:
    raise OnednnUnavailable(f"No C++ compiler found to build {SOURCE.name}: {INSTALL_HINT}.")
  flags = ["-O2", "-std=c++17", "-shared", "-fPIC", "-fopenmp", f"-I{jax.ffi.include_dir()}",
           f"-I{header.parents[2]}", f"-L{library.parent}", "-ldnnl",
           f"-Wl,-rpath,{library.parent}"]
  key = hashlib.sha256(b"\0".join([
      SOURCE.read_bytes(), jaxlib.__version__.encode(),
      importlib.metadata.version(LIBRARY_DIST).encode(), compiler.encode(),
      " ".join(flags).encode()])).hexdigest()
  target = cache_dir() / f"onednn_conv-{key[:16]}.so"
  if target.exists():
    return target
  partial = None
  try:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    command = [compiler, str(SOURCE), "-o", partial, *flags]
    # Said, not logged: a first run is otherwise silent while the compiler runs.
    print(f"Building oneDNN's convolution handler into {target.parent} (once for this "
          "jaxlib and oneDNN) ...", file=sys.stderr, flush=True)
    start = time.time()
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode:
      raise OnednnUnavailable(f"Compiling {SOURCE} failed ({' '.join(command)}):\n"
                              f"{proc.stderr[-3000:]}")
    os.chmod(partial, 0o755)  # mkstemp's 0600 would keep other users of a shared cache out
    os.replace(partial, target)
    partial = None
    print(f"Built in {time.time() - start:.0f} s.", file=sys.stderr, flush=True)
  except OSError as e:  # an unwritable cache, a $CXX that cannot run
    raise OnednnUnavailable(f"Building {SOURCE.name} into {target.parent} failed: {e}. Set "
                            f"REGMIX_JAX_CACHE to a writable directory or CXX to a C++ "
                            f"compiler, or set config.cpu_convolutions=\"xla\".") from e
  finally:
    if partial is not None and os.path.exists(partial):
      os.unlink(partial)
  return target


@functools.cache
def _library() -> tuple[pathlib.Path, ctypes.CDLL]:
  path = build()
  library = ctypes.cdll.LoadLibrary(str(path))
  jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.RegmixOnednnConv),
                              platform="cpu")
  jax.ffi.register_ffi_target(PACK_TARGET, jax.ffi.pycapsule(library.RegmixOnednnPack),
                              platform="cpu")
  library.RegmixOnednnPackedBytes.restype = ctypes.c_int64
  return path, library


def load() -> pathlib.Path:
  """Builds (`build`) and loads the handler, and registers it with XLA as TARGET (and
  PACK_TARGET) for CPU; once per process. Raises OnednnUnavailable naming the cause and the
  fix."""
  return _library()[0]


# `config.cpu_convolutions="auto"` (the default) takes oneDNN's convolutions on an x86-64 Linux CPU
# with these features, where the extra is installed and the handler builds; XLA's elsewhere
# (`auto_choice`). They were measured faster on an Intel Xeon with AVX-512 (docs/performance.md);
# oneDNN picks its kernels by instruction set, not by vendor, as XLA's Eigen kernels do.
AUTO_CPU_FLAGS = ("avx512f",)


def auto_choice() -> tuple[str, str]:
  """What `config.cpu_convolutions="auto"` runs on this machine, "onednn" or "xla", and why (a
  phrase for the log). Never raises: where oneDNN is installed but cannot be built or loaded, it
  warns with the cause and picks "xla"."""
  if jax.default_backend() != "cpu":
    return "xla", f"the default backend is {jax.default_backend()} (oneDNN is for CPUs only)"
  if not (platform.system() == "Linux" and platform.machine() == "x86_64"):
    return "xla", (f"oneDNN's wheels are for x86-64 Linux, not {platform.system()} "
                   f"{platform.machine()}")
  missing = [f for f in AUTO_CPU_FLAGS if f not in host.cpu_flags()]
  if missing:
    return "xla", (f"this CPU lacks {', '.join(missing)}; oneDNN's convolutions were measured "
                   f"faster only on CPUs with it")
  try:
    for dist in (LIBRARY_DIST, HEADERS_DIST):
      importlib.metadata.distribution(dist)
  except importlib.metadata.PackageNotFoundError:
    return "xla", 'oneDNN is not installed (`pip install "regmix_jax[onednn]"` adds it)'
  try:
    load()
  except OnednnUnavailable as e:
    logging.warning('cpu_convolutions="auto": oneDNN is installed but unusable, so XLA\'s '
                    'convolutions run (set cpu_convolutions="xla" to silence this): %s', e)
    return "xla", "oneDNN is installed but unusable"
  return "onednn", "an x86-64 CPU with AVX-512, and oneDNN installed"


# CPU features with which oneDNN computes bfloat16 natively (Linux /proc/cpuinfo names).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_has_bf16() -> bool:
  """Whether this CPU has one of BF16_CPU_FLAGS. Without them oneDNN 3.2 emulates bfloat16 with
  AVX-512 (slower than XLA's: docs/performance.md) and has none at all without AVX-512."""
  return not host.cpu_flags().isdisjoint(BF16_CPU_FLAGS)


# oneDNN 3.2's input gradient of a strided 1x1 convolution with fewer input channels than this
# (`brgconv_strided:avx2`, seen on an AMD EPYC without AVX-512) writes out of bounds and corrupts
# the heap: those stay on XLA.
MIN_STRIDED_POINTWISE_CHANNELS = 16


def supports(lhs_shape: Sequence[int], rhs_shape: Sequence[int], lhs_dtype: Any, rhs_dtype: Any,
             params: dict[str, Any], min_size: int = 0) -> bool:
  """Whether `conv` computes `lax.conv_general_dilated` with these primitive `params` (a
  `conv_general_dilated_p` equation's) and is used for it: a 2-D NHWC / HWIO convolution without
  dilation or groups, float32 throughout, or bfloat16 on a CPU that computes it natively
  (`cpu_has_bf16`), input maps at least `min_size` wide (0: `default_min_size()`), and not a
  strided 1x1 one with fewer than MIN_STRIDED_POINTWISE_CHANNELS input channels."""
  dn = params["dimension_numbers"]
  strided_pointwise = (len(rhs_shape) == 4 and tuple(rhs_shape[:2]) == (1, 1)
                       and any(s > 1 for s in params["window_strides"]))
  if strided_pointwise and lhs_shape[-1] < MIN_STRIDED_POINTWISE_CHANNELS:
    return False
  dtypes = [np.dtype(np.float32)] + [np.dtype(jax.numpy.bfloat16)] * cpu_has_bf16()
  return (len(lhs_shape) == 4
          and (tuple(dn.lhs_spec), tuple(dn.rhs_spec), tuple(dn.out_spec)) == NHWC
          and params.get("feature_group_count", 1) == 1
          and params.get("batch_group_count", 1) == 1
          and all(d == 1 for d in params.get("lhs_dilation") or (1, 1))
          and all(d == 1 for d in params.get("rhs_dilation") or (1, 1))
          and all(lo >= 0 and hi >= 0 for lo, hi in params["padding"])
          and np.dtype(lhs_dtype) == np.dtype(rhs_dtype)
          and np.dtype(lhs_dtype) in dtypes
          and params.get("preferred_element_type") in (None, np.dtype(lhs_dtype))
          and min(lhs_shape[1], lhs_shape[2]) >= resolve_min_size(min_size))


@functools.cache
def default_min_size() -> int:
  """The narrowest input map routed to oneDNN on this CPU unless a run says otherwise
  (`config.cpu_onednn_min_size` 0): on a CPU with AVX-512, MIN_SIZE_BY_VENDOR's entry for its
  vendor; else MIN_SIZE (the vendor entries were measured with AVX-512 only)."""
  if "avx512f" not in host.cpu_flags():
    return MIN_SIZE
  return MIN_SIZE_BY_VENDOR.get(host.cpu_vendor(), MIN_SIZE)


def resolve_min_size(min_size: int) -> int:
  """A minimum input map size as configured (`cpu_onednn_min_size`): itself, or for 0 this CPU's
  `default_min_size()`."""
  return min_size or default_min_size()


def host_cores() -> int:
  """The cores this process may run on (its CPU affinity), at least one."""
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return max(1, cores or 1)


def threads_per_device() -> int:
  """OpenMP threads for each call of a step mapped over every host device: the cores shared
  among them, at least one (each host device runs its own step at once). A computation on one
  device of several (AutoAttack's batches on CPU) asks for `host_cores()` instead
  (`Convolutions.on_one_device`): with this count its calls would leave cores idle."""
  return max(1, host_cores() // max(1, jax.local_device_count("cpu")))


def _geometry(strides, padding) -> dict[str, np.ndarray]:
  return dict(strides=np.asarray(strides, np.int64),
              pad_lo=np.asarray([p[0] for p in padding], np.int64),
              pad_hi=np.asarray([p[1] for p in padding], np.int64))


@functools.lru_cache(maxsize=None)
def _packed_bytes(kind: int, input_shape: tuple[int, ...], kernel_shape: tuple[int, ...],
                  strides, padding, bf16: bool, threads: int) -> int:
  """The size of kernel `kernel_shape`'s layout for call `kind` on inputs `input_shape` (NHWC):
  asked of oneDNN when traced (RegmixOnednnPackedBytes), -1 where it has no primitive."""
  arr = lambda v: (ctypes.c_int64 * len(v))(*map(int, v))
  geometry = _geometry(strides, padding)
  return _library()[1].RegmixOnednnPackedBytes(
      ctypes.c_int64(kind), arr(input_shape), arr(kernel_shape), arr(geometry["strides"]),
      arr(geometry["pad_lo"]), arr(geometry["pad_hi"]), ctypes.c_int64(int(bf16)),
      ctypes.c_int64(threads))


def _packed(kind: int, w, input_shape, strides, padding, threads: int):
  """`w` in the layout call `kind` (forward or input gradient) reads on inputs `input_shape`, as
  bytes (its own call, which XLA hoists out of loops that reuse `w` and merges when repeated),
  or None where that size is unknown (a thread count of 0 is decided when run).

  Only for loops: outside one, the packed kernels are computed up front and live at once, and a
  single pass is slower (docs/performance.md, "Packed kernels for attack loops")."""
  if threads <= 0:
    return None
  size = _packed_bytes(kind, tuple(input_shape), tuple(w.shape), tuple(strides),
                       tuple(tuple(p) for p in padding), w.dtype == jnp.bfloat16, threads)
  if size <= 0:
    return None
  return jax.ffi.ffi_call(PACK_TARGET, jax.ShapeDtypeStruct((size,), jnp.uint8),
                          vmap_method="sequential")(
      w, kind=np.int64(kind), input=np.asarray(input_shape, np.int64), threads=np.int64(threads),
      **_geometry(strides, padding))


def _call(kind: int, a, b, out_shape, strides, padding, threads: int, pack: bool):
  # Under vmap (FAB's per-class vjp) one call per batch element: the handler takes 4-D operands.
  kernel, packed = np.zeros(4, np.int64), None
  if pack and kind != _KERNEL_GRAD:  # b is the kernel: packed, where its layout's size is known
    packed = _packed(kind, b, a.shape if kind == _FWD else out_shape, strides, padding, threads)
  if packed is not None:
    kernel, b = np.asarray(b.shape, np.int64), packed
  return jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct(tuple(out_shape), a.dtype),
                          vmap_method="sequential")(
      a, b, kind=np.int64(kind), threads=np.int64(threads),
      packed=np.int64(packed is not None), kernel=kernel, **_geometry(strides, padding))


def _out_shape(x_shape, w_shape, strides, padding) -> tuple[int, ...]:
  n, h, w, _ = x_shape
  kh, kw, _, co = w_shape
  return (n, (h + sum(padding[0]) - kh) // strides[0] + 1,
          (w + sum(padding[1]) - kw) // strides[1] + 1, co)


# The three bilinear maps of a convolution, each differentiable through the other two.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def conv(x: jax.Array, w: jax.Array, strides: tuple[int, int],
         padding: tuple[tuple[int, int], tuple[int, int]], threads: int,
         pack: bool = False) -> jax.Array:
  """`lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=("NHWC", "HWIO",
  "NHWC"))` on oneDNN (call `load` first): x [N, H, W, Ci], w [KH, KW, Ci, Co] ->
  [N, OH, OW, Co], float32 or bfloat16 alike; `threads` OpenMP threads. `pack`: the kernel
  reordered to oneDNN's layout by a call of its own, for loops that reuse it (`_packed`)."""
  return _call(_FWD, x, w, _out_shape(x.shape, w.shape, strides, padding), strides, padding,
               threads, pack)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _input_grad(dy, w, x_shape, strides, padding, threads, pack):
  """dy [N, OH, OW, Co], w -> dx [N, H, W, Ci] (`conv`'s transpose in x)."""
  return _call(_INPUT_GRAD, dy, w, x_shape, strides, padding, threads, pack)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _kernel_grad(x, dy, w_shape, strides, padding, threads, pack):
  """x, dy -> dw [KH, KW, Ci, Co] (`conv`'s transpose in w)."""
  return _call(_KERNEL_GRAD, x, dy, w_shape, strides, padding, threads, pack)


def _conv_fwd(x, w, strides, padding, threads, pack):
  return conv(x, w, strides, padding, threads, pack), (x, w)


def _conv_bwd(strides, padding, threads, pack, res, g):
  x, w = res
  return (_input_grad(g, w, x.shape, strides, padding, threads, pack),
          _kernel_grad(x, g, w.shape, strides, padding, threads, pack))


def _input_grad_fwd(dy, w, x_shape, strides, padding, threads, pack):
  return _input_grad(dy, w, x_shape, strides, padding, threads, pack), (dy, w)


def _input_grad_bwd(x_shape, strides, padding, threads, pack, res, g):  # g like x
  dy, w = res
  return (conv(g, w, strides, padding, threads, pack),
          _kernel_grad(g, dy, w.shape, strides, padding, threads, pack))


def _kernel_grad_fwd(x, dy, w_shape, strides, padding, threads, pack):
  return _kernel_grad(x, dy, w_shape, strides, padding, threads, pack), (x, dy)


def _kernel_grad_bwd(w_shape, strides, padding, threads, pack, res, g):  # g like w
  x, dy = res
  return (_input_grad(dy, g, x.shape, strides, padding, threads, pack),
          conv(x, g, strides, padding, threads, pack))


conv.defvjp(_conv_fwd, _conv_bwd)
_input_grad.defvjp(_input_grad_fwd, _input_grad_bwd)
_kernel_grad.defvjp(_kernel_grad_fwd, _kernel_grad_bwd)


def conv_for(lhs: jax.Array, rhs: jax.Array, params: dict[str, Any],
             threads: int = 0, pack: bool = False) -> jax.Array:
  """`conv` for a `conv_general_dilated_p` equation's `params` that `supports` accepts, on
  `threads` OpenMP threads (0: `threads_per_device()`, decided when traced), its kernel packed
  if `pack`."""
  return conv(lhs, rhs, tuple(params["window_strides"]),
              tuple(tuple(p) for p in params["padding"]), threads or threads_per_device(), pack)


