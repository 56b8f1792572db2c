/* digitlab.vision._flat: `to_mnist` for a digit on flat paper, in one compiled call.

   The drawing page, a paint program or a clean scan gives a digit on perfectly even paper
   (preprocess._flat_paper_residual). For those, preprocess.to_mnist is a chain of ~100
   small NumPy, SciPy and Pillow calls whose interpreter overhead costs more than their
   arithmetic. This file does the same steps, in the same order and the same precision
   (float32 where NumPy works in float32, Pillow's resampling coefficients, NumPy's
   pairwise sums, SciPy's exact distances), so the result is bit for bit the Python one;
   tests/test_flat_native.py holds the two against each other. It releases the GIL.

   Anything off the common path (not flat paper, whose border is paper but where strokes
   cross it; a picture over MAX_WORK_SIDE or under 2 px, a filter window wider than the
   picture, a skeleton that vanishes) is declined: the caller runs the Python code. The
   constants below are preprocess.py's (the module exports them as CONSTANTS, and a test
   compares). Build with -ffp-contract=off: a fused multiply-add would round differently.

   Also here, for vision/png.py: undoing the row filters of a plain 8-bit grey PNG.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <float.h>
#include <limits.h>
#include <stddef.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { DONE = 0, BLANK = 1, DECLINE = 2, NOMEM = 3 };

#define MNIST_SIDE 28
#define DIGIT_BOX 20.0
#define WORK_BOX 80.0
#define WORK_MARGIN 20 /* WORK_BOX // 4 */
#define MAX_WORK_SIDE 1600
#define STROKE_TARGET 0.11
#define STROKE_LOW 0.08
#define STROKE_HIGH 0.18
#define MIN_CONTRAST 0.08
#define SHADOWED_CONTRAST 0.24
#define SPECK_FRACTION 0.02
#define FLAT_LEVELS 2
#define FLAT_SHARE 0.5
#define FLAT_BORDER_SHARE 0.95
#define FLAT_FAR 64 /* round(255 * 0.25) */
#define FLAT_BORDER_RUN 0.25

typedef struct {
    int y0, x0, y1, x1; /* ends exclusive */
} Box;

/* --- order statistics (exact: selection, not sorting) --------------------------------- */

/* The k-th smallest (0-based) of a[0..n-1]; reorders a so that a[i] <= a[k] for i < k and
   a[i] >= a[k] for i > k. Three-way partitions: flat paper repeats one value thousands of
   times. */
#define DEFINE_SELECT(NAME, T)                                                           \
    static T NAME(T *a, size_t n, size_t k) {                                           \
        size_t lo = 0, hi = n;                                                          \
        while (hi - lo > 1) {                                                           \
            T x = a[lo], y = a[lo + (hi - lo) / 2], z = a[hi - 1];                      \
            T pivot = (x < y) ? ((y < z) ? y : ((x < z) ? z : x))                       \
                              : ((x < z) ? x : ((y < z) ? z : y));                      \
            size_t lt = lo, i = lo, gt = hi;                                            \
            while (i < gt) {                                                            \
                T v = a[i];                                                             \
                if (v < pivot) {                                                        \
                    a[i] = a[lt];                                                       \
                    a[lt++] = v;                                                        \
                    i++;                                                                \
                } else if (v > pivot) {                                                 \
                    a[i] = a[--gt];                                                     \
                    a[gt] = v;                                                          \
                } else {                                                                \
                    i++;                                                                \
                }                                                                       \
            }                                                                           \
            if (k < lt) {                                                               \
                hi = lt;                                                                \
            } else if (k >= gt) {                                                       \
                lo = gt;                                                                \
            } else {                                                                    \
                return pivot;                                                           \
            }                                                                           \
        }                                                                               \
        return a[k];                                                                    \
    }

DEFINE_SELECT(select_f, float)
DEFINE_SELECT(select_d, double)

/* A float's bits as an integer in the same order (no NaN): negative floats reversed below
   the positive ones. */
