// Tokenizer: ties the tokenizer.json components together (see tokenizer.h), reads
// tokenizer_config.json, and implements streaming decoding.
#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <fstream>
#include <limits>
#include <optional>
#include <set>
#include <sstream>

#include "core/status.h"
#include "tokenizer/added_tokens.h"
#include "tokenizer/bpe.h"
#include "tokenizer/decoder.h"
#include "tokenizer/json_reader.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/post_processor.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/sentencepiece.h"
#include "tokenizer/utf8.h"

namespace tessera::tokenizer {

class Pipeline {
 public:
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  std::unique_ptr<Bpe> model;
  std::unique_ptr<Decoder> decoder;
  std::vector<AddedToken> added_tokens;
  StringMap<int32_t> added_by_content;
  AddedTokenMatcher raw_matcher;         // tokens with normalized = false
  AddedTokenMatcher normalized_matcher;  // tokens with normalized = true
  std::vector<std::string> id_to_token;  // model vocab then added tokens
  std::vector<uint8_t> known;            // id has a token
  std::vector<uint8_t> special;
  // The post-processor reduced to the ids it puts around the sequence (every supported
  // processor has this form), after tokenizer_config's add_bos_token/add_eos_token.
  std::vector<int32_t> prefix_ids, suffix_ids;
};

namespace {

// Reads straight into the string (a stringstream would copy 33 MB twice more).
std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(ErrorKind::kNotFound, "cannot read {}", path.string());
  std::string text;
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  if (size > 0) {
    text.resize(static_cast<size_t>(size));
    in.seekg(0, std::ios::beg);
    in.read(text.data(), size);
    text.resize(static_cast<size_t>(in.gcount()));
  }
  // Files that report no size (pipes, /proc) or that grew: read the rest in chunks.
  in.clear();
  char chunk[65536];
  while (in.read(chunk, sizeof(chunk)) || in.gcount() > 0) text.append(chunk, in.gcount());
  return text;
}

// A special token in tokenizer_config.json: a string, an AddedToken object or null.
std::optional<std::string> token_field(const nlohmann::json& config, const char* key) {
  if (!config.contains(key)) return std::nullopt;
  const auto& value = config.at(key);
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object() && value.contains("content")) return value.at("content").get<std::string>();
  if (value.is_null()) return std::nullopt;
  fail("\"{}\" must be a string, an object with \"content\", or null", key);
}

TokenizerConfig parse_config(const nlohmann::json& json) {
  TokenizerConfig config;
  if (!json.is_object()) fail("the top level must be an object");
  config.bos_token = token_field(json, "bos_token");
  config.eos_token = token_field(json, "eos_token");
  config.pad_token = token_field(json, "pad_token");
  config.unk_token = token_field(json, "unk_token");
  for (auto [key, field] : {std::pair{"add_bos_token", &config.add_bos_token},
                            std::pair{"add_eos_token", &config.add_eos_token}}) {
    if (json.contains(key) && !json.at(key).is_null()) *field = json.at(key).get<bool>();
  }
  if (json.contains("chat_template")) config.chat_template = json.at("chat_template");
  if (json.contains("model_max_length") && json.at("model_max_length").is_number()) {
    const auto& v = json.at("model_max_length");
    // Files often say 1e30 for "no limit": clamp to int64.
    if (v.is_number_integer() && !v.is_number_unsigned()) {
      config.model_max_length = v.get<int64_t>();
    } else {
      const double d = v.get<double>();
      config.model_max_length =
          d >= 9.2e18 ? std::numeric_limits<int64_t>::max() : static_cast<int64_t>(d);
    }
  }
  return config;
}

