// Hand-written expectations for each construct of tessera's Jinja interpreter. The expected
// strings follow from Jinja2's documented semantics (trim_blocks, lstrip_blocks, Python's
// str/repr, the sandbox); jinja_oracle_test checks the same ground against Jinja2 itself.
#include "tokenizer/jinja/jinja.h"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "core/status.h"

namespace tessera::jinja {
namespace {

std::string render(std::string_view source, const Json& context = Json::object(),
                   Options options = {}) {
  return Template(source, std::move(options)).render(context);
}

// The message of the tessera::Error that parsing or rendering throws ("" if none).
std::string error_of(std::string_view source, const Json& context = Json::object(),
                     Options options = {}) {
  try {
    render(source, context, std::move(options));
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

Json conversation() {
  return Json::parse(R"({"messages": [{"role": "system", "content": "sys"},
                                      {"role": "user", "content": "hi"},
                                      {"role": "assistant", "content": "hello"}]})");
}

TEST(Jinja, TextAndPrint) {
  EXPECT_EQ(render(""), "");
  EXPECT_EQ(render("plain text"), "plain text");
  EXPECT_EQ(render("a {{ 'b' }} c"), "a b c");
  EXPECT_EQ(render("{{ x }}", {{"x", "from context"}}), "from context");
  EXPECT_EQ(render("{ not a tag } {% raw %}{{ x }}{% endraw %}"), "{ not a tag } {{ x }}");
  EXPECT_EQ(render("{{ '{{' }}"), "{{");
  // One trailing newline is dropped (keep_trailing_newline is off); \r\n becomes \n.
  EXPECT_EQ(render("a\n"), "a");
  EXPECT_EQ(render("a\n\n"), "a\n");
  EXPECT_EQ(render("a\r\nb\rc"), "a\nb\nc");
}

TEST(Jinja, Literals) {
  EXPECT_EQ(render("{{ 42 }} {{ 0x10 }} {{ 0o10 }} {{ 0b10 }} {{ 1_000 }}"), "42 16 8 2 1000");
  EXPECT_EQ(render("{{ 1.5 }} {{ 2e3 }} {{ 1.0 }}"), "1.5 2000.0 1.0");
  EXPECT_EQ(render("{{ true }} {{ False }} {{ none }} {{ None }}"), "True False None None");
  EXPECT_EQ(render(R"({{ 'a\nb' }}|{{ "q\"" }}|{{ '\x41\u00e9' }}|{{ '\z' }})"),
            "a\nb|q\"|A\xC3\xA9|\\z");
  EXPECT_EQ(render("{{ 'a' 'b' }}"), "ab");  // adjacent strings concatenate
  EXPECT_EQ(render("{{ [1, 'a', none, [true]] }}"), "[1, 'a', None, [True]]");
  EXPECT_EQ(render("{{ {'k': 'v', 'n': 1.0} }}"), "{'k': 'v', 'n': 1.0}");
  EXPECT_EQ(render("{{ (1,) }} {{ (1, 2) }} {{ () }}"), "(1,) (1, 2) ()");
  EXPECT_EQ(render("{{ 1, 'a' }}"), "(1, 'a')");
}

TEST(Jinja, PythonStrAndRepr) {
  EXPECT_EQ(render("{{ 1e16 }} {{ 1e15 }} {{ 0.0001 }} {{ 0.00001 }} {{ -0.0 }}"),
            "1e+16 1000000000000000.0 0.0001 1e-05 -0.0");
  EXPECT_EQ(render("{{ 0.1 + 0.2 }} {{ 1 / 3 }}"), "0.30000000000000004 0.3333333333333333");
  EXPECT_EQ(render("{{ [\"it's\", 'say \"x\"', 'both \\' \"'] }}"),
            R"(["it's", 'say "x"', 'both \' "'])");
  EXPECT_EQ(render("{{ ['\\n', '\\x01', '\\\\'] }}"), R"(['\n', '\x01', '\\'])");
  EXPECT_EQ(render("{{ x }}", {{"x", Json::parse(R"({"a": [1, 2.5, null, false]})")}}),
            "{'a': [1, 2.5, None, False]}");
  EXPECT_EQ(render("[{{ missing }}]"), "[]");  // undefined prints as nothing
}

