/* The native AdAct kernels as PyTorch operators, with their autograd in C++.
 *
 * adact_native.cpp holds the kernels (plain C++, built per ISA level in about a second); this file
 * holds what makes them a torch op (it includes torch's headers: built once per torch version,
 * about half a minute, whatever the ISA). The kernels reach this library as function pointers:
 * Python registers each (kernel build, pool, layout) once as a "problem" and passes its index.
 *
 *   adact_native::adact(x, logits, slope, problem, noisy) -> y
 *       CompositeImplicitAutograd: draws the RReLU seed (when noisy) from x's default generator
 *       and calls mix.
 *   adact_native::mix(x, logits, slope, seed?, problem) -> y          CPU kernel + C++ autograd
 *   adact_native::mix_backward(grad, x, logits, slope, seed?, problem) -> (gx, glogits, gslope)
 *   adact_native::register_problem(...) -> int
 *
 * The autograd node (MixFunctionBackward, written out like the nodes torch generates for its own
 * ops: a custom torch::autograd::Function costs about a microsecond more per call, a tenth of a
 * small unit) keeps x, the parameters and the seed, nothing else: the backward recomputes the
 * mixture and regenerates RReLU's noise from the seed. Fake (meta) kernels for torch.compile
 * are registered from Python (adact/fused/native_op.py). */
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/FunctionalTensorWrapper.h>
#include <ATen/Parallel.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/library.h>

#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <vector>

namespace {

using at::Tensor;

typedef void (*forward_fn)(const float *, float *, float *, int64_t, int64_t, int64_t, int64_t, const float *,
                           const double *, const double *, int64_t, const float *, int64_t, int32_t, int32_t,
                           int32_t);
typedef void (*backward_fn)(const float *, const float *, float *, float *, float *, int64_t, int64_t, int64_t,
                            int64_t, const float *, const double *, const double *, int64_t, const float *, int64_t,
                            int32_t, int32_t, int32_t);

constexpr int64_t N_COEF = 7;

struct Problem {
    forward_fn forward;
    backward_fn backward;
    std::vector<double> to_coef;    /* K x 7 */
    std::vector<double> from_sums;  /* 6 x K */
    int64_t k;                      /* pool size */
    int64_t prelu;                  /* PReLU's slot, -1: none */
    int32_t flags;                  /* the kernels' term bits */
    bool channel;                   /* one mixture per channel (x is (N, C, *)) */
};

/* A deque never moves its elements, so a reference stays valid while others are appended. */
std::deque<Problem> problems;
std::mutex problems_lock;

const Problem &problem_at(int64_t index) {
    std::lock_guard<std::mutex> guard(problems_lock);
    TORCH_CHECK(index >= 0 && index < (int64_t)problems.size(), "adact_native: unknown problem ", index,
                " (registered: ", problems.size(), "); problems are per process: call adact.fused first");
    return problems[index];
}

std::vector<double> doubles(const Tensor &t, int64_t n, const char *what) {
    TORCH_CHECK(t.scalar_type() == at::kDouble && t.numel() == n, "adact_native: ", what, " must be ", n,
                " float64 numbers, got ", t.numel(), " ", t.scalar_type());
    Tensor c = t.contiguous().cpu();
    const double *p = c.data_ptr<double>();
    return std::vector<double>(p, p + n);
}

int64_t register_problem(int64_t forward, int64_t backward, const Tensor &to_coef, const Tensor &from_sums,
                         int64_t prelu, int64_t flags, bool channel) {
    TORCH_CHECK(forward != 0 && backward != 0, "adact_native: null kernel pointer");
    TORCH_CHECK(to_coef.dim() == 2 && to_coef.size(1) == N_COEF, "adact_native: to_coef must be (K, 7)");
    int64_t k = to_coef.size(0);
    Problem p{reinterpret_cast<forward_fn>(forward), reinterpret_cast<backward_fn>(backward),
              doubles(to_coef, k * N_COEF, "to_coef"), doubles(from_sums, 6 * k, "from_sums"), k, prelu,
              (int32_t)flags, channel};
    std::lock_guard<std::mutex> guard(problems_lock);
    problems.push_back(std::move(p));
    return (int64_t)problems.size() - 1;
}

/* Where the kernels read and write: rows of contiguous elements in `like`'s memory order. */
struct Shape {
    int64_t rows, len, nmix;
};

Shape shape_of(const Problem &p, const Tensor &x, const Tensor &logits) {
    if (!p.channel) return {1, x.numel(), 1};
    int64_t rows = x.size(0) * x.size(1);
    return {rows, rows ? x.numel() / rows : 0, logits.size(0)};
}

void check_inputs(const Problem &p, const Tensor &x, const Tensor &logits, const Tensor &slope) {
    TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat, "adact_native: x must be float32 on CPU, got ",
                x.scalar_type(), " on ", x.device());
    TORCH_CHECK(logits.scalar_type() == at::kFloat && logits.device().is_cpu(),
                "adact_native: logits must be float32 on CPU");
    TORCH_CHECK(logits.size(-1) == p.k, "adact_native: ", logits.size(-1), " logits for a pool of ", p.k);
    if (p.channel) {
        TORCH_CHECK(logits.dim() == 2 && x.dim() >= 2 && x.size(1) == logits.size(0),
                    "adact_native: per-channel logits (C, K) need x of shape (N, C, *)");
    } else {
        TORCH_CHECK(logits.dim() == 1, "adact_native: per-layer logits must be (K,)");
    }
    TORCH_CHECK(slope.scalar_type() == at::kFloat && slope.device().is_cpu() && slope.numel() >= 1,
                "adact_native: slope must be float32 on CPU (any one number when the pool has no PReLU)");
}

