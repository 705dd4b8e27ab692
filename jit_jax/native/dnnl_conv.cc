// jit-jax: 2-D convolution (NHWC activations, HWIO kernel, float32) through oneDNN, exposed to
// XLA as three typed FFI handlers: the forward pass, the input gradient (backward data) and the
// kernel gradient (backward weights). Built on first use by jit_jax/models/onednn.py, which makes
// them JAX primitives whose derivatives are each other (a convolution is bilinear).
//
// XLA:CPU's own convolution reaches about half of the machine's matmul rate on the CIFAR
// ResNet18 shapes, and its kernel gradient a tenth of it (docs/performance.md); oneDNN's direct
// convolution with its preferred (blocked) kernel layout runs close to the matmul rate in all
// three. The kernel is reordered each call between the HWIO layout and oneDNN's (a few MB at
// most), so the handlers are stateless apart from a cache of primitives per shape.
//
// XLA runs independent ops of one program concurrently on its worker threads, so the same
// primitive can execute in two threads at once. oneDNN's default (library) scratchpad is shared
// between executions, and its kernel-gradient reductions keep their thread barriers there: two
// concurrent executions then corrupt each other and could spin forever (seen: a ResNet18
// Jacobian objective hung on its third call). Every primitive here therefore uses a user
// scratchpad, which oneDNN documents as safe for concurrent execution: a buffer of the calling
// thread's own (an XLA thread runs one handler at a time), kept and grown as needed rather than
// allocated per call.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <tuple>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

