/* edgessm fused step engine: the whole edgessm step graph (encoder, every block, head, pooling) in one call.

   Built where it runs (gcc/cc, -O3, the host's instruction set) by edgessm/runtime/fused.py and called
   through ctypes; the weights come from the ONNX file, so the graph stays the one artefact and
   onnxruntime the portable fallback. C99 plus GCC vector extensions (gcc and clang on x86-64 and aarch64).

   Dimensions: B streams (rows), H channels, N modes of a block, O = d_output, K/M a matmul's in/out.

   One step, per row (export/graph.py writes the same network as ONNX nodes):
       h = x W_enc + b_enc | E[x] | x (encoder 'none')                       r(H)
       per block:  z = LN(h) if prenorm else h
                   SISO diagonal SSM (S4D, DSS), delta form, on the state X r(H 2N) = [Re x | Im x]:
                     X' = X + (Ac * X + As * swap(X) + Bc * z)    (swap(X) = [Im x | Re x])
                     y  = sum_j Cc_j X'_j + D z         (readout 0: from the updated state)
                     y  = sum_j R_j X_j + R_2N z        (readout 1: from the old state, the "matrix" form)
                   or MIMO diagonal SSM (LRU, S5: one state X r(2P) = [Re x | Im x] shared by the H channels,
                   Orvieto et al. 2023, Smith et al. 2023; any prenorm BatchNorm is folded into Bm, bd, R, by):
                     y  = [X | z] R + by                 (from the old state; R r(2P+H H))
                     X' = X + (Ac * X + As * swap(X) + (z Bm + bd))     (Bm r(H 2P))
                   a = act(y);  m = mix(a) (glu: (a Wa + ba) * sigmoid(a Wg + bg), W = [Wa | Wg]);
                   h = h + m (residual; else h = m);  h = LN(h) if postnorm
       v = LN_f(h) W_dec + b_dec (decoder 'none': v = LN_f(h));  mean pooling: m' = m + (v - m) / (c + 1), pool = [m' | c + 1]
   fp16 graphs: the file's float16 weights widened exactly, float32 activations - as onnxruntime's CPU provider
   runs them (it computes float16 nodes it has no kernel for in float32 and drops the casts between them);
   rounding every node output to float16 instead was measured further from both onnxruntime and the
   float64 model (docs/latency.md).

   The model is a flat int64 descriptor plus one float32 weight array (offsets into it); a block starts
   with its kind (SISO or MIMO), and an unknown kind is refused at load.
   Rows are independent: a step is computed in tiles of TILE rows (the matmul reuses each weight row across
   the tile), tiles are split over threads; every row's arithmetic is the same whatever the split, so
   results are identical run to run and for any thread count.
*/
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ESF_VERSION 2
#define TILE 16           /* rows per tile: the step's weights are read from L2 once per tile */
#define HDR 16            /* descriptor header fields */
#define BLK 24            /* fields per block */

enum { KIND_SISO = 1, KIND_MIMO = 2 };
enum { ACT_IDENTITY = 0, ACT_RELU = 1, ACT_TANH = 2, ACT_GELU = 3, ACT_GELU_TANH = 4 };
enum { MIX_NONE = 0, MIX_LINEAR = 1, MIX_GLU = 2 };
enum { ERR_OK = 0, ERR_VERSION = 1, ERR_KIND = 2, ERR_TOKEN = 3, ERR_THREAD = 4, ERR_SHAPE = 5 };

/* header (H_ENC_W < 0 with H_VOCAB 0: no encoder, d_in == H; H_DEC_W < 0: no decoder, O == H) */
enum { H_VERSION, H_DIN, H_VOCAB, H_H, H_O, H_NBLOCKS, H_POOL, H_ENC_W, H_ENC_B, H_NF_G, H_NF_B, H_NF_EPS,
       H_DEC_W, H_DEC_B, H_POOL_STATE, H_FP16 /* 1: the file stores float16 weights (informational) */ };
/* block fields; a MIMO block: B_N = P, B_AC/B_AS r(2P), B_BC = Bm and B_CC = R (matmul panels), B_BD r(2P)
   and B_BY r(H) the biases */
enum { B_KIND, B_N, B_STATE, B_PRENORM, B_LN_G, B_LN_B, B_LN_EPS, B_ACT, B_MIX, B_MIX_W, B_MIX_B, B_READOUT,
       B_AC, B_AS, B_BC, B_CC, B_D, B_RESIDUAL, B_BD, B_BY };

typedef struct {
    const int64_t *desc;   /* HDR + BLK * n_blocks */
    const float *w;        /* all weights */
    float **state;         /* state tensors, each (B, ...) row-major, updated in place */
    float *scratch;        /* nthreads * esf_scratch_floats(desc) floats */
    int64_t B;             /* rows */
    int64_t nthreads;      /* >= 1 */
    const void *x;         /* float32 (B, d_in) or int64 (B,) */
    float *y;              /* float32 (B, O) */
} esf_ctx;

typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));
typedef int32_t v8i __attribute__((vector_size(32)));
static inline v8 ld8(const float *p) { return *(const v8u *)p; }
static inline void st8(float *p, v8 v) { *(v8u *)p = v; }
static inline v8 vsplat(float f) { return (v8){f, f, f, f, f, f, f, f}; }

/* out[t, o] = bias[o] + sum_k in[t, k] W[k, o] for t < T rows, o < M (x @ W, as the graph).
   W is stored in column panels of PW = 16: Wp[(p K + k) PW + j] = W[k, p PW + j], zero past M, and the bias
   is zero-padded to a whole panel, so every weight read is a sequential stream (fused.py packs them).
   Register tiles keep 8 accumulators in flight (an FMA's latency is ~4 cycles, 2 issue a cycle):
   8 rows x 1 panel in 16-lane registers where the CPU has AVX-512, 4 rows x 1 panel (each weight vector
   loaded once serves 4 rows), or 1 row x 4 panels. Every output is
   bias + in[0] W[0] + in[1] W[1] + ... in this order in every path, so a row's result does not depend on
   the batch it is in or on the thread split. */
#define PW 16
static inline void store_cols(float *dst, v8 a0, v8 a1, int64_t cols) {
    if (cols >= PW) { st8(dst, a0); st8(dst + 8, a1); return; }
    float tmp[PW];
    st8(tmp, a0); st8(tmp + 8, a1);
    for (int64_t j = 0; j < cols; j++) dst[j] = tmp[j];
}

#if defined(__AVX512F__)
/* With AVX-512 a whole panel row is one 16-lane register: 8 rows x 1 panel keeps 8 accumulators in flight and
   halves the instructions per multiply-add (the dense LRU / S5 Gemms at batch >= 8). Same sum order. */
typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));
static inline v16 ld16(const float *p) { return *(const v16u *)p; }
static inline void store16(float *dst, v16 a, int64_t cols) {
    if (cols >= PW) { *(v16u *)dst = a; return; }
    float tmp[PW];
    *(v16u *)tmp = a;
    for (int64_t j = 0; j < cols; j++) dst[j] = tmp[j];
}
#define ROWS8 8
#else
#define ROWS8 0
#endif

static void matmul(int64_t T, int64_t K, int64_t M, const float *restrict in, int64_t ldi,
                   const float *restrict Wp, const float *restrict bias, float *restrict out, int64_t ldo) {
    const int64_t np = (M + PW - 1) / PW;
    const int64_t T8 = ROWS8 ? T - T % 8 : 0;
    const int64_t T4 = T8 + (T - T8) - (T - T8) % 4;
#if defined(__AVX512F__)
    for (int64_t p = 0; p < np; p++) {
        const float *wp = Wp + p * K * PW;
        const int64_t cols = M - p * PW;
        for (int64_t t = 0; t < T8; t += 8) {
            const float *i0 = in + t * ldi;
            v16 b = ld16(bias + p * PW);
            v16 a0 = b, a1 = b, a2 = b, a3 = b, a4 = b, a5 = b, a6 = b, a7 = b;
            for (int64_t k = 0; k < K; k++) {
                v16 wv = ld16(wp + k * PW);
                a0 += i0[k] * wv; a1 += i0[ldi + k] * wv; a2 += i0[2 * ldi + k] * wv; a3 += i0[3 * ldi + k] * wv;
                a4 += i0[4 * ldi + k] * wv; a5 += i0[5 * ldi + k] * wv; a6 += i0[6 * ldi + k] * wv;
                a7 += i0[7 * ldi + k] * wv;
            }
            float *r = out + t * ldo + p * PW;
            store16(r, a0, cols); store16(r + ldo, a1, cols); store16(r + 2 * ldo, a2, cols);
            store16(r + 3 * ldo, a3, cols); store16(r + 4 * ldo, a4, cols); store16(r + 5 * ldo, a5, cols);
            store16(r + 6 * ldo, a6, cols); store16(r + 7 * ldo, a7, cols);
        }
    }
#endif
    for (int64_t p = 0; p < np; p++) {                       /* panel outer: its K x PW weights stay in L1 */
        const float *wp = Wp + p * K * PW;
        const int64_t cols = M - p * PW;
        for (int64_t t = T8; t < T4; t += 4) {
            const float *i0 = in + t * ldi, *i1 = i0 + ldi, *i2 = i1 + ldi, *i3 = i2 + ldi;
            v8 b0 = ld8(bias + p * PW), b1 = ld8(bias + p * PW + 8);
            v8 a00 = b0, a01 = b1, a10 = b0, a11 = b1, a20 = b0, a21 = b1, a30 = b0, a31 = b1;
            for (int64_t k = 0; k < K; k++) {
                v8 w0 = ld8(wp + k * PW), w1 = ld8(wp + k * PW + 8);
                a00 += i0[k] * w0; a01 += i0[k] * w1;
                a10 += i1[k] * w0; a11 += i1[k] * w1;
                a20 += i2[k] * w0; a21 += i2[k] * w1;
                a30 += i3[k] * w0; a31 += i3[k] * w1;
            }
            float *r = out + t * ldo + p * PW;
            store_cols(r, a00, a01, cols); r += ldo;
            store_cols(r, a10, a11, cols); r += ldo;
            store_cols(r, a20, a21, cols); r += ldo;
            store_cols(r, a30, a31, cols);
        }
    }
    int64_t t = T4;
    for (; t < T; t++) {
        const float *i0 = in + t * ldi;
        float *r = out + t * ldo;
        int64_t p = 0;
        for (; p + 4 <= np; p += 4) {
            const float *w0 = Wp + p * K * PW, *w1 = w0 + K * PW, *w2 = w1 + K * PW, *w3 = w2 + K * PW;
            const float *bp = bias + p * PW;
            v8 a0 = ld8(bp), a1 = ld8(bp + 8), a2 = ld8(bp + 16), a3 = ld8(bp + 24);
            v8 a4 = ld8(bp + 32), a5 = ld8(bp + 40), a6 = ld8(bp + 48), a7 = ld8(bp + 56);
            for (int64_t k = 0; k < K; k++) {
                const float xv = i0[k];
                a0 += xv * ld8(w0 + k * PW); a1 += xv * ld8(w0 + k * PW + 8);
                a2 += xv * ld8(w1 + k * PW); a3 += xv * ld8(w1 + k * PW + 8);
                a4 += xv * ld8(w2 + k * PW); a5 += xv * ld8(w2 + k * PW + 8);
                a6 += xv * ld8(w3 + k * PW); a7 += xv * ld8(w3 + k * PW + 8);
            }
            store_cols(r + p * PW, a0, a1, M - p * PW);
            store_cols(r + (p + 1) * PW, a2, a3, M - (p + 1) * PW);
            store_cols(r + (p + 2) * PW, a4, a5, M - (p + 2) * PW);
            store_cols(r + (p + 3) * PW, a6, a7, M - (p + 3) * PW);
        }
        for (; p < np; p++) {
            const float *wp = Wp + p * K * PW;
            v8 a0 = ld8(bias + p * PW), a1 = ld8(bias + p * PW + 8);
            for (int64_t k = 0; k < K; k++) { a0 += i0[k] * ld8(wp + k * PW); a1 += i0[k] * ld8(wp + k * PW + 8); }
            store_cols(r + p * PW, a0, a1, M - p * PW);
        }
    }
}

