/* NNCF's CPU fake quantization (forward and backward) in one pass over memory each.
 *
 * Same arithmetic as NNCF's own CPU extension (nncf/torch/extensions/src/quantization/cpu/
 * functions_cpu.cpp), which runs it as ~25 separate ATen operations, each a full pass over the
 * activation: on a small detector that made a QAT iteration twice as slow as an FP32 one.
 * The forward is bit-identical to NNCF's; the backward's per-channel sums are accumulated in
 * double in a fixed order, so they do not depend on the number of threads.
 *
 * Layout: x is contiguous, seen as [outer, channels, inner]; low/range hold one value per
 * channel (channels == 1 for per-tensor quantizers). Built by cpu_fake_quantize.py with
 * -O3 -ffp-contract=off (no FMA contraction, which would change the rounding) and without
 * -ffast-math (the rounding trick below relies on IEEE arithmetic).
 */
#include <math.h>
#include <stdint.h>

/* Round half to even, as at::round: exact for |v| < 2^22 (quantized values are < 2^16);
 * copysignf keeps the sign of a value rounded to zero (-0.3 -> -0.0, as at::round). */
static inline float round_half_even(float v) {
    const float magic = 12582912.0f; /* 1.5 * 2^23 */
    return copysignf((v + magic) - magic, v); /* not folded to v: no -ffast-math */
}

/* What NNCF derives from a channel's (low, range), in NNCF's order of operations. */
struct quantizer_range {
    float lo, hi, scale, zero_point;
};

static inline struct quantizer_range range_of(float lo, float range, int32_t levels) {
    struct quantizer_range r;
    r.lo = lo;
    r.hi = lo + range;
    r.scale = (float)(levels - 1) / range;
    r.zero_point = round_half_even(-lo * r.scale);
    return r;
}

static inline float quantize_one(float x, struct quantizer_range r) {
    float v = x > r.hi ? r.hi : x;
    v = v < r.lo ? r.lo : v;
    v -= r.lo;
    v *= r.scale;
    v -= r.zero_point;
    return round_half_even(v) / r.scale;
}

/* Work is split into tasks of at most TASK elements of one channel row, whatever the number
 * of threads: the backward's sums are taken per task and added in task order afterwards, so they
 * do not depend on how many threads ran. Small tensors (weights) run on one thread. */
#define TASK 16384
#define PARALLEL_MIN 65536

/* The Python side sizes the backward's scratch from this. */
int64_t fq_task_elements(void) { return TASK; }

static int64_t tasks_per_row(int64_t inner) { return inner == 0 ? 0 : (inner + TASK - 1) / TASK; }

/* Elements [*start, *stop) and the channel of task t. */
static int64_t task_bounds(int64_t t, int64_t per_row, int64_t channels, int64_t inner,
                           int64_t *start, int64_t *stop) {
    const int64_t row = t / per_row;
    *start = row * inner + (t % per_row) * TASK;
    *stop = *start + TASK < (row + 1) * inner ? *start + TASK : (row + 1) * inner;
    return row % channels;
}

void fq_forward(const float *x, float *out, int64_t outer, int64_t channels, int64_t inner,
                const float *low, const float *range, int32_t levels, int32_t threads) {
    const int64_t per_row = tasks_per_row(inner);
    const int64_t tasks = outer * channels * per_row;
#pragma omp parallel for schedule(static) num_threads(threads) \
    if (outer * channels * inner >= PARALLEL_MIN)
    for (int64_t t = 0; t < tasks; ++t) {
        int64_t start, stop;
        const int64_t c = task_bounds(t, per_row, channels, inner, &start, &stop);
        const struct quantizer_range r = range_of(low[c], range[c], levels);
        for (int64_t i = start; i < stop; ++i) {
            out[i] = quantize_one(x[i], r);
        }
    }
}

/* One element of the backward: writes grad_x, returns err * g for the range gradient; the low
 * gradient is g - grad_x. */
static inline float backward_one(float xi, float g, struct quantizer_range r,
                                 float reverted_range, float alpha, float *grad_x) {
    float err = (quantize_one(xi, r) - xi) * reverted_range;
    err = xi > r.hi ? 1.0f : err;
    err = xi < r.lo ? alpha : err;
    *grad_x = xi > r.hi ? 0.0f : (xi < r.lo ? 0.0f : g);
    return err * g;
}

/* Within a task, sums run in LANES float lanes over blocks of BLOCK elements (the compiler
 * vectorizes the lanes: a plain float reduction it may not reorder), then in double. */
#define LANES 8
#define BLOCK 512