static inline uint32_t float_key(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* The k-th smallest (0-based) of a[0..n-1] by radix selection on float_key: three passes
   of 11, 11 and 10 bits, each keeping only the bucket holding rank k. keys: n values of
   scratch. Linear, and free of the data-dependent branches that make a quickselect slow
   on the ~100 grey levels of a drawing's ink. */
static float radix_select(const float *a, size_t n, size_t k, uint32_t *keys) {
    for (size_t i = 0; i < n; i++) keys[i] = float_key(a[i]);
    static const int shift[3] = {21, 10, 0}, width[3] = {11, 11, 10};
    uint32_t count[2048];
    size_t m = n;
    for (int pass = 0; pass < 3; pass++) {
        uint32_t digits = (1u << width[pass]) - 1;
        memset(count, 0, sizeof(uint32_t) * (digits + 1));
        for (size_t i = 0; i < m; i++) count[(keys[i] >> shift[pass]) & digits]++;
        uint32_t bucket = 0;
        while (k >= count[bucket]) k -= count[bucket++];
        size_t kept = 0;
        for (size_t i = 0; i < m; i++)
            if (((keys[i] >> shift[pass]) & digits) == bucket) keys[kept++] = keys[i];
        m = kept;
    }
    uint32_t key = keys[0], u = (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

/* np.median of a float32 array (destroys it): the middle value, or the float32 mean of the
   middle two. */
static double median_f(float *a, size_t n) {
    size_t mid = n / 2;
    float upper = select_f(a, n, mid);
    if (n % 2) return (double)upper;
    float lower = a[0];
    for (size_t i = 1; i < mid; i++)
        if (a[i] > lower) lower = a[i];
    float sum = lower + upper;
    return (double)(sum / 2.0f);
}

static double median_d(double *a, size_t n) {
    size_t mid = n / 2;
    double upper = select_d(a, n, mid);
    if (n % 2) return upper;
    double lower = a[0];
    for (size_t i = 1; i < mid; i++)
        if (a[i] > lower) lower = a[i];
    return (lower + upper) / 2.0;
}

/* --- NumPy's pairwise summation (np.sum's order of additions) -------------------------- */

#define DEFINE_PAIRWISE(NAME, T, ACC)                                                    \
    static ACC NAME(const T *a, size_t n) {                                             \
        if (n < 8) {                                                                    \
            ACC res = -0.0;                                                             \
            for (size_t i = 0; i < n; i++) res += (ACC)a[i];                            \
            return res;                                                                 \
        } else if (n <= 128) {                                                          \
            ACC r[8], res;                                                              \
            size_t i;                                                                   \
            for (int j = 0; j < 8; j++) r[j] = (ACC)a[j];                               \
            for (i = 8; i < n - (n % 8); i += 8)                                        \
                for (int j = 0; j < 8; j++) r[j] += (ACC)a[i + j];                      \
            res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));    \
            for (; i < n; i++) res += (ACC)a[i];                                        \
            return res;                                                                 \
        } else {                                                                        \
            size_t n2 = n / 2;                                                          \
            n2 -= n2 % 8;                                                               \
            return NAME(a, n2) + NAME(a + n2, n - n2);                                  \
        }                                                                               \
    }

DEFINE_PAIRWISE(sum_f, float, float)
DEFINE_PAIRWISE(sum_d, double, double)

/* --- masks, boxes, maximum filters ------------------------------------------------------ */

static int row_any(const uint8_t *p, int w) {
    int x = 0;
    for (; x + 8 <= w; x += 8) {
        uint64_t v;
        memcpy(&v, p + x, 8);
        if (v) return 1;
    }
    for (; x < w; x++)
        if (p[x]) return 1;
    return 0;
}

/* preprocess.mask_bbox: rows from either end, then the columns of the rows between. */
static int mask_bbox(const uint8_t *m, int h, int w, Box *box) {
    int y0 = 0, y1 = h - 1;
    while (y0 < h && !row_any(m + (size_t)y0 * w, w)) y0++;
    if (y0 == h) return 0;
    while (!row_any(m + (size_t)y1 * w, w)) y1--;
    uint8_t stack[512], *cols = w <= 512 ? stack : malloc(w);
    int x0 = 0, x1 = w - 1;
    if (cols) {
        memset(cols, 0, w);
        for (int y = y0; y <= y1; y++) {
            const uint8_t *row = m + (size_t)y * w;
            for (int x = 0; x < w; x++) cols[x] |= row[x];
        }
        while (!cols[x0]) x0++;
        while (!cols[x1]) x1--;
        if (cols != stack) free(cols);
    } else { /* no memory for the column flags: look pixel by pixel */
        x0 = w, x1 = -1;
        for (int y = y0; y <= y1; y++)
            for (int x = 0; x < w; x++)
                if (m[(size_t)y * w + x]) {
                    x0 = x < x0 ? x : x0;
                    x1 = x > x1 ? x : x1;
                }
    }
    box->y0 = y0;
    box->x0 = x0;
    box->y1 = y1 + 1;
    box->x1 = x1 + 1;
    return 1;
}

/* preprocess.max_filter (= ndimage.maximum_filter when the window fits the picture): the
   window [i + low, i + high] clipped to the picture, one axis then the other, each offset
   as a maximum of shifted rows (loops the compiler vectorises). tmp: h * w values. */
#define DEFINE_MAXF(NAME, T)                                                             \
    static void NAME(const T *src, T *dst, T *tmp, int h, int w, int size) {            \
        int low = -(size / 2), high = size - size / 2 - 1;                              \
        memcpy(tmp, src, sizeof(T) * (size_t)h * w);                                    \
        for (int o = low; o <= high; o++) {                                             \
            if (!o) continue;                                                           \
            int y0 = o < 0 ? -o : 0, y1 = o > 0 ? h - o : h;                            \
            for (int y = y0; y < y1; y++) {                                             \
                T *d = tmp + (size_t)y * w;                                             \
                const T *r = src + (size_t)(y + o) * w;                                 \
                for (int x = 0; x < w; x++) d[x] = r[x] > d[x] ? r[x] : d[x];           \
            }                                                                           \
        }                                                                               \
        memcpy(dst, tmp, sizeof(T) * (size_t)h * w);                                    \
        for (int o = low; o <= high; o++) {                                             \
            if (!o) continue;                                                           \
            int x0 = o < 0 ? -o : 0, x1 = o > 0 ? w - o : w;                            \
            for (int y = 0; y < h; y++) {                                               \
                T *d = dst + (size_t)y * w;                                             \
                const T *r = tmp + (size_t)y * w + o;                                   \
                for (int x = x0; x < x1; x++) d[x] = r[x] > d[x] ? r[x] : d[x];         \
            }                                                                           \
        }                                                                               \
    }

DEFINE_MAXF(maxf_u8, uint8_t)
DEFINE_MAXF(maxf_f, float)
DEFINE_MAXF(maxf_i32, int32_t)

/* --- exact Euclidean distance transform (ndimage.distance_transform_edt's distances) ----- */

/* Squared distance of every pixel to the nearest zero of m (0 for the zeros themselves),
   exact integers; with a limit > 0, exact below the limit and at least the limit for any
   pixel whose squared distance is the limit or more (for a caller that only tells near
   from far: up to NEAR_ENOUGH each row is then a few passes of minima; past it, a search
   that far would cost more than the envelope, and the distances are exact everywhere). Returns
   DECLINE when m has no zero. (Sides up to MAX_WORK_SIDE plus margins: squares fit an
   int32.) */
#define FAR (1 << 24) /* further than any pixel of a picture: no zero in the column */
#define NEAR_REACH 16 /* the columns either side a pixel's direct search looks at, at most */
#define NEAR_ENOUGH (NEAR_REACH * NEAR_REACH) /* the largest limit kept: within that reach */
#define UNSEEN (1 << 30) /* no zero there: more than any squared distance, never overflows */
static int edt_squared(const uint8_t *m, int h, int w, int32_t limit, int32_t *out) {
    if (h > 8192 || w > 8192) return DECLINE;
    if (limit > NEAR_ENOUGH) limit = 0;
    int reach = 1; /* with a limit: the first offset whose square reaches it */
    while (limit > 0 && reach * reach < limit) reach++;
    int32_t *v = malloc(sizeof(int32_t) * (w + 1)), *f = malloc(sizeof(int32_t) * (w + 1));
    int64_t *zn = malloc(sizeof(int64_t) * (w + 1)), *zd = malloc(sizeof(int64_t) * (w + 1));
    /* A row read sideways (reach <= NEAR_REACH), its margins past the picture's sides at the
       limit, or UNSEEN without one: no bounds tests in the loops that read it. */
    int32_t *padded = malloc(sizeof(int32_t) * ((size_t)w + 2 * NEAR_REACH));
    if (!v || !f || !zn || !zd || !padded) {
        free(v), free(f), free(zn), free(zd), free(padded);
        return NOMEM;
    }
    for (int k = 0; k < NEAR_REACH; k++)
        padded[k] = padded[NEAR_REACH + w + k] = limit > 0 ? limit : UNSEEN;
    int32_t *g = padded + NEAR_REACH;
    /* Along the columns, a row at a time (loops the compiler vectorises): distance to the
       nearest zero above, then below, then squared. */
    size_t zeros = 0;
    for (int x = 0; x < w; x++) {
        out[x] = m[x] ? FAR : 0;
        zeros += !m[x];
    }
    for (int y = 1; y < h; y++) {
        const uint8_t *row = m + (size_t)y * w;
        const int32_t *above = out + (size_t)(y - 1) * w;
        int32_t *d = out + (size_t)y * w;
        for (int x = 0; x < w; x++) {
            int32_t next = above[x] + 1 < FAR ? above[x] + 1 : FAR;
            d[x] = row[x] ? next : 0;
            zeros += !row[x];
        }
    }
    if (!zeros) {
        free(v), free(f), free(zn), free(zd), free(padded);
        return DECLINE;
    }
    for (int y = h - 2; y >= 0; y--) {
        const int32_t *below = out + (size_t)(y + 1) * w;
        int32_t *d = out + (size_t)y * w;
        for (int x = 0; x < w; x++) d[x] = below[x] + 1 < d[x] ? below[x] + 1 : d[x];
    }
    for (size_t i = 0; i < (size_t)h * w; i++) out[i] = out[i] >= FAR ? -1 : out[i] * out[i];
    /* Along the rows: lower envelope of parabolas (Felzenszwalb & Huttenlocher); -1 marks a
       column without a zero. Parabola j starts where x reaches zn[j] / zd[j], kept as a
       fraction so every comparison is exact. */
    for (int y = 0; y < h; y++) {
        int32_t *row = out + (size_t)y * w;
        memcpy(f, row, sizeof(int32_t) * w); /* the row is then overwritten with results */
        if (limit > 0) {
            /* min(limit, exact): a zero nearer than the limit lies fewer than `reach`
               columns away, so each offset below it is one pass of minima over the row
               (loops the compiler vectorises), read from the column distances capped at
               the limit, with capped margins for the picture's sides. */
            for (int x = 0; x < w; x++) g[x] = f[x] < 0 || f[x] > limit ? limit : f[x];
            memcpy(row, g, sizeof(int32_t) * w);
            for (int d = 1; d < reach; d++) {
                int32_t dd = d * d;
                for (int x = 0; x < w; x++) {
                    int32_t left = dd + g[x - d], right = dd + g[x + d];
                    int32_t side = left < right ? left : right;
                    row[x] = side < row[x] ? side : row[x];
                }
            }
            continue;
        }
        /* Strokes: a pixel's nearest zero is close by along the row, either in its own
           column or in one a few pixels aside (a deep column inside a long vertical stroke
           has the stroke's side next to it); look nearest first and stop once the offset
           alone is no better: exact. A row with a pixel whose nearest zero is not settled
           within NEAR_REACH columns (a wide blob) takes the envelope, whose cost does not
           grow with the distance. */
        for (int x = 0; x < w; x++) g[x] = f[x] < 0 ? UNSEEN : f[x];
        int settled = 1;
        for (int x = 0; x < w && settled; x++) {
            int32_t best = g[x];
            int d = 1;
            for (; d <= NEAR_REACH && d * d < best; d++) {
                int32_t side = g[x - d] < g[x + d] ? g[x - d] : g[x + d];
                best = d * d + side < best ? d * d + side : best;
            }
            settled = d * d >= best;
            row[x] = best;
        }
        if (settled) continue;
        int k = -1;
        for (int q = 0; q < w; q++) {
            if (f[q] < 0) continue;
            int64_t num = 0, den = 0; /* den 0: from minus infinity */
            while (k >= 0) {
                int p = v[k];
                num = ((int64_t)f[q] + (int64_t)q * q) - ((int64_t)f[p] + (int64_t)p * p);
                den = 2 * (int64_t)(q - p);
                if (zd[k] == 0 || num * zd[k] > zn[k] * den) break;
                k--;
                num = 0, den = 0;
            }
            v[++k] = q;
            zn[k] = num, zd[k] = den;
        }
        int j = 0;
        for (int x = 0; x < w; x++) {
            while (j < k && zn[j + 1] < (int64_t)x * zd[j + 1]) j++;
            int32_t dx = x - v[j];
            row[x] = dx * dx + f[v[j]];
        }
    }
    free(v), free(f), free(zn), free(zd), free(padded);
    return DONE;
}

/* Distances as SciPy's distance_transform_edt gives them: square roots of exact integers. */
static int edt(const uint8_t *m, int h, int w, double *out) {
    size_t n = (size_t)h * w;
    int32_t *squared = malloc(sizeof(int32_t) * n);
    if (!squared) return NOMEM;
    int status = edt_squared(m, h, w, 0, squared);
    if (status == DONE)
        for (size_t i = 0; i < n; i++) out[i] = sqrt((double)squared[i]);
    free(squared);
    return status;
}

/* preprocess.stroke_width: twice the median depth of the strokes' centre lines, minus 1. */
static int stroke_width(const uint8_t *m, int h, int w, double *width) {
    Box b;
    if (!mask_bbox(m, h, w, &b)) {
        *width = 0.0;
        return DONE;
    }
    int y0 = b.y0 > 0 ? b.y0 - 1 : 0, x0 = b.x0 > 0 ? b.x0 - 1 : 0;
    int y1 = b.y1 + 1 < h ? b.y1 + 1 : h, x1 = b.x1 + 1 < w ? b.x1 + 1 : w;
    int ch = y1 - y0, cw = x1 - x0;
    if (ch < 3 || cw < 3) return DECLINE;
    size_t n = (size_t)ch * cw;
    uint8_t *crop = malloc(n);
    int32_t *depth = malloc(sizeof(int32_t) * n * 4); /* depth, peak, tmp + 1: ridge */
    if (!crop || !depth) {
        free(crop), free(depth);
        return NOMEM;
    }
    for (int y = 0; y < ch; y++) memcpy(crop + (size_t)y * cw, m + (size_t)(y + y0) * w + x0, cw);
    int32_t *peak = depth + n, *tmp = depth + 2 * n;
    /* Squared depths: a square root keeps their order, so the ridge is found on integers
       and only its depths are rooted. */
    int status = edt_squared(crop, ch, cw, 0, depth);
    if (status != DONE) {
        free(crop), free(depth);
        return status;
    }
    maxf_i32(depth, peak, tmp, ch, cw, 3);
    double *ridge = (double *)(depth + 2 * n); /* tmp and the room after it: n doubles */
    size_t count = 0;
    for (size_t i = 0; i < n; i++)
        if (crop[i] && depth[i] >= peak[i]) ridge[count++] = sqrt((double)depth[i]);
    *width = count ? 2.0 * median_d(ridge, count) - 1.0 : 0.0;
    free(crop), free(depth);
    return DONE;
}

/* --- connected strokes: ndimage.label with 8-connectivity, then preprocess._drop_specks -- */

/* The root of run r's component, halving the path on the way. */
static int32_t run_root(int32_t *parent, int32_t r) {
    while (parent[r] != r) {
        parent[r] = parent[parent[r]];
        r = parent[r];
    }
    return r;
}

/* The components are found from the ink's runs along the rows (a stroke crosses a row in
   one or two), joined where runs of neighbouring rows touch, diagonals included: the same
   components as labelling pixel by pixel, at a fraction of the work. */
static int drop_specks(uint8_t *mask, int h, int w) {
    Box b;
    if (!mask_bbox(mask, h, w, &b)) return DONE;
    int bh = b.y1 - b.y0, bw = b.x1 - b.x0;
    size_t most = (size_t)bh * (size_t)((bw + 1) / 2); /* runs: at most every other pixel */
    int32_t *x0 = malloc(sizeof(int32_t) * most * 3), *first = malloc(sizeof(int32_t) * (bh + 1));
    size_t *areas = malloc(sizeof(size_t) * most);
    if (!x0 || !first || !areas) {
        free(x0), free(first), free(areas);
        return NOMEM;
    }
    int32_t *x1 = x0 + most, *parent = x0 + 2 * most; /* a run: [x0, x1) of its row */
    int32_t runs = 0;
    for (int y = 0; y < bh; y++) {
        const uint8_t *row = mask + (size_t)(y + b.y0) * w + b.x0;
        first[y] = runs;
        for (int x = 0; x < bw;) {
            while (x < bw && !row[x]) x++;
            if (x == bw) break;
            int from = x;
            while (x < bw && row[x]) x++;
            x0[runs] = from, x1[runs] = x, parent[runs] = runs;
            runs++;
        }
        if (y == 0) continue;
        /* join with the row above: runs touch when they overlap once one is grown by a pixel */
        int32_t up = first[y - 1];
        for (int32_t r = first[y]; r < runs; r++) {
            while (up < first[y] && x1[up] < x0[r]) up++;
            for (int32_t u = up; u < first[y] && x0[u] <= x1[r]; u++) {
                int32_t a = run_root(parent, r), c = run_root(parent, u);
                if (a != c) parent[a > c ? a : c] = a < c ? a : c;
            }
        }
    }
    first[bh] = runs;
    int32_t count = 0;
    size_t total = 0;
    for (int32_t r = 0; r < runs; r++) areas[r] = 0;
    for (int32_t r = 0; r < runs; r++) {
        int32_t root = run_root(parent, r);
        count += root == r;
        areas[root] += (size_t)(x1[r] - x0[r]);
        total += (size_t)(x1[r] - x0[r]);
    }
    if (count == 1) { /* one stroke (most drawings): kept whole unless a single pixel */
        if (total < 2) memset(mask, 0, (size_t)h * w);
    } else {
        size_t largest = 0;
        for (int32_t r = 0; r < runs; r++) largest = areas[r] > largest ? areas[r] : largest;
        double need = SPECK_FRACTION * (double)largest;
        if (need < 2.0) need = 2.0;
        for (int y = 0; y < bh; y++) {
            uint8_t *row = mask + (size_t)(y + b.y0) * w + b.x0;
            for (int32_t r = first[y]; r < first[y + 1]; r++)
                if ((double)areas[run_root(parent, r)] < need)
                    memset(row + x0[r], 0, (size_t)(x1[r] - x0[r]));
        }
    }
    free(x0), free(first), free(areas);
    return DONE;
}

/* --- Pillow's resampling of a float ("F") image: BOX to shrink, BICUBIC to enlarge ------- */

static double box_filter(double x) { return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0; }

static double bicubic_filter(double x) {
#define a -0.5
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
#undef a
}

static int coefficients(int in_size, int out_size, int bicubic, int **boundsp, double **kkp) {
    double (*filter)(double) = bicubic ? bicubic_filter : box_filter;
    float in0 = 0.0f, in1 = (float)in_size;
    double scale = (double)(in1 - in0) / out_size, filterscale = scale;
    if (filterscale < 1.0) filterscale = 1.0;
    double support = (bicubic ? 2.0 : 0.5) * filterscale;
    int ksize = (int)ceil(support) * 2 + 1;
    double *kk = malloc(sizeof(double) * (size_t)out_size * ksize);
    int *bounds = malloc(sizeof(int) * (size_t)out_size * 2);
    if (!kk || !bounds) {
        free(kk), free(bounds);
        return 0;
    }
    for (int xx = 0; xx < out_size; xx++) {
        double center = in0 + (xx + 0.5) * scale;
        double ww = 0.0, ss = 1.0 / filterscale;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        double *k = &kk[(size_t)xx * ksize];
        int x;
        for (x = 0; x < xmax; x++) {
            double wt = filter((x + xmin - center + 0.5) * ss);
            k[x] = wt;
            ww += wt;
        }
        for (x = 0; x < xmax; x++)
            if (ww != 0.0) k[x] /= ww;
        for (; x < ksize; x++) k[x] = 0;
        bounds[xx * 2] = xmin;
        bounds[xx * 2 + 1] = xmax;
    }
    *boundsp = bounds;
    *kkp = kk;
    return ksize;
}

/* preprocess.resize: src [h, w] -> dst [oh, ow] (Image.resize of an "F" image, then the
   bicubic overshoot clipped to the input's range). */
static int resize(const float *src, int h, int w, size_t stride, float *dst, int oh, int ow) {
    if (oh == h && ow == w) {
        for (int y = 0; y < h; y++) memcpy(dst + (size_t)y * w, src + y * stride, sizeof(float) * w);
        return DONE;
    }
    int bicubic = !((int64_t)oh * ow < (int64_t)h * w);
    int *bv = NULL, *bh = NULL;
    double *kv = NULL, *kh = NULL;
    int kvs = coefficients(h, oh, bicubic, &bv, &kv);
    if (!kvs) return NOMEM;
    int first = bv[0], last = bv[(oh - 1) * 2] + bv[(oh - 1) * 2 + 1];
    const float *in = src;
    size_t in_w = stride;
    float *temp = NULL;
    if (ow != w) { /* horizontal pass over the rows the vertical pass will use */
        int khs = coefficients(w, ow, bicubic, &bh, &kh);
        if (!khs) {
            free(bv), free(kv);
            return NOMEM;
        }
        for (int i = 0; i < oh; i++) bv[i * 2] -= first;
        int rows = last - first;
        temp = malloc(sizeof(float) * (size_t)rows * ow);
        if (!temp) {
            free(bv), free(kv), free(bh), free(kh);
            return NOMEM;
        }
        for (int yy = 0; yy < rows; yy++)
            for (int xx = 0; xx < ow; xx++) {
                int xmin = bh[xx * 2], xmax = bh[xx * 2 + 1];
                const double *k = &kh[(size_t)xx * khs];
                double ss = 0.0;
                for (int x = 0; x < xmax; x++) ss += src[(size_t)(yy + first) * stride + x + xmin] * k[x];
                temp[(size_t)yy * ow + xx] = (float)ss;
            }
        free(bh), free(kh);
        in = temp;
        in_w = ow;
    }
    if (oh != h) {
        /* A row of sums at a time, the input rows added in the same order for every column
           as Pillow adds them for one: the same doubles, in loops the compiler vectorises. */
        double *ss = malloc(sizeof(double) * ow);
        if (!ss) {
            free(temp), free(bv), free(kv);
            return NOMEM;
        }
        for (int yy = 0; yy < oh; yy++) {
            int ymin = bv[yy * 2], ymax = bv[yy * 2 + 1];
            const double *k = &kv[(size_t)yy * kvs];
            for (int xx = 0; xx < ow; xx++) ss[xx] = 0.0;
            for (int y = 0; y < ymax; y++) {
                const float *row = in + (size_t)(y + ymin) * in_w;
                double ky = k[y];
                for (int xx = 0; xx < ow; xx++) ss[xx] += row[xx] * ky;
            }
            for (int xx = 0; xx < ow; xx++) dst[(size_t)yy * ow + xx] = (float)ss[xx];
        }
        free(ss);
    } else {
        for (int y = 0; y < oh; y++) memcpy(dst + (size_t)y * ow, in + y * in_w, sizeof(float) * ow);
    }
    free(temp), free(bv), free(kv);
    if (bicubic) {
        float lo = src[0], hi = src[0];
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) {
                float v = src[y * stride + x];
                lo = v < lo ? v : lo;
                hi = v > hi ? v : hi;
            }
        for (size_t i = 0; i < (size_t)oh * ow; i++)
            dst[i] = dst[i] < lo ? lo : (dst[i] > hi ? hi : dst[i]);
    }
    return DONE;
}