void build_pipeline(Pipeline& p, std::string_view text, const TokenizerConfig& config) {
  const TokenizerJson parsed = split_tokenizer_json(text);
  const nlohmann::json& json = parsed.doc;
  if (!json.is_object()) fail("the top level must be an object");
  const auto& model = json.at("model");
  std::string type = model.value("type", std::string());
  if (type.empty() && !parsed.merges.empty()) type = "BPE";  // older files omit the type
  if (type != "BPE") {
    fail(ErrorKind::kUnsupported, "model type \"{}\" is not supported (supported: BPE)", type);
  }
  p.model = std::make_unique<Bpe>(model, parsed.vocab, parsed.merges);
  const auto null = nlohmann::json();
  const auto field = [&](const char* key) -> const nlohmann::json& {
    return json.contains(key) ? json.at(key) : null;
  };
  p.normalizer = parse_normalizer(field("normalizer"));
  p.pre_tokenizer = parse_pre_tokenizer(field("pre_tokenizer"));
  p.decoder = parse_decoder(field("decoder"));
  auto post = parse_post_processor(field("post_processor"));

  // Added tokens.
  if (json.contains("added_tokens") && !json.at("added_tokens").is_null()) {
    for (const auto& t : json.at("added_tokens")) {
      AddedToken token;
      const int64_t id = t.at("id").get<int64_t>();
      if (id < 0 || id >= (int64_t{1} << 24)) fail("added token id {} is out of range", id);
      token.id = static_cast<int32_t>(id);
      token.content = t.at("content").get<std::string>();
      token.special = t.value("special", false);
      token.lstrip = t.value("lstrip", false);
      token.rstrip = t.value("rstrip", false);
      token.single_word = t.value("single_word", false);
      token.normalized = t.value("normalized", !token.special);
      if (token.content.empty()) fail("added token {} has empty content", id);
      p.added_tokens.push_back(std::move(token));
    }
  }
  std::vector<std::string> raw_patterns, normalized_patterns;
  std::vector<const AddedToken*> raw_tokens, normalized_tokens;
  for (const AddedToken& token : p.added_tokens) {
    p.added_by_content.emplace(token.content, token.id);
    if (token.normalized && p.normalizer) {
      std::string normalized = p.normalizer->normalize(token.content);
      if (normalized.empty()) continue;
      normalized_patterns.push_back(std::move(normalized));
      normalized_tokens.push_back(&token);
    } else {
      raw_patterns.push_back(token.content);
      raw_tokens.push_back(&token);
    }
  }
  p.raw_matcher = AddedTokenMatcher(std::move(raw_patterns), std::move(raw_tokens));
  p.normalized_matcher =
      AddedTokenMatcher(std::move(normalized_patterns), std::move(normalized_tokens));

  // Id -> token table.
  int64_t size = 0;
  p.model->vocab().for_each(
      [&](std::string_view, int32_t id) { size = std::max<int64_t>(size, id + 1); });
  for (const AddedToken& token : p.added_tokens) size = std::max<int64_t>(size, token.id + 1);
  p.id_to_token.resize(size);
  p.known.assign(size, 0);
  p.special.assign(size, 0);
  // Filled in id order so that the longer (heap-allocated) tokens lie in id order too.
  std::vector<std::string_view> by_id(size);
  p.model->vocab().for_each([&](std::string_view token, int32_t id) {
    by_id[id] = token;
    p.known[id] = 1;
  });
  for (int64_t id = 0; id < size; ++id) {
    if (p.known[id]) p.id_to_token[id] = by_id[id];
  }
  for (const AddedToken& token : p.added_tokens) {
    p.id_to_token[token.id] = token.content;
    p.known[token.id] = 1;
    p.special[token.id] = token.special ? 1 : 0;
  }

  // Reduce the post-processor to prefix/suffix ids by running it on a one-id sentinel.
  if (post) {
    constexpr int32_t kSentinel = std::numeric_limits<int32_t>::min();
    const std::vector<int32_t> probe = post->process({kSentinel});
    const auto it = std::find(probe.begin(), probe.end(), kSentinel);
    if (std::count(probe.begin(), probe.end(), kSentinel) != 1)
      fail("post_processor: the single template must contain the sequence $A exactly once");
    p.prefix_ids.assign(probe.begin(), it);
    p.suffix_ids.assign(it + 1, probe.end());
  }
  // tokenizer_config.json's add_bos_token / add_eos_token, as transformers'
  // LlamaTokenizerFast/GemmaTokenizerFast apply them: a flag that is present decides whether
  // its token is added (the rest of the post-processor is kept).
  const auto lookup = [&](const std::optional<std::string>& token) -> std::optional<int32_t> {
    if (!token) return std::nullopt;
    if (auto it = p.added_by_content.find(*token); it != p.added_by_content.end())
      return it->second;
    return p.model->token_to_id(*token);
  };
  if (config.add_bos_token) {
    if (auto bos = lookup(config.bos_token)) {
      const bool has = !p.prefix_ids.empty() && p.prefix_ids.front() == *bos;
      if (*config.add_bos_token && !has) p.prefix_ids.insert(p.prefix_ids.begin(), *bos);
      if (!*config.add_bos_token && has) p.prefix_ids.erase(p.prefix_ids.begin());
    }
  }
  if (config.add_eos_token) {
    if (auto eos = lookup(config.eos_token)) {
      const bool has = !p.suffix_ids.empty() && p.suffix_ids.back() == *eos;
      if (*config.add_eos_token && !has) p.suffix_ids.push_back(*eos);
      if (!*config.add_eos_token && has) p.suffix_ids.pop_back();
    }
  }
}

