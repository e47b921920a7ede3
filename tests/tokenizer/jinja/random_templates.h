// A deterministic generator of random templates (text, whitespace control, if/for/set/macro,
// and expressions over a small context) for differential tests against Jinja2.
#pragma once

#include <random>
#include <string>
#include <vector>

namespace tessera::testing {

class RandomTemplates {
 public:
  explicit RandomTemplates(uint64_t seed) : rng_(seed) {}

  std::string make() {
    depth_ = 0;
    std::string out;
    const int n = 1 + pick(4);
    for (int k = 0; k < n; ++k) out += node();
    return out;
  }

 private:
  int pick(int n) { return static_cast<int>(rng_() % static_cast<uint64_t>(n)); }
  template <typename T>
  const T& one(const std::vector<T>& v) {
    return v[static_cast<size_t>(pick(static_cast<int>(v.size())))];
  }

  std::string text() {
    static const std::vector<std::string> pieces = {"a",  " ",    "\n", "  ", "\t", "x\n  ", "\n\n",
                                                    "b ", " c\n", "{",  "}",  "%",  "#"};
    std::string out;
    const int n = 1 + pick(3);
    for (int k = 0; k < n; ++k) out += one(pieces);
    return out;
  }

  std::string ws_open() { return one<std::string>({"", "", "-", "+"}); }
  std::string ws_close() { return one<std::string>({"", "", "-", "+"}); }
  std::string block(const std::string& inner) {
    return "{%" + ws_open() + " " + inner + " " + ws_close() + "%}";
  }

  std::string body() {
    std::string out;
    const int n = pick(3);
    for (int k = 0; k < n; ++k) out += node();
    return out;
  }

  std::string node() {
    ++depth_;
    std::string out;
    const int choice = depth_ > 3 ? pick(3) : pick(13);
    switch (choice) {
      case 0:
        out = text();
        break;
      case 1:
        out = "{{" + one<std::string>({"", "", "-"}) + " " + expr(0) + " " +
              one<std::string>({"", "", "-"}) + "}}";
        break;
      case 2:
        out = "{#" + ws_open() + " note " + ws_close() + "#}";
        break;
      case 3:
        out = block("if " + expr(0)) + body();
        if (pick(2)) out += block("elif " + expr(0)) + body();
        if (pick(2)) out += block("else") + body();
        out += block("endif");
        break;
      case 4: {
        const std::string var = one<std::string>({"x", "item", "m"});
        out = block("for " + var + " in " +
                    one<std::string>({"xs", "names", "messages", "d", "s", "d.items()", "range(3)",
                                      "[]", "undefined_var"}) +
                    (pick(3) == 0 ? " if " + expr(0) : std::string()));
        out += body() + "{{ " + var + " }}{{ loop.index }}" + body();
        if (pick(4) == 0) out += block(one<std::string>({"break", "continue"}));
        if (pick(3) == 0) out += block("else") + body();
        out += block("endfor");
        break;
      }
      case 5:
        out = block("set " + one<std::string>({"n", "s", "v", "xs"}) + " = " + expr(0));
        break;
      case 6:
        out = block("set ns = namespace(c=0)") + block("for x in xs") +
              block("set ns.c = ns.c + " + expr(1)) + block("endfor") + "{{ ns.c }}";
        break;
      case 7:
        out = block("macro mm(a, b=" + atom() + ")") + body() + "{{ a }}{{ b }}" +
              block("endmacro") + "{{ mm(" + expr(1) + ") }}" + text();
        break;
      case 8:
        out = block("set sb" + std::string(pick(2) ? " | upper" : "")) + body() + block("endset") +
              "[{{ sb }}]";
        break;
      case 9:
        out = block("filter " +
                    one<std::string>({"upper", "trim", "replace('a', 'b')", "indent(2)"})) +
              body() + block("endfilter");
        break;
      case 10:
        out = block("for x in " + one<std::string>({"xs", "names", "'ab'", "messages"})) + "{{ " +
              one<std::string>({"loop.index0", "loop.revindex", "loop.first", "loop.last",
                                "loop.length", "loop.previtem", "loop.nextitem",
                                "loop.cycle('a', 'b')", "loop.changed(x)", "loop.depth"}) +
              " }}" + body() + block("endfor");
        break;
      case 11:
        out = block("macro mk(p, q='d', r=none)") + "{{ p }}-{{ q }}-{{ r }}" + body() +
              block("endmacro") + "{{ mk(" + expr(1) + ", r=" + atom() + ") }}" +
              "{{ mk(q=" + atom() + ", p=1) }}";
        break;
      default:
        out = text() + "{{ " + expr(0) + " }}";
    }
    --depth_;
    return out;
  }

