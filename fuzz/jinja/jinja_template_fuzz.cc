// Fuzz target: arbitrary bytes as a chat template. Parsing and rendering (with a small
// conversation) may throw tessera::Error; a crash, hang or sanitizer report is a bug.
#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "tokenizer/jinja/jinja.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const tessera::jinja::Json context = tessera::jinja::Json::parse(R"({
    "messages": [{"role": "system", "content": "Be brief."},
                 {"role": "user", "content": "Hi <b>ü</b>"},
                 {"role": "assistant", "content": "<think>\nhm\n</think>\n\nHello",
                  "tool_calls": [{"type": "function", "function": {"name": "f",
                                  "arguments": {"x": 1}}}]}],
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
    "add_generation_prompt": true, "bos_token": "<s>", "eos_token": "</s>", "n": 3})");
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    tessera::jinja::Options options;
    options.now = [] { return std::time_t{0}; };
    options.max_output_bytes = 1 << 20;
    options.max_steps = 100000;
    const tessera::jinja::Template tmpl(text, options);
    (void)tmpl.render(context);
  } catch (const tessera::Error&) {
  }
  return 0;
}

std::vector<std::string> fuzz_default_seeds() {
  return {
      "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content "
      "| trim + '<|im_end|>\\n' }}{%- endfor %}{% if add_generation_prompt %}assistant{% endif %}",
      "{% set ns = namespace(x=0) %}{% for m in messages[::-1] if m.role != 'tool' %}{% set ns.x = "
      "ns.x + loop.index %}{% if loop.last %}{% break %}{% endif %}{% endfor %}{{ ns.x }}",
      "{% macro f(a, b=2) %}{{ a ~ b }}{% endmacro %}{{ f(1) }}{{ f(b=3, a=[1, {'k': (1,)}]) }}"
      "{{ tools | tojson(indent=2) }}{{ messages[2].tool_calls[0].function.arguments | tojson }}",
      "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system') }}{% elif n is "
      "divisibleby 3 and 'x' not in 'abc' %}{{ '%s-%d' % ('a', n) }}{% else %}{{ none }}{% endif "
      "%}",
      "{% raw %}{{ x }}{% endraw %}{# c #}{%+ if true -%}  {{ 'a'|upper|replace('A', 'b') }}  "
      "{%- endif %}{{ strftime_now('%Y') }}{{ range(3)|list|join(',') }}",
      "{% set x %}{{ messages|selectattr('role', 'equalto', 'user')|map(attribute='content')|list "
      "}}{% endset %}{{ x[1:-1].split(',')|length }}{{ 'a b'.title() }}{{ 2 ** 10 // 3 }}",
      "{% for k, v in {'a': 1, 'b': [2]}.items() %}{{ k }}{{ v is iterable }}{{ loop.cycle('x', "
      "'y') }}{% else %}none{% endfor %}{{ (1 if false) is defined }}",
      "",
  };
}
