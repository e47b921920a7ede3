#include "engine/regex_dfa.h"

#include <algorithm>
#include <map>
#include <utility>

#include "core/status.h"

namespace tessera {

namespace {

constexpr uint32_t kMaxCodePoint = 0x10FFFF;
constexpr size_t kMaxNfaStates = 200000;
constexpr size_t kMaxDfaStates = 20000;
constexpr int kMaxRepeat = 1000;

using Ranges = std::vector<std::pair<uint32_t, uint32_t>>;  // code point ranges, inclusive

// Sorted, merged, and without the surrogates (which UTF-8 text cannot hold).
Ranges normalize(Ranges r) {
  Ranges cut;
  for (auto [lo, hi] : r) {
    if (lo <= 0xD7FF) cut.push_back({lo, std::min<uint32_t>(hi, 0xD7FF)});
    if (hi >= 0xE000) cut.push_back({std::max<uint32_t>(lo, 0xE000), hi});
  }
  std::sort(cut.begin(), cut.end());
  Ranges out;
  for (auto [lo, hi] : cut) {
    if (lo > hi) continue;
    if (!out.empty() && lo <= out.back().second + 1)
      out.back().second = std::max(out.back().second, hi);
    else
      out.push_back({lo, hi});
  }
  return out;
}

Ranges complement(const Ranges& r) {
  Ranges n = normalize(r), out;
  uint32_t next = 0;
  for (auto [lo, hi] : n) {
    if (lo > next) out.push_back({next, lo - 1});
    next = hi + 1;
  }
  if (next <= kMaxCodePoint) out.push_back({next, kMaxCodePoint});
  return normalize(out);
}

struct Node {
  enum class Kind { kEmpty, kClass, kCat, kAlt, kRepeat };
  Kind kind = Kind::kEmpty;
  Ranges ranges;                                // kClass
  std::vector<std::unique_ptr<Node>> children;  // kCat, kAlt, kRepeat (one)
  int min = 0, max = -1;                        // kRepeat (max -1: unbounded)
};

std::unique_ptr<Node> class_node(Ranges r) {
  auto n = std::make_unique<Node>();
  n->kind = Node::Kind::kClass;
  n->ranges = normalize(std::move(r));
  return n;
}

const Ranges kDigit = {{'0', '9'}};
const Ranges kWord = {{'0', '9'}, {'A', 'Z'}, {'_', '_'}, {'a', 'z'}};
const Ranges kSpace = {{'\t', '\r'}, {' ', ' '}};

class Parser {
 public:
  explicit Parser(const std::string& p) : p_(p) {}

  std::unique_ptr<Node> parse() {
    if (at('^')) ++pos_;
    auto n = parse_alt();
    if (pos_ < p_.size()) error(p_[pos_] == ')' ? "unbalanced ')'" : "unexpected character");
    return n;
  }

 private:
  [[noreturn]] void error(const std::string& what) const {
    fail("regex: {} at offset {} of \"{}\"", what, pos_, p_);
  }
  bool at(char c) const { return pos_ < p_.size() && p_[pos_] == c; }
  bool at_end_anchor() const { return at('$') && pos_ + 1 == p_.size(); }

  std::unique_ptr<Node> parse_alt() {
    auto first = parse_cat();
    if (!at('|')) return first;
    auto n = std::make_unique<Node>();
    n->kind = Node::Kind::kAlt;
    n->children.push_back(std::move(first));
    while (at('|')) {
      ++pos_;
      n->children.push_back(parse_cat());
    }
    return n;
  }

  std::unique_ptr<Node> parse_cat() {
    auto n = std::make_unique<Node>();
    n->kind = Node::Kind::kCat;
    while (pos_ < p_.size() && !at('|') && !at(')')) {
      if (at_end_anchor()) {
        ++pos_;
        break;
      }
      n->children.push_back(parse_repeat());
    }
    return n;
  }

  std::unique_ptr<Node> parse_repeat() {
    auto atom = parse_atom();
    while (pos_ < p_.size()) {
      int lo, hi;
      const char c = p_[pos_];
      if (c == '*') {
        lo = 0, hi = -1;
        ++pos_;
      } else if (c == '+') {
        lo = 1, hi = -1;
        ++pos_;
      } else if (c == '?') {
        lo = 0, hi = 1;
        ++pos_;
      } else if (c == '{') {
        ++pos_;
        lo = number();
        hi = lo;
        if (at(',')) {
          ++pos_;
          hi = at('}') ? -1 : number();
        }
        if (!at('}')) error("malformed {n,m} quantifier");
        ++pos_;
        if (hi >= 0 && hi < lo) error("{n,m} with m < n");
      } else {
        break;
      }
      if (at('?')) ++pos_;  // lazy: the same set of full matches
      auto r = std::make_unique<Node>();
      r->kind = Node::Kind::kRepeat;
      r->min = lo;
      r->max = hi;
      r->children.push_back(std::move(atom));
      atom = std::move(r);
    }
    return atom;
  }

