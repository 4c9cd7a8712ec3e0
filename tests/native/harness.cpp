/* Runs the native AdAct kernels on inputs from a file and writes their outputs: lets the tests check
 * a build for another CPU (aarch64 NEON under qemu-user) against this machine's, with no Python there.
 *
 *   harness IN OUT
 *
 * IN: 10 int64 (rows, len, nmix, K, prelu, nslope, seed, flags, threads, n), then float32 x[n],
 * g[n], logits[nmix*K], slope[nslope], then float64 to_coef[K*7], from_sums[6*K].
 * OUT: float32 y[n], coef[nmix*7], gx[n], grad_logits[nmix*K], grad_slope[nslope]. */
#include "../../src/adact/fused/csrc/adact_native.cpp"

#include <stdio.h>
#include <vector>

template <class T> static std::vector<T> take(FILE *f, int64_t n) {
    std::vector<T> v((size_t)n);
    if (n && fread(v.data(), sizeof(T), (size_t)n, f) != (size_t)n) exit(3);
    return v;
}
template <class T> static void put(FILE *f, const std::vector<T> &v) {
    if (!v.empty() && fwrite(v.data(), sizeof(T), v.size(), f) != v.size()) exit(4);
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    FILE *in = fopen(argv[1], "rb");
    if (!in) return 2;
    std::vector<int64_t> h = take<int64_t>(in, 10);
    int64_t rows = h[0], len = h[1], nmix = h[2], K = h[3], prelu = h[4], nslope = h[5], n = h[9];
    int32_t seed = (int32_t)h[6], flags = (int32_t)h[7], threads = (int32_t)h[8];
    auto x = take<float>(in, n), g = take<float>(in, n), logits = take<float>(in, nmix * K);
    auto slope = take<float>(in, nslope);
    auto to_coef = take<double>(in, K * 7), from_sums = take<double>(in, 6 * K);
    fclose(in);
    std::vector<float> y(n), coef(nmix * 7), gx(n), glogits(nmix * K), gslope(nslope);
    adact_native_forward(x.data(), y.data(), coef.data(), rows, len, nmix, K, logits.data(), to_coef.data(),
                         from_sums.data(), prelu, slope.data(), nslope, seed, flags, threads);
    adact_native_backward(g.data(), x.data(), gx.data(), glogits.data(), gslope.data(), rows, len, nmix, K,
                          logits.data(), to_coef.data(), from_sums.data(), prelu, slope.data(), nslope, seed, flags,
                          threads);
    FILE *out = fopen(argv[2], "wb");
    if (!out) return 2;
    put(out, y), put(out, coef), put(out, gx), put(out, glogits), put(out, gslope);
    fclose(out);
    return 0;
}
