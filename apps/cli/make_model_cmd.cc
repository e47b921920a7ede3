// tessera make-model: a random-weight checkpoint in the Hugging Face layout.
#include <fmt/format.h>

#include "apps/cli/commands.h"
#include "apps/cli/engine_flags.h"
#include "core/status.h"
#include "core/sys.h"
#include "model/make_model.h"

namespace tessera::cli {

namespace {
struct MakeModelFlags {
  std::string arch = "llama", preset = "tiny", out, dtype = "bf16", config_override, max_shard_size,
              checkpoint_quantization;
  uint64_t seed = 0;
};
}  // namespace

void add_make_model_command(CLI::App& app) {
  auto f = std::make_shared<MakeModelFlags>();
  CLI::App* cmd =
      app.add_subcommand("make-model", "Write a random-weight model in the Hugging Face layout");
  cmd->add_option("--arch", f->arch,
                  "llama, mistral, mixtral, qwen2, qwen2_moe, qwen3, qwen3_moe, gemma2, gpt2, opt, "
                  "falcon, deepseek_v3")
      ->capture_default_str();
  cmd->add_option("--preset", f->preset, "tiny, small, 1b, 8b")->capture_default_str();
  cmd->add_option("--out", f->out, "Output folder")->required();
  cmd->add_option("--seed", f->seed, "Seed: the same seed writes the same bytes")
      ->capture_default_str();
  cmd->add_option("--dtype", f->dtype, "bf16, f16 or f32")->capture_default_str();
  cmd->add_option("--config-override", f->config_override,
                  "JSON object merged into config.json, e.g. '{\"head_dim\": 32}'");
  cmd->add_option("--max-shard-size", f->max_shard_size,
                  "Split the weights into shards of at most this size (e.g. 100MB)");
  cmd->add_option("--checkpoint-quantization", f->checkpoint_quantization,
                  "Write a quantized checkpoint: fp8 (a scale per weight), fp8-channel "
                  "(compressed-tensors, a scale per row), fp8-block (DeepSeek-V3's 128 x 128 "
                  "blocks), gptq, awq (4-bit, groups of 128) w4a16 (compressed-tensors "
                  "pack-quantized) or w8a8 (compressed-tensors int8); --config-override's "
                  "quantization_config changes bits, "
                  "group_size, sym, desc_act");
  cmd->callback([f] {
    MakeModelOptions o;
    o.arch = f->arch;
    o.preset = f->preset;
    o.out = f->out;
    o.seed = f->seed;
    o.checkpoint_quantization = f->checkpoint_quantization;
    if (!parse_torch_dtype(f->dtype, &o.dtype))
      fail("--dtype must be bf16, f16 or f32, got \"{}\"", f->dtype);
    if (!f->config_override.empty()) {
      try {
        o.config_override = nlohmann::json::parse(f->config_override);
      } catch (const nlohmann::json::exception& e) {
        fail("--config-override is not valid JSON: {}", e.what());
      }
    }
    if (!f->max_shard_size.empty())
      o.max_shard_bytes = parse_bytes(f->max_shard_size, "--max-shard-size");
    ThreadPool pool(physical_core_count());
    const double t0 = now_seconds();
    const uint64_t bytes = make_model(o, pool);
    fmt::print(stderr, "wrote {} ({} {}, {:.1f} MB of weights) in {:.2f} s\n", o.out.string(),
               o.arch, o.preset, bytes / 1e6, now_seconds() - t0);
  });
}

}  // namespace tessera::cli
