// Logging goes through spdlog's default logger (the one process-wide object we allow: it is a
// sink, not state that code depends on). Messages go to stderr so stdout stays for results.
#pragma once

#include <spdlog/spdlog.h>

namespace tessera {

// Sets the log pattern and level ("debug", "info", "warning", "error"); call once from main.
void init_logging(const char* level = "info");

}  // namespace tessera