#if defined(__clang__)
#define SHUF2(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define SHUF2(a, b, ...) __builtin_shuffle(a, b, (v8i){__VA_ARGS__})
#endif

static inline float hsum8(v8 v) {
    v8 s = v + SHUF2(v, v, 4, 5, 6, 7, 0, 1, 2, 3);
    s = s + SHUF2(s, s, 2, 3, 0, 1, 6, 7, 4, 5);
    s = s + SHUF2(s, s, 1, 0, 3, 2, 5, 4, 7, 6);
    return s[0];
}

/* lanes c = 0..7 of the result: the sum of the 8 lanes of a[c] (an 8 x 8 transpose-and-add, 7 adds) */
static inline v8 reduce8(const v8 *a) {
    v8 b0 = SHUF2(a[0], a[1], 0, 8, 2, 10, 4, 12, 6, 14) + SHUF2(a[0], a[1], 1, 9, 3, 11, 5, 13, 7, 15);
    v8 b1 = SHUF2(a[2], a[3], 0, 8, 2, 10, 4, 12, 6, 14) + SHUF2(a[2], a[3], 1, 9, 3, 11, 5, 13, 7, 15);
    v8 b2 = SHUF2(a[4], a[5], 0, 8, 2, 10, 4, 12, 6, 14) + SHUF2(a[4], a[5], 1, 9, 3, 11, 5, 13, 7, 15);
    v8 b3 = SHUF2(a[6], a[7], 0, 8, 2, 10, 4, 12, 6, 14) + SHUF2(a[6], a[7], 1, 9, 3, 11, 5, 13, 7, 15);
    v8 c0 = SHUF2(b0, b1, 0, 1, 8, 9, 4, 5, 12, 13) + SHUF2(b0, b1, 2, 3, 10, 11, 6, 7, 14, 15);
    v8 c1 = SHUF2(b2, b3, 0, 1, 8, 9, 4, 5, 12, 13) + SHUF2(b2, b3, 2, 3, 10, 11, 6, 7, 14, 15);
    return SHUF2(c0, c1, 0, 1, 2, 3, 8, 9, 10, 11) + SHUF2(c0, c1, 4, 5, 6, 7, 12, 13, 14, 15);
}

/* One channel of a SISO diagonal SSM, delta form (see the top): updates xs r(2N) in place; y is the lane sum
   of the returned vector plus *tail (the modes past the last 8, and the D skip or R's u column).
   8 modes at a time in vector registers, the rest one by one. */
