#include "core/sys.h"

#include <unistd.h>

#include <fstream>
#include <string>

namespace tessera {

namespace {
int64_t read_status_kb(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  std::string prefix = std::string(key) + ":";
  while (std::getline(f, line)) {
    if (line.rfind(prefix, 0) == 0) return std::stoll(line.substr(prefix.size())) * 1024;
  }
  return 0;
}
}  // namespace

int64_t peak_rss_bytes() { return read_status_kb("VmHWM"); }
int64_t current_rss_bytes() { return read_status_kb("VmRSS"); }

int64_t total_memory_bytes() {
  int64_t total = static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE);
  std::ifstream limit_file("/sys/fs/cgroup/memory.max");
  std::string limit;
  if (limit_file >> limit && limit != "max") {
    int64_t l = std::stoll(limit);
    if (l > 0 && l < total) total = l;
  }
  return total;
}

}  // namespace tessera
