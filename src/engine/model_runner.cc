#include "engine/model_runner.h"

#include <cstring>

#include "core/status.h"

namespace tessera {

ModelRunner::ModelRunner(Backend& backend, CausalLM& model, KVCache& cache)
    : backend_(backend), model_(model), cache_(cache) {}

Tensor ModelRunner::to_device(const std::vector<int32_t>& values,
                              std::initializer_list<int64_t> shape) {
  Tensor host = Tensor::empty(shape, DType::kI32);
  TESSERA_CHECK_EQ(static_cast<size_t>(host.numel()), values.size());
  if (!values.empty()) std::memcpy(host.raw(), values.data(), values.size() * sizeof(int32_t));
  if (backend_.device() == Device::kCPU) return host;
  Tensor dev = backend_.empty(shape, DType::kI32);
  backend_.copy(host, dev);
  return dev;
}

Tensor ModelRunner::execute(const StepInputs& in) {
  const int64_t t = in.num_tokens(), s = in.num_seqs();
  TESSERA_CHECK_GT(t, 0);
  ForwardBatch batch;
  batch.token_ids = to_device(in.token_ids, {t});
  batch.positions = to_device(in.positions, {t});
  batch.logit_rows = to_device(in.logit_rows, {static_cast<int64_t>(in.logit_rows.size())});
  AttentionMetadata& meta = batch.attention;
  meta.num_seqs = static_cast<int>(s);
  meta.block_size = cache_.block_size;
  meta.query_start = to_device(in.query_start, {s + 1});
  meta.seq_lens = to_device(in.seq_lens, {s});
  meta.block_tables = to_device(in.block_tables, {s, in.max_blocks});
  meta.slot_mapping = to_device(in.slot_mapping, {t});
  Tensor logits = model_.forward(batch, cache_);
  if (logits.device() == Device::kCPU) return logits;
  Tensor host = Tensor::empty(logits.shape(), DType::kF32);
  backend_.copy(logits, host);
  return host;
}

}  // namespace tessera
