#!/usr/bin/env python3
"""Writes corpus.json, the oracle corpus of tests/tokenizer/tokenizer_oracle_test.cc.

Deterministic; rerun after editing. U+0085 (NEL) and U+FEFF are left out on purpose: the
JavaScript oracle's regex \\s disagrees with Hugging Face's (Oniguruma) on exactly those two.
"""
import json
import unicodedata

c = []
english = [
    "Hello, world!", "The quick brown fox jumps over the lazy dog.", "I'm sure you'll like it; we've tried.",
    "She said: \"don't do that\" and LEFT.", "It's 5 o'clock somewhere.", "What's up? Nothing's up!",
    "HELLO WORLD", "hello world", "Hello World", "The year 2024 was a leap year.", "e-mail: someone@example.com",
    "https://www.example.com/path?query=1&other=two#frag", "Dr. Smith's patients' files were misplaced.",
    "They'RE here. THEY'LL come. You'D know. I'M fine. It'S ok. We'VE won.",
    "A sentence with    multiple   spaces.", "Ends with a space ", " starts with a space", "  two leading spaces",
    "trailing spaces   ", "\tTabbed\ttext\t", "line one\nline two\nline three", "windows\r\nline\r\nendings\r\n",
    "mixed \r\n\n\r whitespace \t\n", "\n\n\nthree newlines first", "ends with newlines\n\n", "   ", "\n", "\t", " ",
    "\r\n", "a", "I", "?", "!!!", "...", "—", "Well... I don't know?!", "(parenthetical) [bracketed] {braced} <angled>",
    "Price: $19.99 (€18,50 / £15.00 / ¥2000)", "100% sure — 50/50 chance & 3:2 odds",
    "Café au lait, naïve résumé, coöperate, façade, jalapeño.", "Ünïcödé ÄÖÜ äöü ß ẞ", "ﬁ ﬂ ﬀ ligatures and ½ ¼ ² ³ ™ ℃",
    "Ⅻ Ⅳ ⅷ roman numerals", "ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３", "İstanbul ıi İI", "ǅungla Ǆ ǆ",
    "The Θ and Σ and ω of Greek: Αθήνα, ελληνικά.", "Русский текст: Привет, как дела?", "Українська мова: їжак, ґанок.",
]
c += english
# NFC vs NFD forms.
for s in ["café", "naïve", "Ångström", "résumé", "Việt Nam", "한국어", "é", "ñ", "Åland", "crème brûlée"]:
    c.append(unicodedata.normalize("NFC", s))
    c.append(unicodedata.normalize("NFD", s))
c += ["e\u0301\u0301\u0301 stacked accents", "a\u0308\u0304 combining", "Z\u0351\u0327\u0324\u0317a\u0345\u0318lgo text",
      "\u0301 leading combining mark", "x\u20dd enclosing circle"]
code = [
    "def add(a, b):\n    return a + b\n", "int main() {\n  printf(\"%d\\n\", 42);\n  return 0;\n}\n",
    "for (int i = 0; i < n; ++i) { sum += v[i]; }", "const x = async () => { await fetch('/api'); };",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;", "<div class=\"main\"><p>Hi</p></div>",
    "fn main() { let v: Vec<u32> = (0..10).collect(); println!(\"{:?}\", v); }",
    "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"hi\")\n}\n",
    "#include <iostream>\nstd::cout << \"x\" << std::endl;", "x = [i**2 for i in range(10) if i % 2 == 0]",
    "if (a && b || !c) { return a->b.c[0]; }", "public static void main(String[] args) {}",
    "    indented four\n        indented eight\n", "\t\tdouble tab indent", "// comment\n/* block */\n# hash",
    "{\"key\": [1, 2.5, -3e10, true, null], \"nested\": {\"a\": \"b\"}}", "$ ls -la | grep '^d' > out.txt 2>&1",
    "a==b!=c<=d>=e+=f-=g*=h/=i", "x<<=2; y>>=3; z**=4;", "matrix[i][j] = matrix[j][i];",
    "std::vector<std::pair<int, std::string>> v;", "lambda x: x if x else None", "@decorator\ndef f(): pass",
    "SELECT * FROM t;;;", "#!/bin/bash\necho $HOME", "%%%%% ^^^^ &&&& |||| ~~~~", "````python\nprint(1)\n````",
    "camelCaseIdentifier snake_case_identifier SCREAMING_CASE kebab-case", "__init__ __main__ __dunder__",
    "0x1F 0b1010 0o777 1e-9 3.14159 -42 +7", "i++ --j a?.b ?? c", "tab\tseparated\tvalues\t1\t2",
    "ruby: puts 'hi' if x.nil?", "haskell: map (+1) [1..10] >>= return", "perl: $_ =~ s/foo/bar/g;",
]
c += code
cjk = [
    "你好，世界！", "我喜欢编程和机器学习。", "日本語のテキストです。ひらがなとカタカナ。", "東京タワーは高い。",
    "한국어 문장입니다. 안녕하세요!", "中文English混合text测试", "（全角括号）「引用」『二重』", "漢字かなカナ混じり文",
    "這是繁體中文的句子。", "数字１２３和123", "一二三四五六七八九十百千万",
]
c += cjk
others = [
    "مرحبا بالعالم", "اللغة العربية جميلة جداً.", "עברית: שלום עולם", "नमस्ते दुनिया", "हिन्दी में लिखा गया वाक्य।",
    "ภาษาไทยไม่มีช่องว่าง", "ქართული ენა", "Հայերեն լեզու", "తెలుగు భాష", "தமிழ் மொழி", "বাংলা ভাষা",
    "Tiếng Việt có dấu: Hà Nội, Sài Gòn", "Ελληνικά και English και Русский", "አማርኛ ቋንቋ", "ᏣᎳᎩ syllabary",
    "mixed: hello مرحبا 你好 नमस्ते שלום", "Zalgo: t̷̢h̸i̵s̶ ̴i̷s̸", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙 𝐁𝐨𝐥𝐝", "𝑥² + 𝑦² = 𝑧²",
    "∀x∈ℝ: x² ≥ 0 ∧ ∑ᵢ aᵢ ≤ ∞", "← → ↑ ↓ ⇒ ⇔ ∴ ∵", "♠♣♥♦ ☀☁☂ ✓✗", "▁ lower one eighth block ▁▁",
    "Ġ looks like GPT-2 space", "Ċ and ĉ", "\u00a0non-breaking\u00a0space", "zero\u200bwidth\u200bspace",
    "\u3000ideographic space\u3000", "en\u2002em\u2003thin\u2009spaces", "soft\u00adhyphen", "line\u2028separator",
    "paragraph\u2029separator", "bidi \u202eoverride\u202c text", "\u200djoiner", "control \u0007 bell \u001b escape",
    "null\u0000byte", "\u007f delete", "private \ue000 use", "replacement \ufffd char", "noncharacter \uffff",
]
c += others
emoji = [
    "😀", "😀😃😄😁", "👍🏽 thumbs up medium skin", "👨‍👩‍👧‍👦 family", "👩🏾‍💻 woman technologist", "🏳️‍🌈 flag",
    "🇺🇸🇫🇷🇯🇵 flags", "❤️ red heart with VS16", "1️⃣ keycap", "🧑🏻‍🤝‍🧑🏿", "emoji at end 🎉", "🎉 emoji at start",
    "text😀text", "🤔🤔🤔🤔🤔🤔🤔🤔", "☺︎ text style", "👋🏻👋🏼👋🏽👋🏾👋🏿", "🦀 Rust 🐍 Python 🐹 Go",
]
c += emoji
digits = ["1", "12", "123", "1234", "12345", "123456789012345678901234567890", "3.14159265358979323846",
          "1,000,000", "2024-01-01T12:34:56Z", "+1 (555) 123-4567", "٠١٢٣٤٥٦٧٨٩ Arabic-Indic digits",
          "१२३ Devanagari digits", "１２３４ fullwidth digits", "00000000000000000000", "v1.2.3-beta.4+build.5",
          "9" * 500, "x1y22z333w4444", "1st 2nd 3rd 4th", "$1.5B in Q3'24", "½⅓¼⅕ fractions"]
