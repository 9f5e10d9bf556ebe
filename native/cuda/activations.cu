// activations.cu: CUDA twins of native/cpu/activations.cpp (f32).
// One thread per element, grid-stride. Formulas are the CPU file's, term for term (gelu via
// sigmoid(2u), silu' = s (1 + x (1 - s))), so the twins differ only by expf's last ulp.
// Backward kernels add (+=) into gradients; forward out may alias an input.
#include "cuda/common.cuh"
#include "cuda/kernels_nn.h"
#include "cuda/launch.cuh"

namespace qs::cuda {

// ---------------------------------------------------------------------------------------------
// kernels

__device__ inline float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

constexpr float kGeluK2 = (float)(2 * 0.7978845608028654);  // 2 sqrt(2/pi): the 2 of sigmoid(2u)
constexpr float kGeluC = 0.044715f;

// out = a + b
__global__ void residual_forward_kernel1(float* out, const float* a, const float* b, int64_t n) {
  QS_GRID_STRIDE(i, n) out[i] = a[i] + b[i];
}

// da += dout, db += dout (either may be null)
__global__ void residual_backward_kernel1(float* da, float* db, const float* dout, int64_t n) {
  QS_GRID_STRIDE(i, n) {
    if (da) da[i] += dout[i];
    if (db) db[i] += dout[i];
  }
}

// gelu(x) = x sigmoid(2u), u = sqrt(2/pi) (x + c x³): no cancellation in 1 + tanh for x << 0
__global__ void gelu_forward_kernel1(float* out, const float* inp, int64_t n) {
  QS_GRID_STRIDE(i, n) {
    float x = inp[i];
    out[i] = x / (1.0f + expf(-kGeluK2 * (x + kGeluC * x * x * x)));
  }
}

// gelu'(x) = s + 2 x s (1 - s) u',  s = sigmoid(2u)
__global__ void gelu_backward_kernel1(float* dinp, const float* inp, const float* dout, int64_t n) {
  QS_GRID_STRIDE(i, n) {
    float x = inp[i];
    float s = sigmoidf_(kGeluK2 * (x + kGeluC * x * x * x));
    float du2 = kGeluK2 * (1.0f + 3.0f * kGeluC * x * x);  // d(2u)/dx
    dinp[i] += dout[i] * (s + x * s * (1.0f - s) * du2);
  }
}

__global__ void silu_forward_kernel1(float* out, const float* inp, int64_t n) {
  QS_GRID_STRIDE(i, n) out[i] = inp[i] * sigmoidf_(inp[i]);
}

// silu'(x) = s (1 + x (1 - s))
__global__ void silu_backward_kernel1(float* dinp, const float* inp, const float* dout, int64_t n) {
  QS_GRID_STRIDE(i, n) {
    float x = inp[i], s = sigmoidf_(x);
    dinp[i] += dout[i] * (s * (1.0f + x * (1.0f - s)));
  }
}

// x < 0 ? 0 : x keeps NaN (the comparison is false), like torch.relu
__global__ void relu_forward_kernel1(float* out, const float* inp, int64_t n) {
  QS_GRID_STRIDE(i, n) out[i] = inp[i] < 0.0f ? 0.0f : inp[i];
}

// gradient 1 for x > 0, else 0 (also at x = 0 and for NaN)
__global__ void relu_backward_kernel1(float* dinp, const float* inp, const float* dout, int64_t n) {
  QS_GRID_STRIDE(i, n) dinp[i] += inp[i] > 0.0f ? dout[i] : 0.0f;
}

// out = silu(gate) * up
__global__ void swiglu_forward_kernel1(float* out, const float* gate, const float* up, int64_t n) {
  QS_GRID_STRIDE(i, n) {
    float g = gate[i];
    out[i] = g * sigmoidf_(g) * up[i];
  }
}

// dgate += dout up silu'(gate), dup += dout silu(gate); either may be null
__global__ void swiglu_backward_kernel1(float* dgate, float* dup, const float* gate, const float* up,
                                        const float* dout, int64_t n) {
  QS_GRID_STRIDE(i, n) {
    float g = gate[i], s = sigmoidf_(g), dy = dout[i];
    if (dgate) dgate[i] += dy * up[i] * (s * (1.0f + g * (1.0f - s)));
    if (dup) dup[i] += dy * (g * s);
  }
}

// ---------------------------------------------------------------------------------------------
// launchers

// Launches an elementwise kernel over n elements on `stream` and checks the launch.
template <typename Kernel, typename... Args>
static Status launch_elementwise(Kernel kernel, int64_t n, void* stream, Args... args) {
  if (n == 0) return Status::Ok();
  kernel<<<grid_for(n), kBlock, 0, (cudaStream_t)stream>>>(args..., n);
  QS_CUDA_CHECK_LAUNCH(stream);
  return Status::Ok();
}

Status residual_forward(float* out, const float* a, const float* b, int64_t n, void* stream) {
  return launch_elementwise(residual_forward_kernel1, n, stream, out, a, b);
}
Status residual_backward(float* da, float* db, const float* dout, int64_t n, void* stream) {
  return launch_elementwise(residual_backward_kernel1, n, stream, da, db, dout);
}
Status gelu_forward(float* out, const float* inp, int64_t n, void* stream) {
  return launch_elementwise(gelu_forward_kernel1, n, stream, out, inp);
}
Status gelu_backward(float* dinp, const float* inp, const float* dout, int64_t n, void* stream) {
  return launch_elementwise(gelu_backward_kernel1, n, stream, dinp, inp, dout);
}
Status silu_forward(float* out, const float* inp, int64_t n, void* stream) {
  return launch_elementwise(silu_forward_kernel1, n, stream, out, inp);
}
Status silu_backward(float* dinp, const float* inp, const float* dout, int64_t n, void* stream) {
  return launch_elementwise(silu_backward_kernel1, n, stream, dinp, inp, dout);
}
Status relu_forward(float* out, const float* inp, int64_t n, void* stream) {
  return launch_elementwise(relu_forward_kernel1, n, stream, out, inp);
}
Status relu_backward(float* dinp, const float* inp, const float* dout, int64_t n, void* stream) {
  return launch_elementwise(relu_backward_kernel1, n, stream, dinp, inp, dout);
}
Status swiglu_forward(float* out, const float* gate, const float* up, int64_t n, void* stream) {
  return launch_elementwise(swiglu_forward_kernel1, n, stream, out, gate, up);
}
Status swiglu_backward(float* dgate, float* dup, const float* gate, const float* up, const float* dout, int64_t n,
                       void* stream) {
  return launch_elementwise(swiglu_backward_kernel1, n, stream, dgate, dup, gate, up, dout);
}

}  // namespace qs::cuda
