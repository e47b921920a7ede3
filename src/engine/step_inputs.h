// The contract between the engine and the model: one step's batch as plain integer arrays (the
// token ids, positions, slot mapping and block tables of each scheduled sequence). The driver
// builds it from the scheduler's decisions; in a multi-rank run it is broadcast to every rank,
// which turns it into device tensors.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engine/scheduler.h"

namespace tessera {

struct StepInputs {
  std::vector<int32_t> token_ids;     // [T]
  std::vector<int32_t> positions;     // [T]
  std::vector<int32_t> slot_mapping;  // [T] block * block_size + offset
  std::vector<int32_t> query_start;   // [S + 1]
  std::vector<int32_t> seq_lens;      // [S] context length after this step
  std::vector<int32_t> block_tables;  // [S, max_blocks], padded with 0
  int32_t max_blocks = 0;
  std::vector<int32_t> logit_rows;  // rows whose logits the driver needs
  // Every logit row is a greedy sample with nothing to edit or report (Sampler::plain_greedy):
  // executors then return each row's argmax [R] int32 instead of its logits [R, vocab] f32,
  // which a GPU hands back in R x 4 bytes instead of R x vocab x 4.
  bool greedy_only = false;

  int64_t num_tokens() const { return static_cast<int64_t>(token_ids.size()); }
  int64_t num_seqs() const { return static_cast<int64_t>(seq_lens.size()); }
  std::string serialize() const;
  static StepInputs deserialize(std::string_view bytes);
};

// Where each sequence's logits land in the step's output.
struct LogitPlan {
  // Per scheduled sequence: the row of its next-token logits, or -1 if it does not sample this
  // step (a prefill chunk that is not the last).
  std::vector<int32_t> sample_row;
  // Per scheduled sequence: first row of its prompt-logprob rows and how many.
  std::vector<int32_t> prompt_row_begin, prompt_row_count;
  // Per scheduled sequence: first row of the rows that verify its draft tokens (row j predicts
  // the token draft j proposes) and how many (its sample row then follows the last draft).
  std::vector<int32_t> draft_row_begin, draft_row_count;
};

StepInputs build_step_inputs(const SchedulerOutput& out, int block_size, LogitPlan* plan);

}  // namespace tessera
