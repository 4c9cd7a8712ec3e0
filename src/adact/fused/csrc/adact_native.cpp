/* Hand-vectorised fused AdAct kernels for float32 on CPU (see adact/fused/native.py).
 *
 * The math is adact/fused/inductor.py's, written once more with GCC vector extensions so that the
 * compiler emits whatever SIMD the machine has (-march=native: AVX-512, AVX2, NEON) and so that
 * the few places where Inductor's generic lowering is wasteful are not: the exponential is a
 * cubic polynomial with a power-of-two scale (its intermediate exp(r) - 1 doubles as ELU's
 * expm1 near 0, so ELU needs no polynomial of its own), and each of the six parameter sums is one
 * masked accumulate.
 *
 * Work is cut into fixed chunks of at most CHUNK elements within rows; every chunk writes its own
 * partial sums, which are added up in chunk order afterwards, so the sums do not depend on the
 * number of threads (no atomics, no thread-order effects).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

/* Lanes per vector: the target's native register width, so that every vector value is one register
 * and no operation is split or done lane by lane (AVX-512: 16 floats, AVX/AVX2: 8, SSE2/NEON: 4). */
#if defined(__AVX512F__)
#define W 16
#elif defined(__AVX__)
#define W 8
#else
#define W 4
#endif
#define CHUNK 4096 /* elements per work item (a multiple of GROUP) */

typedef float vf __attribute__((vector_size(4 * W)));
typedef int32_t vi __attribute__((vector_size(4 * W)));
typedef uint32_t vu __attribute__((vector_size(4 * W)));

enum { F_LINEAR = 1, F_NEG_LINEAR = 2, F_NOISY = 4, F_ELU = 8, F_SILU = 16, F_MISH = 32 };
enum { A_POS, A_NEG, RR_LOWER, RR_SPAN, P_ELU, P_SILU, P_MISH, N_COEF };
enum { S_POS, S_NEG, S_NOISE, S_ELU, S_SILU, S_MISH, N_SUMS };

