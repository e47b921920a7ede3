// Python semantics of Jinja values: truth, str(), repr(), ==, ordering, json.dumps.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>

#include <utf8proc.h>

#include "core/status.h"
#include "tokenizer/jinja/internal.h"

namespace tessera::jinja {

Value Value::make_list(std::vector<Value> items, bool tuple) {
  auto l = std::make_shared<ListObj>();
  l->items = std::move(items);
  l->tuple = tuple;
  Value v;
  v.kind = kList;
  v.list = std::move(l);
  return v;
}

Value Value::make_dict(std::vector<std::pair<Value, Value>> items) {
  auto d = std::make_shared<DictObj>();
  d->items = std::move(items);
  Value v;
  v.kind = kDict;
  v.dict = std::move(d);
  return v;
}

const Value* DictObj::find(std::string_view key) const {
  for (const auto& [k, v] : items)
    if (k.kind == Value::kString && k.s == key) return &v;
  return nullptr;
}

const Value* DictObj::find(const Value& key) const {
  if (key.kind == Value::kString) return find(std::string_view(key.s));
  for (const auto& [k, v] : items)
    if (equal(k, key)) return &v;
  return nullptr;
}

Value* NamespaceObj::find(std::string_view name) {
  for (auto& [k, v] : attrs)
    if (k == name) return &v;
  return nullptr;
}

void fail_at(int line, const std::string& what) {
  throw Error("template: line " + std::to_string(line) + ": " + what);
}

// ---- UTF-8 ----

std::vector<uint32_t> decode_utf8(std::string_view s) {
  std::vector<uint32_t> out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    int n = 0;
    uint32_t cp = c;
    if (c < 0x80) {
      n = 0;
    } else if ((c & 0xE0) == 0xC0) {
      n = 1;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      n = 2;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      n = 3;
      cp = c & 0x07;
    } else {
      out.push_back(0xFFFD);  // invalid lead byte
      ++i;
      continue;
    }
    bool ok = true;
    for (int k = 1; ok && k <= n; ++k) {
      if (i + k >= s.size()) {
        ok = false;
        break;
      }
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) {
        ok = false;
        break;
      }
      cp = (cp << 6) | (cc & 0x3F);
    }
    if (!ok) {
      out.push_back(0xFFFD);
      ++i;
      continue;
    }
    out.push_back(cp);
    i += n + 1;
  }
  return out;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

size_t utf8_length(std::string_view s) {
  size_t n = 0;
  bool ascii = true;
  for (const char c : s) {
    if (static_cast<unsigned char>(c) >= 0x80) {
      ascii = false;
      break;
    }
  }
  if (ascii) return s.size();
  n = decode_utf8(s).size();
  return n;
}

bool is_py_space(uint32_t cp) {
  if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x1F);
  if (cp < 0x85) return false;
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
         cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

std::string py_strip(std::string_view s, const Value* chars, bool left, bool right) {
  const bool by_space = chars == nullptr || chars->is_none() || chars->is_undefined();
  std::vector<uint32_t> set;
  if (!by_space) set = decode_utf8(chars->s);
  const auto strip_it = [&](uint32_t cp) {
    if (by_space) return is_py_space(cp);
    return std::find(set.begin(), set.end(), cp) != set.end();
  };
  // Code point boundaries are found by stepping over continuation bytes, so the result is a
  // substring of `s` and untouched text is never decoded.
  const auto cp_at = [&](size_t i, size_t& len) {
    const auto c = static_cast<unsigned char>(s[i]);
    len = c < 0x80             ? 1
          : (c & 0xE0) == 0xC0 ? 2
          : (c & 0xF0) == 0xE0 ? 3
          : (c & 0xF8) == 0xF0 ? 4
                               : 1;
    if (i + len > s.size()) len = 1;
    if (len == 1) return static_cast<uint32_t>(c < 0x80 ? c : 0xFFFD);
    const auto cps = decode_utf8(s.substr(i, len));
    if (cps.size() != 1) len = 1;
    return cps.size() == 1 ? cps[0] : 0xFFFD;
  };
  size_t b = 0, e = s.size();
  if (left) {
    while (b < e) {
      size_t len;
      if (!strip_it(cp_at(b, len))) break;
      b += len;
    }
  }
  if (right) {
    while (e > b) {
      size_t start = e - 1;
      while (start > b && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80 && e - start < 4)
        --start;
      size_t len;
      const uint32_t cp = cp_at(start, len);
      if (start + len != e) {
        // Not a well-formed sequence ending at e: treat the last byte alone.
        start = e - 1;
        if (!strip_it(0xFFFD)) break;
        e = start;
        continue;
      }
      if (!strip_it(cp)) break;
      e = start;
    }
  }
  return std::string(s.substr(b, e - b));
}

