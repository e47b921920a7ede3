// Jinja2's built-in filters and tests, the methods of str/dict/list values that templates call,
// the globals (range, namespace, dict, raise_exception, strftime_now, cycler, joiner), and
// Python's arithmetic operators.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <unordered_map>

#include "core/status.h"
#include "tokenizer/jinja/internal.h"

namespace tessera::jinja {

const Value* Args::kwarg(std::string_view name) const {
  for (const auto& [k, v] : kw)
    if (k == name) return &v;
  return nullptr;
}

const Value* Args::get(size_t index, std::string_view name) const {
  if (index < pos.size()) return &pos[index];
  return kwarg(name);
}

namespace {

size_t utf8_char_len(char c) {
  const auto u = static_cast<unsigned char>(c);
  return u < 0x80             ? 1
         : (u & 0xE0) == 0xC0 ? 2
         : (u & 0xF0) == 0xE0 ? 3
         : (u & 0xF8) == 0xF0 ? 4
                              : 1;
}

// Length of the Python-whitespace code point at s[i], or 0.
size_t space_len(const std::string& s, size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) return is_py_space(c) ? 1 : 0;
  size_t n = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
  if (i + n > s.size()) return 0;
  const auto cps = decode_utf8(std::string_view(s).substr(i, n));
  return cps.size() == 1 && is_py_space(cps[0]) ? n : 0;
}

int64_t to_int(RenderState& st, const Value& v, const char* what) {
  if (v.kind == Value::kInt) return v.i;
  if (v.kind == Value::kBool) return v.b;
  if (v.is_undefined()) fail_undefined(st, v);
  st.fail(std::string(what) + " must be an integer, not '" + type_name(v) + "'");
}

double to_double(const Value& v) {
  return v.kind == Value::kFloat ? v.f : v.kind == Value::kInt ? static_cast<double>(v.i) : v.b;
}

bool arg_bool(const Args& a, size_t index, const char* name, bool dflt) {
  const Value* v = a.get(index, name);
  return v ? truthy(*v) : dflt;
}

std::string arg_str(const Args& a, size_t index, const char* name, std::string dflt) {
  const Value* v = a.get(index, name);
  return v ? to_str(*v) : dflt;
}

Value make_str(RenderState& st, std::string s) {
  st.check_size(s.size());
  st.charge_bytes(s.size());
  return Value::string(std::move(s));
}

// Python's str.replace(old, new, count).
std::string replace_all(RenderState& st, const std::string& s, const std::string& from,
                        const std::string& to, int64_t count) {
  std::string out;
  if (from.empty()) {
    // Python inserts `to` between every character (and at both ends).
    const auto cps = decode_utf8(s);
    int64_t done = 0;
    for (size_t k = 0; k <= cps.size(); ++k) {
      if (count < 0 || done < count) {
        out += to;
        ++done;
      }
      if (k < cps.size()) append_utf8(out, cps[k]);
      st.check_size(out.size());
    }
    return out;
  }
  size_t pos = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    const size_t hit = s.find(from, pos);
    if (hit == std::string::npos) break;
    out.append(s, pos, hit - pos);
    out += to;
    st.check_size(out.size());
    pos = hit + from.size();
    ++done;
  }
  out.append(s, pos, std::string::npos);
  return out;
}

// Python's str.split(sep, maxsplit) and rsplit.
std::vector<Value> split(const std::string& s, const Value* sep, int64_t maxsplit,
                         bool from_right) {
  std::vector<std::string> parts;
  if (!sep || sep->is_none()) {
    // Runs of whitespace; leading/trailing whitespace ignored.
    const auto cps = decode_utf8(s);
    std::vector<std::pair<size_t, size_t>> words;  // code point ranges
    size_t k = 0;
    while (k < cps.size()) {
      while (k < cps.size() && is_py_space(cps[k])) ++k;
      if (k >= cps.size()) break;
      const size_t b = k;
      while (k < cps.size() && !is_py_space(cps[k])) ++k;
      words.emplace_back(b, k);
    }
    const auto text = [&](size_t b, size_t e) {
      std::string out;
      for (size_t q = b; q < e; ++q) append_utf8(out, cps[q]);
      return out;
    };
    if (maxsplit < 0 || static_cast<size_t>(maxsplit) + 1 >= words.size()) {
      for (const auto& [b, e] : words) parts.push_back(text(b, e));
    } else if (!from_right) {
      for (size_t w = 0; w < static_cast<size_t>(maxsplit); ++w)
        parts.push_back(text(words[w].first, words[w].second));
      // The remainder runs to the end of the string, whitespace and all.
      parts.push_back(text(words[static_cast<size_t>(maxsplit)].first, cps.size()));
    } else {
      const size_t keep = words.size() - static_cast<size_t>(maxsplit);
      parts.push_back(text(0, words[keep - 1].second));
      for (size_t w = keep; w < words.size(); ++w)
        parts.push_back(text(words[w].first, words[w].second));
    }
  } else {
    const std::string& d = sep->s;
    if (!from_right) {
      size_t pos = 0;
      int64_t n = 0;
      while (maxsplit < 0 || n < maxsplit) {
        const size_t hit = s.find(d, pos);
        if (hit == std::string::npos) break;
        parts.push_back(s.substr(pos, hit - pos));
        pos = hit + d.size();
        ++n;
      }
      parts.push_back(s.substr(pos));
    } else {
      size_t end = s.size();
      int64_t n = 0;
      std::vector<std::string> rev;
      while (maxsplit < 0 || n < maxsplit) {
        if (end < d.size()) break;
        const size_t hit = s.rfind(d, end - d.size());
        if (hit == std::string::npos) break;
        rev.push_back(s.substr(hit + d.size(), end - hit - d.size()));
        end = hit;
        ++n;
      }
      rev.push_back(s.substr(0, end));
      parts.assign(rev.rbegin(), rev.rend());
    }
  }
  std::vector<Value> out;
  out.reserve(parts.size());
  for (auto& p : parts) out.push_back(Value::string(std::move(p)));
  return out;
}

// Byte offset -> code point index.
int64_t cp_index(const std::string& s, size_t byte) {
  return static_cast<int64_t>(utf8_length(std::string_view(s).substr(0, byte)));
}

// Python's str.splitlines() (no keepends).
std::vector<std::string> splitlines(const std::string& s) {
  std::vector<std::string> lines;
  const auto cps = decode_utf8(s);
  std::string cur;
  for (size_t k = 0; k < cps.size(); ++k) {
    const uint32_t c = cps[k];
    const bool brk = c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || c == 0x1C || c == 0x1D ||
                     c == 0x1E || c == 0x85 || c == 0x2028 || c == 0x2029;
    if (!brk) {
      append_utf8(cur, c);
      continue;
    }
    if (c == '\r' && k + 1 < cps.size() && cps[k + 1] == '\n') ++k;
    lines.push_back(std::move(cur));
    cur.clear();
  }
  if (!cur.empty()) lines.push_back(std::move(cur));
  return lines;
}

// printf-style formatting (`"%s" % x`, the format filter): %s %r %d %i %f %F %e %g %x %X %o %c
// %% with flags, width and precision, positional or %(name)s.
std::string percent_format(RenderState& st, const std::string& fmt, const Value& arg) {
  std::vector<Value> args;
  // Python treats any non-tuple with __getitem__ (dicts, lists) as a possible mapping: unused
  // arguments are then not an error.
  const bool mapping = arg.is_dict() || (arg.is_list() && !arg.list->tuple) || arg.is_undefined();
  if (arg.kind == Value::kList && arg.list->tuple) {
    args = arg.list->items;
  } else {
    args.push_back(arg);
  }
  size_t next = 0;
  std::string out;
  for (size_t k = 0; k < fmt.size(); ++k) {
    if (fmt[k] != '%') {
      out += fmt[k];
      continue;
    }
    if (++k >= fmt.size()) st.fail("incomplete format");
    const Value* v = nullptr;
    if (fmt[k] == '(') {
      const size_t close = fmt.find(')', k);
      if (close == std::string::npos) st.fail("incomplete format key");
      if (!arg.is_dict()) st.fail("format requires a mapping");
      v = arg.dict->find(std::string_view(fmt).substr(k + 1, close - k - 1));
      if (!v) st.fail("KeyError: '" + fmt.substr(k + 1, close - k - 1) + "'");
      k = close + 1;
    }
    std::string flags;
    while (k < fmt.size() && std::strchr("-+ #0", fmt[k])) flags += fmt[k++];
    std::string width, prec;
    while (k < fmt.size() && std::isdigit(static_cast<unsigned char>(fmt[k]))) width += fmt[k++];
    if (k < fmt.size() && fmt[k] == '.') {
      prec = ".";
      ++k;
      while (k < fmt.size() && std::isdigit(static_cast<unsigned char>(fmt[k]))) prec += fmt[k++];
    }
    if (k >= fmt.size()) st.fail("incomplete format");
    const char conv = fmt[k];
    if (conv == '%') {
      out += '%';
      continue;
    }
    if (!v) {
      if (next >= args.size()) st.fail("not enough arguments for format string");
      v = &args[next++];
    }
    if (width.size() > 4 || prec.size() > 5) st.fail("format width too large");
    std::string body;
    char buf[512];
    const std::string spec = "%" + flags + width + prec;
    switch (conv) {
      case 's':
      case 'r': {
        std::string text = conv == 's' ? to_str(*v) : repr(*v);
        if (prec.size() > 1) {
          const auto cps = decode_utf8(text);
          const size_t n = std::stoul(prec.substr(1));
          if (cps.size() > n) {
            text.clear();
            for (size_t q = 0; q < n; ++q) append_utf8(text, cps[q]);
          }
        }
        const size_t w = width.empty() ? 0 : std::stoul(width);
        const size_t len = utf8_length(text);
        if (len < w) {
          if (flags.find('-') != std::string::npos) {
            text += std::string(w - len, ' ');
          } else {
            text = std::string(w - len, ' ') + text;
          }
        }
        body = text;
        break;
      }
      case 'd':
      case 'i':
      case 'x':
      case 'X':
      case 'o': {
        if (!v->is_number())
          st.fail("%" + std::string(1, conv) + " format: a number is required, not " +
                  type_name(*v));
        const long long n =
            v->kind == Value::kFloat ? static_cast<long long>(v->f) : to_int(st, *v, "format");
        std::snprintf(buf, sizeof(buf), (spec + "ll" + (conv == 'i' ? 'd' : conv)).c_str(), n);
        body = buf;
        break;
      }
      case 'f':
      case 'F':
      case 'e':
      case 'E':
      case 'g':
      case 'G': {
        if (!v->is_number()) st.fail("must be real number, not " + type_name(*v));
        std::snprintf(buf, sizeof(buf), (spec + conv).c_str(), to_double(*v));
        body = buf;
        break;
      }
      case 'c':
        if (v->is_string()) {
          body = v->s;
        } else {
          append_utf8(body, static_cast<uint32_t>(to_int(st, *v, "%c")));
        }
        break;
      default:
        st.fail(std::string("unsupported format character '") + conv + "'");
    }
    out += body;
    st.check_size(out.size());
  }
  if (!mapping && next < args.size())
    st.fail("not all arguments converted during string formatting");
  return out;
}

