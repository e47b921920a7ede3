// Markers in streamed model output (<tool_call>, </think>, ...), for the parsers that split it.
#pragma once

#include <algorithm>
#include <string>
#include <string_view>

namespace tessera {

// Bytes at the end of `text` that begin `marker`: held back while streaming, since the next
// token may complete it.
inline size_t marker_start_at_end(const std::string& text, std::string_view marker) {
  for (size_t n = std::min(text.size(), marker.size() - 1); n > 0; --n)
    if (text.compare(text.size() - n, n, marker.substr(0, n)) == 0) return n;
  return 0;
}

// Bytes of `text` before `marker`, or, while it has not come, before what may become it.
inline size_t bytes_before_marker(const std::string& text, std::string_view marker) {
  const size_t at = text.find(marker);
  return at != std::string::npos ? at : text.size() - marker_start_at_end(text, marker);
}

}  // namespace tessera
