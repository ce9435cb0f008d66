// The CUDA execution model on the host, so csrc/cuda/*.cu run on CPU tensors in the tests (never
// shipped: csrc/include/sgllie/cuda_launch.h includes it only under SGLLIE_CUDA_EMULATION).
//
// A launch runs its blocks one after another (in order, or reversed: SGLLIE_EMU_BLOCK_ORDER). Each block's threads are host threads (spawned once
// per launch and reused for every block); __syncthreads is a barrier over the block's threads, warp
// shuffles a barrier over the warp's lanes with an exchange buffer, and __shared__ variables are
// function-static storage, which is sound because only one block runs at a time. Every wait has a
// timeout (SGLLIE_EMU_TIMEOUT seconds, default 60): a kernel whose threads do not all reach a
// __syncthreads fails the launch with an error instead of hanging; so does a thread that leaves
// the block while others wait at one.
#pragma once

#include <cuda_runtime_api.h>  // cudaStream_t, cudaError_t (declarations only: nothing is linked)
#include <vector_types.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

// CUDA's qualifiers as host C++. __shared__ becomes function-static: one block runs at a time.
#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __forceinline__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __forceinline__ inline
#define __launch_bounds__(...)

namespace cuda_emu {

struct Abort {};  // unwinds a thread's kernel once its launch has failed

struct LaunchState;
inline thread_local LaunchState* current = nullptr;
inline thread_local unsigned linear_tid = 0;

inline std::chrono::milliseconds timeout() {
  const char* s = std::getenv("SGLLIE_EMU_TIMEOUT");
  return std::chrono::milliseconds(static_cast<long>(1000 * (s ? std::atof(s) : 60.0)));
}

// A reusable barrier that knows why it is waited at: a phase mixing __syncthreads with the end of
// the block (a thread returned early) is an error, as is a wait that outlives the timeout.
class Barrier {
 public:
  enum Kind { kSync, kBlockEnd, kWarp };
  void reset(unsigned count) { count_ = count; }
  void arrive_and_wait(Kind kind, LaunchState& launch);

 private:
  std::mutex m_;
  std::condition_variable cv_;
  unsigned count_ = 0, arrived_ = 0;
  unsigned long generation_ = 0;
  int kinds_ = 0;  // bit set of the kinds arrived in this phase
};

struct LaunchState {
  std::string kernel;
  dim3 grid, block;
  unsigned nthreads = 0;
  Barrier block_barrier;
  std::vector<std::unique_ptr<Barrier>> warp_barriers;
  std::vector<unsigned char> exchange;  // 32 lanes x 16 bytes per warp, for shuffles
  std::atomic<bool> failed{false};
  std::mutex error_m;
  std::string error;

  void fail(const std::string& why) {
    std::lock_guard<std::mutex> lock(error_m);
    if (!failed.exchange(true)) error = "emulated kernel " + kernel + ": " + why;
  }
};

inline void Barrier::arrive_and_wait(Kind kind, LaunchState& launch) {
  std::unique_lock<std::mutex> lock(m_);
  kinds_ |= 1 << kind;
  if ((kinds_ & (1 << kSync)) && (kinds_ & (1 << kBlockEnd)))
    launch.fail("a thread left the block while others waited at __syncthreads (a __syncthreads "
                "not reached by every thread of the block)");
  if (launch.failed) { cv_.notify_all(); throw Abort{}; }
  const unsigned long gen = generation_;
  if (++arrived_ == count_) {
    arrived_ = 0; kinds_ = 0; ++generation_;
    cv_.notify_all();
    return;
  }
  const auto deadline = std::chrono::steady_clock::now() + timeout();
  while (generation_ == gen) {
    if (launch.failed) { cv_.notify_all(); throw Abort{}; }
    if (cv_.wait_until(lock, std::min(deadline, std::chrono::steady_clock::now() +
                                                    std::chrono::milliseconds(50))) ==
            std::cv_status::timeout &&
        std::chrono::steady_clock::now() >= deadline && generation_ == gen) {
      launch.fail(std::string("deadlock: threads waited more than SGLLIE_EMU_TIMEOUT at ") +
                  (kind == kWarp ? "a warp shuffle (not every lane of the warp reached it)"
                                 : "__syncthreads (not every thread of the block reached it)"));
      cv_.notify_all();
      throw Abort{};
    }
  }
}

}  // namespace cuda_emu

// The built-in variables: per host thread.
inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;
constexpr int warpSize = 32;
using std::max;  // CUDA's global min/max overloads
using std::min;

inline void __syncthreads() {
  cuda_emu::current->block_barrier.arrive_and_wait(cuda_emu::Barrier::kSync, *cuda_emu::current);
}

