#include "server/loaded_model.h"

#include "core/logging.h"

namespace tessera {

std::unique_ptr<LoadedModel> LoadedModel::load(const EngineArgs& args,
                                               const std::string& model_name,
                                               const std::string& chat_template,
                                               std::unique_ptr<TextProcessor> text) {
  std::unique_ptr<LoadedModel> m(new LoadedModel());
  m->max_tokens_cap_ = generation_max_tokens_cap(args);
  m->text_ = text ? std::move(text) : load_text_processor(args.tokenizer_dir(), chat_template);
  if (!m->text_)
    spdlog::warn("{} has no tokenizer.json: only token-id prompts can be served",
                 args.tokenizer_dir().string());
  m->instance_ =
      EngineInstance::create(args, m->text_ ? m->text_->decoder_factory() : TextDecoderFactory());
  const EngineConfig& ec = m->instance_->engine().config();
  CacheConfigInfo cache;
  cache.block_size = args.block_size;
  cache.num_gpu_blocks = ec.num_blocks;
  cache.gpu_memory_utilization = args.gpu_memory_utilization.value_or(0.9);
  cache.enable_prefix_caching = args.enable_prefix_caching;
  cache.cache_dtype = args.kv_cache_dtype ? kv_cache_dtype_label(*args.kv_cache_dtype) : "auto";
  m->metrics_ = std::make_unique<EngineMetrics>(model_name, ec.scheduler.max_model_len, cache);
  m->async_ = std::make_unique<AsyncEngine>(m->instance_->engine(), m->metrics_.get());
  return m;
}

LoadedModel::~LoadedModel() {
  async_.reset();
}

ServingModel LoadedModel::serving() {
  const EngineConfig& ec = instance_->engine().config();
  ServingModel s;
  s.engine = async_.get();
  s.metrics = metrics_.get();
  s.text = text_.get();
  s.max_model_len = ec.scheduler.max_model_len;
  s.vocab_size = ec.vocab_size;
  s.eos_token_ids = ec.eos_token_ids;
  s.defaults = SamplingParams::from_defaults(instance_->generation_config());
  s.default_max_tokens = instance_->generation_config().max_new_tokens;
  s.max_tokens_cap = max_tokens_cap_;
  s.max_logprobs = ec.max_logprobs;
  s.priority_scheduling = ec.scheduler.priority_policy;
  return s;
}

}  // namespace tessera
