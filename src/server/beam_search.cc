#include "server/beam_search.h"

#include <algorithm>
#include <cmath>

namespace tessera {

double beam_score(const Beam& beam, const std::vector<int32_t>& eos_ids, double length_penalty) {
  auto len = static_cast<double>(beam.tokens.size());
  if (!beam.tokens.empty() &&
      std::find(eos_ids.begin(), eos_ids.end(), beam.tokens.back()) != eos_ids.end())
    len -= 1;
  return beam.cum_logprob / std::pow(std::max(len, 1.0), length_penalty);
}

std::vector<Beam> beam_search(const std::vector<int32_t>& prompt, const BeamSearchParams& params,
                              const std::vector<int32_t>& eos_ids, const BeamExpander& expand) {
  const auto width = static_cast<size_t>(std::max<int64_t>(params.beam_width, 1));
  const auto by_score = [&](const Beam& a, const Beam& b) {
    return beam_score(a, eos_ids, params.length_penalty) >
           beam_score(b, eos_ids, params.length_penalty);
  };
  const auto is_eos = [&](int32_t t) {
    return std::find(eos_ids.begin(), eos_ids.end(), t) != eos_ids.end();
  };
  std::vector<Beam> live(1);
  live[0].tokens = prompt;
  std::vector<Beam> completed;
  for (int64_t step = 0; step < params.max_tokens && !live.empty(); ++step) {
    // A beam the context cannot extend ends where it is.
    if (params.max_model_len > 0) {
      auto full = std::stable_partition(live.begin(), live.end(), [&](const Beam& b) {
        return static_cast<int64_t>(b.tokens.size()) < params.max_model_len;
      });
      completed.insert(completed.end(), full, live.end());
      live.erase(full, live.end());
      if (live.empty()) break;
    }
    std::vector<std::vector<int32_t>> sequences;
    sequences.reserve(live.size());
    for (const Beam& b : live) sequences.push_back(b.tokens);
    const std::vector<BeamCandidates> candidates = expand(sequences);
    std::vector<Beam> next;
    for (size_t i = 0; i < live.size() && i < candidates.size(); ++i) {
      for (const auto& [token, logprob] : candidates[i]) {
        Beam b = live[i];
        b.cum_logprob += logprob;
        if (is_eos(token) && !params.ignore_eos) {
          if (params.include_stop_str_in_output) b.tokens.push_back(token);
          b.ended_by_eos = true;
          b.eos = token;
          completed.push_back(std::move(b));
        } else {
          b.tokens.push_back(token);
          next.push_back(std::move(b));
        }
      }
    }
    std::stable_sort(next.begin(), next.end(), by_score);
    if (next.size() > width) next.resize(width);
    live = std::move(next);
  }
  completed.insert(completed.end(), live.begin(), live.end());
  std::stable_sort(completed.begin(), completed.end(), by_score);
  if (completed.size() > width) completed.resize(width);
  return completed;
}

}  // namespace tessera