// Parses `text` as JSON, turning every failure into a tessera::Error that names `name`.
template <typename Fn>
auto with_context(const std::string& name, Fn&& fn) {
  try {
    return fn();
  } catch (const nlohmann::json::exception& e) {
    fail("{}: malformed: {}", name, e.what());
  } catch (const Error& e) {
    throw Error(fmt::format("{}: {}", name, e.what()), e.kind());
  }
}

}  // namespace

Tokenizer::Tokenizer() : pipeline_(std::make_unique<Pipeline>()) {}
Tokenizer::~Tokenizer() = default;

std::string gpt2_tokenizer_json(const std::filesystem::path& vocab_path,
                                const std::filesystem::path& merges_path,
                                const std::string& config_text) {
  nlohmann::json vocab = with_context(vocab_path.string(), [&] {
    nlohmann::json v = nlohmann::json::parse(read_file(vocab_path));
    if (!v.is_object()) fail("expected an object of token -> id");
    return v;
  });
  nlohmann::json merges = nlohmann::json::array();
  std::istringstream lines(read_file(merges_path));
  int line_no = 0;
  for (std::string line; std::getline(lines, line);) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line.rfind("#version", 0) == 0) continue;
    const size_t space = line.find(' ');
    if (space == std::string::npos || space == 0 || space + 1 == line.size() ||
        line.find(' ', space + 1) != std::string::npos)
      fail("{}:{}: expected two tokens separated by one space", merges_path.string(), line_no);
    merges.push_back(line);
  }
  const nlohmann::json config =
      config_text.empty() ? nlohmann::json::object() : nlohmann::json::parse(config_text);
  // Added tokens: those tokenizer_config.json lists with their flags, then the special tokens
  // it names (GPT-2's <|endoftext|> is all of bos, eos and unk).
  const auto id_of = [&](const std::string& token) -> std::optional<int64_t> {
    if (!vocab.contains(token) || !vocab.at(token).is_number_integer()) return std::nullopt;
    return vocab.at(token).get<int64_t>();
  };
  nlohmann::json added = nlohmann::json::array();
  for (auto& [id, token] : config_added_tokens(config, id_of, true)) added.push_back(token);
  if (config.empty() && vocab.contains("<|endoftext|>")) {
    // No tokenizer_config.json: GPT2Tokenizer's defaults.
    added.push_back({{"id", vocab.at("<|endoftext|>")},
                     {"content", "<|endoftext|>"},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", true},
                     {"special", true}});
  }
  const bool prefix_space = config.value("add_prefix_space", false);
  auto byte_level = [](bool add_prefix_space, bool trim_offsets) {
    return nlohmann::json{{"type", "ByteLevel"},
                          {"add_prefix_space", add_prefix_space},
                          {"trim_offsets", trim_offsets},
                          {"use_regex", true}};
  };
  // What transformers' GPT-2 converter builds from the same two files.
  const nlohmann::json tokenizer = {{"version", "1.0"},
                                    {"added_tokens", added},
                                    {"normalizer", nullptr},
                                    {"pre_tokenizer", byte_level(prefix_space, true)},
                                    {"post_processor", byte_level(true, false)},
                                    {"decoder", byte_level(true, true)},
                                    {"model",
                                     {{"type", "BPE"},
                                      {"dropout", nullptr},
                                      {"unk_token", nullptr},
                                      {"continuing_subword_prefix", ""},
                                      {"end_of_word_suffix", ""},
                                      {"fuse_unk", false},
                                      {"byte_fallback", false},
                                      {"vocab", vocab},
                                      {"merges", merges}}}};
  return tokenizer.dump();
}

bool has_tokenizer(const std::filesystem::path& dir) {
  return std::filesystem::is_regular_file(dir / "tokenizer.json") ||
         (std::filesystem::is_regular_file(dir / "vocab.json") &&
          std::filesystem::is_regular_file(dir / "merges.txt")) ||
         std::filesystem::is_regular_file(dir / "tokenizer.model");
}

