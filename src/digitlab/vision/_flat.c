/* digitlab.vision._flat: `to_mnist` for a digit on flat paper, in one compiled call.

   The drawing page, a paint program or a clean scan gives a digit on perfectly even paper
   (preprocess._flat_paper_residual). For those, preprocess.to_mnist is a chain of ~100
   small NumPy, SciPy and Pillow calls whose interpreter overhead costs more than their
   arithmetic. This file does the same steps in one call and releases the GIL. It is an
   accelerator held to the Python steps by a tolerance, not bit for bit: it works on the
   picture's 8-bit grey levels (float input is rounded to them, as the flat-paper test
   already does), so every statistic of the threshold is a count over 256 levels. The
   Python steps are the reference; tests/test_flat_native.py holds the two to the same
   digit and a close 28x28 input.

   Anything off the common path (not flat paper, whose border is paper but where strokes
   cross it; a picture over MAX_WORK_SIDE or under 2 px, a filter window wider than the
   picture, a skeleton that vanishes) is declined: the caller runs the Python code. The
   rules' constants come from preprocess.py (`configure`, called when it is imported);
   until then every picture is declined.

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

#define MNIST_SIDE 28 /* the output: MNIST's format, not a rule */

/* preprocess.py's constants, as `configure` hands them over (see preprocess.py for each) */
static struct {
    int set; /* configure has run */
    int digit_box, work_box, max_work_side, flat_levels, flat_far;
    double stroke_target, stroke_low, stroke_high, min_contrast, shadowed_contrast,
        speck_fraction, flat_share, flat_border_share, flat_border_run, min_extent_px,
        min_extent_share, stroke_like_width, stroke_like_ink, min_paper;
} rules;

typedef struct {
    int y0, x0, y1, x1; /* ends exclusive */
} Box;

/* The k-th smallest (0-based) of a[0..n-1] (a quickselect; three-way partitions, as stroke
   depths repeat); reorders a so that a[i] <= a[k] for i < k. */
static int32_t select_i32(int32_t *a, size_t n, size_t k) {
    size_t lo = 0, hi = n;
    while (hi - lo > 1) {
        int32_t pivot = a[lo + (hi - lo) / 2];
        size_t lt = lo, i = lo, gt = hi;
        while (i < gt) {
            int32_t v = a[i];
            if (v < pivot) {
                a[i++] = a[lt];
                a[lt++] = v;
            } else if (v > pivot) {
                a[i] = a[--gt];
                a[gt] = v;
            } else {
                i++;
            }
        }
        if (k < lt) hi = lt;
        else if (k >= gt) lo = gt;
        else return pivot;
    }
    return a[k];
}

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
    int32_t *depth = malloc(sizeof(int32_t) * n * 3); /* depth, peak, tmp, then the ridge */
    if (!crop || !depth) {
        free(crop), free(depth);
        return NOMEM;
    }
    for (int y = 0; y < ch; y++) memcpy(crop + (size_t)y * cw, m + (size_t)(y + y0) * w + x0, cw);
    int32_t *peak = depth + n, *tmp = depth + 2 * n;
    /* Squared depths: a square root keeps their order, so the ridge and its median are
       found on integers and only the middle ones are rooted. */
    int status = edt_squared(crop, ch, cw, 0, depth);
    if (status != DONE) {
        free(crop), free(depth);
        return status;
    }
    maxf_i32(depth, peak, tmp, ch, cw, 3);
    int32_t *ridge = tmp; /* maxf_i32 is done with it */
    size_t count = 0;
    for (size_t i = 0; i < n; i++)
        if (crop[i] && depth[i] >= peak[i]) ridge[count++] = depth[i];
    *width = 0.0;
    if (count) {
        size_t mid = count / 2;
        double upper = sqrt((double)select_i32(ridge, count, mid)), median = upper;
        if (count % 2 == 0) { /* the mean of the middle two: the largest below is the other */
            int32_t lower = ridge[0];
            for (size_t i = 1; i < mid; i++) lower = ridge[i] > lower ? ridge[i] : lower;
            median = (sqrt((double)lower) + upper) / 2.0;
        }
        *width = 2.0 * median - 1.0;
    }
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
        double need = rules.speck_fraction * (double)largest;
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

