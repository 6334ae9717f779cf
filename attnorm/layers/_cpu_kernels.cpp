// AN's passes over the map on the CPU, fused per chunk of pixels (attnorm.layers.cpu_fused).
//
// The layer's products are small matrices against (k, hw) maps: K = c or n (16 in the CPU presets)
// on one side, the pixels on the other. Run as batched BLAS calls they reached 14-40 GFLOP/s on a core
// whose sgemm does 91 (one AMD EPYC thread), every step was a separate pass over memory, and a
// channels-last input was copied to and from NCHW. Here each sample's map is walked in chunks of
// pixels that stay in cache:
// every product of one chunk is done by two register-blocked micro-kernels ("expand": a small matrix
// times a chunk of map rows; "reduce": sums over the chunk's pixels in vector lanes, added in double), the
// elementwise steps run on the chunk in between, and a channels-last map is read and written in its
// own layout. The maths is the layer's (attentive._AttentiveNormFn, variance "algorithm1"):
//   fwd1: [logits; Vc] = W X + bias, S = softmax_n(logits), S2 = S^2, Vv = Vc^2,
//         m = Vc [S; S2]^T, a = Vv S2^T, ssum = rowsums of [S; S2]
//   fwd2: T = P S, Y = X - Q S + Vc * T
//   bwd1: gv = gY * Vc, g_p = gv S^T, gs_t = gY S^T, gS = P^T gv - Q^T gY
//   bwd2: gV = delta + gY * T + g_m [S; S2] + 2 Vc * (g_a S2)                      (gv_rows),
//         gS += g_u^T Vc + g_total + 2 S * (g_r^T Vc + g_a^T Vv + g_s2) (+ g_layout)  (gs_rows),
//         gZ = S * gS - S * sum_n(S * gS), gX = gY + W^T [gZ; gV], gW = [gZ; gV] X^T
// Between the passes the per-entity statistics and their backward run per sample (stats_forward,
// stats_backward). Two entry points, an_forward and an_backward, run a whole direction for a range of
// samples, split over `threads` threads of OpenMP's team where the library is built with OpenMP (see
// over_samples). Compiled at first use by the system's C++ compiler (GCC or Clang vector extensions; one
// vector type of 16 floats for AVX-512 or 8 elsewhere, lowered to whatever SIMD the machine has) and called
// through ctypes.

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

// One vector type as wide as the machine's registers: 16 floats where the compiler targets AVX-512, else 8
// (AVX2's ymm registers; two halves on SSE or NEON). Built with 16-float vectors for AVX2, each vector split
// in two and the register blocks below (sized for AVX-512's 32 registers) spilled: 4.2-4.5x the PyTorch
// path's time there (session 40).
#if defined(__AVX512F__)
#define VBYTES 64
#else
#define VBYTES 32
#endif
typedef float vf __attribute__((vector_size(VBYTES)));
typedef float vfu __attribute__((vector_size(VBYTES), aligned(4)));
typedef int32_t vi __attribute__((vector_size(VBYTES)));
static const long LANES = VBYTES / 4;

// Register blocks of the micro-kernels below, in rows x vectors of pixels: their accumulators and the map
// vectors they reuse fit AVX-512's 32 registers, or AVX2's 16 (overridable with -D for timing).
#if VBYTES == 64
#ifndef EXPAND_MR
#define EXPAND_MR 4  // expand: 4 x 4 accumulators, 4 map vectors
#endif
#ifndef EXPAND_NV
#define EXPAND_NV 4
#endif
#ifndef GV_MR
#define GV_MR 4  // gv_rows: 4 rows x 6 accumulators, 4 map vectors
#endif
#ifndef GS_MR
#define GS_MR 4  // gs_rows: 4 rows x 4 accumulators, 4 map vectors
#endif
#ifndef REDUCE_MI
#define REDUCE_MI 4  // reduce: 4 x 4 accumulators, 8 map vectors
#endif
#else
#ifndef EXPAND_MR
#define EXPAND_MR 4  // 4 x 2 accumulators, 2 map vectors
#endif
#ifndef EXPAND_NV
#define EXPAND_NV 2
#endif
#ifndef GV_MR
#define GV_MR 1  // 6 accumulators, 4 map vectors
#endif
#ifndef GS_MR
#define GS_MR 2  // 2 x 4 accumulators, 4 map vectors
#endif
#ifndef REDUCE_MI
#define REDUCE_MI 2  // 2 x 4 accumulators, 6 map vectors
#endif
#endif
#define REDUCE_NJ 4

static inline vf ld(const float* p) { return *(const vfu*)p; }
static inline void st(float* p, vf v) { *(vfu*)p = v; }
static inline vf bc(float s) { return vf{} + s; }
#if defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define HAVE_SHUFFLE 1
#endif
#endif

// The sum of a vector's lanes, in double (a tree of shuffles where the compiler has them).
static inline double hsum(vf v) {
#ifdef HAVE_SHUFFLE
    typedef float v8 __attribute__((vector_size(32)));
    typedef float v4 __attribute__((vector_size(16)));
#if VBYTES == 64
    v8 h = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) + __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
#else
    v8 h = v;
