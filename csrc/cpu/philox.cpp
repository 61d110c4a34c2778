// The Philox stream on the CPU, element by element into a tensor (words, uniforms, normals): what
// every CPU noise kernel draws, exposed so that tests compare it with the reference and Triton.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>

#include "checks.h"
#include "cpu/normal_block.h"

namespace stochnet::cpu {
namespace {

// out[i] = element i of the stream (seed, offset), one block per step.
template <typename T, typename Fill>
void fill_stream(at::Tensor& out, at::ScalarType dtype, const char* name, Fill fill) {
  TORCH_CHECK(out.scalar_type() == dtype && out.is_contiguous(), "out must be a contiguous ", dtype,
              " tensor for ", name, ", got ", out.scalar_type());
  T* o = out.mutable_data_ptr<T>();
  const int64_t numel = out.numel();
  at::parallel_for(0, (numel + kBlock - 1) / kBlock, 64, [&](int64_t first, int64_t last) {
    alignas(64) T block_values[kBlock];
    for (int64_t block = first; block < last; ++block) {
      const int64_t begin = block * kBlock;
      fill(begin / 4, block_values);
      std::memcpy(o + begin, block_values, sizeof(T) * std::min<int64_t>(kBlock, numel - begin));
    }
  });
}

void philox_words_out(const at::Tensor& philox, at::Tensor& out) {
  const auto [seed, offset] = philox_pair(philox);
  fill_stream<int32_t>(out, at::kInt, "philox_words_out", [&](int64_t counter, int32_t* values) {
    word_block<false>(seed, offset + counter, values);
  });
}

void philox_uniform_out(const at::Tensor& philox, at::Tensor& out) {
  const auto [seed, offset] = philox_pair(philox);
  fill_stream<float>(out, at::kFloat, "philox_uniform_out", [&](int64_t counter, float* values) {
    word_block<true>(seed, offset + counter, values);
  });
}

void philox_normal_out(const at::Tensor& philox, at::Tensor& out) {
  const auto [seed, offset] = philox_pair(philox);
  fill_stream<float>(out, at::kFloat, "philox_normal_out", [&](int64_t counter, float* values) {
    normal_block(seed, offset + counter, values);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(stochnet, CPU, m) {
  m.impl("philox_words_out", &philox_words_out);
  m.impl("philox_uniform_out", &philox_uniform_out);
  m.impl("philox_normal_out", &philox_normal_out);
}

}  // namespace stochnet::cpu
