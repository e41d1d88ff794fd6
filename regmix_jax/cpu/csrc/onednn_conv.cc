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
//
// Packing: on small batches the kernel's reorder costs about as much as the convolution itself
// (docs/performance.md, "Packed kernels for attack loops"). A second handler,
// RegmixOnednnPack, writes the kernel in the layout kind 0 or 1 asks for into a byte buffer;
// given it (`packed` = 1, the kernel's HWIO shape in `kernel`), those kinds skip the reorder. As
// its own call, XLA hoists it out of the loops that reuse a kernel (an attack's iterations) and
// merges repeated ones. RegmixOnednnPackedBytes tells the caller the buffer's size beforehand:
// the layout comes from the same primitive descriptor, built from the same shapes and thread
// count, and each call checks the size it is given.
#include <omp.h>

#include <cstdint>
#include <exception>
#include <stdexcept>
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

// The shapes and attributes of one convolution, in oneDNN's terms.
struct Problem {
  memory::dims x, w, y, strides, lo, hi;
  memory::data_type dt;

  Problem(memory::dims x_nchw, memory::dims w_oihw, memory::dims st, memory::dims l,
          memory::dims h, memory::data_type type)
      : x(x_nchw), w(w_oihw), strides(st), lo(l), hi(h), dt(type) {
    y = {x[0], w[0], (x[2] + lo[0] + hi[0] - w[2]) / strides[0] + 1,
         (x[3] + lo[1] + hi[1] - w[3]) / strides[1] + 1};
  }
  memory::desc XDesc() const { return {x, dt, memory::format_tag::nhwc}; }
  memory::desc YDesc() const { return {y, dt, memory::format_tag::nhwc}; }
  memory::desc WPlain() const { return {w, dt, memory::format_tag::hwio}; }
  memory::desc WAny() const { return {w, dt, memory::format_tag::any}; }

  // oneDNN's primitive cache makes these descriptors cheap after a shape's first call.
  dnnl::convolution_forward::primitive_desc Forward() const {
    return {Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
            XDesc(), WAny(), YDesc(), strides, lo, hi};
  }
  // `fwd`: this problem's Forward(), the hint every backward descriptor takes.
  dnnl::convolution_backward_data::primitive_desc InputGrad(
      const dnnl::convolution_forward::primitive_desc& fwd) const {
    return {Engine(), dnnl::algorithm::convolution_direct, XDesc(), WAny(), YDesc(), strides, lo,
            hi, fwd};
  }
  // The kernel layout kind 0 (forward) or 1 (input gradient) reads.
  memory::desc KernelLayout(int64_t kind) const {
    const auto fwd = Forward();
    return kind == 0 ? fwd.weights_desc() : InputGrad(fwd).weights_desc();
  }
};

memory::dims Dims(ffi::Span<const int64_t> v) { return memory::dims(v.begin(), v.end()); }

memory::data_type DataType(ffi::DataType t) {
  return t == ffi::DataType::BF16 ? memory::data_type::bf16 : memory::data_type::f32;
}

