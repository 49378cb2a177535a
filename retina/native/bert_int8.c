/* A BERT encoder forward pass in int8 (and bf16 attention) on Intel AMX, or on AVX-512 VNNI where
 * a CPU has no AMX (vnni.h): Retina's "native" text backend.
 *
 * Owns the arithmetic of retina/encoders/text_native.py; the packing of the weights it reads is
 * retina/artifacts/text_native.py's. Why a hand-written pass at all: at 64 tokens a MiniLM GEMM
 * is M = 64 rows, too small for onnxruntime's and OpenVINO's kernels to leave their fixed costs
 * behind (OpenVINO's AMX GEMMs reach ~130 GMAC/s a core there: docs/performance.md). Here every
 * linear layer is one tile loop with its epilogue fused in, and one text costs about half the
 * CPU of OpenVINO's int8 recipe (bench/encoders_native.py, docs/performance.md).
 *
 * The scheme (measured on the parity sample; retina/artifacts/text_native.py has the figures):
 * - Linear layers in int8: weights symmetric per output channel, prepacked into AMX tiles at
 *   build time; activations symmetric per *token* (row), scaled at run time. A row's scale
 *   depends on that row alone, so a text embeds bit-identically alone or in any batch: the
 *   batch is packed without padding (varlen) and every row's arithmetic is the same.
 * - SmoothQuant folded in: each linear's input is multiplied by a per-channel 1/s while it is
 *   quantized (the weights were multiplied by s at build time).
 * - Attention in bf16 on AMX (per sequence and head, over its own length only), with fp32
 *   accumulation and an fp32 softmax.
 * - Everything else in fp32: the erf GELU (by table, within 2e-6), LayerNorm, mean, CLS or
 *   last-token pooling.
 *
 * Layout: weights (K, N) are stored as N/16 column blocks of K/64 tiles of 1024 bytes; tile
 * row r holds k = 4r..4r+3 of 16 columns, interleaved as TDPBSSD reads them. K and N must be
 * multiples of 64 and 16, the head size a multiple of 16 up to 64 (the builder checks).
 *
 * Threads: the calling thread and threads - 1 helpers started for the call share the work by
 * output columns (GEMMs), rows (LayerNorm, quantization) or (sequence, head) pairs (attention),
 * meeting at a spin barrier between steps. No thread pool outlives a call and nothing links
 * but libc (no OpenMP runtime needed where the artifact is served). Concurrent calls from
 * several threads would each bring a team onto the same cores: the Python side runs at most
 * cores / threads calls at once (retina/encoders/text_native.py, NativeSession).
 *
 * Files: this one (the model's layout, the AMX int8 GEMM, the threads and the entry points),
 * vector_math.h (the AVX-512 arithmetic, the row-wise steps and the GEMMs' shared epilogue),
 * attention.h (the bf16 attention on AMX and the tile helpers) and vnni.h (the path without
 * AMX: the GEMM on VPDPBUSD, the attention in fp32): one translation unit, compiled from this
 * file. Which path a call takes is the model's (bert_model.path), chosen by the loader among
 * those bert_paths offers.
 *
 * Built by retina/artifacts/text_native.py (gcc 12+ or clang 14+, AMX and AVX-512 flags named,
 * not -march=native); tested by tests/unit/retina/test_text_native.py against a numpy
 * transcription of the same arithmetic.
 */
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "attention.h"
#include "vector_math.h"

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

enum { BERT_OK = 0, BERT_EINVAL = 1, BERT_ENOMEM = 2, BERT_EPATH = 3 };
enum { POOL_MEAN = 0, POOL_CLS = 1, POOL_LAST = 2, POOL_NONE = 3 };
/* The code paths (bert_paths' bits, bert_model.path): tiles, or VPDPBUSD and fp32 (vnni.h). */
enum { PATH_VNNI = 1, PATH_AMX = 2 };