  int number() {
    size_t start = pos_;
    long v = 0;
    while (pos_ < p_.size() && p_[pos_] >= '0' && p_[pos_] <= '9') {
      v = v * 10 + (p_[pos_] - '0');
      if (v > kMaxRepeat) error("a repeat count above " + std::to_string(kMaxRepeat));
      ++pos_;
    }
    if (pos_ == start) error("malformed {n,m} quantifier");
    return static_cast<int>(v);
  }

  uint32_t code_point() {
    const auto b = static_cast<unsigned char>(p_[pos_]);
    int len = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 0;
    if (len == 0 || pos_ + len > p_.size()) error("invalid UTF-8");
    uint32_t cp = len == 1 ? b : b & (0x7F >> len);
    for (int i = 1; i < len; ++i)
      cp = (cp << 6) | (static_cast<unsigned char>(p_[pos_ + i]) & 0x3F);
    pos_ += len;
    return cp;
  }

  uint32_t hex(int digits) {
    uint32_t v = 0;
    for (int i = 0; i < digits; ++i, ++pos_) {
      if (pos_ >= p_.size()) error("truncated hex escape");
      const char c = p_[pos_];
      const int d = c >= '0' && c <= '9'   ? c - '0'
                    : c >= 'a' && c <= 'f' ? c - 'a' + 10
                    : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                           : -1;
      if (d < 0) error("bad hex digit");
      v = v * 16 + static_cast<uint32_t>(d);
    }
    return v;
  }

  // After a backslash: a class (\d ...) in *cls, or one code point.
  uint32_t escape(Ranges* cls, bool in_class) {
    if (pos_ >= p_.size()) error("trailing backslash");
    const char c = p_[pos_++];
    switch (c) {
      case 'd':
        *cls = kDigit;
        return 0;
      case 'D':
        *cls = complement(kDigit);
        return 0;
      case 'w':
        *cls = kWord;
        return 0;
      case 'W':
        *cls = complement(kWord);
        return 0;
      case 's':
        *cls = kSpace;
        return 0;
      case 'S':
        *cls = complement(kSpace);
        return 0;
      case 'n':
        return '\n';
      case 't':
        return '\t';
      case 'r':
        return '\r';
      case 'f':
        return '\f';
      case 'v':
        return '\v';
      case '0':
        return 0;
      case 'u':
        return hex(4);
      case 'x':
        return hex(2);
      case 'b':
        if (in_class) return '\b';
        error("word boundaries (\\b) are not supported");
      default:
        break;
    }
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '1' && c <= '9'))
      error(std::string("the escape \\") + c + " is not supported");
    --pos_;
    return code_point();  // an escaped punctuation mark (or any other character) stands for itself
  }

  std::unique_ptr<Node> parse_class() {
    bool negate = false;
    if (at('^')) {
      negate = true;
      ++pos_;
    }
    Ranges r;
    bool first = true;
    while (true) {
      if (pos_ >= p_.size()) error("unterminated [ class");
      if (at(']') && !first) {
        ++pos_;
        break;
      }
      first = false;
      Ranges cls;
      uint32_t lo;
      if (at('\\')) {
        ++pos_;
        lo = escape(&cls, true);
        if (!cls.empty()) {
          r.insert(r.end(), cls.begin(), cls.end());
          continue;
        }
      } else {
        lo = code_point();
      }
      uint32_t hi = lo;
      if (at('-') && pos_ + 1 < p_.size() && p_[pos_ + 1] != ']') {
        ++pos_;
        if (at('\\')) {
          ++pos_;
          hi = escape(&cls, true);
          if (!cls.empty()) error("a class escape cannot end a range");
        } else {
          hi = code_point();
        }
        if (hi < lo) error("a range out of order");
      }
      r.push_back({lo, hi});
    }
    return class_node(negate ? complement(r) : r);
  }

  std::unique_ptr<Node> parse_atom() {
    if (pos_ >= p_.size()) error("unexpected end");
    const char c = p_[pos_];
    if (c == '(') {
      ++pos_;
      if (at('?')) {
        ++pos_;
        if (at(':')) {
          ++pos_;
        } else if (at('P') || (at('<') && pos_ + 1 < p_.size() && p_[pos_ + 1] != '=' &&
                               p_[pos_ + 1] != '!')) {
          // A named group: the name is irrelevant to matching.
          const size_t close = p_.find('>', pos_);
          if (close == std::string::npos) error("unterminated group name");
          pos_ = close + 1;
        } else {
          error("lookaround and inline flags are not supported");
        }
      }
      auto inner = parse_alt();
      if (!at(')')) error("missing ')'");
      ++pos_;
      return inner;
    }
    if (c == '[') {
      ++pos_;
      return parse_class();
    }
    if (c == '.') {
      ++pos_;
      return class_node(complement({{'\n', '\n'}}));
    }
    if (c == '\\') {
      ++pos_;
      Ranges cls;
      const uint32_t cp = escape(&cls, false);
      return class_node(cls.empty() ? Ranges{{cp, cp}} : cls);
    }
    if (c == '*' || c == '+' || c == '?' || c == '{') error("nothing to repeat");
    if (c == '^' || c == '$') error("anchors are only supported at the very start and end");
    const uint32_t cp = code_point();
    return class_node({{cp, cp}});
  }

