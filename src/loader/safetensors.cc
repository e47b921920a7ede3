#include "loader/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/status.h"

namespace tessera {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {
// The format caps the header at 100 MB; anything larger is a corrupt length.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
}  // namespace

std::map<std::string, TensorInfo> parse_safetensors_header(std::string_view header,
                                                           uint64_t data_size,
                                                           const std::string& source) {
  json j;
  try {
    j = json::parse(header.begin(), header.end());
  } catch (const json::exception& e) {
    fail("{}: malformed safetensors header: {}", source, e.what());
  }
  if (!j.is_object()) fail("{}: malformed safetensors header: not a JSON object", source);
  std::map<std::string, TensorInfo> tensors;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    if (name == "__metadata__") continue;
    const json& e = it.value();
    if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") ||
        !e.contains("data_offsets"))
      fail("{}: tensor \"{}\": header entry needs dtype, shape and data_offsets", source, name);
    TensorInfo info;
    if (!e["dtype"].is_string() ||
        !parse_safetensors_dtype(e["dtype"].get<std::string>(), &info.dtype))
      fail(ErrorKind::kUnsupported, "{}: tensor \"{}\": unsupported dtype {}", source, name,
           e["dtype"].dump());
    if (!e["shape"].is_array() || e["shape"].size() > 8)
      fail("{}: tensor \"{}\": bad shape {}", source, name, e["shape"].dump());
    uint64_t numel = 1;
    for (const auto& d : e["shape"]) {
      if (!d.is_number_unsigned())
        fail("{}: tensor \"{}\": bad shape {}", source, name, e["shape"].dump());
      uint64_t v = d.get<uint64_t>();
      if (v > (1ull << 40) || (v != 0 && numel > (1ull << 50) / v))
        fail("{}: tensor \"{}\": shape {} is too large", source, name, e["shape"].dump());
      numel *= v;
      info.shape.push_back(static_cast<int64_t>(v));
    }
    const json& off = e["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
        !off[1].is_number_unsigned())
      fail("{}: tensor \"{}\": bad data_offsets {}", source, name, off.dump());
    info.begin = off[0].get<uint64_t>();
    info.end = off[1].get<uint64_t>();
    if (info.begin > info.end || info.end > data_size)
      fail(
          "{}: tensor \"{}\": data_offsets [{}, {}] outside the {} bytes of data (truncated file?)",
          source, name, info.begin, info.end, data_size);
    if (info.end - info.begin != numel * dtype_size(info.dtype))
      fail("{}: tensor \"{}\": {} bytes of data for shape {} of {}", source, name,
           info.end - info.begin, e["shape"].dump(), dtype_name(info.dtype));
    tensors.emplace(name, std::move(info));
  }
  // Tensors must not overlap.
  std::vector<std::pair<uint64_t, const std::string*>> order;
  for (const auto& [name, info] : tensors)
    if (info.end > info.begin) order.emplace_back(info.begin, &name);
  std::sort(order.begin(), order.end());
  for (size_t i = 1; i < order.size(); ++i) {
    const TensorInfo& prev = tensors.at(*order[i - 1].second);
    if (order[i].first < prev.end)
      fail("{}: tensors \"{}\" and \"{}\" overlap", source, *order[i - 1].second, *order[i].second);
  }
  return tensors;
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const fs::path& path) {
  const std::string source = path.string();
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(ErrorKind::kNotFound, "cannot open {}: {}", source, std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    fail("cannot stat {}: {}", source, std::strerror(errno));
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    fail("{}: truncated safetensors file ({} bytes)", source, size);
  }
  void* base = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) {
    ::close(fd);
    fail("cannot map {}: {}", source, std::strerror(errno));
  }
  std::shared_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->fd_ = std::shared_ptr<int>(new int(fd), [](int* f) {
    ::close(*f);
    delete f;
  });
  file->path_ = path;
  file->size_ = size;
  file->base_ = static_cast<const char*>(base);
  file->mapping_ = std::shared_ptr<void>(base, [size](void* p) { munmap(p, size); });
  uint64_t header_len = 0;
  std::memcpy(&header_len, base, 8);  // little-endian on every platform we build for
  if (header_len > kMaxHeaderBytes || header_len > size - 8)
    fail("{}: truncated or corrupt safetensors file (header length {} of a {}-byte file)", source,
         header_len, size);
  file->data_offset_ = 8 + header_len;
  file->tensors_ = parse_safetensors_header(std::string_view(file->base_ + 8, header_len),
                                            size - file->data_offset_, source);
  return file;
}

