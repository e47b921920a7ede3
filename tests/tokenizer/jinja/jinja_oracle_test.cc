// tessera's Jinja interpreter against Python Jinja2 (Debian python3-jinja2, configured as
// transformers' apply_chat_template): a table of small templates, each rendered with both, must
// give byte-identical output, or fail in both (with raise_exception's message exactly).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "tokenizer/jinja/conversations.h"
#include "tokenizer/jinja/oracle_util.h"
#include "tokenizer/jinja/random_templates.h"

namespace tessera::testing {
namespace {

using Json = nlohmann::ordered_json;

Json default_context() {
  return Json::parse(R"({
    "messages": [{"role": "system", "content": "You are helpful."},
                 {"role": "user", "content": "Hi <there> & 'you'"},
                 {"role": "assistant", "content": "Hello!"}],
    "xs": [3, 1, 2], "names": ["b", "A", "c", "a"], "d": {"b": 2, "a": 1, "C": 3},
    "s": "  Hello World  ", "n": 5, "neg": -7, "f": 2.5, "t": true, "nothing": null,
    "users": [{"name": "bob", "age": 30}, {"name": "Alice", "age": 25}, {"name": "carl", "age": 30}],
    "u8": "héllo wörld 日本", "empty": [], "emptys": "", "emptyd": {},
    "bos_token": "<s>", "eos_token": "</s>", "add_generation_prompt": true,
    "nested": {"a": {"b": [1, {"c": "deep"}]}}, "big": 12345678901234, "tiny": 0.0001,
    "mixed": [1, "two", 3.0, null, true, [4], {"k": "v"}],
    "tool": {"type": "function", "function": {"name": "get_weather", "description": "Weather ☀",
             "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"]}}},
    "text": "line one\nline two\n\nline four"
  })");
}