// str.format with {} {0} {name}, optional !r/!s and simple specs (fill/align/width/.prec/type).
std::string brace_format(RenderState& st, const std::string& fmt, const Args& a) {
  std::string out;
  size_t auto_index = 0;
  for (size_t k = 0; k < fmt.size(); ++k) {
    const char c = fmt[k];
    if (c == '}') {
      if (k + 1 < fmt.size() && fmt[k + 1] == '}') {
        out += '}';
        ++k;
        continue;
      }
      st.fail("Single '}' encountered in format string");
    }
    if (c != '{') {
      out += c;
      continue;
    }
    if (k + 1 < fmt.size() && fmt[k + 1] == '{') {
      out += '{';
      ++k;
      continue;
    }
    const size_t close = fmt.find('}', k);
    if (close == std::string::npos) st.fail("Single '{' encountered in format string");
    std::string field = fmt.substr(k + 1, close - k - 1);
    k = close;
    std::string spec, conv;
    if (const size_t colon = field.find(':'); colon != std::string::npos) {
      spec = field.substr(colon + 1);
      field.resize(colon);
    }
    if (const size_t bang = field.find('!'); bang != std::string::npos) {
      conv = field.substr(bang + 1);
      field.resize(bang);
    }
    const Value* v = nullptr;
    if (field.empty()) {
      if (auto_index >= a.pos.size()) st.fail("Replacement index out of range for positional args");
      v = &a.pos[auto_index++];
    } else if (std::all_of(field.begin(), field.end(),
                           [](char ch) { return ch >= '0' && ch <= '9'; })) {
      const size_t idx = std::stoul(field.substr(0, 6));
      if (idx >= a.pos.size()) st.fail("Replacement index out of range for positional args");
      v = &a.pos[idx];
    } else {
      v = a.kwarg(field);
      if (!v) st.fail("KeyError: '" + field + "'");
    }
    std::string text = conv == "r" ? repr(*v) : to_str(*v);
    if (!spec.empty()) {
      // [[fill]align][width][.precision][type]
      char fill = ' ', align = 0;
      size_t p = 0;
      if (spec.size() >= 2 && std::strchr("<>^", spec[1])) {
        fill = spec[0];
        align = spec[1];
        p = 2;
      } else if (std::strchr("<>^", spec[0])) {
        align = spec[0];
        p = 1;
      }
      std::string width, prec;
      while (p < spec.size() && std::isdigit(static_cast<unsigned char>(spec[p])))
        width += spec[p++];
      if (p < spec.size() && spec[p] == '.') {
        ++p;
        while (p < spec.size() && std::isdigit(static_cast<unsigned char>(spec[p])))
          prec += spec[p++];
      }
      const std::string type = spec.substr(p);
      if (width.size() > 4 || prec.size() > 3) st.fail("format width too large");
      if (type == "f" || type == "e" || type == "g" || type == "%") {
        if (!v->is_number())
          st.fail("Unknown format code '" + type + "' for object of type '" + type_name(*v) + "'");
        char buf[512];
        double d = to_double(*v);
        if (type == "%") d *= 100;
        std::snprintf(
            buf, sizeof(buf),
            ("%." + (prec.empty() ? std::string("6") : prec) + (type == "%" ? "f" : type)).c_str(),
            d);
        text = buf;
        if (type == "%") text += '%';
      } else if (type == "d") {
        text = std::to_string(to_int(st, *v, "format"));
      } else if (!type.empty() && type != "s") {
        st.fail("unsupported format spec '" + spec + "'");
      } else if (!prec.empty() && v->is_string()) {
        const auto cps = decode_utf8(text);
        const size_t n = std::stoul(prec);
        if (cps.size() > n) {
          text.clear();
          for (size_t q = 0; q < n; ++q) append_utf8(text, cps[q]);
        }
      }
      const size_t w = width.empty() ? 0 : std::stoul(width);
      const size_t len = utf8_length(text);
      if (len < w) {
        if (!align) align = v->is_number() ? '>' : '<';
        const size_t pad = w - len;
        if (align == '<') {
          text += std::string(pad, fill);
        } else if (align == '>') {
          text = std::string(pad, fill) + text;
        } else {
          text = std::string(pad / 2, fill) + text + std::string(pad - pad / 2, fill);
        }
      }
    }
    out += text;
    st.check_size(out.size());
  }
  return out;
}

// environment.getitem along a dotted attribute path ("a.b", "0.name").
Value get_path(RenderState& st, Value item, const Value& attribute) {
  if (attribute.kind != Value::kString) return get_item(st, item, attribute);
  size_t pos = 0;
  const std::string& path = attribute.s;
  while (true) {
    const size_t dot = path.find('.', pos);
    const std::string part =
        path.substr(pos, dot == std::string::npos ? std::string::npos : dot - pos);
    const bool digits = !part.empty() && std::all_of(part.begin(), part.end(),
                                                     [](char c) { return c >= '0' && c <= '9'; });
    if (digits && part.size() < 18) {
      item = get_item(st, item, Value::integer(std::stoll(part)));
    } else {
      item = get_item(st, item, Value::string(part));
    }
    if (dot == std::string::npos) break;
    pos = dot + 1;
  }
  return item;
}

Value lower_if_string(const Value& v) {
  if (v.kind == Value::kString) return Value::string(py_lower(v.s));
  return v;
}

// ---- filters ----

Value f_abs(RenderState& st, const Value& v, const Args&) {
  if (v.kind == Value::kInt) {
    if (v.i == INT64_MIN) st.fail("integer overflow");
    return Value::integer(v.i < 0 ? -v.i : v.i);
  }
  if (v.kind == Value::kBool) return Value::integer(v.b);
  if (v.kind == Value::kFloat) return Value::real(std::fabs(v.f));
  st.fail("bad operand type for abs(): '" + type_name(v) + "'");
}

// attr() is getattr only: methods and namespace attributes, never dict items.
Value f_attr(RenderState& st, const Value& v, const Args& a) {
  const Value* name = a.get(0, "name");
  if (!name) st.fail("attr() needs an attribute name");
  const std::string n = to_str(*name);
  if (v.is_dict() || v.is_string() || v.is_list()) {
    if (has_method(v, n)) return get_attr(st, v, n);
    if (is_unsafe_method(v, n)) return get_attr(st, v, n);
    return Value::undefined("'" + type_name(v) + " object' has no attribute '" + n + "'");
  }
  if (v.is_undefined()) fail_undefined(st, v);
  return get_attr(st, v, n);
}

Value f_batch(RenderState& st, const Value& v, const Args& a) {
  const Value* n = a.get(0, "linecount");
  if (!n) st.fail("batch() needs a line count");
  const int64_t count = to_int(st, *n, "linecount");
  if (count <= 0) st.fail("batch() needs a positive line count");
  const Value* fill = a.get(1, "fill_with");
  std::vector<Value> rows, cur;
  for (auto& item : iterate(st, v)) {
    cur.push_back(std::move(item));
    if (static_cast<int64_t>(cur.size()) == count) {
      rows.push_back(Value::make_list(std::move(cur)));
      cur.clear();
    }
  }
  if (!cur.empty()) {
    if (fill && !fill->is_none())
      while (static_cast<int64_t>(cur.size()) < count) cur.push_back(*fill);
    rows.push_back(Value::make_list(std::move(cur)));
  }
  return Value::make_list(std::move(rows));
}

Value f_capitalize(RenderState& st, const Value& v, const Args&) {
  return make_str(st, py_capitalize(to_str(v)));
}

Value f_center(RenderState& st, const Value& v, const Args& a) {
  const Value* w = a.get(0, "width");
  const int64_t width = w ? to_int(st, *w, "width") : 80;
  std::string s = to_str(v);
  const auto len = static_cast<int64_t>(utf8_length(s));
  if (width > static_cast<int64_t>(st.max_output)) st.fail("center() width too large");
  if (len >= width) return Value::string(s);
  // Python's str.center puts the extra space on the left when the total is odd... on the right
  // when the string length is even: left = pad // 2 + (pad & width & 1).
  const int64_t pad = width - len;
  const int64_t left = pad / 2 + (pad & width & 1);
  return make_str(st, std::string(static_cast<size_t>(left), ' ') + s +
                          std::string(static_cast<size_t>(pad - left), ' '));
}

Value f_length(RenderState& st, const Value& v, const Args&) {
  switch (v.kind) {
    case Value::kUndefined:
      return Value::integer(0);
    case Value::kString:
      return Value::integer(static_cast<int64_t>(utf8_length(v.s)));
    case Value::kList:
      return Value::integer(static_cast<int64_t>(v.list->items.size()));
    case Value::kDict:
      return Value::integer(static_cast<int64_t>(v.dict->items.size()));
    case Value::kObject:
      if (v.obj->type == Object::kLoop) {
        auto& loop = static_cast<LoopObj&>(*v.obj);
        if (loop.items) return Value::integer(static_cast<int64_t>(loop.items->size()));
      }
      [[fallthrough]];
    default:
      st.fail("object of type '" + type_name(v) + "' has no len()");
  }
}

