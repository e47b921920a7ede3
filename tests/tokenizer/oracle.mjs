// Oracle for tokenizer_oracle_test: encodes and decodes every corpus string with
// @huggingface/tokenizers (the JavaScript port of Hugging Face tokenizers).
// Usage: node oracle.mjs NODE_MODULES CORPUS_JSON TOKENIZER_DIR OUT_JSON
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const [modules, corpusPath, dir, outPath] = process.argv.slice(2);
const { Tokenizer } = await import(
  pathToFileURL(path.join(modules, "@huggingface/tokenizers/dist/tokenizers.mjs")).href);
const readJson = (p) => JSON.parse(fs.readFileSync(p, "utf8"));
const corpus = readJson(corpusPath);
const configPath = path.join(dir, "tokenizer_config.json");
const config = fs.existsSync(configPath) ? readJson(configPath) : {};
const tokenizer = new Tokenizer(readJson(path.join(dir, "tokenizer.json")), config);
const decode = (ids, skip) =>
  ids.length === 0 ? "" :
  tokenizer.decode(ids, { skip_special_tokens: skip, clean_up_tokenization_spaces: false });
const out = { with_special: [], without_special: [], decode: [], decode_skip: [] };
for (const text of corpus) {
  const withIds = tokenizer.encode(text, { add_special_tokens: true }).ids;
  const ids = tokenizer.encode(text, { add_special_tokens: false }).ids;
  out.with_special.push(withIds);
  out.without_special.push(ids);
  out.decode.push(decode(withIds, false));
  out.decode_skip.push(decode(withIds, true));
}
fs.writeFileSync(outPath + ".tmp", JSON.stringify(out));
fs.renameSync(outPath + ".tmp", outPath);