namespace {

bool ascii_only(std::string_view s) {
  for (const char c : s)
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  return true;
}

// Cased letters: categories Lu, Ll, Lt.
bool is_cased(uint32_t cp) {
  const auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
  return cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL || cat == UTF8PROC_CATEGORY_LT;
}

uint32_t to_lower(uint32_t cp) {
  return static_cast<uint32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(cp)));
}
uint32_t to_title(uint32_t cp) {
  return static_cast<uint32_t>(utf8proc_totitle(static_cast<utf8proc_int32_t>(cp)));
}

void append_upper(std::string& out, uint32_t cp) {
  if (cp == 0xDF) {  // ß has no single-character upper case; Python gives "SS"
    out += "SS";
    return;
  }
  append_utf8(out, static_cast<uint32_t>(utf8proc_toupper(static_cast<utf8proc_int32_t>(cp))));
}

}  // namespace

std::string py_lower(std::string_view s) {
  if (ascii_only(s)) return ascii_lower(s);
  std::string out;
  for (const uint32_t cp : decode_utf8(s)) append_utf8(out, to_lower(cp));
  return out;
}

std::string py_upper(std::string_view s) {
  if (ascii_only(s)) return ascii_upper(s);
  std::string out;
  for (const uint32_t cp : decode_utf8(s)) append_upper(out, cp);
  return out;
}

std::string py_title(std::string_view s) {
  std::string out;
  bool prev_cased = false;
  for (const uint32_t cp : decode_utf8(s)) {
    if (prev_cased) {
      append_utf8(out, to_lower(cp));
    } else {
      append_utf8(out, to_title(cp));
    }
    prev_cased = is_cased(cp);
  }
  return out;
}

std::string py_capitalize(std::string_view s) {
  std::string out;
  bool first = true;
  for (const uint32_t cp : decode_utf8(s)) {
    append_utf8(out, first ? to_title(cp) : to_lower(cp));
    first = false;
  }
  return out;
}

bool py_islower(std::string_view s) {
  bool any = false;
  for (const uint32_t cp : decode_utf8(s)) {
    if (!is_cased(cp)) continue;
    if (utf8proc_category(static_cast<utf8proc_int32_t>(cp)) != UTF8PROC_CATEGORY_LL) return false;
    any = true;
  }
  return any;
}

bool py_isupper(std::string_view s) {
  bool any = false;
  for (const uint32_t cp : decode_utf8(s)) {
    if (!is_cased(cp)) continue;
    if (utf8proc_category(static_cast<utf8proc_int32_t>(cp)) != UTF8PROC_CATEGORY_LU) return false;
    any = true;
  }
  return any;
}

bool py_isalpha(uint32_t cp) {
  const auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
  return cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO;
}

bool py_isalnum(uint32_t cp) {
  const auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
  return py_isalpha(cp) || cat == UTF8PROC_CATEGORY_ND || cat == UTF8PROC_CATEGORY_NL ||
         cat == UTF8PROC_CATEGORY_NO;
}

std::string ascii_lower(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

std::string ascii_upper(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  return out;
}

// ---- truth, names, str, repr ----

bool truthy(const Value& v) {
  switch (v.kind) {
    case Value::kUndefined:
    case Value::kNone:
      return false;
    case Value::kBool:
      return v.b;
    case Value::kInt:
      return v.i != 0;
    case Value::kFloat:
      return v.f != 0;
    case Value::kString:
      return !v.s.empty();
    case Value::kList:
      return !v.list->items.empty();
    case Value::kDict:
      return !v.dict->items.empty();
    case Value::kObject:
      return true;
  }
  return false;
}

std::string type_name(const Value& v) {
  switch (v.kind) {
    case Value::kUndefined:
      return "Undefined";
    case Value::kNone:
      return "NoneType";
    case Value::kBool:
      return "bool";
    case Value::kInt:
      return "int";
    case Value::kFloat:
      return "float";
    case Value::kString:
      return "str";
    case Value::kList:
      return v.list->tuple ? "tuple" : "list";
    case Value::kDict:
      return "dict";
    case Value::kObject:
      switch (v.obj->type) {
        case Object::kNamespace:
          return "Namespace";
        case Object::kLoop:
          return "LoopContext";
        case Object::kMacro:
          return "Macro";
        case Object::kCycler:
          return "Cycler";
        case Object::kJoiner:
          return "Joiner";
        default:
          return "function";
      }
  }
  return "object";
}

std::string float_repr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof(buf), d, std::chars_format::scientific);
  std::string sci(buf, r.ptr);
  // sci: [-]d[.ddd]e(+|-)XX
  std::string sign;
  size_t p = 0;
  if (sci[0] == '-') {
    sign = "-";
    p = 1;
  }
  const size_t epos = sci.find('e');
  std::string digits;
  for (size_t k = p; k < epos; ++k)
    if (sci[k] != '.') digits += sci[k];
  const int exp = std::stoi(sci.substr(epos + 1));
  std::string out = sign;
  if (exp >= -4 && exp < 16) {
    if (exp >= 0) {
      const size_t int_digits = static_cast<size_t>(exp) + 1;
      if (digits.size() <= int_digits) {
        out += digits + std::string(int_digits - digits.size(), '0') + ".0";
      } else {
        out += digits.substr(0, int_digits) + "." + digits.substr(int_digits);
      }
    } else {
      out += "0." + std::string(static_cast<size_t>(-exp - 1), '0') + digits;
    }
  } else {
    out += digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char e[16];
    std::snprintf(e, sizeof(e), "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
    out += e;
  }
  return out;
}

