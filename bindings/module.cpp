// pgraft._C: the pybind11 module over csrc/. Arguments are validated in Python
// (pgraft/kernels/*.py) before they reach here; the checks below guard memory safety only.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <cmath>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "denoise_step.h"
#include "gather.h"
#include "group_topk.h"
#include "parallel.h"

namespace {

constexpr int64_t kChunk = 1 << 14;       // elements per parallel task of the step
constexpr int64_t kGatherBytes = 1 << 16;  // bytes per parallel task of a row gather (at least one row)

// float16 as raw binary16 bits, converted in vectorised blocks (csrc/denoise_step.h), where F16C exists.
#if defined(__F16C__)
template <typename T>
using Storage = std::conditional_t<std::is_same_v<T, c10::Half>, uint16_t, T>;
#else
template <typename T>
using Storage = T;
#endif

template <typename T>
void denoise_step_typed(const at::Tensor& x, const at::Tensor& o, const c10::optional<at::Tensor>& u,
                        const c10::optional<at::Tensor>& z, const at::Tensor& step, const at::Tensor& table,
                        double guidance, double clip, const at::Tensor& prev, const c10::optional<at::Tensor>& x0,
                        const c10::optional<at::Tensor>& sumsq) {
  const int64_t rows = x.size(0);
  const int64_t row_len = rows ? x.numel() / rows : 0;
  const int64_t chunks = (row_len + kChunk - 1) / kChunk;
  const int64_t* steps = step.data_ptr<int64_t>();
  const float* coef = table.data_ptr<float>();
  std::vector<double> partial(static_cast<size_t>(rows * chunks), 0.0);
  const T* xp = static_cast<const T*>(x.data_ptr());
  const T* op = static_cast<const T*>(o.data_ptr());
  const T* up = u ? static_cast<const T*>(u->data_ptr()) : nullptr;
  const T* zp = z ? static_cast<const T*>(z->data_ptr()) : nullptr;
  T* pp = static_cast<T*>(prev.data_ptr());
  T* x0p = x0 ? static_cast<T*>(x0->data_ptr()) : nullptr;
  pgraft::parallel_chunks(rows * chunks, 1, at::get_num_threads(), [&](int64_t lo, int64_t hi) {
    for (int64_t task = lo; task < hi; ++task) {
      const int64_t r = task / chunks, c = task % chunks;
      const int64_t off = r * row_len, begin = c * kChunk, end = std::min(row_len, begin + kChunk);
      pgraft::StepArgs<T> a{xp + off, op + off, up ? up + off : nullptr, zp ? zp + off : nullptr, pp + off,
                            x0p ? x0p + off : nullptr, coef + steps[r] * pgraft::kNumCoefficients,
                            static_cast<float>(guidance), static_cast<float>(clip)};
      pgraft::step_range_dispatch<T>(a, begin, end);
      if (sumsq && zp) partial[task] = pgraft::sum_squares<T>(zp + off, begin, end);
    }
  });
  if (sumsq) {
    double* out = sumsq->data_ptr<double>();
    for (int64_t r = 0; r < rows; ++r) {
      double s = 0.0;
      for (int64_t c = 0; c < chunks; ++c) s += partial[r * chunks + c];
      out[r] = s;
    }
  }
}

void denoise_step(const at::Tensor& x, const at::Tensor& o, const c10::optional<at::Tensor>& u,
                  const c10::optional<at::Tensor>& z, const at::Tensor& step, const at::Tensor& table, double guidance,
                  double clip, const at::Tensor& prev, const c10::optional<at::Tensor>& x0,
                  const c10::optional<at::Tensor>& sumsq) {
  TORCH_CHECK(x.is_contiguous() && o.is_contiguous() && prev.is_contiguous(), "tensors must be contiguous");
  TORCH_CHECK(x.device().is_cpu(), "the C++ step runs on CPU tensors");
  TORCH_CHECK(step.scalar_type() == at::kLong && step.numel() == x.size(0), "step must be int64 [B]");
  TORCH_CHECK(table.scalar_type() == at::kFloat && table.size(1) == pgraft::kNumCoefficients, "bad table");
  TORCH_CHECK(step.numel() == 0 || (step.min().item<int64_t>() >= 0 && step.max().item<int64_t>() < table.size(0)),
              "step index out of range");
  for (const auto* t : {&o, &prev}) TORCH_CHECK(t->sizes() == x.sizes() && t->dtype() == x.dtype(), "shape/dtype");
  for (const auto* t : {&u, &z, &x0})
    if (*t) TORCH_CHECK((*t)->sizes() == x.sizes() && (*t)->dtype() == x.dtype() && (*t)->is_contiguous(), "shape");
  if (sumsq) TORCH_CHECK(sumsq->scalar_type() == at::kDouble && sumsq->numel() == x.size(0), "sumsq must be f64 [B]");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "denoise_step", [&] {
    denoise_step_typed<Storage<scalar_t>>(x, o, u, z, step, table, guidance, clip, prev, x0, sumsq);
  });
}