  const std::string& p_;
  size_t pos_ = 0;
};

// Byte-range sequences whose concatenations are exactly the UTF-8 encodings of [lo, hi] (one
// encoded length): split until each byte position ranges independently.
void utf8_same_length(uint32_t lo, uint32_t hi, int n,
                      std::vector<std::vector<std::pair<uint8_t, uint8_t>>>& out) {
  for (int i = 1; i < n; ++i) {
    const uint32_t m = (1u << (6 * i)) - 1;
    if ((lo & ~m) != (hi & ~m)) {
      if ((lo & m) != 0) {
        utf8_same_length(lo, lo | m, n, out);
        utf8_same_length((lo | m) + 1, hi, n, out);
        return;
      }
      if ((hi & m) != m) {
        utf8_same_length(lo, (hi & ~m) - 1, n, out);
        utf8_same_length(hi & ~m, hi, n, out);
        return;
      }
    }
  }
  auto encode = [n](uint32_t cp, uint8_t* b) {
    if (n == 1) {
      b[0] = static_cast<uint8_t>(cp);
      return;
    }
    for (int k = n - 1; k > 0; --k) {
      b[k] = static_cast<uint8_t>(0x80 | (cp & 0x3F));
      cp >>= 6;
    }
    b[0] = static_cast<uint8_t>((0xF00u >> n) | cp);
  };
  uint8_t a[4], b[4];
  encode(lo, a);
  encode(hi, b);
  std::vector<std::pair<uint8_t, uint8_t>> seq;
  for (int k = 0; k < n; ++k) seq.push_back({a[k], b[k]});
  out.push_back(std::move(seq));
}

void utf8_sequences(uint32_t lo, uint32_t hi,
                    std::vector<std::vector<std::pair<uint8_t, uint8_t>>>& out) {
  static const uint32_t kLast[] = {0x7F, 0x7FF, 0xFFFF, 0x10FFFF};
  for (int n = 1; n <= 4; ++n) {
    const uint32_t first = n == 1 ? 0 : kLast[n - 2] + 1;
    const uint32_t a = std::max(lo, first), b = std::min(hi, kLast[n - 1]);
    if (a <= b) utf8_same_length(a, b, n, out);
  }
}

struct Nfa {
  struct Edge {
    uint8_t lo, hi;
    int to;
  };
  struct State {
    std::vector<Edge> edges;
    std::vector<int> eps;
  };
  std::vector<State> states;
  struct Frag {
    int start, end;
  };

  int add() {
    if (states.size() >= kMaxNfaStates) fail("regex: the pattern is too large");
    states.emplace_back();
    return static_cast<int>(states.size()) - 1;
  }

  Frag build(const Node& n) {
    switch (n.kind) {
      case Node::Kind::kEmpty: {
        const int s = add();
        return {s, s};
      }
      case Node::Kind::kClass: {
        const int s = add(), e = add();
        std::vector<std::vector<std::pair<uint8_t, uint8_t>>> seqs;
        for (auto [lo, hi] : n.ranges) utf8_sequences(lo, hi, seqs);
        for (const auto& seq : seqs) {
          int from = s;
          for (size_t k = 0; k < seq.size(); ++k) {
            const int to = k + 1 == seq.size() ? e : add();
            states[from].edges.push_back({seq[k].first, seq[k].second, to});
            from = to;
          }
        }
        return {s, e};
      }
      case Node::Kind::kCat: {
        const int s = add();
        int end = s;
        for (const auto& c : n.children) {
          const Frag f = build(*c);
          states[end].eps.push_back(f.start);
          end = f.end;
        }
        return {s, end};
      }
      case Node::Kind::kAlt: {
        const int s = add(), e = add();
        for (const auto& c : n.children) {
          const Frag f = build(*c);
          states[s].eps.push_back(f.start);
          states[f.end].eps.push_back(e);
        }
        return {s, e};
      }
      case Node::Kind::kRepeat: {
        const Node& child = *n.children[0];
        const int s = add();
        int end = s;
        for (int i = 0; i < n.min; ++i) {
          const Frag f = build(child);
          states[end].eps.push_back(f.start);
          end = f.end;
        }
        if (n.max < 0) {  // then any number more: a loop
          const int hub = add();
          states[end].eps.push_back(hub);
          const Frag f = build(child);
          states[hub].eps.push_back(f.start);
          states[f.end].eps.push_back(hub);
          return {s, hub};
        }
        for (int i = n.min; i < n.max; ++i) {  // up to max - min optional copies
          const Frag f = build(child);
          const int skip = add();
          states[end].eps.push_back(f.start);
          states[end].eps.push_back(skip);
          states[f.end].eps.push_back(skip);
          end = skip;
        }
        return {s, end};
      }
    }
    return {0, 0};
  }

