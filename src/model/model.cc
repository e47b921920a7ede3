#include "model/model.h"

#include "core/status.h"
#include "core/sys.h"
#include "loader/checkpoint.h"
#include "model/arch/registry.h"

namespace tessera {

IntWeights int_weights_of(const ModelConfig& config) {
  TESSERA_CHECK(config.int_checkpoint());
  IntWeights f;
  f.kind = config.int_format == "gptq"             ? IntWeights::Kind::kGptq
           : config.int_format == "awq"            ? IntWeights::Kind::kAwq
           : config.int_format == "pack-quantized" ? IntWeights::Kind::kPacked
                                                   : IntWeights::Kind::kInt8;
  f.bits = config.int_bits;
  f.group_size = config.int_group_size;
  f.symmetric = config.int_symmetric;
  f.gptq_v2 = config.int_gptq_v2;
  return f;
}

std::unique_ptr<CausalLM> load_model(const std::filesystem::path& model_dir, ModelContext& ctx,
                                     const LoadOptions& options, LoadReport* report) {
  const double t0 = now_seconds();
  ModelConfig config = load_model_config(model_dir);
  std::optional<Checkpoint> checkpoint;
  if (options.format != LoadFormat::kDummy) checkpoint = Checkpoint::open(model_dir);
  WeightSource weights(checkpoint ? &*checkpoint : nullptr, options.format, options.pool,
                       options.dtype.value_or(config.dtype));
  if (options.dtype) {
    weights.convert_to(*options.dtype);
    config.dtype = *options.dtype;
  }
  if (!config.quant_method.empty() && !config.fp8_checkpoint && !config.int_checkpoint() &&
      options.format != LoadFormat::kDummy)
    fail(ErrorKind::kUnsupported,
         "{}: a pre-quantized checkpoint (quantization_config.quant_method \"{}\"{}) is not "
         "supported: tessera loads f32, bf16 and f16 weights, FP8 (E4M3) checkpoints and 4- or "
         "8-bit integer weights from GPTQ, AWQ (GEMM) and compressed-tensors. Use the "
         "unquantized release (--quantization fp8 stores its layer weights in 8 bits), or "
         "--load-format dummy for random weights of this shape",
         (model_dir / "config.json").string(), config.quant_method,
         config.quant_scheme != config.quant_method ? ": " + config.quant_scheme : "");
  if (config.fp8_checkpoint) {
    weights.set_fp8(config.fp8_block_rows, config.fp8_block_cols, config.dtype);
    // Static activation scales and FP8 KV-cache scales: tessera's kernels take f32 activations
    // and size their own KV cache scales, so these are read by nobody.
    for (const char* suffix : {".input_scale", ".k_scale", ".v_scale", ".kv_scale", ".q_scale"})
      weights.ignore_suffix(suffix);
  }
  if (config.int_checkpoint()) {
    if (config.arch == Arch::kGpt2)
      fail(ErrorKind::kUnsupported,
           "{}: GPT-2's Conv1D weights from an integer checkpoint ({}) are not supported",
           (model_dir / "config.json").string(), config.quant_scheme);
    weights.set_int_weights(int_weights_of(config), config.dtype);
    // W8A8's static activation scales (tessera's activations stay f32).
    for (const char* suffix : {".input_scale", ".input_zero_point"}) weights.ignore_suffix(suffix);
  }
  // Before any weight is read: a head the backend's attention cannot take (DeepSeek's 576-wide
  // latent on CUDA) is a clear refusal, not a failed check in the first step.
  if (config.head_dim > ctx.backend.max_attention_head_dim())
    fail(ErrorKind::kUnsupported,
         "{} needs attention over {}-wide heads{}; the {} backend's attention takes at most {}",
         config.architecture, config.head_dim,
         config.mla() ? " (its latent: kv_lora_rank + qk_rope_head_dim)" : "", ctx.backend.name(),
         ctx.backend.max_attention_head_dim());
  std::unique_ptr<CausalLM> model;
  switch (config.arch) {
    case Arch::kLlama:
    case Arch::kMistral:
    case Arch::kQwen2:
    case Arch::kQwen3:
    case Arch::kGemma2:
    case Arch::kMixtral:
    case Arch::kQwen3Moe:
    case Arch::kQwen2Moe:
    case Arch::kDeepseekV3:
      model = build_llama_family(ctx, weights, config);
      break;
    case Arch::kGpt2:
    case Arch::kOpt:
      model = build_gpt2(ctx, weights, config);
      break;
    case Arch::kFalcon:
      model = build_falcon(ctx, weights, config);
      break;
  }
  if (config.int_checkpoint() && options.format != LoadFormat::kDummy &&
      weights.int_weights_taken() == 0)
    fail(
        "{}: quantization_config says {}, but no weight of {} is stored that way (e.g. "
        "\"x.qweight\" or \"x.weight_packed\" beside \"x.weight\")",
        (model_dir / "config.json").string(), config.quant_scheme, model_dir.string());
  weights.check_all_used();
  weights.release_last_mapped();
  if (report) {
    report->seconds = now_seconds() - t0;
    report->bytes_read = weights.bytes_read();
    report->read_seconds = weights.read_seconds();
  }
  return model;
}

void take_hidden_in(Backend& backend, const ForwardBatch& batch, const Tensor& residual) {
  TESSERA_CHECK(batch.hidden_in.numel() == residual.numel())
      << "a later stage needs the hidden states";
  backend.copy(batch.hidden_in, residual);
}

Tensor gather_logit_rows(Backend& backend, const ForwardBatch& batch, const Tensor& residual) {
  Tensor rows = backend.empty({batch.logit_rows.numel(), residual.size(1)}, DType::kF32);
  backend.gather_rows(residual, batch.logit_rows, rows);
  return rows;
}

KVCache allocate_kv_cache(Backend& backend, const CausalLM& model, int64_t num_blocks,
                          int block_size, DType dtype) {
  KVCache cache;
  cache.num_blocks = num_blocks;
  cache.block_size = block_size;
  cache.dtype = dtype;
  const int64_t heads = model.kv_heads_local(), d = model.config().head_dim;
  // Not cleared: attention reads only slots written before (other lanes of a tile are masked
  // out before use), and on CPU untouched memory is committed lazily as it is first written.
  for (int64_t l = 0; l < model.num_layers_local(); ++l) {
    cache.k.push_back(backend.empty({num_blocks, block_size, heads, d}, dtype));
    cache.v.push_back(backend.empty({num_blocks, block_size, heads, d}, dtype));
  }
  return cache;
}

int64_t kv_cache_block_bytes(const CausalLM& model, int block_size, DType dtype) {
  return 2 * model.num_layers_local() * model.kv_heads_local() * model.config().head_dim *
         block_size * static_cast<int64_t>(dtype_size(dtype));
}

}  // namespace tessera