SafetensorsFile::~SafetensorsFile() = default;

void SafetensorsFile::read(uint64_t offset, uint64_t bytes, void* dst) const {
  char* out = static_cast<char*>(dst);
  while (bytes > 0) {
    const ssize_t n =
        ::pread(*fd_, out, std::min<uint64_t>(bytes, 1ull << 30), static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      fail("{}: read failed at byte {}: {}", path_.string(), offset,
           n == 0 ? "unexpected end of file" : std::strerror(errno));
    out += n;
    offset += static_cast<uint64_t>(n);
    bytes -= static_cast<uint64_t>(n);
  }
}

void SafetensorsFile::release_pages(uint64_t offset, uint64_t bytes) const {
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  const uint64_t end = std::min(size_, offset + bytes);
  const uint64_t lo = (offset + page - 1) / page * page, hi = end / page * page;
  if (base_ && lo < hi) madvise(const_cast<char*>(base_) + lo, hi - lo, MADV_DONTNEED);
}

void SafetensorsFile::prefetch(uint64_t offset, uint64_t bytes) const {
  if (offset >= size_) return;
  bytes = std::min(bytes, size_ - offset);
  ::posix_fadvise(*fd_, static_cast<off_t>(offset), static_cast<off_t>(bytes), POSIX_FADV_WILLNEED);
}

Tensor SafetensorsFile::tensor(const std::string& name) const {
  auto it = tensors_.find(name);
  TESSERA_CHECK(it != tensors_.end()) << name << " not in " << path_;
  const TensorInfo& info = it->second;
  void* data = const_cast<char*>(base_ + data_offset_ + info.begin);
  return Tensor::wrap(data, info.shape, info.dtype, mapping_);
}

uint64_t SafetensorsWriter::Entry::bytes() const {
  uint64_t n = dtype_size(dtype);
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

SafetensorsWriter::SafetensorsWriter(const fs::path& path, std::vector<Entry> entries,
                                     const std::map<std::string, std::string>& metadata)
    : path_(path), entries_(std::move(entries)) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const Entry& e : entries_) {
    header[e.name] = {{"dtype", std::string(dtype_name(e.dtype))},
                      {"shape", e.shape},
                      {"data_offsets", {offset, offset + e.bytes()}}};
    offset += e.bytes();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  out_ = std::make_unique<std::ofstream>(path, std::ios::binary | std::ios::trunc);
  if (!*out_) fail("cannot write {}", path.string());
  uint64_t len = text.size();
  out_->write(reinterpret_cast<const char*>(&len), 8);
  out_->write(text.data(), static_cast<std::streamsize>(text.size()));
}

void SafetensorsWriter::append(const void* data, uint64_t bytes) {
  TESSERA_CHECK(next_ < entries_.size()) << "more tensors than declared for " << path_;
  TESSERA_CHECK_EQ(bytes, entries_[next_].bytes());
  out_->write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
  ++next_;
}

void SafetensorsWriter::finish() {
  TESSERA_CHECK_EQ(next_, entries_.size());
  out_->flush();
  if (!*out_) fail("error writing {}", path_.string());
  out_.reset();
}

void write_safetensors(const fs::path& path,
                       const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<const std::pair<std::string, Tensor>*> sorted;
  for (const auto& t : tensors) sorted.push_back(&t);
  std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->first < b->first; });
  std::vector<SafetensorsWriter::Entry> entries;
  for (const auto* t : sorted) {
    TESSERA_CHECK(t->second.is_contiguous());
    entries.push_back({t->first, t->second.dtype(),
                       std::vector<int64_t>(t->second.shape().begin(), t->second.shape().end())});
  }
  SafetensorsWriter writer(path, std::move(entries), metadata);
  for (const auto* t : sorted) writer.append(t->second.raw(), t->second.nbytes());
  writer.finish();
}

}  // namespace tessera
