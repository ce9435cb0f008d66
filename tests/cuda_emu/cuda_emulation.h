// The CUDA execution model on the host, so csrc/cuda/*.cu run on CPU tensors in the tests (never
// shipped: csrc/include/sgllie/cuda_launch.h includes it only under SGLLIE_CUDA_EMULATION).
//
// A launch runs its blocks one after another (in order, or reversed: SGLLIE_EMU_BLOCK_ORDER). A
// block's threads are fibers (ucontext) on the launching host thread, each with its own stack:
// a thread runs until it waits at __syncthreads, a warp shuffle or the end of its block, then the
// next one runs (in thread order, or reversed: SGLLIE_EMU_THREAD_ORDER), so one block's threads
// interleave exactly at their barriers. __shared__ variables are function-static storage, sound
// because one block runs at a time. Being cooperative, the schedule is deterministic and a deadlock
// is seen at once (every live thread waits and no barrier can complete), reported as an error
// naming the barrier, never a hang; so is a thread that leaves the block while others wait at a
// __syncthreads. Host threads with real barriers (the first design) cost ~100x more per launch.
#pragma once

#include <cuda_runtime_api.h>  // cudaStream_t, cudaError_t (declarations only: nothing is linked)
#include <vector_types.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include <ucontext.h>

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

enum Kind { kSync, kBlockEnd, kWarp };

struct Barrier {
  unsigned expected = 0, arrived = 0;
  unsigned long generation = 0;
  int kinds = 0;  // bit set of the kinds arrived in this phase
};

struct Fiber {
  ucontext_t context;
  char* stack = nullptr;
  unsigned tid = 0;
  bool done = false;
  Barrier* waiting = nullptr;  // blocked until its generation moves on
  unsigned long wait_generation = 0;
};

struct LaunchState {
  std::string kernel;
  dim3 grid, block;
  unsigned nthreads = 0;
  std::vector<Fiber> fibers;
  ucontext_t scheduler;
  Fiber* running = nullptr;
  Barrier block_barrier;
  std::vector<Barrier> warp_barriers;
  std::vector<unsigned char> exchange;  // 32 lanes x 16 bytes per warp, for shuffles
  bool failed = false;
  std::string error;
  std::function<void()> body;  // what every fiber runs

  void fail(const std::string& why) {
    if (!failed) error = "emulated kernel " + kernel + ": " + why;
    failed = true;
  }
};

inline thread_local LaunchState* current = nullptr;

inline void fiber_entry() { current->body(); }

// Back to the scheduler until the barrier this fiber waits at completes (or the launch fails).
inline void arrive_and_wait(Barrier& b, Kind kind) {
  LaunchState& s = *current;
  b.kinds |= 1 << kind;
  if ((b.kinds & (1 << kSync)) && (b.kinds & (1 << kBlockEnd)))
    s.fail("a thread left the block while others waited at __syncthreads (a __syncthreads not "
           "reached by every thread of the block)");
  if (s.failed) throw Abort{};
  if (++b.arrived == b.expected) {  // the last to arrive releases the others
    b.arrived = 0;
    b.kinds = 0;
    ++b.generation;
    return;
  }
  Fiber& self = *s.running;
  self.waiting = &b;
  self.wait_generation = b.generation;
  swapcontext(&self.context, &s.scheduler);
  if (s.failed) throw Abort{};
}

}  // namespace cuda_emu

// The built-in variables: the scheduler sets them for the thread it runs.
inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;
constexpr int warpSize = 32;
using std::max;  // CUDA's global min/max overloads
using std::min;

inline void __syncthreads() { cuda_emu::arrive_and_wait(cuda_emu::current->block_barrier, cuda_emu::kSync); }

namespace cuda_emu {

inline unsigned linear_tid() { return current->running->tid; }
inline unsigned warp_of() { return linear_tid() / 32; }

// Every lane of the warp publishes v, then reads lane `src` (its own value where src is out of range).
template <typename T>
T exchange(T v, int src) {
  static_assert(sizeof(T) <= 16 && std::is_trivially_copyable_v<T>);
  LaunchState& s = *current;
  Barrier& bar = s.warp_barriers[warp_of()];
  unsigned char* buf = s.exchange.data() + warp_of() * 32 * 16;
  const unsigned lane = linear_tid() % 32, lanes = std::min(32u, s.nthreads - warp_of() * 32);
  std::memcpy(buf + lane * 16, &v, sizeof(T));
  arrive_and_wait(bar, kWarp);
  T out = v;
  if (src >= 0 && static_cast<unsigned>(src) < lanes) std::memcpy(&out, buf + src * 16, sizeof(T));
  arrive_and_wait(bar, kWarp);  // nobody overwrites the buffer before all have read
  return out;
}

}  // namespace cuda_emu

