/* AVX-512 arithmetic of the native kernel (bert_int8.c, the one file that includes this):
 * e^x, erf, the GELU by table, a 16 x 16 register transpose, lane masks, the row-wise steps
 * (per-token int8 quantization, LayerNorm) and the epilogue both GEMM paths share. No AMX here;
 * nothing runs when the library loads. */
#ifndef BERT_VECTOR_MATH_H
#define BERT_VECTOR_MATH_H

#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

/* e^x to ~2 ulp: 2^n * p(r), r = x - n ln2 in [-ln2/2, ln2/2], degree-6 Taylor polynomial. */
static inline __m512 exp512(__m512 x) {
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.0f)), _mm512_set1_ps(-88.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* e^x for the softmax (x <= 0): 2^n 2^f, f in [-1/2, 1/2], 2^f by its degree-4 Taylor
 * polynomial (~1e-5 relative; the probabilities are rounded to bf16, 2^-9, right after). */
static inline __m512 exp512_softmax(__m512 x) {
    const __m512 t = _mm512_mul_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)),
                                   _mm512_set1_ps(1.44269504088896341f));
    const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(t, n);
    __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(9.618129107628477e-3f), f,
                               _mm512_set1_ps(5.550410866482158e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402265069591007e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931471805599453e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* erf by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7): the same approximation as the numpy
 * reference (retina/artifacts/minilm_reference.py). */
static inline __m512 erf512(__m512 z) {
    __m512 az = _mm512_abs_ps(z);
    /* 1 / (1 + p|z|) by rcp14 and one Newton step (~1e-8 relative; a division is 3x slower) */
    __m512 den = _mm512_fmadd_ps(az, _mm512_set1_ps(0.3275911f), _mm512_set1_ps(1.0f));
    __m512 t = _mm512_rcp14_ps(den);
    t = _mm512_mul_ps(t, _mm512_fnmadd_ps(den, t, _mm512_set1_ps(2.0f)));
    __m512 p = _mm512_set1_ps(1.061405429f);
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453152027f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421413741f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284496736f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254829592f));
    p = _mm512_mul_ps(p, t);
    __m512 e = exp512(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), az), az));
    __m512 erf_abs = _mm512_fnmadd_ps(p, e, _mm512_set1_ps(1.0f));
    /* copy z's sign onto erf(|z|) */
    __m512 sign = _mm512_and_ps(z, _mm512_castsi512_ps(_mm512_set1_epi32((int)0x80000000)));
    return _mm512_or_ps(erf_abs, sign);
}

/* GELU with erf (BERT's), x Phi(x), by table: Phi on [-5, 5) in 32 cells, each a degree-4
 * Taylor polynomial about its centre; Phi is 0 below -5 and 1 from 5 on. Within 2e-6 of
 * x Phi(x) everywhere (the test's bound; far below one int8 step of the FFN's activations),
 * in about half the vector instructions of evaluating erf512 for every element. */
#define GELU_RANGE 5.0f
#define GELU_STEP (2 * GELU_RANGE / 32)
static float gelu_coef[5][32] __attribute__((aligned(64)));

/* The table, from erf512 at the cells' centres c: Phi(c), then Phi's derivatives over k!:
 * phi, -c phi / 2, (c^2 - 1) phi / 6, (3c - c^3) phi / 24. */
static void gelu_table(void) {
    for (int half = 0; half < 2; half++) {
        const __m512 cell = _mm512_add_ps(
            _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_ps(16.0f * half + 0.5f));
        const __m512 c =
            _mm512_fmadd_ps(cell, _mm512_set1_ps(GELU_STEP), _mm512_set1_ps(-GELU_RANGE));
        const __m512 c2 = _mm512_mul_ps(c, c), one = _mm512_set1_ps(1.0f);
        const __m512 pdf = _mm512_mul_ps(exp512(_mm512_mul_ps(c2, _mm512_set1_ps(-0.5f))),
                                         _mm512_set1_ps(0.39894228040143268f));
        const __m512 z = _mm512_mul_ps(c, _mm512_set1_ps(0.70710678118654752f));
        const __m512 d3 = _mm512_fnmadd_ps(c, c2, _mm512_mul_ps(c, _mm512_set1_ps(3.0f)));
        const __m512 coef[5] = {
            _mm512_mul_ps(_mm512_add_ps(one, erf512(z)), _mm512_set1_ps(0.5f)),
            pdf,
            _mm512_mul_ps(_mm512_mul_ps(c, pdf), _mm512_set1_ps(-0.5f)),
            _mm512_mul_ps(_mm512_mul_ps(_mm512_sub_ps(c2, one), pdf), _mm512_set1_ps(1.0f / 6)),
            _mm512_mul_ps(_mm512_mul_ps(d3, pdf), _mm512_set1_ps(1.0f / 24)),
        };
        for (int k = 0; k < 5; k++) _mm512_store_ps(&gelu_coef[k][16 * half], coef[k]);
    }
}