std::vector<OracleCase> table() {
  // {template, context override (JSON text, empty: the default context)}
  const std::vector<std::pair<const char*, const char*>> rows = {
      // Literals and printing
      {"{{ 'a' }}{{ \"b\" }}{{ 'it''s' }}", ""},
      {"{{ 'esc: \\n \\t \\\\ \\' \\\" \\x41 \\u00e9 \\U0001F600 \\101 \\q' }}", ""},
      {"{{ 42 }} {{ -3 }} {{ 0x1F }} {{ 0o17 }} {{ 0b101 }} {{ 1_000 }}", ""},
      {"{{ 1.0 }} {{ 1.5e3 }} {{ 1e16 }} {{ 1e15 }} {{ 1.5e-5 }} {{ 0.1 + 0.2 }} {{ 1e100 }}", ""},
      {"{{ 2.0 * 3 }} {{ 7 / 2 }} {{ 4 / 2 }} {{ 1 / 3 }} {{ 10 ** 15 / 3 }} {{ 2 ** 62 }}", ""},
      {"{{ true }} {{ false }} {{ none }} {{ True }} {{ False }} {{ None }}", ""},
      {"{{ [1, 'a', none, true, 2.0] }}", ""},
      {"{{ {'a': 1, 'b': [1, 2], 'c': {'d': none}} }}", ""},
      {"{{ (1,) }} {{ (1, 2) }} {{ () }} {{ ((1, 2), [3]) }}", ""},
      {"{{ ['it\\'s', \"say \\\"hi\\\"\", 'both \\' \"', 'nl\\n', 'tab\\t', '\\x01'] }}", ""},
      {"{{ ['héllo', '日本', '\\u00a0', '\\u200b'] }}", ""},
      {"{{ 'a' 'b' \"c\" }}", ""},
      {"{{ messages }}", ""},
      {"{{ d }} {{ mixed }} {{ nested }}", ""},
      {"{{ big }} {{ tiny }} {{ f }} {{ neg }}", ""},
      {"{{ undefined_var }}|{{ nothing }}|{{ emptys }}", ""},
      {"{{ 1, 2 }}", ""},
      // Whitespace control, trim_blocks, lstrip_blocks
      {"a\n  {% if true %}\n  b\n  {% endif %}\nc", ""},
      {"a  {%- if true -%}  b  {%- endif -%}  c", ""},
      {"a\n  {{- 'x' -}}  \nb", ""},
      {"a\n    {{ 'x' }}\nb", ""},
      {"  {%+ if true %}x{% endif %}", ""},
      {"  {% if true +%}\nx{% endif %}", ""},
      {"x  {# comment #}\ny", ""},
      {"x\n  {# comment #}\ny", ""},
      {"x {#- comment -#} y", ""},
      {"{% for m in messages %}\n  {{ m.role }}\n{% endfor %}\n", ""},
      {"line\n{% if true %}\n\n{% endif %}\nend\n", ""},
      {"a\r\nb\rc\n", ""},
      {"{% if true %}   {% endif %}x", ""},
      {"\t{% if true %}y{% endif %}\n\t{{ 'z' }}", ""},
      {"{% raw %}{{ not parsed }}{% endraw %}", ""},
      {"  {% raw %}\n  {% x %}\n  {% endraw %}\nafter", ""},
      {"{%- raw -%}  {{ a }}  {%- endraw -%}", ""},
      {"{{ '{{' }} {{ {'a': {'b': 1}} }}", ""},
      {"a {{- -1 }}", ""},
      // Variables, attributes, subscripts, slicing
      {"{{ messages[0].role }} {{ messages[0]['content'] }} {{ messages.1.role }}", ""},
      {"{{ nested.a.b[1].c }} {{ nested['a']['b'][0] }}", ""},
      {"{{ messages[-1].content }} {{ xs[5] }}|{{ d.zz }}|{{ d['zz'] }}", ""},
      {"{{ xs[1:] }} {{ xs[:-1] }} {{ xs[::-1] }} {{ xs[::2] }} {{ xs[5:] }} {{ xs[-2:] }}", ""},
      {"{{ s[2:7] }} {{ u8[::-1] }} {{ u8[1] }} {{ u8[-2:] }}", ""},
      {"{{ messages[1:]|length }} {{ messages[::-1][0].role }}", ""},
      {"{{ d.items is defined }} {{ d.items is callable }}", "{\"d\": {\"items\": 5}}"},
      {"{{ d['items'] }}", "{\"d\": {\"items\": 5}}"},
      {"{{ undefined_var.attr }}", ""},
      {"{{ nothing.attr }}|{{ n.attr }}", ""},
      {"{{ messages[0].missing.deeper }}", ""},
      {"{{ xs.append }}", ""},
      {"{{ xs.append(4) }}", ""},
      {"{{ d.pop('a') }}", ""},
      {"{{ d.update({'a': 2}) }}", ""},
      // Arithmetic and operators
      {"{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 2 ** 3 ** 2 }} {{ -2 ** 2 }} {{ 2 ** -1 }}", ""},
      {"{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 % -3 }} {{ 7.5 // 2 }} {{ -7.5 % "
       "2 }}",
       ""},
      {"{{ 'ab' * 3 }} {{ 3 * 'x' }} {{ [1] * 3 }} {{ 'a' * 0 }}|{{ 'a' * -1 }}|", ""},
      {"{{ 'a' + 'b' }} {{ [1] + [2, 3] }} {{ (1,) + (2,) }}", ""},
      {"{{ 'a' ~ 1 ~ none ~ true ~ 2.0 ~ undefined_var ~ [1] }}", ""},
      {"{{ 1 + 'a' }}", ""},
      {"{{ 'a' + 1 }}", ""},
      {"{{ 1 / 0 }}", ""},
      {"{{ 1 // 0 }}", ""},
      {"{{ undefined_var + 1 }}", ""},
      {"{{ true + 1 }} {{ true * 2.5 }} {{ 3 - true }}", ""},
      {"{{ '%s and %d' % ('a', 3) }} {{ '%05.1f|%-4s|%x' % (2.25, 'ab', 255) }} {{ '%s' % 'x' }}",
       ""},
      {"{{ '%(a)s-%(b)s' % {'a': 1, 'b': 2} }} {{ '100%%' % () }}", ""},
      {"{{ -n }} {{ +n }} {{ - f }} {{ -(xs|length) }} {{ -xs|length is number }}", ""},
      // Comparisons and logic
      {"{{ 1 < 2 < 3 }} {{ 1 < 3 < 2 }} {{ 1 == 1.0 }} {{ 'a' < 'b' }} {{ [1, 2] < [1, 3] }}", ""},
      {"{{ 1 == true }} {{ 0 == false }} {{ none == none }} {{ 'a' != 'b' }} {{ [1] == [1] }} {{ "
       "(1,) == [1] }}",
       ""},
      {"{{ 'a' in 'cat' }} {{ 2 in xs }} {{ 'a' in d }} {{ 'z' not in d }} {{ 5 not in xs }}", ""},
      {"{{ 1 in 'abc' }}", ""},
      {"{{ 'x' in undefined_var }}", ""},
      {"{{ 1 < 'a' }}", ""},
      {"{{ undefined_var < 1 }}", ""},
      {"{{ undefined_var == undefined_other }} {{ undefined_var == none }}", ""},
      {"{{ 1 and 2 }} {{ 0 and 2 }} {{ 0 or 'x' }} {{ '' or [] }} {{ not 0 }} {{ not xs }}", ""},
      {"{{ none or 'default' }} {{ undefined_var or 'fallback' }} {{ emptys and 'no' }}|", ""},
      {"{{ not 1 == 2 }} {{ not undefined_var is defined }}", ""},
      {"{{ 'yes' if t else 'no' }} {{ 'yes' if nothing else 'no' }} {{ 'a' if false }}|", ""},
      {"{{ ('a' if false).upper }}", ""},
      {"{{ 1 if true else 2 if true else 3 }} {{ 1 if false else 2 if false else 3 }}", ""},
      // If / elif / else
      {"{% if n > 3 %}big{% elif n > 1 %}mid{% else %}small{% endif %}", ""},
      {"{% if n > 10 %}big{% elif n > 1 %}mid{% else %}small{% endif %}", ""},
      {"{% if undefined_var %}x{% else %}y{% endif %}", ""},
      {"{% if messages %}has{% endif %}{% if empty %}no{% endif %}{% if emptyd %}no{% endif %}",
       ""},
      {"{% if 1, 2 %}tuple{% endif %}", ""},
      // For loops
      {"{% for x in xs %}{{ x }},{% endfor %}", ""},
      {"{% for x in xs %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.revindex }}/{{ loop.revindex0 "
       "}}/{{ loop.length }}/{{ loop.first }}/{{ loop.last }} {% endfor %}",
       ""},
      {"{% for x in xs %}[{{ loop.previtem }}|{{ loop.nextitem }}]{% endfor %}", ""},
      {"{% for x in xs %}{{ loop.cycle('odd', 'even') }} {% endfor %}", ""},
      {"{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}", ""},
      {"{% for k in d %}{{ k }}{% endfor %} {% for c in 'héllo' %}{{ c }}.{% endfor %}", ""},
      {"{% for (a, b) in [(1, 2), (3, 4)] %}{{ a + b }}{% endfor %}", ""},
      {"{% for a, b in [[1, 2], 'xy'] %}{{ a }}{{ b }}{% endfor %}", ""},
      {"{% for a, b in [[1, 2, 3]] %}{{ a }}{% endfor %}", ""},
      {"{% for x in xs if x > 1 %}{{ x }}:{{ loop.index }}/{{ loop.length }} {% endfor %}", ""},
      {"{% for x in empty %}x{% else %}empty{% endfor %}", ""},
      {"{% for x in xs if x > 10 %}x{% else %}none matched{% endfor %}", ""},
      {"{% for x in undefined_var %}x{% else %}undef is empty{% endfor %}", ""},
      {"{% for x in nothing %}x{% endfor %}", ""},
      {"{% for x in 5 %}x{% endfor %}", ""},
      {"{% for x in xs %}{% if x == 1 %}{% break %}{% endif %}{{ x }}{% endfor %}", ""},
      {"{% for x in xs %}{% if x == 1 %}{% continue %}{% endif %}{{ x }}{% endfor %}", ""},
      {"{% for x in [1, 2] %}{% for y in 'ab' %}{{ loop.index }}{{ x }}{{ y }} {% endfor %}{{ "
       "loop.index }}|{% endfor %}",
       ""},
      {"{% for m in messages %}{% if loop.first %}F{% endif %}{{ m.role[0] }}{% if loop.last %}L{% "
       "endif %}{% endfor %}",
       ""},
      {"{% set x = 1 %}{% for i in [1, 2] %}{{ x }}{% set x = i * 10 %}{{ x }},{% endfor %}{{ x }}",
       ""},
      {"{% for i in [1, 2] %}{% if i == 2 %}[{{ y }}]{% endif %}{% set y = i %}{% endfor %}", ""},
      {"{% for i in range(3) %}{{ i }}{% endfor %} {{ range(2, 10, 3)|list }} {{ range(5, 0, "
       "-2)|list }}",
       ""},
      {"{{ range(100001)|length }}", ""},
      {"{% for x in xs %}{{ loop.changed(x > 1) }} {% endfor %}", ""},
      {"{{ loop }}", ""},
      // Set, namespace, block set
      {"{% set a = 1 %}{% set b, c = 2, 3 %}{{ a }}{{ b }}{{ c }}", ""},
      {"{% set t = 1, 2 %}{{ t }}", ""},
      {"{% set ns = namespace(count=0, found=false) %}{% for x in xs %}{% set ns.count = ns.count "
       "+ x %}{% endfor %}{{ ns.count }} {{ ns.found }}",
       ""},
      {"{% set ns = namespace() %}{% set ns.x = 'set' %}{{ ns.x }}|{{ ns.y }}|", ""},
      {"{% set ns = namespace({'a': 1}, b=2) %}{{ ns.a }}{{ ns.b }}", ""},
      {"{% set notns = 5 %}{% set notns.x = 1 %}", ""},
      {"{% set body %}Hello {{ 'World' }}!{% endset %}[{{ body }}] {{ body|length }}", ""},
      {"{% set body | upper | trim %}  shout  {% endset %}[{{ body }}]", ""},
      {"{% if true %}{% set inner = 'visible' %}{% endif %}{{ inner }}", ""},
      {"{% for x in xs %}{% set inner = x %}{% endfor %}[{{ inner }}]", ""},
      {"{% set messages = messages[1:] %}{{ messages|length }}", ""},
      // Macros
      {"{% macro greet(name, greeting='Hello') %}{{ greeting }}, {{ name }}!{% endmacro %}{{ "
       "greet('Ann') }} {{ greet('Bo', 'Hi') }} {{ greet(greeting='Yo', name='Cy') }}",
       ""},
      {"{% macro m(a, b=2, c=a) %}{{ a }}{{ b }}{{ c }}{% endmacro %}{{ m(1) }} {{ m(1, c=5) }}",
       ""},
      {"{% macro m(a) %}[{{ a }}]{% endmacro %}{{ m() }}", ""},
      {"{% macro m() %}{{ varargs }}{{ kwargs }}{% endmacro %}{{ m(1, 2, x=3) }}", ""},
      {"{% macro fact(n) %}{% if n <= 1 %}1{% else %}{{ n * fact(n - 1)|int }}{% endif %}{% "
       "endmacro %}{{ fact(5) }}",
       ""},
      {"{% macro render(m) %}<{{ m.role }}>{{ m.content }}{% endmacro %}{% for m in messages %}{{ "
       "render(m) }}{% endfor %}",
       ""},
      {"{% macro m() %}{{ outer }}{% endmacro %}{% set outer = 'late' %}{{ m() }}", ""},
      {"{% macro m(x) %}{{ x|length }}{% endmacro %}{{ m('abc') }} {{ m('abc')|length }} {{ m(xs) "
       "~ '!' }}",
       ""},
      // Filters
      {"[{{ s|trim }}] [{{ '--x--'|trim('-') }}] [{{ s|length }}] [{{ u8|length }}] [{{ xs|count "
       "}}]",
       ""},
      {"{{ s|lower }} {{ s|upper }} {{ 'hello world-foo (bar)'|title }} {{ 'hELLO "
       "wORLD'|capitalize }}",
       ""},
      {"{{ undefined_var|default('dflt') }} {{ nothing|default('dflt') }} {{ "
       "emptys|default('dflt', true) }} {{ n|d(0) }} {{ emptys|default('x', boolean=true) }}",
       ""},
      {"{{ xs|join(', ') }} {{ names|join }} {{ users|join('|', attribute='name') }} {{ [1, none, "
       "'a']|join('-') }}",
       ""},
      {"{{ d|items|list }} {{ undefined_var|items|list }}", ""},
      {"{{ 'abc'|list }} {{ d|list }} {{ xs|list }}", ""},
      {"{{ xs|first }} {{ xs|last }} {{ 'abc'|first }} {{ 'abc'|last }} {{ empty|first }}|", ""},
      {"{{ xs|reverse|list }} {{ 'abc'|reverse }} {{ names|sort }} {{ "
       "names|sort(case_sensitive=true) }}",
       ""},
      {"{{ xs|sort(reverse=true) }} {{ users|sort(attribute='name')|map(attribute='name')|list }}",
       ""},
      {"{{ users|sort(attribute='age,name')|map(attribute='name')|join(',') }}", ""},
      {"{{ ['a', 'A', 'b', 'a']|unique|list }} {{ ['a', 'A']|unique(case_sensitive=true)|list }} "
       "{{ users|unique(attribute='age')|map(attribute='name')|list }}",
       ""},
      {"{{ users|selectattr('age', 'equalto', 30)|map(attribute='name')|list }}", ""},
      {"{{ users|rejectattr('age', '==', 30)|map(attribute='name')|list }} {{ "
       "users|selectattr('age', 'gt', 26)|list|length }}",
       ""},
      {"{{ messages|selectattr('role', 'eq', 'user')|list|length }} {{ "
       "messages|selectattr('missing', 'defined')|list }}",
       ""},
      {"{{ mixed|select('string')|list }} {{ mixed|reject('none')|list|length }} {{ "
       "xs|select('odd')|list }} {{ [0, 1, '', 'a']|select|list }}",
       ""},
      {"{{ names|map('upper')|list }} {{ xs|map('string')|join }} {{ [1.7, 2.2]|map('int')|list }} "
       "{{ users|map(attribute='missing', default='?')|list }}",
       ""},
      {"{{ '42'|int }} {{ '4.9'|int }} {{ 'x'|int }} {{ 'x'|int(-1) }} {{ 3.99|int }} {{ "
       "'0x1A'|int(0, 16) }} {{ '  12  '|int }} {{ true|int }}",
       ""},
      {"{{ '2.5'|float }} {{ 'x'|float }} {{ 3|float }} {{ '1e3'|float }} {{ none|float(1.5) }}",
       ""},
      {"{{ -3|abs }} {{ neg|abs }} {{ -2.5|abs }} {{ 2.567|round(2) }} {{ 2.5|round }} {{ "
       "3.5|round }} {{ 2.567|round(1, 'floor') }} {{ 2.521|round(1, 'ceil') }} {{ 5|round }}",
       ""},
      {"{{ 'a-b-c'|replace('-', '+') }} {{ 'aaa'|replace('a', 'b', 2) }} {{ 'ab'|replace('', '.') "
       "}}",
       ""},
      {"{{ '<b>&\"\\''|e }} {{ '<i>'|escape }} {{ '<x>'|safe }} {{ 5|string ~ 1 }}", ""},
      {"{{ 'one two  three'|wordcount }} {{ text|indent }}|{{ text|indent(2, true) }}|{{ "
       "text|indent('> ', blank=true) }}",
       ""},
      {"{{ xs|batch(2)|list }} {{ xs|batch(2, 'x')|list }}", ""},
      {"{{ d|dictsort }} {{ d|dictsort(true) }} {{ d|dictsort(by='value', reverse=true) }}", ""},
      {"{{ xs|sum }} {{ users|sum(attribute='age') }} {{ [0.5, 1]|sum(start=10) }} {{ xs|min }} {{ "
       "xs|max }} {{ names|min }} {{ names|max }} {{ users|max(attribute='age') }}",
       ""},
      {"{{ empty|min }}|{{ names|min(case_sensitive=true) }}", ""},
      {"{{ 'hello'|center(11) }}|{{ 'hello'|center(10) }}|{{ 'ab'|center(7) }}|", ""},
      {"{{ '%s-%s'|format('a', 1) }} {{ '%(x)s'|format(x='kw') }}", ""},
      {"{{ 'a very long sentence indeed'|truncate(12) }} {{ 'short'|truncate(12) }} {{ "
       "'abcdefghijklmnop'|truncate(10, true) }}",
       ""},
      {"{{ d|attr('keys') is defined }} {{ messages[0]|attr('role') }}|", ""},
      {"{{ '<p>Hello <b>World</b></p>'|striptags }}", ""},
      {"{% filter upper %}shout {{ 'this' }}{% endfilter %}", ""},
      {"{{ xs|length|string|length }} {{ xs|map('abs')|sum }}", ""},
      // tojson (transformers' override)
      {"{{ tool|tojson }}", ""},
      {"{{ tool|tojson(indent=2) }}", ""},
      {"{{ tool|tojson(indent=4, sort_keys=true) }}", ""},
      {"{{ d|tojson(separators=(',', ':')) }} {{ d|tojson(sort_keys=true) }}", ""},
      {"{{ mixed|tojson }} {{ u8|tojson }} {{ u8|tojson(ensure_ascii=true) }} {{ "
       "'q\"\\\\\\n\\t\\x01'|tojson }}",
       ""},
      {"{{ 1.0|tojson }} {{ 1e20|tojson }} {{ none|tojson }} {{ (1, 2)|tojson }} {{ {1: 'a', true: "
       "'b', none: 'c'}|tojson }}",
       ""},
      {"{{ empty|tojson(indent=2) }} {{ emptyd|tojson(indent=2) }} {{ {'a': [], 'b': "
       "{}}|tojson(indent=1) }}",
       ""},
      {"{{ undefined_var|tojson }}", ""},
      {"{{ {'a': 1}|tojson(indent='\\t') }}", ""},
      // Tests
      {"{{ n is defined }} {{ zz is defined }} {{ zz is undefined }} {{ nothing is none }} {{ n is "
       "none }}",
       ""},
      {"{{ s is string }} {{ n is string }} {{ d is mapping }} {{ xs is mapping }} {{ xs is "
       "iterable }} {{ n is iterable }} {{ s is iterable }} {{ zz is iterable }}",
       ""},
      {"{{ xs is sequence }} {{ s is sequence }} {{ d is sequence }} {{ n is sequence }} {{ zz is "
       "sequence }}",
       ""},
      {"{{ n is number }} {{ f is number }} {{ t is number }} {{ s is number }} {{ n is integer }} "
       "{{ t is integer }} {{ f is float }} {{ n is float }}",
       ""},
      {"{{ t is boolean }} {{ n is boolean }} {{ t is true }} {{ t is false }} {{ 1 is true }} {{ "
       "false is false }}",
       ""},
      {"{{ n is odd }} {{ n is even }} {{ 10 is divisibleby 5 }} {{ 10 is divisibleby(3) }} {{ n "
       "is eq 5 }} {{ n is equalto(5) }} {{ n is ne 5 }}",
       ""},
      {"{{ n is lt 6 }} {{ n is gt 6 }} {{ n is le 5 }} {{ n is ge 6 }} {{ n is lessthan 9 }} {{ n "
       "is greaterthan 1 }}",
       ""},
      {"{{ 2 is in xs }} {{ 'a' is in 'abc' }} {{ 'x' is in d }} {{ n is not in xs }}", ""},
      {"{{ 'abc' is lower }} {{ 'ABC' is upper }} {{ 'aBc' is lower }} {{ none is sameas none }} "
       "{{ t is sameas true }}",
       ""},
      {"{{ range is callable }} {{ n is callable }} {{ 'upper' is filter }} {{ 'odd' is test }} {{ "
       "'nope' is filter }}",
       ""},
      {"{{ n is not none }} {{ messages[0].content is string and messages[0].content is not none "
       "}}",
       ""},
      // Methods
      {"{{ s.strip() }}|{{ s.lstrip() }}|{{ s.rstrip() }}|{{ 'xxhixx'.strip('x') }}|{{ "
       "'\\n\\nhi\\n'.strip('\\n') }}",
       ""},
      {"{{ 'a,b,,c'.split(',') }} {{ ' a  b c '.split() }} {{ 'a b c'.split(' ', 1) }} {{ "
       "'a,b,c'.rsplit(',', 1) }} {{ ' a b  c '.split(none, 1) }}",
       ""},
      {"{{ s.startswith('  He') }} {{ s.endswith('x') }} {{ 'abc'.startswith(('x', 'a')) }} {{ "
       "'abc'.endswith('bc') }} {{ 'abc'.startswith('b', 1) }}",
       ""},
      {"{{ 'Hello'.upper() }} {{ 'Hello'.lower() }} {{ 'hello world'.title() }} {{ 'they\\'re "
       "bill\\'s'.title() }} {{ 'hello'.capitalize() }} {{ 'HeLLo'.swapcase() }}",
       ""},
      {"{{ 'hello'.find('l') }} {{ 'hello'.rfind('l') }} {{ 'hello'.find('z') }} {{ "
       "'hello'.count('l') }} {{ 'héllo'.find('l') }} {{ 'hello'.index('e') }}",
       ""},
      {"{{ 'a-b'.replace('-', '+') }} {{ ', '.join(['a', 'b']) }} {{ ''.join(names) }} {{ "
       "'x'.join('abc') }}",
       ""},
      {"{{ '{} and {}'.format('a', 'b') }} {{ '{0}{1}{0}'.format('x', 'y') }} {{ "
       "'{name}!'.format(name='N') }} {{ '{:>5}|{:<4}|{:^6}|'.format('a', 'b', 'c') }} {{ "
       "'{:.2f}'.format(3.14159) }}",
       ""},
      {"{{ '123'.isdigit() }} {{ 'abc'.isalpha() }} {{ '  '.isspace() }} {{ 'abc'.islower() }} {{ "
       "'ABC'.isupper() }} {{ 'ab1'.isalnum() }}",
       ""},
      {"{{ 'prefix_rest'.removeprefix('prefix_') }} {{ 'file.txt'.removesuffix('.txt') }} {{ "
       "'42'.zfill(5) }} {{ 'ab'.ljust(4) }}| {{ 'ab'.rjust(4, '*') }} {{ 'a=b=c'.partition('=') "
       "}}",
       ""},
      {"{{ 'l1\\nl2\\r\\nl3'.splitlines() }} {{ text.split('\\n')[-1] }}", ""},
      {"{{ d.keys()|list }} {{ d.values()|list }} {{ d.get('a') }} {{ d.get('zz') }} {{ "
       "d.get('zz', 'dflt') }} {{ d.items()|list }}",
       ""},
      {"{{ xs.index(1) }} {{ xs.count(3) }} {{ messages[1].content.split(' ')[0] }}", ""},
      {"{{ 'x'.nomethod() }}", ""},
      {"{{ n.nope }}|{{ f.nope }}|{{ t.nope }}|", ""},
      // Globals
      {"{{ raise_exception('Custom failure: ' ~ n) }}", ""},
      {"{% if messages[0].role != 'user' %}{{ raise_exception('Conversation must start with user') "
       "}}{% endif %}",
       ""},
      {"{{ strftime_now('%Y-%m-%d %H:%M') }} {{ strftime_now('%d %b %Y') }}", ""},
      {"{{ dict(a=1, b='x') }} {{ dict(a=1)|tojson }} {{ dict() }}", ""},
      {"{% set c = cycler('a', 'b') %}{{ c.next() }}{{ c.next() }}{{ c.next() }}{{ c.current }}",
       ""},
      {"{% set j = joiner(', ') %}{% for x in xs %}{{ j() }}{{ x }}{% endfor %}", ""},
      {"{{ undefined_function() }}", ""},
      {"{{ n() }}", ""},
      // With, generation
      {"{% with a = 1, b = 'x' %}{{ a }}{{ b }}{% endwith %}[{{ a }}]", ""},
      {"{% generation %}gen {{ n }}{% endgeneration %}", ""},
      {"{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% "
       "endgeneration %}{% endif %}{% endfor %}",
       ""},
      // Syntax errors (both must reject)
      {"{% if %}", ""},
      {"{% for x in %}{% endfor %}", ""},
      {"{% if true %}unclosed", ""},
      {"{{ x | nosuchfilter }}", ""},
      {"{{ x is nosuchtest }}", ""},
      {"{% endfor %}", ""},
      {"{{ 'unterminated }}", ""},
      {"{{ (1, 2 }}", ""},
      {"{{ [1, 2) }}", ""},
      {"{# unterminated comment", ""},
      {"{% unknowntag %}", ""},
      {"{{ }}", ""},
      {"{% set %}", ""},
      {"{% macro m(a=1, b) %}{% endmacro %}", ""},
      {"{{ 1 +* 2 }}", ""},
      {"{% raw %}no end", ""},
      {"{{ 'a' is }}", ""},
      {"{% for x in xs %}{% else %}{% else %}{% endfor %}", ""},
  };
  std::vector<OracleCase> cases;
  int k = 0;
  for (const auto& [tmpl, ctx] : rows) {
    OracleCase c;
    c.name = "row " + std::to_string(k++);
    c.tmpl = tmpl;
    c.context = *ctx ? Json::parse(ctx) : default_context();
    cases.push_back(std::move(c));
  }
  return cases;
}