#endif
    v4 q = __builtin_shufflevector(h, h, 0, 1, 2, 3) + __builtin_shufflevector(h, h, 4, 5, 6, 7);
    return ((double)q[0] + q[1]) + ((double)q[2] + q[3]);
#else
    double t = 0.0;
    for (int l = 0; l < LANES; ++l) t += v[l];
    return t;
#endif
}

// Holds a loaded vector in a register: without it GCC re-reads it from memory as an operand of
// every multiply-add that uses it (one load per FMA), which measured load-bound.
#if defined(__GNUC__) && defined(__AVX512F__)
#define keep(v) __asm__("" : "+v"(v))
#elif defined(__GNUC__) && defined(__AVX__)
#define keep(v) __asm__("" : "+x"(v))
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
template <int MR, int NV>
static inline void expand_rows(long K, long P, const float* A, long lda, const float* X, long ldx,
                               float* Y, long ldy, const float* add, long ldadd, const float* bias, bool acc) {
    long p = 0;
    for (; p + NV * LANES <= P; p += NV * LANES) {
        vf s[MR][NV];
        for (int i = 0; i < MR; ++i)
            for (int v = 0; v < NV; ++v) {
                vf init = add ? ld(add + i * ldadd + p + v * LANES) : bc(bias ? bias[i] : 0.f);
                if (acc) init += ld(Y + i * ldy + p + v * LANES);
                s[i][v] = init;
            }
        for (long k = 0; k < K; ++k) {
            const float* xr = X + k * ldx + p;
            vf xv[NV];
            for (int v = 0; v < NV; ++v) {
                xv[v] = ld(xr + v * LANES);
                keep(xv[v]);
            }
            for (int i = 0; i < MR; ++i) {
                vf w = bc(A[i * lda + k]);
                for (int v = 0; v < NV; ++v) s[i][v] += w * xv[v];
            }
        }
        for (int i = 0; i < MR; ++i)
            for (int v = 0; v < NV; ++v) st(Y + i * ldy + p + v * LANES, s[i][v]);
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
    for (; r + EXPAND_MR <= M; r += EXPAND_MR)
        expand_rows<EXPAND_MR, EXPAND_NV>(K, P, A + r * lda, lda, X, ldx, Y + r * ldy, ldy,
                                          add ? add + r * ldadd : nullptr, ldadd, bias ? bias + r : nullptr, acc);
    for (; r < M; ++r)
        expand_rows<1, EXPAND_NV>(K, P, A + r * lda, lda, X, ldx, Y + r * ldy, ldy, add ? add + r * ldadd : nullptr,
                                  ldadd, bias ? bias + r : nullptr, acc);
}

// gv_rows (bwd2's value gradient, rows i < M = c, k < K = n), in one pass over the chunk:
//   GV[i] = delta[i] + G[i] * (sum_k Pm[i][k] S[k]) + sum_k (GM[i][k] S[k] + GM[i][n + k] S2[k])
//           + 2 VC[i] * (sum_k GA[i][k] S2[k])
template <int MR>
static inline void gv_rows(long K, long P, long n, const float* Pm, long ldp, const float* GM, long ldm, const float* GA,
                           long lda, const float* S, long lds, const float* S2, long lds2, const float* G, long ldg,
                           const float* VC, long ldv, const float* delta, float* GV, long ldgv) {
    long p = 0;
    for (; p + 2 * LANES <= P; p += 2 * LANES) {
        vf t[MR][2], m[MR][2], a[MR][2];
        for (int i = 0; i < MR; ++i)
            for (int v = 0; v < 2; ++v) t[i][v] = m[i][v] = a[i][v] = vf{};
        for (long k = 0; k < K; ++k) {
            vf s0 = ld(S + k * lds + p), s1 = ld(S + k * lds + p + LANES);
            vf q0 = ld(S2 + k * lds2 + p), q1 = ld(S2 + k * lds2 + p + LANES);
            keep(s0);
            keep(s1);
            keep(q0);
            keep(q1);
            for (int i = 0; i < MR; ++i) {
                vf wp = bc(Pm[i * ldp + k]), w1 = bc(GM[i * ldm + k]), w2 = bc(GM[i * ldm + n + k]);
                vf wa = bc(GA[i * lda + k]);
                t[i][0] += wp * s0;
                t[i][1] += wp * s1;
                m[i][0] += w1 * s0 + w2 * q0;
                m[i][1] += w1 * s1 + w2 * q1;
                a[i][0] += wa * q0;
                a[i][1] += wa * q1;
            }
        }
        for (int i = 0; i < MR; ++i)
            for (int v = 0; v < 2; ++v) {
                const long o = p + v * LANES;
                st(GV + i * ldgv + o, delta[i] + ld(G + i * ldg + o) * t[i][v] + m[i][v]
                                          + 2.f * ld(VC + i * ldv + o) * a[i][v]);
            }
    }
    for (; p < P; ++p)
        for (int i = 0; i < MR; ++i) {
            float t = 0.f, m = 0.f, a = 0.f;
            for (long k = 0; k < K; ++k) {
                const float sv = S[k * lds + p], qv = S2[k * lds2 + p];
                t += Pm[i * ldp + k] * sv;
                m += GM[i * ldm + k] * sv + GM[i * ldm + n + k] * qv;
                a += GA[i * lda + k] * qv;
            }
            GV[i * ldgv + p] = delta[i] + G[i * ldg + p] * t + m + 2.f * VC[i * ldv + p] * a;
        }
}

// gs_rows (bwd2's layout gradient before the softmax, rows j < M = n, k < K = c), in one pass:
//   g[j] = GS[j] + sum_k GU[j][k] VC[k] + gt[j] + 2 S[j] * (gs2[j] + sum_k (GR[j][k] VC[k] + GA[j][k] VC[k]^2))
//          (+ GL[j] when given)
template <int MR>
static inline void gs_rows(long K, long P, const float* GU, const float* GR, const float* GA, long ldw,
                           const float* VC, long ldv, const float* GS, long ldgs, const float* S, long lds,
                           const float* gt, const float* gs2, const float* GL, long ldgl, float* g, long ldo) {
    long p = 0;
    for (; p + 2 * LANES <= P; p += 2 * LANES) {
        vf u[MR][2], r[MR][2];
        for (int j = 0; j < MR; ++j)
            for (int v = 0; v < 2; ++v) u[j][v] = r[j][v] = vf{};
        for (long k = 0; k < K; ++k) {
            vf v0 = ld(VC + k * ldv + p), v1 = ld(VC + k * ldv + p + LANES);
            vf w0 = v0 * v0, w1 = v1 * v1;
            keep(v0);
            keep(v1);
            keep(w0);
            keep(w1);
            for (int j = 0; j < MR; ++j) {
                vf cu = bc(GU[j * ldw + k]), cr = bc(GR[j * ldw + k]), ca = bc(GA[j * ldw + k]);
                u[j][0] += cu * v0;
                u[j][1] += cu * v1;
                r[j][0] += cr * v0 + ca * w0;
                r[j][1] += cr * v1 + ca * w1;
            }
        }
        for (int j = 0; j < MR; ++j)
            for (int v = 0; v < 2; ++v) {
                const long o = p + v * LANES;
                vf x = ld(GS + j * ldgs + o) + u[j][v] + gt[j] + 2.f * ld(S + j * lds + o) * (r[j][v] + gs2[j]);
                if (GL) x += ld(GL + j * ldgl + o);
                st(g + j * ldo + o, x);
            }
    }
    for (; p < P; ++p)
        for (int j = 0; j < MR; ++j) {
            float u = 0.f, r = 0.f;
            for (long k = 0; k < K; ++k) {
                const float vv = VC[k * ldv + p];
                u += GU[j * ldw + k] * vv;
                r += GR[j * ldw + k] * vv + GA[j * ldw + k] * vv * vv;
            }
            float x = GS[j * ldgs + p] + u + gt[j] + 2.f * S[j * lds + p] * (r + gs2[j]);
            if (GL) x += GL[j * ldgl + p];
            g[j * ldo + p] = x;
        }
}

// reduce: Z[i][j] += sum_{p < P} X[i][p] Y[j][p] for i < M, j < N (Z in double: each chunk's sums are
// summed across their lanes and added in double).
template <int MI, int NJ>
static inline void reduce_block(long P, const float* X, long ldx, const float* Y, long ldy, double* Z, long ldz) {
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
            double t = hsum(s[i][j]);
            for (long q = p; q < P; ++q) t += (double)X[i * ldx + q] * Y[j * ldy + q];
            Z[i * ldz + j] += t;
        }
}

