// The element-wise parts of the predictor's forward pass on the GPU (the matrix products go to
// cuBLAS). They follow src/predictor/candle.rs exactly: same embedding layout, bias added after the
// product, ReLU on all but the last layer. Compiled to kernels.ptx by tools/gen_ptx.sh.

// Positional embedding of `rows` coordinates (rows × 3) into rows × 6·levels:
// for coordinate j, [sin(p_j·ω_0) … sin(p_j·ω_{K-1}), cos(p_j·ω_0) … cos(p_j·ω_{K-1})].
// One thread per (row, j, k).
extern "C" __global__ void nerp_embed(const float* __restrict__ coords,
                                      const float* __restrict__ freqs,
                                      float* __restrict__ out, int rows, int levels) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)rows * 3 * levels) return;
    int k = (int)(i % levels);
    long long rj = i / levels;  // row · 3 + j
    float phase = coords[rj] * freqs[k];
    float* o = out + (rj / 3) * 6 * levels + (rj % 3) * 2 * levels;
    o[k] = sinf(phase);
    o[levels + k] = cosf(phase);
}

// y[r, c] += b[c] over a row-major rows × cols matrix, then max(y, 0) when `relu` is set.
extern "C" __global__ void nerp_bias_act(float* __restrict__ y, const float* __restrict__ b,
                                         long long total, int cols, int relu) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    float v = y[i] + b[i % cols];
    y[i] = (relu && v < 0.0f) ? 0.0f : v;
}
