/* Self-attention of the native kernel on AMX in bf16, and the tile helpers it shares with the
 * kernel's int8 GEMM (zero_blocks). Included by bert_int8.c only; its code runs on threads that
 * loaded the kernel's tile configuration (encode_all: 8 tiles of 16 rows x 64 bytes). */
#ifndef BERT_ATTENTION_H
#define BERT_ATTENTION_H

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "vector_math.h"

/* --- AMX tiles ---------------------------------------------------------------------------- */

/* Accumulator tiles 0..count-1 (count <= 4) += tile 4 (A, bf16) x the count B tiles at b,
 * b + 16, ... (uint32 pairs, stride bytes a row): one row of 16-wide output blocks. Tile
 * numbers are immediates, hence the unrolled branches. */
static inline void bf16_blocks(const uint32_t *b, int stride, int count) {
    _tile_loadd(5, b, stride);
    _tile_dpbf16ps(0, 4, 5);
    if (count > 1) {
        _tile_loadd(6, b + 16, stride);
        _tile_dpbf16ps(1, 4, 6);
    }
    if (count > 2) {
        _tile_loadd(7, b + 32, stride);
        _tile_dpbf16ps(2, 4, 7);
    }
    if (count > 3) {
        _tile_loadd(5, b + 48, stride);
        _tile_dpbf16ps(3, 4, 5);
    }
}

/* Accumulator tiles 0..count-1 stored side by side at c (stride bytes a row). */
static inline void store_blocks(float *c, int stride, int count) {
    _tile_stored(0, c, stride);
    if (count > 1) _tile_stored(1, c + 16, stride);
    if (count > 2) _tile_stored(2, c + 32, stride);
    if (count > 3) _tile_stored(3, c + 48, stride);
}

static inline void zero_blocks(void) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
}

/* --- attention --------------------------------------------------------------------------- */


/* Self-attention of one head over one sequence of len rows starting at row start of qkv (rows
 * of [q | k | v], each hidden wide), written into ctx's head columns; on AMX in bf16. Q K^T and
 * P V are tile products with fp32 accumulation; the softmax between them is fp32. Layouts
 * built here, per head, in scratch: Q as bf16 rows (dims zero-padded to 32), K as dim pairs by key
 * (the transpose TDPBF16PS reads as its B), V as key pairs interleaved, P as bf16 rows.
 * scratch needs attend_amx_bytes(len, hd). */
static size_t attend_amx_bytes(int len, int hd) {
    const size_t len32 = (size_t)((len + 31) & ~31), hdp = (size_t)((hd + 31) & ~31);
    return len32 * hdp * 2 + hdp / 2 * len32 * 4 + len32 / 2 * (size_t)hd * 4 + 16 * len32 * 4 +
           16 * len32 * 2 + 16 * (size_t)hd * 4 + 4 * 64;
}

