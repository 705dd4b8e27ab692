// jit-jax: 2-D convolution forward pass (NHWC input, HWIO kernel, NHWC output, float32) through
// oneDNN, exposed to XLA as a typed FFI handler. Built on first use by jit_jax/models/onednn.py.
//
// XLA:CPU's own convolution reaches about half of the machine's matmul rate on the CIFAR
// ResNet18 shapes (docs/performance.md); oneDNN's direct convolution with its preferred (blocked)
// weight layout runs close to it. The kernel is reordered into that layout on every call (a few
// MB at most), so the handler is stateless apart from a cache of primitive descriptors per shape.
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                       int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t>;

struct Primitive {
  dnnl::convolution_forward::primitive_desc pd;
  dnnl::convolution_forward conv;
  dnnl::memory::desc user_weights;
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

std::mutex cache_mutex;
std::map<Key, std::shared_ptr<Primitive>>& Cache() {
  static std::map<Key, std::shared_ptr<Primitive>> cache;
  return cache;
}

ffi::Error ConvForward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw, int64_t pt,
                       int64_t pb, int64_t pl, int64_t pr) {
  auto xd = x.dimensions();
  auto wd = w.dimensions();
  auto yd = y->dimensions();
  if (xd.size() != 4 || wd.size() != 4 || yd.size() != 4) {
    return ffi::Error::InvalidArgument("jit_jax dnnl conv: expected NHWC input, HWIO kernel");
  }
  const int64_t n = xd[0], h = xd[1], wi = xd[2], c = xd[3];
  const int64_t kh = wd[0], kw = wd[1], o = wd[3];
  const int64_t ho = yd[1], wo = yd[2];
  if (wd[2] != c || yd[0] != n || yd[3] != o) {
    return ffi::Error::InvalidArgument("jit_jax dnnl conv: inconsistent shapes");
  }
  if (n == 0 || ho == 0 || wo == 0 || o == 0) return ffi::Error::Success();
  const Key key{n, h, wi, c, kh, kw, o, ho, wo, sh, sw, pt, pb, pl, pr};
  std::shared_ptr<Primitive> prim;
  try {
    {
      std::lock_guard<std::mutex> lock(cache_mutex);
      auto it = Cache().find(key);
      if (it != Cache().end()) {
        prim = it->second;
      } else {
        using tag = dnnl::memory::format_tag;
        using dt = dnnl::memory::data_type;
        dnnl::memory::desc src({n, c, h, wi}, dt::f32, tag::nhwc);
        dnnl::memory::desc any_weights({o, c, kh, kw}, dt::f32, tag::any);
        dnnl::memory::desc dst({n, o, ho, wo}, dt::f32, tag::nhwc);
        auto pd = dnnl::convolution_forward::primitive_desc(
            Engine(), dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
            src, any_weights, dst, {sh, sw}, {pt, pl}, {pb, pr});
        dnnl::memory::desc user_weights({o, c, kh, kw}, dt::f32, tag::hwio);
        prim = std::make_shared<Primitive>(
            Primitive{pd, dnnl::convolution_forward(pd), user_weights});
        Cache()[key] = prim;
      }
    }
    thread_local dnnl::stream stream(Engine());
    auto& pd = prim->pd;
    dnnl::memory src_m(pd.src_desc(), Engine(), const_cast<float*>(x.typed_data()));
    dnnl::memory dst_m(pd.dst_desc(), Engine(), y->typed_data());
    dnnl::memory w_user(prim->user_weights, Engine(), const_cast<float*>(w.typed_data()));
    dnnl::memory weights = w_user;
    if (pd.weights_desc() != prim->user_weights) {  // into oneDNN's preferred (blocked) layout
      weights = dnnl::memory(pd.weights_desc(), Engine());
      dnnl::reorder(w_user, weights).execute(stream, w_user, weights);
    }
    prim->conv.execute(stream, {{DNNL_ARG_SRC, src_m}, {DNNL_ARG_WEIGHTS, weights},
                                {DNNL_ARG_DST, dst_m}});
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("jit_jax dnnl conv: oneDNN error: ") + e.what());
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JitJaxDnnlConvForward, ConvForward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("sh")
                                  .Attr<int64_t>("sw")
                                  .Attr<int64_t>("pt")
                                  .Attr<int64_t>("pb")
                                  .Attr<int64_t>("pl")
                                  .Attr<int64_t>("pr"));
