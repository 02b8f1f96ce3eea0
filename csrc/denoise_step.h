// One fused denoising step over a contiguous range of one row (plain C++17, no Python headers).
//
// The update is the affine form of pgraft/models/schedule.py, with per-row coefficients
// c = {a0, b0, c0, cx, co, sigma, log_sigma}:
//   o      = u + w·(o − u)                       (classifier-free guidance, when u is given)
//   x̂_0    = clamp(a0·x + b0·o, ±clip)           (no clamp when clip is not finite)
//   x_prev = c0·x̂_0 + cx·x + co·o + sigma·z
// Storage type T is float, or any 16-bit float type convertible to and from float; arithmetic is
// float32. One pass over memory: each element is read once from each input and written once.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace pgraft {

constexpr int kNumCoefficients = 7;

template <typename T>
struct StepArgs {
  const T* x;
  const T* o;
  const T* u;   // nullptr: no guidance
  const T* z;   // nullptr: no noise
  T* prev;      // may alias x (in-place)
  T* x0;        // nullptr: not written
  const float* coef;  // this row's kNumCoefficients coefficients
  float guidance;
  float clip;   // not finite: no clipping
};

// Processes elements [begin, end) of one row. The loop has no reduction, so the compiler
// vectorises it (a floating-point reduction would need -ffast-math); Σz² is a separate pass.
template <typename T, bool kGuided, bool kNoise, bool kClip, bool kWriteX0, bool kInPlace>
void step_range(const StepArgs<T>& a, int64_t begin, int64_t end) {
  const float a0 = a.coef[0], b0 = a.coef[1], c0 = a.coef[2], cx = a.coef[3], co = a.coef[4], sg = a.coef[5];
  const float w = a.guidance, clip = a.clip;
  // No two pointers alias, so the loop vectorises; in place, x is read through prev itself.
  const T* __restrict__ xs = kInPlace ? nullptr : a.x;
  const T* __restrict__ os = a.o;
  const T* __restrict__ us = a.u;
  const T* __restrict__ zs = a.z;
  T* __restrict__ prevs = a.prev;
  T* __restrict__ x0s = a.x0;
  for (int64_t i = begin; i < end; ++i) {
    const float x = static_cast<float>(kInPlace ? prevs[i] : xs[i]);
    float o = static_cast<float>(os[i]);
    if constexpr (kGuided) {
      const float u = static_cast<float>(us[i]);
      o = u + w * (o - u);
    }
    float x0 = a0 * x + b0 * o;
    if constexpr (kClip) x0 = std::min(std::max(x0, -clip), clip);
    float prev = c0 * x0 + cx * x + co * o;
    if constexpr (kNoise) prev += sg * static_cast<float>(zs[i]);
    prevs[i] = static_cast<T>(prev);
    if constexpr (kWriteX0) x0s[i] = static_cast<T>(x0);
  }
}

// Σ z² over [begin, end), in 8 float lanes (vectorisable) summed in double at the end.
template <typename T>
double sum_squares(const T* z, int64_t begin, int64_t end) {
  float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = begin;
  for (; i + 8 <= end; i += 8)
    for (int k = 0; k < 8; ++k) {
      const float v = static_cast<float>(z[i + k]);
      lane[k] += v * v;
    }
  double total = 0.0;
  for (; i < end; ++i) total += static_cast<double>(static_cast<float>(z[i])) * static_cast<float>(z[i]);
  for (float v : lane) total += v;
  return total;
}

// Picks the specialisation for the flags at run time, once per range (not per element).
template <typename T, bool kInPlace>
void step_range_flags(const StepArgs<T>& a, int64_t begin, int64_t end) {
  const bool guided = a.u != nullptr, noise = a.z != nullptr, clip = std::isfinite(a.clip), x0 = a.x0 != nullptr;
#define PGRAFT_CASE(G, N, C, X) \
  if (guided == G && noise == N && clip == C && x0 == X) return step_range<T, G, N, C, X, kInPlace>(a, begin, end);
  PGRAFT_CASE(true, true, true, true) PGRAFT_CASE(true, true, true, false)
  PGRAFT_CASE(true, true, false, true) PGRAFT_CASE(true, true, false, false)
  PGRAFT_CASE(true, false, true, true) PGRAFT_CASE(true, false, true, false)
  PGRAFT_CASE(true, false, false, true) PGRAFT_CASE(true, false, false, false)
  PGRAFT_CASE(false, true, true, true) PGRAFT_CASE(false, true, true, false)
  PGRAFT_CASE(false, true, false, true) PGRAFT_CASE(false, true, false, false)
  PGRAFT_CASE(false, false, true, true) PGRAFT_CASE(false, false, true, false)
  PGRAFT_CASE(false, false, false, true) PGRAFT_CASE(false, false, false, false)
#undef PGRAFT_CASE
}

template <typename T>
void step_range_dispatch(const StepArgs<T>& a, int64_t begin, int64_t end) {
  if (a.prev == a.x) {
    step_range_flags<T, true>(a, begin, end);
  } else {
    step_range_flags<T, false>(a, begin, end);
  }
}

#if defined(__F16C__)
// float16 storage (IEEE binary16 bits in uint16_t). Compilers convert _Float16 and c10::Half one
// element at a time (scalar vcvtph2ps), which left the float16 step at a quarter of the bfloat16
// one's bandwidth; here blocks are converted 8 lanes at a time with F16C, stepped by the float
// loop above from L1-resident buffers, and converted back.
inline void half_to_float(const uint16_t* s, float* d, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i))));
  for (; i < n; ++i) d[i] = _cvtsh_ss(s[i]);
}

inline void float_to_half(const float* s, uint16_t* d, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i), _mm256_cvtps_ph(_mm256_loadu_ps(s + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < n; ++i) d[i] = _cvtss_sh(s[i], _MM_FROUND_TO_NEAREST_INT);
}

template <>
inline void step_range_dispatch<uint16_t>(const StepArgs<uint16_t>& a, int64_t begin, int64_t end) {
  constexpr int64_t kBlock = 512;
  alignas(64) float x[kBlock], o[kBlock], u[kBlock], z[kBlock], prev[kBlock], x0[kBlock];
  for (int64_t b = begin; b < end; b += kBlock) {
    const int64_t n = std::min(kBlock, end - b);
    half_to_float(a.x + b, x, n);  // read before prev is written: in place works too
    half_to_float(a.o + b, o, n);
    if (a.u) half_to_float(a.u + b, u, n);
    if (a.z) half_to_float(a.z + b, z, n);
    const StepArgs<float> f{x, o, a.u ? u : nullptr, a.z ? z : nullptr, prev, a.x0 ? x0 : nullptr,
                            a.coef, a.guidance, a.clip};
    step_range_flags<float, false>(f, 0, n);
    float_to_half(prev, a.prev + b, n);
    if (a.x0) float_to_half(x0, a.x0 + b, n);
  }
}

template <>
inline double sum_squares<uint16_t>(const uint16_t* z, int64_t begin, int64_t end) {
  constexpr int64_t kBlock = 512;
  alignas(64) float v[kBlock];
  double total = 0.0;
  for (int64_t b = begin; b < end; b += kBlock) {
    const int64_t n = std::min(kBlock, end - b);
    half_to_float(z + b, v, n);
    total += sum_squares<float>(v, 0, n);
  }
  return total;
}
#endif

}  // namespace pgraft