// The geometry of one convolution: NHWC input n x h x w x c, HWIO kernel kh x kw x c x o, output
// n x ho x wo x o, strides and explicit paddings.
struct Geometry {
  int64_t n, h, w, c, kh, kw, o, ho, wo, sh, sw, pt, pb, pl, pr;
  auto key() const { return std::make_tuple(n, h, w, c, kh, kw, o, ho, wo, sh, sw, pt, pb, pl, pr); }
  dnnl::memory::desc src() const { return {{n, c, h, w}, dt::f32, tag::nhwc}; }
  dnnl::memory::desc dst() const { return {{n, o, ho, wo}, dt::f32, tag::nhwc}; }
  dnnl::memory::desc user_weights() const { return {{o, c, kh, kw}, dt::f32, tag::hwio}; }
  dnnl::memory::desc any_weights() const { return {{o, c, kh, kw}, dt::f32, tag::any}; }
  bool empty() const { return n == 0 || c == 0 || o == 0 || ho == 0 || wo == 0; }
  dnnl::convolution_forward::primitive_desc forward(
      dnnl::prop_kind kind, const dnnl::engine& e,
      const dnnl::primitive_attr& attr = dnnl::primitive_attr()) const {
    return dnnl::convolution_forward::primitive_desc(
        e, kind, dnnl::algorithm::convolution_direct, src(), any_weights(), dst(), {sh, sw},
        {pt, pl}, {pb, pr}, attr);
  }
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// Attributes of every primitive here: the scratchpad is the caller's (see the top of the file).
dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

// A scratchpad buffer owned by the calling thread (one per use, so a reorder and the convolution
// of one call never share), 64-byte aligned and grown to the largest request seen.
class ThreadScratch {
 public:
  ~ThreadScratch() { std::free(data_); }
  dnnl::memory For(const dnnl::memory::desc& desc) {
    size_t need = desc.get_size();
    if (need > size_) {
      std::free(data_);
      size_ = (need + 63) / 64 * 64;
      data_ = std::aligned_alloc(64, size_);
      if (data_ == nullptr) {
        size_ = 0;
        throw std::bad_alloc();
      }
    }
    return dnnl::memory(desc, Engine(), need ? data_ : nullptr);
  }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

// A reorder between two layouts, with a scratchpad of its own.
void Reorder(dnnl::stream& stream, dnnl::memory& from, dnnl::memory& to) {
  thread_local ThreadScratch reorder_scratch;
  auto pd = dnnl::reorder::primitive_desc(from, to, UserScratchpad());
  dnnl::memory scratch = reorder_scratch.For(pd.scratchpad_desc());
  dnnl::reorder(pd).execute(stream, {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to},
                                     {DNNL_ARG_SCRATCHPAD, scratch}});
}

// A primitive and the weights layout it wants, cached per (kind, geometry).
struct Cached {
  dnnl::primitive prim;
  dnnl::memory::desc weights;     // oneDNN's kernel layout for this primitive
  dnnl::memory::desc scratchpad;  // the scratchpad one execution needs
};

enum Kind { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

std::mutex cache_mutex;

std::shared_ptr<Cached> Lookup(Kind kind, const Geometry& g) {
  static std::map<std::tuple<int, decltype(g.key())>, std::shared_ptr<Cached>> cache;
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto key = std::make_tuple(static_cast<int>(kind), g.key());
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  auto& e = Engine();
  std::shared_ptr<Cached> out;
  auto attr = UserScratchpad();
  if (kind == kForward) {
    auto pd = g.forward(dnnl::prop_kind::forward_inference, e, attr);
    out = std::make_shared<Cached>(
        Cached{dnnl::convolution_forward(pd), pd.weights_desc(), pd.scratchpad_desc()});
  } else if (kind == kBackwardData) {
    auto hint = g.forward(dnnl::prop_kind::forward_training, e);
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        e, dnnl::algorithm::convolution_direct, g.src(), g.any_weights(), g.dst(),
        {g.sh, g.sw}, {g.pt, g.pl}, {g.pb, g.pr}, hint, attr);
    out = std::make_shared<Cached>(
        Cached{dnnl::convolution_backward_data(pd), pd.weights_desc(), pd.scratchpad_desc()});
  } else {
    auto hint = g.forward(dnnl::prop_kind::forward_training, e);
    auto pd = dnnl::convolution_backward_weights::primitive_desc(
        e, dnnl::algorithm::convolution_direct, g.src(), g.any_weights(), g.dst(),
        {g.sh, g.sw}, {g.pt, g.pl}, {g.pb, g.pr}, hint, attr);
    out = std::make_shared<Cached>(Cached{dnnl::convolution_backward_weights(pd),
                                          pd.diff_weights_desc(), pd.scratchpad_desc()});
  }
  cache[key] = out;
  return out;
}

ffi::Error Check(bool ok, const char* what) {
  if (ok) return ffi::Error::Success();
  return ffi::Error::InvalidArgument(std::string("jit_jax dnnl conv: ") + what);
}

// x: NHWC input, w: HWIO kernel, y: NHWC output. Which of the three is the result depends on
// the kind; the geometry is read from all three.
template <typename X, typename W, typename Y>
ffi::Error Geom(const X& x, const W& w, const Y& y, int64_t sh, int64_t sw, int64_t pt,
                int64_t pb, int64_t pl, int64_t pr, Geometry* g) {
  auto xd = x.dimensions();
  auto wd = w.dimensions();
  auto yd = y.dimensions();
  if (xd.size() != 4 || wd.size() != 4 || yd.size() != 4) {
    return Check(false, "expected NHWC activations and an HWIO kernel");
  }
  *g = Geometry{xd[0], xd[1], xd[2], xd[3], wd[0], wd[1], wd[3], yd[1], yd[2],
                sh,    sw,    pt,    pb,    pl,    pr};
  return Check(wd[2] == g->c && yd[0] == g->n && yd[3] == g->o, "inconsistent shapes");
}

ffi::Error Run(Kind kind, const Geometry& g, float* x, float* w, float* y) {
  try {
    auto cached = Lookup(kind, g);
    thread_local dnnl::stream stream(Engine());
    auto& e = Engine();
    dnnl::memory src(g.src(), e, x);
    dnnl::memory dst(g.dst(), e, y);
    dnnl::memory w_user(g.user_weights(), e, w);
    dnnl::memory weights = w_user;
    thread_local ThreadScratch conv_scratch;
    dnnl::memory scratch = conv_scratch.For(cached->scratchpad);  // this thread's own
    bool reorder = cached->weights != g.user_weights();
    if (reorder) weights = dnnl::memory(cached->weights, e);
    if (kind == kForward || kind == kBackwardData) {
      if (reorder) Reorder(stream, w_user, weights);
      if (kind == kForward) {
        cached->prim.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, weights},
                                      {DNNL_ARG_DST, dst}, {DNNL_ARG_SCRATCHPAD, scratch}});
      } else {
        cached->prim.execute(stream, {{DNNL_ARG_DIFF_DST, dst}, {DNNL_ARG_WEIGHTS, weights},
                                      {DNNL_ARG_DIFF_SRC, src}, {DNNL_ARG_SCRATCHPAD, scratch}});
      }
    } else {
      cached->prim.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, dst},
                                    {DNNL_ARG_DIFF_WEIGHTS, weights},
                                    {DNNL_ARG_SCRATCHPAD, scratch}});
      if (reorder) Reorder(stream, weights, w_user);
    }
    stream.wait();
  } catch (const dnnl::error& err) {
    return ffi::Error::Internal(std::string("jit_jax dnnl conv: oneDNN error: ") + err.what());
  } catch (const std::bad_alloc&) {
    return ffi::Error::Internal("jit_jax dnnl conv: out of memory for a oneDNN scratchpad");
  }
  return ffi::Error::Success();
}