typedef struct {
    const int8_t *w;          /* packed tiles, see above */
    const float *scale;       /* [n] weight scale of each output channel */
    const float *bias;        /* [n] */
    const float *inv_smooth;  /* [k] SmoothQuant 1/s, or NULL */
    int32_t k, n;
} bert_linear;

typedef struct {
    bert_linear qkv, out, up, down;
    const float *ln1_g, *ln1_b, *ln2_g, *ln2_b;
} bert_layer;

typedef struct {
    int32_t layers, hidden, heads, ffn, vocab, max_pos, pooling;
    float eps;
    const float *word, *pos, *type0, *emb_g, *emb_b;
    const bert_layer *layer;
    int32_t path; /* PATH_AMX or PATH_VNNI: one that bert_paths offers */
} bert_model;

#include "vnni.h" /* reads the model's types above */

typedef struct {
    uint8_t palette, start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

#ifdef BERT_PROFILE
#include <time.h>
/* Seconds thread 0 spent in each step of encode_group, barrier wait included, summed over
 * calls: benchmarks only (bench/encoders_native.py compiles a copy with -DBERT_PROFILE).
 * Steps: embeddings, QKV, attention, quantize ctx, out, LayerNorm 1, FFN up + GELU,
 * quantize inner, FFN down, LayerNorm 2. */
double bert_profile_seconds[10];
static double profile_mark;

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

#define PROFILE_START() \
    if (tid == 0) profile_mark = now_s()
#define PROFILE(step)                                             \
    if (tid == 0) {                                               \
        const double t_ = now_s();                                \
        bert_profile_seconds[step] += t_ - profile_mark;          \
        profile_mark = t_;                                        \
    }
#else
#define PROFILE_START()
#define PROFILE(step)
#endif

/* The work of one step between two barriers is handed out in chunks to whichever thread asks
 * first, so a thread the system slows (a busy core, a vCPU the host has not scheduled) does less
 * of it instead of holding the team at the barrier, where a static split made every step wait
 * for the slower of the two. Which thread computes a row or column never changes its
 * value (no sums across threads), so results stay bit-identical. Every thread walks the steps
 * in the same order: the k-th step of a call uses counter k. */
typedef struct {
    atomic_int *counter;
    int step;
} steps;

static inline atomic_int *next_step(steps *st) { return &st->counter[st->step++]; }

static inline int claim(atomic_int *c, int chunk, int total, int *lo, int *hi) {
    *lo = atomic_fetch_add_explicit(c, chunk, memory_order_relaxed);
    *hi = *lo + chunk < total ? *lo + chunk : total;
    return *lo < total;
}

/* Steps a group takes: embeddings, 9 a layer, pooling (bert_forward sizes the counters). */
#define GROUP_STEPS(layers) (2 + 9 * (layers))

/* --- the int8 GEMM ----------------------------------------------------------------------- */

/* out[m][n] = epilogue(acc[m][n] * row_scale[m] * w_scale[n] + bias[n]) for rows [0, rows)
 * and the column blocks [nb_lo, nb_hi). a is (rows rounded up to 16) x k int8, zero-padded.
 *
 * Blocked 2 x 2: accumulators 0-3 hold 32 rows x 32 columns, tiles 4-5 the two row tiles of A
 * and 6-7 the two column tiles of B, so every tile load feeds two TDPBSSDs and each k step
 * loads each operand tile once (blocked 4 x 1, the fourth row tile reused the first's register
 * within the same step, behind the first product). A column pair's weights are read from
 * memory once and reused from L1 by every 32 rows. */
static void gemm_amx(const int8_t *a, const float *row_scale, int rows, const bert_linear *lin,
                 int nb_lo, int nb_hi, int epilogue, const float *residual, float *out) {
    const int k = lin->k, n = lin->n, kb_count = k / 64;
    int32_t acc[4 * 16 * 16] __attribute__((aligned(64)));
    for (int nb = nb_lo; nb < nb_hi; nb += 2) {
        const int nc = nb + 1 < nb_hi ? 2 : 1;
        const int8_t *b0 = lin->w + (size_t)nb * kb_count * 1024;
        const int8_t *b1 = b0 + (size_t)kb_count * 1024;
        for (int m0 = 0; m0 < rows; m0 += 32) {
            const int mt = rows - m0 > 16 ? 2 : 1;
            const int8_t *a0 = a + (size_t)m0 * k, *a1 = a0 + (size_t)16 * k;
            zero_blocks();
            for (int kb = 0; kb < kb_count; kb++) {
                _tile_loadd(4, a0 + kb * 64, k);
                _tile_loadd(6, b0 + (size_t)kb * 1024, 64);
                _tile_dpbssd(0, 4, 6);
                if (mt > 1) {
                    _tile_loadd(5, a1 + kb * 64, k);
                    _tile_dpbssd(2, 5, 6);
                }
                if (nc > 1) {
                    _tile_loadd(7, b1 + (size_t)kb * 1024, 64);
                    _tile_dpbssd(1, 4, 7);
                    if (mt > 1) _tile_dpbssd(3, 5, 7);
                }
            }
            /* acc rows 0-31 x 32 columns: tile 0 | 1 over tile 2 | 3 */
            _tile_stored(0, acc, 128);
            if (nc > 1) _tile_stored(1, acc + 16, 128);
            if (mt > 1) _tile_stored(2, acc + 512, 128);
            if (mt > 1 && nc > 1) _tile_stored(3, acc + 528, 128);
            const int end = rows - m0 < mt * 16 ? rows - m0 : mt * 16;
            for (int j = 0; j < nc; j++) {
                const int c0 = (nb + j) * 16;
                const __m512 ws = _mm512_loadu_ps(lin->scale + c0);
                const __m512 bias = _mm512_loadu_ps(lin->bias + c0);
                for (int r = 0; r < end; r++) {
                    const int m = m0 + r;
                    store_linear16(_mm512_load_si512(acc + r * 32 + j * 16), ws, bias, row_scale[m],
                                   epilogue, residual ? residual + (size_t)m * n + c0 : NULL,
                                   out + (size_t)m * n + c0);
                }
            }
        }
    }
}

/* --- the forward pass -------------------------------------------------------------------- */

static int xgetbv0(void) {
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (int)lo;
}

static atomic_int paths_offered = -1;

/* The paths this process can run (PATH_* bits): PATH_VNNI where the CPU has AVX-512 (F, BW, DQ,
 * VL) with VNNI and the system saves its registers; PATH_AMX where it also has AMX (INT8 and
 * BF16) with AVX512-BF16 and the kernel grants the tiles, which this asks for (once per
 * process). */
int bert_paths(void) {
    int known = atomic_load(&paths_offered);
    if (known >= 0) return known;
    unsigned a, b, c, d, a1, b1, c1, d1;
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
    const int osxsave = (c >> 27) & 1;
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(7), "c"(0));
    __asm__ volatile("cpuid" : "=a"(a1), "=b"(b1), "=c"(c1), "=d"(d1) : "a"(7), "c"(1));
    /* XCR0: SSE, AVX and the three AVX-512 states (opmask, upper halves, upper registers) */
    const int zmm_saved = osxsave && (xgetbv0() & 0xE6) == 0xE6;
    const int avx512 = ((b >> 16) & 1) && ((b >> 17) & 1) && ((b >> 30) & 1) && ((b >> 31) & 1);
    const int vnni = (c >> 11) & 1, avx512_bf16 = (a1 >> 5) & 1;
    const int amx_bf16 = (d >> 22) & 1, amx_tile = (d >> 24) & 1, amx_int8 = (d >> 25) & 1;
    int offered = 0;
    if (zmm_saved && avx512 && vnni) {
        offered |= PATH_VNNI;
        if (avx512_bf16 && amx_tile && amx_int8 && amx_bf16 &&
            syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0)
            offered |= PATH_AMX;
    }
    atomic_store(&paths_offered, offered);
    return offered;
}