static inline v8 ssm_channel(float *restrict xs, const float *restrict ac, const float *restrict as,
                             const float *restrict bc, const float *restrict cc, float d, float u, int64_t N,
                             int old_readout, float *tail) {
    v8 acc = {0, 0, 0, 0, 0, 0, 0, 0};
    float y = 0.0f;
    int64_t n = 0;
    for (; n + 8 <= N; n += 8) {
        v8 xr = ld8(xs + n), xi = ld8(xs + N + n);
        if (old_readout) acc += ld8(cc + n) * xr + ld8(cc + N + n) * xi;
        v8 nr = xr + (ld8(ac + n) * xr + ld8(as + n) * xi + ld8(bc + n) * u);
        v8 ni = xi + (ld8(ac + N + n) * xi + ld8(as + N + n) * xr + ld8(bc + N + n) * u);
        st8(xs + n, nr);
        st8(xs + N + n, ni);
        if (!old_readout) acc += ld8(cc + n) * nr + ld8(cc + N + n) * ni;
    }
    for (; n < N; n++) {
        float xr = xs[n], xi = xs[N + n];
        if (old_readout) y += cc[n] * xr + cc[N + n] * xi;
        float nr = xr + (ac[n] * xr + as[n] * xi + bc[n] * u);         /* swap(X)_n = Im x_n */
        float ni = xi + (ac[N + n] * xi + as[N + n] * xr + bc[N + n] * u); /* swap(X)_{N+n} = Re x_n */
        xs[n] = nr;
        xs[N + n] = ni;
        if (!old_readout) y += cc[n] * nr + cc[N + n] * ni;
    }
    *tail = y + (old_readout ? cc[2 * N] * u : d * u);        /* R's last column, or the D skip */
    return acc;
}

/* LayerNormalization over the last axis (onnxruntime: mean, then the mean of squared deviations). */
static void layernorm(int64_t T, int64_t H, const float *restrict in, float *restrict out,
                      const float *restrict g, const float *restrict b, float eps) {
    for (int64_t t = 0; t < T; t++) {
        const float *x = in + t * H;
        float *o = out + t * H;
        v8 s8 = vsplat(0.0f);
        float s1 = 0.0f;
        int64_t i = 0;
        for (; i + 8 <= H; i += 8) s8 += ld8(x + i);
        for (; i < H; i++) s1 += x[i];
        const float m = (hsum8(s8) + s1) / (float)H;
        v8 q8 = vsplat(0.0f);
        float q1 = 0.0f;
        for (i = 0; i + 8 <= H; i += 8) { v8 d = ld8(x + i) - m; q8 += d * d; }
        for (; i < H; i++) { float d = x[i] - m; q1 += d * d; }
        const float inv = 1.0f / sqrtf((hsum8(q8) + q1) / (float)H + eps);
        for (i = 0; i + 8 <= H; i += 8) st8(o + i, (ld8(x + i) - m) * inv * ld8(g + i) + ld8(b + i));
        for (; i < H; i++) o[i] = (x[i] - m) * inv * g[i] + b[i];
    }
}

/* ---- vector exp, erf, sigmoid, GELU (8 lanes; our own range reduction and polynomials, float32 accuracy) ---- */

static inline v8 vsel(v8i m, v8 a, v8 b) { return (v8)((m & (v8i)a) | (~m & (v8i)b)); }

/* exp(x): x = n ln2 + r, |r| <= ln2/2, exp(r) by its Taylor series to r^7 (truncation < 5e-9 relative),
   times 2^n built in the exponent bits. Clamped to [-87.3, 88.7] (the float32 normal range). */
static inline v8 vexp(v8 x) {
    const v8 hi = vsplat(88.7f), lo = vsplat(-87.3f), magic = vsplat(12582912.0f);  /* 1.5 * 2^23 */
    x = vsel(x > hi, hi, x);
    x = vsel(x < lo, lo, x);
    v8 n = (x * 1.44269504088896341f + magic) - magic;      /* round to nearest integer */
    v8 r = (x - n * 0.693359375f) - n * -2.12194440e-4f;     /* ln2 split in two: r exact enough */
    v8 p = vsplat(1.0f / 5040.0f);
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    v8i e = (__builtin_convertvector(n, v8i) + 127) << 23;
    return p * (v8)e;
}

/* erf(x): |x| < 1: Taylor series of 2/sqrt(pi) (x - x^3/3 + ...) to x^25 (truncation < 1e-9 relative);
   else 1 - erfc(|x|) with erfc = t exp(-x^2 + P(t)), t = 1/(1 + |x|/2), P the degree-9 Chebyshev fit of
   Numerical Recipes' erfcc (relative error < 1.2e-7 of erfc <= 0.16 there), with the sign of x. */
