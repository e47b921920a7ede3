#include "engine/model_runner.h"

#include <algorithm>
#include <cstring>

#include "core/status.h"

namespace tessera {

ModelRunner::ModelRunner(Backend& backend, CausalLM& model, KVCache& cache, PipelineLinks links)
    : backend_(backend), model_(model), cache_(cache), links_(links) {}

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

ForwardBatch ModelRunner::make_batch(const StepInputs& in) {
  const int64_t t = in.num_tokens(), s = in.num_seqs();
  TESSERA_CHECK_GT(t, 0);
  ForwardBatch batch;
  batch.token_ids = to_device(in.token_ids, {t});
  batch.positions = to_device(in.positions, {t});
  batch.logit_rows = to_device(in.logit_rows, {static_cast<int64_t>(in.logit_rows.size())});
  AttentionMetadata& meta = batch.attention;
  meta.num_seqs = static_cast<int>(s);
  meta.block_size = cache_.block_size;
  for (int32_t len : in.seq_lens) meta.max_seq_len = std::max(meta.max_seq_len, len);
  meta.query_start = to_device(in.query_start, {s + 1});
  meta.seq_lens = to_device(in.seq_lens, {s});
  meta.block_tables = to_device(in.block_tables, {s, in.max_blocks});
  meta.slot_mapping = to_device(in.slot_mapping, {t});
  return batch;
}

Tensor ModelRunner::argmax(const Tensor& logits) {
  Tensor ids = backend_.empty({logits.size(0)}, DType::kI32);
  backend_.argmax_rows(logits, ids);
  return ids;
}

std::vector<int32_t> ModelRunner::static_inputs(const StepInputs& in, int size) const {
  const int64_t n = in.num_seqs(), b = size, w = static_max_blocks_;
  std::vector<int32_t> v(6 * b + 1 + b * w, 0);
  int32_t* ids = v.data();
  int32_t* pos = ids + b;
  int32_t* slots = pos + b;
  int32_t* qs = slots + b;
  int32_t* lens = qs + b + 1;
  int32_t* rows = lens + b;
  int32_t* tables = rows + b;
  for (int64_t s = 0; s < b; ++s) {
    qs[s] = static_cast<int32_t>(s);
    rows[s] = static_cast<int32_t>(s);
    if (s < n) {
      ids[s] = in.token_ids[s];
      pos[s] = in.positions[s];
      slots[s] = in.slot_mapping[s];
      lens[s] = in.seq_lens[s];
      std::copy(in.block_tables.begin() + s * in.max_blocks,
                in.block_tables.begin() + (s + 1) * in.max_blocks, tables + s * w);
    } else {
      // Padding: one key (block 0's first slot, whatever it holds), nothing written.
      slots[s] = -1;
      lens[s] = 1;
    }
  }
  qs[b] = static_cast<int32_t>(b);
  return v;
}

void ModelRunner::fill_static(StaticBatch& sb, const StepInputs& in) {
  std::vector<int32_t> host = static_inputs(in, sb.size);
  const int64_t count[1] = {static_cast<int64_t>(host.size())};
  backend_.copy(Tensor::wrap(host.data(), count, DType::kI32, nullptr), sb.inputs);
}

std::vector<int> ModelRunner::capture_decode_steps(std::vector<int> sizes, int64_t max_model_len) {
  TESSERA_CHECK_EQ(links_.world_config.pp, 1);
  TESSERA_CHECK(static_.empty());
  static_max_blocks_ =
      static_cast<int32_t>((max_model_len + cache_.block_size - 1) / cache_.block_size);
  std::sort(sizes.begin(), sizes.end());
  sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());
  std::vector<int> recorded;
  // Largest first: the smaller ones then reuse its pool's blocks.
  for (auto it = sizes.rbegin(); it != sizes.rend(); ++it) {
    const int b = *it;
    TESSERA_CHECK_GT(b, 0);
    StaticBatch sb;
    sb.size = b;
    const int64_t w = static_max_blocks_;
    sb.inputs = backend_.empty({6 * b + 1 + b * w}, DType::kI32);
    int64_t at = 0;
    auto view = [&](int64_t n) {
      Tensor t = sb.inputs.slice(0, at, at + n);
      at += n;
      return t;
    };
    ForwardBatch& fb = sb.batch;
    fb.token_ids = view(b);
    fb.positions = view(b);
    fb.attention.slot_mapping = view(b);
    fb.attention.query_start = view(b + 1);
    fb.attention.seq_lens = view(b);
    fb.logit_rows = view(b);
    fb.attention.block_tables = view(b * w).reshape({b, w});
    fb.attention.num_seqs = b;
    fb.attention.block_size = cache_.block_size;
    // Recorded launches keep their grid: size attention for the longest context.
    fb.attention.max_seq_len = static_cast<int32_t>(max_model_len);
    // Inputs that touch nothing: every sequence is padding.
    fill_static(sb, StepInputs());
    if (backend_.supports_capture()) {
      model_.forward(sb.batch, cache_);  // once as usual: plans and buffers exist before recording
      backend_.synchronize();
      backend_.begin_capture();
      Tensor logits;
      try {
        logits = model_.forward(sb.batch, cache_);
      } catch (...) {
        backend_.end_capture();
        throw;
      }
      sb.ops = backend_.end_capture();
      if (!sb.ops) continue;  // op by op, as without static batches
      // A view, not an owner: the block goes back to the pool of recorded ops, where the next
      // recording may use it too. Recorded steps never run at once, and a step's logits are read
      // before the next step runs.
      sb.logits =
          Tensor::wrap(logits.raw(), logits.shape(), logits.dtype(), nullptr, logits.device());
      recorded.push_back(b);
    }
    static_.push_back(std::move(sb));
  }
  std::reverse(static_.begin(), static_.end());
  std::sort(recorded.begin(), recorded.end());
  return recorded;
}