inline unsigned __lane() { return cuda_emu::linear_tid() % 32; }
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
  cuda_emu::arrive_and_wait(cuda_emu::current->warp_barriers[cuda_emu::warp_of()], cuda_emu::kWarp);
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

  static constexpr size_t kStack = 256 * 1024;  // per thread; kernels keep small arrays on it

  template <typename... Args>
  void operator()(Args&&... args) const {
    LaunchState s;
    s.kernel = name;
    s.grid = grid;
    s.block = block;
    s.nthreads = block.x * block.y * block.z;
    if (s.nthreads == 0 || s.nthreads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
        grid.y > 65535 || grid.z > 65535)
      throw std::invalid_argument(std::string("emulated kernel ") + name + ": invalid launch configuration");
    s.block_barrier.expected = s.nthreads;
    s.warp_barriers.resize((s.nthreads + 31) / 32);
    for (unsigned w = 0; w < s.warp_barriers.size(); ++w)
      s.warp_barriers[w].expected = std::min(32u, s.nthreads - w * 32);
    s.exchange.resize(s.warp_barriers.size() * 32 * 16);
    const std::tuple<std::decay_t<Args>...> values(std::forward<Args>(args)...);
    const char* block_order = std::getenv("SGLLIE_EMU_BLOCK_ORDER");
    const char* thread_order = std::getenv("SGLLIE_EMU_THREAD_ORDER");
    const bool reverse_blocks = block_order != nullptr && std::string(block_order) == "reverse";
    const bool reverse_threads = thread_order != nullptr && std::string(thread_order) == "reverse";

    // Each fiber runs every block in turn, meeting the others at the end of each.
    s.body = [&] {
      try {
        const unsigned long long blocks = 1ull * grid.x * grid.y * grid.z;
        for (unsigned long long k = 0; k < blocks; ++k) {
          const unsigned long long b = reverse_blocks ? blocks - 1 - k : k;
          blockIdx = uint3{static_cast<unsigned>(b % grid.x), static_cast<unsigned>(b / grid.x % grid.y),
                           static_cast<unsigned>(b / (1ull * grid.x * grid.y))};
          std::apply([&](const auto&... a) { kernel(static_cast<Params>(a)...); }, values);
          // the next block reuses __shared__ storage: every thread must be done with this one
          arrive_and_wait(s.block_barrier, kBlockEnd);
        }
      } catch (const Abort&) {
      } catch (const std::exception& e) {
        s.fail(e.what());
      }
      s.running->done = true;
    };  // returns to the scheduler (uc_link)

    static thread_local std::vector<std::unique_ptr<char[]>> stacks;  // reused across launches
    while (stacks.size() < s.nthreads) stacks.emplace_back(new char[kStack]);
    s.fibers.resize(s.nthreads);
    for (unsigned t = 0; t < s.nthreads; ++t) {
      Fiber& f = s.fibers[t];
      f.tid = t;
      getcontext(&f.context);
      f.context.uc_stack.ss_sp = stacks[t].get();
      f.context.uc_stack.ss_size = kStack;
      f.context.uc_link = &s.scheduler;
      makecontext(&f.context, &fiber_entry, 0);
    }

    LaunchState* outer = current;  // a launch from inside a kernel is not supported; restore anyway
    current = &s;
    blockDim = block;
    gridDim = grid;
    for (;;) {
      bool live = false, progressed = false;
      for (unsigned k = 0; k < s.nthreads; ++k) {
        Fiber& f = s.fibers[reverse_threads ? s.nthreads - 1 - k : k];
        if (f.done) continue;
        live = true;
        if (!s.failed && f.waiting != nullptr && f.waiting->generation == f.wait_generation) continue;
        f.waiting = nullptr;
        s.running = &f;
        threadIdx = uint3{f.tid % block.x, f.tid / block.x % block.y, f.tid / (block.x * block.y)};
        swapcontext(&s.scheduler, &f.context);
        progressed = true;
      }
      if (!live) break;
      if (!progressed) {  // every live thread waits and none can be released
        bool at_warp = false;
        for (const Fiber& f : s.fibers)
          at_warp |= !f.done && f.waiting != nullptr && f.waiting != &s.block_barrier;
        s.fail(at_warp ? "deadlock at a warp shuffle (not every lane of the warp reached it)"
                       : "deadlock at __syncthreads (not every thread of the block reached it)");
      }  // a failed launch resumes its waiting threads once more: they unwind and finish
    }
    current = outer;
    if (s.failed) throw std::runtime_error(s.error);
  }
};

template <typename... Params>
Launch<Params...> launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block) {
  return {name, kernel, grid, block};
}

}  // namespace cuda_emu
