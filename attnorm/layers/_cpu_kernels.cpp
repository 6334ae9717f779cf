// AN's passes over the map on the CPU, fused per chunk of pixels (attnorm.layers.cpu_fused).
//
// The layer's products are small matrices against (k, hw) maps: K = c or n (16 in the CPU presets)
// on one side, the pixels on the other. Run as batched BLAS calls they reach a fifth of the core's
// sgemm rate and every step is a separate pass over memory, plus a copy to and from NCHW for a
// channels-last input. Here each sample's map is walked in chunks of pixels that stay in cache:
// every product of one chunk is done by two register-blocked micro-kernels ("expand": a small matrix
// times a chunk of map rows; "reduce": sums over the chunk's pixels, in 16 lanes summed in double at the end), the
// elementwise steps run on the chunk in between, and a channels-last map is read and written in its
// own layout. The maths is the layer's (attentive._AttentiveNormFn, variance "algorithm1"):
//   fwd1: [logits; Vc] = W X + bias, S = softmax_n(logits), S2 = S^2, Vv = Vc^2,
//         m = Vc [S; S2]^T, a = Vv S2^T, ssum = rowsums of [S; S2]
//   fwd2: T = P S, Y = X - Q S + Vc * T
//   bwd1: gv = gY * Vc, g_p = gv S^T, gs_t = gY S^T, gS = P^T gv - Q^T gY
//   bwd2: gV = delta + gY * T + g_m [S; S2] + 2 Vc * (g_a S2),
//         gS += g_u^T Vc + g_total + 2 S * (g_r^T Vc + g_a^T Vv + g_s2) (+ g_layout),
//         gZ = S * gS - S * sum_n(S * gS), gX = gY + W^T [gZ; gV], gW = [gZ; gV] X^T
// Compiled at first use by the system's C++ compiler (GCC or Clang vector extensions; one
// 16-float vector type, lowered to whatever SIMD the machine has) and called through ctypes.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

typedef float vf __attribute__((vector_size(64)));
typedef float vfu __attribute__((vector_size(64), aligned(4)));
typedef int32_t vi __attribute__((vector_size(64)));
static const long LANES = 16;

static inline vf ld(const float* p) { return *(const vfu*)p; }
static inline void st(float* p, vf v) { *(vfu*)p = v; }
static inline vf bc(float s) { return vf{} + s; }
// Holds a loaded vector in a register: without it GCC re-reads it from memory as an operand of
// every multiply-add that uses it (one load per FMA), which measured load-bound.
#if defined(__GNUC__) && defined(__AVX512F__)
#define keep(v) __asm__("" : "+v"(v))
#else
#define keep(v) (void)0
#endif

