#include "apps/cli/commands.h"
namespace tessera::cli {
void add_generate_command(CLI::App&) {}
void add_bench_command(CLI::App&) {}
void add_make_model_command(CLI::App&) {}
}  // namespace tessera::cli
