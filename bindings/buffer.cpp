// pybind11 face of csrc/trajectory_buffer.*: arenas are pageable torch tensors (pgraft/buffer.py
// says why not pinned), views handed to Python keep the buffer alive, long copies release the GIL.
// pgraft/buffer.py validates arguments first; the checks here guard memory safety only.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <memory>

#include "parallel.h"
#include "trajectory_buffer.h"

namespace {

using pgraft::BufferError;
using pgraft::DType;

DType to_dtype(const std::string& s) {
  if (s == "float32") return DType::kFloat32;
  if (s == "bfloat16") return DType::kBFloat16;
  if (s == "float16") return DType::kFloat16;
  if (s == "int64") return DType::kInt64;
  throw BufferError("unsupported dtype '" + s + "' (float32, bfloat16, float16, int64)");
}

std::string dtype_name(DType d) {
  switch (d) {
    case DType::kFloat32: return "float32";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat16: return "float16";
    default: return "int64";
  }
}

at::ScalarType scalar_type(DType d) {
  switch (d) {
    case DType::kFloat32: return at::kFloat;
    case DType::kBFloat16: return at::kBFloat16;
    case DType::kFloat16: return at::kHalf;
    default: return at::kLong;
  }
}

struct Buffer : std::enable_shared_from_this<Buffer> {
  std::vector<at::Tensor> arenas;  // owned storage (empty for a memory map)
  std::unique_ptr<pgraft::TrajectoryBuffer> core;

  static std::vector<at::Tensor> make_arenas(const std::vector<pgraft::FieldSpec>& fields, int64_t capacity,
                                             std::vector<unsigned char*>& ptrs) {
    std::vector<at::Tensor> out;
    for (const auto& f : fields) {
      std::vector<int64_t> sizes{capacity};
      sizes.insert(sizes.end(), f.shape.begin(), f.shape.end());
      auto t = at::empty(sizes, at::TensorOptions().dtype(scalar_type(f.dtype)));
      ptrs.push_back(static_cast<unsigned char*>(t.data_ptr()));
      out.push_back(t);
    }
    return out;
  }

  static std::shared_ptr<Buffer> create(const std::vector<std::string>& names, const std::vector<std::string>& dtypes,
                                        const std::vector<std::vector<int64_t>>& shapes, int64_t capacity,
                                        const std::string& policy) {
    if (names.size() != dtypes.size() || names.size() != shapes.size())
      throw BufferError("names, dtypes and shapes must have one entry per field");
    if (policy != "evict_oldest_round" && policy != "refuse")
      throw BufferError("full policy must be 'evict_oldest_round' or 'refuse'");
    if (capacity < 1) throw BufferError("capacity must be at least 1");
    std::vector<pgraft::FieldSpec> fields;
    for (size_t i = 0; i < names.size(); ++i) fields.push_back({names[i], to_dtype(dtypes[i]), shapes[i]});
    auto b = std::make_shared<Buffer>();
    std::vector<unsigned char*> ptrs;
    pgraft::validate_fields(fields);  // before any arena is allocated
    b->arenas = make_arenas(fields, capacity, ptrs);
    b->core = std::make_unique<pgraft::TrajectoryBuffer>(
        fields, capacity, policy == "refuse" ? pgraft::FullPolicy::kRefuse : pgraft::FullPolicy::kEvictOldestRound,
        ptrs);
    return b;
  }

  static std::shared_ptr<Buffer> load(const std::string& path) {
    auto schema = pgraft::TrajectoryBuffer::read_schema(path);
    auto b = std::make_shared<Buffer>();
    std::vector<unsigned char*> ptrs;
    b->arenas = make_arenas(schema->fields(), schema->capacity(), ptrs);
    b->core = std::make_unique<pgraft::TrajectoryBuffer>(schema->fields(), schema->capacity(), schema->policy(), ptrs);
    py::gil_scoped_release release;
    b->core->load_into(path);
    return b;
  }

  static std::shared_ptr<Buffer> open_mmap(const std::string& path, bool verify) {
    auto b = std::make_shared<Buffer>();
    py::gil_scoped_release release;
    b->core = pgraft::TrajectoryBuffer::open_mmap(path, verify);
    return b;
  }

  void append(const std::vector<at::Tensor>& data, const at::Tensor& group, const at::Tensor& reward, int32_t round,
              int32_t rank) {
    const auto& fields = core->fields();
    TORCH_CHECK(data.size() == fields.size(), "one tensor per field");
    const int64_t n = group.numel();
    TORCH_CHECK(group.scalar_type() == at::kLong && reward.scalar_type() == at::kFloat && reward.numel() == n,
                "group int64 [n], reward float32 [n]");
    std::vector<at::Tensor> host;  // CUDA rows are copied to the host first
    std::vector<const void*> ptrs;
    for (size_t i = 0; i < data.size(); ++i) {
      at::Tensor t = data[i].to(at::kCPU).contiguous();
      TORCH_CHECK(t.scalar_type() == scalar_type(fields[i].dtype) && t.dim() >= 1 && t.size(0) == n &&
                      t.numel() * t.element_size() == n * fields[i].row_bytes(),
                  "field '", fields[i].name, "': wrong dtype or shape");
      host.push_back(t);
      ptrs.push_back(t.data_ptr());
    }
    at::Tensor g = group.to(at::kCPU).contiguous(), r = reward.to(at::kCPU).contiguous();
    std::vector<int32_t> rounds(n, round), ranks(n, rank);
    py::gil_scoped_release release;
    core->append(n, g.data_ptr<int64_t>(), r.data_ptr<float>(), rounds.data(), ranks.data(), ptrs);
  }