  void closure(std::vector<int>& set) const {
    std::vector<char> in(states.size(), 0);
    std::vector<int> todo = set;
    for (int s : set) in[s] = 1;
    while (!todo.empty()) {
      const int s = todo.back();
      todo.pop_back();
      for (int t : states[s].eps)
        if (!in[t]) {
          in[t] = 1;
          set.push_back(t);
          todo.push_back(t);
        }
    }
    std::sort(set.begin(), set.end());
  }
};

}  // namespace

std::shared_ptr<const RegexDfa> RegexDfa::compile(const std::string& pattern) {
  const std::unique_ptr<Node> ast = Parser(pattern).parse();
  Nfa nfa;
  const Nfa::Frag whole = nfa.build(*ast);

  // Subset construction: DFA state = the epsilon closure of a set of NFA states.
  std::map<std::vector<int>, int32_t> index;
  std::vector<std::vector<int>> sets;
  std::vector<int32_t> table;
  std::vector<char> accepting;
  auto intern = [&](std::vector<int> set) {
    auto [it, added] = index.emplace(set, static_cast<int32_t>(sets.size()));
    if (added) {
      if (sets.size() >= kMaxDfaStates) fail("regex: \"{}\" needs too many states", pattern);
      accepting.push_back(std::binary_search(set.begin(), set.end(), whole.end));
      sets.push_back(std::move(set));
      table.resize(sets.size() * 256, kDead);
    }
    return it->second;
  };
  std::vector<int> start = {whole.start};
  nfa.closure(start);
  intern(start);
  for (size_t d = 0; d < sets.size(); ++d) {
    // Bytes split into runs on which every edge of the set agrees.
    std::vector<int> cuts = {0, 256};
    for (int s : sets[d])
      for (const Nfa::Edge& e : nfa.states[s].edges) {
        cuts.push_back(e.lo);
        cuts.push_back(e.hi + 1);
      }
    std::sort(cuts.begin(), cuts.end());
    cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
    for (size_t k = 0; k + 1 < cuts.size(); ++k) {
      const int c = cuts[k];
      std::vector<int> next;
      for (int s : sets[d])
        for (const Nfa::Edge& e : nfa.states[s].edges)
          if (e.lo <= c && c <= e.hi) next.push_back(e.to);
      if (next.empty()) continue;
      std::sort(next.begin(), next.end());
      next.erase(std::unique(next.begin(), next.end()), next.end());
      nfa.closure(next);
      const int32_t to = intern(std::move(next));
      for (int b = c; b < cuts[k + 1]; ++b) table[d * 256 + b] = to;
    }
  }

  // Live states reach an accepting one; edges into the others are dead.
  const size_t n = sets.size();
  std::vector<std::vector<int32_t>> back(n);
  for (size_t d = 0; d < n; ++d)
    for (int b = 0; b < 256; ++b)
      if (table[d * 256 + b] != kDead) back[table[d * 256 + b]].push_back(static_cast<int32_t>(d));
  std::vector<char> live(n, 0);
  std::vector<int32_t> todo;
  for (size_t d = 0; d < n; ++d)
    if (accepting[d]) {
      live[d] = 1;
      todo.push_back(static_cast<int32_t>(d));
    }
  while (!todo.empty()) {
    const int32_t d = todo.back();
    todo.pop_back();
    for (int32_t p : back[d])
      if (!live[p]) {
        live[p] = 1;
        todo.push_back(p);
      }
  }
  if (!live[0]) fail("regex: \"{}\" matches no text", pattern);
  auto dfa = std::shared_ptr<RegexDfa>(new RegexDfa());
  dfa->table_ = std::move(table);
  dfa->accepting_ = std::move(accepting);
  dfa->continues_.assign(n, 0);
  for (size_t d = 0; d < n; ++d)
    for (int b = 0; b < 256; ++b) {
      int32_t& t = dfa->table_[d * 256 + b];
      if (t != kDead && !live[t]) t = kDead;
      if (t != kDead) dfa->continues_[d] = 1;
    }
  return dfa;
}

}  // namespace tessera