static inline v8 verf(v8 x) {
    v8i neg = x < 0.0f;
    v8 a = vsel(neg, -x, x);
    v8 x2 = x * x;
    v8 s = vsplat(8.35070279514724e-11f);                           /* (-1)^k / (k! (2k+1)), k = 12..0 */
    s = s * x2 + -1.0892221037148573e-09f;
    s = s * x2 + 1.3122532963802806e-08f;
    s = s * x2 + -1.4503852223150468e-07f;
    s = s * x2 + 1.4589169000933706e-06f;
    s = s * x2 + -1.3227513227513228e-05f;
    s = s * x2 + 0.00010683760683760684f;
    s = s * x2 + -0.0007575757575757576f;
    s = s * x2 + 0.004629629629629629f;
    s = s * x2 + -0.023809523809523808f;
    s = s * x2 + 0.1f;
    s = s * x2 + -0.3333333333333333f;
    s = s * x2 + 1.0f;
    v8 small = s * x * 1.12837916709551257f;
    const v8 ab = vsel(a > 4.0f, vsplat(4.0f), a);            /* erf = 1.0f from |x| = 3.9: no subnormals */
    v8 t = 1.0f / (1.0f + 0.5f * ab);
    v8 q = vsplat(0.17087277f);
    q = q * t - 0.82215223f;
    q = q * t + 1.48851587f;
    q = q * t - 1.13520398f;
    q = q * t + 0.27886807f;
    q = q * t - 0.18628806f;
    q = q * t + 0.09678418f;
    q = q * t + 0.37409196f;
    q = q * t + 1.00002368f;
    q = q * t - 1.26551223f;
    v8 big = 1.0f - t * vexp(q - ab * ab);
    big = vsel(neg, -big, big);
    return vsel(a < 1.0f, small, big);
}

static inline v8 vgelu(v8 v) { return 0.5f * v * (1.0f + verf(v * 0.70710678118654752f)); }  /* exact-erf GELU */
static inline v8 vsigmoid(v8 v) {                             /* |v| <= 80: no subnormal 1 / (1 + e^-v) */
    v = vsel(v > 80.0f, vsplat(80.0f), v);
    v = vsel(v < -80.0f, vsplat(-80.0f), v);
    return 1.0f / (1.0f + vexp(-v));
}
/* tanh GELU (Hendrycks & Gimpel 2016; torch approximate="tanh", jax.nn.gelu): 0.5 v (1 + tanh(k)) with
   k = sqrt(2/pi) (v + 0.044715 v^3), written as v sigmoid(2k) (the same function: 0.5 (1 + tanh k) = sigmoid 2k),
   which needs one exp and has no cancellation near v = 0 */
static inline v8 vgelu_tanh(v8 v) {
    v8 k = 0.79788456080286536f * (v + 0.044715f * (v * v * v));
    return v * vsigmoid(2.0f * k);
}

/* v[0..n) = f(v), 8 at a time; the tail through a padded copy */
#define MAP8(v, n, F)                                                          \
    do {                                                                       \
        int64_t i_ = 0;                                                        \
        for (; i_ + 8 <= (n); i_ += 8) st8((v) + i_, F(ld8((v) + i_)));        \
        if (i_ < (n)) {                                                        \
            float tmp_[8] = {0, 0, 0, 0, 0, 0, 0, 0};                          \
            for (int64_t j_ = i_; j_ < (n); j_++) tmp_[j_ - i_] = (v)[j_];     \
            st8(tmp_, F(ld8(tmp_)));                                           \
            for (int64_t j_ = i_; j_ < (n); j_++) (v)[j_] = tmp_[j_ - i_];     \
        }                                                                      \
    } while (0)

static void activation(float *v, int64_t n, int act) {
    if (act == ACT_GELU) MAP8(v, n, vgelu);
    else if (act == ACT_GELU_TANH) MAP8(v, n, vgelu_tanh);
    else if (act == ACT_RELU) { for (int64_t i = 0; i < n; i++) v[i] = v[i] > 0.0f ? v[i] : 0.0f; }
    else if (act == ACT_TANH) { for (int64_t i = 0; i < n; i++) v[i] = tanhf(v[i]); }
}

static void block_tail(const esf_ctx *c, const int64_t *bd, int64_t T, float *h, float *z, float *m);