/* --- the pipeline ------------------------------------------------------------------------ */

/* The working copy is at most WORK_SIDE square (WORK_BOX and its margins on either side). */
#define WORK_SIDE (80 + 2 * WORK_MARGIN)

typedef struct {
    int h, w;
    float *grey, *residual, *scratch, *soft; /* h * w each */
    uint8_t *mask;                           /* h * w */
    float *work, *digit;                     /* WORK_SIDE^2 and WORK_BOX^2 */
    uint8_t *wmask;                          /* WORK_SIDE^2 */
    size_t zeros;                            /* residuals exactly 0 */
    /* 8-bit pictures: the residual of each value, how many pixels hold it, and whether
       `residual` has been filled in from them yet (float pictures: always) */
    const uint8_t *u8;
    float r_of[256];
    size_t by_value[256];
    int filled;
} Buffers;

/* The picture to_mnist reads: float32 grey levels in [0, 1] (as_grey's), or 8-bit pixels
   (a decoded PNG), which as_grey would turn into v / 255 in float32. */
typedef struct {
    const float *grey;   /* or NULL */
    const uint8_t *u8;   /* when grey is NULL */
} Picture;

/* Grey levels rounded half to even as np.round does: adding and taking away 1.5 * 2^23
   leaves a float in [0, 255] rounded to an integer in the current (nearest) mode. */