TEST(Jinja, TrimBlocksAndLstripBlocks) {
  // A block tag alone on its line leaves nothing behind: lstrip removes the indentation
  // before it, trim_blocks the newline after it.
  EXPECT_EQ(render("a\n  {% if true %}\n  b\n  {% endif %}\nc"), "a\n  b\nc");
  // Comments are stripped the same way; print tags are not.
  EXPECT_EQ(render("a\n  {# note #}\nb"), "a\nb");
  EXPECT_EQ(render("a\n  {{ 'x' }}\nb"), "a\n  x\nb");
  // Text before the tag on the same line stops lstrip.
  EXPECT_EQ(render("a {% if true %}b{% endif %}"), "a b");
  // + disables lstrip (before) or trim (after) for one tag.
  EXPECT_EQ(render("  {%+ if true %}x{% endif %}"), "  x");
  EXPECT_EQ(render("{% if true +%}\nx{% endif %}"), "\nx");
  // Without the options the whitespace stays.
  Options raw;
  raw.trim_blocks = false;
  raw.lstrip_blocks = false;
  EXPECT_EQ(render("a\n  {% if true %}\n  b\n  {% endif %}\nc", Json::object(), raw),
            "a\n  \n  b\n  \nc");
}

TEST(Jinja, WhitespaceControl) {
  EXPECT_EQ(render("a  \n {%- if true -%} \n b \n {%- endif -%} \n c"), "abc");
  EXPECT_EQ(render("a \n {{- 'x' -}} \n b"), "axb");
  EXPECT_EQ(render("a \n {#- c -#} \n b"), "ab");
  EXPECT_EQ(render("a {{- -1 }}"), "a-1");  // `{{-` then the number
  EXPECT_EQ(render("{%- raw -%}  x  {%- endraw -%}"), "x");
}

TEST(Jinja, Arithmetic) {
  EXPECT_EQ(render("{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 2 ** 3 ** 2 }} {{ -2 ** 2 }}"),
            "7 9 64 4");  // ** is left-associative and binds looser than unary minus here
  EXPECT_EQ(render("{{ 7 / 2 }} {{ 4 / 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 7 % -3 }}"),
            "3.5 2.0 3 -4 2 -2");
  EXPECT_EQ(render("{{ 'ab' * 2 }} {{ [0] * 3 }} {{ 'a' + 'b' }} {{ [1] + [2] }}"),
            "abab [0, 0, 0] ab [1, 2]");
  EXPECT_EQ(render("{{ true + 1 }} {{ 2 * 1.5 }}"), "2 3.0");
  EXPECT_EQ(render("{{ 'a' ~ 1 ~ none ~ missing ~ [2] }}"), "a1None[2]");
  EXPECT_EQ(render("{{ '%s=%d' % ('n', 3) }} {{ '%.2f' % 2.345 }} {{ '%5s|%-3s|' % ('a', 'b') }}"),
            "n=3 2.35     a|b  |");  // 2.345 is stored as 2.34500000000000019...
}

TEST(Jinja, ComparisonsAndLogic) {
  EXPECT_EQ(
      render("{{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 1 == 1.0 }} {{ 1 == true }} {{ [1] == (1,) }}"),
      "True False True True False");
  EXPECT_EQ(render("{{ 'b' in 'abc' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 0} }} {{ 3 not in [3] }}"),
            "True True True False");
  // and/or return an operand, as in Python.
  EXPECT_EQ(render("{{ 0 or 'x' }} {{ 'a' and 'b' }} {{ '' and 'b' }}| {{ none or [] }}"),
            "x b | []");
  EXPECT_EQ(render("{{ not 0 }} {{ not 'a' }} {{ not missing is defined }}"), "True False True");
  EXPECT_EQ(render("{{ 'y' if 1 else 'n' }} {{ 'y' if 0 else 'n' }} [{{ 'y' if 0 }}]"), "y n []");
  EXPECT_EQ(render("{{ 1 if 0 else 2 if 0 else 3 }}"), "3");
}

