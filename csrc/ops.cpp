// The schemas of the kernel-level ops; CPU and CUDA implementations register beside
// their kernels (csrc/cpu, csrc/cuda). Python adds fake implementations and autograd.
#include <torch/library.h>
#include <Python.h>

TORCH_LIBRARY(stochnet, m) {
  // Word i of the stream (seed, offset) into out[i] (int32), see philox.h.
  m.def("philox_words_out(int seed, int offset, Tensor(a!) out) -> ()");
  // Uniform i of the stream into out[i] (float32).
  m.def("philox_uniform_out(int seed, int offset, Tensor(a!) out) -> ()");
  // Normal i of the stream into out[i] (float32).
  m.def("philox_normal_out(int seed, int offset, Tensor(a!) out) -> ()");
  // StocReLU-EMA forward on a dense x: (y laid out like x, packed 1-bit mask).
  m.def("stoc_relu_ema_fwd(Tensor x, Tensor(a!) running_sigma, float gamma, float momentum, "
        "bool training, int seed, int offset) -> (Tensor, Tensor)");
  // grad * mask, the packed 1-bit mask in grad's memory order.
  m.def("relu_mask_backward(Tensor grad, Tensor mask) -> Tensor");
  // Learn2Perturb / PNI / Gaussian noise: y = x + theta * z on a contiguous x of shape (N, C, *).
  // theta is contiguous with 1 (scalar), C (per channel) or numel / N (per element of the
  // feature map) elements.
  m.def("perturb_fwd(Tensor x, Tensor theta, int seed, int offset) -> Tensor");
  // d theta = sum over the batch (and broadcast dims) of grad * z, z regenerated from (seed, offset);
  // shaped like theta, in theta's dtype.
  m.def("perturb_bwd(Tensor grad, Tensor theta, int seed, int offset) -> Tensor");
  // PGD step on (B, *) tensors of one shape: norm "linf" (sign step, clamp to the eps box) or
  // "l2" (normalized-gradient step, per-sample projection onto the eps ball), then clamp to
  // [lo, hi]. eps, alpha: contiguous (B,) float32/float64 tensors on x_adv's device.
  m.def("pgd_step_fwd(Tensor x_adv, Tensor grad, Tensor x_orig, Tensor eps, Tensor alpha, str norm, "
        "float lo, float hi) -> Tensor");
  // MIM: momentum <- mu * momentum + grad / max(mean_b |grad|, 1e-12) in place, then the linf
  // step of x_adv along sign(momentum).
  m.def("mim_step_fwd(Tensor x_adv, Tensor grad, Tensor x_orig, Tensor(a!) momentum, Tensor eps, "
        "Tensor alpha, float mu, float lo, float hi) -> Tensor");
  // Random start inside the eps ball around x_orig ("linf" box or "l2" ball), clamped to [lo, hi],
  // from the Philox stream (seed, offset).
  m.def("random_start_fwd(Tensor x_orig, Tensor eps, str norm, float lo, float hi, int seed, "
        "int offset) -> Tensor");
  // Smoothing: m noisy copies of each sample of a contiguous (B, *) x, out[b*m + j] = x[b] + sigma * z,
  // output element i (memory order) taking normal i of the stream (seed, offset).
  m.def("noisy_repeat_fwd(Tensor x, int m, float sigma, int seed, int offset) -> Tensor");
  // Votes of contiguous (B*m, K) logits read as (B, m, K) -> (B, K): mode "prediction" (int64 argmax
  // counts, ties and NaN as torch.argmax), "soft" (mean softmax, logits' dtype), "weighted" (2^-rank
  // for the 32 largest logits of each row; float32, float64 for float64 logits).
  m.def("vote_fwd(Tensor logits, int m, str mode) -> Tensor");
  // d logits of the soft vote: p * (grad[b] - <grad[b], p>) / m per row, p the row's softmax.
  m.def("vote_soft_bwd(Tensor grad, Tensor logits, int m) -> Tensor");
}

namespace {

PyObject* cpu_capability(PyObject*, PyObject*) { return PyUnicode_FromString(STOCHNET_CPU_CAPABILITY); }

PyObject* has_cuda(PyObject*, PyObject*) {
#ifdef STOCHNET_WITH_CUDA
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

PyMethodDef methods[] = {
    {"cpu_capability", cpu_capability, METH_NOARGS, "The CPU vector ISA the C++ kernels were built for."},
    {"has_cuda", has_cuda, METH_NOARGS, "Whether the CUDA kernels were built."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module); }