Value f_default(RenderState&, const Value& v, const Args& a) {
  const bool boolean = arg_bool(a, 1, "boolean", false);
  if (v.is_undefined() || (boolean && !truthy(v))) {
    const Value* d = a.get(0, "default_value");
    return d ? *d : Value::string("");
  }
  return v;
}

Value f_dictsort(RenderState& st, const Value& v, const Args& a) {
  if (!v.is_dict()) {
    if (v.is_undefined()) fail_undefined(st, v);
    st.fail("'" + type_name(v) + "' object has no attribute 'items'");
  }
  const bool case_sensitive = arg_bool(a, 0, "case_sensitive", false);
  const std::string by = arg_str(a, 1, "by", "key");
  const bool reverse = arg_bool(a, 2, "reverse", false);
  if (by != "key" && by != "value") st.fail("You can only sort by either \"key\" or \"value\"");
  std::vector<Value> items;
  for (const auto& [k, val] : v.dict->items) items.push_back(Value::make_list({k, val}, true));
  const size_t pos = by == "key" ? 0 : 1;
  std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
    Value kx = x.list->items[pos], ky = y.list->items[pos];
    if (!case_sensitive) {
      kx = lower_if_string(kx);
      ky = lower_if_string(ky);
    }
    const int c = compare(kx, ky, "<");
    return reverse ? c > 0 : c < 0;
  });
  return Value::make_list(std::move(items));
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (const char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&#34;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

Value f_escape(RenderState& st, const Value& v, const Args&) {
  return make_str(st, html_escape(to_str(v)));
}

Value f_first(RenderState& st, const Value& v, const Args&) {
  if (v.kind == Value::kList) {
    if (v.list->items.empty()) return Value::undefined("No first item, sequence was empty.");
    return v.list->items.front();
  }
  auto items = iterate(st, v);
  if (items.empty()) return Value::undefined("No first item, sequence was empty.");
  return items.front();
}

Value f_last(RenderState& st, const Value& v, const Args&) {
  if (v.kind == Value::kList) {
    if (v.list->items.empty()) return Value::undefined("No last item, sequence was empty.");
    return v.list->items.back();
  }
  if (!v.is_dict() && !v.is_string() && !v.is_undefined())
    st.fail("'" + type_name(v) + "' object is not reversible");
  auto items = iterate(st, v);
  if (items.empty()) return Value::undefined("No last item, sequence was empty.");
  return items.back();
}

// Python float(str): decimal literals, inf/nan, surrounding whitespace.
bool parse_py_float(const std::string& text, double& out) {
  const std::string t = py_strip(text, nullptr, true, true);
  if (t.empty()) return false;
  std::string clean;
  for (size_t k = 0; k < t.size(); ++k) {
    const char c = t[k];
    if (c == '_') {
      if (k == 0 || k + 1 >= t.size() || !std::isdigit(static_cast<unsigned char>(t[k - 1])) ||
          !std::isdigit(static_cast<unsigned char>(t[k + 1])))
        return false;
      continue;
    }
    if (!std::isdigit(static_cast<unsigned char>(c)) && !std::strchr("+-.eEinfatyINFATY", c))
      return false;
    clean += c;
  }
  const std::string low = ascii_lower(clean);
  const std::string body = low[0] == '+' || low[0] == '-' ? low.substr(1) : low;
  if (body == "inf" || body == "infinity" || body == "nan") {
    out = body == "nan" ? NAN : (low[0] == '-' ? -INFINITY : INFINITY);
    return true;
  }
  if (body.find_first_of("infatyINFATY") != std::string::npos) return false;
  char* end = nullptr;
  out = std::strtod(clean.c_str(), &end);
  return end && *end == '\0' && end != clean.c_str();
}

// Python int(str, base): optional sign, digits with underscores, surrounding whitespace.
bool parse_py_int(const std::string& text, int64_t base, int64_t& out) {
  std::string t = py_strip(text, nullptr, true, true);
  if (t.empty()) return false;
  bool neg = false;
  size_t k = 0;
  if (t[0] == '+' || t[0] == '-') {
    neg = t[0] == '-';
    k = 1;
  }
  if (base == 0 || base == 16 || base == 8 || base == 2) {
    if (t.size() > k + 1 && t[k] == '0') {
      const char p = static_cast<char>(t[k + 1] | 0x20);
      const int64_t pb = p == 'x' ? 16 : p == 'o' ? 8 : p == 'b' ? 2 : 0;
      if (pb && (base == 0 || base == pb)) {
        base = pb;
        k += 2;
        if (k < t.size() && t[k] == '_') ++k;
      }
    }
    if (base == 0) base = 10;
  }
  if (base < 2 || base > 36 || k >= t.size()) return false;
  int64_t v = 0;
  bool any = false;
  for (; k < t.size(); ++k) {
    const char c = t[k];
    if (c == '_' && any && k + 1 < t.size() && t[k + 1] != '_') continue;
    int d;
    if (c >= '0' && c <= '9') {
      d = c - '0';
    } else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') {
      d = (c | 0x20) - 'a' + 10;
    } else {
      return false;
    }
    if (d >= base) return false;
    if (__builtin_mul_overflow(v, base, &v) || __builtin_add_overflow(v, d, &v)) return false;
    any = true;
  }
  if (!any) return false;
  out = neg ? -v : v;
  return true;
}

Value f_float(RenderState& st, const Value& v, const Args& a) {
  const Value* d = a.get(0, "default");
  const Value dflt = d ? *d : Value::real(0.0);
  switch (v.kind) {
    case Value::kUndefined:
      fail_undefined(st, v);
    case Value::kFloat:
      return v;
    case Value::kInt:
      return Value::real(static_cast<double>(v.i));
    case Value::kBool:
      return Value::real(v.b);
    case Value::kString: {
      double out;
      if (parse_py_float(v.s, out)) return Value::real(out);
      return dflt;
    }
    default:
      return dflt;
  }
}

Value f_int(RenderState& st, const Value& v, const Args& a) {
  const Value* d = a.get(0, "default");
  const Value dflt = d ? *d : Value::integer(0);
  const Value* b = a.get(1, "base");
  const int64_t base = b ? to_int(st, *b, "base") : 10;
  switch (v.kind) {
    case Value::kUndefined:
      fail_undefined(st, v);
    case Value::kInt:
      return v;
    case Value::kBool:
      return Value::integer(v.b);
    case Value::kFloat:
      if (!std::isfinite(v.f) || std::fabs(v.f) >= 9.2e18) return dflt;
      return Value::integer(static_cast<int64_t>(v.f));
    case Value::kString: {
      int64_t out;
      if (parse_py_int(v.s, base, out)) return Value::integer(out);
      double f;
      if (parse_py_float(v.s, f) && std::isfinite(f) && std::fabs(f) < 9.2e18)
        return Value::integer(static_cast<int64_t>(f));
      return dflt;
    }
    default:
      return dflt;
  }
}

Value f_format(RenderState& st, const Value& v, const Args& a) {
  if (!a.kw.empty() && !a.pos.empty())
    st.fail("can't handle positional and keyword arguments at the same time");
  if (!a.kw.empty()) {
    std::vector<std::pair<Value, Value>> items;
    for (const auto& [k, val] : a.kw) items.emplace_back(Value::string(k), val);
    return make_str(st, percent_format(st, to_str(v), Value::make_dict(std::move(items))));
  }
  return make_str(st, percent_format(st, to_str(v), Value::make_list(a.pos, true)));
}

Value f_indent(RenderState& st, const Value& v, const Args& a) {
  const Value* w = a.get(0, "width");
  std::string indention;
  if (w && w->is_string()) {
    indention = w->s;
  } else {
    const int64_t n = w ? to_int(st, *w, "width") : 4;
    if (n > 10000) st.fail("indent width too large");
    indention = std::string(static_cast<size_t>(std::max<int64_t>(n, 0)), ' ');
  }
  const bool first = arg_bool(a, 1, "first", false);
  const bool blank = arg_bool(a, 2, "blank", false);
  // Jinja2 appends "\n" to the value itself: only strings work.
  if (v.is_undefined()) fail_undefined(st, v);
  if (v.kind == Value::kList && !v.list->tuple)
    st.fail("'list' object has no attribute 'splitlines'");
  if (v.kind == Value::kList) st.fail("can only concatenate tuple (not \"str\") to tuple");
  if (!v.is_string())
    st.fail("unsupported operand type(s) for +=: '" + type_name(v) + "' and 'str'");
  const std::string s = v.s + "\n";
  const auto lines = splitlines(s);
  std::string rv;
  if (blank) {
    for (size_t k = 0; k < lines.size(); ++k) {
      if (k) rv += "\n" + indention;
      rv += lines[k];
    }
  } else {
    rv = lines.empty() ? "" : lines[0];
    for (size_t k = 1; k < lines.size(); ++k) {
      rv += "\n";
      if (!lines[k].empty()) rv += indention;
      rv += lines[k];
      st.check_size(rv.size());
    }
  }
  if (first) rv = indention + rv;
  return make_str(st, std::move(rv));
}

Value f_items(RenderState& st, const Value& v, const Args&) {
  if (v.is_undefined()) return Value::make_list({});
  if (!v.is_dict()) st.fail("Can only get item pairs from a mapping.");
  std::vector<Value> out;
  out.reserve(v.dict->items.size());
  for (const auto& [k, val] : v.dict->items) out.push_back(Value::make_list({k, val}, true));
  return Value::make_list(std::move(out));
}

Value f_join(RenderState& st, const Value& v, const Args& a) {
  const std::string sep = arg_str(a, 0, "d", "");
  const Value* attribute = a.get(1, "attribute");
  std::string out;
  bool first = true;
  for (const auto& item : iterate(st, v)) {
    if (!first) out += sep;
    first = false;
    if (attribute && !attribute->is_none()) {
      out += to_str(get_path(st, item, *attribute));
    } else {
      out += item.kind == Value::kString ? item.s : to_str(item);
    }
    st.check_size(out.size());
  }
  return make_str(st, std::move(out));
}

