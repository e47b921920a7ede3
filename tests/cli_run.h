// Runs the tessera binary (or any shell command line) as a user would, with stdout and stderr
// kept apart, for the tests of the command line.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include <gtest/gtest.h>

namespace tessera::testing {

struct CliRun {
  int status = 0;
  std::string out, err;
};

inline CliRun run_shell(const std::string& command) {
  const std::filesystem::path err_file =
      std::filesystem::path(::testing::TempDir()) / ("tessera_cli_err_" + std::to_string(getpid()));
  const std::string cmd = command + " 2>" + err_file.string();
  CliRun r;
  FILE* p = popen(cmd.c_str(), "r");
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  r.status = WEXITSTATUS(pclose(p));
  std::ifstream in(err_file);
  r.err.assign(std::istreambuf_iterator<char>(in), {});
  std::filesystem::remove(err_file);
  return r;
}

// `tessera ARGS` from this build.
inline CliRun run_tessera(const std::string& args) {
  return run_shell(TESSERA_BINARY_DIR "/tessera " + args);
}

}  // namespace tessera::testing
