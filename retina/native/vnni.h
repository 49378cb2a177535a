/* The kernel's path for CPUs with AVX-512 VNNI but no AMX (Xeon Cascade Lake and Ice Lake, AMD
 * Zen 4): the int8 GEMM on VPDPBUSD over the same packed weights as the AMX path, and the
 * attention in fp32 on operands rounded to bf16 where the AMX path rounds them. Included by
 * bert_int8.c only; nothing here touches a tile or an AVX512-BF16 instruction.
 *
 * The GEMM's int32 sums are the AMX path's to the bit. VPDPBUSD multiplies unsigned by signed
 * bytes, so this path's activations are stored offset by 128 (quantize_row's offset) and
 * 128 x each column's weight sum is taken back off; both sums are exact. The attention adds its
 * products in another order than the tiles do, so a vector differs from the AMX path's in its
 * last bits: each path is gated on its own at build (retina/artifacts/text_native.py).
 */
#ifndef BERT_VNNI_H
#define BERT_VNNI_H

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "vector_math.h"

/* The activations' offset on this path: int8 q is stored as the byte q + 128. */
#define VNNI_OFFSET 128

/* --- the int8 GEMM ----------------------------------------------------------------------- */

/* Rows [0, rows) of nc (1-4, a constant where inlined) column blocks from nb on: 4 rows x nc
 * blocks of 16 columns in registers, over k / 4 steps of 4 bytes. Column block nb's weights are
 * its k / 64 tiles back to back, which is k / 4 rows of 64 bytes (16 columns x 4 k each): the
 * operand VPDPBUSD takes. The rows past rows up to the next 4 are computed from the zero-padded
 * activations and never stored. */
static inline __attribute__((always_inline)) void vnni_columns(
    const uint8_t *a, const float *row_scale, int rows, const bert_linear *lin, int nb,
    const int nc, int epilogue, const float *residual, float *out) {
    const int k = lin->k, n = lin->n, quads = k / 4;
    const int8_t *b = lin->w + (size_t)nb * quads * 64;
    __m512i comp[4], w[4];
    for (int j = 0; j < nc; j++) comp[j] = _mm512_setzero_si512();
    const __m512i offset = _mm512_set1_epi8((char)VNNI_OFFSET);
    for (int q = 0; q < quads; q++)
        for (int j = 0; j < nc; j++)
            comp[j] = _mm512_dpbusd_epi32(comp[j], offset,
                                          _mm512_loadu_si512(b + ((size_t)j * quads + q) * 64));
    __m512 ws[4], bias[4];
    for (int j = 0; j < nc; j++) {
        ws[j] = _mm512_loadu_ps(lin->scale + (nb + j) * 16);
        bias[j] = _mm512_loadu_ps(lin->bias + (nb + j) * 16);
    }
    for (int m0 = 0; m0 < rows; m0 += 4) {
        __m512i acc[4][4];
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < nc; j++) acc[i][j] = _mm512_setzero_si512();
        const uint8_t *a0 = a + (size_t)m0 * k;
        for (int q = 0; q < quads; q++) {
            for (int j = 0; j < nc; j++) w[j] = _mm512_loadu_si512(b + ((size_t)j * quads + q) * 64);
            for (int i = 0; i < 4; i++) {
                int32_t four;
                memcpy(&four, a0 + (size_t)i * k + 4 * q, 4);
                const __m512i x = _mm512_set1_epi32(four);
                for (int j = 0; j < nc; j++) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], x, w[j]);
            }
        }
        for (int i = 0; i < 4 && m0 + i < rows; i++) {
            const int m = m0 + i;
            for (int j = 0; j < nc; j++) {
                const int c0 = (nb + j) * 16;
                store_linear16(_mm512_sub_epi32(acc[i][j], comp[j]), ws[j], bias[j], row_scale[m],
                               epilogue, residual ? residual + (size_t)m * n + c0 : NULL,
                               out + (size_t)m * n + c0);
            }
        }
    }
}

/* gemm_amx's contract (bert_int8.c) on VPDPBUSD; a holds the activations offset by 128. */
static void gemm_vnni(const uint8_t *a, const float *row_scale, int rows, const bert_linear *lin,
                      int nb_lo, int nb_hi, int epilogue, const float *residual, float *out) {
    for (int nb = nb_lo; nb < nb_hi; nb += 4) {
        switch (nb_hi - nb) {
        case 1: vnni_columns(a, row_scale, rows, lin, nb, 1, epilogue, residual, out); break;
        case 2: vnni_columns(a, row_scale, rows, lin, nb, 2, epilogue, residual, out); break;
        case 3: vnni_columns(a, row_scale, rows, lin, nb, 3, epilogue, residual, out); break;
        default: vnni_columns(a, row_scale, rows, lin, nb, 4, epilogue, residual, out);
        }
    }
}

/* --- attention --------------------------------------------------------------------------- */

/* x rounded to bf16 (nearest, ties to even, as VCVTNE2PS2BF16 rounds), kept as fp32. */
static inline __m512 round_bf16(__m512 x) {
    const __m512i bits = _mm512_castps_si512(x);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    const __m512i up = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF)));
    return _mm512_castsi512_ps(_mm512_and_si512(up, _mm512_set1_epi32((int)0xFFFF0000u)));
}