  void gather(const at::Tensor& idx, const std::vector<at::Tensor>& outs, int threads) {
    const auto& fields = core->fields();
    TORCH_CHECK(idx.scalar_type() == at::kLong && idx.dim() == 1 && idx.is_contiguous() && idx.device().is_cpu(),
                "indices: contiguous CPU int64 [n]");
    TORCH_CHECK(outs.size() == fields.size(), "one output per field");
    std::vector<void*> ptrs;
    for (size_t i = 0; i < outs.size(); ++i) {
      const auto& o = outs[i];
      TORCH_CHECK(o.device().is_cpu() && o.is_contiguous() && o.scalar_type() == scalar_type(fields[i].dtype) &&
                      o.dim() >= 1 && o.size(0) >= idx.numel() &&
                      o.numel() * o.element_size() >= idx.numel() * fields[i].row_bytes(),
                  "output for field '", fields[i].name, "': wrong dtype, shape or device");
      ptrs.push_back(o.data_ptr());
    }
    const int64_t* ip = idx.data_ptr<int64_t>();
    const int64_t n = idx.numel();
    py::gil_scoped_release release;
    int64_t row_bytes = 0;
    for (const auto& f : fields) row_bytes += f.row_bytes();
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, row_bytes));
    pgraft::parallel_chunks(n, grain, threads, [&](int64_t lo, int64_t hi) { core->gather(ip, lo, hi, ptrs); });
  }

  at::Tensor field(const std::string& name) {
    const int i = core->field_index(name);
    const auto& f = core->fields()[i];
    std::vector<int64_t> sizes{core->size()};
    sizes.insert(sizes.end(), f.shape.begin(), f.shape.end());
    auto keep = shared_from_this();  // the view keeps the buffer (and its memory) alive
    return torch::from_blob(const_cast<unsigned char*>(core->field_data(i)), sizes, [keep](void*) {},
                            at::TensorOptions().dtype(scalar_type(f.dtype)));
  }

  py::tuple meta() const {
    const int64_t n = core->size();
    auto copy = [n](const void* p, at::ScalarType t) {
      return torch::from_blob(const_cast<void*>(p), {n}, at::TensorOptions().dtype(t)).clone();
    };
    return py::make_tuple(copy(core->groups(), at::kLong), copy(core->rewards(), at::kFloat),
                          copy(core->rounds(), at::kInt), copy(core->ranks(), at::kInt));
  }

  py::list schema() const {
    py::list out;
    for (const auto& f : core->fields()) out.append(py::make_tuple(f.name, dtype_name(f.dtype), f.shape));
    return out;
  }
};

}  // namespace

void register_buffer(py::module& m) {
  py::register_exception<BufferError>(m, "BufferError", PyExc_ValueError);
  py::class_<Buffer, std::shared_ptr<Buffer>>(m, "TrajectoryBuffer")
      .def_static("create", &Buffer::create, py::arg("names"), py::arg("dtypes"), py::arg("shapes"),
                  py::arg("capacity"), py::arg("policy"))
      .def_static("load", &Buffer::load, py::arg("path"))
      .def_static("open_mmap", &Buffer::open_mmap, py::arg("path"), py::arg("verify"))
      .def("append", &Buffer::append, py::arg("data"), py::arg("group"), py::arg("reward"), py::arg("round"),
           py::arg("rank"))
      .def("gather", &Buffer::gather, py::arg("indices"), py::arg("outs"), py::arg("threads"))
      .def("field", &Buffer::field, py::arg("name"))
      .def("meta", &Buffer::meta)
      .def("schema", &Buffer::schema)
      .def("select_top_k", [](Buffer& b, int64_t k) { return b.core->select_top_k(k); })
      .def("select_threshold", [](Buffer& b, float tau) { return b.core->select_threshold(tau); })
      .def("compact",
           [](Buffer& b, const at::Tensor& keep) {
             TORCH_CHECK(keep.scalar_type() == at::kBool && keep.dim() == 1 && keep.device().is_cpu(),
                         "keep: bool CPU [size]");
             const at::Tensor k = keep.contiguous();
             const auto* p = reinterpret_cast<const uint8_t*>(k.data_ptr<bool>());
             return b.core->compact(std::vector<uint8_t>(p, p + k.numel()));
           })
      .def("permutation",
           [](Buffer& b, uint64_t seed) {
             auto p = b.core->permutation(seed);
             return torch::tensor(p, at::TensorOptions().dtype(at::kLong));
           })
      .def("save",
           [](Buffer& b, const std::string& path) {
             py::gil_scoped_release release;
             b.core->save(path);
           })
      .def_property_readonly("size", [](const Buffer& b) { return b.core->size(); })
      .def_property_readonly("capacity", [](const Buffer& b) { return b.core->capacity(); })
      .def_property_readonly("read_only", [](const Buffer& b) { return b.core->read_only(); })
      .def_property_readonly("policy", [](const Buffer& b) {
        return b.core->policy() == pgraft::FullPolicy::kRefuse ? "refuse" : "evict_oldest_round";
      });
}
