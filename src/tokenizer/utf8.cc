#include "tokenizer/utf8.h"

#include <utf8proc.h>

namespace tessera::tokenizer {
namespace {

// Length of the valid UTF-8 sequence at s[pos], or 0 when it is not valid; `consumed` gets the
// length of the maximal subpart (at least 1) for the invalid case.
size_t valid_sequence(std::string_view s, size_t pos, size_t& consumed) {
  const auto b = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
  const unsigned char c = b(pos);
  consumed = 1;
  if (c < 0x80) return 1;
  size_t len;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range for the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;  // no surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  for (size_t i = 1; i < len; ++i) {
    if (pos + i >= s.size()) return 0;
    const unsigned char ci = b(pos + i);
    const unsigned char l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
    if (ci < l || ci > h) return 0;
    consumed = i + 1;
  }
  return len;
}

}  // namespace

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t pos = 0;
  while (pos < bytes.size()) {
    size_t consumed;
    const size_t len = valid_sequence(bytes, pos, consumed);
    if (len > 0) {
      out.append(bytes.substr(pos, len));
      pos += len;
    } else {
      out.append("\xEF\xBF\xBD");
      pos += consumed;
    }
  }
  return out;
}

bool utf8_valid(std::string_view bytes) {
  size_t pos = 0;
  while (pos < bytes.size()) {
    // Skip ASCII eight bytes at a time.
    while (pos + 8 <= bytes.size()) {
      uint64_t v;
      std::memcpy(&v, bytes.data() + pos, 8);
      if (v & 0x8080808080808080ULL) break;
      pos += 8;
    }
    if (pos >= bytes.size()) break;
    size_t consumed;
    const size_t len = valid_sequence(bytes, pos, consumed);
    if (len == 0) return false;
    pos += len;
  }
  return true;
}

char32_t utf8_next(std::string_view s, size_t& pos) {
  const auto c = static_cast<unsigned char>(s[pos]);
  const size_t len = utf8_char_len(c);
  if (len == 1 || pos + len > s.size()) {
    ++pos;
    return c;
  }
  char32_t cp = c & (0x7F >> len);
  for (size_t i = 1; i < len; ++i) cp = (cp << 6) | (static_cast<unsigned char>(s[pos + i]) & 0x3F);
  pos += len;
  return cp;
}

void utf8_append(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

bool is_whitespace(char32_t cp) {
  if ((cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680)
    return true;
  if (cp >= 0x2000 && cp <= 0x200A) return true;
  return cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

bool is_alphanumeric(char32_t cp) {
  const auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
  return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
         (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO);
}

bool is_numeric(char32_t cp) {
  const auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
  return cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO;
}

namespace {

struct ByteLevelTables {
  char32_t to_char[256];
  int to_byte[512];
  ByteLevelTables() {
    for (int& b : to_byte) b = -1;
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
      to_char[b] = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + extra++);
      to_byte[to_char[b]] = b;
    }
  }
};

const ByteLevelTables& byte_level_tables() {
  static const ByteLevelTables tables;  // immutable after construction
  return tables;
}

}  // namespace

char32_t byte_to_char(unsigned char byte) {
  return byte_level_tables().to_char[byte];
}

int char_to_byte(char32_t cp) {
  return cp < 512 ? byte_level_tables().to_byte[cp] : -1;
}

}  // namespace tessera::tokenizer
