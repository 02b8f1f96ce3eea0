// Per-group top-K over a [G, M] reward table (plain C++17). Semantics of pgraft/kernels/select.py:
// only valid, finite rewards are ranked; the K highest come first in descending order, ties broken
// toward the lower index (the order of a stable descending sort); a row with fewer than K valid
// rewards is padded with -1.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace pgraft {

// Ranks one row. `order` is scratch space of M entries; writes K indices, returns the count.
inline int64_t topk_row(const float* r, const bool* valid, int64_t m, int64_t k, int64_t* order, int64_t* out) {
  int64_t n = 0;
  for (int64_t i = 0; i < m; ++i)
    if ((!valid || valid[i]) && std::isfinite(r[i])) order[n++] = i;
  const int64_t take = std::min(n, k);
  std::partial_sort(order, order + take, order + n,
                    [r](int64_t a, int64_t b) { return r[a] > r[b] || (r[a] == r[b] && a < b); });
  for (int64_t j = 0; j < k; ++j) out[j] = j < take ? order[j] : -1;
  return take;
}

}  // namespace pgraft
