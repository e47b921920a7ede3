"""Oracle for sentencepiece_oracle_test: trains a SentencePiece BPE model set up as Llama's
(byte fallback, no normalization, digits split, dummy prefix) on the test corpus with the
SentencePiece library (Debian python3-sentencepiece), and encodes and decodes every corpus
string with it.

Usage: /usr/bin/python3 spm_oracle.py CORPUS_JSON OUT_DIR
Writes OUT_DIR/tokenizer.model and OUT_DIR/oracle.json ({"ids": [...], "decode": [...]})."""
import io
import json
import os
import sys

import sentencepiece as spm

corpus_path, out_dir = sys.argv[1:3]
corpus = json.load(open(corpus_path, encoding="utf-8"))
# Valid text only (the library takes Python str); the test skips the rest.
texts = [t for t in corpus if "\ufffd" not in t]
model = io.BytesIO()
spm.SentencePieceTrainer.train(
    sentence_iterator=iter(texts * 4),
    model_writer=model,
    model_type="bpe",
    vocab_size=1200,
    hard_vocab_limit=False,
    character_coverage=0.995,
    byte_fallback=True,
    split_digits=True,
    allow_whitespace_only_pieces=True,
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    add_dummy_prefix=True,
    unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
    num_threads=1,
    minloglevel=2,
)
os.makedirs(out_dir, exist_ok=True)
with open(os.path.join(out_dir, "tokenizer.model"), "wb") as f:
    f.write(model.getvalue())
sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
out = {"ids": [], "decode": []}
for text in corpus:
    ids = sp.encode(text)
    out["ids"].append(ids)
    out["decode"].append(sp.decode(ids))
with open(os.path.join(out_dir, "oracle.json.tmp"), "w", encoding="utf-8") as f:
    json.dump(out, f, ensure_ascii=False)
os.replace(os.path.join(out_dir, "oracle.json.tmp"), os.path.join(out_dir, "oracle.json"))