// Code points Python's str.isprintable() rejects among those templates may meet (controls,
// separators, format characters, private use); the full Unicode table is not reproduced.
static bool py_nonprintable(uint32_t cp) {
  if (cp < 0x20 || (cp >= 0x7F && cp <= 0xA0) || cp == 0xAD) return true;
  if (cp < 0x300) return false;
  return cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200F) || (cp >= 0x2028 && cp <= 0x202F) ||
         (cp >= 0x205F && cp <= 0x206F) || cp == 0x3000 || (cp >= 0xD800 && cp <= 0xF8FF) ||
         cp == 0xFEFF || (cp >= 0xFFF0 && cp <= 0xFFFB) || cp == 0xFFFE || cp == 0xFFFF ||
         cp >= 0xF0000;
}

std::string string_repr(std::string_view s) {
  const bool has_single = s.find('\'') != std::string_view::npos;
  const bool has_double = s.find('"') != std::string_view::npos;
  const char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  for (const uint32_t cp : decode_utf8(s)) {
    if (cp == static_cast<uint32_t>(quote) || cp == '\\') {
      out += '\\';
      out += static_cast<char>(cp);
    } else if (cp == '\n') {
      out += "\\n";
    } else if (cp == '\r') {
      out += "\\r";
    } else if (cp == '\t') {
      out += "\\t";
    } else if (py_nonprintable(cp)) {
      char buf[16];
      if (cp < 0x100) {
        std::snprintf(buf, sizeof(buf), "\\x%02x", cp);
      } else if (cp < 0x10000) {
        std::snprintf(buf, sizeof(buf), "\\u%04x", cp);
      } else {
        std::snprintf(buf, sizeof(buf), "\\U%08x", cp);
      }
      out += buf;
    } else {
      append_utf8(out, cp);
    }
  }
  out += quote;
  return out;
}

static void repr_into(const Value& v, std::string& out, int depth);

static void repr_into(const Value& v, std::string& out, int depth) {
  if (depth > kMaxDepth) throw PyError("value nested too deeply to print");
  switch (v.kind) {
    case Value::kString:
      out += string_repr(v.s);
      return;
    case Value::kList: {
      const auto& items = v.list->items;
      out += v.list->tuple ? '(' : '[';
      for (size_t k = 0; k < items.size(); ++k) {
        if (k) out += ", ";
        repr_into(items[k], out, depth + 1);
      }
      if (v.list->tuple && items.size() == 1) out += ',';
      out += v.list->tuple ? ')' : ']';
      return;
    }
    case Value::kDict: {
      out += '{';
      bool first = true;
      for (const auto& [k, val] : v.dict->items) {
        if (!first) out += ", ";
        first = false;
        repr_into(k, out, depth + 1);
        out += ": ";
        repr_into(val, out, depth + 1);
      }
      out += '}';
      return;
    }
    case Value::kObject:
      if (v.obj->type == Object::kNamespace) {
        out += "<Namespace {";
        bool first = true;
        for (const auto& [k, val] : static_cast<const NamespaceObj&>(*v.obj).attrs) {
          if (!first) out += ", ";
          first = false;
          out += string_repr(k) + ": ";
          repr_into(val, out, depth + 1);
        }
        out += "}>";
        return;
      }
      out += "<" + type_name(v) + " object>";
      return;
    case Value::kUndefined:
      out += "Undefined";
      return;
    default:
      out += to_str(v);
  }
}

std::string repr(const Value& v) {
  if (v.kind == Value::kUndefined) return "Undefined";
  std::string out;
  repr_into(v, out, 0);
  return out;
}