std::string sentencepiece_tokenizer_json(const std::filesystem::path& model_path,
                                         const std::string& config_text) {
  const SentencePieceModel model = parse_sentencepiece_model(read_file(model_path));
  const nlohmann::json config =
      config_text.empty() ? nlohmann::json::object() : nlohmann::json::parse(config_text);
  return sentencepiece_tokenizer_json(model, config);
}

std::unique_ptr<Tokenizer> Tokenizer::load(const std::filesystem::path& dir) {
  const auto json_path = dir / "tokenizer.json";
  const auto vocab_path = dir / "vocab.json", merges_path = dir / "merges.txt";
  const auto spm_path = dir / "tokenizer.model";
  const bool has_json = std::filesystem::is_regular_file(json_path);
  const bool slow_bpe = !has_json && std::filesystem::is_regular_file(vocab_path) &&
                        std::filesystem::is_regular_file(merges_path);
  const bool sentencepiece = !has_json && !slow_bpe && std::filesystem::is_regular_file(spm_path);
  if (!has_json && !slow_bpe && !sentencepiece) {
    fail(ErrorKind::kNotFound,
         "{} not found (supported: Hugging Face tokenizer.json, a byte-level BPE as vocab.json "
         "+ merges.txt, or a SentencePiece BPE tokenizer.model)",
         json_path.string());
  }
  const auto config_path = dir / "tokenizer_config.json";
  std::string config_text;
  if (std::filesystem::is_regular_file(config_path)) config_text = read_file(config_path);
  auto tokenizer = std::unique_ptr<Tokenizer>(new Tokenizer());
  tokenizer->config_ = with_context(config_path.string(), [&] {
    return config_text.empty() ? TokenizerConfig{}
                               : parse_config(nlohmann::json::parse(config_text));
  });
  const std::string json_text =
      slow_bpe
          ? with_context(dir.string(),
                         [&] { return gpt2_tokenizer_json(vocab_path, merges_path, config_text); })
      : sentencepiece
          ? with_context(spm_path.string(),
                         [&] { return sentencepiece_tokenizer_json(spm_path, config_text); })
          : read_file(json_path);
  with_context(json_path.string(), [&] {
    build_pipeline(*tokenizer->pipeline_, json_text, tokenizer->config_);
    return 0;
  });
  return tokenizer;
}

std::unique_ptr<Tokenizer> Tokenizer::from_json(std::string_view tokenizer_json,
                                                std::string_view tokenizer_config_json) {
  auto tokenizer = std::unique_ptr<Tokenizer>(new Tokenizer());
  tokenizer->config_ = with_context("tokenizer_config.json", [&] {
    return tokenizer_config_json.empty()
               ? TokenizerConfig{}
               : parse_config(nlohmann::json::parse(tokenizer_config_json));
  });
  with_context("tokenizer.json", [&] {
    build_pipeline(*tokenizer->pipeline_, tokenizer_json, tokenizer->config_);
    return 0;
  });
  return tokenizer;
}

std::vector<int32_t> Tokenizer::encode(std::string_view input, bool add_special_tokens) const {
  const Pipeline& p = *pipeline_;
  std::string lossy;
  if (!utf8_valid(input)) {
    lossy = utf8_lossy(input);
    input = lossy;
  }
  std::vector<int32_t> ids;
  if (add_special_tokens) ids = p.prefix_ids;
  Pieces pieces;
  // 1. Added tokens matched in the raw text; 2. normalize the rest; 3. added tokens matched in
  // the normalized text; 4. pre-tokenize; 5. BPE each piece.
  for (const Segment& segment : p.raw_matcher.split(input)) {
    if (segment.id >= 0) {
      ids.push_back(segment.id);
      continue;
    }
    const bool at_origin = segment.text.data() == input.data();
    std::string normalized(segment.text);
    if (p.normalizer) normalized = p.normalizer->normalize(std::move(normalized));
    for (const Segment& sub : p.normalized_matcher.split(normalized)) {
      if (sub.id >= 0) {
        ids.push_back(sub.id);
        continue;
      }
      pieces = Pieces(sub.text, at_origin && sub.text.data() == normalized.data());
      if (p.pre_tokenizer) p.pre_tokenizer->pre_tokenize(pieces);
      for (const Pieces::Span& span : pieces.spans) p.model->tokenize(pieces.view(span), ids);
    }
  }
  if (add_special_tokens) ids.insert(ids.end(), p.suffix_ids.begin(), p.suffix_ids.end());
  return ids;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  return decode_window(ids, skip_special_tokens, true);
}