namespace cuda_emu {

inline unsigned warp_of() { return linear_tid / 32; }

// Every lane of the warp publishes v, then reads lane `src` (its own value where src is out of range).
template <typename T>
T exchange(T v, int src) {
  static_assert(sizeof(T) <= 16 && std::is_trivially_copyable_v<T>);
  LaunchState& s = *current;
  Barrier& bar = *s.warp_barriers[warp_of()];
  unsigned char* buf = s.exchange.data() + warp_of() * 32 * 16;
  const unsigned lane = linear_tid % 32, lanes = std::min(32u, s.nthreads - warp_of() * 32);
  std::memcpy(buf + lane * 16, &v, sizeof(T));
  bar.arrive_and_wait(Barrier::kWarp, s);
  T out = v;
  if (src >= 0 && static_cast<unsigned>(src) < lanes) std::memcpy(&out, buf + src * 16, sizeof(T));
  bar.arrive_and_wait(Barrier::kWarp, s);  // nobody overwrites the buffer before all have read
  return out;
}

}  // namespace cuda_emu

inline unsigned __lane() { return cuda_emu::linear_tid % 32; }
template <typename T> T __shfl_sync(unsigned, T v, int src, int width = 32) {
  return cuda_emu::exchange(v, static_cast<int>(__lane() / width * width) + src % width);
}
template <typename T> T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
  const int lane = __lane() % width, src = lane + static_cast<int>(delta);
  return cuda_emu::exchange(v, src < width ? static_cast<int>(__lane()) + static_cast<int>(delta) : -1);
}
template <typename T> T __shfl_up_sync(unsigned, T v, unsigned delta, int width = 32) {
  const int lane = __lane() % width, src = lane - static_cast<int>(delta);
  return cuda_emu::exchange(v, src >= 0 ? static_cast<int>(__lane()) - static_cast<int>(delta) : -1);
}
template <typename T> T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
  const int src = static_cast<int>(__lane()) ^ mask;
  return cuda_emu::exchange(v, src / width == static_cast<int>(__lane()) / width ? src : -1);
}
inline void __syncwarp(unsigned = 0xffffffffu) {
  cuda_emu::LaunchState& s = *cuda_emu::current;
  s.warp_barriers[cuda_emu::warp_of()]->arrive_and_wait(cuda_emu::Barrier::kWarp, s);
}

template <typename T> T atomicAdd(T* address, T v) { return std::atomic_ref<T>(*address).fetch_add(v); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
template <typename T> T __ldg(const T* p) { return *p; }

namespace cuda_emu {

// kernel<<<grid, block, 0, stream>>>(args...) as launch(name, kernel, grid, block)(args...).
template <typename... Params>
struct Launch {
  const char* name;
  void (*kernel)(Params...);
  dim3 grid, block;

  template <typename... Args>
  void operator()(Args&&... args) const {
    auto s = std::make_unique<LaunchState>();
    s->kernel = name;
    s->grid = grid;
    s->block = block;
    s->nthreads = block.x * block.y * block.z;
    if (s->nthreads == 0 || s->nthreads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
        grid.y > 65535 || grid.z > 65535)
      throw std::invalid_argument(std::string("emulated kernel ") + name + ": invalid launch configuration");
    s->block_barrier.reset(s->nthreads);
    for (unsigned w = 0; w * 32 < s->nthreads; ++w) {
      s->warp_barriers.push_back(std::make_unique<Barrier>());
      s->warp_barriers.back()->reset(std::min(32u, s->nthreads - w * 32));
    }
    s->exchange.resize(s->warp_barriers.size() * 32 * 16);
    std::tuple<std::decay_t<Args>...> values(std::forward<Args>(args)...);
    // A GPU runs blocks in any order: SGLLIE_EMU_BLOCK_ORDER=reverse lets tests show a result
    // does not depend on it.
    const char* order = std::getenv("SGLLIE_EMU_BLOCK_ORDER");
    const bool reverse = order != nullptr && std::string(order) == "reverse";
    auto body = [&](unsigned tid) {
      current = s.get();
      linear_tid = tid;
      threadIdx = uint3{tid % block.x, tid / block.x % block.y, tid / (block.x * block.y)};
      blockDim = block;
      gridDim = grid;
      try {
        const unsigned long long blocks = 1ull * grid.x * grid.y * grid.z;
        for (unsigned long long k = 0; k < blocks; ++k) {
          const unsigned long long b = reverse ? blocks - 1 - k : k;
          blockIdx = uint3{static_cast<unsigned>(b % grid.x), static_cast<unsigned>(b / grid.x % grid.y),
                           static_cast<unsigned>(b / (1ull * grid.x * grid.y))};
          std::apply([&](const auto&... a) { kernel(static_cast<Params>(a)...); }, values);
          // the next block reuses __shared__ storage: all threads must be done with this one
          s->block_barrier.arrive_and_wait(Barrier::kBlockEnd, *s);
        }
      } catch (const Abort&) {
      } catch (const std::exception& e) {
        s->fail(e.what());
      }
      current = nullptr;
    };
    std::vector<std::thread> threads;
    threads.reserve(s->nthreads);
    for (unsigned t = 0; t < s->nthreads; ++t) threads.emplace_back(body, t);
    for (auto& t : threads) t.join();
    if (s->failed) throw std::runtime_error(s->error);
  }
};

template <typename... Params>
Launch<Params...> launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block) {
  return {name, kernel, grid, block};
}

}  // namespace cuda_emu
