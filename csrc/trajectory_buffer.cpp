// The trajectory buffer's implementation and its file format (docs/buffer.md):
//   "PGRAFTBF" | u32 version | u32 n_fields | i64 capacity | i64 size | u8 policy | 7 pad bytes
//   per field: u32 name_len | name | u8 dtype | u8 ndim | i64 dims[ndim]
//   sections, each starting at a multiple of 64 bytes: group i64[size], reward f32[size],
//   round i32[size], rank i32[size], then each field's size * row_bytes bytes
//   trailer at a multiple of 64: u64 checksum of the metadata, u64 checksum per field, "PGRAFTEN"
// All integers little-endian (the host order on every platform pgraft builds for).
#include "trajectory_buffer.h"

#include "gather.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>

namespace pgraft {

namespace {

constexpr char kMagic[8] = {'P', 'G', 'R', 'A', 'F', 'T', 'B', 'F'};
constexpr char kEndMagic[8] = {'P', 'G', 'R', 'A', 'F', 'T', 'E', 'N'};
constexpr uint32_t kVersion = 1;
constexpr int64_t kAlign = 64;
constexpr uint32_t kMaxFields = 1024, kMaxName = 4096, kMaxDims = 16;

int64_t align_up(int64_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

// A 64-bit checksum in four independent lanes (fast enough to verify at memory speed).
uint64_t checksum(const unsigned char* p, int64_t n) {
  const uint64_t prime = 0x100000001b3ULL;
  uint64_t h[4] = {0xcbf29ce484222325ULL, 0x84222325cbf29ce4ULL, 0x9e3779b97f4a7c15ULL, 0xc2b2ae3d27d4eb4fULL};
  int64_t i = 0;
  for (; i + 32 <= n; i += 32)
    for (int l = 0; l < 4; ++l) {
      uint64_t w;
      std::memcpy(&w, p + i + 8 * l, 8);
      h[l] = (h[l] ^ w) * prime;
      h[l] ^= h[l] >> 31;
    }
  uint64_t out = h[0] ^ (h[1] * 3) ^ (h[2] * 5) ^ (h[3] * 7);
  for (; i < n; ++i) out = (out ^ p[i]) * prime;
  return out ^ static_cast<uint64_t>(n);
}

struct Reader {  // bounds-checked reads from a byte range; any overrun is a truncated file
  const unsigned char* p;
  int64_t n, pos = 0;
  const std::string& path;
  void need(int64_t k) const {
    if (k < 0 || pos + k > n) throw BufferError(path + ": truncated file (header ends early)");
  }
  template <typename T>
  T get() {
    need(sizeof(T));
    T v;
    std::memcpy(&v, p + pos, sizeof(T));
    pos += sizeof(T);
    return v;
  }
  std::string bytes(int64_t k) {
    need(k);
    std::string s(reinterpret_cast<const char*>(p + pos), static_cast<size_t>(k));
    pos += k;
    return s;
  }
};

struct Layout {  // byte offsets of every section, derived from the header
  int64_t meta[4];
  std::vector<int64_t> field;
  int64_t trailer, total;
};

Layout layout(int64_t header_bytes, int64_t size, const std::vector<FieldSpec>& fields) {
  Layout l;
  int64_t pos = align_up(header_bytes);
  const int64_t meta_bytes[4] = {8 * size, 4 * size, 4 * size, 4 * size};
  for (int i = 0; i < 4; ++i) {
    l.meta[i] = pos;
    pos = align_up(pos + meta_bytes[i]);
  }
  for (const auto& f : fields) {
    l.field.push_back(pos);
    pos = align_up(pos + size * f.row_bytes());
  }
  l.trailer = pos;
  l.total = pos + 8 * (1 + static_cast<int64_t>(fields.size())) + 8;
  return l;
}

std::string header_bytes(const std::vector<FieldSpec>& fields, int64_t capacity, int64_t size, FullPolicy policy) {
  std::string h(kMagic, 8);
  auto put = [&h](const void* v, size_t k) { h.append(static_cast<const char*>(v), k); };
  const uint32_t version = kVersion, nf = static_cast<uint32_t>(fields.size());
  put(&version, 4);
  put(&nf, 4);
  put(&capacity, 8);
  put(&size, 8);
  const uint8_t pol[8] = {static_cast<uint8_t>(policy), 0, 0, 0, 0, 0, 0, 0};
  put(pol, 8);
  for (const auto& f : fields) {
    const uint32_t len = static_cast<uint32_t>(f.name.size());
    put(&len, 4);
    put(f.name.data(), len);
    const uint8_t dt = static_cast<uint8_t>(f.dtype), nd = static_cast<uint8_t>(f.shape.size());
    put(&dt, 1);
    put(&nd, 1);
    for (int64_t d : f.shape) put(&d, 8);
  }
  return h;
}

uint64_t meta_checksum(const int64_t* g, const float* r, const int32_t* rd, const int32_t* rk, int64_t size) {
  return checksum(reinterpret_cast<const unsigned char*>(g), 8 * size) ^
         (checksum(reinterpret_cast<const unsigned char*>(r), 4 * size) * 3) ^
         (checksum(reinterpret_cast<const unsigned char*>(rd), 4 * size) * 5) ^
         (checksum(reinterpret_cast<const unsigned char*>(rk), 4 * size) * 7);
}

}  // namespace

void validate_fields(const std::vector<FieldSpec>& fields) {
  if (fields.empty()) throw BufferError("a buffer needs at least one field");
  for (size_t i = 0; i < fields.size(); ++i) {
    const auto& f = fields[i];
    if (f.name.empty() || f.name.size() > kMaxName) throw BufferError("field names must have 1 to 4096 characters");
    for (size_t j = 0; j < i; ++j)
      if (fields[j].name == f.name) throw BufferError("duplicate field name '" + f.name + "'");
    if (static_cast<uint8_t>(f.dtype) > 3) throw BufferError("field '" + f.name + "': unknown dtype code");
    if (f.shape.size() > kMaxDims) throw BufferError("field '" + f.name + "': more than 16 dimensions");
    int64_t n = 1;
    for (int64_t d : f.shape) {
      if (d < 1 || d > (int64_t{1} << 40) / n) throw BufferError("field '" + f.name + "': bad dimension");
      n *= d;
    }
  }
}

namespace {

// Parses and validates a header; fills fields/capacity/size/policy and returns the header length.
int64_t parse_header(const unsigned char* p, int64_t n, const std::string& path, std::vector<FieldSpec>& fields,
                     int64_t& capacity, int64_t& size, FullPolicy& policy) {
  Reader r{p, n, 0, path};
  if (n < 8 || std::memcmp(p, kMagic, 8) != 0) throw BufferError(path + ": not a pgraft buffer file (bad magic)");
  r.pos = 8;
  const uint32_t version = r.get<uint32_t>();
  if (version != kVersion)
    throw BufferError(path + ": unsupported buffer file version " + std::to_string(version) + " (this build reads " +
                      std::to_string(kVersion) + ")");
  const uint32_t nf = r.get<uint32_t>();
  if (nf == 0 || nf > kMaxFields) throw BufferError(path + ": corrupt header (field count)");
  capacity = r.get<int64_t>();
  size = r.get<int64_t>();
  const uint8_t pol = r.get<uint8_t>();
  r.pos += 7;
  if (capacity < 1 || size < 0 || size > capacity || pol > 1)
    throw BufferError(path + ": corrupt header (capacity, size or policy)");
  policy = static_cast<FullPolicy>(pol);
  fields.clear();
  for (uint32_t i = 0; i < nf; ++i) {
    FieldSpec f;
    const uint32_t len = r.get<uint32_t>();
    if (len == 0 || len > kMaxName) throw BufferError(path + ": corrupt header (field name length)");
    f.name = r.bytes(len);
    f.dtype = static_cast<DType>(r.get<uint8_t>());
    const uint8_t nd = r.get<uint8_t>();
    if (nd > kMaxDims) throw BufferError(path + ": corrupt header (dimensions)");
    for (uint8_t d = 0; d < nd; ++d) f.shape.push_back(r.get<int64_t>());
    fields.push_back(std::move(f));
  }
  try {
    validate_fields(fields);
  } catch (const BufferError& e) {
    throw BufferError(path + ": corrupt header (" + e.what() + ")");
  }
  return r.pos;
}

}  // namespace

struct Mapping {
  void* addr = nullptr;
  int64_t length = 0;
  ~Mapping() {
    if (addr) munmap(addr, static_cast<size_t>(length));
  }
};

int64_t dtype_size(DType d) { return d == DType::kFloat32 ? 4 : d == DType::kInt64 ? 8 : 2; }

int64_t FieldSpec::row_bytes() const {
  int64_t n = dtype_size(dtype);
  for (int64_t d : shape) n *= d;
  return n;
}

TrajectoryBuffer::TrajectoryBuffer(std::vector<FieldSpec> fields, int64_t capacity, FullPolicy policy,
                                   std::vector<unsigned char*> arenas)
    : fields_(std::move(fields)), capacity_(capacity), policy_(policy), arenas_(std::move(arenas)) {
  validate_fields(fields_);
  if (capacity_ < 1) throw BufferError("capacity must be at least 1");
  if (arenas_.size() != fields_.size()) throw BufferError("one arena per field");
  allocate_meta();
}

TrajectoryBuffer::~TrajectoryBuffer() = default;

void TrajectoryBuffer::allocate_meta() {
  group_store_.assign(capacity_, 0);
  reward_store_.assign(capacity_, 0.f);
  round_store_.assign(capacity_, 0);
  rank_store_.assign(capacity_, 0);
  group_ = group_store_.data();
  reward_ = reward_store_.data();
  round_ = round_store_.data();
  rank_ = rank_store_.data();
}

int TrajectoryBuffer::field_index(const std::string& name) const {
  for (size_t i = 0; i < fields_.size(); ++i)
    if (fields_[i].name == name) return static_cast<int>(i);
  std::string known;
  for (const auto& f : fields_) known += (known.empty() ? "" : ", ") + f.name;
  throw BufferError("unknown field '" + name + "' (fields: " + known + ")");
}

void TrajectoryBuffer::require_writable(const char* what) const {
  if (read_only()) throw BufferError(std::string("cannot ") + what + ": the buffer is a read-only memory map");
}

void TrajectoryBuffer::evict_oldest_round_locked() {
  const int32_t oldest = *std::min_element(round_, round_ + size_);
  std::vector<uint8_t> keep(size_);
  for (int64_t i = 0; i < size_; ++i) keep[i] = round_[i] != oldest;
  compact_locked(keep);
}

int64_t TrajectoryBuffer::compact_locked(const std::vector<uint8_t>& keep) {
  int64_t dst = 0;
  for (int64_t i = 0; i < size_; ++i) {
    if (!keep[i]) continue;
    if (dst != i) {  // dst < i: source and destination rows never overlap
      group_[dst] = group_[i];
      reward_[dst] = reward_[i];
      round_[dst] = round_[i];
      rank_[dst] = rank_[i];
      for (size_t f = 0; f < fields_.size(); ++f) {
        const int64_t rb = fields_[f].row_bytes();
        std::memcpy(arenas_[f] + dst * rb, arenas_[f] + i * rb, rb);
      }
    }
    ++dst;
  }
  size_ = dst;
  return dst;
}

void TrajectoryBuffer::append(int64_t n, const int64_t* group, const float* reward, const int32_t* round,
                              const int32_t* rank, const std::vector<const void*>& data) {
  require_writable("append");
  if (n < 0) throw BufferError("cannot append a negative number of rows");
  if (data.size() != fields_.size()) throw BufferError("append needs one data pointer per field");
  std::lock_guard<std::mutex> lock(mu_);
  if (n > capacity_)
    throw BufferError("cannot append " + std::to_string(n) + " rows to a buffer of capacity " +
                      std::to_string(capacity_));
  while (size_ + n > capacity_) {
    if (policy_ == FullPolicy::kRefuse)
      throw BufferError("buffer full: " + std::to_string(size_) + " of " + std::to_string(capacity_) +
                        " rows used, cannot append " + std::to_string(n) + " (policy: refuse)");
    evict_oldest_round_locked();
  }
  std::memcpy(group_ + size_, group, 8 * n);
  std::memcpy(reward_ + size_, reward, 4 * n);
  std::memcpy(round_ + size_, round, 4 * n);
  std::memcpy(rank_ + size_, rank, 4 * n);
  for (size_t f = 0; f < fields_.size(); ++f) {
    const int64_t rb = fields_[f].row_bytes();
    std::memcpy(arenas_[f] + size_ * rb, data[f], static_cast<size_t>(n * rb));
  }
  size_ += n;
}

int64_t TrajectoryBuffer::compact(const std::vector<uint8_t>& keep) {
  require_writable("compact");
  std::lock_guard<std::mutex> lock(mu_);
  if (static_cast<int64_t>(keep.size()) != size_) throw BufferError("keep mask length differs from the buffer size");
  return compact_locked(keep);
}

int64_t TrajectoryBuffer::select_top_k(int64_t k) {
  if (k < 1) throw BufferError("top-k needs k >= 1");
  std::vector<int64_t> order;
  for (int64_t i = 0; i < size_; ++i)
    if (std::isfinite(reward_[i])) order.push_back(i);
  std::stable_sort(order.begin(), order.end(), [this](int64_t a, int64_t b) {
    return group_[a] != group_[b] ? group_[a] < group_[b] : reward_[a] > reward_[b];
  });
  std::vector<uint8_t> keep(size_, 0);
  int64_t taken = 0;
  for (size_t j = 0; j < order.size(); ++j) {
    if (j > 0 && group_[order[j]] != group_[order[j - 1]]) taken = 0;
    if (taken < k) keep[order[j]] = 1, ++taken;
  }
  return compact(keep);
}

int64_t TrajectoryBuffer::select_threshold(float tau) {
  std::vector<uint8_t> keep(size_);
  for (int64_t i = 0; i < size_; ++i) keep[i] = std::isfinite(reward_[i]) && reward_[i] >= tau;
  return compact(keep);
}

void TrajectoryBuffer::gather(const int64_t* idx, int64_t begin, int64_t end, const std::vector<void*>& out) const {
  if (out.size() != fields_.size()) throw BufferError("gather needs one output per field");
  for (int64_t j = begin; j < end; ++j)
    if (idx[j] < 0 || idx[j] >= size_)
      throw BufferError("gather indices must lie in [0, " + std::to_string(size_) + "), got " +
                        std::to_string(idx[j]));
  for (size_t f = 0; f < fields_.size(); ++f) {
    const int64_t rb = fields_[f].row_bytes();
    gather_rows_range(arenas_[f], static_cast<unsigned char*>(out[f]), idx, rb, begin, end);
  }
}

std::vector<int64_t> TrajectoryBuffer::permutation(uint64_t seed) const {
  // Fisher-Yates driven by splitmix64: the same order on every platform for a given seed.
  std::vector<int64_t> perm(size_);
  for (int64_t i = 0; i < size_; ++i) perm[i] = i;
  uint64_t s = seed;
  for (int64_t i = size_ - 1; i > 0; --i) {
    s += 0x9e3779b97f4a7c15ULL;
    uint64_t z = s;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    std::swap(perm[i], perm[z % static_cast<uint64_t>(i + 1)]);
  }
  return perm;
}

void TrajectoryBuffer::save(const std::string& path) const {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string header = header_bytes(fields_, capacity_, size_, policy_);
  const Layout l = layout(static_cast<int64_t>(header.size()), size_, fields_);
  const std::string tmp = path + ".tmp";
  FILE* fp = std::fopen(tmp.c_str(), "wb");
  if (!fp) throw BufferError("cannot write " + tmp + ": " + std::strerror(errno));
  int64_t pos = 0;
  bool ok = true;
  auto write_at = [&](int64_t offset, const void* data, int64_t n) {
    static const char zeros[kAlign] = {};
    while (ok && pos < offset) {
      const int64_t k = std::min<int64_t>(kAlign, offset - pos);
      ok = std::fwrite(zeros, 1, k, fp) == static_cast<size_t>(k);
      pos += k;
    }
    if (ok && n) ok = std::fwrite(data, 1, n, fp) == static_cast<size_t>(n);
    pos += n;
  };
  write_at(0, header.data(), static_cast<int64_t>(header.size()));
  write_at(l.meta[0], group_, 8 * size_);
  write_at(l.meta[1], reward_, 4 * size_);
  write_at(l.meta[2], round_, 4 * size_);
  write_at(l.meta[3], rank_, 4 * size_);
  std::vector<uint64_t> sums{meta_checksum(group_, reward_, round_, rank_, size_)};
  for (size_t f = 0; f < fields_.size(); ++f) {
    const int64_t bytes = size_ * fields_[f].row_bytes();
    write_at(l.field[f], arenas_[f], bytes);
    sums.push_back(checksum(arenas_[f], bytes));
  }
  write_at(l.trailer, sums.data(), static_cast<int64_t>(8 * sums.size()));
  write_at(pos, kEndMagic, 8);
  ok = ok && std::fflush(fp) == 0 && fsync(fileno(fp)) == 0;
  ok = (std::fclose(fp) == 0) && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw BufferError("failed to write " + path + ": " + std::strerror(errno));
  }
}

namespace {

std::unique_ptr<Mapping> map_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw BufferError("cannot open " + path + ": " + std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    throw BufferError("cannot stat " + path);
  }
  auto m = std::make_unique<Mapping>();
  m->length = st.st_size;
  if (m->length == 0) {
    ::close(fd);
    throw BufferError(path + ": empty file, not a pgraft buffer file");
  }
  // Private, writable pages: a stray write through a tensor view copies the page, never the file.
  m->addr = mmap(nullptr, static_cast<size_t>(m->length), PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (m->addr == MAP_FAILED) {
    m->addr = nullptr;
    throw BufferError("cannot map " + path + ": " + std::strerror(errno));
  }
  return m;
}

// Checks the total length, the end magic and (optionally) every checksum of a mapped file.
void verify_file(const unsigned char* p, int64_t n, const std::string& path, const Layout& l,
                 const std::vector<FieldSpec>& fields, int64_t size, bool checksums) {
  if (n < l.total)
    throw BufferError(path + ": truncated file (" + std::to_string(n) + " bytes, expected " + std::to_string(l.total) +
                      ")");
  if (n > l.total) throw BufferError(path + ": trailing bytes after the buffer (file is corrupt)");
  if (std::memcmp(p + l.total - 8, kEndMagic, 8) != 0) throw BufferError(path + ": corrupt trailer");
  if (!checksums) return;
  std::vector<uint64_t> sums(1 + fields.size());
  std::memcpy(sums.data(), p + l.trailer, 8 * sums.size());
  const auto* g = reinterpret_cast<const int64_t*>(p + l.meta[0]);
  const auto* r = reinterpret_cast<const float*>(p + l.meta[1]);
  const auto* rd = reinterpret_cast<const int32_t*>(p + l.meta[2]);
  const auto* rk = reinterpret_cast<const int32_t*>(p + l.meta[3]);
  if (meta_checksum(g, r, rd, rk, size) != sums[0]) throw BufferError(path + ": checksum mismatch in the row metadata");
  for (size_t f = 0; f < fields.size(); ++f)
    if (checksum(p + l.field[f], size * fields[f].row_bytes()) != sums[1 + f])
      throw BufferError(path + ": checksum mismatch in field '" + fields[f].name + "'");
}

}  // namespace

std::unique_ptr<TrajectoryBuffer> TrajectoryBuffer::read_schema(const std::string& path) {
  auto m = map_file(path);
  std::unique_ptr<TrajectoryBuffer> b(new TrajectoryBuffer());
  int64_t size = 0;
  parse_header(static_cast<const unsigned char*>(m->addr), m->length, path, b->fields_, b->capacity_, size, b->policy_);
  return b;
}

void TrajectoryBuffer::load_into(const std::string& path) {
  if (arenas_.size() != fields_.size()) throw BufferError("load_into needs one arena per field");
  auto m = map_file(path);
  const auto* p = static_cast<const unsigned char*>(m->addr);
  std::vector<FieldSpec> fields;
  int64_t capacity = 0, size = 0;
  FullPolicy policy;
  const int64_t hb = parse_header(p, m->length, path, fields, capacity, size, policy);
  if (capacity != capacity_ || fields.size() != fields_.size())
    throw BufferError(path + ": the file changed while it was being loaded");
  const Layout l = layout(hb, size, fields);
  verify_file(p, m->length, path, l, fields, size, true);
  allocate_meta();
  std::memcpy(group_, p + l.meta[0], 8 * size);
  std::memcpy(reward_, p + l.meta[1], 4 * size);
  std::memcpy(round_, p + l.meta[2], 4 * size);
  std::memcpy(rank_, p + l.meta[3], 4 * size);
  for (size_t f = 0; f < fields.size(); ++f) std::memcpy(arenas_[f], p + l.field[f], size * fields[f].row_bytes());
  size_ = size;
}

std::unique_ptr<TrajectoryBuffer> TrajectoryBuffer::open_mmap(const std::string& path, bool verify) {
  auto m = map_file(path);
  auto* p = static_cast<unsigned char*>(m->addr);
  std::unique_ptr<TrajectoryBuffer> b(new TrajectoryBuffer());
  int64_t size = 0;
  const int64_t hb = parse_header(p, m->length, path, b->fields_, b->capacity_, size, b->policy_);
  const Layout l = layout(hb, size, b->fields_);
  verify_file(p, m->length, path, l, b->fields_, size, verify);
  b->size_ = size;
  b->group_ = reinterpret_cast<int64_t*>(p + l.meta[0]);
  b->reward_ = reinterpret_cast<float*>(p + l.meta[1]);
  b->round_ = reinterpret_cast<int32_t*>(p + l.meta[2]);
  b->rank_ = reinterpret_cast<int32_t*>(p + l.meta[3]);
  for (size_t f = 0; f < b->fields_.size(); ++f) b->arenas_.push_back(p + l.field[f]);
  b->mapping_ = std::move(m);
  return b;
}

}  // namespace pgraft