/* Filled on the first call, not when the library loads: loading must run no AVX-512 code, so
 * that a CPU without it gets the loader's error (bert_paths offers no path) instead of SIGILL. */
static pthread_once_t gelu_once = PTHREAD_ONCE_INIT;

static inline __m512 gelu512(__m512 x) {
    /* t: x's position in cells, clamped to the table */
    const __m512 t = _mm512_min_ps(
        _mm512_max_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(1.0f / GELU_STEP), _mm512_set1_ps(16.0f)),
                      _mm512_setzero_ps()),
        _mm512_set1_ps(31.5f));
    const __m512 cell = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    const __m512i i = _mm512_cvttps_epi32(cell);
    const __m512 v = _mm512_mul_ps(_mm512_sub_ps(_mm512_sub_ps(t, cell), _mm512_set1_ps(0.5f)),
                                   _mm512_set1_ps(GELU_STEP));
#define COEF(k) \
    _mm512_permutex2var_ps(_mm512_load_ps(gelu_coef[k]), i, _mm512_load_ps(gelu_coef[k] + 16))
    __m512 p = _mm512_fmadd_ps(COEF(4), v, COEF(3));
    p = _mm512_fmadd_ps(p, v, COEF(2));
    p = _mm512_fmadd_ps(p, v, COEF(1));
    p = _mm512_fmadd_ps(p, v, COEF(0));
#undef COEF
    const __mmask16 inside = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-GELU_RANGE), _CMP_GE_OQ);
    const __mmask16 above = _mm512_cmp_ps_mask(x, _mm512_set1_ps(GELU_RANGE), _CMP_GE_OQ);
    return _mm512_mask_mov_ps(_mm512_maskz_mov_ps(inside, _mm512_mul_ps(x, p)), above, x);
}

/* --- row-wise steps ---------------------------------------------------------------------- */

/* One row of k floats (k % 16 == 0) as int8 with its own scale: q = round(x / s * 127 / amax),
 * stored as the byte q + offset (0 for the AMX path's signed bytes, VNNI_OFFSET for vnni.h's
 * unsigned ones). */