Tensor ModelRunner::run_static(const StepInputs& in) {
  const int64_t n = in.num_seqs();
  if (static_.empty() || n == 0 || in.num_tokens() != n || in.max_blocks > static_max_blocks_ ||
      static_cast<int64_t>(in.logit_rows.size()) != n)
    return Tensor();
  for (int64_t s = 0; s < n; ++s)
    if (in.logit_rows[s] != s) return Tensor();
  StaticBatch* sb = nullptr;
  for (StaticBatch& b : static_)
    if (b.size >= n) {
      sb = &b;
      break;
    }
  if (!sb) return Tensor();
  fill_static(*sb, in);  // ordered after the previous step's reads
  ++static_steps_;
  Tensor logits;
  if (sb->ops) {
    backend_.replay(*sb->ops);
    logits = sb->logits;
  } else {
    logits = model_.forward(sb->batch, cache_);
  }
  return logits.slice(0, 0, n);
}

Tensor ModelRunner::execute(const StepInputs& in) {
  if (links_.world_config.pp > 1) return execute_pipelined(in);
  Tensor logits = run_static(in);
  if (!logits.defined()) logits = model_.forward(make_batch(in), cache_);
  if (!links_.world_config.is_driver()) return Tensor();
  if (in.greedy_only) logits = argmax(logits);
  if (logits.device() == Device::kCPU) return logits;
  Tensor host = backend_.empty_host(logits.shape(), logits.dtype());
  backend_.copy(logits, host);
  return host;
}

Tensor ModelRunner::forward_local(const StepInputs& in) {
  ForwardBatch batch = make_batch(in);
  if (!links_.world_config.is_first_stage()) {
    batch.hidden_in = backend_.empty({in.num_tokens(), model_.config().hidden_size}, DType::kF32);
    backend_.fill_zero(batch.hidden_in);
  }
  return model_.forward(batch, cache_);
}

Tensor ModelRunner::execute_pipelined(const StepInputs& in) {
  begin(in);
  return finish();
}

void ModelRunner::begin(const StepInputs& in) {
  const WorldConfig& w = links_.world_config;
  TESSERA_CHECK_GT(w.pp, 1);
  Communicator& pp = *links_.pp;
  const int64_t hidden = model_.config().hidden_size;
  InFlight& f = in_flight_.emplace_back();
  f.inputs = in;
  f.mb = split_micro_batches(in, micro_batches_ > 0 ? micro_batches_ : w.pp);
  const size_t n = f.mb.parts.size();
  f.outgoing.resize(n);
  const bool sends_logits = w.is_last_stage() && w.tp_rank() == 0 && !w.is_driver();
  for (size_t k = 0; k < n; ++k) {
    ForwardBatch batch = make_batch(f.mb.parts[k]);
    if (!w.is_first_stage()) {
      batch.hidden_in = backend_.empty({f.mb.parts[k].num_tokens(), hidden}, DType::kF32);
      pp.recv(batch.hidden_in, pp.rank() - 1);
    }
    Tensor out = model_.forward(batch, cache_);
    if (!w.is_last_stage()) {
      // The model's buffer is reused by the next micro-batch: send a copy.
      f.outgoing[k] = backend_.empty(out.shape(), DType::kF32);
      backend_.copy(out, f.outgoing[k]);
      pp.send_async(f.outgoing[k], pp.rank() + 1);
    } else if (sends_logits) {
      f.outgoing[k] = in.greedy_only ? argmax(out) : out;  // a new tensor each forward
      links_.world->send_async(f.outgoing[k], 0);
    }
  }
  f.pp_sends = links_.pp->sends_started();
  f.world_sends = links_.world->sends_started();
  if (shared_cores_pool_) shared_cores_pool_->park();
}