Value f_list(RenderState& st, const Value& v, const Args&) {
  if (v.kind == Value::kList && !v.list->tuple) return v;
  return Value::make_list(iterate(st, v));
}

Value f_lower(RenderState& st, const Value& v, const Args&) {
  return make_str(st, py_lower(to_str(v)));
}
Value f_upper(RenderState& st, const Value& v, const Args&) {
  return make_str(st, py_upper(to_str(v)));
}

Value f_map(RenderState& st, const Value& v, const Args& a) {
  if (!truthy(v)) return Value::make_list({});  // Jinja2 only iterates a truthy value
  std::vector<Value> items = iterate(st, v);
  if (const Value* attribute = a.kwarg("attribute")) {
    const Value* dflt = a.kwarg("default");
    for (auto& item : items) {
      item = get_path(st, item, *attribute);
      if (dflt && item.is_undefined()) item = *dflt;
    }
    return Value::make_list(std::move(items));
  }
  if (a.pos.empty()) st.fail("map requires a filter argument");
  const std::string name = to_str(a.pos[0]);
  const FilterFn fn = find_filter(name);
  if (!fn) st.fail("No filter named '" + name + "'.");
  Args rest;
  rest.pos.assign(a.pos.begin() + 1, a.pos.end());
  rest.kw = a.kw;
  for (auto& item : items) item = fn(st, item, rest);
  return Value::make_list(std::move(items));
}

Value min_max(RenderState& st, const Value& v, const Args& a, bool want_max) {
  const bool case_sensitive = arg_bool(a, 0, "case_sensitive", false);
  const Value* attribute = a.get(1, "attribute");
  const auto items = iterate(st, v);
  if (items.empty())
    return Value::undefined(std::string("No aggregated item, sequence was empty."));
  const auto key = [&](const Value& item) {
    Value k = attribute && !attribute->is_none() ? get_path(st, item, *attribute) : item;
    return case_sensitive ? k : lower_if_string(k);
  };
  size_t best = 0;
  Value best_key = key(items[0]);
  for (size_t k = 1; k < items.size(); ++k) {
    Value kk = key(items[k]);
    if (kk.is_undefined()) fail_undefined(st, kk);
    if (best_key.is_undefined()) fail_undefined(st, best_key);
    const int c = compare(kk, best_key, want_max ? ">" : "<");
    if (want_max ? c > 0 : c < 0) {
      best = k;
      best_key = std::move(kk);
    }
  }
  return items[best];
}

Value f_max(RenderState& st, const Value& v, const Args& a) {
  return min_max(st, v, a, true);
}
Value f_min(RenderState& st, const Value& v, const Args& a) {
  return min_max(st, v, a, false);
}

Value select_impl(RenderState& st, const Value& v, const Args& a, bool by_attr, bool keep) {
  std::vector<Value> out;
  if (!truthy(v)) return Value::make_list({});  // Jinja2 only iterates a truthy value
  size_t k = 0;
  const Value* attribute = nullptr;
  if (by_attr) {
    if (a.pos.empty()) st.fail("Missing parameter for attribute name");
    attribute = &a.pos[0];
    k = 1;
  }
  TestFn test = nullptr;
  Args rest;
  if (k < a.pos.size()) {
    const std::string name = to_str(a.pos[k]);
    test = find_test(name);
    if (!test) st.fail("No test named '" + name + "'.");
    rest.pos.assign(a.pos.begin() + static_cast<std::ptrdiff_t>(k + 1), a.pos.end());
    rest.kw = a.kw;
  }
  for (const auto& item : iterate(st, v)) {
    const Value subject = attribute ? get_path(st, item, *attribute) : item;
    const bool ok = test ? test(st, subject, rest) : truthy(subject);
    if (ok == keep) out.push_back(item);
  }
  return Value::make_list(std::move(out));
}

Value f_select(RenderState& st, const Value& v, const Args& a) {
  return select_impl(st, v, a, false, true);
}
Value f_reject(RenderState& st, const Value& v, const Args& a) {
  return select_impl(st, v, a, false, false);
}
Value f_selectattr(RenderState& st, const Value& v, const Args& a) {
  return select_impl(st, v, a, true, true);
}
Value f_rejectattr(RenderState& st, const Value& v, const Args& a) {
  return select_impl(st, v, a, true, false);
}

Value f_replace(RenderState& st, const Value& v, const Args& a) {
  const Value* old_v = a.get(0, "old");
  const Value* new_v = a.get(1, "new");
  if (!old_v || !new_v) st.fail("replace() needs old and new strings");
  const Value* count = a.get(2, "count");
  const int64_t n = count && !count->is_none() ? to_int(st, *count, "count") : -1;
  return make_str(st, replace_all(st, to_str(v), to_str(*old_v), to_str(*new_v), n));
}

Value f_reverse(RenderState& st, const Value& v, const Args&) {
  if (v.is_string()) {
    auto cps = decode_utf8(v.s);
    std::string out;
    for (auto it = cps.rbegin(); it != cps.rend(); ++it) append_utf8(out, *it);
    return Value::string(std::move(out));
  }
  if (!v.is_list() && !v.is_dict() && !v.is_undefined()) st.fail("argument must be iterable");
  auto items = iterate(st, v);
  std::reverse(items.begin(), items.end());
  return Value::make_list(std::move(items));
}

Value f_round(RenderState& st, const Value& v, const Args& a) {
  const Value* p = a.get(0, "precision");
  const int64_t precision = p ? to_int(st, *p, "precision") : 0;
  const std::string method = arg_str(a, 1, "method", "common");
  if (method != "common" && method != "ceil" && method != "floor")
    st.fail("method must be common, ceil or floor");
  if (!v.is_number()) st.fail("type " + type_name(v) + " doesn't define __round__ method");
  if (method == "common") {
    if (v.kind != Value::kFloat && precision >= 0)
      return Value::integer(v.kind == Value::kInt ? v.i : v.b);
    const double d = to_double(v);
    if (!std::isfinite(d)) return Value::real(d);
    if (precision > 300) return Value::real(d);
    if (precision < 0) {
      const double scale = std::pow(10.0, static_cast<double>(-precision));
      return Value::real(std::nearbyint(d / scale) * scale);
    }
    // printf rounds the exact binary value to nearest (ties to even), as Python's round does.
    char buf[512];
    std::snprintf(buf, sizeof(buf), "%.*f", static_cast<int>(precision), d);
    return Value::real(std::strtod(buf, nullptr));
  }
  const double scale = std::pow(10.0, static_cast<double>(precision));
  const double d = to_double(v) * scale;
  return Value::real((method == "ceil" ? std::ceil(d) : std::floor(d)) / scale);
}

Value f_safe(RenderState&, const Value& v, const Args&) {
  return v.is_string() ? v : Value::string(to_str(v));
}

Value f_sort(RenderState& st, const Value& v, const Args& a) {
  const bool reverse = arg_bool(a, 0, "reverse", false);
  const bool case_sensitive = arg_bool(a, 1, "case_sensitive", false);
  const Value* attribute = a.get(2, "attribute");
  std::vector<Value> items = iterate(st, v);
  std::vector<std::string> attrs;
  if (attribute && attribute->is_string()) {
    size_t pos = 0;
    while (true) {
      const size_t comma = attribute->s.find(',', pos);
      attrs.push_back(
          attribute->s.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos));
      if (comma == std::string::npos) break;
      pos = comma + 1;
    }
  }
  std::vector<std::pair<Value, size_t>> keyed;
  keyed.reserve(items.size());
  for (size_t k = 0; k < items.size(); ++k) {
    Value key;
    if (attrs.size() > 1) {
      std::vector<Value> parts;
      for (const auto& at : attrs) {
        Value part = get_path(st, items[k], Value::string(at));
        parts.push_back(case_sensitive ? part : lower_if_string(part));
      }
      key = Value::make_list(std::move(parts));
    } else {
      key = attribute && !attribute->is_none() ? get_path(st, items[k], *attribute) : items[k];
      if (!case_sensitive) key = lower_if_string(key);
    }
    keyed.emplace_back(std::move(key), k);
  }
  for (const auto& [key, idx] : keyed)
    if (key.is_undefined()) fail_undefined(st, key);
  st.step(static_cast<int64_t>(items.size()));
  std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& x, const auto& y) {
    const int c = compare(x.first, y.first, "<");
    return reverse ? c > 0 : c < 0;
  });
  std::vector<Value> out;
  out.reserve(items.size());
  for (const auto& [key, idx] : keyed) out.push_back(items[idx]);
  return Value::make_list(std::move(out));
}

Value f_string(RenderState& st, const Value& v, const Args&) {
  if (v.is_string()) return v;
  return make_str(st, to_str(v));
}

Value f_sum(RenderState& st, const Value& v, const Args& a) {
  const Value* attribute = a.get(0, "attribute");
  const Value* start = a.get(1, "start");
  Value total = start ? *start : Value::integer(0);
  for (const auto& item : iterate(st, v)) {
    const Value x = attribute && !attribute->is_none() ? get_path(st, item, *attribute) : item;
    total = binary_op(st, "+", total, x);
  }
  return total;
}

Value f_title(RenderState& st, const Value& v, const Args&) {
  // Jinja2's title: split before runs of -, whitespace, ( { [ <; each piece gets its first
  // character upper-cased and the rest lower-cased.
  const std::string s = to_str(v);
  std::string out;
  size_t k = 0;
  while (k < s.size()) {
    const auto is_sep = [&](size_t q) {
      const char c = s[q];
      return c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || space_len(s, q) > 0;
    };
    size_t e = k;
    if (is_sep(k)) {
      while (e < s.size() && is_sep(e)) e += std::max<size_t>(1, space_len(s, e));
      out.append(s, k, e - k);
    } else {
      while (e < s.size() && !is_sep(e)) ++e;
      const std::string word = s.substr(k, e - k);
      const size_t first = std::min(word.size(), utf8_char_len(word[0]));
      out += py_upper(word.substr(0, first)) + py_lower(word.substr(first));
    }
    k = e;
  }
  return make_str(st, std::move(out));
}