std::string Tokenizer::decode_window(std::span<const int32_t> ids, bool skip_special_tokens,
                                     bool at_text_start, bool raw_bytes) const {
  const Pipeline& p = *pipeline_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (const int32_t id : ids) {
    if (id < 0 || id >= static_cast<int32_t>(p.known.size()) || !p.known[id]) continue;
    if (skip_special_tokens && p.special[id]) continue;
    tokens.push_back(p.id_to_token[id]);
  }
  std::string out;
  if (p.decoder) {
    DecodeContext context;
    context.at_text_start = at_text_start;
    context.raw_bytes = raw_bytes;
    p.decoder->decode_chain(tokens, context);
    for (const std::string& t : tokens) out += t;
  } else {
    // Without a decoder Hugging Face joins the tokens with spaces.
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i > 0) out += ' ';
      out += tokens[i];
    }
  }
  return out;
}

std::optional<std::string> Tokenizer::id_to_token(int32_t id) const {
  const Pipeline& p = *pipeline_;
  if (id < 0 || id >= static_cast<int32_t>(p.known.size()) || !p.known[id]) return std::nullopt;
  return p.id_to_token[id];
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  const Pipeline& p = *pipeline_;
  if (auto it = p.added_by_content.find(token); it != p.added_by_content.end()) return it->second;
  return p.model->token_to_id(token);
}

int64_t Tokenizer::vocab_size() const {
  return static_cast<int64_t>(pipeline_->known.size());
}

bool Tokenizer::is_special(int32_t id) const {
  const Pipeline& p = *pipeline_;
  return id >= 0 && id < static_cast<int32_t>(p.special.size()) && p.special[id];
}

const TokenizerConfig& Tokenizer::config() const {
  return config_;
}

std::optional<int32_t> Tokenizer::bos_token_id() const {
  return config_.bos_token ? token_to_id(*config_.bos_token) : std::nullopt;
}

std::optional<int32_t> Tokenizer::eos_token_id() const {
  return config_.eos_token ? token_to_id(*config_.eos_token) : std::nullopt;
}

// Streaming follows vLLM's detokenizer: re-decode a short window ids[prefix_offset_:] and emit
// what it adds beyond ids[prefix_offset_:read_offset_], unless it ends in U+FFFD (an incomplete
// character). The window keeps the previously emitted tokens as context so that decoders that
// depend on neighbours (Metaspace, ByteFallback) give the same text as a full decode.
IncrementalDecoder::IncrementalDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tokenizer_(tokenizer), skip_special_tokens_(skip_special_tokens) {}

namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";

bool ends_with_replacement(const std::string& s) {
  return s.size() >= 3 && std::string_view(s).substr(s.size() - 3) == kReplacement;
}

}  // namespace

std::string IncrementalDecoder::add(int32_t id) {
  ids_.push_back(id);
  const bool visible = tokenizer_.id_to_token(id).has_value() &&
                       !(skip_special_tokens_ && tokenizer_.is_special(id));
  if (visible && !first_visible_) first_visible_ = ids_.size() - 1;
  // The window starts the text when no visible token precedes it.
  const bool at_start = !first_visible_ || prefix_offset_ <= *first_visible_;
  const std::span<const int32_t> all(ids_);
  const std::string prefix_text = tokenizer_.decode_window(
      all.subspan(prefix_offset_, read_offset_ - prefix_offset_), skip_special_tokens_, at_start);
  const std::string new_text =
      tokenizer_.decode_window(all.subspan(prefix_offset_), skip_special_tokens_, at_start);
  if (new_text.size() <= prefix_text.size() || ends_with_replacement(new_text) ||
      new_text.compare(0, prefix_text.size(), prefix_text) != 0) {
    return {};
  }
  prefix_offset_ = read_offset_;
  read_offset_ = ids_.size();
  return new_text.substr(prefix_text.size());
}

std::string IncrementalDecoder::flush() {
  const bool at_start = !first_visible_ || prefix_offset_ <= *first_visible_;
  const std::span<const int32_t> all(ids_);
  const std::string prefix_text = tokenizer_.decode_window(
      all.subspan(prefix_offset_, read_offset_ - prefix_offset_), skip_special_tokens_, at_start);
  const std::string new_text =
      tokenizer_.decode_window(all.subspan(prefix_offset_), skip_special_tokens_, at_start);
  prefix_offset_ = read_offset_ = ids_.size();
  if (new_text.compare(0, prefix_text.size(), prefix_text) != 0) return new_text;  // cannot happen
  return new_text.substr(prefix_text.size());
}

}  // namespace tessera::tokenizer
