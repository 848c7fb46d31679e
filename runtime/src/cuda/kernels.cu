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