ffi::Error Conv(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> out,
                int64_t kind, ffi::Span<const int64_t> strides, ffi::Span<const int64_t> pad_lo,
                ffi::Span<const int64_t> pad_hi, int64_t threads, int64_t packed,
                ffi::Span<const int64_t> kernel) {
  if ((packed == 0 && a.element_type() != b.element_type()) ||
      a.element_type() != out->element_type() ||
      (a.element_type() != ffi::DataType::F32 && a.element_type() != ffi::DataType::BF16)) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "onednn_conv: operands must all be float32 or all bfloat16");
  }
  if (a.dimensions().size() != 4 || (packed == 0 && b.dimensions().size() != 4) ||
      out->dimensions().size() != 4) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "onednn_conv: operands must be 4-D");
  }
  if (kind < 0 || kind > 2 || strides.size() != 2 || pad_lo.size() != 2 || pad_hi.size() != 2 ||
      (packed != 0 && (kind == 2 || kernel.size() != 4))) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "onednn_conv: bad attributes");
  }
  try {
    memory::dims x, w;
    void *xp, *wp, *yp;
    if (kind == 0) {
      x = Nchw(a.dimensions()), xp = a.untyped_data(), wp = b.untyped_data();
      yp = out->untyped_data();
    } else if (kind == 1) {
      x = Nchw(out->dimensions()), yp = a.untyped_data(), wp = b.untyped_data();
      xp = out->untyped_data();
    } else {
      x = Nchw(a.dimensions()), xp = a.untyped_data(), yp = b.untyped_data();
      wp = out->untyped_data();
    }
    if (packed != 0) {
      w = {kernel[3], kernel[2], kernel[0], kernel[1]};
    } else {
      w = Oihw(kind == 2 ? out->dimensions() : b.dimensions());
    }
    if (threads > 0) omp_set_num_threads(static_cast<int>(threads));
    const Problem p(x, w, Dims(strides), Dims(pad_lo), Dims(pad_hi), DataType(a.element_type()));
    auto& engine = Engine();
    dnnl::stream s(engine);
    const auto fwd = p.Forward();
    memory xm(p.XDesc(), engine, xp), ym(p.YDesc(), engine, yp);
    // The kernel as kind 0 or 1 reads it: the packed buffer, or the plain one reordered.
    auto kernel_in = [&](const memory::desc& wanted) {
      if (packed == 0) return KernelIn(wanted, memory(p.WPlain(), engine, wp), s);
      if (wanted.get_size() != b.size_bytes()) {
        throw std::runtime_error(
            "the packed kernel has " + std::to_string(b.size_bytes()) +
            " bytes, the primitive reads " + std::to_string(wanted.get_size()) +
            " (a program compiled on another CPU, from JAX's compilation cache? clear that "
            "cache, or set cpu_convolutions=\"xla\")");
      }
      return memory(wanted, engine, wp);
    };
    if (kind == 0) {
      memory wk = kernel_in(fwd.weights_desc());
      dnnl::convolution_forward(fwd).execute(
          s, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_WEIGHTS, wk}, {DNNL_ARG_DST, ym}});
    } else if (kind == 1) {
      const auto bwd = p.InputGrad(fwd);
      memory wk = kernel_in(bwd.weights_desc());
      dnnl::convolution_backward_data(bwd).execute(
          s, {{DNNL_ARG_DIFF_DST, ym}, {DNNL_ARG_WEIGHTS, wk}, {DNNL_ARG_DIFF_SRC, xm}});
    } else {
      dnnl::convolution_backward_weights::primitive_desc bwd(
          engine, dnnl::algorithm::convolution_direct, p.XDesc(), p.WAny(), p.YDesc(),
          p.strides, p.lo, p.hi, fwd);
      memory wm(p.WPlain(), engine, wp);
      const bool blocked = bwd.diff_weights_desc() != p.WPlain();
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

// The kernel w [KH, KW, Ci, Co] in the layout kind 0 or 1 reads for inputs of shape `input`
// (NHWC), written to the byte buffer `out` (its size from RegmixOnednnPackedBytes).
ffi::Error Pack(ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> out, int64_t kind,
                ffi::Span<const int64_t> input, ffi::Span<const int64_t> strides,
                ffi::Span<const int64_t> pad_lo, ffi::Span<const int64_t> pad_hi,
                int64_t threads) {
  if ((w.element_type() != ffi::DataType::F32 && w.element_type() != ffi::DataType::BF16) ||
      w.dimensions().size() != 4 || input.size() != 4 || (kind != 0 && kind != 1) ||
      strides.size() != 2 || pad_lo.size() != 2 || pad_hi.size() != 2) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "onednn_pack: bad operands");
  }
  try {
    if (threads > 0) omp_set_num_threads(static_cast<int>(threads));
    const Problem p({input[0], input[3], input[1], input[2]}, Oihw(w.dimensions()),
                    Dims(strides), Dims(pad_lo), Dims(pad_hi), DataType(w.element_type()));
    const memory::desc wanted = p.KernelLayout(kind);
    if (wanted.get_size() != out->size_bytes()) {
      return ffi::Error(ffi::ErrorCode::kInternal,
                        "onednn_pack: the buffer has " + std::to_string(out->size_bytes()) +
                            " bytes, the layout needs " + std::to_string(wanted.get_size()));
    }
    auto& engine = Engine();
    dnnl::stream s(engine);
    memory plain(p.WPlain(), engine, w.untyped_data()), packed(wanted, engine,
                                                               out->untyped_data());
    dnnl::reorder(plain, packed).execute(s, plain, packed);
    s.wait();
  } catch (const std::exception& e) {  // dnnl::error included; nothing may unwind across FFI
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("onednn_pack: ") + e.what());
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
                                  .Attr<int64_t>("threads")
                                  .Attr<int64_t>("packed")
                                  .Attr<ffi::Span<const int64_t>>("kernel"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(RegmixOnednnPack, Pack,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("kind")
                                  .Attr<ffi::Span<const int64_t>>("input")
                                  .Attr<ffi::Span<const int64_t>>("strides")
                                  .Attr<ffi::Span<const int64_t>>("pad_lo")
                                  .Attr<ffi::Span<const int64_t>>("pad_hi")
                                  .Attr<int64_t>("threads"));

// The bytes RegmixOnednnPack writes for these shapes (input NHWC, kernel HWIO; bf16 0 or 1) on
// `threads` OpenMP threads (the calling thread's count is restored); -1 if oneDNN has no
// primitive for them.
extern "C" int64_t RegmixOnednnPackedBytes(int64_t kind, const int64_t* input,
                                           const int64_t* kernel, const int64_t* strides,
                                           const int64_t* pad_lo, const int64_t* pad_hi,
                                           int64_t bf16, int64_t threads) {
  const int before = omp_get_max_threads();
  if (threads > 0) omp_set_num_threads(static_cast<int>(threads));
  int64_t bytes = -1;
  try {
    const Problem p({input[0], input[3], input[1], input[2]},
                    {kernel[3], kernel[2], kernel[0], kernel[1]}, {strides[0], strides[1]},
                    {pad_lo[0], pad_lo[1]}, {pad_hi[0], pad_hi[1]},
                    bf16 ? memory::data_type::bf16 : memory::data_type::f32);
    bytes = static_cast<int64_t>(p.KernelLayout(kind).get_size());
  } catch (const std::exception&) {
    bytes = -1;
  }
  omp_set_num_threads(before);
  return bytes;
}