Value f_tojson(RenderState& st, const Value& v, const Args& a) {
  JsonStyle style;
  style.ensure_ascii = arg_bool(a, 0, "ensure_ascii", false);
  const Value* indent = a.get(1, "indent");
  if (indent && !indent->is_none()) {
    style.indent = true;
    if (indent->is_string()) {
      style.indent_unit = indent->s;
    } else {
      const int64_t n = to_int(st, *indent, "indent");
      if (n > 1000) st.fail("tojson indent too large");
      style.indent_unit = std::string(static_cast<size_t>(std::max<int64_t>(n, 0)), ' ');
    }
    style.item_sep = ",";
  }
  const Value* seps = a.get(2, "separators");
  if (seps && !seps->is_none()) {
    if (seps->kind != Value::kList || seps->list->items.size() != 2)
      st.fail("separators must be a (item_separator, key_separator) pair");
    style.item_sep = to_str(seps->list->items[0]);
    style.key_sep = to_str(seps->list->items[1]);
  }
  style.sort_keys = arg_bool(a, 3, "sort_keys", false);
  std::string out;
  to_json(v, style, out);
  return make_str(st, std::move(out));
}

Value f_trim(RenderState& st, const Value& v, const Args& a) {
  return make_str(st, py_strip(to_str(v), a.get(0, "chars"), true, true));
}

Value f_truncate(RenderState& st, const Value& v, const Args& a) {
  const std::string s = to_str(v);
  const Value* l = a.get(0, "length");
  const int64_t length = l ? to_int(st, *l, "length") : 255;
  const bool killwords = arg_bool(a, 1, "killwords", false);
  const std::string end = arg_str(a, 2, "end", "...");
  const Value* lw = a.get(3, "leeway");
  const int64_t leeway = lw && !lw->is_none() ? to_int(st, *lw, "leeway") : 5;
  const auto cps = decode_utf8(s);
  const auto n = static_cast<int64_t>(cps.size());
  const auto end_len = static_cast<int64_t>(utf8_length(end));
  if (length < end_len)
    st.fail("expected length >= " + std::to_string(end_len) + ", got " + std::to_string(length));
  if (leeway < 0) st.fail("expected leeway >= 0, got " + std::to_string(leeway));
  if (n <= length + leeway) return Value::string(s);
  std::string head;
  for (int64_t k = 0; k < length - end_len && k < n; ++k)
    append_utf8(head, cps[static_cast<size_t>(k)]);
  if (killwords) return make_str(st, head + end);
  const size_t sp = head.rfind(' ');
  if (sp != std::string::npos) head.resize(sp);
  return make_str(st, head + end);
}

Value f_unique(RenderState& st, const Value& v, const Args& a) {
  const bool case_sensitive = arg_bool(a, 0, "case_sensitive", false);
  const Value* attribute = a.get(1, "attribute");
  std::vector<Value> out, seen;
  for (const auto& item : iterate(st, v)) {
    Value key = attribute && !attribute->is_none() ? get_path(st, item, *attribute) : item;
    if (!case_sensitive) key = lower_if_string(key);
    if ((key.is_list() && !key.list->tuple) || key.is_dict())
      st.fail("unhashable type: '" + type_name(key) + "'");
    bool dup = false;
    for (const auto& s : seen) {
      if (equal(s, key)) {
        dup = true;
        break;
      }
    }
    st.step(static_cast<int64_t>(seen.size() / 64));
    if (dup) continue;
    seen.push_back(std::move(key));
    out.push_back(item);
  }
  return Value::make_list(std::move(out));
}

Value f_wordcount(RenderState&, const Value& v, const Args&) {
  // \w+ runs; non-ASCII characters count as word characters (letters).
  const std::string s = to_str(v);
  int64_t n = 0;
  bool in_word = false;
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    const bool w = std::isalnum(u) || c == '_' || u >= 0x80;
    if (w && !in_word) ++n;
    in_word = w;
  }
  return Value::integer(n);
}

Value f_pprint(RenderState& st, const Value& v, const Args&) {
  return make_str(st, repr(v));
}

Value f_striptags(RenderState& st, const Value& v, const Args&) {
  // Remove <...> tags and comments, collapse whitespace (entities are not unescaped).
  const std::string s = to_str(v);
  std::string text;
  for (size_t k = 0; k < s.size(); ++k) {
    if (s[k] == '<') {
      const size_t close = s.find('>', k);
      if (close != std::string::npos) {
        k = close;
        continue;
      }
    }
    text += s[k];
  }
  std::string out;
  for (const auto& w : split(text, nullptr, -1, false)) {
    if (!out.empty()) out += ' ';
    out += w.s;
  }
  return make_str(st, std::move(out));
}

// ---- tests ----

bool t_defined(RenderState&, const Value& v, const Args&) {
  return !v.is_undefined();
}
bool t_undefined(RenderState&, const Value& v, const Args&) {
  return v.is_undefined();
}
bool t_none(RenderState&, const Value& v, const Args&) {
  return v.is_none();
}
bool t_boolean(RenderState&, const Value& v, const Args&) {
  return v.kind == Value::kBool;
}
bool t_true(RenderState&, const Value& v, const Args&) {
  return v.kind == Value::kBool && v.b;
}
bool t_false(RenderState&, const Value& v, const Args&) {
  return v.kind == Value::kBool && !v.b;
}
bool t_integer(RenderState&, const Value& v, const Args&) {
  return v.kind == Value::kInt;
}
bool t_float(RenderState&, const Value& v, const Args&) {
  return v.kind == Value::kFloat;
}
bool t_number(RenderState&, const Value& v, const Args&) {
  return v.is_number();
}
bool t_string(RenderState&, const Value& v, const Args&) {
  return v.is_string();
}
bool t_mapping(RenderState&, const Value& v, const Args&) {
  return v.is_dict();
}
bool t_iterable(RenderState&, const Value& v, const Args&) {
  return v.is_undefined() || v.is_string() || v.is_list() || v.is_dict() ||
         (v.kind == Value::kObject && v.obj->type == Object::kLoop);
}
bool t_sequence(RenderState&, const Value& v, const Args&) {
  return v.is_undefined() || v.is_string() || v.is_list() || v.is_dict();
}
bool t_callable(RenderState&, const Value& v, const Args&) {
  return v.kind == Value::kObject &&
         (v.obj->type == Object::kFunction || v.obj->type == Object::kMacro ||
          v.obj->type == Object::kBoundMethod || v.obj->type == Object::kJoiner);
}
bool t_lower(RenderState&, const Value& v, const Args&) {
  const std::string s = to_str(v);
  return py_islower(s);
}
bool t_upper(RenderState&, const Value& v, const Args&) {
  const std::string s = to_str(v);
  return py_isupper(s);
}
bool t_escaped(RenderState&, const Value&, const Args&) {
  return false;
}

const Value& need_arg(RenderState& st, const Args& a, const char* what) {
  if (a.pos.empty()) {
    if (!a.kw.empty()) return a.kw[0].second;
    st.fail(std::string("the test '") + what + "' needs an argument");
  }
  return a.pos[0];
}

bool t_odd(RenderState& st, const Value& v, const Args&) {
  const Value r = binary_op(st, "%", v, Value::integer(2));
  return equal(r, Value::integer(1));
}
bool t_even(RenderState& st, const Value& v, const Args&) {
  const Value r = binary_op(st, "%", v, Value::integer(2));
  return equal(r, Value::integer(0));
}
bool t_divisibleby(RenderState& st, const Value& v, const Args& a) {
  const Value r = binary_op(st, "%", v, need_arg(st, a, "divisibleby"));
  return equal(r, Value::integer(0));
}
bool t_eq(RenderState& st, const Value& v, const Args& a) {
  return equal(v, need_arg(st, a, "eq"));
}
bool t_ne(RenderState& st, const Value& v, const Args& a) {
  return !equal(v, need_arg(st, a, "ne"));
}
int cmp_args(RenderState& st, const Value& v, const Args& a, const char* op) {
  const Value& o = need_arg(st, a, op);
  if (v.is_undefined()) fail_undefined(st, v);
  if (o.is_undefined()) fail_undefined(st, o);
  return compare(v, o, op);
}
bool t_lt(RenderState& st, const Value& v, const Args& a) {
  return cmp_args(st, v, a, "<") < 0;
}
bool t_le(RenderState& st, const Value& v, const Args& a) {
  return cmp_args(st, v, a, "<=") <= 0;
}
bool t_gt(RenderState& st, const Value& v, const Args& a) {
  return cmp_args(st, v, a, ">") > 0;
}
bool t_ge(RenderState& st, const Value& v, const Args& a) {
  return cmp_args(st, v, a, ">=") >= 0;
}

bool t_in(RenderState& st, const Value& v, const Args& a) {
  const Value& seq = need_arg(st, a, "in");
  switch (seq.kind) {
    case Value::kUndefined:
      return false;
    case Value::kString:
      if (!v.is_string())
        st.fail("'in <string>' requires string as left operand, not " + type_name(v));
      return seq.s.find(v.s) != std::string::npos;
    case Value::kList:
      for (const auto& item : seq.list->items)
        if (equal(item, v)) return true;
      return false;
    case Value::kDict:
      if (v.kind == Value::kList && !v.list->tuple) st.fail("unhashable type: 'list'");
      if (v.kind == Value::kDict) st.fail("unhashable type: 'dict'");
      return seq.dict->find(v) != nullptr;
    default:
      st.fail("argument of type '" + type_name(seq) + "' is not iterable");
  }
}

bool t_sameas(RenderState& st, const Value& v, const Args& a) {
  const Value& o = need_arg(st, a, "sameas");
  if (v.kind != o.kind) return false;
  switch (v.kind) {
    case Value::kNone:
    case Value::kUndefined:
      return v.kind == Value::kNone;
    case Value::kBool:
      return v.b == o.b;
    case Value::kList:
      return v.list == o.list;
    case Value::kDict:
      return v.dict == o.dict;
    case Value::kObject:
      return v.obj == o.obj;
    default:
      return equal(v, o);
  }
}