static size_t attend_fp32_bytes(int len, int hd) {
    const size_t len16 = (size_t)((len + 15) & ~15);
    return ((size_t)hd * len16 + len16 * (size_t)hd + 4 * len16 + 4 * (size_t)hd) * 4 + 64;
}

/* attend_amx's contract (attention.h) in fp32: Q, K, V and the softmax's weights rounded to
 * bf16 as the tiles take them, products summed in fp32. Four queries at a time, so that each
 * K and V load feeds four independent sums (one query's sums would wait on each other's
 * latency). Layouts in scratch: K transposed (dims by key, keys past len zero), V as rows, the
 * four queries' rows of Q and of scores. */
static void attend_fp32(const float *qkv, int start, int len, int hidden, int head, int hd,
                        void *scratch, float *ctx) {
    const int len16 = (len + 15) & ~15, stride = 3 * hidden, nd = hd / 16;
    float *kt = (float *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    float *v = kt + (size_t)hd * len16;
    float *s = v + (size_t)len16 * hd; /* 4 rows of len16 */
    float *q = s + 4 * (size_t)len16;  /* 4 rows of hd */
    const float *q0 = qkv + (size_t)start * stride + head * hd;
    const float *k0 = q0 + hidden, *v0 = q0 + 2 * hidden;
    const __m512 zero = _mm512_setzero_ps();

    for (int j0 = 0; j0 < len16; j0 += 16)
        for (int d = 0; d < hd; d += 16) {
            __m512i block[16];
            for (int r = 0; r < 16; r++) {
                const int j = j0 + r;
                block[r] = _mm512_castps_si512(
                    j < len ? round_bf16(_mm512_loadu_ps(k0 + (size_t)j * stride + d)) : zero);
                if (j < len)
                    _mm512_storeu_ps(v + (size_t)j * hd + d,
                                     round_bf16(_mm512_loadu_ps(v0 + (size_t)j * stride + d)));
            }
            transpose16(block);
            for (int r = 0; r < 16; r++)
                _mm512_store_si512(kt + (size_t)(d + r) * len16 + j0, block[r]);
        }

    const float scale = 1.0f / sqrtf((float)hd);
    for (int i0 = 0; i0 < len; i0 += 4) {
        const int rows = len - i0 < 4 ? len - i0 : 4;
        for (int r = 0; r < 4; r++)
            for (int d = 0; d < hd; d += 16)
                _mm512_store_ps(q + r * hd + d,
                                r < rows ? round_bf16(_mm512_loadu_ps(q0 + (size_t)(i0 + r) * stride + d))
                                         : zero);
        for (int j = 0; j < len16; j += 16) {
            __m512 acc[4] = {zero, zero, zero, zero};
            for (int d = 0; d < hd; d++) {
                const __m512 kd = _mm512_load_ps(kt + (size_t)d * len16 + j);
                for (int r = 0; r < 4; r++) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(q[r * hd + d]), kd, acc[r]);
            }
            for (int r = 0; r < 4; r++) _mm512_store_ps(s + (size_t)r * len16 + j, acc[r]);
        }
        /* the softmax as attend_amx computes it, a row at a time */
        float inv[4];
        for (int r = 0; r < rows; r++) {
            float *row = s + (size_t)r * len16;
            __m512 mx = _mm512_set1_ps(-INFINITY);
            for (int j = 0; j < len16; j += 16)
                mx = _mm512_mask_max_ps(mx, lanes_before(j, len), mx, _mm512_load_ps(row + j));
            const __m512 vmax = _mm512_set1_ps(_mm512_reduce_max_ps(mx) * scale);
            __m512 sum = zero;
            for (int j = 0; j < len16; j += 16) {
                const __m512 x = _mm512_fmsub_ps(_mm512_load_ps(row + j), _mm512_set1_ps(scale), vmax);
                const __m512 e = _mm512_maskz_mov_ps(lanes_before(j, len), exp512_softmax(x));
                sum = _mm512_add_ps(sum, e);
                _mm512_store_ps(row + j, round_bf16(e));
            }
            inv[r] = 1.0f / _mm512_reduce_add_ps(sum);
        }
        /* P V: four queries x up to four 16-dim blocks of sums */
        __m512 o[4][4];
        for (int r = 0; r < 4; r++)
            for (int b = 0; b < nd; b++) o[r][b] = zero;
        for (int j = 0; j < len; j++)
            for (int b = 0; b < nd; b++) {
                const __m512 vj = _mm512_loadu_ps(v + (size_t)j * hd + 16 * b);
                for (int r = 0; r < 4; r++)
                    o[r][b] = _mm512_fmadd_ps(_mm512_set1_ps(s[(size_t)r * len16 + j]), vj, o[r][b]);
            }
        for (int r = 0; r < rows; r++) {
            float *out = ctx + (size_t)(start + i0 + r) * hidden + head * hd;
            for (int b = 0; b < nd; b++)
                _mm512_storeu_ps(out + 16 * b, _mm512_mul_ps(o[r][b], _mm512_set1_ps(inv[r])));
        }
    }
}

#endif