  std::string atom() {
    static const std::vector<std::string> atoms = {
        "1",          "0",        "-2",       "2.5",           "1e3",     "0.1",  "'a'", "''",
        "'x y'",      "\"q\\n\"", "'ü'",      "true",          "false",   "none", "[]",  "[1, 2]",
        "['b', 'a']", "{}",       "{'k': 1}", "(1, 'a')",      "n",       "f",    "s",   "xs",
        "names",      "d",        "messages", "undefined_var", "nothing", "t",    "u8"};
    return one(atoms);
  }

  // Subscripts and method calls go on names only: Jinja2 folds constant expressions at compile
  // time through different lookup rules (a quirk not worth reproducing).
  std::string name() {
    static const std::vector<std::string> names = {
        "n", "f", "s", "xs", "names", "d", "messages", "undefined_var", "nothing", "t", "u8"};
    return one(names);
  }

  std::string expr(int level) {
    if (level > 2) return atom();
    switch (pick(12)) {
      case 0:
      case 1:
        return atom();
      case 2:
        return expr(level + 1) + " " +
               one<std::string>({"+", "-", "*", "/", "//", "%", "~", "**"}) + " " + expr(level + 1);
      case 3:
        return expr(level + 1) + " " +
               one<std::string>({"==", "!=", "<", ">=", "in", "not in", "and", "or"}) + " " +
               expr(level + 1);
      case 4:
        return "not " + expr(level + 1);
      case 5:
        return expr(level + 1) + " if " + expr(level + 1) +
               (pick(2) ? " else " + expr(level + 1) : std::string());
      case 6:
        return name() + one<std::string>({"[0]", "[-1]", "[1:]", "[::-1]", "[:2]", ".role",
                                          "['content']", ".k", "[5]", "[0].content"});
      case 7:
        return "(" + expr(level + 1) + ")|" +
               one<std::string>({"length",
                                 "trim",
                                 "upper",
                                 "lower",
                                 "title",
                                 "first",
                                 "last",
                                 "list",
                                 "string",
                                 "int",
                                 "float",
                                 "abs",
                                 "tojson",
                                 "tojson(indent=2)",
                                 "join(',')",
                                 "default('dflt')",
                                 "default('e', true)",
                                 "reverse|list",
                                 "sort|list",
                                 "unique|list",
                                 "items|list",
                                 "dictsort",
                                 "sum",
                                 "min",
                                 "max",
                                 "round(1)",
                                 "replace('a', 'b')",
                                 "capitalize",
                                 "wordcount",
                                 "indent(2)",
                                 "batch(2)|list",
                                 "map('upper')|list",
                                 "select('odd')|list",
                                 "selectattr('role', 'equalto', 'user')|list",
                                 "count",
                                 "center(7)",
                                 "format(1)",
                                 "trim('a')"});
      case 8:
        return expr(level + 1) + " is " +
               one<std::string>({"defined", "undefined", "none",     "string",        "number",
                                 "mapping", "iterable",  "sequence", "integer",       "float",
                                 "boolean", "odd",       "even",     "divisibleby 2", "eq 1",
                                 "in xs",   "not none",  "true",     "false",         "lower"});
      case 9:
        return name() + one<std::string>({".strip()", ".upper()", ".split()", ".split(',')",
                                          ".startswith('a')", ".endswith('')", ".lstrip('a')",
                                          ".replace('a', '')", ".title()", ".find('a')",
                                          ".items()|list", ".get('k')", ".keys()|list",
                                          ".count('a')", ".format(1)", ".rstrip()"});
      case 10:
        return "[" + expr(level + 1) + ", " + expr(level + 1) + "]";
      default:
        return "(" + expr(level + 1) + ")";
    }
  }

  std::mt19937_64 rng_;
  int depth_ = 0;
};

}  // namespace tessera::testing