static inline vf splat(float v) { return (vf){0} + v; }
static inline vf load(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void store(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline vf sel(vi m, vf a, vf b) { return m ? a : b; } /* a where m, else b */

static inline vu iota(uint32_t base) {
    vu v;
    for (int i = 0; i < W; i++) v[i] = base + (uint32_t)i;
    return v;
}

/* Per-element quantities both passes need (names as in fused/inductor.py: _Common). */
typedef struct {
    vi neg; /* x <= 0 (false for NaN) */
    vf t; /* exp(-|x|) */
    vf u; /* expm1(-|x|) */
    vf slope_neg; /* linear slope for x <= 0, noise included */
    vf noise; /* RReLU's draw as its 16 bits, 0 .. 65535 (see fold_noise) */
    vf sig, q, tsp, inv_den;
} common_t;

/* exp(a) and expm1(a) for a <= 0 or NaN. Cody-Waite reduction a = k ln2 + r, |r| <= ln2/2, and
 * exp(r) - 1 = r + r^2 P(r) with a cubic P (within 2 ulp). For |a| < ln2/2, k = 0 and that
 * is expm1(a) at full relative precision; beyond, exp(a) - 1 loses at most 2 bits (|result| > 0.29).
 * The scale 2^k goes in two steps, 2^(k+64) then 2^-64, so that results down to the smallest
 * denormal round once, correctly. */
static inline void exp_expm1(vf a, vf *t, vf *u) {
    a = a < -104.0f ? splat(-104.0f) : a; /* exp(-104) rounds to 0; NaN stays NaN */
    vf fx = a * 1.44269504088896341f;
#if defined(__AVX512F__) && W == 16
    vf k = (vf)_mm512_roundscale_ps((__m512)fx, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
    vf k = (fx + 12582912.0f) - 12582912.0f; /* round to nearest (|fx| < 2^22) */
#endif
    vf r = a - k * 0.693359375f;
    r = r - k * -2.12194440e-4f;
    /* P fitted to (e^r - 1 - r) / r^2 for the relative error of e^r: at most 1.2e-7 (2 ulp) */
    vf p = splat(8.333837613463402e-3f);
    p = p * r + 4.189857840538025e-2f;
    p = p * r + 1.666688621044159e-1f;
    p = p * r + 4.9999141693115234e-1f;
    vf em1 = p * (r * r) + r;
#if defined(__AVX512F__) && W == 16
    vf e = (vf)_mm512_scalef_ps((__m512)(em1 + 1.0f), (__m512)k);
    *t = e;
    *u = k == 0.0f ? em1 : e - 1.0f;
#else
    vi ki = __builtin_convertvector(k, vi);
    vi bits = (ki + (127 + 64)) << 23;
    vf scale;
    memcpy(&scale, &bits, sizeof scale);
    vf e = ((em1 + 1.0f) * scale) * 0x1p-64f;
    *t = e;
    *u = ki == 0 ? em1 : e - 1.0f;
#endif
}

/* 1 / d for d in [1, 10] (or NaN). AVX-512's 14-bit estimate after one Newton step is within
 * 2^-27 (a division costs several times more); the 12-bit estimates of SSE/AVX (and NEON's 8)
 * would need two steps, since after one the result is always low by up to 2^-22, a bias that
 * the parameter sums accumulate. There a division is as fast (one per vector) and exact. */
static inline vf recip(vf d) {
#if defined(__AVX512F__)
    vf r = (vf)_mm512_rcp14_ps((__m512)d);
    return r * (2.0f - d * r);
#else
    return 1.0f / d;
#endif
}

/* RReLU's noise layout is fixed, whatever W is, so every ISA, Inductor and eager draw the same bits:
 * hashes come in blocks of NW = 16 and each hash feeds PER_HASH draws. */
#define NW 16
#define PER_HASH 2 /* noise draws per 32-bit hash */
#define NOISE_BITS (32 / PER_HASH)
#define GROUP (NW * PER_HASH) /* elements that share one block of NW hashes */
#define HV (NW / W) /* vectors per block of hashes */

/* Wellons' lowbias32: a 32-bit integer mix. */
static inline vu hash32(vu h) {
    h ^= h >> 16;
    h *= 0x7FEB352Du;
    h ^= h >> 15;
    h *= 0x846CA68Bu;
    h ^= h >> 16;
    return h;
}

/* The draw is u = (bits + 1/2) / 2^16; the kernels carry the bits as a float and fold the scale
 * into the coefficients (fold_noise) and, for the sum, into the epilogue (backward_rows). */
static inline vf bits_to_float(vu bits) {
    return __builtin_convertvector((vi)(bits & ((1u << NOISE_BITS) - 1u)), vf);
}

/* The 16 bits of RReLU's draws for elements e0 .. e0 + W - 1 (flat indices mod 2^32), any alignment:
 * element e takes bits [NOISE_BITS * v, NOISE_BITS * (v + 1)) of hash32(p ^ seed), with
 * p = (e / GROUP) * NW + e % NW and v = (e / NW) % PER_HASH. */
static inline vf noise_at(uint32_t e0, uint32_t seed) {
    vu e = iota(e0);
    vu p = (e / GROUP) * NW + e % NW;
    vu v = (e / NW) % PER_HASH;
    return bits_to_float(hash32(p ^ seed) >> (v * NOISE_BITS));
}

static inline common_t common(vf x, const float *c, int flags, vf noise) {
    common_t k;
    k.neg = x <= 0.0f;
    vf a;
    {
        vi bits;
        memcpy(&bits, &x, sizeof bits);
        bits |= (vi){0} + (int32_t)0x80000000; /* -|x| */
        memcpy(&a, &bits, sizeof a);
    }
    exp_expm1(a, &k.t, &k.u);
    k.slope_neg = splat(c[A_NEG]);
    if (flags & F_NOISY) {
        k.noise = noise;
        k.slope_neg = k.slope_neg + c[RR_SPAN] * k.noise; /* coefficients folded: fold_noise */
    }
    vf t = k.t, one_t = 1.0f + t, num = {0};
    if (flags & F_MISH) {
        /* (1 + 2t) / (1 + 2t + 2t^2) for x > 0, (2t + t^2) / (2 + 2t + t^2) otherwise */
        num = sel(k.neg, t * (2.0f + t), 1.0f + 2.0f * t);
        vf den = num + sel(k.neg, splat(2.0f), (2.0f * t) * t);
        if (flags & F_SILU) {
            vf inv = recip(one_t * den);
            k.q = den * inv;
            k.inv_den = one_t * inv;
        } else {
            k.inv_den = recip(den);
        }
        k.tsp = num * k.inv_den;
    } else if (flags & F_SILU) {
        k.q = recip(one_t);
    }
    if (flags & F_SILU) k.sig = sel(k.neg, t * k.q, k.q);
    return k;
}

static inline vf forward_vec(vf x, const float *c, int flags, vf noise) {
    common_t k = common(x, c, flags, noise);
    vf y = {0};
    int has_neg = flags & (F_NEG_LINEAR | F_NOISY | F_ELU);
    vf if_neg = {0}, if_pos = {0};
    if (flags & (F_NEG_LINEAR | F_NOISY)) if_neg = x * k.slope_neg;
    if (flags & F_ELU) if_neg = (flags & (F_NEG_LINEAR | F_NOISY)) ? if_neg + c[P_ELU] * k.u : c[P_ELU] * k.u;
    if (flags & F_LINEAR) if_pos = x * c[A_POS];
    if (has_neg || (flags & F_LINEAR)) y = sel(k.neg, if_neg, if_pos);
    /* x * (p_silu * sigmoid + p_mish * tanh(softplus)): at x = -inf, -inf * 0 = NaN as in F.silu */
    if (flags & (F_SILU | F_MISH)) {
        vf curved;
        if ((flags & F_SILU) && (flags & F_MISH)) curved = c[P_SILU] * k.sig + c[P_MISH] * k.tsp;
        else if (flags & F_SILU) curved = c[P_SILU] * k.sig;
        else curved = c[P_MISH] * k.tsp;
        y = (has_neg || (flags & F_LINEAR)) ? y + x * curved : x * curved;
    }
    return y;
}

/* One backward vector: returns grad_x, adds this vector's terms to the six sum accumulators. */
static inline vf backward_vec(vf g, vf x, const float *c, int flags, vf noise, vf *acc) {
    common_t k = common(x, c, flags, noise);
    const vf zero = {0};
    vf gx = g * x;
    if (flags & F_LINEAR) acc[S_POS] += sel(k.neg, zero, gx);
    if (flags & (F_NEG_LINEAR | F_NOISY)) acc[S_NEG] += sel(k.neg, gx, zero);
    if (flags & F_NOISY) acc[S_NOISE] += sel(k.neg, gx * k.noise, zero); /* bits: see backward_rows */
    if (flags & F_ELU) acc[S_ELU] += sel(k.neg, g * k.u, zero);
    if (flags & F_SILU) acc[S_SILU] += gx * k.sig;
    if (flags & F_MISH) acc[S_MISH] += gx * k.tsp;

    vf if_neg = zero;
    if (flags & (F_NEG_LINEAR | F_NOISY)) if_neg = k.slope_neg;
    if (flags & F_ELU) if_neg = if_neg + c[P_ELU] * k.t;
    vf dx = sel(k.neg, if_neg, (flags & F_LINEAR) ? splat(c[A_POS]) : zero);
    vf times_x = zero;
    if (flags & F_SILU) {
        dx = dx + c[P_SILU] * k.sig;
        times_x = c[P_SILU] * ((k.t * k.q) * k.q); /* sigmoid' = t / (1 + t)^2 */
    }
    if (flags & F_MISH) {
        dx = dx + c[P_MISH] * k.tsp;
        /* (1 - tanh(softplus)^2) * sigmoid = 4t(1 + t) * (t if x > 0 else 1) / den^2 */
        vf s = (4.0f * k.t * (1.0f + k.t)) * sel(k.neg, splat(1.0f), k.t) * (k.inv_den * k.inv_den);
        times_x = times_x + c[P_MISH] * s;
    }
    if (flags & (F_SILU | F_MISH)) dx = dx + x * times_x;
    return g * dx;
}

/* A private copy of one mixture's coefficients (a local the compiler knows the outputs cannot
 * overwrite, so they stay in registers), with RReLU's noise scale folded in: the slope for x <= 0
 * is a_neg + lower + span * (bits + 1/2) / 2^16 = c[A_NEG] + c[RR_SPAN] * bits after folding. */
static inline void fold_noise(const float *c, int flags, float *cl) {
    memcpy(cl, c, N_COEF * sizeof(float));
    if (flags & F_NOISY) {
        cl[A_NEG] = c[A_NEG] + c[RR_LOWER] + c[RR_SPAN] * (0.5f / (1u << NOISE_BITS));
        cl[RR_SPAN] = c[RR_SPAN] * (1.0f / (1u << NOISE_BITS));
    }
}

/* cnt <= W elements at p as a vector, zero-padded; and back (only the cnt elements). */
static inline vf load_n(const float *p, int64_t cnt) {
    if (cnt == W) return load(p);
    float buf[W] = {0};
    memcpy(buf, p, (size_t)cnt * sizeof(float));
    return load(buf);
}
static inline void store_n(float *p, vf v, int64_t cnt) {
    if (cnt == W) return store(p, v);
    float buf[W];
    store(buf, v);
    memcpy(p, buf, (size_t)cnt * sizeof(float));
}

/* Elements [off, off + n) of one row, a vector at a time: body(at, cnt, noise) handles the cnt
 * (W, or fewer for the tail) elements from flat index `at`, with their RReLU draws (bits) when
 * noisy. GROUP elements per step where possible, their noise from one block of HV hash vectors
 * (also without noise: independent vectors per step schedule better). */
template <class Body>
static inline void for_each_vector(int64_t off, int64_t n, int flags, uint32_t seed, Body body) {
    const int noisy = flags & F_NOISY;
    const vf none = {0};
    int64_t j = 0;
    for (; j + GROUP <= n && (!noisy || (uint32_t)(off + j) % GROUP == 0); j += GROUP) {
        vu h[HV];
        for (int i = 0; i < HV; i++)
            h[i] = noisy ? hash32((((uint32_t)(off + j) / GROUP) * NW + i * W + iota(0)) ^ seed) : (vu){0};
        /* one vector at a time: unrolled, the compiler interleaves them and spills (AVX2, SSE) */
#pragma GCC unroll 1
        for (int v = 0; v < PER_HASH; v++)
#pragma GCC unroll 1
            for (int i = 0; i < HV; i++)
                body(off + j + v * NW + i * W, W, noisy ? bits_to_float(h[i] >> (v * NOISE_BITS)) : none);
    }
    for (; j < n; j += W) /* unaligned start, remaining vectors, zero-padded tail */
        body(off + j, n - j < W ? n - j : W, noisy ? noise_at((uint32_t)(off + j), seed) : none);
}

static inline void forward_span(const float *x, float *y, int64_t off, int64_t n, const float *coef, int flags,
                                uint32_t seed) {
    float c[N_COEF];
    fold_noise(coef, flags, c);
    for_each_vector(off, n, flags, seed, [&](int64_t at, int64_t cnt, vf noise) {
        store_n(y + at, forward_vec(load_n(x + at, cnt), c, flags, noise), cnt);
    });
}

/* The backward of forward_span; adds to the float32 lane accumulators acc (zero-padded tail
 * lanes add 0 * f(0) = 0 to every sum). */
static inline void backward_span(const float *g, const float *x, float *gx, int64_t off, int64_t n,
                                 const float *coef, int flags, uint32_t seed, vf *acc) {
    float c[N_COEF];
    fold_noise(coef, flags, c);
    for_each_vector(off, n, flags, seed, [&](int64_t at, int64_t cnt, vf noise) {
        store_n(gx + at, backward_vec(load_n(g + at, cnt), load_n(x + at, cnt), c, flags, noise, acc), cnt);
    });
}

/* The mixture algebra of fused/inductor.py (mixture_coefficients, parameter_grads) in float64.
 * A pool of K candidates maps its softmax weights p to the kernel's 7 coefficients through the
 * constant K x 7 matrix to_coef, plus PReLU's slope w times p[prelu] on A_NEG; the 6 sums map back
 * to per-candidate sums through the 6 x K matrix from_sums. mix_t holds one problem's constants. */
typedef struct {
    int64_t nmix, K; /* mixtures (1, or C channels) and candidates */
    const float *logits; /* nmix x K */
    const double *to_coef; /* K x 7 */
    const double *from_sums; /* 6 x K */
    int64_t prelu; /* slot of "prelu" in the pool, -1 if absent */
    const float *slope; /* PReLU slope: nslope = 1 (shared) or nmix values */
    int64_t nslope;
} mix_t;

static void softmax_row(const float *l, int64_t K, double *p) {
    double top = -INFINITY, total = 0.0;
    for (int64_t k = 0; k < K; k++) top = l[k] > top ? l[k] : top;
    for (int64_t k = 0; k < K; k++) total += p[k] = exp((double)l[k] - top);
    for (int64_t k = 0; k < K; k++) p[k] /= total;
}

/* coef (nmix x 7, float32) and p (nmix x K, float64) */
static void mixture_coefficients(const mix_t *m, float *coef, double *p) {
    for (int64_t r = 0; r < m->nmix; r++) {
        double *pr = p + r * m->K;
        softmax_row(m->logits + r * m->K, m->K, pr);
        for (int j = 0; j < N_COEF; j++) {
            double v = 0.0;
            for (int64_t k = 0; k < m->K; k++) v += pr[k] * m->to_coef[k * N_COEF + j];
            if (j == A_NEG && m->prelu >= 0) v += (double)m->slope[m->nslope == 1 ? 0 : r] * pr[m->prelu];
            coef[r * N_COEF + j] = (float)v;
        }
    }
}

/* dL/dlogits = p * (G - p.G) with G_k = sum(g * f_k(x)), and dL/dslope = p[prelu] * S_NEG. */
static void parameter_grads(const mix_t *m, const double *sums, const double *p, float *grad_logits, float *grad_slope) {
    double *gm = (double *)malloc((size_t)m->K * sizeof(double));
    for (int64_t i = 0; i < m->nslope; i++) grad_slope[i] = 0.0f;
    double shared = 0.0;
    for (int64_t r = 0; r < m->nmix; r++) {
        const double *sr = sums + r * N_SUMS, *pr = p + r * m->K;
        double dot = 0.0;
        for (int64_t k = 0; k < m->K; k++) {
            double v = 0.0;
            for (int s = 0; s < N_SUMS; s++) v += sr[s] * m->from_sums[s * m->K + k];
            if (k == m->prelu) v += (double)m->slope[m->nslope == 1 ? 0 : r] * sr[S_NEG];
            gm[k] = v;
            dot += pr[k] * v;
        }
        for (int64_t k = 0; k < m->K; k++) grad_logits[r * m->K + k] = (float)(pr[k] * (gm[k] - dot));
        if (m->prelu >= 0) {
            double gw = pr[m->prelu] * sr[S_NEG];
            if (m->nslope == 1) shared += gw;
            else grad_slope[r] = (float)gw;
        }
    }
    if (m->prelu >= 0 && m->nslope == 1) grad_slope[0] = (float)shared;
    free(gm);
}

/* Flags known at compile time (FIXED >= 0) fold every `flags & F_...` test in the hot loops away and
 * free the registers of the terms a pool lacks; FIXED = -1 reads them at run time (see SPECIALISED). */
#define FLAGS_OF(FIXED, runtime) ((FIXED) >= 0 ? (FIXED) : (runtime))

/* y = AdAct(x) over `rows` rows of `len` elements; row r uses coefficients coef[(r % ncoef) * 7 ..]. */
template <int FIXED>
static void forward_rows(const float *x, float *y, int64_t rows, int64_t len, const float *coef, int64_t ncoef,
                         int32_t seed, int32_t runtime_flags, int32_t threads) {
    const int flags = FLAGS_OF(FIXED, runtime_flags);
    int64_t per_row = (len + CHUNK - 1) / CHUNK, items = rows * per_row;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && items > 1)
    for (int64_t it = 0; it < items; it++) {
        int64_t row = it / per_row, start = (it % per_row) * CHUNK;
        int64_t n = len - start < CHUNK ? len - start : CHUNK;
        forward_span(x, y, row * len + start, n, coef + (row % ncoef) * N_COEF, flags, (uint32_t)seed);
    }
}

/* grad_x and, per row, the six parameter sums (sums: rows x 6, float64). Lane sums run in float32
 * over at most FLUSH elements (64 per lane, whatever the vector width) and are then added into
 * float64 ones: the sums stay accurate to about float64 precision of float32 terms, cheaply. */
#define FLUSH (64 * W)
template <int FIXED>
static void backward_rows(const float *g, const float *x, float *gx, double *sums, int64_t rows, int64_t len,
                          const float *coef, int64_t ncoef, int32_t seed, int32_t runtime_flags, int32_t threads) {
    const int flags = FLAGS_OF(FIXED, runtime_flags);
    int64_t per_row = (len + CHUNK - 1) / CHUNK, items = rows * per_row;
    double *part = (double *)malloc((size_t)items * N_SUMS * sizeof(double));
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && items > 1)
    for (int64_t it = 0; it < items; it++) {
        int64_t row = it / per_row, start = (it % per_row) * CHUNK;
        int64_t n = len - start < CHUNK ? len - start : CHUNK;
        const float *c = coef + (row % ncoef) * N_COEF;
        double wide[N_SUMS][W] = {{0}};
        for (int64_t b = 0; b < n; b += FLUSH) {
            vf acc[N_SUMS] = {{0}};
            backward_span(g, x, gx, row * len + start + b, n - b < FLUSH ? n - b : FLUSH, c, flags, (uint32_t)seed, acc);
            for (int s = 0; s < N_SUMS; s++)
                for (int i = 0; i < W; i++) wide[s][i] += (double)acc[s][i];
        }
        for (int s = 0; s < N_SUMS; s++) {
            double total = 0.0;
            for (int i = 0; i < W; i++) total += wide[s][i];
            part[it * N_SUMS + s] = total;
        }
    }
    /* row r belongs to mixture r % ncoef; rows in order, chunks in order: deterministic */
    memset(sums, 0, (size_t)ncoef * N_SUMS * sizeof(double));
    for (int64_t row = 0; row < rows; row++)
        for (int s = 0; s < N_SUMS; s++) {
            double total = 0.0;
            for (int64_t i = 0; i < per_row; i++) total += part[(row * per_row + i) * N_SUMS + s];
            sums[(row % ncoef) * N_SUMS + s] += total;
        }
    if (flags & F_NOISY) /* the kernel summed g x bits; the draw is (bits + 1/2) / 2^16 */
        for (int64_t m = 0; m < ncoef; m++)
            sums[m * N_SUMS + S_NOISE] =
                sums[m * N_SUMS + S_NOISE] / (1u << NOISE_BITS) + sums[m * N_SUMS + S_NEG] / (2u << NOISE_BITS);
    free(part);
}

/* The paper's pool in training (RReLU noisy) and in eval mode get their own compiled loops; any other
 * pool runs the generic one. */
#define ALL_FLAGS (F_LINEAR | F_NEG_LINEAR | F_NOISY | F_ELU | F_SILU | F_MISH)
#define SPECIALISED(fn, flags, ...)                                                                  \
    do {                                                                                             \
        if ((flags) == ALL_FLAGS) fn<ALL_FLAGS>(__VA_ARGS__);                                        \
        else if ((flags) == (ALL_FLAGS & ~F_NOISY)) fn<(ALL_FLAGS & ~F_NOISY)>(__VA_ARGS__);         \
        else fn<-1>(__VA_ARGS__);                                                                    \
    } while (0)

/* Entry points. x: `rows` rows of `len` contiguous float32 elements; row r uses mixture r % nmix.
 * The forward also returns the coefficients it used (coef: nmix x 7). */
extern "C" void adact_native_forward(const float *x, float *y, float *coef, int64_t rows, int64_t len, int64_t nmix,
                                     int64_t K, const float *logits, const double *to_coef, const double *from_sums,
                                     int64_t prelu, const float *slope, int64_t nslope, int32_t seed, int32_t flags,
                                     int32_t threads) {
    mix_t m = {nmix, K, logits, to_coef, from_sums, prelu, slope, nslope};
    double *p = (double *)malloc((size_t)(nmix * K) * sizeof(double));
    mixture_coefficients(&m, coef, p);
    free(p);
    SPECIALISED(forward_rows, flags, x, y, rows, len, coef, nmix, seed, flags, threads);
}

extern "C" void adact_native_backward(const float *g, const float *x, float *gx, float *grad_logits,
                                      float *grad_slope, int64_t rows, int64_t len, int64_t nmix, int64_t K,
                                      const float *logits, const double *to_coef, const double *from_sums,
                                      int64_t prelu, const float *slope, int64_t nslope, int32_t seed, int32_t flags,
                                      int32_t threads) {
    mix_t m = {nmix, K, logits, to_coef, from_sums, prelu, slope, nslope};
    float *coef = (float *)malloc((size_t)nmix * N_COEF * sizeof(float));
    double *p = (double *)malloc((size_t)(nmix * K) * sizeof(double));
    double *sums = (double *)malloc((size_t)nmix * N_SUMS * sizeof(double));
    mixture_coefficients(&m, coef, p);
    SPECIALISED(backward_rows, flags, g, x, gx, sums, rows, len, coef, nmix, seed, flags, threads);
    parameter_grads(&m, sums, p, grad_logits, grad_slope);
    free(coef);
    free(p);
    free(sums);
}
