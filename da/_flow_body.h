/* The mixture flow of one problem (local domain) for one floating-point type.
 *
 * Included twice by _flow.c, with REAL = float / double and NAME(x) a suffix for the
 * type: the arithmetic is that of da/gaussian_mixture.py's `mixture_flow` (the exponential
 * integrator of the diffused Gaussian mixture, Heun on the responsibilities), done for
 * one domain at a time so that every array of the step stays in the first-level cache
 * instead of being streamed through memory once per elementwise operation.
 *
 * Layouts (all row-major): the points are held as rows of coordinates, pts (K, N), N
 * padded to whole vectors of LANES points, so that every operation is a vector operation
 * over points and no sum needs reordering; means (M, K); terms (M, K) and bias (M) are
 * the logits' factors, logits = terms pts + bias (M, N).
 */

/* 2^x for x in [-100, 0], lane by lane: 2^n (exponent bits) times a Taylor polynomial
 * of 2^f on [-1/2, 1/2]; degree 13 (double) / 7 (float) keeps the relative error below
 * the type's rounding (the last term's bound: 0.35^14 / 14! = 4e-18, 0.35^8 / 8! = 5e-9).
 * Vector arithmetic only (no library call), so it runs in the SIMD registers. */
static INLINE VEC NAME(exp2_neg)(VEC x)
{
    const VEC rounder = (VEC){0} + (REAL)ROUNDER;
    VEC n = (x + rounder) - rounder;  /* round to nearest: the magic-number trick */
    VEC f = (x - n) * (REAL)0.69314718055994530942;
    VEC p = EXP_POLY(f);
    /* n + bias lands in the low mantissa bits of n + bias + 2^mant; shifted up, they
       are the exponent field of 2^n */
    VEC shifted = n + (REAL)(EXP_BIAS + TWO_MANT);
    UVEC bits = (UVEC)shifted << MANT_BITS;
    return p * (VEC)bits;
}

/* The lanes' maximum (a comparison gives a mask of all-one lanes). */
static INLINE VEC NAME(vmax)(VEC a, VEC b)
{
    IVEC greater = a > b;
    return (VEC)((greater & (IVEC)a) | (~greater & (IVEC)b));
}

/* The logits' factors at diffusion time t (alpha, s_k = alpha^2 var_k + beta^2), in
 * base-2 units: terms_jk = alpha m_jk / s_k, bias_j = log pi_j - alpha^2 |m_j|^2_s / 2. */
static INLINE void NAME(set_time)(int m, int k, REAL alpha, const REAL *restrict s,
                                  const REAL *restrict means, const REAL *restrict logw,
                                  REAL *restrict inv_s, REAL *restrict terms,
                                  REAL *restrict bias)
{
    for (int c = 0; c < k; ++c) inv_s[c] = (REAL)1.0 / s[c];
    for (int j = 0; j < m; ++j) {
        REAL quad = 0;
        for (int c = 0; c < k; ++c) {
            REAL mu = means[j * k + c];
            terms[j * k + c] = (REAL)LOG2E * alpha * mu * inv_s[c];
            quad += mu * mu * inv_s[c];
        }
        bias[j] = (REAL)LOG2E * ((logw ? logw[j] : 0) - (REAL)0.5 * alpha * alpha * quad);
    }
}

/* Rows j .. j + W - 1 of the logits at block b of the points: W independent chains of
 * fused multiply-adds (W a constant after inlining, so the accumulators live in
 * registers; one chain alone would wait on each addition's latency). */
static INLINE void NAME(logit_rows)(const int W, int j, int k, int blocks, int b, int product,
                                    const REAL *restrict terms, const REAL *restrict bias,
                                    const VEC *restrict pts, VEC *restrict w)
{
    VEC acc[8];
#pragma GCC unroll 8
    for (int r = 0; r < W; ++r) acc[r] = (VEC){0} + bias[j + r];
    if (product)
        for (int c = 0; c < k; ++c) {
            VEC p = pts[c * blocks + b];
#pragma GCC unroll 8
            for (int r = 0; r < W; ++r) acc[r] += terms[(j + r) * k + c] * p;
        }
#pragma GCC unroll 8
    for (int r = 0; r < W; ++r) w[(j + r) * blocks + b] = acc[r];
}

/* Coordinates c .. c + W - 1 of the responsibility-weighted mean at block b, the same way. */
static INLINE void NAME(centre_rows)(const int W, int c, int m, int k, int blocks, int b,
                                     VEC inv, const REAL *restrict means,
                                     const VEC *restrict w, VEC *restrict centre)
{
    VEC acc[8];
#pragma GCC unroll 8
    for (int r = 0; r < W; ++r) acc[r] = (VEC){0};
    for (int j = 0; j < m; ++j) {
        VEC e = w[j * blocks + b];
#pragma GCC unroll 8
        for (int r = 0; r < W; ++r) acc[r] += means[j * k + c + r] * e;
    }
#pragma GCC unroll 8
    for (int r = 0; r < W; ++r) centre[(c + r) * blocks + b] = acc[r] * inv;
}

/* centre (K, N) = sum_j r_j(z_i) m_jc at the points pts (K, N), both as blocks of LANES
 * points; the responsibilities r_j are a softmax of the logits, shifted by their maximum,
 * with weights below 2^-100 of the largest raised to it, as in the torch path. */