#define JITJAX_ATTRS int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr
#define JITJAX_ARGS sh, sw, pt, pb, pl, pr

// y = conv(x, w)
ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                   ffi::ResultBuffer<ffi::F32> y, JITJAX_ATTRS) {
  Geometry g;
  if (auto err = Geom(x, w, *y, JITJAX_ARGS, &g); err.failure()) return err;
  if (g.empty()) {
    std::memset(y->typed_data(), 0, y->size_bytes());
    return ffi::Error::Success();
  }
  return Run(kForward, g, const_cast<float*>(x.typed_data()), const_cast<float*>(w.typed_data()),
             y->typed_data());
}

// dx = the input gradient of conv at kernel w for output cotangent dy (dx's shape fixes h, w)
ffi::Error BackwardData(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                        ffi::ResultBuffer<ffi::F32> dx, JITJAX_ATTRS) {
  Geometry g;
  if (auto err = Geom(*dx, w, dy, JITJAX_ARGS, &g); err.failure()) return err;
  if (g.empty()) {
    std::memset(dx->typed_data(), 0, dx->size_bytes());
    return ffi::Error::Success();
  }
  return Run(kBackwardData, g, dx->typed_data(), const_cast<float*>(w.typed_data()),
             const_cast<float*>(dy.typed_data()));
}

// dw = the kernel gradient of conv at input x for output cotangent dy (HWIO)
ffi::Error BackwardWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                           ffi::ResultBuffer<ffi::F32> dw, JITJAX_ATTRS) {
  Geometry g;
  if (auto err = Geom(x, *dw, dy, JITJAX_ARGS, &g); err.failure()) return err;
  if (g.empty()) {
    std::memset(dw->typed_data(), 0, dw->size_bytes());
    return ffi::Error::Success();
  }
  return Run(kBackwardWeights, g, const_cast<float*>(x.typed_data()), dw->typed_data(),
             const_cast<float*>(dy.typed_data()));
}

}  // namespace

#define JITJAX_BIND(fn)                          \
  ffi::Ffi::Bind()                               \
      .Arg<ffi::Buffer<ffi::F32>>()              \
      .Arg<ffi::Buffer<ffi::F32>>()              \
      .Ret<ffi::Buffer<ffi::F32>>()              \
      .Attr<int64_t>("sh")                       \
      .Attr<int64_t>("sw")                       \
      .Attr<int64_t>("pt")                       \
      .Attr<int64_t>("pb")                       \
      .Attr<int64_t>("pl")                       \
      .Attr<int64_t>("pr")

XLA_FFI_DEFINE_HANDLER_SYMBOL(JitJaxDnnlConvForward, Forward, JITJAX_BIND());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JitJaxDnnlConvBackwardData, BackwardData, JITJAX_BIND());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JitJaxDnnlConvBackwardWeights, BackwardWeights, JITJAX_BIND());
