#include "engine/step_inputs.h"

#include <algorithm>
#include <cstring>

#include "core/status.h"

namespace tessera {

StepInputs build_step_inputs(const SchedulerOutput& out, int block_size, LogitPlan* plan) {
  StepInputs in;
  const size_t n = out.scheduled.size();
  in.query_start.reserve(n + 1);
  in.query_start.push_back(0);
  for (const auto& s : out.scheduled)
    in.max_blocks =
        std::max<int32_t>(in.max_blocks, static_cast<int32_t>(s.seq->block_table.size()));
  in.block_tables.assign(n * in.max_blocks, 0);
  plan->sample_row.assign(n, -1);
  plan->prompt_row_begin.assign(n, 0);
  plan->prompt_row_count.assign(n, 0);
  plan->draft_row_begin.assign(n, 0);
  plan->draft_row_count.assign(n, 0);
  std::vector<int32_t> sample_rows;
  for (size_t i = 0; i < n; ++i) {
    const Sequence& seq = *out.scheduled[i].seq;
    const int64_t begin = out.scheduled[i].start, end = begin + out.scheduled[i].num_new_tokens;
    const int32_t row0 = static_cast<int32_t>(in.token_ids.size());
    for (int64_t p = begin; p < end; ++p) {
      in.token_ids.push_back(seq.tokens[p]);
      in.positions.push_back(static_cast<int32_t>(p));
      in.slot_mapping.push_back(seq.block_table[p / block_size] * block_size +
                                static_cast<int32_t>(p % block_size));
    }
    in.query_start.push_back(static_cast<int32_t>(in.token_ids.size()));
    in.seq_lens.push_back(static_cast<int32_t>(end));
    std::copy(seq.block_table.begin(), seq.block_table.end(),
              in.block_tables.begin() + i * in.max_blocks);
    // Prompt logprobs: row p predicts prompt token p + 1.
    if (seq.params.prompt_logprobs) {
      const int64_t last = std::min(end, seq.num_prompt_tokens - 1);
      if (last > begin) {
        plan->prompt_row_begin[i] = static_cast<int32_t>(in.logit_rows.size());
        plan->prompt_row_count[i] = static_cast<int32_t>(last - begin);
        for (int64_t p = begin; p < last; ++p)
          in.logit_rows.push_back(row0 + static_cast<int32_t>(p - begin));
      }
    }
    if (seq.num_draft_tokens > 0 && end == seq.num_tokens()) {
      const int64_t k = seq.num_draft_tokens;
      plan->draft_row_begin[i] = static_cast<int32_t>(in.logit_rows.size());
      plan->draft_row_count[i] = static_cast<int32_t>(k);
      for (int64_t p = end - 1 - k; p < end - 1; ++p)
        in.logit_rows.push_back(row0 + static_cast<int32_t>(p - begin));
    }
    if (end == seq.num_tokens()) sample_rows.push_back(static_cast<int32_t>(i));
  }
  for (int32_t i : sample_rows) {
    plan->sample_row[i] = static_cast<int32_t>(in.logit_rows.size());
    in.logit_rows.push_back(in.query_start[i + 1] - 1);
  }
  return in;
}

namespace {

void put_vec(std::string& s, const std::vector<int32_t>& v) {
  uint64_t n = v.size();
  s.append(reinterpret_cast<const char*>(&n), sizeof n);
  s.append(reinterpret_cast<const char*>(v.data()), n * sizeof(int32_t));
}

std::vector<int32_t> get_vec(std::string_view& s) {
  uint64_t n = 0;
  TESSERA_CHECK_GE(s.size(), sizeof n);
  std::memcpy(&n, s.data(), sizeof n);
  s.remove_prefix(sizeof n);
  TESSERA_CHECK_GE(s.size(), n * sizeof(int32_t));
  std::vector<int32_t> v(n);
  std::memcpy(v.data(), s.data(), n * sizeof(int32_t));
  s.remove_prefix(n * sizeof(int32_t));
  return v;
}

}  // namespace

std::string StepInputs::serialize() const {
  std::string s;
  for (const auto* v :
       {&token_ids, &positions, &slot_mapping, &query_start, &seq_lens, &block_tables, &logit_rows})
    put_vec(s, *v);
  s.append(reinterpret_cast<const char*>(&max_blocks), sizeof max_blocks);
  s.push_back(greedy_only ? 1 : 0);
  return s;
}

StepInputs StepInputs::deserialize(std::string_view bytes) {
  StepInputs in;
  for (auto* v : {&in.token_ids, &in.positions, &in.slot_mapping, &in.query_start, &in.seq_lens,
                  &in.block_tables, &in.logit_rows})
    *v = get_vec(bytes);
  TESSERA_CHECK_EQ(bytes.size(), sizeof in.max_blocks + 1);
  std::memcpy(&in.max_blocks, bytes.data(), sizeof in.max_blocks);
  in.greedy_only = bytes[sizeof in.max_blocks] != 0;
  return in;
}

}  // namespace tessera