/* The kernel's GELU over n floats (y may be x): for its test only, which checks the table
 * against erf (tests/unit/retina/test_text_native.py). */
void bert_gelu(const float *x, float *y, int32_t n) {
    pthread_once(&gelu_once, gelu_table);
    for (int i = 0; i < n; i += 16) {
        const __mmask16 lanes = lanes_before(i, n);
        _mm512_mask_storeu_ps(y + i, lanes, gelu512(_mm512_maskz_loadu_ps(lanes, x + i)));
    }
}

static void *grab(size_t bytes) {
    void *p = NULL;
    return posix_memalign(&p, 64, (bytes + 63) & ~(size_t)63) ? NULL : p;
}

/* The buffers of one group of sequences (see GROUP_TOKENS), shared by the team. */
/* A spin barrier for the threads of one call (see bert_forward). */
typedef struct {
    atomic_int arrived, generation;
    int size;
} team_barrier;

/* Waits until every thread of the call has arrived. Spins (a step is tens of microseconds),
 * yielding the core now and then in case a thread of the team was descheduled. */
static void sync_team(team_barrier *b) {
    const int gen = atomic_load_explicit(&b->generation, memory_order_acquire);
    if (atomic_fetch_add_explicit(&b->arrived, 1, memory_order_acq_rel) == b->size - 1) {
        atomic_store_explicit(&b->arrived, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&b->generation, 1, memory_order_release);
        return;
    }
    for (unsigned spins = 1; atomic_load_explicit(&b->generation, memory_order_acquire) == gen; spins++) {
        _mm_pause();
        if (spins % 4096 == 0) sched_yield();
    }
}