TEST(Jinja, AttributesSubscriptsAndSlices) {
  const Json ctx = conversation();
  EXPECT_EQ(
      render("{{ messages[1].role }} {{ messages[1]['content'] }} {{ messages.0.role }}", ctx),
      "user hi system");
  EXPECT_EQ(render("{{ messages[-1].content }}|{{ messages[9] }}|{{ messages[0].nope }}|", ctx),
            "hello|||");
  EXPECT_EQ(render("{{ (messages[1:] | map(attribute='role') | list) }}", ctx),
            "['user', 'assistant']");
  EXPECT_EQ(render("{{ messages[::-1][0].role }} {{ messages[:-1] | length }}", ctx),
            "assistant 2");
  EXPECT_EQ(render("{{ 'hello'[1:4] }} {{ 'hello'[::-1] }} {{ 'hello'[-1] }} {{ 'héllo'[1] }}"),
            "ell olleh o \xC3\xA9");
  EXPECT_EQ(render("{{ [1, 2, 3, 4][::2] }} {{ [1, 2, 3][5:] }} {{ [1, 2, 3][-2:] }}"),
            "[1, 3] [] [2, 3]");
  // A dict attribute that names a dict method is the method (Jinja2's getattr comes first);
  // a subscript looks up the item first.
  EXPECT_EQ(render("{{ d['items'] }} {{ d.items() | list }}", {{"d", {{"items", 5}}}}),
            "5 [('items', 5)]");
  EXPECT_EQ(render("{{ none.attr }}|{{ 5.attr }}|"), "||");
}

