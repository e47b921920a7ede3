// Placeholder until the tokenizer library lands: the command exists and says so.
#include "apps/cli/commands.h"
#include "core/status.h"

namespace tessera::cli {

void add_tokenize_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("tokenize", "Tokenize text or a chat with a model's tokenizer");
  cmd->allow_extras();
  cmd->callback([] { fail(ErrorKind::kUnsupported, "tokenize: the tokenizer is not built yet"); });
}

}  // namespace tessera::cli