typedef struct {
    team_barrier *team;
    float *x, *tmp, *qkv, *inner, *row_scale;
    int8_t *a8;
    uint8_t *scratch; /* each thread's attention layouts (attend_amx_bytes or attend_fp32_bytes) */
    atomic_int *counters; /* one a step of the call (see claim) */
    size_t scratch_per_thread;
    int amx;    /* the path: tiles, or vnni.h */
    int offset; /* the activations' byte offset on that path (quantize_row) */
} workspace;

/* A linear layer's columns [nb_lo, nb_hi) on the workspace's path (gemm_amx's contract). */
static void gemm(const workspace *w, int rows, const bert_linear *lin, int nb_lo, int nb_hi,
                 int epilogue, const float *residual, float *out) {
    if (w->amx)
        gemm_amx(w->a8, w->row_scale, rows, lin, nb_lo, nb_hi, epilogue, residual, out);
    else
        gemm_vnni((const uint8_t *)w->a8, w->row_scale, rows, lin, nb_lo, nb_hi, epilogue,
                  residual, out);
}

/* A batch is encoded a group of sequences at a time, each group at most this many tokens (or
 * one longer sequence; a sequence is never split). It bounds a call's working memory by the
 * group, not the batch: 1,000 texts of 256 tokens in one group would need ~4 GB of
 * activations. Speed does not decide it: at batch 32 x 64 tokens, against one 2,048-token
 * group, it served 0.84-1.45x the texts a CPU-second and 0.76-1.35x on two threads' wall clock
 * over eight runs (bench/encoders_native.py, "batch as one token group", runs 5-12). */
#ifndef GROUP_TOKENS
#define GROUP_TOKENS 256
#endif

/* Every step of the forward pass for one group of n sequences (ids and offsets relative to
 * the group), run by each thread of the team (tid: its scratch); pooled rows (or token
 * states) go to out. */