c += digits
specials = [
    "<|begin_of_text|>", "<|begin_of_text|>Hello", "Hello<|end_of_text|>", "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>", "<|im_start|>", "<|im_end|> trailing",
    "<s>", "</s>", "<s>[INST] Hello [/INST]", "<unk>", "<s> <s> </s>", "text<s>text</s>text",
    "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n", "<bos><eos><pad>", "<start_of_image>",
    "<|endoftext|>", "text<|endoftext|>more", "<｜begin▁of▁sentence｜>Hello", "<｜User｜>Hi<｜Assistant｜>",
    "<|begin_of_text|><|begin_of_text|>", "< |begin_of_text| >", "<|begin_of_text", "<think>reasoning</think>",
    "<tool_call>{\"name\": \"f\"}</tool_call>", "<|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>", "[INST]", "<0x0A>",
    "<|reserved_special_token_5|>", "<|python_tag|>", " <s> spaced </s> ", "\n<|im_start|>\n",
]
c += specials
c += ["", "a" * 3000, "abc" * 1500, "supercalifragilisticexpialidocious" * 100, " " * 2000, "\n" * 500,
      "x " * 1500, "日本" * 1000, "😀" * 800, "=" * 1200, "-_" * 700, "é" * 1500, "e\u0301" * 700,
      "Lorem ipsum dolor sit amet, " * 60, "\t \n" * 300, "ab\r\n" * 300, "0" * 3001, "🏳️‍🌈" * 200,
      "Wörterbuch" * 300, "ﷺ" * 50]
punct = ["!?!?!?", "...???!!!", "---===+++", "''''", "\"\"\"\"", "'s 't 're 've 'm 'll 'd", "''s", "'S'T'RE",
         "a'b'c'd", "!@#$%^&*()_+-=[]{};':\",./<>?\\|`~", "«guillemets» „quotes“ “curly” ‘single’",
         "¡Hola! ¿Qué tal?", "。、！？：；「」", "…‥", "• bullet · middle dot", "§ ¶ † ‡ ※", "''' docstring '''",
         " ' leading apostrophe", "don't won't can't shouldn't", "rock'n'roll", "O'Neil's", "he's'", "'tis"]
c += punct
# Combinations to pass 300 and exercise boundaries.
base = ["hello", "world", "  ", "\n", "123", "é", "你好", "😀", "<s>", "<|im_start|>", "don't", "\t", "x"]
for i, a in enumerate(base):
    for b in base[i:i + 5]:
        c.append(a + b)
        c.append(a + " " + b)
seen = set()
corpus = []
for s in c:
    if s not in seen:
        seen.add(s)
        corpus.append(s)
assert len(corpus) >= 300, len(corpus)
assert not any("\u0085" in s or "\ufeff" in s for s in corpus)
with open(__file__.replace("make_corpus.py", "corpus.json"), "w", encoding="utf-8") as f:
    json.dump(corpus, f, ensure_ascii=False, indent=0)
    f.write("\n")
print(len(corpus), "strings")
