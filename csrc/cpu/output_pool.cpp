#include "cpu/output_pool.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

namespace stochnet::cpu {
namespace {

constexpr size_t kAlignment = 64;

size_t capacity_from_env() {
  const char* megabytes = std::getenv("STOCHNET_CPU_POOL_MB");
  return (megabytes ? static_cast<size_t>(std::strtoull(megabytes, nullptr, 10)) : 1024) << 20;
}

class OutputPool final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    if (n < kPoolMinBytes || capacity_ == 0) return c10::GetCPUAllocator()->allocate(n);
    const size_t size = (n + kAlignment - 1) / kAlignment * kAlignment;
    void* block = take(size);
    if (block == nullptr) {
      block = std::aligned_alloc(kAlignment, size);
      TORCH_CHECK(block != nullptr, "stochnet: out of memory allocating ", size, " bytes");
    }
    return {block, new Block{block, size}, &give_back, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, size_t count) const override { std::memcpy(dest, src, count); }

  int64_t release() {
    std::lock_guard<std::mutex> lock(mutex_);
    const size_t released = idle_bytes_;
    for (auto& entry : idle_) std::free(entry.second);
    idle_.clear();
    idle_bytes_ = 0;
    return static_cast<int64_t>(released);
  }

  int64_t idle_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return static_cast<int64_t>(idle_bytes_);
  }

  static OutputPool& instance() {
    static OutputPool* pool = new OutputPool();  // never destroyed: tensors may outlive static teardown
    return *pool;
  }

 private:
  struct Block {
    void* data;
    size_t size;
  };

  // An idle block of exactly `size` bytes (outputs recur with the same shapes), or nullptr.
  void* take(size_t size) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = idle_.find(size);
    if (found == idle_.end()) return nullptr;
    void* block = found->second;
    idle_.erase(found);
    idle_bytes_ -= size;
    return block;
  }

  void put(Block* block) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (idle_bytes_ + block->size <= capacity_) {
        idle_.emplace(block->size, block->data);
        idle_bytes_ += block->size;
        block->data = nullptr;
      }
    }
    std::free(block->data);
    delete block;
  }

  static void give_back(void* context) { instance().put(static_cast<Block*>(context)); }

  std::mutex mutex_;
  std::multimap<size_t, void*> idle_;
  size_t idle_bytes_ = 0;
  const size_t capacity_ = capacity_from_env();
};

}  // namespace

at::Tensor pooled_empty_like(const at::Tensor& like) {
  return at::detail::empty_strided_generic(like.sizes(), like.strides(), &OutputPool::instance(),
                                           c10::DispatchKeySet(c10::DispatchKey::CPU), like.scalar_type());
}

at::Tensor pooled_empty(at::IntArrayRef sizes, at::ScalarType dtype) {
  return at::detail::empty_generic(sizes, &OutputPool::instance(), c10::DispatchKeySet(c10::DispatchKey::CPU), dtype,
                                   std::nullopt);
}

int64_t release_output_pool() { return OutputPool::instance().release(); }

int64_t output_pool_idle_bytes() { return OutputPool::instance().idle_bytes(); }

TORCH_LIBRARY_FRAGMENT(stochnet, m) {
  // Frees the idle buffers of the CPU output pool; returns the bytes released.
  m.def("release_cpu_output_pool() -> int", &release_output_pool);
  m.def("cpu_output_pool_idle_bytes() -> int", &output_pool_idle_bytes);
}

}  // namespace stochnet::cpu