TEST(JinjaOracle, TableMatchesPythonJinja2) {
  TESSERA_REQUIRE_PYTHON_JINJA2();
  const auto cases = table();
  ASSERT_GE(cases.size(), 150u);
  int rendered = 0;
  EXPECT_EQ(compare_with_oracle(cases, &rendered), 0);
  EXPECT_GE(rendered, 150);  // most rows render; the others check that both reject them
}

// Chat templates of our own (tests/tokenizer/jinja/templates/*.jinja) written in the styles of
// the major model families, on conversations with tools, reasoning and multimodal content.
TEST(JinjaOracle, ChatTemplatesMatchPythonJinja2) {
  TESSERA_REQUIRE_PYTHON_JINJA2();
  const std::filesystem::path dir =
      std::filesystem::path(TESSERA_SOURCE_DIR) / "tests/tokenizer/jinja/templates";
  std::vector<OracleCase> cases;
  int templates = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() != ".jinja") continue;
    ++templates;
    std::ifstream in(entry.path(), std::ios::binary);
    std::stringstream source;
    source << in.rdbuf();
    int k = 0;
    for (Json context : test_conversations()) {
      context["bos_token"] = "<s>";
      context["eos_token"] = "</s>";
      cases.push_back({entry.path().filename().string() + " conversation " + std::to_string(k++),
                       source.str(), context});
    }
  }
  ASSERT_GE(templates, 6);
  int rendered = 0;
  EXPECT_EQ(compare_with_oracle(cases, &rendered), 0);
  EXPECT_GE(rendered, static_cast<int>(cases.size()) / 2);
}

// Random templates from a small grammar (whitespace control, blocks, expressions of every kind,
// many of them type errors) must render, or fail, as in Jinja2.
TEST(JinjaOracle, RandomTemplatesMatchPythonJinja2) {
  TESSERA_REQUIRE_PYTHON_JINJA2();
  // TESSERA_JINJA_RANDOM=<seed>:<count> explores further (the suite runs the fixed default).
  uint64_t seed = 20261201;
  int count = 600;
  if (const char* env = std::getenv("TESSERA_JINJA_RANDOM"))
    std::sscanf(env, "%lu:%d", &seed, &count);
  RandomTemplates gen(seed);
  std::vector<OracleCase> cases;
  const Json context = default_context();
  for (int k = 0; k < count; ++k)
    cases.push_back({"random " + std::to_string(k), gen.make(), context});
  int rendered = 0;
  EXPECT_EQ(compare_with_oracle(cases, &rendered), 0);
  EXPECT_GE(rendered, count / 5);  // most random templates are type errors
}

}  // namespace
}  // namespace tessera::testing