std::string to_str(const Value& v) {
  switch (v.kind) {
    case Value::kUndefined:
      return "";
    case Value::kNone:
      return "None";
    case Value::kBool:
      return v.b ? "True" : "False";
    case Value::kInt:
      return std::to_string(v.i);
    case Value::kFloat:
      return float_repr(v.f);
    case Value::kString:
      return v.s;
    default: {
      std::string out;
      repr_into(v, out, 0);
      return out;
    }
  }
}

// ---- comparison ----

static double num(const Value& v) {
  return v.kind == Value::kFloat ? v.f : v.kind == Value::kInt ? static_cast<double>(v.i) : v.b;
}

bool equal(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.kind != Value::kFloat && b.kind != Value::kFloat) {
      const int64_t x = a.kind == Value::kInt ? a.i : a.b;
      const int64_t y = b.kind == Value::kInt ? b.i : b.b;
      return x == y;
    }
    return num(a) == num(b);
  }
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Value::kUndefined:
    case Value::kNone:
      return true;
    case Value::kString:
      return a.s == b.s;
    case Value::kList: {
      if (a.list->tuple != b.list->tuple) return false;
      const auto& x = a.list->items;
      const auto& y = b.list->items;
      if (x.size() != y.size()) return false;
      for (size_t k = 0; k < x.size(); ++k)
        if (!equal(x[k], y[k])) return false;
      return true;
    }
    case Value::kDict: {
      if (a.dict->items.size() != b.dict->items.size()) return false;
      for (const auto& [k, v] : a.dict->items) {
        const Value* other = b.dict->find(k);
        if (!other || !equal(v, *other)) return false;
      }
      return true;
    }
    case Value::kObject:
      return a.obj == b.obj;
    default:
      return false;
  }
}

int compare(const Value& a, const Value& b, const char* op) {
  // Ordering an undefined value raises its UndefinedError (also inside lists).
  if (a.is_undefined()) throw PyError(a.s.empty() ? "undefined value" : a.s);
  if (b.is_undefined()) throw PyError(b.s.empty() ? "undefined value" : b.s);
  if (a.is_number() && b.is_number()) {
    if (a.kind != Value::kFloat && b.kind != Value::kFloat) {
      const int64_t x = a.kind == Value::kInt ? a.i : a.b;
      const int64_t y = b.kind == Value::kInt ? b.i : b.b;
      return x < y ? -1 : x > y ? 1 : 0;
    }
    const double x = num(a), y = num(b);
    return x < y ? -1 : x > y ? 1 : 0;  // NaN compares as equal here; Python gives False
  }
  if (a.kind == Value::kString && b.kind == Value::kString) {
    const int c = a.s.compare(b.s);  // UTF-8 byte order is code point order
    return c < 0 ? -1 : c > 0 ? 1 : 0;
  }
  if (a.kind == Value::kList && b.kind == Value::kList && a.list->tuple == b.list->tuple) {
    const auto& x = a.list->items;
    const auto& y = b.list->items;
    for (size_t k = 0; k < x.size() && k < y.size(); ++k) {
      if (equal(x[k], y[k])) continue;
      return compare(x[k], y[k], op);
    }
    return x.size() < y.size() ? -1 : x.size() > y.size() ? 1 : 0;
  }
  throw PyError(std::string("'") + op + "' not supported between instances of '" + type_name(a) +
                "' and '" + type_name(b) + "'");
}

// ---- JSON ----

Value from_json(const Json& j, int depth) {
  if (depth > kMaxDepth) throw PyError("context nested too deeply");
  switch (j.type()) {
    case Json::value_t::null:
      return Value::none();
    case Json::value_t::boolean:
      return Value::boolean(j.get<bool>());
    case Json::value_t::number_integer:
      return Value::integer(j.get<int64_t>());
    case Json::value_t::number_unsigned: {
      const auto u = j.get<uint64_t>();
      if (u <= static_cast<uint64_t>(INT64_MAX)) return Value::integer(static_cast<int64_t>(u));
      return Value::real(static_cast<double>(u));
    }
    case Json::value_t::number_float:
      return Value::real(j.get<double>());
    case Json::value_t::string:
      return Value::string(j.get<std::string>());
    case Json::value_t::array: {
      std::vector<Value> items;
      items.reserve(j.size());
      for (const auto& e : j) items.push_back(from_json(e, depth + 1));
      return Value::make_list(std::move(items));
    }
    case Json::value_t::object: {
      std::vector<std::pair<Value, Value>> items;
      items.reserve(j.size());
      for (auto it = j.begin(); it != j.end(); ++it)
        items.emplace_back(Value::string(it.key()), from_json(it.value(), depth + 1));
      return Value::make_dict(std::move(items));
    }
    default:
      return Value::none();  // binary and discarded values do not occur in parsed JSON
  }
}