static void reduce(long M, long N, long P, const float* X, long ldx, const float* Y, long ldy, double* Z, long ldz) {
    long i = 0;
    for (; i + REDUCE_MI <= M; i += REDUCE_MI) {
        long j = 0;
        for (; j + REDUCE_NJ <= N; j += REDUCE_NJ)
            reduce_block<REDUCE_MI, REDUCE_NJ>(P, X + i * ldx, ldx, Y + j * ldy, ldy, Z + i * ldz + j, ldz);
        for (; j < N; ++j) reduce_block<REDUCE_MI, 1>(P, X + i * ldx, ldx, Y + j * ldy, ldy, Z + i * ldz + j, ldz);
    }
    for (; i < M; ++i) {
        long j = 0;
        for (; j + REDUCE_NJ <= N; j += REDUCE_NJ)
            reduce_block<1, REDUCE_NJ>(P, X + i * ldx, ldx, Y + j * ldy, ldy, Z + i * ldz + j, ldz);
        for (; j < N; ++j) reduce_block<1, 1>(P, X + i * ldx, ldx, Y + j * ldy, ldy, Z + i * ldz + j, ldz);
    }
}

static void rowsums(long M, long P, const float* X, long ldx, double* z) {
    for (long i = 0; i < M; ++i) {
        const float* x = X + i * ldx;
        vf s = vf{};
        long p = 0;
        for (; p + LANES <= P; p += LANES) s += ld(x + p);
        double t = hsum(s);
        for (; p < P; ++p) t += x[p];
        z[i] += t;
    }
}

// out[i] = z[i] in float, i < count
static void finish(long count, const double* z, float* out) {
    for (long i = 0; i < count; ++i) out[i] = (float)z[i];
}

