// The tree-walking renderer: statements, expressions, scoping as Jinja2 compiles it (a for
// loop body and a macro body are scopes of their own, `if` is not), macros, attribute and item
// lookup with the sandbox's rules, and the Template class.
#include <algorithm>
#include <cmath>

#include "core/status.h"
#include "tokenizer/jinja/internal.h"

namespace tessera::jinja {

namespace {

struct MacroObj : Object {
  MacroObj() : Object(kMacro) {}
  void release() override { closure.reset(); }
  const Stmt* def = nullptr;
  std::shared_ptr<Scope> closure;
};

enum class Flow { kNormal, kBreak, kContinue };

struct DepthGuard {
  explicit DepthGuard(RenderState& st) : st(st) {
    if (++st.depth > kMaxDepth) st.fail("template nested too deeply (recursion limit)");
  }
  ~DepthGuard() { --st.depth; }
  RenderState& st;
};

std::string object_desc(const Value& v) {
  if (v.is_none()) return "None";
  return type_name(v) + " object";
}

Value missing_attr(const Value& obj, std::string_view name) {
  // Built with append: GCC 12 warns falsely (-Wrestrict) on the operator+ chain here.
  std::string why = "'";
  why.append(object_desc(obj)).append("' has no attribute '").append(name).append("'");
  return Value::undefined(std::move(why));
}

Value unsafe_attr(const Value& obj, std::string_view name) {
  return Value::undefined("access to attribute '" + std::string(name) + "' of '" + type_name(obj) +
                          "' object is unsafe.");
}

// Python's slice.indices(length).
void slice_indices(RenderState& st, const Value* start, const Value* stop, const Value* step,
                   int64_t length, int64_t& b, int64_t& e, int64_t& s) {
  const auto as_int = [&](const Value* v, int64_t& out) {
    if (!v || v->is_none()) return false;
    if (v->kind == Value::kInt) {
      out = v->i;
    } else if (v->kind == Value::kBool) {
      out = v->b;
    } else if (v->is_undefined()) {
      fail_undefined(st, *v);
    } else {
      st.fail("slice indices must be integers or None");
    }
    return true;
  };
  s = 1;
  as_int(step, s);
  if (s == 0) st.fail("slice step cannot be zero");
  const auto adjust = [&](int64_t v, bool neg_step) {
    if (v < 0) {
      v += length;
      if (v < 0) v = neg_step ? -1 : 0;
    } else if (v >= length) {
      v = neg_step ? length - 1 : length;
    }
    return v;
  };
  int64_t v = 0;
  if (as_int(start, v)) {
    b = adjust(v, s < 0);
  } else {
    b = s < 0 ? length - 1 : 0;
  }
  if (as_int(stop, v)) {
    e = adjust(v, s < 0);
  } else {
    e = s < 0 ? -1 : length;
  }
}

std::vector<size_t> slice_positions(int64_t b, int64_t e, int64_t s) {
  std::vector<size_t> out;
  if (s > 0) {
    for (int64_t k = b; k < e; k += s) out.push_back(static_cast<size_t>(k));
  } else {
    for (int64_t k = b; k > e; k += s) out.push_back(static_cast<size_t>(k));
  }
  return out;
}

Value loop_attr(RenderState& st, LoopObj& loop, const Value& self, std::string_view name) {
  const auto n = static_cast<int64_t>(loop.items->size());
  const auto i = static_cast<int64_t>(loop.index);
  if (name == "index") return Value::integer(i + 1);
  if (name == "index0") return Value::integer(i);
  if (name == "revindex") return Value::integer(n - i);
  if (name == "revindex0") return Value::integer(n - i - 1);
  if (name == "first") return Value::boolean(i == 0);
  if (name == "last") return Value::boolean(i == n - 1);
  if (name == "length") return Value::integer(n);
  if (name == "depth") return Value::integer(1);
  if (name == "depth0") return Value::integer(0);
  if (name == "previtem") {
    if (i == 0) return Value::undefined("there is no previous item");
    return (*loop.items)[loop.index - 1];
  }
  if (name == "nextitem") {
    if (i + 1 >= n) return Value::undefined("there is no next item");
    return (*loop.items)[loop.index + 1];
  }
  if (name == "cycle" || name == "changed")
    return Value::object(std::make_shared<BoundMethodObj>(self, std::string(name)));
  (void)st;
  return missing_attr(self, name);
}

class Renderer {
 public:
  explicit Renderer(RenderState& st) : st_(st) {}