void ModelRunner::retire(size_t keep) {
  auto sent = [&](const InFlight& f) {
    return links_.pp->sends_done(f.pp_sends) && links_.world->sends_done(f.world_sends);
  };
  while (!in_flight_.empty() && (in_flight_.size() > keep || sent(in_flight_.front()))) finish();
}

Tensor ModelRunner::finish() {
  TESSERA_CHECK(!in_flight_.empty());
  const WorldConfig& w = links_.world_config;
  InFlight f = std::move(in_flight_.front());
  in_flight_.pop_front();
  Tensor logits;
  if (w.is_driver()) {
    // The logits of every micro-batch, from the last stage. Received before waiting for this
    // rank's own sends: the last stage may be blocked handing over an older step's logits.
    // A row is vocab f32 logits, or with greedy_only one int32 argmax.
    const bool ids = f.inputs.greedy_only;
    const int64_t width = ids ? 1 : model_.config().vocab_size;
    const DType dtype = ids ? DType::kI32 : DType::kF32;
    const size_t row_bytes = static_cast<size_t>(width) * dtype_size(dtype);
    auto rows_tensor = [&](int64_t rows) {
      return ids ? Tensor::empty({rows}, dtype) : Tensor::empty({rows, width}, dtype);
    };
    logits = rows_tensor(static_cast<int64_t>(f.inputs.logit_rows.size()));
    const int last = w.rank_of(w.pp - 1, 0);
    if (f.mb.parts.size() == 1) {  // one micro-batch: its rows are the step's, in order
      links_.world->recv(logits, last);
    } else {
      for (size_t k = 0; k < f.mb.parts.size(); ++k) {
        const int64_t rows = static_cast<int64_t>(f.mb.logit_index[k].size());
        Tensor part = rows_tensor(rows);
        links_.world->recv(part, last);
        for (int64_t r = 0; r < rows; ++r)
          std::memcpy(static_cast<char*>(logits.raw()) + f.mb.logit_index[k][r] * row_bytes,
                      static_cast<const char*>(part.raw()) + r * row_bytes, row_bytes);
      }
    }
  }
  // This step's sends (and older ones): its hidden states were taken by the next stage, its
  // logits by the driver, its control message by every rank. Newer steps' sends may still wait
  // for a peer that is itself waiting for this rank.
  links_.pp->wait_sends(f.pp_sends);
  links_.world->wait_sends(f.world_sends);
  return logits;
}

MicroBatches split_micro_batches(const StepInputs& in, int parts) {
  MicroBatches mb;
  const int64_t seqs = in.num_seqs();
  const int count = static_cast<int>(std::min<int64_t>(parts, seqs));
  // Which sequence each logit row belongs to (rows are token indices of the batch).
  std::vector<int32_t> row_seq(in.logit_rows.size());
  for (size_t j = 0; j < in.logit_rows.size(); ++j) {
    const int32_t row = in.logit_rows[j];
    int32_t s = 0;
    while (in.query_start[s + 1] <= row) ++s;
    row_seq[j] = s;
  }
  for (int k = 0; k < count; ++k) {
    const Range r = split_evenly(seqs, count, k);
    const int32_t t0 = in.query_start[r.begin], t1 = in.query_start[r.end];
    StepInputs p;
    p.token_ids.assign(in.token_ids.begin() + t0, in.token_ids.begin() + t1);
    p.positions.assign(in.positions.begin() + t0, in.positions.begin() + t1);
    p.slot_mapping.assign(in.slot_mapping.begin() + t0, in.slot_mapping.begin() + t1);
    for (int64_t s = r.begin; s <= r.end; ++s) p.query_start.push_back(in.query_start[s] - t0);
    p.seq_lens.assign(in.seq_lens.begin() + r.begin, in.seq_lens.begin() + r.end);
    p.max_blocks = in.max_blocks;
    p.greedy_only = in.greedy_only;
    p.block_tables.assign(in.block_tables.begin() + r.begin * in.max_blocks,
                          in.block_tables.begin() + r.end * in.max_blocks);
    std::vector<int32_t> index;
    for (size_t j = 0; j < in.logit_rows.size(); ++j) {
      if (row_seq[j] < r.begin || row_seq[j] >= r.end) continue;
      p.logit_rows.push_back(in.logit_rows[j] - t0);
      index.push_back(static_cast<int32_t>(j));
    }
    mb.parts.push_back(std::move(p));
    mb.logit_index.push_back(std::move(index));
  }
  return mb;
}

}  // namespace tessera
