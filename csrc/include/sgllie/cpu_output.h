// Output buffers of the CPU kernels. A fresh large buffer is mapped page by page as it is first
// written, and with 4 KiB pages those faults cost more than the kernel itself (a 4K frame's
// output: 25 000 faults, ~20 ms on a 2-core EPYC; the curve needs ~10). Advising transparent huge
// pages before the first write makes it 512x fewer faults. Advice only: where THP is disabled or
// the platform has no madvise, nothing changes. (torch's own THP_MEM_ALLOC_ENABLE=1 does the
// same for every allocation of the process; this keeps the effect to our outputs.)
#pragma once

#include <ATen/ATen.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <cstdint>

namespace sgllie {

inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr std::uintptr_t kHuge = std::uintptr_t(1) << 21;
  if (t.nbytes() < 4 * kHuge) return;  // small buffers come from the allocator's warm heap
  const auto p = reinterpret_cast<std::uintptr_t>(t.data_ptr());
  const std::uintptr_t begin = (p + kHuge - 1) & ~(kHuge - 1), end = (p + t.nbytes()) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)t;
#endif
}

inline at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
  advise_huge_pages(t);
  return t;
}

inline at::Tensor new_output_like(const at::Tensor& like) {
  return new_output(like.sizes(), like.options().memory_format(at::MemoryFormat::Contiguous));
}

}  // namespace sgllie