static inline uint8_t grey_level(float g) {
    const float magic = 12582912.0f;
    return (uint8_t)(int)((g * 255.0f + magic) - magic);
}

/* hist[v]: how many of the n levels are v. Four histograms: one pixel after another mostly
   lands in the same bin, and incrementing a single counter would wait on the previous
   increment each time. */
static void histogram(const uint8_t *levels, size_t n, size_t hist[256]) {
    size_t counts[4][256];
    memset(counts, 0, sizeof(counts));
    size_t i8 = n - n % 8;
    for (size_t i = 0; i < i8; i += 8) {
        /* Eight equal values (paper, mostly: a drawing is four fifths paper) in one count. */
        uint64_t word;
        memcpy(&word, levels + i, 8);
        if (word == levels[i] * UINT64_C(0x0101010101010101)) {
            counts[0][levels[i]] += 8;
            continue;
        }
        counts[0][levels[i]]++;
        counts[1][levels[i + 1]]++;
        counts[2][levels[i + 2]]++;
        counts[3][levels[i + 3]]++;
        counts[0][levels[i + 4]]++;
        counts[1][levels[i + 5]]++;
        counts[2][levels[i + 6]]++;
        counts[3][levels[i + 7]]++;
    }
    for (size_t i = i8; i < n; i++) counts[0][levels[i]]++;
    for (int v = 0; v < 256; v++) hist[v] = counts[0][v] + counts[1][v] + counts[2][v] + counts[3][v];
}

/* as_grey for float32 input: np.nan_to_num (NaN 0, infinities the largest floats), /255
   when the largest value passes 1, np.clip to [0, 1]. Drawings have none of that to do
   and are used as they are (the loop stays simple enough for the compiler to vectorise). */
static const float *clean_grey(const float *in, size_t n, float *clean) {
    float top = -FLT_MAX;
    int odd = 0;
    for (size_t i = 0; i < n; i++) {
        float v = in[i];
        odd |= !(v >= 0.0f && v <= 1.0f); /* NaN, infinite, negative or over 1 */
        top = v > top ? v : top;
    }
    if (!odd) return in;
    for (size_t i = 0; i < n; i++) {
        float v = in[i];
        v = isnan(v) ? 0.0f : v;
        clean[i] = v == INFINITY ? FLT_MAX : (v == -INFINITY ? -FLT_MAX : v);
    }
    if (top > 1.0f) /* also for +inf: nan_to_num makes it FLT_MAX, over 1 all the same */
        for (size_t i = 0; i < n; i++) clean[i] = clean[i] / 255.0f;
    for (size_t i = 0; i < n; i++)
        clean[i] = clean[i] < 0.0f ? 0.0f : (clean[i] > 1.0f ? 1.0f : clean[i]);
    return clean;
}

/* The residual of one grey level g against the paper's `level`: how far it is from the
   paper towards the ink (dark ink on light paper when `darker`, scaled by d). */
static inline float residual_of(float g, float level, int darker, float d) {
    return darker ? (level - g) / d : g - level;
}

/* One side of the picture, for preprocess._border_on_paper: grey levels (`levels`, or
   `level_of` each 8-bit pixel), the paper's lo..hi, ink's levels (below ink_below or above
   ink_above) and the longest run off the paper that may be a stroke crossing the edge. */
typedef struct {
    const uint8_t *levels, *u8, *level_of;
    int lo, hi, ink_below, ink_above;
    double longest;
} Side;

/* The side's pixels that are paper's: count pixels from start, step apart, that are on the
   paper or in a run off it that is no longer than `longest` and reaches ink somewhere. */
static size_t side_on_paper(const Side *s, size_t start, size_t step, int count) {
    size_t kept = 0;
    int run = 0, inked = 0;
    for (int k = 0; k <= count; k++) {
        int v = -1, on = 1; /* one past the end closes the last run */
        if (k < count) {
            size_t i = start + (size_t)k * step;
            v = s->levels ? s->levels[i] : s->level_of[s->u8[i]];
            on = v >= s->lo && v <= s->hi;
        }
        if (!on) {
            run++;
            inked |= v < s->ink_below || v > s->ink_above;
            continue;
        }
        if (run > 0 && inked && (double)run <= s->longest) kept += (size_t)run;
        kept += k < count;
        run = 0, inked = 0;
    }
    return kept;
}

/* as_grey, then preprocess._flat_paper_residual. 8-bit pixels take only 256 values, so
   their levels and residuals are worked out once per value and looked up: the same floats
   the float path computes from v / 255. */
static int flat_residual(Picture in, Buffers *b) {
    size_t n = (size_t)b->h * b->w;
    const float *g = NULL;
    float g_of[256];
    uint8_t level_of[256];
    uint8_t *levels = b->mask; /* borrowed; the mask is made later */
    size_t hist[256], by_value[256];
    if (in.grey) {
        g = clean_grey(in.grey, n, b->grey);
        for (size_t i = 0; i < n; i++) levels[i] = grey_level(g[i]);
        histogram(levels, n, hist);
    } else {
        histogram(in.u8, n, by_value);
        memset(hist, 0, sizeof(hist));
        for (int v = 0; v < 256; v++) {
            g_of[v] = (float)v / 255.0f;
            level_of[v] = grey_level(g_of[v]);
            hist[level_of[v]] += by_value[v];
        }
    }
    int paper = 0;
    for (int v = 1; v < 256; v++)
        if (hist[v] > hist[paper]) paper = v;
    int lo = paper - FLAT_LEVELS < 0 ? 0 : paper - FLAT_LEVELS;
    int hi = paper + FLAT_LEVELS > 255 ? 255 : paper + FLAT_LEVELS;
    size_t near = 0;
    for (int v = lo; v <= hi; v++) near += hist[v];
    if ((double)near < FLAT_SHARE * (double)n) return DECLINE;
    size_t darker = 0, lighter = 0;
    for (int v = 0; v < paper - FLAT_FAR; v++) darker += hist[v];
    for (int v = paper + FLAT_FAR + 1; v < 256; v++) lighter += hist[v];
    int dark_ink = darker > lighter;
    int h = b->h, w = b->w;
    Side side = {g ? levels : NULL, g ? NULL : in.u8, level_of, lo, hi,
                 dark_ink ? paper - FLAT_FAR : -1, dark_ink ? 256 : paper + FLAT_FAR,
                 FLAT_BORDER_RUN * (double)(h < w ? h : w)};
    size_t border = side_on_paper(&side, 0, 1, w)
                    + side_on_paper(&side, (size_t)(h - 1) * w, 1, w)
                    + side_on_paper(&side, 0, (size_t)w, h)
                    + side_on_paper(&side, (size_t)w - 1, (size_t)w, h);
    if ((double)border < FLAT_BORDER_SHARE * (double)(2 * (size_t)w + 2 * (size_t)h))
        return DECLINE;
    float level = (float)(paper / 255.0);
    float d = (float)((double)level > 0.05 ? (double)level : 0.05);
    float *r = b->residual;
    size_t zeros = 0;
    if (g) {
        if (dark_ink) {
            for (size_t i = 0; i < n; i++) r[i] = residual_of(g[i], level, 1, d);
        } else {
            for (size_t i = 0; i < n; i++) r[i] = residual_of(g[i], level, 0, d);
        }
        for (size_t i = 0; i < n; i++) zeros += r[i] == 0.0f;
        b->filled = 1;
    } else {
        for (int v = 0; v < 256; v++) {
            b->r_of[v] = residual_of(g_of[v], level, dark_ink, d);
            zeros += b->r_of[v] == 0.0f ? by_value[v] : 0;
        }
        memcpy(b->by_value, by_value, sizeof(by_value));
        b->u8 = in.u8;
        b->filled = 0; /* fill_residual, if a step needs every pixel's */
    }
    b->zeros = zeros;
    return DONE;
}

