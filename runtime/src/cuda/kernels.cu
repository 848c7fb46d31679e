// The reference model's kernels other than matrix products (those are cuBLAS), compiled at run
// time by NVRTC for the device's own architecture. Each follows the CPU reference
// (runtime/src/reference/) in what it computes and in where it accumulates in double, so the
// two backends differ only by the order of float roundings. Row kernels take one block of
// BLOCK threads per row; reductions over a block run in a fixed tree order, and sums over rows
// run one thread per column in row order, so every result is deterministic.

#define BLOCK 256
#define NEG_INF __int_as_float(0xff800000)

__device__ double block_sum(double v, double* sh) {
    int t = threadIdx.x;
    sh[t] = v;
    __syncthreads();
    for (int s = BLOCK / 2; s > 0; s >>= 1) {
        if (t < s) sh[t] += sh[t + s];
        __syncthreads();
    }
    double r = sh[0];
    __syncthreads();
    return r;
}

__device__ float block_max(float v, float* sh) {
    int t = threadIdx.x;
    sh[t] = v;
    __syncthreads();
    for (int s = BLOCK / 2; s > 0; s >>= 1) {
        if (t < s) sh[t] = fmaxf(sh[t], sh[t + s]);
        __syncthreads();
    }
    float r = sh[0];
    __syncthreads();
    return r;
}

#define GELU_C 0.7978845608028654
#define GELU_A 0.044715

// y[i] = x[i] + y[i]
extern "C" __global__ void add_into(float* y, const float* x, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = y[i] + x[i];
}

// y[r, c] += b[c]
extern "C" __global__ void add_bias(float* y, const float* b, int rows, int cols) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (long long)rows * cols) y[i] = y[i] + b[i % cols];
}

// out[c] (+)= sum over rows of a[r, c] (times b[r, c] when b is given), in double, rows in
// order; with accumulate, the float sum is added to out as the CPU's gradient accumulation does.
extern "C" __global__ void col_sum(const float* a, const float* b, float* out, int rows,
                                   int cols, int accumulate) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    double acc = 0.0;
    for (int r = 0; r < rows; ++r) {
        double v = (double)a[(long long)r * cols + c];
        if (b) v *= (double)b[(long long)r * cols + c];
        acc += v;
    }
    out[c] = accumulate ? out[c] + (float)acc : (float)acc;
}

extern "C" __global__ void layer_norm_fwd(const float* x, const float* w, const float* b,
                                          float* y, float* xhat, double* rstd, int rows,
                                          int cols, double eps) {
    __shared__ double sh[BLOCK];
    int r = blockIdx.x;
    if (r >= rows) return;
    const float* xr = x + (long long)r * cols;
    double s = 0.0;
    for (int j = threadIdx.x; j < cols; j += BLOCK) s += (double)xr[j];
    double mean = block_sum(s, sh) / cols;
    double v = 0.0;
    for (int j = threadIdx.x; j < cols; j += BLOCK) {
        double d = (double)xr[j] - mean;
        v += d * d;
    }
    double var = block_sum(v, sh) / cols;
    double rs = 1.0 / sqrt(var + eps);
    for (int j = threadIdx.x; j < cols; j += BLOCK) {
        double h = ((double)xr[j] - mean) * rs;
        y[(long long)r * cols + j] = (float)(h * (double)w[j] + (double)b[j]);
        xhat[(long long)r * cols + j] = (float)h;
    }
    if (threadIdx.x == 0) rstd[r] = rs;
}

// dx = rstd * (d - mean(d) - xhat * mean(d * xhat)), d = dy * w; the weight's and bias's
// gradients are col_sum(dy, xhat) and col_sum(dy).
extern "C" __global__ void layer_norm_bwd(const float* dy, const float* xhat, const double* rstd,
                                          const float* w, float* dx, int rows, int cols) {
    __shared__ double sh[BLOCK];
    int r = blockIdx.x;
    if (r >= rows) return;
    const float* g = dy + (long long)r * cols;
    const float* h = xhat + (long long)r * cols;
    double md = 0.0, mdh = 0.0;
    for (int j = threadIdx.x; j < cols; j += BLOCK) {
        double d = (double)g[j] * (double)w[j];
        md += d;
        mdh += d * (double)h[j];
    }
    md = block_sum(md, sh) / cols;
    mdh = block_sum(mdh, sh) / cols;
    for (int j = threadIdx.x; j < cols; j += BLOCK) {
        double d = (double)g[j] * (double)w[j];
        dx[(long long)r * cols + j] = (float)(rstd[r] * (d - md - (double)h[j] * mdh));
    }
}

