// A model ready to serve: the engine instance, its tokenizer, metrics and the engine thread.
// Shared by `tessera serve`, `tessera run-batch` and the server tests.
#pragma once

#include <memory>
#include <string>

#include "engine/engine_builder.h"
#include "server/async_engine.h"
#include "server/metrics.h"
#include "server/openai_server.h"
#include "server/text_processor.h"

namespace tessera {

class LoadedModel {
 public:
  // Loads the model folder of `args` with its tokenizer (or `text`, when given: tests).
  static std::unique_ptr<LoadedModel> load(const EngineArgs& args, const std::string& model_name,
                                           const std::string& chat_template,
                                           std::unique_ptr<TextProcessor> text = nullptr);
  ~LoadedModel();

  ServingModel serving();
  AsyncEngine& engine() { return *async_; }
  EngineInstance& instance() { return *instance_; }
  const TextProcessor* text() const { return text_.get(); }
  EngineMetrics& metrics() { return *metrics_; }

 private:
  LoadedModel() = default;
  std::optional<int64_t> max_tokens_cap_;
  std::unique_ptr<TextProcessor> text_;
  std::unique_ptr<EngineInstance> instance_;
  std::unique_ptr<EngineMetrics> metrics_;
  std::unique_ptr<AsyncEngine> async_;  // last: stops before what it uses goes away
};

}  // namespace tessera