static void quantize_row(const float *x, int k, const float *inv_s, int offset, int8_t *q,
                         float *row_scale) {
    __m512 amax = _mm512_setzero_ps();
    for (int c = 0; c < k; c += 16) {
        __m512 v = _mm512_loadu_ps(x + c);
        if (inv_s) v = _mm512_mul_ps(v, _mm512_loadu_ps(inv_s + c));
        amax = _mm512_max_ps(amax, _mm512_abs_ps(v));
    }
    float m = _mm512_reduce_max_ps(amax);
    if (m == 0.0f) {
        memset(q, offset, (size_t)k);
        *row_scale = 0.0f;
        return;
    }
    __m512 mult = _mm512_set1_ps(127.0f / m);
    const __m128i shift = _mm_set1_epi8((char)offset);
    for (int c = 0; c < k; c += 16) {
        __m512 v = _mm512_loadu_ps(x + c);
        if (inv_s) v = _mm512_mul_ps(v, _mm512_loadu_ps(inv_s + c));
        __m512i i = _mm512_cvt_roundps_epi32(_mm512_mul_ps(v, mult),
                                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm_storeu_si128((__m128i *)(q + c), _mm_add_epi8(_mm512_cvtsepi32_epi8(i), shift));
    }
    *row_scale = m / 127.0f;
}

enum { EPI_NONE = 0, EPI_GELU = 1, EPI_RESIDUAL = 2 };

/* 16 output columns of one row of a linear layer from their exact int32 sums: times the row's
 * and the columns' scales, plus the bias, then the GELU or plus the residual row (epilogue).
 * Both GEMM paths end here, so the same sums give the same bits. */
static inline void store_linear16(__m512i sums, __m512 w_scale, __m512 bias, float row_scale,
                                  int epilogue, const float *residual, float *out) {
    __m512 v = _mm512_cvtepi32_ps(sums);
    v = _mm512_fmadd_ps(v, _mm512_mul_ps(w_scale, _mm512_set1_ps(row_scale)), bias);
    if (epilogue == EPI_GELU) v = gelu512(v);
    else if (epilogue == EPI_RESIDUAL) v = _mm512_add_ps(v, _mm512_loadu_ps(residual));
    _mm512_storeu_ps(out, v);
}

/* LayerNorm of one row of h floats into y (torch's: biased variance, eps inside the root). */
static void layer_norm_row(const float *x, int h, const float *g, const float *b, float eps,
                           float *y) {
    __m512 s = _mm512_setzero_ps();
    for (int c = 0; c < h; c += 16) s = _mm512_add_ps(s, _mm512_loadu_ps(x + c));
    float mean = _mm512_reduce_add_ps(s) / (float)h;
    __m512 vm = _mm512_set1_ps(mean), v2 = _mm512_setzero_ps();
    for (int c = 0; c < h; c += 16) {
        __m512 d = _mm512_sub_ps(_mm512_loadu_ps(x + c), vm);
        v2 = _mm512_fmadd_ps(d, d, v2);
    }
    float inv = 1.0f / sqrtf(_mm512_reduce_add_ps(v2) / (float)h + eps);
    __m512 vi = _mm512_set1_ps(inv);
    for (int c = 0; c < h; c += 16) {
        __m512 d = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + c), vm), vi);
        _mm512_storeu_ps(y + c, _mm512_fmadd_ps(d, _mm512_loadu_ps(g + c), _mm512_loadu_ps(b + c)));
    }
}

/* --- lanes and registers ------------------------------------------------------------------ */

/* The lanes of 16 floats starting at j that lie before len. */
static inline __mmask16 lanes_before(int j, int len) {
    return j >= len ? 0 : len - j >= 16 ? 0xFFFF : (__mmask16)((1u << (len - j)) - 1);
}

/* r[i][j] becomes r[j][i]: a 16 x 16 transpose of 32-bit elements in registers. */
static inline void transpose16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    /* u[4g + c], 128-bit lane L: column 4L + c of rows 4g..4g+3 */
    for (int g = 0; g < 16; g += 4) {
        r[g] = _mm512_unpacklo_epi64(t[g], t[g + 2]);
        r[g + 1] = _mm512_unpackhi_epi64(t[g], t[g + 2]);
        r[g + 2] = _mm512_unpacklo_epi64(t[g + 1], t[g + 3]);
        r[g + 3] = _mm512_unpackhi_epi64(t[g + 1], t[g + 3]);
    }
    /* then a 4 x 4 transpose of 128-bit lanes across u[c], u[4 + c], u[8 + c], u[12 + c] */
    for (int c = 0; c < 4; c++) {
        const __m512i v0 = _mm512_shuffle_i32x4(r[c], r[4 + c], 0x88);
        const __m512i v1 = _mm512_shuffle_i32x4(r[c], r[4 + c], 0xDD);
        const __m512i v2 = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0x88);
        const __m512i v3 = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0xDD);
        t[c] = _mm512_shuffle_i32x4(v0, v2, 0x88);
        t[4 + c] = _mm512_shuffle_i32x4(v1, v3, 0x88);
        t[8 + c] = _mm512_shuffle_i32x4(v0, v2, 0xDD);
        t[12 + c] = _mm512_shuffle_i32x4(v1, v3, 0xDD);
    }
    for (int i = 0; i < 16; i++) r[i] = t[i];
}

#endif