  Flow exec(const Body& body, const std::shared_ptr<Scope>& scope, std::string& out) {
    for (const auto& stmt : body) {
      const Flow f = exec_stmt(*stmt, scope, out);
      if (f != Flow::kNormal) return f;
    }
    return Flow::kNormal;
  }

  Value eval(const Expr& e, Scope& scope);

  Value call_macro(const MacroObj& m, const Args& args);

 private:
  void emit(std::string& out, std::string_view text) {
    out += text;
    if (out.size() > st_.max_output)
      st_.fail("the output exceeds the limit of " + std::to_string(st_.max_output) + " bytes");
  }

  Flow exec_stmt(const Stmt& s, const std::shared_ptr<Scope>& scope, std::string& out);
  Flow exec_for(const Stmt& s, const std::shared_ptr<Scope>& scope, std::string& out);
  void assign(Scope& scope, const Stmt& s, Value v);
  void bind_targets(Scope& scope, const std::vector<std::string>& targets, bool tuple, Value v);
  Value apply_filters(const std::vector<ExprPtr>& filters, Value v, Scope& scope);
  Args eval_args(const Expr& e, size_t first, Scope& scope);
  Value lookup(const std::string& name, Scope& scope);

  RenderState& st_;
};

Renderer* current_renderer(RenderState& st);

// A frame's own variables start undefined (symbols.cc), hiding the context and outer frames.
void bind_undefined(Scope& scope, const std::vector<std::string>& names) {
  for (const auto& name : names) scope.set(name, Value::undefined("'" + name + "' is undefined"));
}

std::shared_ptr<Scope> child_scope(const std::shared_ptr<Scope>& parent,
                                   const std::vector<std::string>& undefined_names) {
  auto inner = std::make_shared<Scope>();
  inner->parent = parent;
  bind_undefined(*inner, undefined_names);
  return inner;
}

Value Renderer::lookup(const std::string& name, Scope& scope) {
  for (Scope* s = &scope; s; s = s->parent.get())
    if (Value* v = s->find(name)) return *v;
  Value g;
  if (find_global(name, g)) return g;
  return Value::undefined("'" + name + "' is undefined");
}

Args Renderer::eval_args(const Expr& e, size_t first, Scope& scope) {
  Args a;
  a.pos.reserve(e.args.size() - first);
  for (size_t k = first; k < e.args.size(); ++k) a.pos.push_back(eval(*e.args[k], scope));
  for (const auto& [name, expr] : e.kwargs) a.kw.emplace_back(name, eval(*expr, scope));
  return a;
}

Value Renderer::apply_filters(const std::vector<ExprPtr>& filters, Value v, Scope& scope) {
  for (const auto& f : filters) {
    st_.line = f->line;
    const Args a = eval_args(*f, 1, scope);
    st_.line = f->line;
    v = f->filter(st_, v, a);
  }
  return v;
}

void Renderer::bind_targets(Scope& scope, const std::vector<std::string>& targets, bool tuple,
                            Value v) {
  if (!tuple) {
    scope.set(targets[0], std::move(v));
    return;
  }
  std::vector<Value> items = iterate(st_, v);
  if (v.is_undefined()) fail_undefined(st_, v);
  if (items.size() != targets.size()) {
    if (items.size() > targets.size())
      st_.fail("too many values to unpack (expected " + std::to_string(targets.size()) + ")");
    st_.fail("not enough values to unpack (expected " + std::to_string(targets.size()) + ", got " +
             std::to_string(items.size()) + ")");
  }
  for (size_t k = 0; k < targets.size(); ++k) scope.set(targets[k], std::move(items[k]));
}

Flow Renderer::exec_stmt(const Stmt& s, const std::shared_ptr<Scope>& scope, std::string& out) {
  st_.line = s.line;
  st_.step();
  switch (s.kind) {
    case Stmt::kText:
      emit(out, s.text);
      return Flow::kNormal;
    case Stmt::kPrint: {
      const Value v = eval(*s.expr, *scope);
      if (v.kind == Value::kString) {
        emit(out, v.s);
      } else {
        emit(out, to_str(v));
      }
      return Flow::kNormal;
    }
    case Stmt::kIf:
      for (size_t k = 0; k < s.conds.size(); ++k) {
        st_.line = s.conds[k]->line;
        if (truthy(eval(*s.conds[k], *scope))) return exec(s.bodies[k], scope, out);
      }
      return exec(s.else_body, scope, out);
    case Stmt::kFor:
      return exec_for(s, scope, out);
    case Stmt::kSet:
      bind_targets(*scope, s.targets, s.tuple_target, eval(*s.expr, *scope));
      return Flow::kNormal;
    case Stmt::kSetAttr: {
      Value ns = lookup(s.targets[0], *scope);
      Value v = eval(*s.expr, *scope);
      st_.line = s.line;
      if (ns.kind != Value::kObject || ns.obj->type != Object::kNamespace)
        st_.fail("cannot assign attribute on non-namespace object");
      auto& obj = static_cast<NamespaceObj&>(*ns.obj);
      if (Value* slot = obj.find(s.attr)) {
        *slot = std::move(v);
      } else {
        obj.attrs.emplace_back(s.attr, std::move(v));
      }
      return Flow::kNormal;
    }
    case Stmt::kSetBlock: {
      auto inner = child_scope(scope, s.frame_undefined);
      std::string text;
      exec(s.body, inner, text);
      Value v = apply_filters(s.filters, Value::string(std::move(text)), *scope);
      scope->set(s.targets[0], std::move(v));
      return Flow::kNormal;
    }
    case Stmt::kMacro: {
      auto m = std::make_shared<MacroObj>();
      m->def = &s;
      m->closure = scope;
      st_.cyclic.push_back(m);
      scope->set(s.name, Value::object(std::move(m)));
      return Flow::kNormal;
    }
    case Stmt::kBreak:
      return Flow::kBreak;
    case Stmt::kContinue:
      return Flow::kContinue;
    case Stmt::kFilterBlock: {
      auto inner = child_scope(scope, s.frame_undefined);
      std::string text;
      const Flow f = exec(s.body, inner, text);
      const Value v = apply_filters(s.filters, Value::string(std::move(text)), *scope);
      emit(out, to_str(v));
      return f;
    }
    case Stmt::kWith: {
      auto inner = child_scope(scope, s.frame_undefined);
      for (size_t k = 0; k < s.targets.size(); ++k)
        inner->set(s.targets[k], eval(*s.exprs[k], *scope));
      return exec(s.body, inner, out);
    }
    case Stmt::kScope:
      return exec(s.body, child_scope(scope, s.frame_undefined), out);
  }
  return Flow::kNormal;
}

Flow Renderer::exec_for(const Stmt& s, const std::shared_ptr<Scope>& scope, std::string& out) {
  DepthGuard guard(st_);
  const Value iterable = eval(*s.expr, *scope);
  st_.line = s.line;
  // Lists are iterated in place (they are immutable); other iterables are materialized.
  std::vector<Value> local;
  const std::vector<Value>* items = &local;
  if (iterable.kind == Value::kList) {
    items = &iterable.list->items;
  } else {
    local = iterate(st_, iterable);
  }
  if (s.cond) {
    std::vector<Value> kept;
    auto probe = std::make_shared<Scope>();
    probe->parent = scope;
    for (const auto& item : *items) {
      st_.step();
      probe->vars.clear();
      bind_targets(*probe, s.targets, s.tuple_target, item);
      if (truthy(eval(*s.cond, *probe))) kept.push_back(item);
    }
    local = std::move(kept);
    items = &local;
  }
  if (items->empty()) return exec(s.else_body, child_scope(scope, s.else_undefined), out);
  auto loop = std::make_shared<LoopObj>();
  loop->items = items;
  st_.cyclic.push_back(loop);
  const Value loop_value = Value::object(loop);
  auto body_scope = std::make_shared<Scope>();
  body_scope->parent = scope;
  bool completed = false;
  for (size_t k = 0; k < items->size(); ++k) {
    st_.step();
    loop->index = k;
    // A fresh scope per iteration (Jinja2 resets assignments made in the body).
    if (body_scope.use_count() > 1) {
      body_scope = std::make_shared<Scope>();
      body_scope->parent = scope;
    } else {
      body_scope->vars.clear();
    }
    body_scope->vars.emplace_back("loop", loop_value);
    bind_targets(*body_scope, s.targets, s.tuple_target, (*items)[k]);
    bind_undefined(*body_scope, s.frame_undefined);
    const Flow f = exec(s.body, body_scope, out);
    if (f == Flow::kBreak) break;
    if (f == Flow::kNormal) completed = true;
  }
  loop->items = nullptr;  // the loop object may outlive the items (stored in a namespace)
  // Jinja2 runs the else block unless an iteration ran to its end (break and continue skip
  // the flag that it sets there).
  if (!completed && !s.else_body.empty())
    return exec(s.else_body, child_scope(scope, s.else_undefined), out);
  return Flow::kNormal;
}

Value Renderer::call_macro(const MacroObj& m, const Args& args) {
  const Stmt& def = *m.def;
  if (++st_.macro_depth > kMaxMacroDepth) {
    --st_.macro_depth;
    st_.fail("macro recursion is too deep (more than " + std::to_string(kMaxMacroDepth) +
             " nested calls)");
  }
  struct Release {
    ~Release() { --st.macro_depth; }
    RenderState& st;
  } release{st_};
  auto scope = std::make_shared<Scope>();
  scope->parent = m.closure;
  const size_t n = def.params.size();
  std::vector<bool> given(n, false);
  std::vector<Value> values(n);
  std::vector<Value> varargs;
  for (size_t k = 0; k < args.pos.size(); ++k) {
    if (k < n) {
      values[k] = args.pos[k];
      given[k] = true;
    } else {
      varargs.push_back(args.pos[k]);
    }
  }
  std::vector<std::pair<Value, Value>> kwargs;
  for (const auto& [name, v] : args.kw) {
    const auto it = std::find(def.params.begin(), def.params.end(), name);
    if (it == def.params.end()) {
      kwargs.emplace_back(Value::string(name), v);
      continue;
    }
    const size_t k = static_cast<size_t>(it - def.params.begin());
    if (given[k])
      st_.fail("macro '" + def.name + "' got multiple values for argument '" + name + "'");
    values[k] = v;
    given[k] = true;
  }
  const size_t first_default = n - def.defaults.size();
  for (size_t k = 0; k < n; ++k) {
    if (!given[k]) {
      if (k >= first_default) {
        values[k] = eval(*def.defaults[k - first_default], *scope);
      } else {
        values[k] = Value::undefined("parameter '" + def.params[k] + "' was not provided");
      }
    }
    scope->vars.emplace_back(def.params[k], std::move(values[k]));
  }
  scope->vars.emplace_back("varargs", Value::make_list(std::move(varargs), true));
  scope->vars.emplace_back("kwargs", Value::make_dict(std::move(kwargs)));
  bind_undefined(*scope, def.frame_undefined);
  std::string text;
  exec(def.body, scope, text);
  return Value::string(std::move(text));
}

Value Renderer::eval(const Expr& e, Scope& scope) {
  DepthGuard guard(st_);
  st_.line = e.line;
  switch (e.kind) {
    case Expr::kConst:
      return e.value;
    case Expr::kName:
      return lookup(e.name, scope);
    case Expr::kList:
    case Expr::kTuple: {
      std::vector<Value> items;
      items.reserve(e.args.size());
      for (const auto& a : e.args) items.push_back(eval(*a, scope));
      return Value::make_list(std::move(items), e.kind == Expr::kTuple);
    }
    case Expr::kDict: {
      std::vector<std::pair<Value, Value>> items;
      for (size_t k = 0; k + 1 < e.args.size(); k += 2) {
        Value key = eval(*e.args[k], scope);
        Value val = eval(*e.args[k + 1], scope);
        if (key.kind == Value::kList && !key.list->tuple) st_.fail("unhashable type: 'list'");
        if (key.kind == Value::kDict) st_.fail("unhashable type: 'dict'");
        bool replaced = false;
        for (auto& [k2, v2] : items) {
          if (equal(k2, key)) {
            v2 = std::move(val);
            replaced = true;
            break;
          }
        }
        if (!replaced) items.emplace_back(std::move(key), std::move(val));
      }
      return Value::make_dict(std::move(items));
    }
    case Expr::kGetAttr: {
      const Value obj = eval(*e.args[0], scope);
      st_.line = e.line;
      return get_attr(st_, obj, e.name);
    }
    case Expr::kGetItem: {
      const Value obj = eval(*e.args[0], scope);
      const Expr& key = *e.args[1];
      if (key.kind == Expr::kSlice) {
        Value parts[3];
        const Value* ptrs[3] = {nullptr, nullptr, nullptr};
        for (int k = 0; k < 3; ++k) {
          if (key.args[k]) {
            parts[k] = eval(*key.args[k], scope);
            ptrs[k] = &parts[k];
          }
        }
        st_.line = e.line;
        if (obj.is_undefined()) fail_undefined(st_, obj);
        int64_t b = 0, en = 0, step = 1;
        if (obj.kind == Value::kList) {
          const auto& items = obj.list->items;
          slice_indices(st_, ptrs[0], ptrs[1], ptrs[2], static_cast<int64_t>(items.size()), b, en,
                        step);
          std::vector<Value> out;
          for (const size_t p : slice_positions(b, en, step)) out.push_back(items[p]);
          return Value::make_list(std::move(out), obj.list->tuple);
        }
        if (obj.kind == Value::kString) {
          const auto cps = decode_utf8(obj.s);
          slice_indices(st_, ptrs[0], ptrs[1], ptrs[2], static_cast<int64_t>(cps.size()), b, en,
                        step);
          std::string out;
          for (const size_t p : slice_positions(b, en, step)) append_utf8(out, cps[p]);
          return Value::string(std::move(out));
        }
        // Slices bypass Jinja2's getitem: Python's own errors.
        if (obj.kind == Value::kDict) st_.fail("unhashable type: 'slice'");
        st_.fail("'" + type_name(obj) + "' object is not subscriptable");
      }
      const Value k = eval(key, scope);
      st_.line = e.line;
      return get_item(st_, obj, k);
    }
    case Expr::kSlice:
      st_.fail("a slice outside a subscript");
    case Expr::kCall: {
      const Expr& callee = *e.args[0];
      if (callee.kind == Expr::kGetAttr) {
        // obj.method(...) without building a bound method.
        Value obj = eval(*callee.args[0], scope);
        if ((obj.kind == Value::kString || obj.kind == Value::kDict || obj.kind == Value::kList) &&
            has_method(obj, callee.name)) {
          const Args a = eval_args(e, 1, scope);
          st_.line = e.line;
          return call_method(st_, obj, callee.name, a);
        }
        st_.line = callee.line;
        const Value fn = get_attr(st_, obj, callee.name);
        const Args a = eval_args(e, 1, scope);
        st_.line = e.line;
        return call_value(st_, fn, a);
      }
      const Value fn = eval(callee, scope);
      const Args a = eval_args(e, 1, scope);
      st_.line = e.line;
      return call_value(st_, fn, a);
    }
    case Expr::kFilter: {
      const Value v = eval(*e.args[0], scope);
      const Args a = eval_args(e, 1, scope);
      st_.line = e.line;
      return e.filter(st_, v, a);
    }
    case Expr::kTest: {
      const Value v = eval(*e.args[0], scope);
      const Args a = eval_args(e, 1, scope);
      st_.line = e.line;
      check_test_args(st_, e.name, a);
      return Value::boolean(e.test(st_, v, a));
    }
    case Expr::kNeg:
    case Expr::kPos: {
      const Value v = eval(*e.args[0], scope);
      st_.line = e.line;
      if (v.is_undefined()) fail_undefined(st_, v);
      if (v.kind == Value::kFloat) return Value::real(e.kind == Expr::kNeg ? -v.f : v.f);
      if (v.kind == Value::kInt || v.kind == Value::kBool) {
        const int64_t x = v.kind == Value::kInt ? v.i : v.b;
        if (e.kind == Expr::kPos) return Value::integer(x);
        if (x == INT64_MIN) st_.fail("integer overflow");
        return Value::integer(-x);
      }
      st_.fail(std::string("bad operand type for unary ") + (e.kind == Expr::kNeg ? "-" : "+") +
               ": '" + type_name(v) + "'");
    }
    case Expr::kNot:
      return Value::boolean(!truthy(eval(*e.args[0], scope)));
    case Expr::kAnd: {
      Value a = eval(*e.args[0], scope);
      if (!truthy(a)) return a;
      return eval(*e.args[1], scope);
    }
    case Expr::kOr: {
      Value a = eval(*e.args[0], scope);
      if (truthy(a)) return a;
      return eval(*e.args[1], scope);
    }
    case Expr::kBinary: {
      const Value a = eval(*e.args[0], scope);
      const Value b = eval(*e.args[1], scope);
      st_.line = e.line;
      return binary_op(st_, e.op, a, b);
    }
    case Expr::kCompare: {
      Value left = eval(*e.args[0], scope);
      for (size_t k = 0; k < e.ops.size(); ++k) {
        Value right = eval(*e.args[k + 1], scope);
        st_.line = e.line;
        const std::string& op = e.ops[k];
        bool ok;
        if (op == "==") {
          ok = equal(left, right);
        } else if (op == "!=") {
          ok = !equal(left, right);
        } else if (op == "in" || op == "notin") {
          Args a;
          a.pos.push_back(right);
          ok = find_test("in")(st_, left, a);
          if (op == "notin") ok = !ok;
        } else {
          if (left.is_undefined()) fail_undefined(st_, left);
          if (right.is_undefined()) fail_undefined(st_, right);
          const int c = compare(left, right, op.c_str());
          ok = op == "<" ? c < 0 : op == ">" ? c > 0 : op == "<=" ? c <= 0 : c >= 0;
        }
        if (!ok) return Value::boolean(false);
        left = std::move(right);
      }
      return Value::boolean(true);
    }
    case Expr::kConcat: {
      std::string out;
      for (const auto& a : e.args) {
        const Value v = eval(*a, scope);
        out += v.kind == Value::kString ? v.s : to_str(v);
        st_.check_size(out.size());
      }
      st_.charge_bytes(out.size());
      return Value::string(std::move(out));
    }
    case Expr::kCond: {
      if (truthy(eval(*e.args[1], scope))) return eval(*e.args[0], scope);
      if (e.args[2]) return eval(*e.args[2], scope);
      return Value::undefined("the inline if-expression on line " + std::to_string(e.line) +
                              " evaluated to false and no else section was defined.");
    }
  }
  return Value::undefined();
}

Renderer* current_renderer(RenderState& st) {
  TESSERA_CHECK(st.renderer != nullptr);
  return static_cast<Renderer*>(st.renderer);
}

}  // namespace

void fail_undefined(RenderState& st, const Value& v) {
  st.fail(v.s.empty() ? std::string("undefined value") : v.s);
}

Value get_attr(RenderState& st, const Value& obj, const std::string& name) {
  switch (obj.kind) {
    case Value::kUndefined:
      fail_undefined(st, obj);
    case Value::kDict:
      if (has_method(obj, name)) return Value::object(std::make_shared<BoundMethodObj>(obj, name));
      if (is_unsafe_method(obj, name)) return unsafe_attr(obj, name);
      if (const Value* v = obj.dict->find(std::string_view(name))) return *v;
      return missing_attr(obj, name);
    case Value::kString:
    case Value::kList:
      if (has_method(obj, name)) return Value::object(std::make_shared<BoundMethodObj>(obj, name));
      if (is_unsafe_method(obj, name)) return unsafe_attr(obj, name);
      return missing_attr(obj, name);
    case Value::kObject:
      if (obj.obj->type == Object::kNamespace) {
        if (Value* v = static_cast<NamespaceObj&>(*obj.obj).find(name)) return *v;
        return missing_attr(obj, name);
      }
      if (obj.obj->type == Object::kLoop) {
        auto& loop = static_cast<LoopObj&>(*obj.obj);
        if (!loop.items) st.fail("the loop object is used after its loop ended");
        return loop_attr(st, loop, obj, name);
      }
      if (obj.obj->type == Object::kCycler) {
        auto& c = static_cast<CyclerObj&>(*obj.obj);
        if (name == "current") return c.items.empty() ? Value::none() : c.items[c.pos];
        if (name == "next" || name == "reset")
          return Value::object(std::make_shared<BoundMethodObj>(obj, name));
      }
      return missing_attr(obj, name);
    default:
      return missing_attr(obj, name);
  }
}

Value get_item(RenderState& st, const Value& obj, const Value& key) {
  switch (obj.kind) {
    case Value::kUndefined:
      fail_undefined(st, obj);
    case Value::kDict: {
      if (const Value* v = obj.dict->find(key)) return *v;
      if (key.kind == Value::kString) {
        if (has_method(obj, key.s))
          return Value::object(std::make_shared<BoundMethodObj>(obj, key.s));
        if (is_unsafe_method(obj, key.s)) return unsafe_attr(obj, key.s);
        return missing_attr(obj, key.s);
      }
      return Value::undefined("dict object has no element " + repr(key));
    }
    case Value::kList:
    case Value::kString: {
      if (key.kind == Value::kInt || key.kind == Value::kBool) {
        int64_t k = key.kind == Value::kInt ? key.i : key.b;
        if (obj.kind == Value::kList) {
          const auto n = static_cast<int64_t>(obj.list->items.size());
          if (k < 0) k += n;
          if (k >= 0 && k < n) return obj.list->items[static_cast<size_t>(k)];
        } else {
          const auto cps = decode_utf8(obj.s);
          const auto n = static_cast<int64_t>(cps.size());
          if (k < 0) k += n;
          if (k >= 0 && k < n) {
            std::string out;
            append_utf8(out, cps[static_cast<size_t>(k)]);
            return Value::string(std::move(out));
          }
        }
        return Value::undefined(object_desc(obj) + " has no element " + repr(key));
      }
      if (key.kind == Value::kString) return get_attr(st, obj, key.s);
      if (key.is_undefined()) fail_undefined(st, key);
      return Value::undefined(object_desc(obj) + " has no element " + repr(key));
    }
    case Value::kObject:
      if (key.kind == Value::kString) return get_attr(st, obj, key.s);
      return Value::undefined(object_desc(obj) + " has no element " + repr(key));
    default:
      if (key.kind == Value::kString) return missing_attr(obj, key.s);
      return Value::undefined(object_desc(obj) + " has no element " + repr(key));
  }
}

std::vector<Value> iterate(RenderState& st, const Value& v) {
  switch (v.kind) {
    case Value::kUndefined:
      return {};
    case Value::kList:
      return v.list->items;
    case Value::kDict: {
      std::vector<Value> keys;
      keys.reserve(v.dict->items.size());
      for (const auto& [k, val] : v.dict->items) keys.push_back(k);
      return keys;
    }
    case Value::kString: {
      std::vector<Value> chars;
      for (const uint32_t cp : decode_utf8(v.s)) {
        std::string c;
        append_utf8(c, cp);
        chars.push_back(Value::string(std::move(c)));
      }
      return chars;
    }
    case Value::kObject:
      if (v.obj->type == Object::kLoop) {
        auto& loop = static_cast<LoopObj&>(*v.obj);
        if (loop.items) return *loop.items;
      }
      [[fallthrough]];
    default:
      st.fail("'" + type_name(v) + "' object is not iterable");
  }
}

Value call_value(RenderState& st, const Value& callee, const Args& args) {
  if (callee.is_undefined()) fail_undefined(st, callee);
  if (callee.kind == Value::kObject) {
    switch (callee.obj->type) {
      case Object::kFunction:
        return static_cast<const FunctionObj&>(*callee.obj).fn(st, args);
      case Object::kMacro:
        return current_renderer(st)->call_macro(static_cast<const MacroObj&>(*callee.obj), args);
      case Object::kBoundMethod: {
        const auto& m = static_cast<const BoundMethodObj&>(*callee.obj);
        if (m.self.kind == Value::kObject && m.self.obj->type == Object::kLoop) {
          auto& loop = static_cast<LoopObj&>(*m.self.obj);
          if (!loop.items) st.fail("the loop object is used after its loop ended");
          if (m.name == "cycle") {
            if (args.pos.empty()) st.fail("no items for cycling given");
            return args.pos[loop.index % args.pos.size()];
          }
          // changed(*values): true when the values differ from the last call's.
          const Value now = Value::make_list(args.pos, true);
          const bool changed = !loop.has_last_changed || !equal(now, loop.last_changed);
          loop.has_last_changed = true;
          loop.last_changed = now;
          return Value::boolean(changed);
        }
        if (m.self.kind == Value::kObject && m.self.obj->type == Object::kCycler) {
          auto& c = static_cast<CyclerObj&>(*m.self.obj);
          if (m.name == "reset") {
            c.pos = 0;
            return Value::none();
          }
          if (c.items.empty()) return Value::none();
          Value cur = c.items[c.pos];
          c.pos = (c.pos + 1) % c.items.size();
          return cur;
        }
        return call_method(st, m.self, m.name, args);
      }
      case Object::kJoiner: {
        auto& j = static_cast<JoinerObj&>(*callee.obj);
        if (!j.used) {
          j.used = true;
          return Value::string("");
        }
        return Value::string(j.sep);
      }
      default:
        break;
    }
  }
  st.fail("'" + type_name(callee) + "' object is not callable");
}

Template::Template(std::string_view source, Options options)
    : root_(std::make_unique<Node>()), options_(std::move(options)) {
  try {
    root_->body = parse_template(source, options_);
    analyze_scopes(*root_);
  } catch (const PyError& e) {
    throw Error(std::string("template: ") + e.what());
  }
}

Template::~Template() = default;
Template::Template(Template&&) noexcept = default;
Template& Template::operator=(Template&&) noexcept = default;

std::string Template::render(const Json& context) const {
  RenderState st;
  st.options = &options_;
  st.max_output = options_.max_output_bytes;
  st.max_steps = options_.max_steps;
  Renderer renderer(st);
  st.renderer = &renderer;
  struct ReleaseCycles {
    ~ReleaseCycles() {
      for (const auto& o : st.cyclic) o->release();
    }
    RenderState& st;
  } release_cycles{st};
  try {
    auto root = std::make_shared<Scope>();
    if (!context.is_null()) {
      if (!context.is_object()) throw Error("template: the render context must be a JSON object");
      root->vars.reserve(context.size());
      for (auto it = context.begin(); it != context.end(); ++it)
        root->vars.emplace_back(it.key(), from_json(it.value()));
    }
    bind_undefined(*root, root_->frame_undefined);
    std::string out;
    renderer.exec(root_->body, root, out);
    return out;
  } catch (const PyError& e) {
    fail_at(st.line, e.what());
  }
}

}  // namespace tessera::jinja
