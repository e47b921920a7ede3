// Internals of the Jinja interpreter shared by its source files: the dynamic value model (Python
// semantics), the syntax tree, and the render state. Not part of the public interface.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tokenizer/jinja/jinja.h"

namespace tessera::jinja {

struct Value;
struct ListObj;
struct DictObj;
struct Object;

// A Python value as Jinja2 sees it. Lists and dicts are shared and never mutated after they are
// built (the sandbox is immutable); namespaces are the one mutable object.
struct Value {
  enum Kind : uint8_t { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kObject };
  Kind kind = kUndefined;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;  // kString: the text (UTF-8); kUndefined: why it is undefined (error message)
  std::shared_ptr<const ListObj> list;
  std::shared_ptr<const DictObj> dict;
  std::shared_ptr<Object> obj;

  Value() = default;
  static Value undefined(std::string why = {}) {
    Value v;
    v.s = std::move(why);
    return v;
  }
  static Value none() {
    Value v;
    v.kind = kNone;
    return v;
  }
  static Value boolean(bool x) {
    Value v;
    v.kind = kBool;
    v.b = x;
    return v;
  }
  static Value integer(int64_t x) {
    Value v;
    v.kind = kInt;
    v.i = x;
    return v;
  }
  static Value real(double x) {
    Value v;
    v.kind = kFloat;
    v.f = x;
    return v;
  }
  static Value string(std::string x) {
    Value v;
    v.kind = kString;
    v.s = std::move(x);
    return v;
  }
  static Value make_list(std::vector<Value> items, bool tuple = false);
  static Value make_dict(std::vector<std::pair<Value, Value>> items);
  static Value object(std::shared_ptr<Object> o) {
    Value v;
    v.kind = kObject;
    v.obj = std::move(o);
    return v;
  }