static INLINE void NAME(centre)(int m, int k, int n, REAL alpha, const REAL *restrict terms,
                                const REAL *restrict bias, const REAL *restrict means,
                                const VEC *restrict pts, VEC *restrict w,
                                VEC *restrict centre)
{
    int blocks = n / LANES, product = alpha != 0;
    for (int b = 0; b < blocks; ++b) {
        int j = 0;
        for (; j + 8 <= m; j += 8) NAME(logit_rows)(8, j, k, blocks, b, product, terms, bias, pts, w);
        for (; j + 4 <= m; j += 4) NAME(logit_rows)(4, j, k, blocks, b, product, terms, bias, pts, w);
        for (; j < m; ++j) NAME(logit_rows)(1, j, k, blocks, b, product, terms, bias, pts, w);
        VEC hi = w[b];
        for (j = 1; j < m; ++j) hi = NAME(vmax)(w[j * blocks + b], hi);
        VEC sum = {0};
        for (j = 0; j < m; ++j) {
            VEC e = NAME(exp2_neg)(NAME(vmax)(w[j * blocks + b] - hi, (VEC){0} - (REAL)100.0));
            w[j * blocks + b] = e;
            sum += e;
        }
        VEC inv = (REAL)1.0 / sum;
        int c = 0;
        for (; c + 8 <= k; c += 8) NAME(centre_rows)(8, c, m, k, blocks, b, inv, means, w, centre);
        for (; c + 4 <= k; c += 4) NAME(centre_rows)(4, c, m, k, blocks, b, inv, means, w, centre);
        for (; c < k; ++c) NAME(centre_rows)(1, c, m, k, blocks, b, inv, means, w, centre);
    }
}

/* One domain's flow over the times (alphas[t], betas2[t], t = 0 .. steps): z (N, K) in
 * place. vecs: 4 K B + M B vectors, B = PADDED(N) / LANES; scalars: M K + M + 5 K. */
static INLINE void NAME(flow_one)(int m, int k, int n_true, int steps,
                                  const double *restrict alphas,
                                  const double *restrict betas2, int second_order,
                                  REAL *restrict z, const REAL *restrict means,
                                  const REAL *restrict var, const REAL *restrict logw,
                                  VEC *restrict vecs, REAL *restrict scalars)
{
    int n = PADDED(n_true), blocks = n / LANES, size = k * blocks;
    VEC *pts = vecs, *pred = pts + size, *c0 = pred + size, *c1 = c0 + size, *w = c1 + size;
    REAL *terms = scalars, *bias = terms + m * k, *s0 = bias + m, *s1 = s0 + k;
    REAL *ratio = s1 + k, *gain = ratio + k, *inv_s = gain + k;
    REAL *flat = (REAL *)pts;  /* row c of the points: flat[c * n .. c * n + n - 1] */
    memset(pts, 0, size * sizeof(VEC));
    for (int i = 0; i < n_true; ++i)
        for (int c = 0; c < k; ++c) flat[c * n + i] = z[i * k + c];
    for (int step = 0; step < steps; ++step) {
        REAL a0 = (REAL)alphas[step], a1 = (REAL)alphas[step + 1];
        for (int c = 0; c < k; ++c) {
            s0[c] = a0 * a0 * var[c] + (REAL)betas2[step];
            s1[c] = a1 * a1 * var[c] + (REAL)betas2[step + 1];
            ratio[c] = SQRT(s1[c] / s0[c]);
            gain[c] = a1 - a0 * ratio[c];
        }
        NAME(set_time)(m, k, a0, s0, means, logw, inv_s, terms, bias);
        NAME(centre)(m, k, n, a0, terms, bias, means, pts, w, c0);
        if (!second_order) {
            for (int c = 0; c < k; ++c)
                for (int b = 0; b < blocks; ++b)
                    pts[c * blocks + b] = ratio[c] * pts[c * blocks + b]
                                          + gain[c] * c0[c * blocks + b];
            continue;
        }
        for (int c = 0; c < k; ++c)
            for (int b = 0; b < blocks; ++b)
                pred[c * blocks + b] = ratio[c] * pts[c * blocks + b] + gain[c] * c0[c * blocks + b];
        NAME(set_time)(m, k, a1, s1, means, logw, inv_s, terms, bias);
        NAME(centre)(m, k, n, a1, terms, bias, means, pred, w, c1);
        for (int c = 0; c < k; ++c)
            for (int b = 0; b < blocks; ++b)
                pts[c * blocks + b] = ratio[c] * pts[c * blocks + b]
                                      + (REAL)0.5 * gain[c] * (c0[c * blocks + b] + c1[c * blocks + b]);
    }
    for (int i = 0; i < n_true; ++i)
        for (int c = 0; c < k; ++c) z[i * k + c] = flat[c * n + i];
}

/* Every domain b: z + b z_stride (N, K) in place, means + b means_stride (M, K),
 * var + b var_stride (K), logw + b logw_stride (M) or NULL; a stride of 0 broadcasts. */
static CLONES int NAME(flow_all)(long long batch, int m, int k, int n, int steps,
                                 const double *alphas, const double *betas2, int second_order,
                                 REAL *z, const REAL *means, long long means_stride,
                                 const REAL *var, long long var_stride,
                                 const REAL *logw, long long logw_stride)
{
    size_t blocks = PADDED(n) / LANES;
    VEC *vecs = aligned_alloc(sizeof(VEC), (4 * (size_t)k + m) * blocks * sizeof(VEC));
    REAL *scalars = malloc(((size_t)m * k + m + 5 * (size_t)k) * sizeof(REAL));
    if (!vecs || !scalars) {
        free(vecs);
        free(scalars);
        return -1;
    }
    for (long long b = 0; b < batch; ++b)
        NAME(flow_one)(m, k, n, steps, alphas, betas2, second_order, z + b * (long long)n * k,
                       means + b * means_stride, var + b * var_stride,
                       logw ? logw + b * logw_stride : NULL, vecs, scalars);
    free(vecs);
    free(scalars);
    return 0;
}