/* The tensor the kernels run on: x itself when its memory is one dense block the layout allows
 * (per layer: any dense order, e.g. channels-last; per channel: contiguous), else a contiguous copy. */
Tensor kernel_input(const Problem &p, const Tensor &x) {
    if (x.is_contiguous() || (!p.channel && x.is_non_overlapping_and_dense())) return x;
    return x.contiguous();
}

/* `t` laid out in memory like `like` (a kernel input), so element i of both is the same index. */
Tensor like_memory(const Tensor &t, const Tensor &like) {
    if (t.strides() == like.strides()) return t;
    return at::empty_like(like).copy_(t);
}

/* `out` (laid out like the kernel input) with the strides torch.empty_like(x) has: the fake kernel's.
 * The kernel input is x itself unless x had to be copied, and then empty_like(x) may differ. */
Tensor as_empty_like(const Tensor &out, const Tensor &x, const Tensor &kernel_x) {
    if (kernel_x.is_same(x)) return out;
    Tensor want = at::empty_like(x);
    if (want.strides() == out.strides()) return out;
    return want.copy_(out);
}

int32_t seed_of(const std::optional<Tensor> &seed) {
    if (!seed.has_value() || !seed->defined()) return 0;
    TORCH_CHECK(seed->scalar_type() == at::kInt && seed->numel() == 1 && seed->device().is_cpu(),
                "adact_native: seed must be one int32 on CPU");
    return *seed->contiguous().data_ptr<int32_t>();
}

Tensor mix_cpu(const Tensor &x, const Tensor &logits, const Tensor &slope,
               const std::optional<Tensor> &seed, int64_t problem) {
    const Problem &p = problem_at(problem);
    check_inputs(p, x, logits, slope);
    Tensor xk = kernel_input(p, x);
    Tensor y = at::empty_like(xk);
    if (x.numel() == 0) return as_empty_like(y, x, xk);
    Shape s = shape_of(p, xk, logits);
    Tensor lg = logits.contiguous();
    Tensor sl = slope.contiguous();
    std::vector<float> coef((size_t)s.nmix * N_COEF);
    p.forward(xk.data_ptr<float>(), y.data_ptr<float>(), coef.data(), s.rows, s.len, s.nmix, p.k,
              lg.data_ptr<float>(), p.to_coef.data(), p.from_sums.data(), p.prelu,
              sl.data_ptr<float>(), sl.numel(), seed_of(seed), p.flags, at::get_num_threads());
    return as_empty_like(y, x, xk);
}