static void encode_group(const bert_model *m, const int32_t *ids, const int32_t *offsets, int n,
                         const workspace *w, int tid, steps *st, float *out) {
    const int h = m->hidden, f = m->ffn, hd = h / m->heads, tokens = offsets[n];
    float *x = w->x, *tmp = w->tmp, *qkv = w->qkv, *inner = w->inner, *rs = w->row_scale;
    int8_t *a8 = w->a8;
    uint8_t *mine = w->scratch + (size_t)tid * w->scratch_per_thread;
    int lo, hi;
    PROFILE_START();

    /* embeddings (one segment: token type 0), LayerNorm, layer 0's input quantized */
    for (atomic_int *c = next_step(st); claim(c, 1, n, &lo, &hi);)
        for (int t = offsets[lo]; t < offsets[hi]; t++) {
            const int s = lo;
            const float *word = m->word + (size_t)ids[t] * h;
            const float *pos = m->pos + (size_t)(t - offsets[s]) * h;
            for (int i = 0; i < h; i++) tmp[(size_t)t * h + i] = word[i] + pos[i] + m->type0[i];
            layer_norm_row(tmp + (size_t)t * h, h, m->emb_g, m->emb_b, m->eps, x + (size_t)t * h);
            quantize_row(x + (size_t)t * h, h, m->layer[0].qkv.inv_smooth, w->offset, a8 + (size_t)t * h, rs + t);
        }
    sync_team(w->team);
    PROFILE(0);
    for (int l = 0; l < m->layers; l++) {
        const bert_layer *L = &m->layer[l];
        for (atomic_int *c = next_step(st); claim(c, 4, L->qkv.n / 16, &lo, &hi);)
            gemm(w, tokens, &L->qkv, lo, hi, EPI_NONE, NULL, qkv);
        sync_team(w->team);
        PROFILE(1);
        for (atomic_int *c = next_step(st); claim(c, 1, n * m->heads, &lo, &hi);) {
            const int s = lo / m->heads, head = lo % m->heads;
            const int start = offsets[s], len = offsets[s + 1] - start;
            if (w->amx) attend_amx(qkv, start, len, h, head, hd, mine, tmp);
            else attend_fp32(qkv, start, len, h, head, hd, mine, tmp);
        }
        sync_team(w->team);
        PROFILE(2);
        for (atomic_int *c = next_step(st); claim(c, 8, tokens, &lo, &hi);)
            for (int t = lo; t < hi; t++)
                quantize_row(tmp + (size_t)t * h, h, L->out.inv_smooth, w->offset, a8 + (size_t)t * h, rs + t);
        sync_team(w->team);
        PROFILE(3);
        for (atomic_int *c = next_step(st); claim(c, 2, h / 16, &lo, &hi);)
            gemm(w, tokens, &L->out, lo, hi, EPI_RESIDUAL, x, tmp);
        sync_team(w->team);
        PROFILE(4);
        for (atomic_int *c = next_step(st); claim(c, 8, tokens, &lo, &hi);)
            for (int t = lo; t < hi; t++) {
                layer_norm_row(tmp + (size_t)t * h, h, L->ln1_g, L->ln1_b, m->eps, x + (size_t)t * h);
                quantize_row(x + (size_t)t * h, h, L->up.inv_smooth, w->offset, a8 + (size_t)t * h, rs + t);
            }
        sync_team(w->team);
        PROFILE(5);
        for (atomic_int *c = next_step(st); claim(c, 4, f / 16, &lo, &hi);)
            gemm(w, tokens, &L->up, lo, hi, EPI_GELU, NULL, inner);
        sync_team(w->team);
        PROFILE(6);
        for (atomic_int *c = next_step(st); claim(c, 8, tokens, &lo, &hi);)
            for (int t = lo; t < hi; t++)
                quantize_row(inner + (size_t)t * f, f, L->down.inv_smooth, w->offset, a8 + (size_t)t * f, rs + t);
        sync_team(w->team);
        PROFILE(7);
        for (atomic_int *c = next_step(st); claim(c, 2, h / 16, &lo, &hi);)
            gemm(w, tokens, &L->down, lo, hi, EPI_RESIDUAL, x, tmp);
        sync_team(w->team);
        PROFILE(8);
        const bert_linear *next = l + 1 < m->layers ? &m->layer[l + 1].qkv : NULL;
        for (atomic_int *c = next_step(st); claim(c, 8, tokens, &lo, &hi);)
            for (int t = lo; t < hi; t++) {
                layer_norm_row(tmp + (size_t)t * h, h, L->ln2_g, L->ln2_b, m->eps, x + (size_t)t * h);
                if (next)
                    quantize_row(x + (size_t)t * h, h, next->inv_smooth, w->offset, a8 + (size_t)t * h, rs + t);
            }
        sync_team(w->team);
        PROFILE(9);
    }
    atomic_int *pool_step = next_step(st);
    if (m->pooling == POOL_NONE) {
        while (claim(pool_step, 16, tokens, &lo, &hi))
            memcpy(out + (size_t)lo * h, x + (size_t)lo * h, (size_t)(hi - lo) * h * 4);
        return;
    }
    while (claim(pool_step, 1, n, &lo, &hi)) {
        const int s = lo;
        float *row = out + (size_t)s * h;
        const int first = offsets[s], len = offsets[s + 1] - first;
        if (m->pooling != POOL_MEAN) {
            const int t = m->pooling == POOL_CLS ? first : first + len - 1;
            memcpy(row, x + (size_t)t * h, (size_t)h * 4);
            continue;
        }
        for (int c = 0; c < h; c++) row[c] = 0.0f;
        for (int t = first; t < first + len; t++)
            for (int c = 0; c < h; c++) row[c] += x[(size_t)t * h + c];
        for (int c = 0; c < h; c++) row[c] /= (float)len;
    }
}