// Gathers rows `indices` of every source into its destination, all tensors in one parallel region.
void gather_rows(const at::Tensor& indices, const std::vector<at::Tensor>& srcs, const std::vector<at::Tensor>& dsts) {
  TORCH_CHECK(srcs.size() == dsts.size(), "one destination per source");
  TORCH_CHECK(indices.scalar_type() == at::kLong && indices.dim() == 1 && indices.is_contiguous(), "indices: int64 [A]");
  const int64_t n = indices.numel();
  const int64_t* idx = indices.data_ptr<int64_t>();
  std::vector<int64_t> row_bytes;
  for (size_t i = 0; i < srcs.size(); ++i) {
    const auto& s = srcs[i];
    const auto& d = dsts[i];
    TORCH_CHECK(s.device().is_cpu() && s.is_contiguous() && d.is_contiguous() && s.dim() >= 1, "contiguous CPU rows");
    TORCH_CHECK(d.dtype() == s.dtype() && d.size(0) == n && d.numel() == (s.size(0) ? s.numel() / s.size(0) : 0) * n,
                "destination shape");
    row_bytes.push_back(s.size(0) ? s.nbytes() / s.size(0) : 0);
    for (int64_t r = 0; r < n; ++r)  // IndexError in Python, which names the range
      if (idx[r] < 0 || idx[r] >= s.size(0))
        throw std::out_of_range("gather indices must lie in [0, " + std::to_string(s.size(0)) + ")");
  }
  const int64_t per = std::max<int64_t>(1, n);
  const int64_t widest = row_bytes.empty() ? 1 : std::max<int64_t>(1, *std::max_element(row_bytes.begin(), row_bytes.end()));
  const int64_t grain = std::max<int64_t>(1, kGatherBytes / widest);
  pgraft::parallel_chunks(static_cast<int64_t>(srcs.size()) * per, grain, at::get_num_threads(), [&](int64_t lo, int64_t hi) {
    for (int64_t task = lo; task < hi;) {  // a contiguous run of rows of one tensor per memcpy loop
      const int64_t t = task / per, begin = task % per, end = std::min(per, begin + (hi - task));
      if (row_bytes[t] && n)
        pgraft::gather_rows_range(static_cast<const unsigned char*>(srcs[t].data_ptr()),
                                  static_cast<unsigned char*>(dsts[t].data_ptr()), idx, row_bytes[t], begin, end);
      task += end - begin;
    }
  });
}

// Per-group top-K of a float32 [G, M] table into idx [G, k] (-1 padding) and counts [G], which the
// caller allocates (so a test can poison them and catch an element left unwritten).
void group_topk(const at::Tensor& rewards, const c10::optional<at::Tensor>& valid, int64_t k, at::Tensor& idx,
                at::Tensor& counts) {
  TORCH_CHECK(rewards.device().is_cpu() && rewards.scalar_type() == at::kFloat && rewards.dim() == 2 &&
                  rewards.is_contiguous(),
              "rewards: contiguous CPU float32 [G, M]");
  const int64_t g = rewards.size(0), m = rewards.size(1);
  TORCH_CHECK(k >= 1 && k <= m, "k must lie in [1, M]");
  if (valid)
    TORCH_CHECK(valid->scalar_type() == at::kBool && valid->sizes() == rewards.sizes() && valid->is_contiguous(),
                "valid: contiguous bool [G, M]");
  TORCH_CHECK(idx.scalar_type() == at::kLong && idx.is_contiguous() && idx.device().is_cpu() &&
                  idx.sizes() == at::IntArrayRef({g, k}),
              "idx: contiguous CPU int64 [G, k]");
  TORCH_CHECK(counts.scalar_type() == at::kLong && counts.is_contiguous() && counts.device().is_cpu() &&
                  counts.numel() == g,
              "counts: contiguous CPU int64 [G]");
  const float* r = rewards.data_ptr<float>();
  const bool* v = valid ? valid->data_ptr<bool>() : nullptr;
  int64_t* ip = idx.data_ptr<int64_t>();
  int64_t* cp = counts.data_ptr<int64_t>();
  pgraft::parallel_chunks(g, std::max<int64_t>(1, 4096 / m), at::get_num_threads(), [&](int64_t lo, int64_t hi) {
    std::vector<int64_t> order(static_cast<size_t>(m));
    for (int64_t row = lo; row < hi; ++row)
      cp[row] = pgraft::topk_row(r + row * m, v ? v + row * m : nullptr, m, k, order.data(), ip + row * k);
  });
}

}  // namespace

void register_buffer(py::module& m);  // bindings/buffer.cpp

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "pgraft's compiled core";
  register_buffer(m);
  m.def("denoise_step", &denoise_step, "fused denoising step (CPU)", py::arg("x"), py::arg("o"), py::arg("u"),
        py::arg("z"), py::arg("step"), py::arg("table"), py::arg("guidance"), py::arg("clip"), py::arg("prev"),
        py::arg("x0"), py::arg("sumsq"));
  m.def(
      "openmp", [] {
#ifdef _OPENMP
        return true;
#else
        return false;
#endif
      },
      "whether the compiled loops run in parallel in this build (setup.py compiles with -fopenmp)");
  m.def("reset_parallel_backoff", &pgraft::reset_backoff,
        "run the next parallel call on every thread again, whatever contention was seen (tests)");
  m.def("group_topk", &group_topk, "per-group top-K (CPU)", py::arg("rewards"), py::arg("valid"), py::arg("k"),
        py::arg("idx"), py::arg("counts"));
  m.def("gather_rows", &gather_rows, "gather rows of several CPU tensors", py::arg("indices"), py::arg("srcs"),
        py::arg("dsts"));
}
