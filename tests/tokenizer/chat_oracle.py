#!/usr/bin/python3
"""Reference chat-template renderer for chat_template_oracle_test.cc.

Python Jinja2 (Debian's python3-jinja2) configured as transformers' apply_chat_template
configures it (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols,
raise_exception, strftime_now, a non-escaping tojson), with the conversation prepared as vLLM's
OpenAI server prepares it (content format detected from the template's AST, text parts joined
with newlines, tool-call arguments parsed from JSON, tools as its request model dumps them).

Usage: chat_oracle.py CONVERSATIONS.json OUT.json NAME=TOKENIZER_CONFIG.json...
Writes {NAME: {"format": "string"|"openai", "results": [{"name", "prompt"} or
{"name", "error", "raised"}], "render_us": mean time per conversation}}. Exit 3 when jinja2 is missing.
"""
import json
import sys
from collections import deque
import time
from datetime import datetime

try:
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment
except ImportError:
    sys.exit(3)


class RaisedError(Exception):
    pass


def make_environment():
    def raise_exception(message):
        raise RaisedError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


# --- vLLM's content-format detection (an AST walk) -------------------------------------------

def is_var_access(node, varname):
    return isinstance(node, jinja2.nodes.Name) and node.ctx == "load" and node.name == varname


def is_attr_access(node, varname, key):
    if isinstance(node, jinja2.nodes.Getitem):
        return (is_var_access(node.node, varname) and isinstance(node.arg, jinja2.nodes.Const)
                and node.arg.value == key)
    if isinstance(node, jinja2.nodes.Getattr):
        return is_var_access(node.node, varname) and node.attr == key
    return False


def is_var_or_elems_access(node, varname, key=None):
    if isinstance(node, jinja2.nodes.Filter):
        return node.node is not None and is_var_or_elems_access(node.node, varname, key)
    if isinstance(node, jinja2.nodes.Test):
        return is_var_or_elems_access(node.node, varname, key)
    if isinstance(node, jinja2.nodes.Getitem) and isinstance(node.arg, jinja2.nodes.Slice):
        return is_var_or_elems_access(node.node, varname, key)
    return is_attr_access(node, varname, key) if key else is_var_access(node, varname)


def detect_content_format(env, source):
    try:
        root = env.parse(source)
        names = ["messages"]
        queue = deque(["messages"])
        seen = {"messages"}
        while queue:
            var = queue.popleft()
            for assign in root.find_all(jinja2.nodes.Assign):
                if is_var_or_elems_access(assign.node, var):
                    assert isinstance(assign.target, jinja2.nodes.Name)
                    if assign.target.name not in seen:
                        seen.add(assign.target.name)
                        names.append(assign.target.name)
                        queue.append(assign.target.name)
        message_vars = []
        for loop in root.find_all(jinja2.nodes.For):
            for var in names:
                if is_var_or_elems_access(loop.iter, var):
                    assert isinstance(loop.target, jinja2.nodes.Name)
                    message_vars.append(loop.target.name)
                    break
        for loop in root.find_all(jinja2.nodes.For):
            for var in message_vars:
                if is_var_or_elems_access(loop.iter, var, "content"):
                    assert isinstance(loop.target, jinja2.nodes.Name)
                    return "openai"
            if isinstance(loop.iter, jinja2.nodes.Name) and loop.iter.name == "content":
                assert isinstance(loop.target, jinja2.nodes.Name)
                return "openai"
        return "string"
    except Exception:
        return "string"


# --- vLLM's conversation preparation ---------------------------------------------------------

TEXT_TYPES = {"text": "text", "input_text": "text", "output_text": "text", "refusal": "refusal",
              "thinking": "thinking"}


def parse_part(part, wrap):
    if isinstance(part, str):
        return {"type": "text", "text": part} if wrap else part
    kind = part.get("type")
    if kind == "tool_reference":
        return {"type": "tool_reference", "name": part.get("name")} if wrap else part.get("name")
    if kind not in TEXT_TYPES:
        raise ValueError("unsupported content part " + str(kind))
    text = part.get(TEXT_TYPES[kind])
    if kind in ("text", "refusal") and text is None:
        return None
    return {"type": "text", "text": text} if wrap else text