static void attend_amx(const float *qkv, int start, int len, int hidden, int head, int hd,
                       void *scratch, float *ctx) {
    const int len32 = (len + 31) & ~31, hdp = (hd + 31) & ~31, stride = 3 * hidden;
    uint8_t *at = (uint8_t *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    uint16_t *qb = (uint16_t *)at;
    uint32_t *kt2 = (uint32_t *)(qb + (size_t)len32 * hdp);
    uint32_t *v2 = kt2 + (size_t)hdp / 2 * len32;
    float *sc = (float *)(v2 + (size_t)len32 / 2 * hd);
    uint16_t *pb = (uint16_t *)(sc + (size_t)16 * len32);
    float *o = (float *)(((uintptr_t)(pb + (size_t)16 * len32) + 63) & ~(uintptr_t)63);
    const float *q0 = qkv + (size_t)start * stride + head * hd;
    const float *k0 = q0 + hidden, *v0 = q0 + 2 * hidden;
    const __m512 zero = _mm512_setzero_ps();

    /* Q as bf16 rows; K as bf16 dim pairs by key: 16 keys' rows of 32 dims (16 pairs) at a
     * time, transposed in registers. Rows past len, and dims past hd, are zeros. */
    for (int i0 = 0; i0 < len32; i0 += 16)
        for (int d = 0; d < hdp; d += 32) {
            const int two = d + 16 < hd;
            __m512i kv[16];
            for (int r = 0; r < 16; r++) {
                const int i = i0 + r;
                __m512i qv = _mm512_setzero_si512();
                kv[r] = qv;
                if (i < len) {
                    const float *q = q0 + (size_t)i * stride + d, *k = k0 + (size_t)i * stride + d;
                    qv = (__m512i)_mm512_cvtne2ps_pbh(two ? _mm512_loadu_ps(q + 16) : zero,
                                                      _mm512_loadu_ps(q));
                    kv[r] = (__m512i)_mm512_cvtne2ps_pbh(two ? _mm512_loadu_ps(k + 16) : zero,
                                                         _mm512_loadu_ps(k));
                }
                _mm512_storeu_si512(qb + (size_t)i * hdp + d, qv);
            }
            transpose16(kv);
            for (int w = 0; w < 16; w++)
                _mm512_storeu_si512(kt2 + (size_t)(d / 2 + w) * len32 + i0, kv[w]);
        }
    /* V's rows in pairs, interleaved: (V[2p][c], V[2p+1][c]) for each column c. */
    static const uint16_t order[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
                                       8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
    const __m512i interleave = _mm512_loadu_si512(order);
    for (int p = 0; p < len32 / 2; p++)
        for (int d = 0; d < hd; d += 16) {
            const __m512 a = 2 * p < len ? _mm512_loadu_ps(v0 + (size_t)(2 * p) * stride + d) : zero;
            const __m512 b = 2 * p + 1 < len ? _mm512_loadu_ps(v0 + (size_t)(2 * p + 1) * stride + d) : zero;
            __m512i pair = _mm512_permutexvar_epi16(interleave, (__m512i)_mm512_cvtne2ps_pbh(b, a));
            _mm512_storeu_si512(v2 + (size_t)p * hd + d, pair);
        }

    const float scale = 1.0f / sqrtf((float)hd);
    for (int i0 = 0; i0 < len; i0 += 16) {
        const int rows = len - i0 < 16 ? len - i0 : 16;
        for (int j0 = 0; j0 < len32; j0 += 64) {
            const int nb = (len32 - j0) / 16 < 4 ? (len32 - j0) / 16 : 4;
            zero_blocks();
            for (int d = 0; d < hdp; d += 32) {
                _tile_loadd(4, qb + (size_t)i0 * hdp + d, hdp * 2);
                bf16_blocks(kt2 + (size_t)d / 2 * len32 + j0, len32 * 4, nb);
            }
            store_blocks(sc + j0, len32 * 4, nb);
        }
        float inv[16];
        for (int r = 0; r < 16; r++) {
            float *row = sc + (size_t)r * len32;
            uint16_t *prow = pb + (size_t)r * len32;
            if (r >= rows) {
                memset(prow, 0, (size_t)len32 * 2);
                inv[r] = 0.0f;
                continue;
            }
            __m512 mx = _mm512_set1_ps(-INFINITY);
            for (int j = 0; j < len; j += 16) {
                mx = _mm512_mask_max_ps(mx, lanes_before(j, len), mx, _mm512_loadu_ps(row + j));
            }
            const __m512 vmax = _mm512_set1_ps(_mm512_reduce_max_ps(mx) * scale);
            __m512 sum = zero;
            for (int j = 0; j < len32; j += 16) {
                const __m512 x =
                    _mm512_fmsub_ps(_mm512_loadu_ps(row + j), _mm512_set1_ps(scale), vmax);
                __m512 e = _mm512_maskz_mov_ps(lanes_before(j, len), exp512_softmax(x));
                sum = _mm512_add_ps(sum, e);
                _mm256_storeu_si256((__m256i *)(prow + j), (__m256i)_mm512_cvtneps_pbh(e));
            }
            inv[r] = 1.0f / _mm512_reduce_add_ps(sum);
        }
        const int nd = hd / 16;
        zero_blocks();
        for (int j = 0; j < len32; j += 32) {
            _tile_loadd(4, pb + j, len32 * 2);
            bf16_blocks(v2 + (size_t)j / 2 * hd, hd * 4, nd);
        }
        store_blocks(o, hd * 4, nd);
        for (int r = 0; r < rows; r++) {
            float *out = ctx + (size_t)(start + i0 + r) * hidden + head * hd;
            for (int d = 0; d < hd; d += 16)
                _mm512_storeu_ps(out + d, _mm512_mul_ps(_mm512_loadu_ps(o + (size_t)r * hd + d),
                                                        _mm512_set1_ps(inv[r])));
        }
    }
}

#endif