static void fill_residual(Buffers *b) {
    if (b->filled) return;
    size_t n = (size_t)b->h * b->w;
    for (size_t i = 0; i < n; i++) b->residual[i] = b->r_of[b->u8[i]];
    b->filled = 1;
}

/* Where the ink lies between paper and full strength: _threshold's statistics. */
typedef struct {
    double paper, floor_, ink;
    int sure; /* ink stands out above the coarse floor */
} InkLevels;

/* _threshold's two floors above the paper: the coarse one from the paper's spread, the finer
   one from the pixel noise too; both at least MIN_CONTRAST / 2 above the paper. */
static void ink_floors(double paper, double spread, double noise, double *coarse,
                       double *floor_) {
    *coarse = paper + (5.0 * spread > MIN_CONTRAST / 2 ? 5.0 * spread : MIN_CONTRAST / 2);
    double above = 5.0 * noise;
    if (2.0 * spread > above) above = 2.0 * spread;
    if (MIN_CONTRAST / 2 > above) above = MIN_CONTRAST / 2;
    *floor_ = paper + above;
}

/* Where np.percentile(values, 90) falls among m sorted values: after the below-th (0-based),
   gamma of the way to the next. 1 when it falls among the at_top copies of the largest
   value (solid ink), which it then is. */
static int percentile90_at(size_t m, size_t at_top, size_t *below, double *gamma) {
    double virtual_ = (double)(m - 1) * (90 / 100.0);
    *below = (size_t)floor(virtual_);
    *gamma = virtual_ - (double)*below;
    return virtual_ >= (double)(m - 1) || *below >= m - at_top;
}

/* ... and its value between the below-th value (low) and the next one up (high), in
   float32 as NumPy interpolates. */
static double percentile90_between(float low, float high, double gamma) {
    float step = high - low;
    return gamma >= 0.5 ? (double)(high - step * (float)(1 - gamma))
                        : (double)(low + step * (float)gamma);
}

/* The 90th percentile of the residuals above `above`, as np.percentile gives it, from
   those values and their counts (8-bit pictures: at most 256 of them). BLANK for fewer
   than 3 such pixels. The residuals of dark ink fall as the pixel value rises: taken from
   255 down, they arrive in ascending order and the insertion below moves nothing (taken
   the other way, it had moved up to 32,640 pairs: a tenth of a drawing's to_mnist). */
static int ink_percentile_counted(const float *value, const size_t *count, float above,
                                  double *ink) {
    float vals[256];
    size_t cnts[256];
    int k = 0, down = value[255] < value[0];
    for (int i = 0; i < 256; i++) {
        int v = down ? 255 - i : i;
        if (!count[v] || !(value[v] > above)) continue;
        int at = k++; /* insertion: ascending values */
        while (at > 0 && vals[at - 1] > value[v]) {
            vals[at] = vals[at - 1], cnts[at] = cnts[at - 1];
            at--;
        }
        vals[at] = value[v], cnts[at] = count[v];
    }
    size_t m = 0;
    for (int j = 0; j < k; j++) m += cnts[j];
    if (m < 3) return BLANK;
    size_t below;
    double gamma;
    if (percentile90_at(m, cnts[k - 1], &below, &gamma)) {
        *ink = vals[k - 1];
        return DONE;
    }
    /* low: the below-th smallest (0-based); high: the next one up */
    size_t upto = 0;
    int j = 0;
    while (upto + cnts[j] <= below) upto += cnts[j++];
    float low = vals[j], high = upto + cnts[j] > below + 1 ? low : vals[j + 1];
    *ink = percentile90_between(low, high, gamma);
    return DONE;
}

/* _threshold's statistics for an 8-bit drawing on flat paper, from counts alone: over half
   the pixels are the paper (residual exactly 0) and over half the steps between
   neighbours are flat, so the paper's level, its spread and the pixel noise are all 0.
   DECLINE when that is not so (the float statistics then run on every residual). */
static int ink_levels_u8(Buffers *b, InkLevels *k) {
    int h = b->h, w = b->w;
    size_t n = (size_t)h * w;
    if (!(b->zeros > n / 2)) return DECLINE;
    for (int v = 1; v < 256; v++) /* equal pixels then mean equal residuals, and back */
        if (b->r_of[v] == b->r_of[v - 1]) return DECLINE;
    size_t steps = (size_t)h * (w - 1), flat = 0;
    for (int y = 0; y < h; y++) {
        const uint8_t *row = b->u8 + (size_t)y * w;
        for (int x = 0; x < w - 1; x++) flat += row[x + 1] == row[x];
    }
    if (!(flat > steps / 2)) return DECLINE;
    double paper = 0.0, coarse, floor_;
    ink_floors(paper, 0.0, 0.0, &coarse, &floor_);
    float low_cut = (float)(coarse < floor_ ? coarse : floor_), coarse_cut = (float)coarse;
    size_t above_coarse = 0;
    for (int v = 0; v < 256; v++)
        if (b->r_of[v] > coarse_cut) above_coarse += b->by_value[v];
    int sure = above_coarse >= 3;
    if (sure && coarse < floor_) floor_ = coarse;
    float cut = (float)floor_;
    int status = ink_percentile_counted(b->r_of, b->by_value, cut > low_cut ? cut : low_cut,
                                        &k->ink);
    k->paper = paper, k->floor_ = floor_, k->sure = sure;
    return status;
}

/* _threshold's statistics from every pixel's residual. */
static int ink_levels(Buffers *b, InkLevels *k) {
    int h = b->h, w = b->w;
    size_t n = (size_t)h * w;
    const float *r = b->residual;
    float *s = b->scratch;

    /* Flat paper: most residuals are exactly 0, and a value held by over half the pixels
       is the median (both middle values, when n is even). */
    size_t ties = b->zeros;
    double paper = 0.0;
    if (!(ties > n / 2)) {
        memcpy(s, r, sizeof(float) * n);
        paper = median_f(s, n);
        ties = 0;
        for (size_t i = 0; i < n; i++) ties += r[i] == (float)paper;
    }
    float at = (float)paper;
    double spread = 0.0;
    if (!(ties > n / 2)) {
        for (size_t i = 0; i < n; i++) s[i] = fabsf(r[i] - at);
        spread = median_f(s, n);
    }
    spread *= 1.4826;

    size_t steps = (size_t)h * (w - 1), zeros = 0;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w - 1; x++) {
            float d = fabsf(r[(size_t)y * w + x + 1] - r[(size_t)y * w + x]);
            s[(size_t)y * (w - 1) + x] = d;
            zeros += d == 0.0f;
        }
    double noise = 0.0;
    if (!(zeros > steps / 2)) noise = 1.4826 * median_f(s, steps) / sqrt(2.0);
    double coarse, floor_;
    ink_floors(paper, spread, noise, &coarse, &floor_);
    /* Ink that stands out above the coarse floor is surely there (`sure`), and then the
       cut is the lower of the two floors; else the finer floor. One pass takes the values
       above the lower one and counts those above the coarse one. */
    float low_cut = (float)(coarse < floor_ ? coarse : floor_), coarse_cut = (float)coarse;
    size_t m = 0, above_coarse = 0;
    for (size_t i = 0; i < n; i++) {
        above_coarse += r[i] > coarse_cut;
        if (r[i] > low_cut) s[m++] = r[i];
    }
    int sure = above_coarse >= 3;
    if (sure && coarse < floor_) floor_ = coarse;
    float cut = (float)floor_;
    if (cut > low_cut) { /* not sure: keep only what passes the finer floor */
        size_t kept = 0;
        for (size_t i = 0; i < m; i++)
            if (s[i] > cut) s[kept++] = s[i];
        m = kept;
    }
    if (m < 3) return BLANK;
    double ink, gamma;
    float top = s[0];
    size_t at_top = 0, below;
    for (size_t i = 0; i < m; i++) top = s[i] > top ? s[i] : top;
    for (size_t i = 0; i < m; i++) at_top += s[i] == top;
    if (percentile90_at(m, at_top, &below, &gamma)) {
        ink = top;
    } else {
        float low = radix_select(s, m, below, (uint32_t *)b->grey), high = top;
        size_t upto = 0; /* values <= low: when more than below + 1, the next one is low too */
        for (size_t i = 0; i < m; i++) {
            upto += s[i] <= low;
            high = s[i] > low && s[i] < high ? s[i] : high;
        }
        if (upto > below + 1) high = low;
        ink = percentile90_between(low, high, gamma);
    }
    k->paper = paper, k->floor_ = floor_, k->ink = ink, k->sure = sure;
    return DONE;
}

