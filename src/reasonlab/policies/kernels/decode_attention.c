/* One decode step of grouped-query attention over a prompt cache shared by each prompt's rows.
 *
 * The sampler's decode attention reads the whole KV cache once per step for a handful of query rows
 * per key/value head. PyTorch runs that as batched matmuls of 3 x 64 by 64 x L, which stream the cache
 * at about a third of the bandwidth a plain read reaches on a CPU. This kernel:
 *   - takes one task per (prompt, key/value head), so a prompt's keys and values come from memory once
 *     for every query that reads them (all query heads of the key/value head, all rows of the prompt);
 *     the later queries of a task find them in the L2 cache;
 *   - skips the prompt's padding instead of reading and masking it;
 *   - for head size 64 with AVX2 and FMA, scores four keys per pass with independent accumulators
 *     (a single chain of fused multiply-adds would wait on its own latency) and keeps the output row
 *     in registers while it sums the values.
 * The result is the same attention as PyTorch's up to float rounding (a different summation order).
 *
 * Layouts (float32 and contiguous; keep, start and the counts as stated):
 *   q     (B, H, G, D)   queries, already scaled; H key/value heads, G query heads per key/value head
 *   pk,pv (U, H, P, D)   each prompt's keys/values; position p of prompt u is used where keep[u, p] is 1
 *   keep  (U, P)         uint8: 1 on a prompt's tokens, 0 on its padding
 *   gk,gv (B, H, R, D)   each row's generated keys/values, the first T positions filled (R: the room)
 *   start (U + 1)        int64: rows of prompt u are start[u] .. start[u + 1] - 1 (rows ordered by prompt)
 *   out   (B, H, G, D)
 * Tasks are split into contiguous ranges, one per thread.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define HAVE_AVX2 1
#endif

typedef struct {
    const float *q, *pk, *pv, *gk, *gv;
    const uint8_t *keep;
    const int64_t *start;
    float *out;
    int64_t U, H, G, D, P, R, T;
} job_t;

/* s[j] = q . k_j for the n keys k_j = k + j * d. */
static void scores_generic(const float *restrict q, const float *restrict k, int64_t n, int64_t d,
                           float *restrict s) {
    for (int64_t j = 0; j < n; j++) {
        float acc = 0.f;
        for (int64_t i = 0; i < d; i++) acc += q[i] * k[j * d + i];
        s[j] = acc;
    }
}

/* o += sum_j s[j] * v_j for the n values v_j = v + j * d. */
static void weighted_generic(const float *restrict s, const float *restrict v, int64_t n, int64_t d,
                             float *restrict o) {
    for (int64_t j = 0; j < n; j++)
        for (int64_t i = 0; i < d; i++) o[i] += s[j] * v[j * d + i];
}

#ifdef HAVE_AVX2
static inline float hsum(__m256 a) {
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

static void scores64(const float *restrict q, const float *restrict k, int64_t n, float *restrict s) {
    __m256 q0 = _mm256_loadu_ps(q), q1 = _mm256_loadu_ps(q + 8), q2 = _mm256_loadu_ps(q + 16),
           q3 = _mm256_loadu_ps(q + 24), q4 = _mm256_loadu_ps(q + 32), q5 = _mm256_loadu_ps(q + 40),
           q6 = _mm256_loadu_ps(q + 48), q7 = _mm256_loadu_ps(q + 56);
#define DOT64(acc, kp)                                                                                      \
    acc = _mm256_mul_ps(q0, _mm256_loadu_ps(kp));                                                           \
    acc = _mm256_fmadd_ps(q1, _mm256_loadu_ps(kp + 8), acc);                                                \
    acc = _mm256_fmadd_ps(q2, _mm256_loadu_ps(kp + 16), acc);                                               \
    acc = _mm256_fmadd_ps(q3, _mm256_loadu_ps(kp + 24), acc);                                               \
    acc = _mm256_fmadd_ps(q4, _mm256_loadu_ps(kp + 32), acc);                                               \
    acc = _mm256_fmadd_ps(q5, _mm256_loadu_ps(kp + 40), acc);                                               \
    acc = _mm256_fmadd_ps(q6, _mm256_loadu_ps(kp + 48), acc);                                               \
    acc = _mm256_fmadd_ps(q7, _mm256_loadu_ps(kp + 56), acc);
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) {
        const float *kp = k + j * 64;
        __m256 a0, a1, a2, a3;
        DOT64(a0, kp) DOT64(a1, kp + 64) DOT64(a2, kp + 128) DOT64(a3, kp + 192)
        /* Four horizontal sums at once: lanes 0-3 of the low half plus the high half. */
        __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
        _mm_storeu_ps(s + j, _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
    }
    for (; j < n; j++) {
        const float *kp = k + j * 64;
        __m256 a;
        DOT64(a, kp)
        s[j] = hsum(a);
    }
#undef DOT64
}

static void weighted64(const float *restrict s, const float *restrict v, int64_t n, float *restrict o) {
    __m256 o0 = _mm256_loadu_ps(o), o1 = _mm256_loadu_ps(o + 8), o2 = _mm256_loadu_ps(o + 16),
           o3 = _mm256_loadu_ps(o + 24), o4 = _mm256_loadu_ps(o + 32), o5 = _mm256_loadu_ps(o + 40),
           o6 = _mm256_loadu_ps(o + 48), o7 = _mm256_loadu_ps(o + 56);
    for (int64_t j = 0; j < n; j++) {
        const float *vp = v + j * 64;
        const __m256 w = _mm256_broadcast_ss(s + j);
        o0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vp), o0);
        o1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vp + 8), o1);
        o2 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vp + 16), o2);
        o3 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vp + 24), o3);
        o4 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vp + 32), o4);
        o5 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vp + 40), o5);
        o6 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vp + 48), o6);
        o7 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vp + 56), o7);
    }
    _mm256_storeu_ps(o, o0); _mm256_storeu_ps(o + 8, o1); _mm256_storeu_ps(o + 16, o2);
    _mm256_storeu_ps(o + 24, o3); _mm256_storeu_ps(o + 32, o4); _mm256_storeu_ps(o + 40, o5);
    _mm256_storeu_ps(o + 48, o6); _mm256_storeu_ps(o + 56, o7);
}
#endif

