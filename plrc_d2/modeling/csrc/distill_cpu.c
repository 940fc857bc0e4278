/* Point affinity distillation on a CPU, fused: loss and student-table gradient, one matched V_q cell at a time.
 *
 * Why hand-written: the loss is a handful of passes (gather 4 table rows, exp2, row sum, cross term, softmax
 * gradient, scatter) over rows of 7232 logits. As separate PyTorch ops every pass streams a chunk of rows
 * through the last-level cache; here each row is built once in a buffer that stays in L1/L2 and the passes
 * are fused. PyTorch has no fused gather-softmax-scatter op for a CPU, and torch.compile would need a compiler
 * toolchain plus a compile per input shape; this file has no dependencies (C99 with GCC/Clang vector
 * extensions), builds in under a second and is built once per machine by plrc_d2/modeling/native.py, which
 * falls back to the PyTorch ops when no compiler is found.
 *
 * Inputs (all row-major, float32 / int64):
 *   s_table (R_s, width): student table, pre-scaled to base-2 logits (x log2(e) / t_s);
 *   t_table (R_t, width): teacher table, centred and pre-scaled (x log2(e) / t_t);
 *   s_rows, s_w (cells, taps): taps of each distinct V_q cell; pair_start (cells + 1): its pairs are
 *   [pair_start[c], pair_start[c + 1]); t_rows, t_w (pairs, taps): taps of each pair's V_d cell; t_ids (pairs,)
 *   ids with equal rows for equal ids (the V_d cell), >= 0, or NULL (every pair computes its teacher row).
 * For cells [c0, c1) with k pairs each, adds to `grad` (R_s, width; may be NULL) the gradient of the base-2 loss
 *   sum_c [ k log2 sum 2^z_c - target_c . z_c ]   (target_c = sum of the k teacher distributions)
 * with respect to the z-table, i.e. taps^T (k softmax(z_c) - target_c), and returns that loss sum. The caller
 * scales both (ln 2, the temperature, 1 / #pairs). Every row is shifted by its maximum before exp2 (the row is in
 * L1/L2, so the extra pass is cheap: measured no faster without it).
 * work: (2 + CACHE_SLOTS) * width floats of scratch per calling thread.
 */
#include <math.h>
#include <stdint.h>

#define MAX_TAPS 8
#define CACHE_SLOTS 8 /* teacher rows kept per thread (8 x 29 KB at the reference sizes: within L2) */
#define VW 8

typedef float v8f __attribute__((vector_size(32), aligned(4))); /* aligned(4): unaligned loads and stores */
typedef int32_t v8i __attribute__((vector_size(32), aligned(4)));

static inline v8f splat(float x) { return (v8f){x, x, x, x, x, x, x, x}; }

static inline v8f select(v8i mask, v8f a, v8f b) { return (v8f)(((v8i)a & mask) | ((v8i)b & ~mask)); }

static inline v8f vmax(v8f a, v8f b) { return select(a > b, a, b); }

static inline double hsum(v8f v) {
    double s = 0.0;
    for (int i = 0; i < VW; ++i) s += v[i];
    return s;
}

static inline float hmax(v8f v) {
    float m = v[0];
    for (int i = 1; i < VW; ++i) m = v[i] > m ? v[i] : m;
    return m;
}

/* 2^x, x clamped to [-126, 127] (NaN stays NaN); relative error ~2e-7. x = n + f with n = floor(x + 1/2) (the
 * conversion truncates x + 128.5 > 0) and f in [-1/2, 1/2): 2^f by the Cephes exp2f polynomial, 2^n through the
 * exponent bits. */
static inline v8f exp2_v(v8f x) {
    x = select(x < -126.0f, splat(-126.0f), x);
    x = select(x > 127.0f, splat(127.0f), x);
    v8i n = __builtin_convertvector(x + 128.5f, v8i) - 128;
    v8f f = x - __builtin_convertvector(n, v8f);
    v8f p = splat(1.535336188319500e-4f);
    p = p * f + 1.339887440266574e-3f;
    p = p * f + 9.618437357674640e-3f;
    p = p * f + 5.550332471162809e-2f;
    p = p * f + 2.402264791363012e-1f;
    p = p * f + 6.931472028550421e-1f;
    p = p * f + 1.0f;
    return p * (v8f)((n + 127) << 23);
}

static inline float exp2_s(float x) {
    v8f v = exp2_v(splat(x));
    return v[0];
}

