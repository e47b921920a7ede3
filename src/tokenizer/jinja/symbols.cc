// Jinja2 decides at compile time, per frame (the template, a for body, a macro body, a block
// set, ...), which names are the frame's own variables. A name the frame assigns before reading
// it starts out *undefined* there, not looked up in the context: nested frames that read it
// before the assignment see undefined. This pass reproduces that analysis (idtracking.py) and
// records, for each frame, the names to bind to undefined on entry.
#include <algorithm>
#include <map>
#include <set>

#include "tokenizer/jinja/internal.h"

namespace tessera::jinja {
namespace {

enum class Load { kParameter, kResolve, kAlias, kUndefined };

struct Symbols {
  const Symbols* parent = nullptr;
  std::set<std::string> refs;
  std::map<std::string, Load> loads;
  std::set<std::string> stores;

  bool find_ref(const std::string& name) const {
    for (const Symbols* s = this; s; s = s->parent)
      if (s->refs.count(name)) return true;
    return false;
  }
  void define(const std::string& name, Load load) {
    refs.insert(name);
    loads[name] = load;
  }
  void load(const std::string& name) {
    if (!find_ref(name)) define(name, Load::kResolve);
  }
  void store(const std::string& name) {
    stores.insert(name);
    if (refs.count(name)) return;
    if (parent && parent->find_ref(name)) {
      define(name, Load::kAlias);
      return;
    }
    define(name, Load::kUndefined);
  }
  void parameter(const std::string& name) {
    stores.insert(name);
    define(name, Load::kParameter);
  }
  // After the branches of an if: a name stored in only some branches is looked up (in the
  // context or the enclosing frame) at frame entry.
  void branch_update(const std::vector<Symbols>& branches) {
    std::map<std::string, size_t> counts;
    for (const auto& b : branches)
      for (const auto& name : b.stores)
        if (!stores.count(name)) ++counts[name];
    for (const auto& b : branches) {
      refs.insert(b.refs.begin(), b.refs.end());
      for (const auto& [k, v] : b.loads) loads[k] = v;
      stores.insert(b.stores.begin(), b.stores.end());
    }
    for (const auto& [name, count] : counts) {
      if (count == branches.size()) continue;
      loads[name] = parent && parent->find_ref(name) ? Load::kAlias : Load::kResolve;
    }
  }
};

// A nested frame, analyzed once its parent frame is complete (as Jinja2 does at code
// generation, with the parent's final symbol table).
struct Pending {
  Body* body;
  std::vector<std::string>* out;
  std::vector<std::string> params;
  std::vector<const Expr*> exprs;
};

void visit_expr(const Expr* e, Symbols& sym) {
  if (!e) return;
  if (e->kind == Expr::kName) sym.load(e->name);
  for (const auto& a : e->args) visit_expr(a.get(), sym);
  for (const auto& [k, v] : e->kwargs) visit_expr(v.get(), sym);
}

void analyze_frame(Body& body, const Symbols* parent, std::vector<std::string>& out,
                   const std::vector<std::string>& params, std::vector<const Expr*> exprs = {});

void visit_body(Body& body, Symbols& sym, std::vector<Pending>& pending);

// Jinja2's If node holds body, elif_ (each an If without its own elif/else) and else_; the
// branch tables are copies of the enclosing one.
void visit_if(Stmt& s, size_t k, Symbols& sym, std::vector<Pending>& pending) {
  visit_expr(s.conds[k].get(), sym);
  Symbols body = sym;
  visit_body(s.bodies[k], body, pending);
  Symbols elifs = sym;
  Symbols other = sym;
  if (k == 0) {
    for (size_t e = 1; e < s.conds.size(); ++e) visit_if(s, e, elifs, pending);
    visit_body(s.else_body, other, pending);
  }
  sym.branch_update({body, elifs, other});
}

void visit_stmt(Stmt& s, Symbols& sym, std::vector<Pending>& pending) {
  switch (s.kind) {
    case Stmt::kText:
    case Stmt::kBreak:
    case Stmt::kContinue:
      return;
    case Stmt::kPrint:
      visit_expr(s.expr.get(), sym);
      return;
    case Stmt::kIf:
      visit_if(s, 0, sym, pending);
      return;
    case Stmt::kFor: {
      visit_expr(s.expr.get(), sym);
      // The body (with the filter condition) is a frame of its own; the else block too.
      std::vector<std::string> params = s.targets;
      params.push_back("loop");
      pending.push_back({&s.body, &s.frame_undefined, params, {s.cond.get()}});
      pending.push_back({&s.else_body, &s.else_undefined, {}, {}});
      return;
    }
    case Stmt::kSet:
      visit_expr(s.expr.get(), sym);
      for (const auto& t : s.targets) sym.store(t);
      return;
    case Stmt::kSetAttr:
      visit_expr(s.expr.get(), sym);
      sym.load(s.targets[0]);
      return;
    case Stmt::kSetBlock:
      for (const auto& f : s.filters) visit_expr(f.get(), sym);
      pending.push_back({&s.body, &s.frame_undefined, {}, {}});
      sym.store(s.targets[0]);
      return;
    case Stmt::kMacro: {
      sym.store(s.name);
      std::vector<std::string> params = s.params;
      params.push_back("varargs");
      params.push_back("kwargs");
      std::vector<const Expr*> defaults;
      for (const auto& d : s.defaults) defaults.push_back(d.get());
      pending.push_back({&s.body, &s.frame_undefined, params, defaults});
      return;
    }
    case Stmt::kFilterBlock:
      for (const auto& f : s.filters) visit_expr(f.get(), sym);
      pending.push_back({&s.body, &s.frame_undefined, {}, {}});
      return;
    case Stmt::kWith:
      for (const auto& e : s.exprs) visit_expr(e.get(), sym);
      pending.push_back({&s.body, &s.frame_undefined, s.targets, {}});
      return;
    case Stmt::kScope:
      pending.push_back({&s.body, &s.frame_undefined, {}, {}});
      return;
  }
}

void visit_body(Body& body, Symbols& sym, std::vector<Pending>& pending) {
  for (auto& s : body) visit_stmt(*s, sym, pending);
}

// `exprs` belong to the frame too (a loop's filter condition, a macro's defaults).
void analyze_frame(Body& body, const Symbols* parent, std::vector<std::string>& out,
                   const std::vector<std::string>& params, std::vector<const Expr*> exprs) {
  Symbols sym;
  sym.parent = parent;
  for (const auto& p : params) sym.parameter(p);
  for (const Expr* e : exprs) visit_expr(e, sym);
  std::vector<Pending> pending;
  visit_body(body, sym, pending);
  out.clear();
  for (const auto& [name, load] : sym.loads)
    if (load == Load::kUndefined) out.push_back(name);
  for (auto& p : pending) analyze_frame(*p.body, &sym, *p.out, p.params, p.exprs);
}

}  // namespace

void analyze_scopes(Node& root) {
  analyze_frame(root.body, nullptr, root.frame_undefined, {});
}

}  // namespace tessera::jinja