/* One call's work, shared by the threads of its team. */
typedef struct {
    const bert_model *m;
    const int32_t *ids, *offsets;
    int n, threads;
    workspace *w;
    float *result;
    atomic_int go; /* set once the team's size is final: helpers wait for it */
} call;

typedef struct {
    call *c;
    int tid;
} member;

/* A thread's share of the whole call: every thread walks the same groups, in order. */
static void encode_all(call *c, int tid) {
    tile_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int i = 0; i < 8; i++) cfg.colsb[i] = 64, cfg.rows[i] = 16;
    if (c->w->amx) _tile_loadconfig(&cfg);
    const int h = c->m->hidden;
    steps st = {.counter = c->w->counters, .step = 0};
    for (int first = 0; first < c->n;) {
        int last = first + 1;
        while (last < c->n && c->offsets[last + 1] - c->offsets[first] <= GROUP_TOKENS) last++;
        int rel[last - first + 1];
        for (int s = first; s <= last; s++) rel[s - first] = c->offsets[s] - c->offsets[first];
        float *out = c->m->pooling == POOL_NONE ? c->result + (size_t)c->offsets[first] * h
                                                : c->result + (size_t)first * h;
        encode_group(c->m, c->ids + c->offsets[first], rel, last - first, c->w, tid, &st, out);
        sync_team(c->w->team);
        first = last;
    }
    if (c->w->amx) _tile_release();
}

static void *helper(void *arg) {
    member *me = arg;
    while (!atomic_load_explicit(&me->c->go, memory_order_acquire)) _mm_pause();
    if (me->tid < me->c->threads) encode_all(me->c, me->tid);
    return NULL;
}

/* Embeds n sequences: ids holds them back to back, sequence s is ids[offsets[s] ..
 * offsets[s+1]). Writes n x hidden floats, pooled as the model says (mean, CLS or last
 * token; unnormalised), or with POOL_NONE the last hidden state of every token
 * (offsets[n] x hidden), on the model's path. Returns BERT_OK, BERT_EINVAL for an empty or
 * too long sequence, an id outside the vocabulary or a head size the attention cannot take, or
 * BERT_EPATH for a path this CPU does not offer (bert_paths).
 *
 * The calling thread and threads - 1 helpers started for this call do the work (a thread
 * start is small beside a call, and nothing spins or sleeps between calls). */