extern "C" __global__ void gelu_fwd(const float* x, float* y, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    double v = (double)x[i];
    double t = tanh(GELU_C * (v + GELU_A * v * v * v));
    y[i] = (float)(0.5 * v * (1.0 + t));
}

extern "C" __global__ void gelu_bwd(const float* x, const float* dy, float* dx, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    double v = (double)x[i];
    double t = tanh(GELU_C * (v + GELU_A * v * v * v));
    double g = 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * GELU_A * v * v);
    dx[i] = (float)((double)dy[i] * g);
}

// RMSNorm as reference/rmsnorm.rs: y = x * rstd * w, xhat = x * rstd, rstd = 1 / sqrt(mean(x^2)
// + eps), one block per row.
extern "C" __global__ void rms_norm_fwd(const float* x, const float* w, float* y, float* xhat,
                                        double* rstd, int rows, int cols, double eps) {
    __shared__ double sh[BLOCK];
    int r = blockIdx.x;
    if (r >= rows) return;
    const float* xr = x + (long long)r * cols;
    double s = 0.0;
    for (int j = threadIdx.x; j < cols; j += BLOCK) s += (double)xr[j] * (double)xr[j];
    double ms = block_sum(s, sh) / cols;
    double rs = 1.0 / sqrt(ms + eps);
    for (int j = threadIdx.x; j < cols; j += BLOCK) {
        double v = (double)xr[j];
        y[(long long)r * cols + j] = (float)(v * rs * (double)w[j]);
        xhat[(long long)r * cols + j] = (float)(v * rs);
    }
    if (threadIdx.x == 0) rstd[r] = rs;
}

// dx = rstd * (d - xhat * mean(d * xhat)), d = dy * w; the weight's gradient is
// col_sum(dy, xhat).
extern "C" __global__ void rms_norm_bwd(const float* dy, const float* xhat, const double* rstd,
                                        const float* w, float* dx, int rows, int cols) {
    __shared__ double sh[BLOCK];
    int r = blockIdx.x;
    if (r >= rows) return;
    const float* g = dy + (long long)r * cols;
    const float* h = xhat + (long long)r * cols;
    double mdh = 0.0;
    for (int j = threadIdx.x; j < cols; j += BLOCK) {
        mdh += (double)g[j] * (double)w[j] * (double)h[j];
    }
    mdh = block_sum(mdh, sh) / cols;
    for (int j = threadIdx.x; j < cols; j += BLOCK) {
        double d = (double)g[j] * (double)w[j];
        dx[(long long)r * cols + j] = (float)(rstd[r] * (d - (double)h[j] * mdh));
    }
}

// The activations of reference/act.rs, by code: 0 exact GELU, 1 tanh GELU, 2 quick GELU, 3 SiLU.
#define ACT_GELU 0
#define ACT_GELU_TANH 1
#define ACT_QUICK_GELU 2
#define ACT_SILU 3
#define FRAC_1_SQRT_2 0.7071067811865476
#define FRAC_1_SQRT_2PI 0.3989422804014327
#define FRAC_2_SQRT_PI 1.1283791670955126
#define PI_F64 3.141592653589793

// The error function as reference/act.rs computes it (its Taylor series near 0, its continued
// fraction beyond), so both backends round the same f64 value.
__device__ double act_erf(double x) {
    double a = fabs(x);
    double r;
    if (a < 2.5) {
        double term = a, sum = a, x2 = a * a;
        for (int n = 1; n < 80; ++n) {
            term *= -x2 / (double)n;
            double add = term / (double)(2 * n + 1);
            sum += add;
            if (fabs(add) < 1e-17 * fabs(sum)) break;
        }
        r = sum * FRAC_2_SQRT_PI;
    } else {
        double f = a;
        for (int k = 59; k >= 1; --k) f = a + ((double)k / 2.0) / f;
        r = 1.0 - exp(-a * a) / (sqrt(PI_F64) * f);
    }
    return copysign(r, x);
}

__device__ double act_sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