  bool is_undefined() const { return kind == kUndefined; }
  bool is_none() const { return kind == kNone; }
  bool is_string() const { return kind == kString; }
  bool is_number() const { return kind == kBool || kind == kInt || kind == kFloat; }
  bool is_list() const { return kind == kList; }
  bool is_dict() const { return kind == kDict; }
};

struct ListObj {
  std::vector<Value> items;
  bool tuple = false;
};

struct DictObj {
  std::vector<std::pair<Value, Value>> items;  // insertion order, unique keys
  const Value* find(const Value& key) const;
  const Value* find(std::string_view key) const;
};

// Namespaces, callables (builtins, macros, bound methods) and loop objects.
struct Object {
  enum Type : uint8_t { kNamespace, kFunction, kMacro, kBoundMethod, kLoop, kCycler, kJoiner };
  explicit Object(Type t) : type(t) {}
  virtual ~Object() = default;
  // Drops the values the object holds, breaking reference cycles (a namespace holding itself,
  // a macro's scope holding the macro) when a render ends.
  virtual void release() {}
  Type type;
};

struct NamespaceObj : Object {
  NamespaceObj() : Object(kNamespace) {}
  void release() override { attrs.clear(); }
  std::vector<std::pair<std::string, Value>> attrs;
  Value* find(std::string_view name);
};

// ---- Python semantics of values (value.cc) ----

bool truthy(const Value& v);
std::string type_name(const Value& v);  // Python's type name: 'str', 'int', 'dict', ...
std::string to_str(const Value& v);     // str(v); undefined gives ""
std::string repr(const Value& v);       // repr(v)
std::string float_repr(double d);       // Python's shortest round-trip repr
std::string string_repr(std::string_view s);
bool equal(const Value& a, const Value& b);  // ==
// <0, 0, >0 for a < b, ==, >; throws (via `fail`) when Python would raise TypeError.
int compare(const Value& a, const Value& b, const char* op);
Value from_json(const Json& j, int depth = 0);

// Python json.dumps with ensure_ascii, indent (nullptr: none; "" and int handled by caller as
// the string of spaces), separators and sort_keys. Throws for values JSON cannot hold.
struct JsonStyle {
  bool ensure_ascii = false;
  bool indent = false;
  std::string indent_unit;
  std::string item_sep = ", ";
  std::string key_sep = ": ";
  bool sort_keys = false;
};
void to_json(const Value& v, const JsonStyle& style, std::string& out, int depth = 0);

// UTF-8 helpers: code points, Python whitespace, ASCII case mapping.
std::vector<uint32_t> decode_utf8(std::string_view s);
void append_utf8(std::string& out, uint32_t cp);
size_t utf8_length(std::string_view s);
bool is_py_space(uint32_t cp);
std::string py_strip(std::string_view s, const Value* chars, bool left, bool right);
// Python's str.lower/upper/title/capitalize/islower/isupper with Unicode's simple case
// mappings (utf8proc; the few multi-character special cases such as "ß".upper() aside).
std::string py_lower(std::string_view s);
std::string py_upper(std::string_view s);
std::string py_title(std::string_view s);
std::string py_capitalize(std::string_view s);
bool py_islower(std::string_view s);
bool py_isupper(std::string_view s);
bool py_isalpha(uint32_t cp);
bool py_isalnum(uint32_t cp);
std::string ascii_lower(std::string_view s);
std::string ascii_upper(std::string_view s);

// A Python-level error (TypeError, ValueError, ...) raised by a helper that does not know the
// template line; the renderer reports it as "template: line L: what".
struct PyError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Throws tessera::Error with "template: line L: what" (or the message as is for
// raise_exception). Helpers that have no line use the render state's current line.
[[noreturn]] void fail_at(int line, const std::string& what);

// ---- Syntax tree ----

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;
struct RenderState;
struct Scope;

// Arguments of a call, filter or test, evaluated.
struct Args {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
  // The argument at `index` or named `name`, or nullptr. Marks nothing; see check().
  const Value* get(size_t index, std::string_view name) const;
  const Value* kwarg(std::string_view name) const;
};

using FilterFn = Value (*)(RenderState& st, const Value& v, const Args& args);
using TestFn = bool (*)(RenderState& st, const Value& v, const Args& args);

FilterFn find_filter(std::string_view name);
TestFn find_test(std::string_view name);
bool is_known_jinja_filter(std::string_view name);
bool is_known_jinja_test(std::string_view name);
// Raises Python's TypeError when a test gets the wrong number of arguments.
void check_test_args(RenderState& st, std::string_view name, const Args& args);

struct Expr {
  enum Kind : uint8_t {
    kConst,
    kName,
    kList,
    kTuple,
    kDict,     // args: key, value, key, value, ...
    kGetAttr,  // args[0].name
    kGetItem,  // args[0][args[1]]
    kSlice,    // args: start, stop, step (nullptr when absent); only under kGetItem
    kCall,     // args[0](args[1:], kwargs)
    kFilter,   // args[0] | name(args[1:], kwargs); args[0] null in a filter block
    kTest,     // args[0] is name(args[1:], kwargs)
    kNeg,
    kPos,
    kNot,
    kAnd,
    kOr,
    kBinary,   // op: + - * / // % **
    kCompare,  // args[0] then (ops[i], args[i+1])
    kConcat,   // ~
    kCond,     // args: then, test, else (else may be null)
  };
  Kind kind;
  int line = 0;
  std::string name;
  std::string op;
  std::vector<std::string> ops;
  Value value;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  FilterFn filter = nullptr;
  TestFn test = nullptr;
  Expr(Kind k, int l) : kind(k), line(l) {}
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

struct Stmt {
  enum Kind : uint8_t {
    kText,
    kPrint,
    kIf,        // conds[i] -> bodies[i]; else_body
    kFor,       // targets in expr [if cond]; body; else_body
    kSet,       // targets = expr
    kSetAttr,   // targets[0].attr = expr
    kSetBlock,  // targets[0] = body | filters
    kMacro,
    kBreak,
    kContinue,
    kFilterBlock,
    kWith,   // targets[i] = exprs[i]; body
    kScope,  // body in the same scope (generation blocks)
  };
  Kind kind;
  int line = 0;
  std::string text;  // kText
  ExprPtr expr;      // kPrint, kFor iterable, kSet value
  ExprPtr cond;      // kFor filter
  std::vector<ExprPtr> conds;
  std::vector<Body> bodies;
  Body body;
  Body else_body;
  std::vector<std::string> targets;
  bool tuple_target = false;
  std::string attr;
  std::vector<ExprPtr> filters;  // kSetBlock, kFilterBlock: kFilter exprs with null subject
  // kMacro
  std::string name;
  std::vector<std::string> params;
  std::vector<ExprPtr> defaults;  // aligned to the last defaults.size() params
  std::vector<ExprPtr> exprs;     // kWith values
  // Names the body's frame binds to undefined on entry (symbols.cc); for kFor also the else.
  std::vector<std::string> frame_undefined;
  std::vector<std::string> else_undefined;
  Stmt(Kind k, int l) : kind(k), line(l) {}
};

}  // namespace tessera::jinja

namespace tessera::jinja {

// The parsed template (named in jinja.h).
class Node {
 public:
  Body body;
  std::vector<std::string> frame_undefined;
};

// Jinja2's compile-time scoping (symbols.cc): fills the frame_undefined lists.
void analyze_scopes(Node& root);

Body parse_template(std::string_view source, const Options& options);

// ---- Render state ----

struct Scope {
  std::shared_ptr<Scope> parent;
  std::vector<std::pair<std::string, Value>> vars;
  Value* find(std::string_view name) {
    for (auto& [k, v] : vars)
      if (k == name) return &v;
    return nullptr;
  }
  void set(std::string_view name, Value v) {
    if (Value* slot = find(name)) {
      *slot = std::move(v);
    } else {
      vars.emplace_back(std::string(name), std::move(v));
    }
  }
};

inline constexpr int kMaxDepth = 400;         // nesting of evaluation (parse and render)
inline constexpr int kMaxMacroDepth = 100;    // nested macro calls
inline constexpr int64_t kMaxRange = 100000;  // range() size, as Jinja2's sandbox
inline constexpr size_t kMaxItems = 1 << 20;  // elements of a list built by an operation

struct RenderState {
  const Options* options = nullptr;
  void* renderer = nullptr;  // the Renderer (render.cc), for macro calls from builtins
  size_t max_output = 0;
  int line = 0;
  int depth = 0;
  int macro_depth = 0;
  int64_t steps = 0;
  int64_t max_steps = 0;
  // Objects that can be part of a reference cycle, released when the render ends.
  std::vector<std::shared_ptr<Object>> cyclic;
  void step(int64_t n = 1) {
    steps += n;
    if (steps > max_steps) fail("the template does too much work (loop or recursion too long)");
  }
  void charge_bytes(size_t n) { step(static_cast<int64_t>(n / 64)); }
  void check_size(size_t n) {
    if (n > max_output)
      fail("a string would exceed the output limit of " + std::to_string(max_output) + " bytes");
  }
  [[noreturn]] void fail(const std::string& what) const { fail_at(line, what); }
};

// Calls a callable value (builtins, macros, bound methods); defined in render.cc.
Value call_value(RenderState& st, const Value& callee, const Args& args);
// obj.name and obj[key] with Jinja2's sandboxed fallbacks.
Value get_attr(RenderState& st, const Value& obj, const std::string& name);
Value get_item(RenderState& st, const Value& obj, const Value& key);
// Python iteration: list items, dict keys, string characters; undefined is empty.
std::vector<Value> iterate(RenderState& st, const Value& v);
// Raises the error an undefined value carries (using it as a value).
[[noreturn]] void fail_undefined(RenderState& st, const Value& v);
// Binary arithmetic: + - * / // % **.
Value binary_op(RenderState& st, std::string_view op, const Value& a, const Value& b);
// A method of a str, dict or list value, or nullptr when there is none by that name.
bool has_method(const Value& self, std::string_view name);
bool is_unsafe_method(const Value& self, std::string_view name);
Value call_method(RenderState& st, const Value& self, std::string_view name, const Args& args);
// Global functions: range, dict, namespace, raise_exception, strftime_now, cycler, joiner.
bool find_global(std::string_view name, Value& out);

struct FunctionObj : Object {
  using Fn = Value (*)(RenderState& st, const Args& args);
  FunctionObj(std::string n, Fn f) : Object(kFunction), name(std::move(n)), fn(f) {}
  std::string name;
  Fn fn;
};

struct BoundMethodObj : Object {
  BoundMethodObj(Value s, std::string n)
      : Object(kBoundMethod), self(std::move(s)), name(std::move(n)) {}
  Value self;
  std::string name;
};

struct LoopObj : Object {
  LoopObj() : Object(kLoop) {}
  void release() override { last_changed = Value(); }
  const std::vector<Value>* items = nullptr;
  size_t index = 0;
  bool has_last_changed = false;
  Value last_changed;
};

struct CyclerObj : Object {
  CyclerObj() : Object(kCycler) {}
  void release() override { items.clear(); }
  std::vector<Value> items;
  size_t pos = 0;
};

struct JoinerObj : Object {
  JoinerObj() : Object(kJoiner) {}
  std::string sep;
  bool used = false;
};

}  // namespace tessera::jinja