// ------------------------------------------------------------------------------ chunk I/O
// A map of the caller's, element (k, p) of sample b at base + b*sb + k*sk + p*sp: NCHW maps have
// sp == 1 (used in place), channels-last ones sk == 1 (transposed through a chunk buffer).
struct Map {
    const float* base;
    long sb, sk, sp;
};

#ifdef HAVE_SHUFFLE
#define SHUF(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#if VBYTES == 64
// In-register transpose of a 16 x 16 block: r[i] lane j -> r[j] lane i. Stage d swaps bit d of
// the vector index with bit d of the lane index, pairing r[v] and r[v + d].
static inline void transpose_block(vf* r) {
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
#else
// The same for an 8 x 8 block, in three stages.
static inline void transpose_block(vf* r) {
    for (int v = 0; v < 8; ++v)
        if (!(v & 1)) {
            vf a = r[v], b = r[v + 1];
            r[v] = SHUF(a, b, 0, 8, 2, 10, 4, 12, 6, 14);
            r[v + 1] = SHUF(a, b, 1, 9, 3, 11, 5, 13, 7, 15);
        }
    for (int v = 0; v < 8; ++v)
        if (!(v & 2)) {
            vf a = r[v], b = r[v + 2];
            r[v] = SHUF(a, b, 0, 1, 8, 9, 4, 5, 12, 13);
            r[v + 2] = SHUF(a, b, 2, 3, 10, 11, 6, 7, 14, 15);
        }
    for (int v = 0; v < 4; ++v) {
        vf a = r[v], b = r[v + 4];
        r[v] = SHUF(a, b, 0, 1, 2, 3, 8, 9, 10, 11);
        r[v + 4] = SHUF(a, b, 4, 5, 6, 7, 12, 13, 14, 15);
    }
}
#endif
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
    if (m.sk == 1) {  // pixel-major: LANES x LANES blocks through registers
        for (; p + LANES <= P; p += LANES) {
            long k = 0;
            for (; k + LANES <= K; k += LANES) {
                vf r[LANES];
                for (int i = 0; i < LANES; ++i) r[i] = ld(src + (p + i) * m.sp + k);
                transpose_block(r);
                for (int j = 0; j < LANES; ++j) st(buf + (k + j) * P + p, r[j]);
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
                vf r[LANES];
                for (int j = 0; j < LANES; ++j) r[j] = ld(buf + (k + j) * P + p);
                transpose_block(r);
                for (int i = 0; i < LANES; ++i) st(dst + (p + i) * sp + k, r[i]);
            }
            for (; k < K; ++k)
                for (long q = p; q < p + LANES; ++q) dst[q * sp + k] = buf[k * P + q];
        }
    }
#endif
    for (; p < P; ++p)
        for (long k = 0; k < K; ++k) dst[p * sp + k * sk] = buf[k * P + p];
}

// Pixels per chunk for a pass that touches `rows` map rows: about 512 KB of them, so that they stay in
// L2, but at least 512 pixels (each chunk's sums are summed across lanes once, a cost per chunk that
// longer chunks spread: it mattered at 128 channels) and at most 1024.
static long chunk_pixels(long rows) {
    long p = (131072 / (rows > 1 ? rows : 1)) / 64 * 64;
    return p < 512 ? 512 : (p > 1024 ? 1024 : p);
}

static thread_local std::vector<float> tl_buf;
static thread_local std::vector<double> tl_acc;

static float* scratch(long n) {
    if ((long)tl_buf.size() < n) tl_buf.resize(n);
    return tl_buf.data();
}