static inline void backward_task(const float *restrict grad, const float *restrict x,
                                 float *restrict grad_x, int64_t start, int64_t stop, float lo,
                                 float range, int32_t levels, float alpha, int with_low,
                                 double *range_sum, double *low_sum) {
    const struct quantizer_range r = range_of(lo, range, levels);
    const float reverted_range = 1.0f / range;
    double range_total = 0.0, low_total = 0.0;
    for (int64_t block = start; block < stop; block += BLOCK) {
        const int64_t block_stop = block + BLOCK < stop ? block + BLOCK : stop;
        float range_lane[LANES] = {0}, low_lane[LANES] = {0};
        int64_t i = block;
        for (; i + LANES <= block_stop; i += LANES) {
            for (int k = 0; k < LANES; ++k) {
                float gx;
                range_lane[k] += backward_one(x[i + k], grad[i + k], r, reverted_range, alpha, &gx);
                grad_x[i + k] = gx;
                if (with_low) low_lane[k] += grad[i + k] - gx;
            }
        }
        for (; i < block_stop; ++i) {
            float gx;
            range_lane[0] += backward_one(x[i], grad[i], r, reverted_range, alpha, &gx);
            grad_x[i] = gx;
            if (with_low) low_lane[0] += grad[i] - gx;
        }
        for (int k = 0; k < LANES; ++k) {
            range_total += range_lane[k];
            low_total += low_lane[k];
        }
    }
    *range_sum = range_total;
    *low_sum = low_total;
}

/* partial holds 2 * (number of tasks) doubles of scratch; grad_range_sum / grad_low_sum receive
 * one sum per channel. with_low: whether the low sums are wanted (NNCF uses grad_low only for
 * asymmetric quantizers; without them they stay 0). */
static void backward_sums(const float *grad, const float *x, float *grad_x, int64_t outer,
                          int64_t channels, int64_t inner, const float *low, const float *range,
                          int32_t levels, int32_t level_low, int32_t level_high, double *partial,
                          double *grad_range_sum, double *grad_low_sum, int with_low,
                          int32_t threads) {
    const float alpha = (float)level_low / (float)level_high;
    const int64_t per_row = tasks_per_row(inner);
    const int64_t tasks = outer * channels * per_row;
#pragma omp parallel for schedule(static) num_threads(threads) \
    if (outer * channels * inner >= PARALLEL_MIN)
    for (int64_t t = 0; t < tasks; ++t) {
        int64_t start, stop;
        const int64_t c = task_bounds(t, per_row, channels, inner, &start, &stop);
        if (with_low)
            backward_task(grad, x, grad_x, start, stop, low[c], range[c], levels, alpha, 1,
                          &partial[t], &partial[tasks + t]);
        else
            backward_task(grad, x, grad_x, start, stop, low[c], range[c], levels, alpha, 0,
                          &partial[t], &partial[tasks + t]);
    }
    for (int64_t c = 0; c < channels; ++c) {
        grad_range_sum[c] = 0.0;
        grad_low_sum[c] = 0.0;
    }
    for (int64_t t = 0; t < tasks; ++t) {
        const int64_t c = (t / per_row) % channels;
        grad_range_sum[c] += partial[t];
        grad_low_sum[c] += partial[tasks + t];
    }
}

void fq_backward(const float *grad, const float *x, float *grad_x, int64_t outer,
                 int64_t channels, int64_t inner, const float *low, const float *range,
                 int32_t levels, int32_t level_low, int32_t level_high, double *partial,
                 double *grad_range_sum, double *grad_low_sum, int32_t threads) {
    backward_sums(grad, x, grad_x, outer, channels, inner, low, range, levels, level_low,
                  level_high, partial, grad_range_sum, grad_low_sum, 1, threads);
}

/* NNCF's SymmetricQuantizer (symmetric_quantize and QuantizeSymmetric.forward in NNCF's
 * quantize_functions.py) derives each channel's range from its scale parameter s with float32
 * tensor operations: safe = |s| + eps, low = safe * (level_low / level_high), range = safe - low.
 * Same operations here (eps and ratio arrive as floats, as torch casts a Python scalar); low and
 * range are written out for the backward. */
void fq_symmetric_forward(const float *x, float *out, int64_t outer, int64_t channels,
                          int64_t inner, const float *scale, float eps, float ratio, float *low,
                          float *range, int32_t levels, int32_t threads) {
    for (int64_t c = 0; c < channels; ++c) {
        const float safe = fabsf(scale[c]) + eps;
        low[c] = safe * ratio;
        range[c] = safe - low[c];
    }
    fq_forward(x, out, outer, channels, inner, low, range, levels, threads);
}

/* scratch: as fq_backward's partial (2 * tasks doubles), then 2 * channels doubles for its sums.
 * NNCF hands the range gradient (rounded to float) on as the gradient of `safe`; autograd's
 * backward of |s| then multiplies it by sgn(s). */
void fq_symmetric_backward(const float *grad, const float *x, float *grad_x, int64_t outer,
                           int64_t channels, int64_t inner, const float *low, const float *range,
                           int32_t levels, int32_t level_low, int32_t level_high, double *scratch,
                           const float *scale, float *grad_scale, int32_t threads) {
    double *range_sum = scratch + 2 * outer * channels * tasks_per_row(inner);
    double *low_sum = range_sum + channels;
    backward_sums(grad, x, grad_x, outer, channels, inner, low, range, levels, level_low,
                  level_high, scratch, range_sum, low_sum, 0, threads);
    for (int64_t c = 0; c < channels; ++c) {
        const float sign = (float)((0.0f < scale[c]) - (scale[c] < 0.0f));
        grad_scale[c] = (float)range_sum[c] * sign;
    }
}
