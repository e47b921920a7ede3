// Each `tessera` subcommand lives in its own file and registers itself on the root CLI11 app.
// A command reports bad input by throwing tessera::Error; main() prints it on one line and exits
// non-zero.
#pragma once

#include <CLI/CLI.hpp>

namespace tessera::cli {

void add_generate_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_make_model_command(CLI::App& app);
void add_tokenize_command(CLI::App& app);
void add_serve_command(CLI::App& app);
void add_bench_serve_command(CLI::App& bench);  // under `bench`
void add_run_batch_command(CLI::App& app);
void add_plan_command(CLI::App& app);

}  // namespace tessera::cli
