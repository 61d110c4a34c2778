// A pool of large CPU output buffers that the fused ops reuse from call to call.
//
// A fresh CPU allocation of tens of MB is mapped anew by the C library and page-faults on
// first touch (~8 ms per 33.5 MB on our machines, more than the kernel's own memory traffic).
// The ops' large outputs (y, dx) are allocated here instead: when such a tensor is freed its
// buffer goes back to the pool, already touched, for the next call of the same size. Only
// buffers of at least kPoolMinBytes are pooled; the pool keeps at most a capacity of idle
// bytes (env STOCHNET_CPU_POOL_MB, default 1024; 0 turns pooling off) and frees the rest.
#pragma once
#include <ATen/core/Tensor.h>

namespace stochnet::cpu {

constexpr size_t kPoolMinBytes = size_t{1} << 20;

// An empty tensor laid out like `like` (same sizes, strides and dtype) on pooled memory.
at::Tensor pooled_empty_like(const at::Tensor& like);

// An empty contiguous tensor on pooled memory.
at::Tensor pooled_empty(at::IntArrayRef sizes, at::ScalarType dtype);

// Frees every idle pooled buffer; returns the bytes released.
int64_t release_output_pool();

// Idle bytes the pool holds now.
int64_t output_pool_idle_bytes();

}  // namespace stochnet::cpu
