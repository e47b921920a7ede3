// Regular expressions compiled to a byte-level DFA, for structured outputs: vLLM's
// guided_regex (the whole output) and JSON Schema's "pattern" (the whole string), matched as
// full matches, as vLLM's grammar backends match them. Our own code: the regex libraries on
// Debian (PCRE2, RE2) match whole texts, while constrained decoding needs the state after every
// byte and to know which bytes may come next.
//
// The subset: literals (UTF-8 included), escapes \d \w \s \D \W \S \. \\ \n \t \r \f \v \/ \- and
// \uXXXX, classes [a-z_] and [^...] (ASCII ranges and single non-ASCII code points or ranges),
// '.' (any code point but a line break), groups (...) and (?:...), alternation |, quantifiers
// * + ? {n} {n,} {n,m} (lazy forms taken as greedy: a full match does not care), and ^ / $ at
// the very ends. Anything else (backreferences, lookaround, other anchors) is an error.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace tessera {

class RegexDfa {
 public:
  static constexpr int32_t kDead = -1;
  // Throws tessera::Error (kInvalidArgument) naming what it cannot compile.
  static std::shared_ptr<const RegexDfa> compile(const std::string& pattern);

  int32_t start() const { return 0; }
  // The state after byte c, or kDead when no full match can follow (states from which no
  // accepting state is reachable are dead too, so a live state can always still match).
  int32_t next(int32_t state, unsigned char c) const {
    return table_[static_cast<size_t>(state) * 256 + c];
  }
  bool accepting(int32_t state) const { return accepting_[static_cast<size_t>(state)] != 0; }
  // Whether some byte leads on from the state.
  bool can_continue(int32_t state) const { return continues_[static_cast<size_t>(state)] != 0; }
  int32_t num_states() const { return static_cast<int32_t>(accepting_.size()); }

 private:
  std::vector<int32_t> table_;  // [states, 256]
  std::vector<char> accepting_, continues_;
};

}  // namespace tessera