std::tuple<Tensor, Tensor, Tensor> mix_backward_cpu(const Tensor &grad, const Tensor &x, const Tensor &logits,
                                                    const Tensor &slope,
                                                    const std::optional<Tensor> &seed, int64_t problem) {
    const Problem &p = problem_at(problem);
    check_inputs(p, x, logits, slope);
    TORCH_CHECK(grad.sizes() == x.sizes() && grad.scalar_type() == at::kFloat,
                "adact_native: grad must be float32 shaped like x");
    Tensor lg = logits.contiguous();
    Tensor sl = slope.contiguous();
    Tensor glogits = at::empty_like(lg);
    Tensor gslope = at::empty_like(sl);
    Tensor xk = kernel_input(p, x);
    Tensor gx = at::empty_like(xk);
    if (x.numel() == 0) {
        glogits.zero_();
        gslope.zero_();
        return {as_empty_like(gx, x, xk), glogits, gslope};
    }
    Tensor g = like_memory(grad, xk);
    Shape s = shape_of(p, xk, logits);
    p.backward(g.data_ptr<float>(), xk.data_ptr<float>(), gx.data_ptr<float>(), glogits.data_ptr<float>(), gslope.data_ptr<float>(),
               s.rows, s.len, s.nmix, p.k, lg.data_ptr<float>(), p.to_coef.data(), p.from_sums.data(), p.prelu,
               sl.data_ptr<float>(), sl.numel(), seed_of(seed), p.flags, at::get_num_threads());
    return {as_empty_like(gx, x, xk), glogits, gslope};
}

using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

using mix_op_t = decltype(mix_cpu);
using mix_backward_op_t = decltype(mix_backward_cpu);

c10::TypedOperatorHandle<mix_op_t> &mix_op() {
    static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("adact_native::mix", "").typed<mix_op_t>();
    return op;
}

struct MixFunctionBackward : public torch::autograd::Node {
    SavedVariable x, logits, slope;
    Tensor seed; /* int32, never differentiable: kept as it is */
    int64_t problem = -1;

    std::string name() const override { return "MixFunctionBackward"; }

    variable_list apply(variable_list &&grads) override {
        static auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("adact_native::mix_backward", "")
                             .typed<mix_backward_op_t>();
        Tensor xv = x.unpack(), lv = logits.unpack(), sv = slope.unpack();
        Tensor grad = grads[0].defined() ? grads[0] : at::zeros_like(xv);
        std::optional<Tensor> s;
        if (seed.defined()) s = seed;
        /* through the Autograd kernel: it refuses a double backward (create_graph=True) */
        auto [gx, glogits, gslope] = op.call(grad, xv, lv, sv, s, problem);
        return {gx, glogits, gslope};
    }

    void release_variables() override {
        x.reset_data();
        logits.reset_data();
        slope.reset_data();
        seed.reset();
    }
};

Tensor mix_autograd(const Tensor &x, const Tensor &logits, const Tensor &slope,
                    const std::optional<Tensor> &seed, int64_t problem) {
    Tensor y;
    {
        at::AutoDispatchBelowADInplaceOrView guard;
        y = mix_op().call(x, logits, slope, seed, problem);
    }
    /* Nothing to differentiate (eval, no_grad, inference mode): no node at all. */
    if (!torch::autograd::compute_requires_grad(x, logits, slope)) return y;
    auto node = c10::make_intrusive<MixFunctionBackward>();
    node->set_next_edges(torch::autograd::collect_next_edges(x, logits, slope));
    node->x = SavedVariable(x, false);
    node->logits = SavedVariable(logits, false);
    node->slope = SavedVariable(slope, false);
    node->seed = seed.value_or(Tensor());
    node->problem = problem;
    torch::autograd::set_history(y, node);
    return y;
}

