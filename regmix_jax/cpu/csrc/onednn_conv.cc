// 2-D convolutions on oneDNN as an XLA FFI handler (regmix_jax/cpu/onednn.py builds and loads this).
//
// One handler, three bilinear maps of a convolution with NHWC activations and an HWIO kernel:
//   kind 0, forward:         a = x  [N, H, W, Ci], b = w  [KH, KW, Ci, Co] -> y  [N, OH, OW, Co]
//   kind 1, input gradient:  a = dy [N, OH, OW, Co], b = w                 -> dx [N, H, W, Ci]
//   kind 2, kernel gradient: a = x, b = dy                                 -> dw [KH, KW, Ci, Co]
// Activations are read and written in place in their NHWC layout (oneDNN's `acdb`); the kernel
// is reordered to (and its gradient from) the blocked layout oneDNN's primitive asks for: with
// the plain HWIO layout oneDNN 3.2 falls back to its slower `gemm:jit` gradients. float32 or
// bfloat16, all three operands alike. `threads` sets the calling thread's OpenMP thread count.
#include <omp.h>

#include <cstdint>
#include <exception>
#include <string>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);  // thread-safe initialisation
  return engine;
}

memory::dims Nchw(ffi::AnyBuffer::Dimensions d) { return {d[0], d[3], d[1], d[2]}; }
memory::dims Oihw(ffi::AnyBuffer::Dimensions d) { return {d[3], d[2], d[0], d[1]}; }

// The kernel `plain` (HWIO, at `data`) in the layout `wanted`: itself, or a reordered copy.
memory KernelIn(const memory::desc& wanted, const memory& plain, dnnl::stream& s) {
  if (wanted == plain.get_desc()) return plain;
  memory blocked(wanted, Engine());
  dnnl::reorder(plain, blocked).execute(s, const_cast<memory&>(plain), blocked);
  return blocked;
}

ffi::Error Conv(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> out,
                int64_t kind, ffi::Span<const int64_t> strides, ffi::Span<const int64_t> pad_lo,
                ffi::Span<const int64_t> pad_hi, int64_t threads) {
  if (a.element_type() != b.element_type() || a.element_type() != out->element_type() ||
      (a.element_type() != ffi::DataType::F32 && a.element_type() != ffi::DataType::BF16)) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "onednn_conv: operands must all be float32 or all bfloat16");
  }
  if (a.dimensions().size() != 4 || b.dimensions().size() != 4 ||
      out->dimensions().size() != 4) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "onednn_conv: operands must be 4-D");
  }
  if (kind < 0 || kind > 2 || strides.size() != 2 || pad_lo.size() != 2 || pad_hi.size() != 2) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "onednn_conv: bad attributes");
  }
  try {
    memory::dims x, w, y;
    void *xp, *wp, *yp;
    if (kind == 0) {
      x = Nchw(a.dimensions()), w = Oihw(b.dimensions()), y = Nchw(out->dimensions());
      xp = a.untyped_data(), wp = b.untyped_data(), yp = out->untyped_data();
    } else if (kind == 1) {
      y = Nchw(a.dimensions()), w = Oihw(b.dimensions()), x = Nchw(out->dimensions());
      yp = a.untyped_data(), wp = b.untyped_data(), xp = out->untyped_data();
    } else {
      x = Nchw(a.dimensions()), y = Nchw(b.dimensions()), w = Oihw(out->dimensions());
      xp = a.untyped_data(), yp = b.untyped_data(), wp = out->untyped_data();
    }
    const auto dt = a.element_type() == ffi::DataType::BF16 ? memory::data_type::bf16
                                                            : memory::data_type::f32;
    const memory::desc x_md(x, dt, memory::format_tag::nhwc), y_md(y, dt, memory::format_tag::nhwc),
        w_plain(w, dt, memory::format_tag::hwio), w_any(w, dt, memory::format_tag::any);
    const memory::dims st(strides.begin(), strides.end()), lo(pad_lo.begin(), pad_lo.end()),
        hi(pad_hi.begin(), pad_hi.end());
    if (threads > 0) omp_set_num_threads(static_cast<int>(threads));
    auto& engine = Engine();
    dnnl::stream s(engine);
    const auto alg = dnnl::algorithm::convolution_direct;
    // oneDNN's primitive cache makes these descriptors cheap after a shape's first call.
    dnnl::convolution_forward::primitive_desc fwd(engine, dnnl::prop_kind::forward_training, alg,
                                                   x_md, w_any, y_md, st, lo, hi);
    memory xm(x_md, engine, xp), ym(y_md, engine, yp), wm(w_plain, engine, wp);
    if (kind == 0) {
      memory wk = KernelIn(fwd.weights_desc(), wm, s);
      dnnl::convolution_forward(fwd).execute(
          s, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_WEIGHTS, wk}, {DNNL_ARG_DST, ym}});
    } else if (kind == 1) {
      dnnl::convolution_backward_data::primitive_desc bwd(engine, alg, x_md, w_any, y_md, st, lo,
                                                          hi, fwd);
      memory wk = KernelIn(bwd.weights_desc(), wm, s);
      dnnl::convolution_backward_data(bwd).execute(
          s, {{DNNL_ARG_DIFF_DST, ym}, {DNNL_ARG_WEIGHTS, wk}, {DNNL_ARG_DIFF_SRC, xm}});
    } else {
      dnnl::convolution_backward_weights::primitive_desc bwd(engine, alg, x_md, w_any, y_md, st,
                                                             lo, hi, fwd);
      const bool blocked = bwd.diff_weights_desc() != w_plain;
      memory wk = blocked ? memory(bwd.diff_weights_desc(), engine) : wm;
      dnnl::convolution_backward_weights(bwd).execute(
          s, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_DIFF_DST, ym}, {DNNL_ARG_DIFF_WEIGHTS, wk}});
      if (blocked) dnnl::reorder(wk, wm).execute(s, wk, wm);
    }
    s.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("onednn_conv: ") + e.what());
  } catch (const std::exception& e) {  // nothing may unwind across the FFI's C boundary
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("onednn_conv: ") + e.what());
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RegmixOnednnConv, Conv,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("kind")
                                  .Attr<ffi::Span<const int64_t>>("strides")
                                  .Attr<ffi::Span<const int64_t>>("pad_lo")
                                  .Attr<ffi::Span<const int64_t>>("pad_hi")
                                  .Attr<int64_t>("threads"));