/* --- resampling: area averaging (a box filter) to shrink, bicubic to enlarge ------------- */

/* The separable filters preprocess.resize gets from Pillow (BOX, and BICUBIC with
   a = -0.5), each output pixel a normalised weighted sum of the input pixels under the
   filter stretched to the scale; tests/test_flat_native.py holds the two within 1e-5. */

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

/* preprocess.resize: src [h, w] -> dst [oh, ow], the bicubic overshoot clipped to the
   input's range. */
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
        /* A row of sums at a time: loops the compiler vectorises. */
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

typedef struct {
    int h, w;
    const uint8_t *levels;  /* h * w grey levels: the 8-bit pixels, or float grey rounded */
    uint8_t *mask;          /* h * w */
    float *soft, *scratch, *tmp; /* h * w each */
    float *work, *digit;    /* work_side^2 and work_box^2 */
    uint8_t *wmask;         /* work_side^2 */
    int work_side, margin;  /* the working copy's largest side, and its margin */
    size_t count[256];      /* how many pixels hold each level */
    float r_of[256];        /* each level's residual: how far from the paper towards the ink */
    int dark_ink;           /* darker than the paper: the residual falls as the level rises */
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

/* as_grey for float32 input, rounded to levels: NaN is 0, the values are taken as 0..255
   when the largest passes 1 (infinity included), then clipped to [0, 1]. Drawings have
   none of that to do (the loop stays simple enough for the compiler to vectorise). */
static void to_levels(const float *in, size_t n, uint8_t *levels) {
    float top = -FLT_MAX;
    int odd = 0;
    for (size_t i = 0; i < n; i++) {
        float v = in[i];
        odd |= !(v >= 0.0f && v <= 1.0f); /* NaN, infinite, negative or over 1 */
        top = v > top ? v : top;
    }
    if (!odd) {
        for (size_t i = 0; i < n; i++) levels[i] = grey_level(in[i]);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        float v = isnan(in[i]) ? 0.0f : in[i];
        v = top > 1.0f ? v / 255.0f : v;
        levels[i] = grey_level(v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v));
    }
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

/* One side of the picture, for preprocess._border_on_paper: the paper's levels lo..hi,
   ink's levels (below ink_below or above ink_above) and the longest run off the paper that
   may be a stroke crossing the edge. */
typedef struct {
    const uint8_t *levels;
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
            v = s->levels[start + (size_t)k * step];
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

/* preprocess._flat_paper_residual: DECLINE unless the picture is flat paper; else each
   level's residual in r_of. */
static int flat_paper(Buffers *b) {
    int h = b->h, w = b->w;
    size_t n = (size_t)h * w, *hist = b->count;
    histogram(b->levels, n, hist);
    int paper = 0;
    for (int v = 1; v < 256; v++)
        if (hist[v] > hist[paper]) paper = v;
    int lo = paper - rules.flat_levels < 0 ? 0 : paper - rules.flat_levels;
    int hi = paper + rules.flat_levels > 255 ? 255 : paper + rules.flat_levels;
    size_t near = 0;
    for (int v = lo; v <= hi; v++) near += hist[v];
    if ((double)near < rules.flat_share * (double)n) return DECLINE;
    int far = rules.flat_far;
    size_t darker = 0, lighter = 0;
    for (int v = 0; v < paper - far; v++) darker += hist[v];
    for (int v = paper + far + 1; v < 256; v++) lighter += hist[v];
    int dark = b->dark_ink = darker > lighter;
    Side side = {b->levels, lo, hi, dark ? paper - far : -1, dark ? 256 : paper + far,
                 rules.flat_border_run * (double)(h < w ? h : w)};
    size_t border = side_on_paper(&side, 0, 1, w)
                    + side_on_paper(&side, (size_t)(h - 1) * w, 1, w)
                    + side_on_paper(&side, 0, (size_t)w, h)
                    + side_on_paper(&side, (size_t)w - 1, (size_t)w, h);
    if ((double)border < rules.flat_border_share * (double)(2 * (size_t)w + 2 * (size_t)h))
        return DECLINE;
    float level = (float)(paper / 255.0);
    float d = (float)((double)level > rules.min_paper ? (double)level : rules.min_paper);
    for (int v = 0; v < 256; v++) {
        float g = (float)v / 255.0f;
        b->r_of[v] = dark ? (level - g) / d : g - level;
    }
    return DONE;
}

/* The q-quantile (0 <= q <= 1) of k > 0 distinct values val[] in ascending order, val[i]
   held cnt[i] > 0 times: linear between neighbouring ranks, as np.percentile's default. */
static double quantile(const double *val, const size_t *cnt, int k, double q) {
    size_t m = 0;
    for (int i = 0; i < k; i++) m += cnt[i];
    double at = q * (double)(m - 1);
    size_t below = (size_t)at, seen = 0;
    int i = 0;
    while (i < k - 1 && seen + cnt[i] <= below) seen += cnt[i++];
    double low = val[i];
    double high = (seen + cnt[i] > below + 1 || i == k - 1) ? low : val[i + 1];
    return low + (high - low) * (at - (double)below);
}

/* The levels' residuals in ascending order (the dark ink's fall as the level rises), with
   their counts: those above `above` only, skipping levels no pixel holds. Returns k. */
static int ascending(const Buffers *b, double above, double *val, size_t *cnt) {
    int k = 0;
    for (int j = 0; j < 256; j++) {
        int v = b->dark_ink ? 255 - j : j;
        if (b->count[v] && b->r_of[v] > (float)above) val[k] = b->r_of[v], cnt[k++] = b->count[v];
    }
    return k;
}

/* Where the ink lies between paper and full strength: _threshold's statistics. */
typedef struct {
    double paper, floor_, ink;
    int sure; /* ink stands out above the coarse floor */
} InkLevels;

/* _threshold's statistics, from the levels' counts: the paper (median residual), its
   spread (median distance from it), the pixel noise (median step between neighbours along
   the rows), the floors above the paper they give, and the ink's level (90th percentile of
   what passes the floor). BLANK when fewer than 3 pixels pass. */
static int ink_levels(const Buffers *b, InkLevels *k) {
    double val[256], dist[256];
    size_t cnt[256], dcnt[256];
    int m = ascending(b, -HUGE_VAL, val, cnt);
    double paper = quantile(val, cnt, m, 0.5);
    /* distances from the paper, ascending: outwards from it on either side */
    int left, right, j = 0;
    for (right = 0; right < m && val[right] < paper; right++) {}
    for (left = right - 1; left >= 0 || right < m; j++) {
        int take_left = right >= m || (left >= 0 && paper - val[left] <= val[right] - paper);
        int i = take_left ? left-- : right++;
        dist[j] = fabs(val[i] - paper), dcnt[j] = cnt[i];
    }
    double spread = 1.4826 * quantile(dist, dcnt, j, 0.5);
    /* the steps: a level's residual is linear in it, so a step's is the levels' step
       times the slope; flat paper (most steps 0) needs no histogram */
    int h = b->h, w = b->w;
    size_t steps = (size_t)h * (w - 1), flat = 0;
    for (int y = 0; y < h; y++) {
        const uint8_t *row = b->levels + (size_t)y * w;
        for (int x = 0; x < w - 1; x++) flat += row[x + 1] == row[x];
    }
    double noise = 0.0;
    if (!(flat > steps / 2)) {
        size_t hist[256] = {0};
        for (int y = 0; y < h; y++) {
            const uint8_t *row = b->levels + (size_t)y * w;
            for (int x = 0; x < w - 1; x++) hist[abs(row[x + 1] - row[x])]++;
        }
        int n = 0;
        for (int v = 0; v < 256; v++)
            if (hist[v]) val[n] = v, cnt[n++] = hist[v];
        double slope = fabs((double)b->r_of[255] - (double)b->r_of[0]) / 255.0;
        noise = 1.4826 * quantile(val, cnt, n, 0.5) * slope / sqrt(2.0);
    }
    double coarse = paper + (5.0 * spread > rules.min_contrast / 2 ? 5.0 * spread
                                                                   : rules.min_contrast / 2);
    double above = 5.0 * noise;
    if (2.0 * spread > above) above = 2.0 * spread;
    if (rules.min_contrast / 2 > above) above = rules.min_contrast / 2;
    double floor_ = paper + above;
    size_t above_coarse = 0;
    for (int v = 0; v < 256; v++)
        if (b->r_of[v] > (float)coarse) above_coarse += b->count[v];
    int sure = above_coarse >= 3;
    if (sure && coarse < floor_) floor_ = coarse;
    m = ascending(b, floor_, val, cnt);
    size_t passing = 0;
    for (int i = 0; i < m; i++) passing += cnt[i];
    if (passing < 3) return BLANK;
    k->paper = paper, k->floor_ = floor_, k->ink = quantile(val, cnt, m, 0.9), k->sure = sure;
    return DONE;
}

/* How far a residual r lies from the paper p towards the ink's level (range above it),
   clipped to [0, 1]. */
static inline float ink_level(float r, float p, float range) {
    float v = (r - p) / range;
    return v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v);
}

/* preprocess._threshold: the soft ink map (b->soft, the `near` box only) and the mask. */
static int threshold(Buffers *b, Box *box, Box *near) {
    int h = b->h, w = b->w;
    size_t n = (size_t)h * w;
    InkLevels k;
    int status = ink_levels(b, &k);
    if (status != DONE) return status;
    double paper = k.paper, floor_ = k.floor_, ink = k.ink;
    int sure = k.sure;
    if (ink - paper < (sure ? rules.min_contrast : rules.shadowed_contrast)) return BLANK;

    double half = (paper + ink) / 2;
    float thr = (float)(floor_ > half ? floor_ : half);
    uint8_t *mask = b->mask, inked[256];
    for (int v = 0; v < 256; v++) inked[v] = b->r_of[v] > thr;
    /* The residuals are monotonic in the level, so the inked levels are those below a cut
       (dark ink) or above one: one comparison per pixel, which the compiler vectorises,
       instead of a lookup. */
    int dark = 0, light = 0, inked_count = 0;
    while (dark < 256 && inked[dark]) dark++;
    while (light < 256 && inked[255 - light]) light++;
    for (int v = 0; v < 256; v++) inked_count += inked[v];
    const uint8_t *levels = b->levels;
    if (dark == inked_count) {
        for (size_t i = 0; i < n; i++) mask[i] = levels[i] < dark;
    } else if (light == inked_count) {
        for (size_t i = 0; i < n; i++) mask[i] = levels[i] > 255 - light;
    } else {
        for (size_t i = 0; i < n; i++) mask[i] = inked[levels[i]];
    }
    status = drop_specks(mask, h, w);
    if (status != DONE) return status;
    if (!mask_bbox(mask, h, w, box)) return BLANK;
    int extent = box->y1 - box->y0 > box->x1 - box->x0 ? box->y1 - box->y0 : box->x1 - box->x0;
    double need = rules.min_extent_share * (double)(h > w ? h : w);
    if (!((double)extent >= (need > rules.min_extent_px ? need : rules.min_extent_px)))
        return BLANK;
    if (!sure) { /* preprocess._stroke_like */
        if (box->y0 == 0 || box->x0 == 0 || box->y1 == h || box->x1 == w) return BLANK;
        double width;
        status = stroke_width(mask, h, w, &width);
        if (status != DONE) return status;
        size_t count = 0;
        for (size_t i = 0; i < n; i++) count += mask[i];
        if (!(width <= rules.stroke_like_width * extent
              && (double)count / (double)n <= rules.stroke_like_ink))
            return BLANK;
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
    float p = (float)paper, range = (float)(ink - paper), soft_of[256];
    for (int v = 0; v < 256; v++) soft_of[v] = ink_level(b->r_of[v], p, range);
    for (int y = 0; y < nh; y++) {
        const uint8_t *row = levels + (size_t)(y + near->y0) * w + near->x0;
        const uint8_t *grown = sub + nn + (size_t)y * nw;
        float *soft = b->soft + (size_t)y * nw;
        for (int x = 0; x < nw; x++) soft[x] = soft_of[row[x]] * (float)grown[x];
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
    double target = rules.stroke_target * (long_side - width) / (1.0 - rules.stroke_target);
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
/* preprocess._paste_centred, then _to_uint8 (the digit is at most 28x28). */
static void paste_centred(const float *digit, int h, int w, uint8_t *out) {
    float field[MNIST_SIDE * MNIST_SIDE] = {0};
    double total = 0.0, sy = 0.0, sx = 0.0;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            double v = digit[y * w + x];
            total += v, sy += v * y, sx += v * x;
        }
    if (total > 0) {
        int top = (int)nearbyint(MNIST_SIDE / 2.0 - sy / total);
        int left = (int)nearbyint(MNIST_SIDE / 2.0 - sx / total);
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
    if (!rules.set || h < 2 || w < 2 || h > rules.max_work_side || w > rules.max_work_side)
        return DECLINE;
    size_t n = (size_t)h * w;
    Buffers b;
    memset(&b, 0, sizeof(b));
    b.h = h, b.w = w;
    b.margin = rules.work_box / 4;
    b.work_side = rules.work_box + 2 * b.margin;
    size_t work = (size_t)b.work_side * b.work_side;
    /* One block for every buffer: after the first call glibc keeps a block this size on
       its heap (its mmap threshold adapts), so the pages are not faulted in every time. */
    size_t floats = 3 * n + work + (size_t)rules.work_box * rules.work_box;
    char *block = malloc(sizeof(float) * floats + 2 * n + work);
    if (!block) return NOMEM;
    float *f = (float *)block;
    b.soft = f, b.scratch = f + n, b.tmp = f + 2 * n;
    b.work = f + 3 * n, b.digit = b.work + work;
    b.mask = (uint8_t *)(f + floats), b.wmask = b.mask + n;
    uint8_t *levels = b.wmask + work;
    if (in.grey) to_levels(in.grey, n, levels);
    b.levels = in.grey ? levels : in.u8;
    int status;
    if ((status = flat_paper(&b)) != DONE) goto done;
    Box near;
    if ((status = threshold(&b, ink_box, &near)) != DONE) goto done;

    /* _to_working: the crop (= near) at work_box px with a margin, to measure its strokes */
    int ch = near.y1 - near.y0, cw = near.x1 - near.x0;
    const float *crop = b.soft;
    double factor = (ch > cw ? ch : cw) / (double)rules.work_box;
    const float *src = crop;
    if (factor > 1.0) {
        int size = (int)ceil(factor);
        if ((ch < cw ? ch : cw) < size) {
            status = DECLINE;
            goto done;
        }
        maxf_f(crop, b.scratch, b.tmp, ch, cw, size);
        src = b.scratch;
    }
    int sh = (int)nearbyint(ch / factor), sw = (int)nearbyint(cw / factor);
    sh = sh < 1 ? 1 : sh;
    sw = sw < 1 ? 1 : sw;
    int margin = b.margin, wh = sh + 2 * margin, ww = sw + 2 * margin;
    if (wh > b.work_side || ww > b.work_side) { /* cannot happen: the longer side is work_box */
        status = DECLINE;
        goto done;
    }
    memset(b.work, 0, sizeof(float) * (size_t)wh * ww);
    if ((status = resize(src, ch, cw, cw, b.digit, sh, sw)) != DONE) goto done;
    for (int y = 0; y < sh; y++)
        memcpy(b.work + (size_t)(y + margin) * ww + margin, b.digit + (size_t)y * sw,
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
        if (!(rules.stroke_low <= ratio && ratio <= rules.stroke_high)) {
            if ((status = redraw(b.wmask, wh, ww, &wb, long_side, width, b.work)) != DONE)
                goto done;
            fit = b.work, fit_h = wh, fit_w = ww;
        }
    }

    /* _fit_box: the ink's box, its longer side scaled to digit_box px */
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
    double scale = rules.digit_box / (double)(fh > fw ? fh : fw);
    int dh = (int)nearbyint(fh * scale), dw = (int)nearbyint(fw * scale);
    dh = dh < 1 ? 1 : dh;
    dw = dw < 1 ? 1 : dw;
    float digit[MNIST_SIDE * MNIST_SIDE];
    if (dh > MNIST_SIDE || dw > MNIST_SIDE) { /* cannot happen: configure keeps it in */
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

static PyObject *py_configure(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *names[] = {"digit_box", "work_box", "max_work_side", "flat_levels",
                            "flat_far_levels", "stroke_target", "stroke_low", "stroke_high",
                            "min_contrast", "shadowed_contrast", "speck_fraction",
                            "flat_share", "flat_border_share", "flat_border_run",
                            "min_extent_px", "min_extent_share", "stroke_like_width",
                            "stroke_like_ink", "min_paper", NULL};
    int digit_box, work_box, max_work_side, flat_levels, flat_far;
    double d[14];
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iiiiidddddddddddddd", names, &digit_box,
                                     &work_box, &max_work_side, &flat_levels, &flat_far, &d[0],
                                     &d[1], &d[2], &d[3], &d[4], &d[5], &d[6], &d[7], &d[8],
                                     &d[9], &d[10], &d[11], &d[12], &d[13]))
        return NULL;
    int finite = 1;
    for (int i = 0; i < 14; i++) finite &= isfinite(d[i]) != 0;
    /* The buffers are sized from these: the digit fits the 28x28 field, the working copy
       and the picture stay within what the distance transform takes. */
    if (!finite || digit_box < 1 || digit_box > MNIST_SIDE || work_box < 4 || work_box > 1000 ||
        max_work_side < 2 || max_work_side > 8000 || flat_levels < 0 || flat_levels > 255 ||
        flat_far < 0 || flat_far > 255) {
        PyErr_SetString(PyExc_ValueError, "configure: a constant out of the compiled path's range");
        return NULL;
    }
    rules.digit_box = digit_box, rules.work_box = work_box, rules.max_work_side = max_work_side;
    rules.flat_levels = flat_levels, rules.flat_far = flat_far;
    rules.stroke_target = d[0], rules.stroke_low = d[1], rules.stroke_high = d[2];
    rules.min_contrast = d[3], rules.shadowed_contrast = d[4], rules.speck_fraction = d[5];
    rules.flat_share = d[6], rules.flat_border_share = d[7], rules.flat_border_run = d[8];
    rules.min_extent_px = d[9], rules.min_extent_share = d[10];
    rules.stroke_like_width = d[11], rules.stroke_like_ink = d[12], rules.min_paper = d[13];
    rules.set = 1;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"configure", (PyCFunction)(void (*)(void))py_configure, METH_VARARGS | METH_KEYWORDS,
     "configure(**constants): the rules' constants, from preprocess.py; to_mnist declines "
     "every picture until they are set."},
    {"unfilter", py_unfilter, METH_VARARGS,
     "unfilter(raw, out): PNG rows (filter byte + pixels, 8-bit grey) into uint8 out [H, W]; "
     "False for a wrong length or an unknown filter."},
    {"to_mnist", py_to_mnist, METH_VARARGS,
     "to_mnist(grey, out) for float32 grey [H, W] in [0, 1] (or uint8 pixels [H, W], read as "
     "as_grey reads them) and uint8 out [28, 28]: None when declined (run the Python code), "
     "else (blank, (y0, x0, y1, x1) of the ink or None)."},
    {"resize", py_resize, METH_VARARGS,
     "resize(src, dst): float32 src resampled into dst's shape as to_mnist resamples (area "
     "averaging to shrink, bicubic to enlarge); for the tests."},
    {"edt", py_edt, METH_VARARGS,
     "edt(mask, out): each pixel's distance (float64) to the nearest zero of mask; False "
     "(out untouched) when mask has no zero or out's shape differs; for the tests."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_flat", "preprocess.to_mnist for digits on flat paper, compiled.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__flat(void) {
    make_thin_tables();
    return PyModule_Create(&module);
}

