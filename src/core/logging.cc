#include "core/logging.h"

#include <spdlog/sinks/stdout_color_sinks.h>

namespace tessera {

void init_logging(const char* level) {
  auto logger = spdlog::stderr_color_mt("tessera");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("%^%L%$ %m-%d %H:%M:%S.%e %v");
  spdlog::set_level(spdlog::level::from_str(level));
}

}  // namespace tessera