static void json_string(std::string_view s, bool ensure_ascii, std::string& out) {
  out += '"';
  for (size_t k = 0; k < s.size(); ++k) {
    const auto c = static_cast<unsigned char>(s[k]);
    switch (c) {
      case '"':
        out += "\\\"";
        continue;
      case '\\':
        out += "\\\\";
        continue;
      case '\n':
        out += "\\n";
        continue;
      case '\r':
        out += "\\r";
        continue;
      case '\t':
        out += "\\t";
        continue;
      case '\b':
        out += "\\b";
        continue;
      case '\f':
        out += "\\f";
        continue;
      default:
        break;
    }
    if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      out += buf;
    } else if (c < 0x80 || !ensure_ascii) {
      out += static_cast<char>(c);
    } else {
      size_t n = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
      if (k + n > s.size()) n = 1;
      const auto cps = decode_utf8(s.substr(k, n));
      for (const uint32_t cp : cps) {
        char buf[16];
        if (cp >= 0x10000) {
          const uint32_t v = cp - 0x10000;
          std::snprintf(buf, sizeof(buf), "\\u%04x\\u%04x", 0xD800 + (v >> 10),
                        0xDC00 + (v & 0x3FF));
        } else {
          std::snprintf(buf, sizeof(buf), "\\u%04x", cp);
        }
        out += buf;
      }
      k += n - 1;
    }
  }
  out += '"';
}

static void json_key(const Value& k, const JsonStyle& style, std::string& out) {
  switch (k.kind) {
    case Value::kString:
      json_string(k.s, style.ensure_ascii, out);
      return;
    case Value::kBool:
      out += k.b ? "\"true\"" : "\"false\"";
      return;
    case Value::kNone:
      out += "\"null\"";
      return;
    case Value::kInt:
    case Value::kFloat: {
      std::string text;
      to_json(k, style, text, 0);
      out += '"' + text + '"';
      return;
    }
    default:
      throw PyError("keys must be str, int, float, bool or None, not " + type_name(k));
  }
}

static void newline_indent(const JsonStyle& style, int level, std::string& out) {
  out += '\n';
  for (int k = 0; k < level; ++k) out += style.indent_unit;
}

void to_json(const Value& v, const JsonStyle& style, std::string& out, int depth) {
  if (depth > kMaxDepth) throw PyError("value nested too deeply for tojson");
  switch (v.kind) {
    case Value::kNone:
      out += "null";
      return;
    case Value::kBool:
      out += v.b ? "true" : "false";
      return;
    case Value::kInt:
      out += std::to_string(v.i);
      return;
    case Value::kFloat:
      if (std::isnan(v.f)) {
        out += "NaN";
      } else if (std::isinf(v.f)) {
        out += v.f < 0 ? "-Infinity" : "Infinity";
      } else {
        out += float_repr(v.f);
      }
      return;
    case Value::kString:
      json_string(v.s, style.ensure_ascii, out);
      return;
    case Value::kList: {
      const auto& items = v.list->items;
      if (items.empty()) {
        out += "[]";
        return;
      }
      out += '[';
      for (size_t k = 0; k < items.size(); ++k) {
        if (k) out += style.item_sep;
        if (style.indent) newline_indent(style, depth + 1, out);
        to_json(items[k], style, out, depth + 1);
      }
      if (style.indent) newline_indent(style, depth, out);
      out += ']';
      return;
    }
    case Value::kDict: {
      if (v.dict->items.empty()) {
        out += "{}";
        return;
      }
      std::vector<const std::pair<Value, Value>*> items;
      for (const auto& kv : v.dict->items) items.push_back(&kv);
      if (style.sort_keys)
        std::stable_sort(items.begin(), items.end(), [](const auto* x, const auto* y) {
          return compare(x->first, y->first, "<") < 0;
        });
      out += '{';
      bool first = true;
      for (const auto* kv : items) {
        if (!first) out += style.item_sep;
        first = false;
        if (style.indent) newline_indent(style, depth + 1, out);
        json_key(kv->first, style, out);
        out += style.key_sep;
        to_json(kv->second, style, out, depth + 1);
      }
      if (style.indent) newline_indent(style, depth, out);
      out += '}';
      return;
    }
    default:
      throw PyError("Object of type " + type_name(v) + " is not JSON serializable");
  }
}

}  // namespace tessera::jinja