bool t_filter(RenderState&, const Value& v, const Args&) {
  return v.is_string() && find_filter(v.s) != nullptr;
}
bool t_test(RenderState&, const Value& v, const Args&) {
  return v.is_string() && find_test(v.s) != nullptr;
}

struct FilterTable {
  std::unordered_map<std::string_view, FilterFn> filters;
  std::unordered_map<std::string_view, TestFn> tests;
  FilterTable() {
    filters = {{"abs", f_abs},
               {"attr", f_attr},
               {"batch", f_batch},
               {"capitalize", f_capitalize},
               {"center", f_center},
               {"count", f_length},
               {"d", f_default},
               {"default", f_default},
               {"dictsort", f_dictsort},
               {"e", f_escape},
               {"escape", f_escape},
               {"forceescape", f_escape},
               {"first", f_first},
               {"float", f_float},
               {"format", f_format},
               {"indent", f_indent},
               {"int", f_int},
               {"items", f_items},
               {"join", f_join},
               {"last", f_last},
               {"length", f_length},
               {"list", f_list},
               {"lower", f_lower},
               {"map", f_map},
               {"max", f_max},
               {"min", f_min},
               {"pprint", f_pprint},
               {"reject", f_reject},
               {"rejectattr", f_rejectattr},
               {"replace", f_replace},
               {"reverse", f_reverse},
               {"round", f_round},
               {"safe", f_safe},
               {"select", f_select},
               {"selectattr", f_selectattr},
               {"sort", f_sort},
               {"string", f_string},
               {"striptags", f_striptags},
               {"sum", f_sum},
               {"title", f_title},
               {"tojson", f_tojson},
               {"trim", f_trim},
               {"truncate", f_truncate},
               {"unique", f_unique},
               {"upper", f_upper},
               {"wordcount", f_wordcount}};
    tests = {{"defined", t_defined},
             {"undefined", t_undefined},
             {"none", t_none},
             {"boolean", t_boolean},
             {"true", t_true},
             {"false", t_false},
             {"integer", t_integer},
             {"float", t_float},
             {"number", t_number},
             {"string", t_string},
             {"mapping", t_mapping},
             {"iterable", t_iterable},
             {"sequence", t_sequence},
             {"callable", t_callable},
             {"lower", t_lower},
             {"upper", t_upper},
             {"escaped", t_escaped},
             {"odd", t_odd},
             {"even", t_even},
             {"divisibleby", t_divisibleby},
             {"eq", t_eq},
             {"equalto", t_eq},
             {"==", t_eq},
             {"ne", t_ne},
             {"!=", t_ne},
             {"lt", t_lt},
             {"lessthan", t_lt},
             {"<", t_lt},
             {"le", t_le},
             {"<=", t_le},
             {"gt", t_gt},
             {"greaterthan", t_gt},
             {">", t_gt},
             {"ge", t_ge},
             {">=", t_ge},
             {"in", t_in},
             {"sameas", t_sameas},
             {"filter", t_filter},
             {"test", t_test}};
  }
};

const FilterTable& table() {
  static const FilterTable t;
  return t;
}

// ---- globals ----

