// Row gather (plain C++17): copy rows idx[begin..end) of a row-major source into consecutive
// rows of a destination. Rows are whole contiguous byte blocks, so each is one memcpy.
#pragma once

#include <cstdint>
#include <cstring>

namespace pgraft {

inline void gather_rows_range(const unsigned char* src, unsigned char* dst, const int64_t* idx, int64_t row_bytes,
                              int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) std::memcpy(dst + r * row_bytes, src + idx[r] * row_bytes, row_bytes);
}

}  // namespace pgraft