/* The backward is itself a fused kernel with no derivative: say so rather than return a silently
 * wrong second derivative (what an op without an autograd kernel would do). */
std::tuple<Tensor, Tensor, Tensor> mix_backward_autograd(const Tensor &grad, const Tensor &x, const Tensor &logits,
                                                         const Tensor &slope, const std::optional<Tensor> &seed,
                                                         int64_t problem) {
    TORCH_CHECK(!at::GradMode::is_enabled() || !(grad.requires_grad() || x.requires_grad() ||
                                                  logits.requires_grad() || slope.requires_grad()),
                "adact: double backward through the fused AdAct kernels is not supported; set ADACT_FUSED=off "
                "(adact_reference) for higher-order gradients");
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("adact_native::mix_backward", "")
                         .typed<decltype(mix_backward_cpu)>();
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(grad, x, logits, slope, seed, problem);
}

/* The seed torch.randint(0, 2**31, (), dtype=torch.int32) would draw: its CPU kernel takes one
 * 64-bit draw of the generator (any range of 2**28 or more), modulo the range. Drawn here directly (a tenth of a microsecond
 * instead of a dispatched randint's one and a half) for real CPU tensors; while tracing (fake
 * or functional tensors, a dispatch mode) randint itself, so the graph has the random op. */
Tensor draw_seed(const Tensor &x) {
    bool real = x.is_cpu() && !x.unsafeGetTensorImpl()->is_python_dispatch() &&
                !at::functionalization::impl::isFunctionalTensor(x) && c10::impl::TorchDispatchModeTLS::stack_len() == 0;
    if (!real) return at::randint(0, (int64_t)1 << 31, {}, x.options().dtype(at::kInt));
    auto gen = at::detail::getDefaultCPUGenerator();
    uint64_t bits;
    {
        std::lock_guard<std::mutex> lock(gen.mutex());
        bits = at::check_generator<at::CPUGeneratorImpl>(gen)->random64();
    }
    Tensor seed = at::empty({}, x.options().dtype(at::kInt));
    *seed.data_ptr<int32_t>() = (int32_t)(bits % (1ull << 31));
    return seed;
}

/* The one call a unit makes: the seed comes from x's default generator, like torch.randint's. */
Tensor adact(const Tensor &x, const Tensor &logits, const Tensor &slope, int64_t problem, bool noisy) {
    std::optional<Tensor> seed;
    if (noisy) seed = draw_seed(x);
    return mix_op().call(x, logits, slope, seed, problem);
}

}  // namespace

TORCH_LIBRARY(adact_native, m) {
    m.def("register_problem(int forward, int backward, Tensor to_coef, Tensor from_sums, int prelu, int flags, "
          "bool channel) -> int");
    m.def("mix(Tensor x, Tensor logits, Tensor slope, Tensor? seed, int problem) -> Tensor",
          {at::Tag::pt2_compliant_tag});
    m.def("mix_backward(Tensor grad, Tensor x, Tensor logits, Tensor slope, Tensor? seed, int problem) -> "
          "(Tensor, Tensor, Tensor)",
          {at::Tag::pt2_compliant_tag});
    m.def("adact(Tensor x, Tensor logits, Tensor slope, int problem, bool noisy) -> Tensor",
          {at::Tag::pt2_compliant_tag});
    m.impl("register_problem", c10::DispatchKey::CatchAll, &register_problem);
}

TORCH_LIBRARY_IMPL(adact_native, CPU, m) {
    m.impl("mix", &mix_cpu);
    m.impl("mix_backward", &mix_backward_cpu);
}

TORCH_LIBRARY_IMPL(adact_native, Autograd, m) {
    m.impl("mix", &mix_autograd);
    m.impl("mix_backward", &mix_backward_autograd);
}

TORCH_LIBRARY_IMPL(adact_native, CompositeImplicitAutograd, m) { m.impl("adact", &adact); }