Value g_range(RenderState& st, const Args& a) {
  if (!a.kw.empty()) st.fail("range() takes no keyword arguments");
  if (a.pos.empty() || a.pos.size() > 3)
    st.fail("range expected at most 3 arguments, got " + std::to_string(a.pos.size()));
  int64_t start = 0, stop = 0, step = 1;
  if (a.pos.size() == 1) {
    stop = to_int(st, a.pos[0], "range() argument");
  } else {
    start = to_int(st, a.pos[0], "range() argument");
    stop = to_int(st, a.pos[1], "range() argument");
    if (a.pos.size() == 3) step = to_int(st, a.pos[2], "range() argument");
  }
  if (step == 0) st.fail("range() arg 3 must not be zero");
  // Length as Python computes it, without overflow.
  const __int128 span =
      step > 0 ? static_cast<__int128>(stop) - start : static_cast<__int128>(start) - stop;
  const __int128 mag = step > 0 ? step : -static_cast<__int128>(step);
  const __int128 n = span <= 0 ? 0 : (span + mag - 1) / mag;
  if (n > kMaxRange)
    st.fail("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
  std::vector<Value> items;
  items.reserve(static_cast<size_t>(n));
  int64_t x = start;
  for (__int128 k = 0; k < n; ++k, x += step) items.push_back(Value::integer(x));
  st.step(static_cast<int64_t>(n));
  return Value::make_list(std::move(items));
}

Value g_dict(RenderState& st, const Args& a) {
  std::vector<std::pair<Value, Value>> items;
  if (a.pos.size() > 1) st.fail("dict expected at most 1 argument");
  if (a.pos.size() == 1) {
    const Value& src = a.pos[0];
    if (src.is_dict()) {
      items = src.dict->items;
    } else {
      for (const auto& pair : iterate(st, src)) {
        const auto kv = iterate(st, pair);
        if (kv.size() != 2) st.fail("dictionary update sequence element has wrong length");
        items.emplace_back(kv[0], kv[1]);
      }
    }
  }
  for (const auto& [k, v] : a.kw) {
    bool replaced = false;
    for (auto& [k2, v2] : items) {
      if (k2.is_string() && k2.s == k) {
        v2 = v;
        replaced = true;
      }
    }
    if (!replaced) items.emplace_back(Value::string(k), v);
  }
  return Value::make_dict(std::move(items));
}

Value g_namespace(RenderState& st, const Args& a) {
  auto ns = std::make_shared<NamespaceObj>();
  const auto put = [&](const std::string& k, const Value& v) {
    if (Value* slot = ns->find(k)) {
      *slot = v;
    } else {
      ns->attrs.emplace_back(k, v);
    }
  };
  if (a.pos.size() > 1) st.fail("namespace expected at most 1 positional argument");
  if (a.pos.size() == 1) {
    const Value src = g_dict(st, Args{{a.pos[0]}, {}});
    for (const auto& [k, v] : src.dict->items) put(to_str(k), v);
  }
  for (const auto& [k, v] : a.kw) put(k, v);
  st.cyclic.push_back(ns);
  return Value::object(std::move(ns));
}

Value g_raise_exception(RenderState&, const Args& a) {
  // The message as is: transformers reports it without decoration.
  throw Error(a.pos.empty() ? std::string() : to_str(a.pos[0]));
}

Value g_strftime_now(RenderState& st, const Args& a) {
  if (a.pos.empty() || !a.pos[0].is_string()) st.fail("strftime_now() needs a format string");
  const std::time_t now = st.options && st.options->now ? st.options->now() : std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  const std::string& fmt = a.pos[0].s;
  if (fmt.size() > 4096) st.fail("strftime_now() format too long");
  std::string buf(fmt.size() * 16 + 64, '\0');
  const size_t n = fmt.empty() ? 0 : std::strftime(buf.data(), buf.size(), fmt.c_str(), &tm);
  buf.resize(n);
  return Value::string(std::move(buf));
}

Value g_cycler(RenderState& st, const Args& a) {
  auto c = std::make_shared<CyclerObj>();
  c->items = a.pos;
  st.cyclic.push_back(c);
  return Value::object(std::move(c));
}

Value g_joiner(RenderState&, const Args& a) {
  auto j = std::make_shared<JoinerObj>();
  j->sep = a.pos.empty() ? std::string(", ") : to_str(a.pos[0]);
  if (const Value* s = a.kwarg("sep")) j->sep = to_str(*s);
  return Value::object(std::move(j));
}

struct GlobalTable {
  std::vector<std::pair<std::string, Value>> entries;
  GlobalTable() {
    const auto add = [&](const char* name, FunctionObj::Fn fn) {
      entries.emplace_back(name, Value::object(std::make_shared<FunctionObj>(name, fn)));
    };
    add("range", g_range);
    add("dict", g_dict);
    add("namespace", g_namespace);
    add("raise_exception", g_raise_exception);
    add("strftime_now", g_strftime_now);
    add("cycler", g_cycler);
    add("joiner", g_joiner);
  }
};

// ---- methods ----

bool is_str_method(std::string_view n) {
  static const char* const kNames[] = {
      "capitalize", "center",     "count",      "endswith",     "find",         "format",
      "index",      "isalnum",    "isalpha",    "isdigit",      "isnumeric",    "isdecimal",
      "islower",    "isspace",    "istitle",    "isupper",      "join",         "ljust",
      "lower",      "lstrip",     "partition",  "removeprefix", "removesuffix", "replace",
      "rfind",      "rindex",     "rjust",      "rpartition",   "rsplit",       "rstrip",
      "split",      "splitlines", "startswith", "strip",        "swapcase",     "title",
      "upper",      "zfill",      "casefold"};
  for (const char* k : kNames)
    if (n == k) return true;
  return false;
}

bool starts_or_ends(RenderState& st, const std::string& s, const Args& a, bool ends) {
  if (a.pos.empty())
    st.fail(std::string(ends ? "endswith" : "startswith") + "() takes at least 1 argument");
  const auto cps_needed = a.pos.size() > 1;
  std::string sub = s;
  if (cps_needed) {
    const auto cps = decode_utf8(s);
    const auto n = static_cast<int64_t>(cps.size());
    int64_t b = to_int(st, a.pos[1], "start");
    int64_t e = a.pos.size() > 2 && !a.pos[2].is_none() ? to_int(st, a.pos[2], "end") : n;
    if (b < 0) b = std::max<int64_t>(0, b + n);
    if (e < 0) e = std::max<int64_t>(0, e + n);
    b = std::min(b, n);
    e = std::min(e, n);
    sub.clear();
    for (int64_t k = b; k < e; ++k) append_utf8(sub, cps[static_cast<size_t>(k)]);
    if (b > e) return false;
  }
  const auto check = [&](const Value& p) {
    if (!p.is_string())
      st.fail(std::string(ends ? "endswith" : "startswith") +
              " first arg must be str or a tuple of str, not " + type_name(p));
    if (p.s.size() > sub.size()) return false;
    return ends ? sub.compare(sub.size() - p.s.size(), p.s.size(), p.s) == 0
                : sub.compare(0, p.s.size(), p.s) == 0;
  };
  const Value& prefix = a.pos[0];
  if (prefix.kind == Value::kList && prefix.list->tuple) {
    for (const auto& p : prefix.list->items)
      if (check(p)) return true;
    return false;
  }
  return check(prefix);
}

Value str_method(RenderState& st, const std::string& s, std::string_view name, const Args& a) {
  const auto arg_string = [&](size_t k, const char* what) -> const std::string& {
    if (k >= a.pos.size()) st.fail(std::string(name) + "() missing argument '" + what + "'");
    if (!a.pos[k].is_string())
      st.fail(std::string(name) + "() argument must be str, not " + type_name(a.pos[k]));
    return a.pos[k].s;
  };
  if (name == "startswith") return Value::boolean(starts_or_ends(st, s, a, false));
  if (name == "endswith") return Value::boolean(starts_or_ends(st, s, a, true));
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    const Value* chars = a.get(0, "chars");
    if (chars && !chars->is_none() && !chars->is_string())
      st.fail(std::string(name) + " arg must be None or str");
    return Value::string(py_strip(s, chars, name != "rstrip", name != "lstrip"));
  }
  if (name == "split" || name == "rsplit") {
    const Value* sep = a.get(0, "sep");
    if (sep && !sep->is_none() && !sep->is_string())
      st.fail("must be str or None, not " + type_name(*sep));
    if (sep && sep->is_string() && sep->s.empty()) st.fail("empty separator");
    const Value* m = a.get(1, "maxsplit");
    const int64_t maxsplit = m ? to_int(st, *m, "maxsplit") : -1;
    return Value::make_list(split(s, sep, maxsplit, name == "rsplit"));
  }
  if (name == "splitlines") {
    std::vector<Value> out;
    for (auto& l : splitlines(s)) out.push_back(Value::string(std::move(l)));
    return Value::make_list(std::move(out));
  }
  if (name == "replace") {
    const std::string& from = arg_string(0, "old");
    const std::string& to = arg_string(1, "new");
    const Value* c = a.get(2, "count");
    return make_str(st, replace_all(st, s, from, to, c ? to_int(st, *c, "count") : -1));
  }
  if (name == "upper") return Value::string(py_upper(s));
  if (name == "lower" || name == "casefold") return Value::string(py_lower(s));
  if (name == "title") return Value::string(py_title(s));
  if (name == "capitalize") return Value::string(py_capitalize(s));
  if (name == "swapcase") {
    std::string out = s;
    for (char& c : out) {
      if (c >= 'a' && c <= 'z') {
        c = static_cast<char>(c - 'a' + 'A');
      } else if (c >= 'A' && c <= 'Z') {
        c = static_cast<char>(c - 'A' + 'a');
      }
    }
    return Value::string(std::move(out));
  }
  if (name == "find" || name == "rfind" || name == "index" || name == "rindex" || name == "count") {
    const std::string& sub = arg_string(0, "sub");
    // Optional start/end in code points.
    const auto cps = decode_utf8(s);
    const auto n = static_cast<int64_t>(cps.size());
    int64_t b = a.pos.size() > 1 && !a.pos[1].is_none() ? to_int(st, a.pos[1], "start") : 0;
    int64_t e = a.pos.size() > 2 && !a.pos[2].is_none() ? to_int(st, a.pos[2], "end") : n;
    if (b < 0) b = std::max<int64_t>(0, b + n);
    if (e < 0) e = std::max<int64_t>(0, e + n);
    b = std::min(b, n);
    e = std::min(e, n);
    std::string window;
    for (int64_t k = b; k < e; ++k) append_utf8(window, cps[static_cast<size_t>(k)]);
    if (name == "count") {
      if (b > e) return Value::integer(0);
      if (sub.empty()) return Value::integer(static_cast<int64_t>(utf8_length(window)) + 1);
      int64_t count = 0;
      for (size_t p = window.find(sub); p != std::string::npos;
           p = window.find(sub, p + sub.size()))
        ++count;
      return Value::integer(count);
    }
    size_t hit = std::string::npos;
    if (b <= e) hit = name[0] == 'r' ? window.rfind(sub) : window.find(sub);
    if (hit == std::string::npos) {
      if (name == "index" || name == "rindex") st.fail("substring not found");
      return Value::integer(-1);
    }
    return Value::integer(b + cp_index(window, hit));
  }
  if (name == "join") {
    if (a.pos.empty()) st.fail("join() takes exactly one argument");
    std::string out;
    bool first = true;
    for (const auto& item : iterate(st, a.pos[0])) {
      if (!item.is_string())
        st.fail("sequence item: expected str instance, " + type_name(item) + " found");
      if (!first) out += s;
      first = false;
      out += item.s;
      st.check_size(out.size());
    }
    return make_str(st, std::move(out));
  }
  if (name == "format") return make_str(st, brace_format(st, s, a));
  if (name == "isdigit" || name == "isnumeric" || name == "isdecimal") {
    return Value::boolean(
        !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; }));
  }
  if (name == "isalpha" || name == "isalnum") {
    const bool alnum = name == "isalnum";
    const auto cps = decode_utf8(s);
    return Value::boolean(!cps.empty() && std::all_of(cps.begin(), cps.end(), [&](uint32_t cp) {
      return alnum ? py_isalnum(cp) : py_isalpha(cp);
    }));
  }
  if (name == "isspace") {
    const auto cps = decode_utf8(s);
    return Value::boolean(!cps.empty() && std::all_of(cps.begin(), cps.end(), is_py_space));
  }
  if (name == "islower") return Value::boolean(py_islower(s));
  if (name == "isupper") return Value::boolean(py_isupper(s));
  if (name == "istitle")
    return Value::boolean(py_title(s) == s && (py_islower(py_lower(s)) || py_isupper(py_upper(s))));
  if (name == "removeprefix" || name == "removesuffix") {
    const std::string& fix = arg_string(0, "fix");
    if (name == "removeprefix")
      return Value::string(s.compare(0, fix.size(), fix) == 0 ? s.substr(fix.size()) : s);
    if (s.size() >= fix.size() && s.compare(s.size() - fix.size(), fix.size(), fix) == 0)
      return Value::string(s.substr(0, s.size() - fix.size()));
    return Value::string(s);
  }
  if (name == "partition" || name == "rpartition") {
    const std::string& sep = arg_string(0, "sep");
    if (sep.empty()) st.fail("empty separator");
    const size_t hit = name == "partition" ? s.find(sep) : s.rfind(sep);
    if (hit == std::string::npos) {
      if (name == "partition")
        return Value::make_list({Value::string(s), Value::string(""), Value::string("")}, true);
      return Value::make_list({Value::string(""), Value::string(""), Value::string(s)}, true);
    }
    return Value::make_list({Value::string(s.substr(0, hit)), Value::string(sep),
                             Value::string(s.substr(hit + sep.size()))},
                            true);
  }
  if (name == "center" || name == "ljust" || name == "rjust" || name == "zfill") {
    if (a.pos.empty()) st.fail(std::string(name) + "() takes at least 1 argument");
    const int64_t width = to_int(st, a.pos[0], "width");
    if (width > static_cast<int64_t>(st.max_output)) st.fail("width too large");
    const auto len = static_cast<int64_t>(utf8_length(s));
    if (len >= width) return Value::string(s);
    const auto pad = static_cast<size_t>(width - len);
    std::string fill = " ";
    if (a.pos.size() > 1) fill = to_str(a.pos[1]);
    const auto rep = [&](size_t k) {
      std::string out;
      for (size_t q = 0; q < k; ++q) out += fill;
      return out;
    };
    if (name == "ljust") return make_str(st, s + rep(pad));
    if (name == "rjust") return make_str(st, rep(pad) + s);
    if (name == "zfill") {
      if (!s.empty() && (s[0] == '-' || s[0] == '+'))
        return make_str(st, s.substr(0, 1) + std::string(pad, '0') + s.substr(1));
      return make_str(st, std::string(pad, '0') + s);
    }
    const size_t left = pad / 2 + (pad & static_cast<size_t>(width) & 1);
    return make_str(st, rep(left) + s + rep(pad - left));
  }
  st.fail("'str' object has no attribute '" + std::string(name) + "'");
}

Value dict_method(RenderState& st, const Value& self, std::string_view name, const Args& a) {
  const DictObj& d = *self.dict;
  if (name == "items") {
    std::vector<Value> out;
    out.reserve(d.items.size());
    for (const auto& [k, v] : d.items) out.push_back(Value::make_list({k, v}, true));
    return Value::make_list(std::move(out));
  }
  if (name == "keys") {
    std::vector<Value> out;
    for (const auto& [k, v] : d.items) out.push_back(k);
    return Value::make_list(std::move(out));
  }
  if (name == "values") {
    std::vector<Value> out;
    for (const auto& [k, v] : d.items) out.push_back(v);
    return Value::make_list(std::move(out));
  }
  if (name == "get") {
    if (a.pos.empty()) st.fail("get expected at least 1 argument, got 0");
    if (const Value* v = d.find(a.pos[0])) return *v;
    return a.pos.size() > 1 ? a.pos[1] : Value::none();
  }
  if (name == "copy") return self;
  st.fail("'dict' object has no attribute '" + std::string(name) + "'");
}

Value list_method(RenderState& st, const Value& self, std::string_view name, const Args& a) {
  const auto& items = self.list->items;
  if (a.pos.empty()) st.fail(std::string(name) + "() takes at least 1 argument");
  if (name == "count") {
    int64_t n = 0;
    for (const auto& item : items) n += equal(item, a.pos[0]);
    return Value::integer(n);
  }
  if (name == "index") {
    for (size_t k = 0; k < items.size(); ++k)
      if (equal(items[k], a.pos[0])) return Value::integer(static_cast<int64_t>(k));
    st.fail(repr(a.pos[0]) + " is not in list");
  }
  st.fail("'list' object has no attribute '" + std::string(name) + "'");
}

}  // namespace

FilterFn find_filter(std::string_view name) {
  const auto& t = table().filters;
  const auto it = t.find(name);
  return it == t.end() ? nullptr : it->second;
}

