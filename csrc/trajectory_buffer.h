// The trajectory buffer: a fixed-capacity, group-indexed host store of accepted rows
// (plain C++17, no Python headers). Each row has a group id, a reward, a round, a rank and any
// number of named fields of fixed shape and dtype; each field lives in one contiguous arena.
// Arenas are owned by the caller (the bindings allocate them as pinned torch tensors when CUDA
// is present) or, for a read-only buffer, by a memory mapping of a saved file.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace pgraft {

enum class DType : uint8_t { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2, kInt64 = 3 };
enum class FullPolicy : uint8_t { kEvictOldestRound = 0, kRefuse = 1 };

int64_t dtype_size(DType d);


struct FieldSpec {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;  // per row
  int64_t row_bytes() const;
};

// Every error a caller can cause; the message names the cause.
struct BufferError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Throws BufferError naming the problem: no fields, bad or duplicate names, dtypes, dimensions.
void validate_fields(const std::vector<FieldSpec>& fields);

struct Mapping;  // a read-only memory-mapped file (defined in the .cpp)

class TrajectoryBuffer {
 public:
  // `arenas[i]` must hold capacity * fields[i].row_bytes() bytes and outlive the buffer.
  TrajectoryBuffer(std::vector<FieldSpec> fields, int64_t capacity, FullPolicy policy,
                   std::vector<unsigned char*> arenas);
  ~TrajectoryBuffer();

  // Reads a file's schema (capacity, fields, policy) so the caller can allocate arenas, then
  // `load_into` fills them. `open_mmap` maps the file read-only instead (no arenas needed).
  static std::unique_ptr<TrajectoryBuffer> read_schema(const std::string& path);
  void load_into(const std::string& path);
  static std::unique_ptr<TrajectoryBuffer> open_mmap(const std::string& path, bool verify);

  // Written to `path + ".tmp"`, flushed, then renamed: a reader sees the old file or the new one.
  void save(const std::string& path) const;

  // Appends n rows (thread-safe). data[i] points to n rows of field i. When full: evicts whole
  // oldest rounds, or throws, by the policy.
  void append(int64_t n, const int64_t* group, const float* reward, const int32_t* round, const int32_t* rank,
              const std::vector<const void*>& data);

  // Per-group selection over the stored rewards, then compaction (row order is kept).
  // Semantics of pgraft/kernels/select.py: non-finite rewards never kept; the k highest per
  // group, ties to the lowest row; threshold keeps reward >= tau. Returns the rows kept.
  int64_t select_top_k(int64_t k);
  int64_t select_threshold(float tau);
  int64_t compact(const std::vector<uint8_t>& keep);

  // Copies rows idx[begin..end) of every field into rows begin..end of out[i]; callers split
  // [0, n) across threads (the ranges are independent). Throws on an index outside [0, size).
  void gather(const int64_t* idx, int64_t begin, int64_t end, const std::vector<void*>& out) const;
  // A seeded permutation of [0, size) (for shuffled minibatches).
  std::vector<int64_t> permutation(uint64_t seed) const;

  int64_t size() const { return size_; }
  int64_t capacity() const { return capacity_; }
  FullPolicy policy() const { return policy_; }
  bool read_only() const { return mapping_ != nullptr; }
  const std::vector<FieldSpec>& fields() const { return fields_; }
  int field_index(const std::string& name) const;
  const unsigned char* field_data(int i) const { return arenas_[i]; }
  const int64_t* groups() const { return group_; }
  const float* rewards() const { return reward_; }
  const int32_t* rounds() const { return round_; }
  const int32_t* ranks() const { return rank_; }

 private:
  TrajectoryBuffer() = default;
  void allocate_meta();
  void evict_oldest_round_locked();
  int64_t compact_locked(const std::vector<uint8_t>& keep);
  void require_writable(const char* what) const;

  std::vector<FieldSpec> fields_;
  int64_t capacity_ = 0;
  int64_t size_ = 0;
  FullPolicy policy_ = FullPolicy::kRefuse;
  std::vector<unsigned char*> arenas_;
  // Row metadata: owned vectors, or pointers into the mapping for a read-only buffer.
  std::vector<int64_t> group_store_;
  std::vector<float> reward_store_;
  std::vector<int32_t> round_store_, rank_store_;
  int64_t* group_ = nullptr;
  float* reward_ = nullptr;
  int32_t *round_ = nullptr, *rank_ = nullptr;
  std::unique_ptr<Mapping> mapping_;
  mutable std::mutex mu_;
};

}  // namespace pgraft
