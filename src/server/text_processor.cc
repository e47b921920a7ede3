#include "server/text_processor.h"

#include "core/status.h"

namespace tessera {

// Interim: the tokenizer library lands separately; until then model folders serve token ids.
std::unique_ptr<TextProcessor> load_text_processor(const std::filesystem::path& model_dir,
                                                   const std::string& chat_template_arg) {
  return nullptr;
}

}  // namespace tessera
