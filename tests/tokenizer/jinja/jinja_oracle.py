#!/usr/bin/python3
"""Renders (template, context) pairs with Debian's python3-jinja2 configured the way Hugging Face
transformers' apply_chat_template configures it, as the reference for tessera's interpreter.

Usage: jinja_oracle.py IN.json OUT.json
       jinja_oracle.py --bench TOKENIZER_CONFIG.json   (render time of its chat_template on the
       10-message conversation of bench/tokenizer/jinja_bench.cc, the baseline for that bench)
IN:  {"now": <unix seconds for strftime_now>, "cases": [{"template": str, "context": {...}}]}
OUT: [{"ok": true, "output": str} | {"ok": false, "error": "<ExceptionType>: <message>",
       "raised": true when the error came from raise_exception}]

Exit status 3 when jinja2 cannot be imported (the C++ test skips then).
"""
import json
import sys
from datetime import datetime

try:
    import jinja2
    import jinja2.ext
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment
except ImportError:
    sys.exit(3)


class RaisedByTemplate(Exception):
    pass


class AssistantTracker(Extension):
    # transformers' {% generation %} tag: renders its body unchanged.
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def make_env(now):
    def raise_exception(message):
        raise RaisedByTemplate(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.fromtimestamp(now).strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[AssistantTracker, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def bench(config_path):
    import time
    with open(config_path, encoding="utf-8") as f:
        source = json.load(f)["chat_template"]
    messages = [{"role": "system", "content": "You are a helpful assistant."}]
    for k in range(9):
        user = k % 2 == 0
        content = ("Question " if user else "Answer ") + "".join(f"word{w} " for w in range(40))
        messages.append({"role": "user" if user else "assistant", "content": content})
    context = {"messages": messages, "add_generation_prompt": True, "bos_token": "<s>",
               "eos_token": "</s>"}
    env = make_env(0)
    start = time.process_time()
    template = env.from_string(source)
    parse = time.process_time() - start
    n = 2000
    start = time.process_time()
    for _ in range(n):
        template.render(**context)
    render = (time.process_time() - start) / n
    print(f"parse {parse * 1e6:.0f} us (CPU), render {render * 1e6:.1f} us (CPU) per call")


def main():
    if sys.argv[1] == "--bench":
        bench(sys.argv[2])
        return
    with open(sys.argv[1], encoding="utf-8") as f:
        request = json.load(f)
    env = make_env(request.get("now", 0))
    results = []
    for case in request["cases"]:
        try:
            template = env.from_string(case["template"])
            results.append({"ok": True, "output": template.render(**case.get("context", {}))})
        except RaisedByTemplate as e:
            results.append({"ok": False, "raised": True, "error": str(e)})
        except Exception as e:  # any Jinja2 or Python error is an accepted answer to compare
            results.append({"ok": False, "error": f"{type(e).__name__}: {e}"})
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(results, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
