// tokenizer.json "post_processor": TemplateProcessing, ByteLevel, RobertaProcessing,
// BertProcessing, Sequence. Only single sequences are encoded (no pairs).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <nlohmann/json.hpp>

namespace tessera::tokenizer {

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  // Adds the special tokens around `ids` (only called with add_special_tokens = true).
  virtual std::vector<int32_t> process(std::vector<int32_t> ids) const = 0;
};

// Returns nullptr for a JSON null. Throws tessera::Error for unsupported types.
std::unique_ptr<PostProcessor> parse_post_processor(const nlohmann::json& json);

// A processor that adds fixed ids before and after (used for tokenizer_config's add_bos_token).
std::unique_ptr<PostProcessor> make_wrap_processor(std::vector<int32_t> before,
                                                   std::vector<int32_t> after);

}  // namespace tessera::tokenizer
