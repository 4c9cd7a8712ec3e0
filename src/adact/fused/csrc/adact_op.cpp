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
 * The autograd node keeps x, the parameters and the seed, nothing else: the backward recomputes
 * the mixture and regenerates RReLU's noise from the seed. Fake (meta) kernels for torch.compile
 * are registered from Python (adact/fused/native_op.py). */
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>
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

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class MixFunction : public torch::autograd::Function<MixFunction> {
  public:
    static Tensor forward(AutogradContext *ctx, const Tensor &x, const Tensor &logits,
                          const Tensor &slope, const std::optional<Tensor> &seed, int64_t problem) {
        static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("adact_native::mix", "").typed<decltype(mix_cpu)>();
        Tensor y;
        {
            at::AutoDispatchBelowADInplaceOrView guard;
            y = op.call(x, logits, slope, seed, problem);
        }
        ctx->save_for_backward({x, logits, slope, seed.value_or(Tensor())});
        ctx->saved_data["problem"] = problem;
        return y;
    }

    static variable_list backward(AutogradContext *ctx, variable_list grads) {
        static auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("adact_native::mix_backward", "")
                             .typed<decltype(mix_backward_cpu)>();
        variable_list saved = ctx->get_saved_variables();
        std::optional<Tensor> seed;
        if (saved[3].defined()) seed = saved[3];
        Tensor grad = grads[0];
        if (!grad.defined()) grad = at::zeros_like(saved[0]);
        auto [gx, glogits, gslope] = op.call(grad, saved[0], saved[1], saved[2], seed, ctx->saved_data["problem"].toInt());
        return {gx, glogits, gslope, Tensor(), Tensor()};
    }
};

Tensor mix_autograd(const Tensor &x, const Tensor &logits, const Tensor &slope,
                    const std::optional<Tensor> &seed, int64_t problem) {
    if (!at::GradMode::is_enabled() || !(x.requires_grad() || logits.requires_grad() || slope.requires_grad())) {
        /* Nothing to differentiate (eval, no_grad): skip building an autograd node. */
        static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("adact_native::mix", "").typed<decltype(mix_cpu)>();
        at::AutoDispatchBelowADInplaceOrView guard;
        return op.call(x, logits, slope, seed, problem);
    }
    return MixFunction::apply(x, logits, slope, seed, problem);
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

/* The one call a unit makes: the seed comes from x's default generator, like torch.randint's. */
Tensor adact(const Tensor &x, const Tensor &logits, const Tensor &slope, int64_t problem, bool noisy) {
    static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("adact_native::mix", "").typed<decltype(mix_cpu)>();
    std::optional<Tensor> seed;
    if (noisy) seed = at::randint(0, (int64_t)1 << 31, {}, x.options().dtype(at::kInt));
    return op.call(x, logits, slope, seed, problem);
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
