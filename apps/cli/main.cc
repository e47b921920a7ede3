// tessera: serve and run Hugging Face LLMs. See README.md for the subcommands.
#include <cstdio>
#include <exception>

#include "apps/cli/commands.h"
#include "core/logging.h"
#include "core/status.h"

int main(int argc, char** argv) {
  tessera::init_logging();
  CLI::App app{"tessera: serve and run Hugging Face LLMs (vLLM-compatible)", "tessera"};
  app.require_subcommand(1);
  app.set_version_flag("--version", TESSERA_VERSION);
  tessera::cli::add_generate_command(app);
  tessera::cli::add_bench_command(app);
  tessera::cli::add_make_model_command(app);
  tessera::cli::add_tokenize_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const tessera::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
