// Every op of stochnet, declared once: the CPU and CUDA implementations register beside their
// kernels (csrc/cpu, csrc/cuda), stochnet/ops/<op>.py adds the fake implementation and autograd,
// and kernels/<op>.py declares the same schemas under stochnet_triton::. A noise op reads its
// stream from `philox`, an int64 CPU tensor holding (seed, offset) (philox.h, draw_seed in
// stochnet/ops/philox.py). A backward is named <op>_backward.
#include <torch/library.h>
#include <Python.h>

TORCH_LIBRARY(stochnet, m) {
  // Word i of the stream into out[i] (int32), see philox.h.
  m.def("philox_words_out(Tensor philox, Tensor(a!) out) -> ()");
  // Uniform i of the stream into out[i] (float32).
  m.def("philox_uniform_out(Tensor philox, Tensor(a!) out) -> ()");
  // Normal i of the stream into out[i] (float32).
  m.def("philox_normal_out(Tensor philox, Tensor(a!) out) -> ()");
  // StocReLU-EMA on a dense x: (y laid out like x, the packed 1-bit mask [x + noise > 0], the new
  // running sigma). Functional: the caller copies the new sigma into its buffer.
  m.def("stoc_relu_ema(Tensor x, Tensor running_sigma, float gamma, float momentum, bool training, "
        "Tensor philox) -> (Tensor, Tensor, Tensor)");
  // grad where the mask bit is set, else 0 (NaN / inf included); the packed 1-bit mask in grad's memory order.
  m.def("stoc_relu_ema_backward(Tensor grad, Tensor mask) -> Tensor");
  // Learn2Perturb / PNI / Gaussian noise: y = x + theta * z on a contiguous x of shape (N, C, *).
  // theta is contiguous with 1 (scalar), C (per channel) or numel / N (per element of the
  // feature map) elements.
  m.def("perturb(Tensor x, Tensor theta, Tensor philox) -> Tensor");
  // d theta = sum over the batch (and broadcast dims) of grad * z, z regenerated from philox;
  // shaped like theta, in theta's dtype.
  m.def("perturb_backward(Tensor grad, Tensor theta, Tensor philox) -> Tensor");
  // PGD step on (B, *) tensors of one shape: norm "linf" (sign step, clamp to the eps box) or
  // "l2" (normalized-gradient step, per-sample projection onto the eps ball), then clamp to
  // [lo, hi]. eps, alpha: contiguous (B,) float32/float64 tensors on x_adv's device.
  m.def("pgd_step(Tensor x_adv, Tensor grad, Tensor x_orig, Tensor eps, Tensor alpha, str norm, "
        "float lo, float hi) -> Tensor");
  // MIM: momentum <- mu * momentum + grad / max(mean_b |grad|, 1e-12) in place, then the linf
  // step of x_adv along sign(momentum).
  m.def("mim_step(Tensor x_adv, Tensor grad, Tensor x_orig, Tensor(a!) momentum, Tensor eps, "
        "Tensor alpha, float mu, float lo, float hi) -> Tensor");
  // Random start inside the eps ball around x_orig ("linf" box or "l2" ball), clamped to [lo, hi].
  m.def("random_start(Tensor x_orig, Tensor eps, str norm, float lo, float hi, Tensor philox) -> Tensor");
  // Smoothing: m noisy copies of each sample of a contiguous (B, *) x, out[b*m + j] = x[b] + sigma * z,
  // output element i (memory order) taking normal i of the stream.
  m.def("noisy_repeat(Tensor x, int m, float sigma, Tensor philox) -> Tensor");
  // Votes of contiguous (B*m, K) logits read as (B, m, K) -> (B, K): mode "prediction" (int64 argmax
  // counts, ties and NaN as torch.argmax), "soft" (mean softmax, logits' dtype), "weighted" (2^-rank
  // for the 32 largest logits of each row; float32, float64 for float64 logits).
  m.def("vote(Tensor logits, int m, str mode) -> Tensor");
  // d logits of the soft vote: p * (grad[b] - <grad[b], p>) / m per row, p the row's softmax.
  m.def("vote_backward(Tensor grad, Tensor logits, int m) -> Tensor");
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