TEST(Jinja, ForLoops) {
  const Json xs = {{"xs", {3, 1, 2}}};
  EXPECT_EQ(render("{% for x in xs %}{{ x }},{% endfor %}", xs), "3,1,2,");
  EXPECT_EQ(render("{% for x in xs %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}"
                   "{{ loop.revindex0 }}{{ loop.length }}{{ loop.first }}{{ loop.last }} "
                   "{% endfor %}",
                   xs),
            "10323TrueFalse 21213FalseFalse 32103FalseTrue ");
  EXPECT_EQ(render("{% for x in xs %}{{ loop.previtem }}-{{ loop.nextitem }} {% endfor %}", xs),
            "-1 3-2 1- ");
  EXPECT_EQ(render("{% for x in xs %}{{ loop.cycle('a', 'b') }}{% endfor %}", xs), "aba");
  EXPECT_EQ(render("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}{{ v }}{% endfor %}"), "a1b2");
  EXPECT_EQ(render("{% for k in {'a': 1, 'b': 2} %}{{ k }}{% endfor %}"), "ab");
  EXPECT_EQ(render("{% for c in 'héj' %}[{{ c }}]{% endfor %}"), "[h][\xC3\xA9][j]");
  EXPECT_EQ(render("{% for x in xs if x > 1 %}{{ x }}/{{ loop.length }} {% endfor %}", xs),
            "3/2 2/2 ");
  EXPECT_EQ(render("{% for x in [] %}x{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(render("{% for x in missing %}x{% else %}none{% endfor %}"), "none");
  EXPECT_EQ(render("{% for x in xs %}{% if x == 1 %}{% break %}{% endif %}{{ x }}{% endfor %}", xs),
            "3");
  EXPECT_EQ(
      render("{% for x in xs %}{% if x == 1 %}{% continue %}{% endif %}{{ x }}{% endfor %}", xs),
      "32");
  EXPECT_EQ(render("{% for a in [1, 2] %}{% for b in 'xy' %}{{ loop.index }}{{ a }}{{ b }} "
                   "{% endfor %}{{ loop.index }}|{% endfor %}"),
            "11x 21y 1|12x 22y 2|");
}

TEST(Jinja, Scoping) {
  // A for body is a scope of its own, fresh at every iteration; `if` is not a scope.
  EXPECT_EQ(render("{% set x = 1 %}{% for i in [1, 2] %}{{ x }}{% set x = i * 10 %}{{ x }},"
                   "{% endfor %}{{ x }}"),
            "110,120,1");
  EXPECT_EQ(render("{% if true %}{% set y = 'kept' %}{% endif %}{{ y }}"), "kept");
  // namespace() carries values out of loops.
  EXPECT_EQ(render("{% set ns = namespace(total=0) %}{% for i in [1, 2, 3] %}"
                   "{% set ns.total = ns.total + i %}{% endfor %}{{ ns.total }}"),
            "6");
  EXPECT_EQ(render("{% set ns = namespace({'a': 1}, b=2) %}{{ ns.a }}{{ ns.b }}[{{ ns.c }}]"),
            "12[]");
  EXPECT_EQ(render("{% set a, b = 1, 2 %}{{ b }}{{ a }}"), "21");
  EXPECT_EQ(render("{% set s %}x{{ 1 + 1 }}y{% endset %}[{{ s }}]"), "[x2y]");
  EXPECT_EQ(render("{% set s | upper %}abc{% endset %}{{ s }}"), "ABC");
  EXPECT_EQ(render("{% with a = 1 %}{{ a }}{% endwith %}[{{ a }}]"), "1[]");
}

TEST(Jinja, Macros) {
  EXPECT_EQ(render("{% macro hi(name, greeting='Hello') %}{{ greeting }} {{ name }}{% endmacro %}"
                   "{{ hi('A') }}/{{ hi('B', 'Yo') }}/{{ hi(greeting='Hey', name='C') }}"),
            "Hello A/Yo B/Hey C");
  EXPECT_EQ(render("{% macro m(a, b=a * 2) %}{{ a }}{{ b }}{% endmacro %}{{ m(1) }}{{ m(1, 5) }}"),
            "1215");
  EXPECT_EQ(render("{% macro m(a) %}[{{ a }}]{% endmacro %}{{ m() }}"), "[]");
  EXPECT_EQ(render("{% macro f(n) %}{% if n > 0 %}{{ n }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
                   "{{ f(3) }}"),
            "321");
  // A macro returns its output as a string.
  EXPECT_EQ(render("{% macro m() %}abc{% endmacro %}{{ m() | length }} {{ m() ~ '!' }}"), "3 abc!");
  EXPECT_EQ(render("{% macro m() %}{{ later }}{% endmacro %}{% set later = 'seen' %}{{ m() }}"),
            "seen");
}

TEST(Jinja, StringFilters) {
  EXPECT_EQ(render("[{{ '  a b  ' | trim }}] [{{ 'xxaxx' | trim('x') }}]"), "[a b] [a]");
  EXPECT_EQ(render("{{ 'aB' | lower }} {{ 'aB' | upper }} {{ 'hello big-world' | title }} "
                   "{{ 'hELLO' | capitalize }}"),
            "ab AB Hello Big-World Hello");
  EXPECT_EQ(render("{{ 'a-b-c' | replace('-', '') }} {{ 'aaa' | replace('a', 'b', 1) }}"),
            "abc baa");
  EXPECT_EQ(render("{{ '<a href=\"x\">&\\'' | e }}"), "&lt;a href=&#34;x&#34;&gt;&amp;&#39;");
  EXPECT_EQ(render("{{ 'l1\\nl2\\n\\nl4' | indent(2) }}"), "l1\n  l2\n\n  l4");
  EXPECT_EQ(render("{{ 'l1\\nl2' | indent(2, true) }}"), "  l1\n  l2");
  EXPECT_EQ(
      render("{{ 'one two three' | wordcount }} {{ 'abc' | reverse }} {{ 'ab' | center(6) }}|"),
      "3 cba   ab  |");
  EXPECT_EQ(render("{{ 5 | string ~ 'x' }} {{ '%s-%s' | format(1, 'b') }}"), "5x 1-b");
  EXPECT_EQ(render("{{ 'a long sentence here' | truncate(10) }}"), "a long...");
}

TEST(Jinja, SequenceFilters) {
  const Json ctx = Json::parse(R"({"xs": [3, 1, 2], "names": ["b", "A", "c"],
      "users": [{"n": "x", "age": 3}, {"n": "y", "age": 1}, {"n": "z", "age": 3}]})");
  EXPECT_EQ(
      render("{{ xs | length }} {{ xs | count }} {{ 'héllo' | length }} {{ {} | length }}", ctx),
      "3 3 5 0");
  EXPECT_EQ(
      render("{{ xs | first }} {{ xs | last }} {{ xs | min }} {{ xs | max }} {{ xs | sum }}", ctx),
      "3 2 1 3 6");
  EXPECT_EQ(render("{{ xs | sort }} {{ xs | sort(reverse=true) }} {{ names | sort }}", ctx),
            "[1, 2, 3] [3, 2, 1] ['A', 'b', 'c']");  // case-insensitive by default
  EXPECT_EQ(render("{{ xs | reverse | list }} {{ xs | join('-') }} {{ 'ab' | list }}", ctx),
            "[2, 1, 3] 3-1-2 ['a', 'b']");
  EXPECT_EQ(
      render("{{ users | map(attribute='n') | join }} {{ names | map('upper') | list }}", ctx),
      "xyz ['B', 'A', 'C']");
  EXPECT_EQ(render("{{ users | selectattr('age', 'equalto', 3) | map(attribute='n') | list }} "
                   "{{ users | rejectattr('age', '==', 3) | map(attribute='n') | list }}",
                   ctx),
            "['x', 'z'] ['y']");
  EXPECT_EQ(render("{{ [1, 2, 3, 4] | select('even') | list }} {{ [0, 1, ''] | reject | list }}"),
            "[2, 4] [0, '']");
  EXPECT_EQ(render("{{ users | sort(attribute='age') | map(attribute='n') | join }} "
                   "{{ users | sum(attribute='age') }} {{ users | max(attribute='age') }}",
                   ctx),
            "yxz 7 {'n': 'x', 'age': 3}");
  EXPECT_EQ(render("{{ ['a', 'A', 'b'] | unique | list }} {{ [1, 2, 3] | batch(2) | list }}"),
            "['a', 'b'] [[1, 2], [3]]");
  EXPECT_EQ(render("{{ {'b': 1, 'a': 2} | dictsort }} {{ {'b': 1} | items | list }}"),
            "[('a', 2), ('b', 1)] [('b', 1)]");
  EXPECT_EQ(render("{{ missing | default('d') }} {{ '' | default('d', true) }} {{ 0 | d(5) }}"),
            "d d 0");
  EXPECT_EQ(
      render(
          "{{ '12' | int + 1 }} {{ 'x' | int }} {{ '2.5' | float }} {{ 3.7 | int }} "
          "{{ -2 | abs }} {{ 2.675 | round(2) }} {{ 2.5 | round }} {{ 1.21 | round(1, 'ceil') }}"),
      "13 0 2.5 3 2 2.67 2.0 1.3");  // 2.675 is 2.67499... in binary; ties go to even
}

TEST(Jinja, Tojson) {
  const Json ctx = Json::parse(R"({"v": {"name": "ü", "list": [1, 2.0, null, true], "e": {}}})");
  EXPECT_EQ(render("{{ v | tojson }}", ctx),
            "{\"name\": \"\xC3\xBC\", \"list\": [1, 2.0, null, true], \"e\": {}}");
  EXPECT_EQ(
      render("{{ v | tojson(indent=2) }}", ctx),
      "{\n  \"name\": \"\xC3\xBC\",\n  \"list\": [\n    1,\n    2.0,\n    null,\n    true\n  ],"
      "\n  \"e\": {}\n}");
  EXPECT_EQ(render("{{ {'b': 1, 'a': [1, 2]} | tojson(sort_keys=true, separators=(',', ':')) }}"),
            "{\"a\":[1,2],\"b\":1}");
  EXPECT_EQ(render("{{ 'ü\"\\n' | tojson }} {{ 'ü' | tojson(ensure_ascii=true) }}"),
            "\"\xC3\xBC\\\"\\n\" \"\\u00fc\"");
  EXPECT_NE(error_of("{{ missing | tojson }}").find("not JSON serializable"), std::string::npos);
}

TEST(Jinja, Tests) {
  EXPECT_EQ(render("{{ x is defined }} {{ y is defined }} {{ y is undefined }} {{ x is none }}",
                   {{"x", nullptr}}),
            "True False True True");
  EXPECT_EQ(
      render("{{ 'a' is string }} {{ {} is mapping }} {{ [] is iterable }} {{ 1 is iterable }} "
             "{{ 'a' is sequence }}"),
      "True True True False True");
  EXPECT_EQ(render("{{ 1 is number }} {{ 1 is integer }} {{ 1.0 is float }} {{ true is boolean }} "
                   "{{ true is integer }} {{ true is number }}"),
            "True True True True False True");
  EXPECT_EQ(render("{{ true is true }} {{ 1 is true }} {{ false is false }}"), "True False True");
  EXPECT_EQ(
      render("{{ 3 is odd }} {{ 3 is even }} {{ 9 is divisibleby 3 }} {{ 9 is divisibleby(2) }}"),
      "True False True False");
  EXPECT_EQ(render("{{ 1 is eq 1 }} {{ 1 is equalto 2 }} {{ 1 is ne 2 }} "
                   "{{ 1 is lt 2 }} {{ 1 is gt 2 }} {{ 2 is ge 2 }} {{ 2 is le 1 }}"),
            "True False True True False True False");
  // Operator-named tests exist for select/selectattr; `x is ==` is not valid syntax.
  EXPECT_EQ(render("{{ [1, 2, 3] | select('>', 1) | list }} {{ [1, 2] | reject('==', 1) | list }}"),
            "[2, 3] [2]");
  EXPECT_NE(error_of("{{ 1 is == 1 }}"), "");
  EXPECT_EQ(
      render("{{ 1 is in [1] }} {{ 'x' is not in 'abc' }} {{ 'ab' is lower }} {{ 'AB' is upper }}"),
      "True True True True");
}

TEST(Jinja, Methods) {
  EXPECT_EQ(render("[{{ '  a  '.strip() }}][{{ '  a  '.lstrip() }}][{{ '  a  '.rstrip() }}]"
                   "[{{ '\\n\\na\\n'.strip('\\n') }}]"),
            "[a][a  ][  a][a]");
  EXPECT_EQ(render("{{ 'a,b,,c'.split(',') }} {{ ' a  b '.split() }} {{ 'a b c'.split(' ', 1) }} "
                   "{{ 'a,b,c'.rsplit(',', 1) }}"),
            "['a', 'b', '', 'c'] ['a', 'b'] ['a', 'b c'] ['a,b', 'c']");
  EXPECT_EQ(render("{{ 'abc'.startswith('ab') }} {{ 'abc'.endswith(('x', 'c')) }} "
                   "{{ 'abc'.startswith('c') }}"),
            "True True False");
  EXPECT_EQ(
      render("{{ 'Ab'.upper() }} {{ 'Ab'.lower() }} {{ 'ab cd'.title() }} {{ 'aB'.capitalize() }}"),
      "AB ab Ab Cd Ab");
  EXPECT_EQ(
      render("{{ 'hello'.find('l') }} {{ 'hello'.rfind('l') }} {{ 'hello'.find('x') }} "
             "{{ 'hello'.count('l') }} {{ 'a-b'.replace('-', '+') }} {{ '-'.join(['a', 'b']) }}"),
      "2 3 -1 2 a+b a-b");
  EXPECT_EQ(render("{{ '{} {}'.format('a', 1) }} {{ '{x}!'.format(x='y') }}"), "a 1 y!");
  EXPECT_EQ(
      render("{{ d.keys() | list }} {{ d.values() | list }} {{ d.get('a') }} {{ d.get('z') }} "
             "{{ d.get('z', 0) }}",
             {{"d", {{"a", 1}}}}),
      "['a'] [1] 1 None 0");
  // Splitting out reasoning the way Qwen3 / DeepSeek-R1 templates do.
  EXPECT_EQ(render("{{ c.split('</think>')[-1].lstrip('\\n') }}|"
                   "{{ c.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') }}",
                   {{"c", "<think>\nwhy\n</think>\n\nanswer"}}),
            "answer|why");
}

TEST(Jinja, Globals) {
  EXPECT_EQ(
      render("{{ range(3) | list }} {{ range(1, 7, 2) | list }} {{ range(3, 0, -1) | list }}"),
      "[0, 1, 2] [1, 3, 5] [3, 2, 1]");
  EXPECT_EQ(render("{{ dict(a=1, b='x') }}"), "{'a': 1, 'b': 'x'}");
  EXPECT_EQ(render("{% set c = cycler('x', 'y') %}{{ c.next() }}{{ c.next() }}{{ c.next() }}"),
            "xyx");
  EXPECT_EQ(render("{% set j = joiner('+') %}{% for i in [1, 2, 3] %}{{ j() }}{{ i }}{% endfor %}"),
            "1+2+3");
  Options options;
  options.now = [] { return std::time_t{1721952000}; };  // 2024-07-26 00:00:00 UTC
  ::setenv("TZ", "UTC", 1);
  EXPECT_EQ(render("{{ strftime_now('%d %b %Y') }}", Json::object(), options), "26 Jul 2024");
  // raise_exception's message comes through as is.
  EXPECT_EQ(error_of("{{ raise_exception('Roles must alternate!') }}"), "Roles must alternate!");
}

TEST(Jinja, GenerationAndFilterBlocks) {
  EXPECT_EQ(render("{% generation %}kept {{ 1 }}{% endgeneration %}"), "kept 1");
  EXPECT_EQ(render("{% filter upper %}ab{{ 'c' }}{% endfilter %}"), "ABC");
}

TEST(Jinja, UndefinedSemantics) {
  // Printing, iterating, testing and defaulting an undefined value are fine ...
  EXPECT_EQ(render("[{{ u }}]{% for x in u %}x{% endfor %}{{ u is defined }}{{ u | default(1) }}"
                   "{{ u | length }}{{ u ~ 'a' }}{{ not u }}"),
            "[]False10aTrue");
  // ... using it as a value is an error that names it.
  EXPECT_EQ(error_of("{{ u.attr }}"), "template: line 1: 'u' is undefined");
  EXPECT_EQ(error_of("{{ u + 1 }}"), "template: line 1: 'u' is undefined");
  EXPECT_EQ(error_of("{{ u() }}"), "template: line 1: 'u' is undefined");
  EXPECT_EQ(error_of("{{ messages[0].nope.deeper }}", conversation()),
            "template: line 1: 'dict object' has no attribute 'nope'");
  EXPECT_EQ(error_of("\n\n{{ (1 if false).x }}"),
            "template: line 3: the inline if-expression on line 3 evaluated to false and no else "
            "section was defined.");
}

TEST(Jinja, SandboxForbidsMutation) {
  EXPECT_EQ(render("[{{ xs.append }}]", {{"xs", {1}}}), "[]");
  EXPECT_EQ(error_of("{{ xs.append(2) }}", {{"xs", {1}}}),
            "template: line 1: access to attribute 'append' of 'list' object is unsafe.");
  EXPECT_EQ(error_of("{{ d.update({}) }}", {{"d", Json::object()}}),
            "template: line 1: access to attribute 'update' of 'dict' object is unsafe.");
}

TEST(Jinja, SyntaxErrorsNameTheLine) {
  EXPECT_EQ(error_of("ok\n{% if %}"),
            "template: line 2: Expected an expression, got 'end of statement block'");
  EXPECT_EQ(
      error_of("{% for x in y %}\n\nno end"),
      "template: line 3: Unexpected end of template. Jinja was looking for the following tags: "
      "'endfor' or 'else'. The innermost block that needs to be closed is 'for'.");
  EXPECT_EQ(error_of("{% if x %}{% endfor %}"),
            "template: line 1: Encountered unknown tag 'endfor'. Jinja was looking for the "
            "following tags: 'elif' or 'else' or 'endif'. The innermost block that needs to be "
            "closed is 'if'.");
  EXPECT_EQ(error_of("{{ x | nosuch }}"), "template: line 1: No filter named 'nosuch'.");
  EXPECT_EQ(error_of("{{ x is nosuch }}"), "template: line 1: No test named 'nosuch'.");
  EXPECT_EQ(error_of("a\nb\n{% bogus %}"), "template: line 3: Encountered unknown tag 'bogus'.");
  EXPECT_EQ(error_of("{{ (1 }}"), "template: line 1: unexpected '}', expected ')'");
  EXPECT_EQ(error_of("{# open"), "template: line 1: Missing end of comment tag");
  EXPECT_EQ(error_of("{{ 'open }}"), "template: line 1: unexpected char \"'\" at 3");
  EXPECT_NE(error_of("{% macro m(a=1, b) %}{% endmacro %}").find("non-default argument"),
            std::string::npos);
}

TEST(Jinja, RenderErrorsNameTheLine) {
  EXPECT_EQ(error_of("{{ 1 }}\n{{ 'a' + 1 }}"),
            "template: line 2: can only concatenate str (not \"int\") to str");
  EXPECT_EQ(error_of("{{ 1 // 0 }}"), "template: line 1: integer division or modulo by zero");
  EXPECT_EQ(error_of("{% for x in 5 %}{% endfor %}"),
            "template: line 1: 'int' object is not iterable");
  EXPECT_EQ(error_of("{{ 1 < 'a' }}"),
            "template: line 1: '<' not supported between instances of 'int' and 'str'");
  EXPECT_EQ(error_of("{% set n = 1 %}{% set n.x = 2 %}"),
            "template: line 1: cannot assign attribute on non-namespace object");
  EXPECT_EQ(error_of("{% for a, b in [[1]] %}{% endfor %}"),
            "template: line 1: not enough values to unpack (expected 2, got 1)");
  EXPECT_THROW(render("[]", Json::array()), Error);  // the context must be an object
}

TEST(Jinja, LimitsStopRunawayTemplates) {
  EXPECT_EQ(error_of("{{ range(100001) | length }}"),
            "template: line 1: Range too big. The sandbox blocks ranges larger than MAX_RANGE "
            "(100000).");
  EXPECT_NE(error_of("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}").find("recursion"),
            std::string::npos);
  Options small;
  small.max_steps = 200000;
  EXPECT_NE(error_of("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}"
                     "{% endfor %}",
                     Json::object(), small)
                .find("too much work"),
            std::string::npos);
  small.max_output_bytes = 1000;
  EXPECT_NE(error_of("{% for i in range(2000) %}x{% endfor %}", Json::object(), small)
                .find("exceeds the limit"),
            std::string::npos);
  EXPECT_NE(error_of("{{ 'x' * 100000 }}", Json::object(), small).find("output limit"),
            std::string::npos);
  EXPECT_NE(error_of("{{ 2 ** 64 }}").find("integer overflow"), std::string::npos);
  // Deep nesting is refused, not a stack overflow.
  const std::string deep = "{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}";
  EXPECT_NE(error_of(deep).find("nested too deeply"), std::string::npos);
  std::string deep_ifs;
  for (int k = 0; k < 2000; ++k) deep_ifs += "{% if true %}";
  EXPECT_NE(error_of(deep_ifs).find("nested too deeply"), std::string::npos);
  EXPECT_NE(error_of("{{ " + std::string(5000, '-') + "1 }}").find("nested too deeply"),
            std::string::npos);
}

TEST(Jinja, TemplateIsReusableMovableAndThreadSafe) {
  Template t("{% for m in messages %}{{ m.role }};{% endfor %}");
  const Json ctx = conversation();
  EXPECT_EQ(t.render(ctx), "system;user;assistant;");
  EXPECT_EQ(t.render({{"messages", Json::array()}}), "");
  Template moved = std::move(t);
  EXPECT_EQ(moved.render(ctx), "system;user;assistant;");
  std::vector<std::thread> threads;
  std::atomic<int> good{0};
  for (int k = 0; k < 4; ++k)
    threads.emplace_back([&] {
      for (int i = 0; i < 200; ++i) good += moved.render(ctx) == "system;user;assistant;";
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(good.load(), 800);
}

}  // namespace
}  // namespace tessera::jinja