/* How far a residual r lies from the paper p towards the ink's level (range above it),
   clipped to [0, 1]. */
static inline float ink_level(float r, float p, float range) {
    float v = (r - p) / range;
    return v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v);
}

/* preprocess._threshold: the soft ink map (b->soft, zero outside `near`) and the mask. */
static int threshold(Buffers *b, Box *box, Box *near) {
    int h = b->h, w = b->w;
    size_t n = (size_t)h * w;
    InkLevels k;
    int status = b->filled ? DECLINE : ink_levels_u8(b, &k);
    if (status == DECLINE) {
        fill_residual(b);
        status = ink_levels(b, &k);
    }
    if (status != DONE) return status;
    double paper = k.paper, floor_ = k.floor_, ink = k.ink;
    int sure = k.sure;

    if (ink - paper < (sure ? MIN_CONTRAST : SHADOWED_CONTRAST)) return BLANK;

    double half = (paper + ink) / 2;
    float thr = (float)(floor_ > half ? floor_ : half);
    uint8_t *mask = b->mask;
    if (b->filled) {
        for (size_t i = 0; i < n; i++) mask[i] = b->residual[i] > thr;
    } else {
        uint8_t inked[256];
        for (int v = 0; v < 256; v++) inked[v] = b->r_of[v] > thr;
        /* The residuals are monotonic in the pixel value, so the inked values are those
           below a cut (dark ink) or above one: one comparison per pixel, which the
           compiler vectorises, instead of a lookup. */
        int dark = 0, light = 0;
        while (dark < 256 && inked[dark]) dark++;
        while (light < 256 && inked[255 - light]) light++;
        int inked_count = 0;
        for (int v = 0; v < 256; v++) inked_count += inked[v];
        const uint8_t *u8 = b->u8;
        if (dark == inked_count) {
            for (size_t i = 0; i < n; i++) mask[i] = u8[i] < dark;
        } else if (light == inked_count) {
            for (size_t i = 0; i < n; i++) mask[i] = u8[i] > 255 - light;
        } else {
            for (size_t i = 0; i < n; i++) mask[i] = inked[u8[i]];
        }
    }
    status = drop_specks(mask, h, w);
    if (status != DONE) return status;
    if (!mask_bbox(mask, h, w, box)) return BLANK;
    int extent = box->y1 - box->y0 > box->x1 - box->x0 ? box->y1 - box->y0 : box->x1 - box->x0;
    double need = 0.02 * (double)(h > w ? h : w);
    if (!((double)extent >= (need > 3.0 ? need : 3.0))) return BLANK;
    if (!sure) { /* preprocess._stroke_like */
        if (box->y0 == 0 || box->x0 == 0 || box->y1 == h || box->x1 == w) return BLANK;
        double width;
        status = stroke_width(mask, h, w, &width);
        if (status != DONE) return status;
        size_t inked = 0;
        for (size_t i = 0; i < n; i++) inked += mask[i];
        if (!(width <= 0.25 * extent && (double)inked / (double)n <= 0.15)) return BLANK;
    }
    near->y0 = box->y0 - 2 > 0 ? box->y0 - 2 : 0;
    near->x0 = box->x0 - 2 > 0 ? box->x0 - 2 : 0;
    near->y1 = box->y1 + 2 < h ? box->y1 + 2 : h;
    near->x1 = box->x1 + 2 < w ? box->x1 + 2 : w;
    int nh = near->y1 - near->y0, nw = near->x1 - near->x0;
    if (nh < 5 || nw < 5) return DECLINE;
    size_t nn = (size_t)nh * nw;
    uint8_t *sub = malloc(nn * 3);
    if (!sub) return NOMEM;
    for (int y = 0; y < nh; y++)
        memcpy(sub + (size_t)y * nw, mask + (size_t)(y + near->y0) * w + near->x0, nw);
    maxf_u8(sub, sub + nn, sub + 2 * nn, nh, nw, 5);
    float p = (float)paper, range = (float)(ink - paper);
    float soft_of[256]; /* 8-bit pixels: each value's level worked out once */
    if (!b->filled)
        for (int v = 0; v < 256; v++) soft_of[v] = ink_level(b->r_of[v], p, range);
    for (int y = 0; y < nh; y++) {
        size_t at = (size_t)(y + near->y0) * w + near->x0;
        float *soft = b->soft + (size_t)y * nw;
        const uint8_t *grown = sub + nn + (size_t)y * nw;
        if (b->filled) {
            for (int x = 0; x < nw; x++)
                soft[x] = ink_level(b->residual[at + x], p, range) * (float)grown[x];
        } else {
            const uint8_t *u8 = b->u8 + at;
            for (int x = 0; x < nw; x++) soft[x] = soft_of[u8[x]] * (float)grown[x];
        }
    }
    free(sub);
    return DONE;
}

/* --- redrawing strokes outside MNIST's width range (preprocess._normalise_stroke) -------- */

/* Zhang & Suen's rule per neighbourhood code (neighbour i, clockwise from north, is bit i),
   for the first and the second sub-iteration: preprocess._zhang_suen_tables. */
static uint8_t thin_first[256], thin_second[256];

static void make_thin_tables(void) {
    for (int code = 0; code < 256; code++) {
        int p[8], count = 0, transitions = 0;
        for (int i = 0; i < 8; i++) count += p[i] = (code >> i) & 1;
        for (int i = 0; i < 8; i++) transitions += p[i] == 0 && p[(i + 1) % 8] == 1;
        int n = p[0], e = p[2], s = p[4], w = p[6];
        int thin = count >= 2 && count <= 6 && transitions == 1;
        thin_first[code] = thin && !(n && e && s) && !(e && s && w);
        thin_second[code] = thin && !(n && e && w) && !(n && s && w);
    }
}

/* preprocess.skeleton: Zhang-Suen thinning of the mask's box, into skel (h * w, zeroed). */
static int skeleton(const uint8_t *mask, int w, const Box *box, uint8_t *skel) {
    int bh = box->y1 - box->y0, bw = box->x1 - box->x0, pw = bw + 2;
    size_t pn = (size_t)(bh + 2) * pw;
    uint8_t *img = calloc(pn, 1), *gone = malloc(pn);
    int32_t *ink = malloc(sizeof(int32_t) * pn);
    if (!img || !gone || !ink) {
        free(img), free(gone), free(ink);
        return NOMEM;
    }
    size_t count = 0;
    for (int y = 0; y < bh; y++)
        for (int x = 0; x < bw; x++)
            if (mask[(size_t)(y + box->y0) * w + x + box->x0]) {
                size_t i = (size_t)(y + 1) * pw + x + 1;
                img[i] = 1;
                ink[count++] = (int32_t)i;
            }
    const ptrdiff_t step[8] = {-pw, -pw + 1, 1, pw + 1, pw, pw - 1, -1, -pw - 1};
    int changed = 1;
    while (changed) {
        changed = 0;
        for (int pass = 0; pass < 2; pass++) {
            const uint8_t *table = pass ? thin_second : thin_first;
            size_t removed = 0;
            for (size_t j = 0; j < count; j++) { /* decide all, then remove: in parallel */
                int32_t i = ink[j];
                int code = 0;
                for (int k = 0; k < 8; k++) code |= img[i + step[k]] << k;
                gone[j] = table[code];
                removed += gone[j];
            }
            if (!removed) continue;
            size_t kept = 0;
            for (size_t j = 0; j < count; j++) {
                if (gone[j]) img[ink[j]] = 0;
                else ink[kept++] = ink[j];
            }
            count = kept;
            changed = 1;
        }
    }
    for (int y = 0; y < bh; y++)
        for (int x = 0; x < bw; x++)
            skel[(size_t)(y + box->y0) * w + x + box->x0] = img[(size_t)(y + 1) * pw + x + 1];
    free(img), free(gone), free(ink);
    return DONE;
}

/* The strokes of `mask` (box: its ink's) redrawn along their skeleton at MNIST's typical
   width, into out (float32, h * w). */