TestFn find_test(std::string_view name) {
  const auto& t = table().tests;
  const auto it = t.find(name);
  return it == t.end() ? nullptr : it->second;
}

bool is_known_jinja_filter(std::string_view name) {
  static const char* const kNames[] = {"filesizeformat", "groupby", "random",   "slice",
                                       "urlencode",      "urlize",  "wordwrap", "xmlattr"};
  for (const char* k : kNames)
    if (name == k) return true;
  return false;
}

bool is_known_jinja_test(std::string_view) {
  return false;
}

void check_test_args(RenderState& st, std::string_view name, const Args& a) {
  static const char* const kUnary[] = {"defined", "undefined", "none",     "boolean", "false",
                                       "true",    "integer",   "float",    "number",  "string",
                                       "mapping", "sequence",  "iterable", "lower",   "upper",
                                       "escaped", "odd",       "even"};
  static const std::pair<const char*, const char*> kBinary[] = {
      {"divisibleby", "num"}, {"sameas", "other"}, {"in", "seq"}};
  const size_t given = a.pos.size() + a.kw.size();
  for (const char* n : kUnary)
    if (name == n && given > 0)
      st.fail("test_" + std::string(name) + "() takes 1 positional argument but " +
              std::to_string(given + 1) + " were given");
  for (const auto& [n, arg] : kBinary) {
    if (name != n) continue;
    if (given == 0)
      st.fail("test_" + std::string(name) + "() missing 1 required positional argument: '" + arg +
              "'");
    if (given > 1)
      st.fail("test_" + std::string(name) + "() takes 2 positional arguments but " +
              std::to_string(given + 1) + " were given");
  }
}

bool find_global(std::string_view name, Value& out) {
  static const GlobalTable globals;
  for (const auto& [k, v] : globals.entries) {
    if (k == name) {
      out = v;
      return true;
    }
  }
  return false;
}

bool has_method(const Value& self, std::string_view name) {
  switch (self.kind) {
    case Value::kString:
      return is_str_method(name);
    case Value::kDict:
      return name == "items" || name == "keys" || name == "values" || name == "get" ||
             name == "copy";
    case Value::kList:
      return name == "index" || name == "count";
    default:
      return false;
  }
}

bool is_unsafe_method(const Value& self, std::string_view name) {
  if (self.kind == Value::kDict)
    return name == "clear" || name == "pop" || name == "popitem" || name == "setdefault" ||
           name == "update";
  if (self.kind == Value::kList && !self.list->tuple)
    return name == "append" || name == "reverse" || name == "insert" || name == "sort" ||
           name == "extend" || name == "remove" || name == "pop" || name == "clear";
  return false;
}

Value call_method(RenderState& st, const Value& self, std::string_view name, const Args& args) {
  switch (self.kind) {
    case Value::kString:
      return str_method(st, self.s, name, args);
    case Value::kDict:
      return dict_method(st, self, name, args);
    case Value::kList:
      return list_method(st, self, name, args);
    default:
      st.fail("'" + type_name(self) + "' object has no attribute '" + std::string(name) + "'");
  }
}

// ---- arithmetic ----

namespace {

[[noreturn]] void unsupported(RenderState& st, std::string_view op, const Value& a,
                              const Value& b) {
  st.fail("unsupported operand type(s) for " + std::string(op) + ": '" + type_name(a) + "' and '" +
          type_name(b) + "'");
}

int64_t ival(const Value& v) {
  return v.kind == Value::kInt ? v.i : v.b;
}

Value repeat(RenderState& st, const Value& seq, int64_t n) {
  if (n <= 0) return seq.is_string() ? Value::string("") : Value::make_list({}, seq.list->tuple);
  if (seq.is_string()) {
    const __int128 total = static_cast<__int128>(seq.s.size()) * n;
    if (total > static_cast<__int128>(st.max_output)) st.check_size(st.max_output + 1);
    std::string out;
    out.reserve(static_cast<size_t>(total));
    for (int64_t k = 0; k < n; ++k) out += seq.s;
    st.charge_bytes(out.size());
    return Value::string(std::move(out));
  }
  const __int128 total = static_cast<__int128>(seq.list->items.size()) * n;
  if (total > static_cast<__int128>(kMaxItems)) st.fail("a list would have too many items");
  std::vector<Value> out;
  out.reserve(static_cast<size_t>(total));
  for (int64_t k = 0; k < n; ++k)
    out.insert(out.end(), seq.list->items.begin(), seq.list->items.end());
  st.step(static_cast<int64_t>(total));
  return Value::make_list(std::move(out), seq.list->tuple);
}

}  // namespace

Value binary_op(RenderState& st, std::string_view op, const Value& a, const Value& b) {
  if (a.is_undefined()) fail_undefined(st, a);
  // str % undefined formats (an undefined value has __getitem__, so Python takes it for a
  // mapping and prints it as "").
  if (op == "%" && a.is_string()) return make_str(st, percent_format(st, a.s, b));
  if (b.is_undefined()) fail_undefined(st, b);
  const bool nums = a.is_number() && b.is_number();
  const bool ints = nums && a.kind != Value::kFloat && b.kind != Value::kFloat;
  const char o0 = op[0];
  if (op == "+") {
    if (ints) {
      int64_t r;
      if (__builtin_add_overflow(ival(a), ival(b), &r)) st.fail("integer overflow");
      return Value::integer(r);
    }
    if (nums) return Value::real(to_double(a) + to_double(b));
    if (a.is_string() && b.is_string()) {
      st.check_size(a.s.size() + b.s.size());
      st.charge_bytes(a.s.size() + b.s.size());
      return Value::string(a.s + b.s);
    }
    if (a.is_list() && b.is_list() && a.list->tuple == b.list->tuple) {
      if (a.list->items.size() + b.list->items.size() > kMaxItems)
        st.fail("a list would have too many items");
      std::vector<Value> out = a.list->items;
      out.insert(out.end(), b.list->items.begin(), b.list->items.end());
      st.step(static_cast<int64_t>(out.size() / 16));
      return Value::make_list(std::move(out), a.list->tuple);
    }
    if (a.is_string()) st.fail("can only concatenate str (not \"" + type_name(b) + "\") to str");
    if (a.is_list())
      st.fail("can only concatenate " + type_name(a) + " (not \"" + type_name(b) + "\") to " +
              type_name(a));
    unsupported(st, op, a, b);
  }
  if (op == "-") {
    if (ints) {
      int64_t r;
      if (__builtin_sub_overflow(ival(a), ival(b), &r)) st.fail("integer overflow");
      return Value::integer(r);
    }
    if (nums) return Value::real(to_double(a) - to_double(b));
    unsupported(st, op, a, b);
  }
  if (op == "*") {
    if (ints) {
      int64_t r;
      if (__builtin_mul_overflow(ival(a), ival(b), &r)) st.fail("integer overflow");
      return Value::integer(r);
    }
    if (nums) return Value::real(to_double(a) * to_double(b));
    if ((a.is_string() || a.is_list()) && (b.kind == Value::kInt || b.kind == Value::kBool))
      return repeat(st, a, ival(b));
    if ((b.is_string() || b.is_list()) && (a.kind == Value::kInt || a.kind == Value::kBool))
      return repeat(st, b, ival(a));
    if (a.is_string() || b.is_string() || a.is_list() || b.is_list())
      st.fail("can't multiply sequence by non-int of type '" +
              type_name(a.is_string() || a.is_list() ? b : a) + "'");
    unsupported(st, op, a, b);
  }
  if (op == "/") {
    if (!nums) unsupported(st, op, a, b);
    if (to_double(b) == 0) st.fail(ints ? "division by zero" : "float division by zero");
    if (ints) return Value::real(static_cast<double>(ival(a)) / static_cast<double>(ival(b)));
    return Value::real(to_double(a) / to_double(b));
  }
  if (op == "//" || op == "%") {
    if (op == "%" && a.is_string()) return make_str(st, percent_format(st, a.s, b));
    if (!nums) unsupported(st, op, a, b);
    if (ints) {
      const int64_t x = ival(a), y = ival(b);
      if (y == 0)
        st.fail(op == "%" ? "integer modulo by zero" : "integer division or modulo by zero");
      if (x == INT64_MIN && y == -1) {
        if (op == "%") return Value::integer(0);
        st.fail("integer overflow");
      }
      int64_t q = x / y, r = x % y;
      if (r != 0 && ((r < 0) != (y < 0))) {
        --q;
        r += y;
      }
      return Value::integer(op == "//" ? q : r);
    }
    const double x = to_double(a), y = to_double(b);
    if (y == 0) st.fail(op == "//" ? "float floor division by zero" : "float modulo");
    double r = std::fmod(x, y);
    if (r != 0 && ((r < 0) != (y < 0))) r += y;
    if (op == "%") {
      if (r == 0) r = std::copysign(0.0, y);
      return Value::real(r);
    }
    const double q = (x - r) / y;
    double fq = std::round(q);
    if (std::fabs(fq - q) > 0.5) fq = std::floor(q);
    if (q == 0) fq = std::copysign(0.0, x / y);
    return Value::real(fq);
  }
  if (op == "**") {
    if (!nums) unsupported(st, "** or pow()", a, b);
    if (ints && ival(b) >= 0) {
      int64_t base = ival(a), e = ival(b), r = 1;
      while (e > 0) {
        if (e & 1)
          if (__builtin_mul_overflow(r, base, &r)) st.fail("integer overflow");
        e >>= 1;
        if (e && __builtin_mul_overflow(base, base, &base)) st.fail("integer overflow");
      }
      return Value::integer(r);
    }
    const double x = to_double(a), y = to_double(b);
    if (x == 0 && y < 0) st.fail("0.0 cannot be raised to a negative power");
    if (x < 0 && y != std::floor(y)) st.fail("complex results are not supported");
    const double r = std::pow(x, y);
    if (std::isinf(r) && std::isfinite(x) && std::isfinite(y))
      st.fail("(34, 'Numerical result out of range')");
    return Value::real(r);
  }
  (void)o0;
  st.fail("unknown operator " + std::string(op));
}

}  // namespace tessera::jinja