/* One SISO block on T rows starting at row r0. h r(T H) is updated in place; z, m are scratch. */
static void block_siso(const esf_ctx *c, const int64_t *bd, int64_t r0, int64_t T, float *h, float *z,
                       float *m) {
    const float *w = c->w;
    const int64_t H = c->desc[H_H], N = bd[B_N], N2 = 2 * N;
    const int has_ln = bd[B_LN_G] >= 0;
    const float eps = has_ln ? w[bd[B_LN_EPS]] : 0.0f;
    if (has_ln && bd[B_PRENORM])
        layernorm(T, H, h, z, w + bd[B_LN_G], w + bd[B_LN_B], eps);
    else
        memcpy(z, h, (size_t)(T * H) * sizeof(float));

    /* diagonal recurrence, delta form, state rows X r(H 2N) */
    const float *Ac = w + bd[B_AC], *As = w + bd[B_AS], *Bc = w + bd[B_BC], *Cc = w + bd[B_CC];
    const float *D = bd[B_D] >= 0 ? w + bd[B_D] : NULL;
    const int old_readout = (int)bd[B_READOUT];
    float *S = c->state[bd[B_STATE]];
    const int64_t ldc = old_readout ? N2 + 1 : N2;           /* R r(H 2N+1) | Cc r(H 2N) */
    const int64_t H8 = H - H % 8;
    /* channel groups outer, rows inner: a group's coefficients stay in L1 across the tile's rows */
    for (int64_t ch = 0; ch < H8; ch += 8) {                 /* 8 channels, their sums in one reduction */
        for (int64_t t = 0; t < T; t++) {
            float *zt = z + t * H;
            float *X = S + (r0 + t) * H * N2;
            v8 acc[8];
            float tails[8];
            for (int j = 0; j < 8; j++) {
                const int64_t c = ch + j;
                acc[j] = ssm_channel(X + c * N2, Ac + c * N2, As + c * N2, Bc + c * N2, Cc + c * ldc,
                                     D ? D[c] : 0.0f, zt[c], N, old_readout, &tails[j]);
            }
            st8(zt + ch, reduce8(acc) + ld8(tails));
        }
    }
    for (int64_t t = 0; t < T; t++) {
        float *zt = z + t * H;
        float *X = S + (r0 + t) * H * N2;
        for (int64_t ch = H8; ch < H; ch++) {
            float tl;
            v8 acc = ssm_channel(X + ch * N2, Ac + ch * N2, As + ch * N2, Bc + ch * N2, Cc + ch * ldc,
                                 D ? D[ch] : 0.0f, zt[ch], N, old_readout, &tl);
            zt[ch] = hsum8(acc) + tl;
        }
    }

    block_tail(c, bd, T, h, z, m);
}

/* What follows the SSM in every block kind: z r(T H) holds the SSM output; activation, mixing, residual
   (or h = the mixed output), postnorm. */
static void block_tail(const esf_ctx *c, const int64_t *bd, int64_t T, float *h, float *z, float *m) {
    const float *w = c->w;
    const int64_t H = c->desc[H_H];
    const int has_ln = bd[B_LN_G] >= 0;
    const float eps = has_ln ? w[bd[B_LN_EPS]] : 0.0f;
    const int res = (int)bd[B_RESIDUAL];
    const int act = (int)bd[B_ACT];
    activation(z, T * H, act);

    /* mixing and residual */
    const int mix = (int)bd[B_MIX];
    if (mix == MIX_NONE) {
        for (int64_t i = 0; i < T * H; i++) h[i] = res ? h[i] + z[i] : z[i];
    } else if (mix == MIX_LINEAR) {
        matmul(T, H, H, z, H, w + bd[B_MIX_W], w + bd[B_MIX_B], m, H);
        for (int64_t i = 0; i < T * H; i++) h[i] = res ? h[i] + m[i] : m[i];
    } else {                                                 /* GLU: m r(T 2H) = [a | g] */
        matmul(T, H, 2 * H, z, H, w + bd[B_MIX_W], w + bd[B_MIX_B], m, 2 * H);
        for (int64_t t = 0; t < T; t++) {
            float *a = m + t * 2 * H, *g = a + H, *ht = h + t * H;
            MAP8(g, H, vsigmoid);
            for (int64_t i = 0; i < H; i++) ht[i] = res ? ht[i] + a[i] * g[i] : a[i] * g[i];
        }
    }
    if (has_ln && !bd[B_PRENORM]) {
        layernorm(T, H, h, z, w + bd[B_LN_G], w + bd[B_LN_B], eps);
        memcpy(h, z, (size_t)(T * H) * sizeof(float));
    }
}

/* One MIMO block (LRU, S5) on T rows starting at row r0; xu r(T 2P+H) and dx r(T 2P) are scratch. */
static void block_mimo(const esf_ctx *c, const int64_t *bd, int64_t r0, int64_t T, float *h, float *z,
                       float *m, float *xu, float *dx) {
    const float *w = c->w;
    const int64_t H = c->desc[H_H], P = bd[B_N], P2 = 2 * P, K = P2 + H;
    if (bd[B_LN_G] >= 0 && bd[B_PRENORM])
        layernorm(T, H, h, z, w + bd[B_LN_G], w + bd[B_LN_B], w[bd[B_LN_EPS]]);
    else
        memcpy(z, h, (size_t)(T * H) * sizeof(float));
    float *S = c->state[bd[B_STATE]] + r0 * P2;              /* rows of X r(2P) */
    for (int64_t t = 0; t < T; t++) {                        /* [X | z], X the old state */
        memcpy(xu + t * K, S + t * P2, (size_t)P2 * sizeof(float));
        memcpy(xu + t * K + P2, z + t * H, (size_t)H * sizeof(float));
    }
    matmul(T, H, P2, z, H, w + bd[B_BC], w + bd[B_BD], dx, P2);    /* z Bm + bd  (T 2P) */
    matmul(T, K, H, xu, K, w + bd[B_CC], w + bd[B_BY], z, H);      /* y = [X | z] R + by  (T H) */
    const float *restrict ac = w + bd[B_AC], *restrict as = w + bd[B_AS];
    for (int64_t t = 0; t < T; t++) {                        /* X' = X + (Ac X + As swap(X) + dz) */
        const float *restrict x = xu + t * K;
        const float *restrict d = dx + t * P2;
        float *restrict X = S + t * P2;
        for (int64_t n = 0; n < P; n++)
            X[n] = x[n] + (ac[n] * x[n] + as[n] * x[P + n] + d[n]);
        for (int64_t n = 0; n < P; n++)
            X[P + n] = x[P + n] + (ac[P + n] * x[P + n] + as[P + n] * x[n] + d[P + n]);
    }
    block_tail(c, bd, T, h, z, m);
}