static double* accumulators(long n) {
    if ((long)tl_acc.size() < n) tl_acc.resize(n);
    std::memset((void*)tl_acc.data(), 0, n * sizeof(double));
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


// Forward, first pass. Per sample: W (R, c) and bias (R) with R = n + c (the layout rows first).
// Written: vc (c, hw), s (n, hw), m (c, 2n) = Vc [S; S^2]^T, a (c, n) = Vc^2 (S^2)^T, ssum (2n).
static void fwd1_pass(long b, long c, long n, long hw, const float* x, long xsb, long xsk, long xsp,
                       const float* W, const float* bias, float* vc, float* s, float* m, float* a, float* ssum) {
    const long R = n + c, P0 = chunk_pixels(2 * R + 2 * c);
    Map X{x, xsb, xsk, xsp};
    float* xbuf = scratch((2 * c + n) * P0);
    float* vvbuf = xbuf + c * P0;
    float* s2buf = vvbuf + c * P0;
    double* dm = accumulators(c * 2 * n + c * n + 2 * n);
    double* da = dm + c * 2 * n;
    double* ds = da + c * n;
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

// Forward, second pass: y = x - Q S + Vc * (P S). p and qneg (= -Q) are (c, n) per sample; y is
// written in its own layout (strides ysb, ysk, ysp).
static void fwd2_pass(long b, long c, long n, long hw, const float* x, long xsb, long xsk, long xsp,
                       const float* vc, const float* s, const float* p, const float* qneg,
                       float* y, long ysb, long ysk, long ysp) {
    const long P0 = chunk_pixels(4 * c + n);
    Map X{x, xsb, xsk, xsp};
    float* xbuf = scratch(3 * c * P0);
    float* ybuf = xbuf + c * P0;
    float* tbuf = ybuf + c * P0;
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

// Backward, first pass: gs (n, hw) = P^T (gy * vc) - Q^T gy; gp (c, n) = sum_p (gy * vc) S^T,
// gst (c, n) = sum_p gy S^T. pT and qnT (= -Q^T) are (n, c) per sample.
static void bwd1_pass(long b, long c, long n, long hw, const float* gy, long gsb, long gsk, long gsp,
                       const float* vc, const float* s, const float* pT, const float* qnT, float* gs, float* gp, float* gst) {
    const long P0 = chunk_pixels(4 * c + 2 * n);
    Map G{gy, gsb, gsk, gsp};
    float* gbuf = scratch(2 * c * P0);
    float* gv = gbuf + c * P0;
    double* dp = accumulators(2 * c * n);
    double* dt = dp + c * n;
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

// Backward, second pass (see the top of the file). Per sample: p (c, n) (for T = P S), gm (c, 2n)
// = [g_u | g_r], ga (c, n), gmT (2n, c) = gm^T, gaT (n, c), gs2 and gtotal (n), delta (c), WT (c, R)
// = W^T; gs (n, hw) from bwd1, glayout (n, hw) or null. Written: gx (in its own layout, when
// given), gw (mw, c) = [gZ; gV][:mw] X^T (when mw > 0), glsum (n) = sum_p gZ.
static void bwd2_pass(long b, long c, long n, long hw, const float* gy, long gsb, long gsk, long gsp,
                       const float* x, long xsb, long xsk, long xsp, const float* vc, const float* s, const float* p,
                       const float* gs, const float* glayout, const float* gm, const float* ga, const float* gmT,
                       const float* gaT, const float* gs2, const float* gtotal, const float* delta, const float* WT,
                       float* gx, long xgsb, long xgsk, long xgsp, long mw, float* gw, float* glsum) {
    const long R = n + c, P0 = chunk_pixels(5 * c + 5 * n);
    Map G{gy, gsb, gsk, gsp}, X{x, xsb, xsk, xsp};
    float* gbuf = scratch((3 * c + R + 2 * n) * P0);
    float* xbuf = gbuf + c * P0;
    float* tmp = xbuf + c * P0;  // the input's gradient of a channels-last map, before its transpose
    float* go = tmp + c * P0;  // (R, P): [gZ; gV]
    float* s2 = go + R * P0;
    float* gsc = s2 + n * P0;
    double* dw = accumulators(mw * c + n);
    double* dl = dw + mw * c;
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
        {
            const float* pb = p + b * c * n;
            const float* gab = ga + b * c * n;
            const float* db = delta + b * c;
            long i = 0;
            for (; i + GV_MR <= c; i += GV_MR)
                gv_rows<GV_MR>(n, P, n, pb + i * n, n, gmb + i * 2 * n, 2 * n, gab + i * n, n, S + p0, hw, s2, P,
                           Gc + i * ldg, ldg, VC + p0 + i * hw, hw, db + i, GV + i * P, P);
            for (; i < c; ++i)
                gv_rows<1>(n, P, n, pb + i * n, n, gmb + i * 2 * n, 2 * n, gab + i * n, n, S + p0, hw, s2, P,
                           Gc + i * ldg, ldg, VC + p0 + i * hw, hw, db + i, GV + i * P, P);
        }
        // gS = (bwd1's) + g_u^T Vc + g_total + 2 S (g_r^T Vc + g_a^T Vc^2 + g_s2) (+ g_layout)
        const float* gl = glayout ? glayout + b * n * hw + p0 : nullptr;
        {
            const float* gaTb = gaT + b * n * c;
            const float* gtb = gtotal + b * n;
            const float* gs2b = gs2 + b * n;
            long j = 0;
            for (; j + GS_MR <= n; j += GS_MR)
                gs_rows<GS_MR>(c, P, gmTb + j * c, gmTb + (n + j) * c, gaTb + j * c, c, VC + p0, hw, GS + p0 + j * hw,
                           hw, S + p0 + j * hw, hw, gtb + j, gs2b + j, gl ? gl + j * hw : nullptr, hw,
                           gsc + j * P, P);
            for (; j < n; ++j)
                gs_rows<1>(c, P, gmTb + j * c, gmTb + (n + j) * c, gaTb + j * c, c, VC + p0, hw, GS + p0 + j * hw,
                           hw, S + p0 + j * hw, hw, gtb + j, gs2b + j, gl ? gl + j * hw : nullptr, hw,
                           gsc + j * P, P);
        }
        // gZ = S gS - S sum_n (S gS)
        long q = 0;
        for (; q + LANES <= P; q += LANES) {
            vf dot = vf{};
            for (long j = 0; j < n; ++j) {
                vf z = ld(S + j * hw + p0 + q) * ld(gsc + j * P + q);
                st(GZ + j * P + q, z);
                dot += z;
            }
            for (long j = 0; j < n; ++j) st(GZ + j * P + q, ld(GZ + j * P + q) - ld(S + j * hw + p0 + q) * dot);
        }
        for (; q < P; ++q) {
            float dot = 0.f;
            for (long j = 0; j < n; ++j) {
                float z = S[j * hw + p0 + q] * gsc[j * P + q];
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


// ------------------------------------------------------------------------------ statistics
// Algorithm 1's per-entity coefficients from the pixel sums, as attnorm.layers.regional's
// coefficients_forward / _coefficients_backward compute them (variance "algorithm1"), per sample:
// m (c, 2n) = [u | r], a (c, n), ssum (2n) = [total | s2_sum], k (c) the shift of V.
struct Stat {
    float count, sv, mean_c, t_r, t_s, spread, d, offset, var, std_, inv, ib, qu;
};

static inline Stat stat_at(long c_i, long j, long n, float hw, float eps, const float* m, const float* a,
                           const float* ssum, const float* k, const float* beta, const float* alpha) {
    Stat t;
    const float u = m[c_i * 2 * n + j], r = m[c_i * 2 * n + n + j], av = a[c_i * n + j], kk = k[c_i];
    const float T = ssum[j], S2 = ssum[n + j];
    t.count = T + eps;
    t.sv = u + kk * T;
    t.mean_c = (u - kk * eps) / t.count;
    t.t_r = r - T * u / hw;
    t.t_s = S2 - T * T / hw;
    t.spread = av - u * u / hw + 2.f * kk * t.t_r + kk * kk * t.t_s;
    t.d = (t.count - hw) / (t.count * hw);
    t.offset = t.sv * t.d;
    const float sum_sq = (t.spread > 0.f ? t.spread : 0.f) + hw * t.offset * t.offset;
    t.var = sum_sq / t.count;
    t.std_ = std::sqrt(t.var > FLT_MIN ? t.var : FLT_MIN);
    t.inv = 1.f / (t.std_ + eps);
    t.ib = beta ? t.inv * beta[c_i] : t.inv;
    t.qu = t.mean_c * t.ib - (alpha ? alpha[c_i] : 0.f);
    return t;
}

// P = scale * ib, Q = scale * qu, each (c, n)
static void stats_forward(long c, long n, long hw, float eps, const float* m, const float* a, const float* ssum,
                          const float* k, const float* beta, const float* alpha, const float* scale, float* P, float* Q) {
    for (long i = 0; i < c; ++i)
        for (long j = 0; j < n; ++j) {
            const Stat t = stat_at(i, j, n, (float)hw, eps, m, a, ssum, k, beta, alpha);
            P[i * n + j] = scale ? t.ib * scale[0] : t.ib;
            Q[i * n + j] = scale ? t.qu * scale[0] : t.qu;
        }
}

// The gradients of (u, r, a, k, total, s2_sum, beta, alpha, scale) from those of (P, Q): gm (c, 2n) =
// [g_u | g_r], ga (c, n), gk (c), gtotal and gs2 (n), and this sample's share of g_beta, g_alpha (c)
// and g_scale (1) where those are given.
static void stats_backward(long c, long n, long hw_, float eps, const float* m, const float* a, const float* ssum,
                           const float* k, const float* beta, const float* alpha, const float* scale, const float* gP,
                           const float* gQ, float* gm, float* ga, float* gk, float* gtotal, float* gs2,
                           float* gbeta, float* galpha, float* gscale) {
    const float hw = (float)hw_;
    for (long j = 0; j < n; ++j) gtotal[j] = gs2[j] = 0.f;
    float gsc = 0.f;
    for (long i = 0; i < c; ++i) {
        float gki = 0.f, gbi = 0.f, gai = 0.f;
        for (long j = 0; j < n; ++j) {
            const Stat t = stat_at(i, j, n, hw, eps, m, a, ssum, k, beta, alpha);
            const float kk = k[i], T = ssum[j];
            float gp = gP[i * n + j], gq = gQ[i * n + j];
            if (scale) {
                gsc += gp * t.ib + gq * t.qu;
                gp *= scale[0];
                gq *= scale[0];
            }
            gai -= gq;
            const float g_ib = gp + gq * t.mean_c;
            gbi += g_ib * t.inv;
            const float g_inv = beta ? g_ib * beta[i] : g_ib;
            const float g_var = t.var <= FLT_MIN ? 0.f : g_inv * t.inv * t.inv / t.std_ * -0.5f;
            const float g_sum_sq = g_var / t.count;
            const float g_spread = t.spread <= 0.f ? 0.f : g_sum_sq;
            float gu = gq * t.ib / t.count;
            float g_count_neg = g_sum_sq * t.var + gu * t.mean_c;
            float g_k_terms = gu * -eps;
            float g_sv = g_sum_sq * t.offset * (2.f * hw);
            g_count_neg -= g_sv * t.sv / (t.count * t.count);
            g_sv *= t.d;
            gu += g_spread * t.sv * (-2.f / hw);
            const float gr = g_spread * kk * 2.f;
            g_k_terms += 2.f * g_spread * (t.t_r + kk * t.t_s);
            gtotal[j] += g_sv * kk - gr * t.sv / hw - g_count_neg;
            gs2[j] += 0.5f * gr * kk;
            gu += g_sv;
            gki += g_k_terms + g_sv * T;
            gm[i * 2 * n + j] = gu;
            gm[i * 2 * n + n + j] = gr;
            ga[i * n + j] = g_spread;
        }
        gk[i] = gki;
        if (gbeta) gbeta[i] = gbi;
        if (galpha) galpha[i] = gai;
    }
    if (gscale) gscale[0] = gsc;
}

static void transpose_into(long rows, long cols, const float* src, float* dst, float sign = 1.f) {
    for (long i = 0; i < rows; ++i)
        for (long j = 0; j < cols; ++j) dst[j * rows + i] = sign * src[i * cols + j];
}

// Runs body(lo, hi) over [b0, b1) split into min(threads, b1 - b0) contiguous ranges. Built with
// OpenMP, the ranges run in OpenMP's team: loaded into a process whose torch uses libgomp (the
// library names libgomp.so.1, which the loader then finds already loaded), that is the team torch's
// own parallel loops use, so no second pool of threads competes with torch's (whose idle threads spin
// for a while after each loop: a separate pool ran the layer 1.4-1.6x slower at two threads).
// Without OpenMP the caller splits the samples (an_openmp() == 0) and threads is 1.
template <class Body>
static void over_samples(long threads, long b0, long b1, const Body& body) {
#ifdef _OPENMP
    const long count = b1 - b0;
    if (threads > 1 && count > 1) {
        const int team = (int)std::min(threads, count);
#pragma omp parallel num_threads(team)
        {
            const long t = omp_get_thread_num(), T = omp_get_num_threads();
            body(b0 + count * t / T, b0 + count * (t + 1) / T);
        }
        return;
    }
#endif
    (void)threads;
    body(b0, b1);
}

// The layer's forward (see the top of the file), per sample: the spatial mean of x and the value
// rows' bias -W_v mean(x) (written into bias, whose n layout rows the caller fills), the shift
// k = W_v mean(x) + b_v, the two passes with the coefficients P, Q between them. Written: vc, s, m,
// a, ssum, shift (c), p and q (c, n), qneg (work, c x n), y in its own layout.
static void forward_range(long b0, long b1, long c, long n, long hw, const float* x, long xsb, long xsk, long xsp,
               const float* W, float* bias, const float* value_bias, const float* beta, const float* alpha,
               const float* scale, float eps, float* vc, float* s, float* m, float* a, float* ssum, float* shift,
               float* p, float* q, float* qneg, float* y, long ysb, long ysk, long ysp) {
    const long R = n + c;
    std::vector<double> xbar(c);
    for (long b = b0; b < b1; ++b) {
        const float* xb = x + b * xsb;
        for (long i = 0; i < c; ++i) xbar[i] = 0.0;
        if (xsp == 1) {
            rowsums(c, hw, xb, xsk, xbar.data());
        } else {
            for (long q0 = 0; q0 < hw; ++q0)
                for (long i = 0; i < c; ++i) xbar[i] += xb[q0 * xsp + i * xsk];
        }
        for (long i = 0; i < c; ++i) xbar[i] /= hw;
        const float* Wv = W + b * R * c + n * c;
        for (long i = 0; i < c; ++i) {
            double t = 0.0;
            for (long kk = 0; kk < c; ++kk) t += (double)Wv[i * c + kk] * xbar[kk];
            bias[b * R + n + i] = (float)-t;
            shift[b * c + i] = (float)t + value_bias[i];
        }
        fwd1_pass(b, c, n, hw, x, xsb, xsk, xsp, W, bias, vc, s, m, a, ssum);
        stats_forward(c, n, hw, eps, m + b * c * 2 * n, a + b * c * n, ssum + b * 2 * n, shift + b * c, beta, alpha,
                      scale, p + b * c * n, q + b * c * n);
        for (long i = 0; i < c * n; ++i) qneg[b * c * n + i] = -q[b * c * n + i];
        fwd2_pass(b, c, n, hw, x, xsb, xsk, xsp, vc, s, p, qneg, y, ysb, ysk, ysp);
    }
}

// The layer's backward, per sample: the first pass, the statistics' backward, the second pass.
// Work tensors (the caller's, per sample): gs (n, hw), pT and qnT (n, c), gp and gst (c, n), gm
// (c, 2n), ga (c, n), gmT (2n, c), gaT (n, c), gs2 and gtotal (n), delta (c), WT (c, R). Written:
// gk (c) (the shift's gradient), gbeta, galpha (c) and gscale (1) (this sample's shares, where
// given), gx (in its own layout, where given), gw (mw, c), glsum (n).
static void backward_range(long b0, long b1, long c, long n, long hw, const float* gy, long gsb, long gsk, long gsp,
                const float* x, long xsb, long xsk, long xsp, const float* vc, const float* s, const float* m,
                const float* a, const float* ssum, const float* shift, const float* p, const float* q,
                const float* W, const float* beta, const float* alpha, const float* scale, float eps,
                const float* glayout, float* gs, float* pT, float* qnT, float* gp, float* gst, float* gm, float* ga,
                float* gmT, float* gaT, float* gs2, float* gtotal, float* delta, float* WT, float* gk, float* gbeta,
                float* galpha, float* gscale, float* gx, long xgsb, long xgsk, long xgsp, long mw, float* gw,
                float* glsum) {
    const long R = n + c;
    std::vector<float> gq(c * n);
    for (long b = b0; b < b1; ++b) {
        const long cn = c * n;
        transpose_into(c, n, p + b * cn, pT + b * cn);
        transpose_into(c, n, q + b * cn, qnT + b * cn, -1.f);
        bwd1_pass(b, c, n, hw, gy, gsb, gsk, gsp, vc, s, pT, qnT, gs, gp, gst);
        for (long i = 0; i < cn; ++i) gq[i] = -gst[b * cn + i];
        const float* mb = m + b * c * 2 * n;
        const float* sb = ssum + b * 2 * n;
        stats_backward(c, n, hw, eps, mb, a + b * cn, sb, shift + b * c, beta, alpha, scale, gp + b * cn, gq.data(),
                       gm + b * c * 2 * n, ga + b * cn, gk + b * c, gtotal + b * n, gs2 + b * n,
                       gbeta ? gbeta + b * c : nullptr, galpha ? galpha + b * c : nullptr,
                       gscale ? gscale + b : nullptr);
        // delta = (g_k - sum_p g_Vc) / hw, sum_p g_Vc = sum_n [P gs_t + 2 g_a r] + g_m ssum
        for (long i = 0; i < c; ++i) {
            double t = 0.0;
            for (long j = 0; j < n; ++j)
                t += (double)p[b * cn + i * n + j] * gst[b * cn + i * n + j]
                     + 2.0 * ga[b * cn + i * n + j] * mb[i * 2 * n + n + j];
            for (long j = 0; j < 2 * n; ++j) t += (double)gm[b * c * 2 * n + i * 2 * n + j] * sb[j];
            delta[b * c + i] = (float)((gk[b * c + i] - t) / hw);
        }
        transpose_into(c, 2 * n, gm + b * c * 2 * n, gmT + b * c * 2 * n);
        transpose_into(c, n, ga + b * cn, gaT + b * cn);
        transpose_into(R, c, W + b * R * c, WT + b * R * c);
        bwd2_pass(b, c, n, hw, gy, gsb, gsk, gsp, x, xsb, xsk, xsp, vc, s, p, gs, glayout, gm, ga, gmT, gaT,
                gs2, gtotal, delta, WT, gx, xgsb, xgsk, xgsp, mw, gw, glsum);
    }
}

extern "C" {

int an_abi_version() { return 5; }

// The widest vector registers the compiler targeted, in bits: 512 (AVX-512: vectors of 16 floats), 256
// (AVX, AVX2: 8 floats) or 128 (SSE, NEON: each 8-float vector split in two; measured 6-12x slower than
// torch's path there, so cpu_fused leaves the kernels off by default).
int an_vector_bits() {
#if defined(__AVX512F__)
    return 512;
#elif defined(__AVX__)
    return 256;
#else
    return 128;
#endif
}

// 1 where the library is built with OpenMP (an_forward / an_backward split the samples themselves).
int an_openmp() {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

// forward_range / backward_range over samples [b0, b1) on `threads` threads (over_samples).
int an_forward(long threads, long b0, long b1, long c, long n, long hw, const float* x, long xsb, long xsk,
               long xsp, const float* W, float* bias, const float* value_bias, const float* beta,
               const float* alpha, const float* scale, float eps, float* vc, float* s, float* m, float* a,
               float* ssum, float* shift, float* p, float* q, float* qneg, float* y, long ysb, long ysk, long ysp) {
    over_samples(threads, b0, b1, [&](long lo, long hi) {
        forward_range(lo, hi, c, n, hw, x, xsb, xsk, xsp, W, bias, value_bias, beta, alpha, scale, eps, vc, s, m, a,
                      ssum, shift, p, q, qneg, y, ysb, ysk, ysp);
    });
    return 0;
}

int an_backward(long threads, long b0, long b1, long c, long n, long hw, const float* gy, long gsb, long gsk,
                long gsp, const float* x, long xsb, long xsk, long xsp, const float* vc, const float* s,
                const float* m, const float* a, const float* ssum, const float* shift, const float* p,
                const float* q, const float* W, const float* beta, const float* alpha, const float* scale, float eps,
                const float* glayout, float* gs, float* pT, float* qnT, float* gp, float* gst, float* gm, float* ga,
                float* gmT, float* gaT, float* gs2, float* gtotal, float* delta, float* WT, float* gk, float* gbeta,
                float* galpha, float* gscale, float* gx, long xgsb, long xgsk, long xgsp, long mw, float* gw,
                float* glsum) {
    over_samples(threads, b0, b1, [&](long lo, long hi) {
        backward_range(lo, hi, c, n, hw, gy, gsb, gsk, gsp, x, xsb, xsk, xsp, vc, s, m, a, ssum, shift, p, q, W, beta,
                       alpha, scale, eps, glayout, gs, pT, qnT, gp, gst, gm, ga, gmT, gaT, gs2, gtotal, delta, WT, gk,
                       gbeta, galpha, gscale, gx, xgsb, xgsk, xgsp, mw, gw, glsum);
    });
    return 0;
}

}  // extern "C"