// act(x) into *v and act'(x) into *s.
__device__ void act_value_slope(int act, double x, double* v, double* s) {
    if (act == ACT_GELU) {
        double cdf = 0.5 * (1.0 + act_erf(x * FRAC_1_SQRT_2));
        double pdf = FRAC_1_SQRT_2PI * exp(-0.5 * x * x);
        *v = x * cdf;
        *s = cdf + x * pdf;
    } else if (act == ACT_GELU_TANH) {
        double t = tanh(GELU_C * (x + GELU_A * x * x * x));
        *v = 0.5 * x * (1.0 + t);
        *s = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * GELU_A * x * x);
    } else if (act == ACT_QUICK_GELU) {
        double g = act_sigmoid(1.702 * x);
        *v = x * g;
        *s = g + 1.702 * x * g * (1.0 - g);
    } else {
        double g = act_sigmoid(x);
        *v = x * g;
        *s = g + x * g * (1.0 - g);
    }
}

// y = act(x)
extern "C" __global__ void act_fwd(const float* x, float* y, long long n, int act) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    double v, s;
    act_value_slope(act, (double)x[i], &v, &s);
    y[i] = (float)v;
}

// dx = dy * act'(x)
extern "C" __global__ void act_bwd(const float* x, const float* dy, float* dx, long long n,
                                   int act) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    double v, s;
    act_value_slope(act, (double)x[i], &v, &s);
    dx[i] = (float)((double)dy[i] * s);
}

// y = act(gate) * up (the gated FFN's product)
extern "C" __global__ void gated_fwd(const float* gate, const float* up, float* y, long long n,
                                     int act) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    double v, s;
    act_value_slope(act, (double)gate[i], &v, &s);
    y[i] = (float)(v * (double)up[i]);
}

// dgate = dy * up * act'(gate), dup = dy * act(gate)
extern "C" __global__ void gated_bwd(const float* gate, const float* up, const float* dy,
                                     float* dgate, float* dup, long long n, int act) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    double v, s;
    act_value_slope(act, (double)gate[i], &v, &s);
    double d = (double)dy[i];
    dgate[i] = (float)(d * (double)up[i] * s);
    dup[i] = (float)(d * v);
}

// Rotary positions (rotate-half) as reference/rope.rs, one thread per column pair: in each head
// of head_dim columns, (x1, x2) = (column i, column half + i) of row k turn by the angle
// positions[k] * inv_freq[i] (double), backwards when inverse.
extern "C" __global__ void rope(const float* x, float* y, const int* positions,
                                const double* inv_freq, int rows, int cols, int head_dim,
                                int inverse) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    int half = head_dim / 2, pairs = cols / 2;
    if (i >= (long long)rows * pairs) return;
    int k = (int)(i / pairs), p = (int)(i % pairs);
    int h = p / half, f = p % half;
    double angle = (double)positions[k] * inv_freq[f];
    double c = cos(angle), s = (inverse ? -1.0 : 1.0) * sin(angle);
    long long base = (long long)k * cols + (long long)h * head_dim;
    double a = (double)x[base + f], b = (double)x[base + half + f];
    y[base + f] = (float)(a * c - b * s);
    y[base + half + f] = (float)(b * c + a * s);
}

// out [rows, cols * groups]: each head_dim-column block of x repeated groups times in place
// (grouped-query attention's key/value heads).
extern "C" __global__ void repeat_heads(const float* x, float* out, int rows, int cols,
                                        int head_dim, int groups) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long wide = (long long)cols * groups;
    if (i >= (long long)rows * wide) return;
    long long r = i / wide;
    int c = (int)(i % wide);
    int block = c / head_dim, col = c % head_dim;
    out[i] = x[r * cols + (long long)(block / groups) * head_dim + col];
}

// The backward of repeat_heads: out [rows, cols] (cols the narrow width), each group of groups
// blocks of dx summed in double, in order.
extern "C" __global__ void sum_heads(const float* dx, float* out, int rows, int cols,
                                     int head_dim, int groups) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)rows * cols) return;
    long long r = i / cols;
    int c = (int)(i % cols);
    int kv = c / head_dim, col = c % head_dim;
    const float* src = dx + r * cols * groups;
    double sum = 0.0;
    for (int g = 0; g < groups; ++g) {
        sum += (double)src[(long long)(kv * groups + g) * head_dim + col];
    }
    out[i] = (float)sum;
}

