// UTF-8 helpers shared by the tokenizer components.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace tessera::tokenizer {

// Replaces each maximal invalid subpart with U+FFFD (the W3C/Unicode "substitution of maximal
// subparts" practice, as Rust's String::from_utf8_lossy and the WHATWG TextDecoder do).
std::string utf8_lossy(std::string_view bytes);
bool utf8_valid(std::string_view bytes);

// All bytes below 0x80 (eight at a time).
inline bool is_ascii(std::string_view s) {
  size_t i = 0;
  uint64_t bits = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t v;
    std::memcpy(&v, s.data() + i, 8);
    bits |= v;
  }
  for (; i < s.size(); ++i) bits |= static_cast<unsigned char>(s[i]);
  return (bits & 0x8080808080808080ULL) == 0;
}

// Decodes the code point at `pos` of valid UTF-8 and advances `pos`.
char32_t utf8_next(std::string_view s, size_t& pos);
void utf8_append(std::string& out, char32_t cp);
// Byte length of the UTF-8 sequence starting with lead byte `c` (1 for stray bytes).
inline size_t utf8_char_len(unsigned char c) {
  return c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
}

// Unicode predicates as Rust's char methods define them (used where Hugging Face relies on them).
bool is_whitespace(char32_t cp);    // White_Space property
bool is_alphanumeric(char32_t cp);  // L* or N*
bool is_numeric(char32_t cp);       // Nd, Nl, No

// GPT-2 byte-level alphabet: every byte as a printable code point (bytes 33-126, 161-172 and
// 174-255 map to themselves, the rest to 256 + n in order).
char32_t byte_to_char(unsigned char byte);
// The byte a byte-level code point stands for, or -1 when it is not in the alphabet.
int char_to_byte(char32_t cp);

}  // namespace tessera::tokenizer