// exp for x <= 88: Cody-Waite reduction to [-ln2/2, ln2/2], degree-7 Taylor polynomial (relative
// error < 1e-7 there), 2^k by the exponent bits; below -87 it returns exp(-87) ~ 1.6e-38.
static inline vf vexp(vf x) {
    const vf lo = bc(-87.0f), hi = bc(88.0f);
    x = x < lo ? lo : x;
    x = x > hi ? hi : x;
    const vf magic = bc(12582912.0f);  // 1.5 * 2^23: adding and subtracting it rounds to an integer
    vf kf = (x * 1.44269504088896341f + magic) - magic;
    vf f = x - kf * 0.693145751953125f;
    f = f - kf * 1.428606765330187045e-06f;
    vf p = bc(1.f / 5040.f);
    p = p * f + 1.f / 720.f;
    p = p * f + 1.f / 120.f;
    p = p * f + 1.f / 24.f;
    p = p * f + 1.f / 6.f;
    p = p * f + 0.5f;
    p = p * f + 1.f;
    p = p * f + 1.f;
    vi bits = (__builtin_convertvector(kf, vi) + 127) << 23;
    vf scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

// ------------------------------------------------------------------------------ micro-kernels
// expand: Y[r][p] = init[r][p] + sum_k A[r][k] X[k][p]  for r < M, p < P, where init is
// add[r][p] (when add is given) or bias[r] (when given) or 0, plus Y's own value when acc.
template <int MR>
static inline void expand_rows(long K, long P, const float* A, long lda, const float* X, long ldx,
                               float* Y, long ldy, const float* add, long ldadd, const float* bias, bool acc) {
    long p = 0;
    for (; p + 4 * LANES <= P; p += 4 * LANES) {
        vf s[MR][4];
        for (int i = 0; i < MR; ++i)
            for (int v = 0; v < 4; ++v) {
                vf init = add ? ld(add + i * ldadd + p + v * LANES) : bc(bias ? bias[i] : 0.f);
                if (acc) init += ld(Y + i * ldy + p + v * LANES);
                s[i][v] = init;
            }
        for (long k = 0; k < K; ++k) {
            const float* xr = X + k * ldx + p;
            vf x0 = ld(xr), x1 = ld(xr + LANES), x2 = ld(xr + 2 * LANES), x3 = ld(xr + 3 * LANES);
            keep(x0);
            keep(x1);
            keep(x2);
            keep(x3);
            for (int i = 0; i < MR; ++i) {
                vf w = bc(A[i * lda + k]);
                s[i][0] += w * x0;
                s[i][1] += w * x1;
                s[i][2] += w * x2;
                s[i][3] += w * x3;
            }
        }
        for (int i = 0; i < MR; ++i)
            for (int v = 0; v < 4; ++v) st(Y + i * ldy + p + v * LANES, s[i][v]);
    }
    for (; p + LANES <= P; p += LANES) {
        vf s[MR];
        for (int i = 0; i < MR; ++i) {
            vf init = add ? ld(add + i * ldadd + p) : bc(bias ? bias[i] : 0.f);
            if (acc) init += ld(Y + i * ldy + p);
            s[i] = init;
        }
        for (long k = 0; k < K; ++k) {
            vf x0 = ld(X + k * ldx + p);
            for (int i = 0; i < MR; ++i) s[i] += bc(A[i * lda + k]) * x0;
        }
        for (int i = 0; i < MR; ++i) st(Y + i * ldy + p, s[i]);
    }
    for (; p < P; ++p)
        for (int i = 0; i < MR; ++i) {
            float s = add ? add[i * ldadd + p] : (bias ? bias[i] : 0.f);
            if (acc) s += Y[i * ldy + p];
            for (long k = 0; k < K; ++k) s += A[i * lda + k] * X[k * ldx + p];
            Y[i * ldy + p] = s;
        }
}

static void expand(long M, long K, long P, const float* A, long lda, const float* X, long ldx,
                   float* Y, long ldy, const float* add = nullptr, long ldadd = 0,
                   const float* bias = nullptr, bool acc = false) {
    long r = 0;
    for (; r + 4 <= M; r += 4)
        expand_rows<4>(K, P, A + r * lda, lda, X, ldx, Y + r * ldy, ldy, add ? add + r * ldadd : nullptr, ldadd,
                       bias ? bias + r : nullptr, acc);
    for (; r < M; ++r)
        expand_rows<1>(K, P, A + r * lda, lda, X, ldx, Y + r * ldy, ldy, add ? add + r * ldadd : nullptr, ldadd,
                       bias ? bias + r : nullptr, acc);
}

// reduce: Z[i][j] += sum_{p < P} X[i][p] Y[j][p] for i < M, j < N, where each Z[i][j] is a vector of
// 16 partial sums (summed across its lanes, in double, by finish() once per sample).
template <int MI, int NJ>
static inline void reduce_block(long P, const float* X, long ldx, const float* Y, long ldy, vf* Z, long ldz) {
    vf s[MI][NJ];
    for (int i = 0; i < MI; ++i)
        for (int j = 0; j < NJ; ++j) s[i][j] = vf{};
    long p = 0;
    for (; p + LANES <= P; p += LANES) {
        vf xv[MI], yv[NJ];
        for (int i = 0; i < MI; ++i) {
            xv[i] = ld(X + i * ldx + p);
            keep(xv[i]);
        }
        for (int j = 0; j < NJ; ++j) {
            yv[j] = ld(Y + j * ldy + p);
            keep(yv[j]);
        }
        for (int i = 0; i < MI; ++i)
            for (int j = 0; j < NJ; ++j) s[i][j] += xv[i] * yv[j];
    }
    for (int i = 0; i < MI; ++i)
        for (int j = 0; j < NJ; ++j) {
            vf acc = s[i][j];
            float t = 0.f;
            for (long q = p; q < P; ++q) t += X[i * ldx + q] * Y[j * ldy + q];
            acc[0] += t;
            Z[i * ldz + j] += acc;
        }
}

static void reduce(long M, long N, long P, const float* X, long ldx, const float* Y, long ldy, vf* Z, long ldz) {
    long i = 0;
    for (; i + 4 <= M; i += 4) {
        long j = 0;
        for (; j + 4 <= N; j += 4) reduce_block<4, 4>(P, X + i * ldx, ldx, Y + j * ldy, ldy, Z + i * ldz + j, ldz);
        for (; j < N; ++j) reduce_block<4, 1>(P, X + i * ldx, ldx, Y + j * ldy, ldy, Z + i * ldz + j, ldz);
    }
    for (; i < M; ++i) {
        long j = 0;
        for (; j + 4 <= N; j += 4) reduce_block<1, 4>(P, X + i * ldx, ldx, Y + j * ldy, ldy, Z + i * ldz + j, ldz);
        for (; j < N; ++j) reduce_block<1, 1>(P, X + i * ldx, ldx, Y + j * ldy, ldy, Z + i * ldz + j, ldz);
    }
}

static void rowsums(long M, long P, const float* X, long ldx, vf* z) {
    for (long i = 0; i < M; ++i) {
        const float* x = X + i * ldx;
        vf s = vf{};
        long p = 0;
        for (; p + LANES <= P; p += LANES) s += ld(x + p);
        for (; p < P; ++p) s[0] += x[p];
        z[i] += s;
    }
}

// out[i] = the sum of z[i]'s lanes (in double), i < count
static void finish(long count, const vf* z, float* out) {
    for (long i = 0; i < count; ++i) {
        double t = 0.0;
        for (int l = 0; l < 16; ++l) t += z[i][l];
        out[i] = (float)t;
    }
}

// ------------------------------------------------------------------------------ chunk I/O
// A map of the caller's, element (k, p) of sample b at base + b*sb + k*sk + p*sp: NCHW maps have
// sp == 1 (used in place), channels-last ones sk == 1 (transposed through a chunk buffer).
struct Map {
    const float* base;
    long sb, sk, sp;
};

#if defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define HAVE_SHUFFLE 1
#endif
#endif

#ifdef HAVE_SHUFFLE
// In-register transpose of a 16 x 16 block: r[i] lane j -> r[j] lane i. Stage d swaps bit d of
// the vector index with bit d of the lane index, pairing r[v] and r[v + d].
#define SHUF(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
static inline void transpose16(vf* r) {
    for (int v = 0; v < 16; ++v)
        if (!(v & 1)) {
            vf a = r[v], b = r[v + 1];
            r[v] = SHUF(a, b, 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30);
            r[v + 1] = SHUF(a, b, 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
        }
    for (int v = 0; v < 16; ++v)
        if (!(v & 2)) {
            vf a = r[v], b = r[v + 2];
            r[v] = SHUF(a, b, 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29);
            r[v + 2] = SHUF(a, b, 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
        }
    for (int v = 0; v < 16; ++v)
        if (!(v & 4)) {
            vf a = r[v], b = r[v + 4];
            r[v] = SHUF(a, b, 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27);
            r[v + 4] = SHUF(a, b, 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
        }
    for (int v = 0; v < 8; ++v) {
        vf a = r[v], b = r[v + 8];
        r[v] = SHUF(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
        r[v + 8] = SHUF(a, b, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    }
}
#endif

// rows k < K, pixels [p0, p0 + P) of sample b: a pointer and its row stride
static inline const float* chunk_in(const Map& m, long b, long K, long p0, long P, float* buf, long& ldo) {
    const float* src = m.base + b * m.sb + p0 * m.sp;
    ldo = P;
    if (m.sp == 1) {
        ldo = m.sk;
        return src;
    }
    long p = 0;
#ifdef HAVE_SHUFFLE
    if (m.sk == 1) {  // pixel-major: 16 x 16 blocks through registers
        for (; p + LANES <= P; p += LANES) {
            long k = 0;
            for (; k + LANES <= K; k += LANES) {
                vf r[16];
                for (int i = 0; i < 16; ++i) r[i] = ld(src + (p + i) * m.sp + k);
                transpose16(r);
                for (int j = 0; j < 16; ++j) st(buf + (k + j) * P + p, r[j]);
            }
            for (; k < K; ++k)
                for (long q = p; q < p + LANES; ++q) buf[k * P + q] = src[q * m.sp + k];
        }
    }
#endif
    for (; p < P; ++p)
        for (long k = 0; k < K; ++k) buf[k * P + p] = src[p * m.sp + k * m.sk];
    return buf;
}

static inline void chunk_out(float* base, long sb, long sk, long sp, long b, long K, long p0, long P, const float* buf) {
    float* dst = base + b * sb + p0 * sp;
    long p = 0;
#ifdef HAVE_SHUFFLE
    if (sk == 1) {
        for (; p + LANES <= P; p += LANES) {
            long k = 0;
            for (; k + LANES <= K; k += LANES) {
                vf r[16];
                for (int j = 0; j < 16; ++j) r[j] = ld(buf + (k + j) * P + p);
                transpose16(r);
                for (int i = 0; i < 16; ++i) st(dst + (p + i) * sp + k, r[i]);
            }
            for (; k < K; ++k)
                for (long q = p; q < p + LANES; ++q) dst[q * sp + k] = buf[k * P + q];
        }
    }
#endif
    for (; p < P; ++p)
        for (long k = 0; k < K; ++k) dst[p * sp + k * sk] = buf[k * P + p];
}

static long chunk_pixels(long rows) {
    long p = (131072 / (rows > 1 ? rows : 1)) / 64 * 64;
    return p < 64 ? 64 : (p > 1024 ? 1024 : p);
}

static thread_local std::vector<float> tl_buf;
static thread_local std::vector<vf> tl_acc;

static float* scratch(long n) {
    if ((long)tl_buf.size() < n) tl_buf.resize(n);
    return tl_buf.data();
}

static vf* accumulators(long n) {
    if ((long)tl_acc.size() < n) tl_acc.resize(n);
    std::memset((void*)tl_acc.data(), 0, n * sizeof(vf));
    return tl_acc.data();
}

static inline void softmax_columns(long n, long P, float* S, long lds, float* S2, long lds2) {
    long p = 0;
    for (; p + LANES <= P; p += LANES) {
        vf mx = ld(S + p);
        for (long j = 1; j < n; ++j) {
            vf v = ld(S + j * lds + p);
            mx = v > mx ? v : mx;
        }
        vf sum = vf{};
        for (long j = 0; j < n; ++j) {
            vf e = vexp(ld(S + j * lds + p) - mx);
            st(S + j * lds + p, e);
            sum += e;
        }
        vf inv = 1.f / sum;
        for (long j = 0; j < n; ++j) {
            vf s = ld(S + j * lds + p) * inv;
            st(S + j * lds + p, s);
            st(S2 + j * lds2 + p, s * s);
        }
    }
    for (; p < P; ++p) {
        float mx = S[p];
        for (long j = 1; j < n; ++j) mx = S[j * lds + p] > mx ? S[j * lds + p] : mx;
        float sum = 0.f;
        for (long j = 0; j < n; ++j) {
            float e = std::exp(S[j * lds + p] - mx);
            S[j * lds + p] = e;
            sum += e;
        }
        float inv = 1.f / sum;
        for (long j = 0; j < n; ++j) {
            float s = S[j * lds + p] * inv;
            S[j * lds + p] = s;
            S2[j * lds2 + p] = s * s;
        }
    }
}

// y[i][p] (= or +=) alpha * a[i][p] * b[i][p] (+ c[i] when given), i < M, p < P
static inline void mul_rows(long M, long P, float* y, long ldy, const float* a, long lda, const float* b, long ldb,
                            float alpha, bool acc, const float* c = nullptr) {
    for (long i = 0; i < M; ++i) {
        float* yr = y + i * ldy;
        const float* ar = a + i * lda;
        const float* br = b + i * ldb;
        vf ci = bc(c ? c[i] : 0.f);
        long p = 0;
        for (; p + LANES <= P; p += LANES) {
            vf v = alpha * ld(ar + p) * ld(br + p) + ci;
            st(yr + p, acc ? ld(yr + p) + v : v);
        }
        for (; p < P; ++p) {
            float v = alpha * ar[p] * br[p] + (c ? c[i] : 0.f);
            yr[p] = acc ? yr[p] + v : v;
        }
    }
}

// The maps kept between the passes are Vc (c, hw) and S (n, hw), contiguous per sample; S^2, Vc^2
// and P S are recomputed per chunk where needed (a multiply or a small product costs less than
// writing a map to memory and reading it back: at c = 16 these passes are bound by memory).

extern "C" {

int an_abi_version() { return 2; }

// Forward, first pass. Per sample: W (R, c) and bias (R) with R = n + c (the layout rows first).
// Written: vc (c, hw), s (n, hw), m (c, 2n) = Vc [S; S^2]^T, a (c, n) = Vc^2 (S^2)^T, ssum (2n).
int an_fwd1(long b0, long b1, long c, long n, long hw, const float* x, long xsb, long xsk, long xsp,
            const float* W, const float* bias, float* vc, float* s, float* m, float* a, float* ssum) {
    const long R = n + c, P0 = chunk_pixels(2 * R + 2 * c);
    Map X{x, xsb, xsk, xsp};
    float* xbuf = scratch((2 * c + n) * P0);
    float* vvbuf = xbuf + c * P0;
    float* s2buf = vvbuf + c * P0;
    for (long b = b0; b < b1; ++b) {
        vf* dm = accumulators(c * 2 * n + c * n + 2 * n);
        vf* da = dm + c * 2 * n;
        vf* ds = da + c * n;
        const float* Wb = W + b * R * c;
        const float* bb = bias + b * R;
        float* S = s + b * n * hw;
        float* VC = vc + b * c * hw;
        for (long p0 = 0; p0 < hw; p0 += P0) {
            const long P = hw - p0 < P0 ? hw - p0 : P0;
            long ldx;
            const float* Xc = chunk_in(X, b, c, p0, P, xbuf, ldx);
            expand(n, c, P, Wb, c, Xc, ldx, S + p0, hw, nullptr, 0, bb);
            expand(c, c, P, Wb + n * c, c, Xc, ldx, VC + p0, hw, nullptr, 0, bb + n);
            softmax_columns(n, P, S + p0, hw, s2buf, P);
            mul_rows(c, P, vvbuf, P, VC + p0, hw, VC + p0, hw, 1.f, false);
            reduce(c, n, P, VC + p0, hw, S + p0, hw, dm, 2 * n);
            reduce(c, n, P, VC + p0, hw, s2buf, P, dm + n, 2 * n);
            reduce(c, n, P, vvbuf, P, s2buf, P, da, n);
            rowsums(n, P, S + p0, hw, ds);
            rowsums(n, P, s2buf, P, ds + n);
        }
        finish(c * 2 * n, dm, m + b * c * 2 * n);
        finish(c * n, da, a + b * c * n);
        finish(2 * n, ds, ssum + b * 2 * n);
    }
    return 0;
}

// Forward, second pass: y = x - Q S + Vc * (P S). p and qneg (= -Q) are (c, n) per sample; y is
// written in its own layout (strides ysb, ysk, ysp).
int an_fwd2(long b0, long b1, long c, long n, long hw, const float* x, long xsb, long xsk, long xsp,
            const float* vc, const float* s, const float* p, const float* qneg,
            float* y, long ysb, long ysk, long ysp) {
    const long P0 = chunk_pixels(4 * c + n);
    Map X{x, xsb, xsk, xsp};
    float* xbuf = scratch(3 * c * P0);
    float* ybuf = xbuf + c * P0;
    float* tbuf = ybuf + c * P0;
    for (long b = b0; b < b1; ++b) {
        const float* S = s + b * n * hw;
        const float* VC = vc + b * c * hw;
        for (long p0 = 0; p0 < hw; p0 += P0) {
            const long P = hw - p0 < P0 ? hw - p0 : P0;
            long ldx;
            const float* Xc = chunk_in(X, b, c, p0, P, xbuf, ldx);
            expand(c, n, P, p + b * c * n, n, S + p0, hw, tbuf, P);
            const bool direct = ysp == 1;
            float* Y = direct ? y + b * ysb + p0 : ybuf;
            const long ldy = direct ? ysk : P;
            expand(c, n, P, qneg + b * c * n, n, S + p0, hw, Y, ldy, Xc, ldx);
            mul_rows(c, P, Y, ldy, VC + p0, hw, tbuf, P, 1.f, true);
            if (!direct) chunk_out(y, ysb, ysk, ysp, b, c, p0, P, ybuf);
        }
    }
    return 0;
}

// Backward, first pass: gs (n, hw) = P^T (gy * vc) - Q^T gy; gp (c, n) = sum_p (gy * vc) S^T,
// gst (c, n) = sum_p gy S^T. pT and qnT (= -Q^T) are (n, c) per sample.
int an_bwd1(long b0, long b1, long c, long n, long hw, const float* gy, long gsb, long gsk, long gsp,
            const float* vc, const float* s, const float* pT, const float* qnT, float* gs, float* gp, float* gst) {
    const long P0 = chunk_pixels(4 * c + 2 * n);
    Map G{gy, gsb, gsk, gsp};
    float* gbuf = scratch(2 * c * P0);
    float* gv = gbuf + c * P0;
    for (long b = b0; b < b1; ++b) {
        vf* dp = accumulators(2 * c * n);
        vf* dt = dp + c * n;
        const float* S = s + b * n * hw;
        const float* VC = vc + b * c * hw;
        float* GS = gs + b * n * hw;
        for (long p0 = 0; p0 < hw; p0 += P0) {
            const long P = hw - p0 < P0 ? hw - p0 : P0;
            long ldg;
            const float* Gc = chunk_in(G, b, c, p0, P, gbuf, ldg);
            mul_rows(c, P, gv, P, Gc, ldg, VC + p0, hw, 1.f, false);
            reduce(c, n, P, gv, P, S + p0, hw, dp, n);
            reduce(c, n, P, Gc, ldg, S + p0, hw, dt, n);
            expand(n, c, P, pT + b * n * c, c, gv, P, GS + p0, hw);
            expand(n, c, P, qnT + b * n * c, c, Gc, ldg, GS + p0, hw, nullptr, 0, nullptr, true);
        }
        finish(c * n, dp, gp + b * c * n);
        finish(c * n, dt, gst + b * c * n);
    }
    return 0;
}

// Backward, second pass (see the top of the file). Per sample: p (c, n) (for T = P S), gm (c, 2n)
// = [g_u | g_r], ga (c, n), gmT (2n, c) = gm^T, gaT (n, c), gs2 and gtotal (n), delta (c), WT (c, R)
// = W^T; gs (n, hw) from bwd1, glayout (n, hw) or null. Written: gx (in its own layout, when
// given), gw (mw, c) = [gZ; gV][:mw] X^T (when mw > 0), glsum (n) = sum_p gZ.
int an_bwd2(long b0, long b1, long c, long n, long hw, const float* gy, long gsb, long gsk, long gsp,
            const float* x, long xsb, long xsk, long xsp, const float* vc, const float* s, const float* p,
            const float* gs, const float* glayout, const float* gm, const float* ga, const float* gmT,
            const float* gaT, const float* gs2, const float* gtotal, const float* delta, const float* WT,
            float* gx, long xgsb, long xgsk, long xgsp, long mw, float* gw, float* glsum) {
    const long R = n + c, P0 = chunk_pixels(6 * c + 6 * n);
    Map G{gy, gsb, gsk, gsp}, X{x, xsb, xsk, xsp};
    float* gbuf = scratch((3 * c + R + 3 * n) * P0);
    float* xbuf = gbuf + c * P0;
    float* tmp = xbuf + c * P0;
    float* go = tmp + c * P0;  // (R, P): [gZ; gV]
    float* inner = go + R * P0;
    float* s2 = inner + n * P0;
    float* gsc = s2 + n * P0;
    for (long b = b0; b < b1; ++b) {
        vf* dw = accumulators(mw * c + n);
        vf* dl = dw + mw * c;
        const float* S = s + b * n * hw;
        const float* VC = vc + b * c * hw;
        const float* GS = gs + b * n * hw;
        const float* gmb = gm + b * c * 2 * n;
        const float* gmTb = gmT + b * 2 * n * c;
        for (long p0 = 0; p0 < hw; p0 += P0) {
            const long P = hw - p0 < P0 ? hw - p0 : P0;
            long ldg;
            const float* Gc = chunk_in(G, b, c, p0, P, gbuf, ldg);
            float* GZ = go;
            float* GV = go + n * P;
            mul_rows(n, P, s2, P, S + p0, hw, S + p0, hw, 1.f, false);
            // gV = delta + gY * (P S) + g_m [S; S2] + 2 Vc * (g_a S2)
            expand(c, n, P, p + b * c * n, n, S + p0, hw, tmp, P);
            mul_rows(c, P, GV, P, Gc, ldg, tmp, P, 1.f, false, delta + b * c);
            expand(c, n, P, gmb, 2 * n, S + p0, hw, GV, P, nullptr, 0, nullptr, true);
            expand(c, n, P, gmb + n, 2 * n, s2, P, GV, P, nullptr, 0, nullptr, true);
            expand(c, n, P, ga + b * c * n, n, s2, P, tmp, P);
            mul_rows(c, P, GV, P, VC + p0, hw, tmp, P, 2.f, true);
            // gS = (bwd1's) + g_u^T Vc; inner = g_r^T Vc + g_a^T Vc^2 + g_s2
            expand(n, c, P, gmTb, c, VC + p0, hw, gsc, P, GS + p0, hw);
            expand(n, c, P, gmTb + n * c, c, VC + p0, hw, inner, P, nullptr, 0, gs2 + b * n);
            mul_rows(c, P, tmp, P, VC + p0, hw, VC + p0, hw, 1.f, false);
            expand(n, c, P, gaT + b * n * c, c, tmp, P, inner, P, nullptr, 0, nullptr, true);
            // gS += g_total + 2 S inner (+ g_layout); gZ = S gS - S sum_n (S gS)
            const float* gt = gtotal + b * n;
            const float* gl = glayout ? glayout + b * n * hw + p0 : nullptr;
            long q = 0;
            for (; q + LANES <= P; q += LANES) {
                vf dot = vf{};
                for (long j = 0; j < n; ++j) {
                    vf sv = ld(S + j * hw + p0 + q);
                    vf g = ld(gsc + j * P + q) + gt[j] + 2.f * sv * ld(inner + j * P + q);
                    if (gl) g += ld(gl + j * hw + q);
                    vf z = sv * g;
                    st(GZ + j * P + q, z);
                    dot += z;
                }
                for (long j = 0; j < n; ++j) st(GZ + j * P + q, ld(GZ + j * P + q) - ld(S + j * hw + p0 + q) * dot);
            }
            for (; q < P; ++q) {
                float dot = 0.f;
                for (long j = 0; j < n; ++j) {
                    float sv = S[j * hw + p0 + q];
                    float g = gsc[j * P + q] + gt[j] + 2.f * sv * inner[j * P + q];
                    if (gl) g += gl[j * hw + q];
                    float z = sv * g;
                    GZ[j * P + q] = z;
                    dot += z;
                }
                for (long j = 0; j < n; ++j) GZ[j * P + q] -= S[j * hw + p0 + q] * dot;
            }
            rowsums(n, P, GZ, P, dl);
            if (gx) {
                const bool direct = xgsp == 1;
                float* GX = direct ? gx + b * xgsb + p0 : tmp;
                const long ldgx = direct ? xgsk : P;
                expand(c, R, P, WT + b * c * R, R, go, P, GX, ldgx, Gc, ldg);
                if (!direct) chunk_out(gx, xgsb, xgsk, xgsp, b, c, p0, P, tmp);
            }
            if (mw > 0) {
                long ldx;
                const float* Xc = chunk_in(X, b, c, p0, P, xbuf, ldx);
                reduce(mw, c, P, go, P, Xc, ldx, dw, c);
            }
        }
        finish(mw * c, dw, gw + b * mw * c);
        finish(n, dl, glsum + b * n);
    }
    return 0;
}

}  // extern "C"