// Scores [heads, nq, nk] (already scaled) to probabilities in place, one block per (row, head):
// keys j > positions[i] are masked to 0 when causal (positions null: i itself).
extern "C" __global__ void attn_softmax(float* s, const int* positions, int nq, int nk,
                                        int causal) {
    __shared__ double sh[BLOCK];
    __shared__ float shf[BLOCK];
    int i = blockIdx.x, h = blockIdx.y;
    if (i >= nq) return;
    float* row = s + ((long long)h * nq + i) * nk;
    int at = positions ? positions[i] : i;
    int end = causal ? min(at + 1, nk) : nk;
    float m = NEG_INF;
    for (int j = threadIdx.x; j < end; j += BLOCK) m = fmaxf(m, row[j]);
    m = block_max(m, shf);
    double sum = 0.0;
    for (int j = threadIdx.x; j < end; j += BLOCK) sum += exp((double)(row[j] - m));
    sum = block_sum(sum, sh);
    for (int j = threadIdx.x; j < nk; j += BLOCK) {
        row[j] = j < end ? (float)(exp((double)(row[j] - m)) / sum) : 0.0f;
    }
}

// ds = p * (dp - sum_j p dp) * scale, in place over dp, one block per (row, head).
extern "C" __global__ void attn_softmax_bwd(const float* p, float* dp, int nq, int nk,
                                            double scale) {
    __shared__ double sh[BLOCK];
    int i = blockIdx.x, h = blockIdx.y;
    if (i >= nq) return;
    const float* pr = p + ((long long)h * nq + i) * nk;
    float* dr = dp + ((long long)h * nq + i) * nk;
    double dot = 0.0;
    for (int j = threadIdx.x; j < nk; j += BLOCK) dot += (double)pr[j] * (double)dr[j];
    dot = block_sum(dot, sh);
    for (int j = threadIdx.x; j < nk; j += BLOCK) {
        dr[j] = (float)((double)pr[j] * ((double)dr[j] - dot) * scale);
    }
}

// out[k, :] = src[index[k], :]
extern "C" __global__ void gather_rows(const float* src, const int* index, float* out, int n,
                                       int cols) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n * cols) return;
    int k = (int)(i / cols), c = (int)(i % cols);
    out[i] = src[(long long)index[k] * cols + c];
}

// dst[index[k], :] = src[k, :]
extern "C" __global__ void scatter_rows(const float* src, const int* index, float* dst, int n,
                                        int cols) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n * cols) return;
    int k = (int)(i / cols), c = (int)(i % cols);
    dst[(long long)index[k] * cols + c] = src[i];
}

// table[index[k], :] += src[k, :] for k in order, one thread per column (repeated indices
// add in order, so the sums are deterministic); index < 0 skips the row.
extern "C" __global__ void scatter_add_rows(const float* src, const int* index, float* table,
                                            int n, int cols) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    for (int k = 0; k < n; ++k) {
        if (index[k] < 0) continue;
        float* t = table + (long long)index[k] * cols + c;
        *t = *t + src[(long long)k * cols + c];
    }
}

// Per row with target t != -100: loss[r] = logsumexp(row) - row[t] (double), and
// dlogits = (softmax - onehot) / n; rows without a target get 0. One block per row.
extern "C" __global__ void cross_entropy(const float* logits, const long long* targets,
                                         float* dlogits, double* loss, int rows, int vocab,
                                         double n) {
    __shared__ double sh[BLOCK];
    __shared__ float shf[BLOCK];
    int r = blockIdx.x;
    if (r >= rows) return;
    const float* row = logits + (long long)r * vocab;
    float* d = dlogits + (long long)r * vocab;
    long long t = targets[r];
    if (t == -100) {
        for (int j = threadIdx.x; j < vocab; j += BLOCK) d[j] = 0.0f;
        if (threadIdx.x == 0) loss[r] = 0.0;
        return;
    }
    float m = NEG_INF;
    for (int j = threadIdx.x; j < vocab; j += BLOCK) m = fmaxf(m, row[j]);
    double md = (double)block_max(m, shf);
    double s = 0.0;
    for (int j = threadIdx.x; j < vocab; j += BLOCK) s += exp((double)row[j] - md);
    double lse = md + log(block_sum(s, sh));
    for (int j = threadIdx.x; j < vocab; j += BLOCK) {
        double onehot = j == t ? 1.0 : 0.0;
        d[j] = (float)((exp((double)row[j] - lse) - onehot) / n);
    }
    if (threadIdx.x == 0) loss[r] = lse - (double)row[t];
}