static int redraw(const uint8_t *mask, int h, int w, const Box *box, int long_side, double width,
                  float *out) {
    double target = STROKE_TARGET * (long_side - width) / (1.0 - STROKE_TARGET);
    if (target < 2.0) target = 2.0;
    /* Only the ink's box, grown by the redrawn stroke's reach, can end up inked: further
       out the distance to the skeleton (inside the box) passes target / 2 + 0.5, and the
       eroded core lies on the ink. Both distance transforms are exact there, since the
       nearest skeleton pixel, and for a pixel of the box the nearest background (the ring
       around the box is background), lie inside it. */
    int reach = (int)ceil(target / 2.0 + 0.5) + 1;
    int y0 = box->y0 - reach > 0 ? box->y0 - reach : 0, x0 = box->x0 - reach > 0 ? box->x0 - reach : 0;
    int y1 = box->y1 + reach < h ? box->y1 + reach : h, x1 = box->x1 + reach < w ? box->x1 + reach : w;
    int rh = y1 - y0, rw = x1 - x0;
    size_t n = (size_t)rh * rw;
    uint8_t *skel = calloc((size_t)h * w, 1), *ink = malloc(n);
    int32_t *squared = malloc(sizeof(int32_t) * n * 2);
    if (!skel || !ink || !squared) {
        free(skel), free(ink), free(squared);
        return NOMEM;
    }
    /* A pixel's ink is radius - its distance to the skeleton, clipped to [0, 1]: none from
       a squared distance of `near` on (its root is past the radius). The core's is its depth
       - shrink, clipped: full from `deep` on. Only distances below those are needed, so
       the distance transforms stop there (edt_squared's limit), and roots are taken only
       of those. */
    double radius = target / 2.0 + 0.5, shrink = (width - target) / 2.0;
    int32_t near = (int32_t)ceil(radius * radius) + 1;
    int32_t deep = (int32_t)ceil((shrink + 1.0) * (shrink + 1.0)) + 1;
    int status = skeleton(mask, w, box, skel);
    if (status == DONE) {
        for (int y = 0; y < rh; y++)
            for (int x = 0; x < rw; x++) {
                size_t from = (size_t)(y + y0) * w + x + x0, to = (size_t)y * rw + x;
                ink[to] = mask[from];
                skel[to] = !skel[from]; /* in place: `to` never passes `from` */
            }
        /* squared distances to the skeleton; DECLINE: none */
        status = edt_squared(skel, rh, rw, near, squared);
    }
    if (status == DONE && width > target) {
        /* Thinning also erodes: a stubby arm shorter than it is wide has no skeleton
           branch, but its core survives erosion. */
        status = edt_squared(ink, rh, rw, deep, squared + n);
    }
    if (status == DONE) {
        memset(out, 0, sizeof(float) * (size_t)h * w);
        for (int y = 0; y < rh; y++)
            for (int x = 0; x < rw; x++) {
                size_t i = (size_t)y * rw + x;
                double v = squared[i] >= near ? 0.0 : radius - sqrt((double)squared[i]);
                v = v < 0.0 ? 0.0 : (v > 1.0 ? 1.0 : v);
                if (width > target) {
                    double core = squared[n + i] >= deep ? 1.0
                                                         : sqrt((double)squared[n + i]) - shrink;
                    core = core < 0.0 ? 0.0 : (core > 1.0 ? 1.0 : core);
                    v = core > v ? core : v;
                }
                out[(size_t)(y + y0) * w + x + x0] = (float)v;
            }
    }
    free(skel), free(ink), free(squared);
    return status;
}

/* preprocess._paste_centred, then _to_uint8 (the digit is at most 20x20). */
static void paste_centred(const float *digit, int h, int w, uint8_t *out) {
    float field[MNIST_SIDE * MNIST_SIDE] = {0};
    double weighted[MNIST_SIDE * MNIST_SIDE] = {0};
    size_t n = (size_t)h * w;
    float total = sum_f(digit, n);
    if (total > 0) {
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) weighted[y * w + x] = digit[y * w + x] * (double)y;
        double cy = sum_d(weighted, n) / (double)total;
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) weighted[y * w + x] = digit[y * w + x] * (double)x;
        double cx = sum_d(weighted, n) / (double)total;
        int top = (int)nearbyint(MNIST_SIDE / 2.0 - cy), left = (int)nearbyint(MNIST_SIDE / 2.0 - cx);
        top = top < 0 ? 0 : top;
        left = left < 0 ? 0 : left;
        top = top < MNIST_SIDE - h ? top : MNIST_SIDE - h;
        left = left < MNIST_SIDE - w ? left : MNIST_SIDE - w;
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) field[(y + top) * MNIST_SIDE + x + left] = digit[y * w + x];
    }
    for (int i = 0; i < MNIST_SIDE * MNIST_SIDE; i++) {
        float v = field[i] < 0.0f ? 0.0f : (field[i] > 1.0f ? 1.0f : field[i]);
        out[i] = (uint8_t)rintf(v * 255.0f);
    }
}

static int pipeline(Picture in, int h, int w, uint8_t *out, Box *ink_box) {
    if (h < 2 || w < 2 || h > MAX_WORK_SIDE || w > MAX_WORK_SIDE) return DECLINE;
    size_t n = (size_t)h * w;
    /* One block for every buffer: after the first call glibc keeps a block this size on
       its heap (its mmap threshold adapts), so the pages are not faulted in every time. */
    size_t floats = 4 * n + WORK_SIDE * WORK_SIDE + 80 * 80;
    char *block = malloc(sizeof(float) * floats + n + WORK_SIDE * WORK_SIDE);
    if (!block) return NOMEM;
    Buffers b;
    memset(&b, 0, sizeof(b));
    b.h = h, b.w = w;
    float *f = (float *)block;
    b.grey = f, b.residual = f + n, b.scratch = f + 2 * n, b.soft = f + 3 * n;
    b.work = f + 4 * n, b.digit = b.work + WORK_SIDE * WORK_SIDE;
    b.mask = (uint8_t *)(f + floats), b.wmask = b.mask + n;
    int status;
    if ((status = flat_residual(in, &b)) != DONE) goto done;
    Box near;
    if ((status = threshold(&b, ink_box, &near)) != DONE) goto done;

    /* _to_working: the crop (= near) at WORK_BOX px with a margin, to measure its strokes */
    int ch = near.y1 - near.y0, cw = near.x1 - near.x0;
    const float *crop = b.soft;
    double factor = (ch > cw ? ch : cw) / WORK_BOX;
    const float *src = crop;
    if (factor > 1.0) {
        int size = (int)ceil(factor);
        if ((ch < cw ? ch : cw) < size) {
            status = DECLINE;
            goto done;
        }
        maxf_f(crop, b.scratch, b.grey, ch, cw, size); /* grey and scratch are free now */
        src = b.scratch;
    }
    int sh = (int)nearbyint(ch / factor), sw = (int)nearbyint(cw / factor);
    sh = sh < 1 ? 1 : sh;
    sw = sw < 1 ? 1 : sw;
    int wh = sh + 2 * WORK_MARGIN, ww = sw + 2 * WORK_MARGIN;
    if (wh > WORK_SIDE || ww > WORK_SIDE) { /* cannot happen: the longer side is WORK_BOX */
        status = DECLINE;
        goto done;
    }
    memset(b.work, 0, sizeof(float) * (size_t)wh * ww);
    if ((status = resize(src, ch, cw, cw, b.digit, sh, sw)) != DONE) goto done;
    for (int y = 0; y < sh; y++)
        memcpy(b.work + (size_t)(y + WORK_MARGIN) * ww + WORK_MARGIN, b.digit + (size_t)y * sw,
               sizeof(float) * sw);

    /* _normalise_stroke: strokes in MNIST's width range are used as they are, others are
       redrawn at MNIST's typical width */
    for (size_t i = 0; i < (size_t)wh * ww; i++) b.wmask[i] = b.work[i] >= 0.5f;
    const float *fit = crop;
    int fit_h = ch, fit_w = cw;
    Box wb;
    if (mask_bbox(b.wmask, wh, ww, &wb)) {
        int long_side = wb.y1 - wb.y0 > wb.x1 - wb.x0 ? wb.y1 - wb.y0 : wb.x1 - wb.x0;
        double width;
        if ((status = stroke_width(b.wmask, wh, ww, &width)) != DONE) goto done;
        double ratio = width / long_side;
        if (!(STROKE_LOW <= ratio && ratio <= STROKE_HIGH)) {
            if ((status = redraw(b.wmask, wh, ww, &wb, long_side, width, b.work)) != DONE)
                goto done;
            fit = b.work, fit_h = wh, fit_w = ww;
        }
    }

    /* _fit_box: the ink's box, its longer side scaled to DIGIT_BOX px */
    uint8_t *fm = fit == crop ? b.mask : b.wmask; /* masks no longer needed, large enough */
    for (int y = 0; y < fit_h; y++)
        for (int x = 0; x < fit_w; x++) fm[y * fit_w + x] = fit[(size_t)y * fit_w + x] >= 0.5f;
    Box fb;
    if (!mask_bbox(fm, fit_h, fit_w, &fb)) {
        paste_centred(NULL, 0, 0, out);
        status = DONE;
        goto done;
    }
    int fh = fb.y1 - fb.y0, fw = fb.x1 - fb.x0;
    double scale = DIGIT_BOX / (fh > fw ? fh : fw);
    int dh = (int)nearbyint(fh * scale), dw = (int)nearbyint(fw * scale);
    dh = dh < 1 ? 1 : dh;
    dw = dw < 1 ? 1 : dw;
    float digit[MNIST_SIDE * MNIST_SIDE];
    if (dh > MNIST_SIDE || dw > MNIST_SIDE) { /* cannot happen: at most DIGIT_BOX */
        status = DECLINE;
        goto done;
    }
    const float *corner = fit + (size_t)fb.y0 * fit_w + fb.x0;
    if ((status = resize(corner, fh, fw, fit_w, digit, dh, dw)) != DONE) goto done;
    paste_centred(digit, dh, dw, out);
    status = DONE;
done:
    free(block);
    return status;
}