/* the most floats a row of [X | z] (2P + H) or of the update (2P) needs over the MIMO blocks */
static int64_t mimo_floats(const int64_t *desc) {
    int64_t most = 0;
    for (int64_t i = 0; i < desc[H_NBLOCKS]; i++) {
        const int64_t *bd = desc + HDR + BLK * i;
        if (bd[B_KIND] == KIND_MIMO && 2 * bd[B_N] + desc[H_H] > most) most = 2 * bd[B_N] + desc[H_H];
    }
    return most;
}

/* floats of scratch one thread needs */
int64_t esf_scratch_floats(const int64_t *desc) {
    const int64_t H = desc[H_H], O = desc[H_O];
    return TILE * (H + H + 2 * H + O + 2 * mimo_floats(desc));   /* xu and dx: TILE * most each */
}

int64_t esf_version(void) { return ESF_VERSION; }

/* Validate a descriptor once at load: 0 if this build runs it. */
int64_t esf_check(const int64_t *desc, int64_t n_desc) {
    if (n_desc < HDR || desc[H_VERSION] != ESF_VERSION) return ERR_VERSION;
    const int64_t nb = desc[H_NBLOCKS];
    if (nb < 0 || n_desc != HDR + BLK * nb || desc[H_H] < 1 || desc[H_O] < 1) return ERR_SHAPE;
    if (desc[H_VOCAB] <= 0 && desc[H_ENC_W] < 0 && desc[H_DIN] != desc[H_H]) return ERR_SHAPE;
    if (desc[H_DEC_W] < 0 && desc[H_O] != desc[H_H]) return ERR_SHAPE;
    for (int64_t i = 0; i < nb; i++) {
        const int64_t *bd = desc + HDR + BLK * i;
        if (bd[B_KIND] != KIND_SISO && bd[B_KIND] != KIND_MIMO) return ERR_KIND;
        if (bd[B_N] < 1 || bd[B_ACT] < 0 || bd[B_ACT] > ACT_GELU_TANH || bd[B_MIX] < 0 || bd[B_MIX] > MIX_GLU)
            return ERR_SHAPE;
        if (bd[B_KIND] == KIND_MIMO && (bd[B_AC] < 0 || bd[B_AS] < 0 || bd[B_BC] < 0 || bd[B_CC] < 0 ||
                                        bd[B_BD] < 0 || bd[B_BY] < 0))
            return ERR_SHAPE;
    }
    return ERR_OK;
}

/* rows [r0, r1) of one step */
static int64_t run_rows(const esf_ctx *c, int64_t r0, int64_t r1, float *scr) {
    const int64_t *d = c->desc;
    const int64_t H = d[H_H], O = d[H_O], din = d[H_DIN], V = d[H_VOCAB], nb = d[H_NBLOCKS];
    const float *w = c->w;
    float *h = scr, *z = h + TILE * H, *m = z + TILE * H, *v = m + TILE * 2 * H, *xu = v + TILE * O;
    float *dx = xu + TILE * mimo_floats(d);
    for (int64_t t0 = r0; t0 < r1; t0 += TILE) {
        const int64_t T = (r1 - t0) < TILE ? (r1 - t0) : TILE;
        /* encoder */
        if (V > 0) {
            const int64_t *tok = (const int64_t *)c->x + t0;
            for (int64_t t = 0; t < T; t++)                  /* ids were checked in esf_step */
                memcpy(h + t * H, w + d[H_ENC_W] + tok[t] * H, (size_t)H * sizeof(float));
        } else if (d[H_ENC_W] >= 0) {
            const float *x = (const float *)c->x + t0 * din;
            matmul(T, din, H, x, din, w + d[H_ENC_W], w + d[H_ENC_B], h, H);
        } else {                                             /* no encoder: x is the H channels */
            memcpy(h, (const float *)c->x + t0 * H, (size_t)(T * H) * sizeof(float));
        }
        /* blocks */
        for (int64_t i = 0; i < nb; i++) {
            const int64_t *bd = d + HDR + BLK * i;
            if (bd[B_KIND] == KIND_MIMO) block_mimo(c, bd, t0, T, h, z, m, xu, dx);
            else block_siso(c, bd, t0, T, h, z, m);
        }
        /* head */
        const float *hv = h;
        if (d[H_NF_G] >= 0) {
            layernorm(T, H, h, z, w + d[H_NF_G], w + d[H_NF_B], w[d[H_NF_EPS]]);
            hv = z;
        }
        if (d[H_DEC_W] >= 0) matmul(T, H, O, hv, H, w + d[H_DEC_W], w + d[H_DEC_B], v, O);
        else memcpy(v, hv, (size_t)(T * O) * sizeof(float));  /* no decoder: O == H */
        float *y = c->y + t0 * O;
        if (d[H_POOL]) {                                     /* running mean, state [m (O) | count (1)] */
            float *P = c->state[d[H_POOL_STATE]] + t0 * (O + 1);
            for (int64_t t = 0; t < T; t++) {
                float *p = P + t * (O + 1);
                float c1 = p[O] + 1.0f;
                for (int64_t o = 0; o < O; o++) {
                    float mo = p[o] + (v[t * O + o] - p[o]) / c1;
                    y[t * O + o] = mo;
                    p[o] = mo;
                }
                p[O] = c1;
            }
        } else {
            memcpy(y, v, (size_t)(T * O) * sizeof(float));
        }
    }
    return ERR_OK;
}