// Adam with bias corrections bc1 = 1 - b1^t, bc2 = 1 - b2^t; moments stored as float.
extern "C" __global__ void adam(float* p, const float* g, float* m, float* v, long long n,
                                double lr, double b1, double b2, double eps, double bc1,
                                double bc2) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    double gd = (double)g[i];
    m[i] = (float)(b1 * (double)m[i] + (1.0 - b1) * gd);
    v[i] = (float)(b2 * (double)v[i] + (1.0 - b2) * gd * gd);
    double upd = lr * ((double)m[i] / bc1) / (sqrt((double)v[i] / bc2) + eps);
    p[i] = (float)((double)p[i] - upd);
}

// float to bfloat16, rounding to nearest even (NaN kept quiet).
extern "C" __global__ void to_bf16(const float* x, unsigned short* y, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    unsigned int u = __float_as_uint(x[i]);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        y[i] = (unsigned short)((u >> 16) | 0x40u);
        return;
    }
    unsigned int lsb = (u >> 16) & 1u;
    y[i] = (unsigned short)((u + 0x7fffu + lsb) >> 16);
}

// The vocabulary-parallel cross-entropy (`exec/vocab.rs`): per row of this rank's slice of
// the logits (columns `start ..+ width` of the vocabulary), its maximum, the sum of
// exp(l - max) (in double) and the target's logit when the slice holds it (else 0).
extern "C" __global__ void vocab_stats(const float* logits, const long long* targets,
                                       float* stats, int rows, int width, long long start) {
    __shared__ double sh[BLOCK];
    __shared__ float shf[BLOCK];
    int r = blockIdx.x;
    if (r >= rows) return;
    const float* row = logits + (long long)r * width;
    float m = NEG_INF;
    for (int j = threadIdx.x; j < width; j += BLOCK) m = fmaxf(m, row[j]);
    m = block_max(m, shf);
    double s = 0.0;
    for (int j = threadIdx.x; j < width; j += BLOCK) s += exp((double)row[j] - (double)m);
    s = block_sum(s, sh);
    if (threadIdx.x == 0) {
        long long t = targets[r];
        float tgt = (t >= start && t < start + width) ? row[t - start] : 0.0f;
        stats[3 * r] = m;
        stats[3 * r + 1] = (float)s;
        stats[3 * r + 2] = tgt;
    }
}

// Its gradient on the slice: (exp(l - lse) - onehot) / n on rows with a target, 0 elsewhere.
extern "C" __global__ void vocab_ce_grad(const float* logits, const long long* targets,
                                         const double* lse, float* d, int rows, int width,
                                         long long start, double n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)rows * width) return;
    int r = (int)(i / width);
    long long j = i % width;
    long long t = targets[r];
    if (t == -100) {
        d[i] = 0.0f;
        return;
    }
    double onehot = (start + j == t) ? 1.0 : 0.0;
    d[i] = (float)((exp((double)logits[i] - lse[r]) - onehot) / n);
}

// A mixture of experts' combination (`reference::moe::combine`): output row r is the sum, in
// assignment order, of w[a] · x[a] over row r's assignments (assigned[starts[r] ..
// starts[r + 1]], ascending), in double, rounded once; a row without one is 0.
extern "C" __global__ void moe_combine(const float* x, const int* starts, const int* assigned,
                                       const double* w, float* y, int n, int cols) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n * cols) return;
    int r = (int)(i / cols);
    int j = (int)(i % cols);
    double acc = 0.0;
    for (int k = starts[r]; k < starts[r + 1]; k++) {
        int a = assigned[k];
        acc += w[a] * (double)x[(long long)a * cols + j];
    }
    y[i] = (float)acc;
}

// Its backward, a thread per assignment a (of output row rows[a]): dx[a] = w[a] · dy[rows[a]]
// rounded once, and dw[a] = dy[rows[a]] · x[a] summed in double column after column, as the
// CPU sums it.
extern "C" __global__ void moe_combine_bwd(const float* x, const int* rows, const double* w,
                                           const float* dy, float* dx, double* dw, int assigns,
                                           int cols) {
    int a = blockIdx.x * blockDim.x + threadIdx.x;
    if (a >= assigns) return;
    const float* g = dy + (long long)rows[a] * cols;
    const float* xa = x + (long long)a * cols;
    float* da = dx + (long long)a * cols;
    double s = 0.0;
    for (int j = 0; j < cols; j++) {
        da[j] = (float)(w[a] * (double)g[j]);
        s += (double)g[j] * (double)xa[j];
    }
    dw[a] = s;
}
