// Work division of the compiled CPU loops (plain C++17 + OpenMP): chunks claimed one at a time,
// and a thread count that backs off when another thread is not getting its core.
//
// at::parallel_for splits [0, n) into one contiguous share per thread, and its OpenMP region ends
// with a barrier every thread must reach. On a busy node (reward workers, data loaders, other
// jobs) the OS may leave one thread off its core for a whole time slice: its share waits and the
// other thread spins at the barrier. Measured on 2 cores with one busy: the C++ step 2.5x, the
// buffer gather 4.8x slower than on one thread (docs/kernels.md, "A busy core"). Two remedies:
// 1. threads claim chunks of `grain` items from a shared counter (dynamic scheduling), so the
//    thread that runs does the work that is left;
// 2. the barrier itself cannot be skipped (OpenMP joins every thread it started), so each call
//    measures how long the calling thread waited at it after its last chunk; a wait longer than
//    half its own working time means a thread did not run when it should have, and the following
//    calls run on the calling thread alone (as fast as the single-thread path), 16 calls the first
//    time, doubling while the contention lasts (at most 4096), then one call probes again.
// The OpenMP threads are torch's own, already awake between torch's operators: a separate pool
// would wait for a core that torch's spinning threads hold (measured: no gain on a quiet machine).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace pgraft {

namespace detail {
inline std::atomic<int64_t>& serial_calls_left() {
  static std::atomic<int64_t> left{0};
  return left;
}
inline std::atomic<int64_t>& backoff() {
  static std::atomic<int64_t> calls{0};
  return calls;
}
inline double now_us() {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace detail

// Forgets any back-off: the next call uses every thread again (tests reach the parallel path).
inline void reset_backoff() {
  detail::serial_calls_left().store(0, std::memory_order_relaxed);
  detail::backoff().store(0, std::memory_order_relaxed);
}

// Calls fn(lo, hi) on consecutive chunks [lo, hi) of [0, n), of `grain` items (the last ragged),
// on up to `threads` threads. Every item is processed exactly once, whatever the thread count,
// the grain or the back-off; fn must not throw.
template <class F>
void parallel_chunks(int64_t n, int64_t grain, int threads, F&& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  const int64_t chunks = (n + grain - 1) / grain;
  const int t = static_cast<int>(std::min<int64_t>(std::max(1, threads), chunks));
  auto serial = [&] {
    for (int64_t c = 0; c < chunks; ++c) fn(c * grain, std::min(n, (c + 1) * grain));
  };
#ifdef _OPENMP
  if (t > 1 && !omp_in_parallel()) {
    auto& left = detail::serial_calls_left();
    if (left.load(std::memory_order_relaxed) > 0) {
      left.fetch_sub(1, std::memory_order_relaxed);
      serial();
      return;
    }
    std::atomic<int64_t> next{0};
    double start = 0.0, caller_done = 0.0;
#pragma omp parallel num_threads(t)
    {
      const bool caller = omp_get_thread_num() == 0;
      if (caller) start = detail::now_us();
      for (int64_t c = next.fetch_add(1, std::memory_order_relaxed); c < chunks;
           c = next.fetch_add(1, std::memory_order_relaxed))
        fn(c * grain, std::min(n, (c + 1) * grain));
      if (caller) caller_done = detail::now_us();
    }
    const double waited = detail::now_us() - caller_done, worked = caller_done - start;
    auto& backoff = detail::backoff();
    if (waited > 50.0 && waited > 0.5 * worked) {
      const int64_t calls = std::min<int64_t>(4096, std::max<int64_t>(16, 2 * backoff.load(std::memory_order_relaxed)));
      backoff.store(calls, std::memory_order_relaxed);
      left.store(calls, std::memory_order_relaxed);
    } else {
      backoff.store(0, std::memory_order_relaxed);
    }
    return;
  }
#endif
  serial();
}

}  // namespace pgraft