def prepare_messages(messages, fmt):
    out = []
    for message in messages:
        role = message["role"]
        content = message.get("content")
        reasoning = message.get("reasoning")
        if reasoning is None and isinstance(message.get("reasoning_content"), str):
            reasoning = message["reasoning_content"]  # tessera also takes the older name
        if content is None:
            content = []
        elif isinstance(content, str):
            content = [{"type": "text", "text": content}]
        parts = [p for p in (parse_part(p, fmt == "openai") for p in content) if p]
        m = {"role": role, "content": parts if fmt == "openai" else "\n".join(parts)}
        if role == "assistant":
            if message.get("tool_calls") is not None:
                m["tool_calls"] = [json.loads(json.dumps(c)) for c in message["tool_calls"]]
            if reasoning is not None:
                m["reasoning"] = reasoning
                m["reasoning_content"] = reasoning
        elif role == "tool":
            if "tool_call_id" in message:
                m["tool_call_id"] = message["tool_call_id"]
            if isinstance(m["content"], list):
                if not any(isinstance(i, dict) and i.get("type") != "text" for i in m["content"]):
                    texts = [i.get("text", "") for i in m["content"]
                             if isinstance(i, dict) and i.get("type") == "text"]
                    m["content"] = "\n".join(texts) if texts else ""
        if isinstance(message.get("name"), str):
            m["name"] = message["name"]
        if isinstance(message.get("task"), str):
            m["task"] = message["task"]
        if role == "developer":
            m["tools"] = message.get("tools")
        out.append(m)
    for m in out:
        if m["role"] == "assistant" and isinstance(m.get("tool_calls"), list):
            if not m["tool_calls"]:
                m.pop("tool_calls")
                continue
            for call in m["tool_calls"]:
                args = call["function"].get("arguments")
                if isinstance(args, str):
                    try:
                        call["function"]["arguments"] = json.loads(args)
                    except json.JSONDecodeError:
                        call["function"]["arguments"] = {}
                elif not isinstance(args, (dict, list)):
                    call["function"]["arguments"] = {}
    return out


def prepare_tools(tools):
    if tools is None:
        return None
    out = []
    for tool in tools:
        fn = tool["function"]
        f = {"name": fn["name"], "description": fn.get("description"),
             "parameters": fn.get("parameters")}
        f.update({k: v for k, v in fn.items() if k not in f})
        t = {"type": "function", "function": f}
        t.update({k: v for k, v in tool.items() if k not in t})
        out.append(t)
    return out


# --- transformers' apply_chat_template -------------------------------------------------------

def token_string(v):
    if isinstance(v, dict):
        return v.get("content")
    return v


def special_tokens_map(config):
    out = {}
    for key in ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                "mask_token"):
        value = token_string(config.get(key))
        if value:
            out[key] = value
    extra = [token_string(t) for t in config.get("additional_special_tokens") or []]
    if extra:
        out["additional_special_tokens"] = extra
    for key, value in (config.get("extra_special_tokens") or {}).items():
        if token_string(value):
            out[key] = token_string(value)
    return out


TAG = "CONTINUE_FINAL_MESSAGE_TAG "


def render(env, compiled, fmt, specials, conv):
    add_generation_prompt = conv.get("add_generation_prompt", True)
    continue_final = conv.get("continue_final_message", False)
    chat = prepare_messages(conv["messages"], fmt)
    tools = prepare_tools(conv.get("tools"))
    kwargs = dict(specials)
    kwargs.update(conv.get("chat_template_kwargs") or {})
    final_message = None
    if continue_final:
        final = chat[-1]["content"]
        if isinstance(final, (list, tuple)):
            for block in reversed(final):
                if "text" in block:
                    final_message = block["text"]
                    block["text"] = block["text"] + TAG
                    break
            else:
                raise ValueError("no text to continue")
        else:
            final_message = final
            chat[-1]["content"] = final + TAG
    rendered = compiled.render(messages=chat, tools=tools, documents=None,
                               add_generation_prompt=add_generation_prompt, **kwargs)
    if continue_final:
        if final_message.strip() not in rendered or TAG.strip() not in rendered:
            raise ValueError("final message not in the rendered chat")
        loc = rendered.rindex(TAG.strip())
        if rendered[loc:loc + len(TAG)] == TAG:
            rendered = rendered[:loc]
        else:
            rendered = rendered[:loc].rstrip()
    return rendered


def main():
    conversations = json.load(open(sys.argv[1], encoding="utf-8"))["conversations"]
    out = {}
    env = make_environment()
    for arg in sys.argv[3:]:
        name, path = arg.split("=", 1)
        config = json.load(open(path, encoding="utf-8"))
        source = config["chat_template"]
        compiled = env.from_string(source)
        fmt = detect_content_format(env, source)
        specials = special_tokens_map(config)
        results = []
        start = time.perf_counter()
        for conv in conversations:
            try:
                results.append({"name": conv["name"],
                                "prompt": render(env, compiled, fmt, specials, conv)})
            except RaisedError as e:
                results.append({"name": conv["name"], "error": str(e), "raised": True})
            except Exception as e:  # noqa: BLE001 - any failure is an expected error
                results.append({"name": conv["name"], "error": repr(e), "raised": False})
        seconds = time.perf_counter() - start
        out[name] = {"format": fmt, "results": results,
                     "render_us": seconds * 1e6 / len(conversations)}
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
