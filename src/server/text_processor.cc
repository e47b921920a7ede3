#include "server/text_processor.h"

#include <mutex>

#include "core/status.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace tessera {

namespace {

class StreamDecoder : public TextDecoder {
 public:
  StreamDecoder(std::shared_ptr<const tokenizer::Tokenizer> t, bool skip_special)
      : tokenizer_(std::move(t)), decoder_(*tokenizer_, skip_special) {}
  std::string step(int32_t token) override { return decoder_.add(token); }
  std::string finish() override { return decoder_.flush(); }

 private:
  std::shared_ptr<const tokenizer::Tokenizer> tokenizer_;  // outlives the decoder
  tokenizer::IncrementalDecoder decoder_;
};

// A Hugging Face model folder's tokenizer and chat templates.
class HfTextProcessor : public TextProcessor {
 public:
  HfTextProcessor(std::shared_ptr<const tokenizer::Tokenizer> tokenizer,
                  tokenizer::ChatTemplates templates)
      : tokenizer_(std::move(tokenizer)), templates_(std::move(templates)) {}

  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const override {
    return tokenizer_->encode(text, add_special_tokens);
  }
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens) const override {
    return tokenizer_->decode(ids, skip_special_tokens);
  }
  std::string render_chat(const ChatRenderInputs& in) const override {
    tokenizer::ChatInputs inputs;
    inputs.messages = in.messages;
    inputs.tools = in.tools;
    inputs.add_generation_prompt = in.add_generation_prompt;
    inputs.continue_final_message = in.continue_final_message;
    inputs.kwargs = in.kwargs.is_null() ? tokenizer::Json::object() : in.kwargs;
    try {
      return templates_.render(inputs, in.chat_template);
    } catch (const Error& e) {
      // Whatever the template or the conversation got wrong is the request's fault.
      throw Error(e.what(), ErrorKind::kInvalidArgument);
    } catch (const std::exception& e) {
      throw Error(fmt::format("chat template: {}", e.what()), ErrorKind::kInvalidArgument);
    }
  }
  std::shared_ptr<const TokenVocabulary> token_vocabulary(
      const std::vector<int32_t>& eos_ids) const override {
    std::call_once(vocab_once_, [&] {
      const int64_t n = tokenizer_->vocab_size();
      std::vector<std::string> texts(static_cast<size_t>(n));
      for (int64_t id = 0; id < n; ++id) {
        const auto i = static_cast<int32_t>(id);
        if (tokenizer_->is_special(i)) continue;  // never inside a structured text
        // Decoded mid-text, so that a leading space (Metaspace) is kept, and as bytes: a token
        // that holds part of a character (byte-level or byte-fallback) adds those bytes, so the
        // grammar's byte matching lets pieces build characters no single token spells
        // (DeepSeek's "\u2581" in <｜tool▁sep｜>).
        texts[id] = tokenizer_->token_bytes(i);
      }
      vocab_ = std::make_shared<const TokenVocabulary>(std::move(texts), eos_ids);
    });
    return vocab_;
  }
  TextDecoderFactory decoder_factory() const override {
    std::shared_ptr<const tokenizer::Tokenizer> t = tokenizer_;
    return [t](bool skip_special) -> std::unique_ptr<TextDecoder> {
      return std::make_unique<StreamDecoder>(t, skip_special);
    };
  }
  std::optional<int32_t> eos_token_id() const override { return tokenizer_->eos_token_id(); }

 private:
  mutable std::once_flag vocab_once_;
  mutable std::shared_ptr<const TokenVocabulary> vocab_;
  std::shared_ptr<const tokenizer::Tokenizer> tokenizer_;
  tokenizer::ChatTemplates templates_;
};

}  // namespace

std::unique_ptr<TextProcessor> load_text_processor(const std::filesystem::path& model_dir,
                                                   const std::string& chat_template_arg) {
  if (!tokenizer::has_tokenizer(model_dir)) {
    if (!chat_template_arg.empty())
      fail("--chat-template needs a tokenizer, and {} has no tokenizer.json", model_dir.string());
    return nullptr;
  }
  std::shared_ptr<const tokenizer::Tokenizer> tok = tokenizer::Tokenizer::load(model_dir);
  return std::make_unique<HfTextProcessor>(
      std::move(tok), tokenizer::ChatTemplates::load(model_dir, chat_template_arg));
}

}  // namespace tessera