typedef struct { const esf_ctx *c; int64_t r0, r1; float *scr; int64_t rc; } job_t;

static void *run_job(void *p) {
    job_t *j = (job_t *)p;
    j->rc = run_rows(j->c, j->r0, j->r1, j->scr);
    return NULL;
}

#define MAX_THREADS 64
#define MIN_ROWS_PER_THREAD 16  /* below this a thread start (~10-30 us) costs more than it saves */

/* One step for all rows. Returns 0, or ERR_TOKEN (a token id out of range) with nothing changed. */
int64_t esf_step(const esf_ctx *c) {
    const int64_t B = c->B, per = esf_scratch_floats(c->desc), V = c->desc[H_VOCAB];
    if (V > 0) {
        const int64_t *tok = (const int64_t *)c->x;
        for (int64_t b = 0; b < B; b++)
            if (tok[b] < 0 || tok[b] >= V) return ERR_TOKEN;
    }
    int64_t nt = c->nthreads < 1 ? 1 : (c->nthreads > MAX_THREADS ? MAX_THREADS : c->nthreads);
    const int64_t max_nt = (B + MIN_ROWS_PER_THREAD - 1) / MIN_ROWS_PER_THREAD;
    if (nt > max_nt) nt = max_nt;
    if (nt <= 1) return run_rows(c, 0, B, c->scratch);
    pthread_t tid[MAX_THREADS];
    job_t jobs[MAX_THREADS];
    /* split on tile boundaries so each row's tile mates, hence nothing about its arithmetic, depend on nt */
    const int64_t tiles = (B + TILE - 1) / TILE;
    int64_t started = 0, rc = ERR_OK;
    for (int64_t k = 0; k < nt; k++) {
        int64_t a = tiles * k / nt * TILE, b = tiles * (k + 1) / nt * TILE;
        jobs[k] = (job_t){c, a, b < B ? b : B, c->scratch + k * per, ERR_OK};
    }
    for (int64_t k = 1; k < nt; k++) {
        if (pthread_create(&tid[k], NULL, run_job, &jobs[k]) != 0) break;
        started = k;
    }
    for (int64_t k = started + 1; k < nt; k++) run_job(&jobs[k]);   /* threads that did not start */
    run_job(&jobs[0]);
    for (int64_t k = 1; k <= started; k++) pthread_join(tid[k], NULL);
    for (int64_t k = 0; k < nt; k++) if (jobs[k].rc != ERR_OK) rc = jobs[k].rc;
    return rc;
}

/* L steps: x (B, L, d_in) float32 or (B, L) int64, y (B, L, O); gathers each step into the ctx buffers. */
int64_t esf_run(esf_ctx *c, const void *xs, float *ys, int64_t L, void *xbuf) {
    const int64_t B = c->B, O = c->desc[H_O], V = c->desc[H_VOCAB];
    const int64_t esz = V > 0 ? (int64_t)sizeof(int64_t) : (int64_t)sizeof(float) * c->desc[H_DIN];
    const void *x0 = c->x;
    float *y0 = c->y;
    for (int64_t t = 0; t < L; t++) {
        for (int64_t b = 0; b < B; b++)
            memcpy((char *)xbuf + b * esz, (const char *)xs + (b * L + t) * esz, (size_t)esz);
        c->x = xbuf;
        int64_t rc = esf_step(c);
        if (rc != ERR_OK) { c->x = x0; return rc; }
        for (int64_t b = 0; b < B; b++)
            memcpy(ys + (b * L + t) * O, c->y + b * O, (size_t)O * sizeof(float));
    }
    c->x = x0;
    c->y = y0;
    return ERR_OK;
}
