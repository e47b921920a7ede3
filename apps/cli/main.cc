// tessera: serve and run Hugging Face LLMs. See README.md for the subcommands.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <string>
#include <thread>
#include <vector>

#include "apps/cli/commands.h"
#include "core/logging.h"
#include "core/status.h"
#include "distributed/world.h"
#include "engine/engine_builder.h"

int main(int argc, char** argv) {
  tessera::init_logging();
  CLI::App app{"tessera: serve and run Hugging Face LLMs (vLLM-compatible)", "tessera"};
  app.require_subcommand(1);
  app.set_version_flag("--version", TESSERA_VERSION);
  // Bad input is reported on one line: "error: <what is wrong>".
  app.failure_message([](const CLI::App*, const CLI::Error& e) {
    return std::string("error: ") + e.what() + " (see --help)\n";
  });
  tessera::cli::add_serve_command(app);
  tessera::cli::add_generate_command(app);
  tessera::cli::add_run_batch_command(app);
  tessera::cli::add_bench_command(app);
  tessera::cli::add_make_model_command(app);
  tessera::cli::add_tokenize_command(app);
  tessera::cli::add_plan_command(app);
  // An unknown command gets a clearer message than CLI11's "a subcommand is required".
  bool known = false;
  std::string names;
  for (const CLI::App* sub : app.get_subcommands({})) {
    known |= argc > 1 && sub->get_name() == argv[1];
    names += (names.empty() ? "" : ", ") + sub->get_name();
  }
  if (argc > 1 && argv[1][0] != '-' && !known) {
    std::fprintf(stderr, "error: unknown command '%s' (commands: %s)\n", argv[1], names.c_str());
    return 1;
  }
  std::vector<std::string> args(argv + 1, argv + argc);
  for (std::string& a : args) {
    // vLLM's parser reads "--max_model_len" as "--max-model-len" (recipes such as
    // LeaderWorkerSet's write "--pipeline_parallel_size"); only the flag's name, not a value
    // after '='.
    if (a.size() > 2 && a.rfind("--", 0) == 0) {
      const size_t end = std::min(a.find('='), a.size());
      std::replace(a.begin() + 2, a.begin() + static_cast<std::ptrdiff_t>(end), '_', '-');
    }
    // vLLM's two-letter short flags, which CLI11 cannot declare.
    for (const auto& [short_name, long_name] :
         {std::pair<std::string, std::string>{"-tp", "--tensor-parallel-size"},
          {"-pp", "--pipeline-parallel-size"}}) {
      if (a == short_name || a.rfind(short_name + "=", 0) == 0) a = long_name + a.substr(3);
    }
  }
  std::reverse(args.begin(), args.end());  // CLI11 takes them last-first
  try {
    app.parse(args);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const tessera::WorkerRankFinished&) {
    return 0;  // a worker rank of a tp/pp job, stopped by rank 0
  } catch (const tessera::Error& e) {
    // Every rank of a job reaches the same verdict at start-up; rank 0 says it.
    if (tessera::launcher_rank() == 0) {
      std::fprintf(stderr, "error: %s\n", e.what());
    } else {
      // mpirun kills the job when the first rank exits non-zero: let rank 0 print first.
      std::this_thread::sleep_for(std::chrono::seconds(2));
    }
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
