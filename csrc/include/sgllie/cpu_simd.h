// Vector width for the CPU kernels' hot loops. The wheel must run on any x86-64, yet most CPUs
// have AVX2 + FMA (8 floats a step, not SSE2's 4): SGLLIE_SIMD_CLONES builds a function twice,
// for x86-64-v3 and the baseline, and the loader picks one per machine (GCC ifunc). Elsewhere
// (other compilers or architectures) it is empty and the baseline build is used.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define SGLLIE_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define SGLLIE_SIMD_CLONES
#endif