/* --- PNG rows (vision/png.py inflates them; this undoes the per-row filters) ----------- */

/* raw: h rows of a filter byte and w bytes (8-bit greyscale) -> out [h, w]. DECLINE on an
   unknown filter type. */
static int unfilter(const uint8_t *raw, int h, int w, uint8_t *out) {
    uint8_t *zero = calloc(w, 1); /* the row above the first one */
    if (!zero) return NOMEM;
    int status = DONE;
    for (int y = 0; y < h && status == DONE; y++) {
        const uint8_t *row = raw + (size_t)y * (w + 1) + 1;
        uint8_t *cur = out + (size_t)y * w;
        const uint8_t *up = y ? cur - w : zero;
        switch (row[-1]) {
        case 0:
            memcpy(cur, row, w);
            break;
        case 1: /* Sub */
            cur[0] = row[0];
            for (int x = 1; x < w; x++) cur[x] = (uint8_t)(row[x] + cur[x - 1]);
            break;
        case 2: /* Up */
            for (int x = 0; x < w; x++) cur[x] = (uint8_t)(row[x] + up[x]);
            break;
        case 3: /* Average */
            cur[0] = (uint8_t)(row[0] + (up[0] >> 1));
            for (int x = 1; x < w; x++) cur[x] = (uint8_t)(row[x] + ((cur[x - 1] + up[x]) >> 1));
            break;
        case 4: { /* Paeth: the neighbour nearest a + b - c, ties to a, then b */
            int a = 0, c = 0;
            for (int x = 0; x < w; x++) {
                int b = up[x];
                int pa = abs(b - c), pb = abs(a - c), pc = abs(a + b - 2 * c);
                int pred = a, least = pa;
                if (pb < least) pred = b, least = pb;
                if (pc < least) pred = c;
                a = cur[x] = (uint8_t)(row[x] + pred);
                c = b;
            }
            break;
        }
        default:
            status = DECLINE;
        }
    }
    free(zero);
    return status;
}

/* --- Python ------------------------------------------------------------------------------ */

/* A C-contiguous two-axis array whose format is one of `formats` ("f" float32, "d" float64,
   "B" uint8, "?" bool). */
static int get_array(PyObject *arg, Py_buffer *view, const char *formats, int writable) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(arg, view, flags) < 0) return -1;
    if (view->ndim == 2 && view->format && view->format[0] && strchr(formats, view->format[0]) &&
        view->format[1] == '\0' && view->shape[0] > 0 && view->shape[1] > 0 &&
        view->shape[0] < INT_MAX / 8 && view->shape[1] < INT_MAX / 8 &&
        view->shape[0] * view->shape[1] < INT_MAX)
        return 0;
    PyBuffer_Release(view);
    PyErr_Format(PyExc_TypeError, "expected a C-contiguous 2-D array of type '%s'", formats);
    return -1;
}

/* The two array arguments (an input, then an output written in place) every wrapper below
   but unfilter takes; on failure nothing is held and a Python error is set. */
static int get_in_out(PyObject *args, Py_buffer *in, const char *in_formats, Py_buffer *out,
                      const char *out_formats) {
    PyObject *in_arg, *out_arg;
    if (!PyArg_ParseTuple(args, "OO", &in_arg, &out_arg)) return -1;
    if (get_array(in_arg, in, in_formats, 0) < 0) return -1;
    if (get_array(out_arg, out, out_formats, 1) < 0) {
        PyBuffer_Release(in);
        return -1;
    }
    return 0;
}

static PyObject *py_to_mnist(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer grey, out;
    if (get_in_out(args, &grey, "fB", &out, "B") < 0) return NULL;
    int status = DECLINE;
    Box box = {0, 0, 0, 0};
    if (out.shape[0] == MNIST_SIDE && out.shape[1] == MNIST_SIDE) {
        int h = (int)grey.shape[0], w = (int)grey.shape[1];
        Picture in = {NULL, NULL};
        if (grey.format[0] == 'f')
            in.grey = (const float *)grey.buf;
        else
            in.u8 = (const uint8_t *)grey.buf;
        Py_BEGIN_ALLOW_THREADS
        status = pipeline(in, h, w, (uint8_t *)out.buf, &box);
        Py_END_ALLOW_THREADS
    } else {
        PyErr_SetString(PyExc_ValueError, "out must be uint8 [28, 28]");
    }
    PyBuffer_Release(&grey);
    PyBuffer_Release(&out);
    if (PyErr_Occurred()) return NULL;
    switch (status) {
    case DONE:
        return Py_BuildValue("(O(iiii))", Py_False, box.y0, box.x0, box.y1, box.x1);
    case BLANK:
        return Py_BuildValue("(OO)", Py_True, Py_None);
    case NOMEM:
        return PyErr_NoMemory();
    default:
        Py_RETURN_NONE;
    }
}

static PyObject *py_resize(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer src, dst;
    if (get_in_out(args, &src, "f", &dst, "f") < 0) return NULL;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = resize((const float *)src.buf, (int)src.shape[0], (int)src.shape[1],
                    (size_t)src.shape[1], (float *)dst.buf, (int)dst.shape[0], (int)dst.shape[1]);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    if (status != DONE) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *py_edt(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer mask, out;
    if (get_in_out(args, &mask, "?B", &out, "d") < 0) return NULL;
    int status = DECLINE;
    if (out.shape[0] == mask.shape[0] && out.shape[1] == mask.shape[1]) {
        Py_BEGIN_ALLOW_THREADS
        status = edt((const uint8_t *)mask.buf, (int)mask.shape[0], (int)mask.shape[1],
                     (double *)out.buf);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&mask);
    PyBuffer_Release(&out);
    if (status == NOMEM) return PyErr_NoMemory();
    return PyBool_FromLong(status == DONE);
}

static PyObject *py_unfilter(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer raw, out;
    PyObject *out_arg;
    if (!PyArg_ParseTuple(args, "y*O", &raw, &out_arg)) return NULL;
    if (get_array(out_arg, &out, "B", 1) < 0) {
        PyBuffer_Release(&raw);
        return NULL;
    }
    int h = (int)out.shape[0], w = (int)out.shape[1], status = DECLINE;
    if (raw.len == (Py_ssize_t)h * (w + 1)) {
        Py_BEGIN_ALLOW_THREADS
        status = unfilter((const uint8_t *)raw.buf, h, w, (uint8_t *)out.buf);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&raw);
    PyBuffer_Release(&out);
    if (status == NOMEM) return PyErr_NoMemory();
    return PyBool_FromLong(status == DONE);
}

static PyMethodDef methods[] = {
    {"unfilter", py_unfilter, METH_VARARGS,
     "unfilter(raw, out): PNG rows (filter byte + pixels, 8-bit grey) into uint8 out [H, W]; "
     "False for a wrong length or an unknown filter."},
    {"to_mnist", py_to_mnist, METH_VARARGS,
     "to_mnist(grey, out) for float32 grey [H, W] in [0, 1] (or uint8 pixels [H, W], read as "
     "as_grey reads them) and uint8 out [28, 28]: None when declined (run the Python code), "
     "else (blank, (y0, x0, y1, x1) of the ink or None)."},
    {"resize", py_resize, METH_VARARGS,
     "resize(src, dst): float32 src resampled into dst's shape, as preprocess.resize does."},
    {"edt", py_edt, METH_VARARGS,
     "edt(mask, out): each pixel's distance (float64) to the nearest zero of mask; False "
     "(out untouched) when mask has no zero or out's shape differs."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_flat", "preprocess.to_mnist for digits on flat paper, compiled.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__flat(void) {
    make_thin_tables();
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    PyObject *constants = Py_BuildValue(
        "{s:i,s:d,s:d,s:i,s:i,s:d,s:(dd),s:d,s:d,s:d,s:i,s:d,s:d,s:i,s:d}", "MNIST_SIDE",
        MNIST_SIDE, "DIGIT_BOX", DIGIT_BOX, "WORK_BOX", WORK_BOX, "WORK_MARGIN", WORK_MARGIN,
        "MAX_WORK_SIDE", MAX_WORK_SIDE, "STROKE_TARGET", STROKE_TARGET, "STROKE_RANGE",
        STROKE_LOW, STROKE_HIGH, "MIN_CONTRAST", MIN_CONTRAST, "SHADOWED_CONTRAST",
        SHADOWED_CONTRAST, "SPECK_FRACTION", SPECK_FRACTION, "FLAT_LEVELS", FLAT_LEVELS,
        "FLAT_SHARE", FLAT_SHARE, "FLAT_BORDER_SHARE", FLAT_BORDER_SHARE, "FLAT_FAR_LEVELS",
        FLAT_FAR, "FLAT_BORDER_RUN", FLAT_BORDER_RUN);
    if (!constants || PyModule_AddObject(m, "CONSTANTS", constants) < 0) {
        Py_XDECREF(constants);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