/* out = sum_j w[j] table[rows[j]]; returns max(out); *dot = out . dot_with when dot_with != NULL. */
static float gather(float *out, const float *table, int64_t width, const int64_t *rows, const float *w, int64_t taps,
                    const float *dot_with, double *dot) {
    const float *src[MAX_TAPS];
    for (int64_t j = 0; j < taps; ++j) src[j] = table + rows[j] * width;
    v8f vm = splat(-INFINITY), vd = splat(0.0f);
    int64_t i = 0;
    for (; i + VW <= width; i += VW) {
        v8f x = *(const v8f *)(src[0] + i) * w[0];
        for (int64_t j = 1; j < taps; ++j) x += *(const v8f *)(src[j] + i) * w[j];
        *(v8f *)(out + i) = x;
        vm = vmax(vm, x);
        if (dot_with) vd += x * *(const v8f *)(dot_with + i);
    }
    float m = hmax(vm);
    double d = hsum(vd);
    for (; i < width; ++i) {
        float x = src[0][i] * w[0];
        for (int64_t j = 1; j < taps; ++j) x += src[j][i] * w[j];
        out[i] = x;
        m = x > m ? x : m;
        if (dot_with) d += x * dot_with[i];
    }
    if (dot) *dot = d;
    return m;
}

/* x <- 2^(x - m) in place; returns the row sum. */
static double exp2_shifted(float *x, int64_t width, float m) {
    v8f vs = splat(0.0f);
    int64_t i = 0;
    for (; i + VW <= width; i += VW) {
        v8f e = exp2_v(*(v8f *)(x + i) - m);
        *(v8f *)(x + i) = e;
        vs += e;
    }
    double s = hsum(vs);
    for (; i < width; ++i) {
        x[i] = exp2_s(x[i] - m);
        s += x[i];
    }
    return s;
}

/* y = b * x (first) or y + b * x */
static void axpy(float *y, const float *x, int64_t width, float b, int first) {
    int64_t i = 0;
    if (first) {
        for (; i + VW <= width; i += VW) *(v8f *)(y + i) = *(const v8f *)(x + i) * b;
        for (; i < width; ++i) y[i] = b * x[i];
    } else {
        for (; i + VW <= width; i += VW) *(v8f *)(y + i) += *(const v8f *)(x + i) * b;
        for (; i < width; ++i) y[i] += b * x[i];
    }
}

/* g = a * z - b * t, then grad[rows[j]] += w[j] g for every tap. */
static void scatter_grad(float *grad, int64_t width, const int64_t *rows, const float *w, int64_t taps,
                         const float *z, const float *t, float a, float b) {
    float *dst[MAX_TAPS];
    for (int64_t j = 0; j < taps; ++j) dst[j] = grad + rows[j] * width;
    int64_t i = 0;
    for (; i + VW <= width; i += VW) {
        v8f g = *(const v8f *)(z + i) * a - *(const v8f *)(t + i) * b;
        for (int64_t j = 0; j < taps; ++j) *(v8f *)(dst[j] + i) += g * w[j];
    }
    for (; i < width; ++i) {
        float g = a * z[i] - b * t[i];
        for (int64_t j = 0; j < taps; ++j) dst[j][i] += g * w[j];
    }
}

int plrc_distill_max_taps(void) { return MAX_TAPS; }

int plrc_distill_cache_slots(void) { return CACHE_SLOTS; }

double plrc_distill_cells(const float *s_table, const float *t_table, int64_t width, const int64_t *s_rows,
                          const float *s_w, const int64_t *pair_start, const int64_t *t_rows, const float *t_w,
                          const int64_t *t_ids, int64_t taps, int64_t c0, int64_t c1,
                          float *grad, float *work) {
    float *target = work, *z = work + width, *slots = work + 2 * width;
    int64_t tag[CACHE_SLOTS];
    float inv_sum[CACHE_SLOTS];
    for (int s = 0; s < CACHE_SLOTS; ++s) tag[s] = -1;
    double total = 0.0;
    for (int64_t c = c0; c < c1; ++c) {
        int64_t p0 = pair_start[c], k = pair_start[c + 1] - p0;
        if (k <= 0) continue;
        /* the pairs' teacher rows 2^(t - max) by V_d cell in a direct-mapped cache (pairs of nearby V_q cells share
           V_d cells); the target is sum_p inv_sum_p * row_p, kept as (scale, row) when there is one pair */
        const float *row = 0;
        float scale = 1.0f;
        for (int64_t p = p0; p < p0 + k; ++p) {
            int64_t id = t_ids ? t_ids[p] : -1;
            int s = id >= 0 ? (int)(id % CACHE_SLOTS) : 0;
            float *slot = slots + s * width;
            if (id < 0 || tag[s] != id) {
                float m = gather(slot, t_table, width, t_rows + p * taps, t_w + p * taps, taps, 0, 0);
                inv_sum[s] = (float)(1.0 / exp2_shifted(slot, width, m));
                tag[s] = id;
            }
            if (k == 1) {
                row = slot;
                scale = inv_sum[s];
            } else {
                axpy(target, slot, width, inv_sum[s], p == p0);
                row = target;
            }
        }
        const int64_t *rows = s_rows + c * taps;
        const float *w = s_w + c * taps;
        double cross;
        float mz = gather(z, s_table, width, rows, w, taps, row, &cross);
        double sz = exp2_shifted(z, width, mz);
        total += (double)k * ((double)mz + log2(sz)) - (double)scale * cross;
        if (grad) scatter_grad(grad, width, rows, w, taps, z, row, (float)((double)k / sz), scale);
    }
    return total;
}
