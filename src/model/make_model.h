// `tessera make-model`: random-weight checkpoints in the real Hugging Face layout (config.json,
// generation_config.json, safetensors with the real tensor names), bit-for-bit deterministic
// from the seed, for tests and benchmarks where no trained weights can be downloaded.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/thread_pool.h"

namespace tessera {

struct MakeModelOptions {
  std::string arch = "llama";   // llama, mistral, qwen2, qwen3, gemma2
  std::string preset = "tiny";  // tiny, small, 1b, 8b
  std::filesystem::path out;
  uint64_t seed = 0;
  DType dtype = DType::kBF16;
  nlohmann::json config_override = nlohmann::json::object();  // merged into config.json
  uint64_t max_shard_bytes = 0;  // > 0: model-0000k-of-0000n.safetensors + index
  // An FP8 checkpoint (decoder Linear weights as F8_E4M3 with scales, the rest in `dtype`):
  //  - "fp8": quant_method "fp8" (AutoFP8's layout), one f32 weight_scale and a static
  //    input_scale per weight;
  //  - "fp8-channel": compressed-tensors FP8_DYNAMIC, weight_scale [rows, 1] in `dtype`;
  //  - "fp8-block": quant_method "fp8" with weight_block_size (DeepSeek-V3's layout; [128, 128]
  //    unless config_override sets quantization_config.weight_block_size), weight_scale_inv.
  //  - "gptq", "awq", "w4a16": integer weights (docs/quantization.md) in AutoGPTQ's, AutoAWQ's
  //    GEMM or compressed-tensors' pack-quantized layout, 4 bits in groups of 128 inputs unless
  //    config_override's quantization_config says otherwise (bits, group_size, sym, desc_act,
  //    checkpoint_format; config_groups for w4a16); scales in `dtype`. "w8a8": compressed-tensors
  //    int-quantized, an I8 weight with a scale per row.
  std::string checkpoint_quantization;  // empty: none
};

// The config.json of an architecture at a preset size; throws tessera::Error for unknown names.
nlohmann::json preset_config(const std::string& arch, const std::string& preset, DType dtype);

// Writes the checkpoint; returns the bytes of weights written.
uint64_t make_model(const MakeModelOptions& options, ThreadPool& pool);

}  // namespace tessera