static inline void scores(const float *q, const float *k, int64_t n, int64_t d, float *s) {
#ifdef HAVE_AVX2
    if (d == 64) { scores64(q, k, n, s); return; }
#endif
    scores_generic(q, k, n, d, s);
}

static inline void weighted(const float *s, const float *v, int64_t n, int64_t d, float *o) {
#ifdef HAVE_AVX2
    if (d == 64) { weighted64(s, v, n, o); return; }
#endif
    weighted_generic(s, v, n, d, o);
}

/* scratch: L floats of scores and 2 * P int64 run bounds. */
static void run_task(const job_t *j, int64_t task, float *s, int64_t *runs) {
    const int64_t u = task / j->H, h = task % j->H, D = j->D, G = j->G, P = j->P, T = j->T, R = j->R;
    const int64_t b0 = j->start[u], b1 = j->start[u + 1];
    const uint8_t *keep = j->keep + u * P;
    const float *pk = j->pk + (u * j->H + h) * P * D, *pv = j->pv + (u * j->H + h) * P * D;
    /* The prompt's tokens as runs of consecutive positions (the padding between them is never read). */
    int64_t nruns = 0, n = 0;
    for (int64_t p = 0; p < P;) {
        if (!keep[p]) { p++; continue; }
        int64_t e = p;
        while (e < P && keep[e]) e++;
        runs[2 * nruns] = p, runs[2 * nruns + 1] = e - p, nruns++, n += e - p;
        p = e;
    }
    for (int64_t b = b0; b < b1; b++) {
        const float *gk = j->gk + (b * j->H + h) * R * D, *gv = j->gv + (b * j->H + h) * R * D;
        for (int64_t g = 0; g < G; g++) {
            const float *q = j->q + ((b * j->H + h) * G + g) * D;
            float *o = j->out + ((b * j->H + h) * G + g) * D;
            int64_t c = 0;
            for (int64_t r = 0; r < nruns; r++) {
                scores(q, pk + runs[2 * r] * D, runs[2 * r + 1], D, s + c);
                c += runs[2 * r + 1];
            }
            scores(q, gk, T, D, s + n);
            const int64_t len = n + T;
            float m = s[0], sum = 0.f;
            for (int64_t p = 1; p < len; p++) m = s[p] > m ? s[p] : m;
            for (int64_t p = 0; p < len; p++) s[p] = expf(s[p] - m);
            for (int64_t p = 0; p < len; p++) sum += s[p];
            for (int64_t i = 0; i < D; i++) o[i] = 0.f;
            c = 0;
            for (int64_t r = 0; r < nruns; r++) {
                weighted(s + c, pv + runs[2 * r] * D, runs[2 * r + 1], D, o);
                c += runs[2 * r + 1];
            }
            weighted(s + n, gv, T, D, o);
            const float inv = 1.f / sum;
            for (int64_t i = 0; i < D; i++) o[i] *= inv;
        }
    }
}

/* Returns 0 on success, 1 if the score buffers could not be allocated.
 *
 * Threads come from OpenMP. Compiled with -fopenmp, this library needs libgomp.so.1, and the dynamic
 * linker gives it the copy PyTorch already loaded: the kernel runs on PyTorch's own thread pool. Two
 * pools would fight over the cores, each one's idle threads spinning while the other works. (A PyTorch
 * built with another OpenMP runtime, such as Intel's, gets the two pools: correct, but slower.) */
int decode_attention(const float *q, const float *pk, const float *pv, const uint8_t *keep, const float *gk,
                     const float *gv, const int64_t *start, float *out, int64_t U, int64_t H, int64_t G,
                     int64_t D, int64_t P, int64_t R, int64_t T, int threads) {
    const job_t job = {q, pk, pv, gk, gv, keep, start, out, U, H, G, D, P, R, T};
    /* Per thread: P + T scores, then 2 * P + 2 run bounds (int64, so at an even float offset). */
    const int64_t tasks = U * H, n_scores = (P + T + 2) & ~(int64_t)1, per_thread = n_scores + 2 * (2 * P + 2);
    if (threads < 1) threads = 1;
    float *scratch = malloc(sizeof(float) * (size_t)(per_thread * threads));
    if (!scratch) return 1;
#pragma omp parallel num_threads(threads)
    {
        int me = 0;
#ifdef _OPENMP
        me = omp_get_thread_num();
#endif
        float *s = scratch + me * per_thread;
        int64_t *runs = (int64_t *)(s + n_scores);
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tasks; t++) run_task(&job, t, s, runs);
    }
    free(scratch);
    return 0;
}