int bert_forward(const bert_model *m, const int32_t *ids, const int32_t *offsets, int32_t n,
                 int32_t threads, float *result) {
    if (!m || n <= 0 || threads <= 0 || offsets[0] != 0 || m->heads <= 0) return BERT_EINVAL;
    if ((m->path != PATH_AMX && m->path != PATH_VNNI) || !(bert_paths() & m->path)) return BERT_EPATH;
    pthread_once(&gelu_once, gelu_table);
    if (threads > 64) threads = 64; /* more would only queue on the cores */
    const int h = m->hidden, f = m->ffn, hd = h / m->heads;
    if (h % 64 || f % 64 || h % m->heads || hd % 16 || hd > 64) return BERT_EINVAL;
    int longest = 0, group_max = 0, group = 0, groups = 0;
    for (int s = 0; s < n; s++) {
        const int len = offsets[s + 1] - offsets[s];
        if (len <= 0 || len > m->max_pos) return BERT_EINVAL;
        if (len > longest) longest = len;
        const int joins = group > 0 && group + len <= GROUP_TOKENS;
        group = joins ? group + len : len;
        groups += !joins;
        if (group > group_max) group_max = group;
    }
    for (int t = 0; t < offsets[n]; t++)
        if (ids[t] < 0 || ids[t] >= m->vocab) return BERT_EINVAL;
    const size_t rows16 = (size_t)((group_max + 15) & ~15), widest = (size_t)(f > h ? f : h);
    const int amx = m->path == PATH_AMX;
    const size_t scratch = amx ? attend_amx_bytes(longest, hd) : attend_fp32_bytes(longest, hd);
    team_barrier barrier = {0};
    workspace w = {
        .team = &barrier,
        .x = grab(rows16 * h * 4),
        .tmp = grab(rows16 * h * 4),
        .qkv = grab(rows16 * 3 * h * 4),
        .inner = grab(rows16 * f * 4),
        .row_scale = grab(rows16 * 4),
        .a8 = grab(rows16 * widest),
        .scratch = grab((size_t)threads * scratch),
        .scratch_per_thread = scratch,
        .amx = amx,
        .offset = amx ? 0 : VNNI_OFFSET,
        .counters = calloc((size_t)groups * GROUP_STEPS(m->layers), sizeof(atomic_int)),
    };
    int rc = BERT_ENOMEM;
    if (w.x && w.tmp && w.qkv && w.inner && w.row_scale && w.a8 && w.scratch && w.counters) {
        /* Rows past a group's last token are computed (a tile is 16 rows) but never stored,
         * and a row's result depends on that row alone; zeroed so they read defined values. */
        memset(w.a8, 0, rows16 * widest);
        memset(w.row_scale, 0, rows16 * 4);
        call c = {.m = m, .ids = ids, .offsets = offsets, .n = n, .w = &w, .result = result};
        pthread_t threads_started[64];
        member members[64];
        int started = 0;
        for (; started < threads - 1; started++) {
            members[started] = (member){.c = &c, .tid = started + 1};
            if (pthread_create(&threads_started[started], NULL, helper, &members[started])) break;
        }
        /* A helper that failed to start just shrinks the team: the size is fixed before any
         * thread reads it. */
        c.threads = barrier.size = started + 1;
        atomic_store_explicit(&c.go, 1, memory_order_release);
        encode_all(&c, 0);
        for (int i = 0; i < started; i++) pthread_join(threads_started[i], NULL);
        rc = BERT_OK;
    }
    free(w.x), free(w.tmp), free(w.qkv), free(w.inner), free(w.row_scale), free(w.a8),
        free(w.scratch), free(w.counters);
    return rc;
}
