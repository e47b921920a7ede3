#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <unordered_map>

#include "core/status.h"

namespace tessera {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

int32_t argmax(std::span<const float> v) {
  int32_t best = 0;
  for (int32_t i = 1; i < static_cast<int32_t>(v.size()); ++i)
    if (v[i] > v[best]) best = i;
  return best;
}

double log_sum_exp(std::span<const float> v) {
  float m = kNegInf;
  for (float x : v) m = std::max(m, x);
  if (m == kNegInf) return m;
  double s = 0;
  for (float x : v) s += std::exp(static_cast<double>(x) - m);
  return m + std::log(s);
}

}  // namespace

TokenLogprobs compute_logprobs(std::span<const float> logits, int32_t token, int top_k) {
  TokenLogprobs out;
  const double lse = log_sum_exp(logits);
  out.token = token;
  out.logprob = static_cast<float>(logits[token] - lse);
  int64_t better = 0;
  for (float x : logits) better += x > logits[token];
  out.rank = better + 1;
  if (top_k > 0) {
    std::vector<int32_t> idx(logits.size());
    std::iota(idx.begin(), idx.end(), 0);
    const size_t k = std::min<size_t>(top_k, idx.size());
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    for (size_t i = 0; i < k; ++i)
      out.top.emplace_back(idx[i], static_cast<float>(logits[idx[i]] - lse));
  }
  return out;
}

namespace {
bool needs_edit(const Sequence& seq) {
  const SamplingParams& p = seq.params;
  return !p.logit_bias.empty() || seq.num_output_tokens() < p.min_tokens ||
         p.repetition_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 ||
         seq.grammar;
}
}  // namespace

bool Sampler::plain_greedy(const Sequence& seq) const {
  return seq.params.greedy() && !needs_edit(seq) && !seq.params.logprobs;
}

int32_t Sampler::sample(std::span<const float> raw, Sequence& seq) const {
  const SamplingParams& p = seq.params;
  const int32_t vocab = static_cast<int32_t>(raw.size());
  if (p.greedy() && !needs_edit(seq)) return argmax(raw);

  std::vector<float> logits(raw.begin(), raw.end());
  if (seq.grammar) {
    // Before everything else, as vLLM applies the grammar's bitmask: top-k, top-p and min-p
    // then choose among allowed tokens only.
    std::vector<char> allowed;
    seq.grammar->fill_allowed(allowed);
    for (int32_t id = 0; id < vocab; ++id)
      if (id >= static_cast<int32_t>(allowed.size()) || !allowed[id]) logits[id] = kNegInf;
    // The grammar lets a text end with EOS; a request that ignores EOS goes on instead.
    if (p.ignore_eos)
      for (int32_t id : eos_ids_)
        if (id < vocab) logits[id] = kNegInf;
  }
  for (const auto& [id, bias] : p.logit_bias) logits[id] += static_cast<float>(bias);
  if (seq.num_output_tokens() < p.min_tokens) {
    if (!p.ignore_eos)
      for (int32_t id : eos_ids_)
        if (id < vocab) logits[id] = kNegInf;
    for (int32_t id : p.stop_token_ids) logits[id] = kNegInf;
  }
  if (p.repetition_penalty != 1.0) {
    std::vector<char> seen(vocab, 0);
    for (int32_t t : seq.tokens) {
      if (t < 0 || t >= vocab || seen[t]) continue;
      seen[t] = 1;
      float& l = logits[t];
      l = l > 0 ? static_cast<float>(l / p.repetition_penalty)
                : static_cast<float>(l * p.repetition_penalty);
    }
  }
  if (p.presence_penalty != 0.0 || p.frequency_penalty != 0.0) {
    std::unordered_map<int32_t, int> counts;
    for (int64_t i = seq.num_prompt_tokens; i < seq.num_tokens(); ++i) ++counts[seq.tokens[i]];
    for (const auto& [t, c] : counts) {
      if (t < 0 || t >= vocab) continue;
      logits[t] -= static_cast<float>(p.frequency_penalty * c + p.presence_penalty);
    }
  }
  if (p.greedy()) return argmax(logits);

  const float inv_t = static_cast<float>(1.0 / p.temperature);
  for (float& l : logits) l *= inv_t;
  // Candidates, best first. Only as many are sorted as top-k / top-p need.
  std::vector<int32_t> idx(vocab);
  std::iota(idx.begin(), idx.end(), 0);
  auto better = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  size_t keep = static_cast<size_t>(vocab);
  if (p.top_k > 0 && p.top_k < vocab) keep = static_cast<size_t>(p.top_k);
  size_t sorted = std::min<size_t>(keep, 64);
  std::partial_sort(idx.begin(), idx.begin() + sorted, idx.end(), better);
  const float top = logits[idx[0]];
  if (top == kNegInf) return idx[0];  // everything masked: nothing better to do
  // Softmax numerators over all kept candidates (exp relative to the best).
  double total = 0;
  for (size_t i = 0; i < keep; ++i) total += std::exp(static_cast<double>(logits[idx[i]]) - top);
  if (p.top_p < 1.0) {
    double cum = 0;
    size_t i = 0;
    while (true) {
      if (i == sorted) {  // need more of the order: sort the next, larger slice
        size_t more = std::min(keep, sorted * 4);
        std::partial_sort(idx.begin() + sorted, idx.begin() + more, idx.begin() + keep, better);
        sorted = more;
      }
      cum += std::exp(static_cast<double>(logits[idx[i]]) - top) / total;
      ++i;
      if (cum >= p.top_p || i == keep) break;
    }
    keep = i;
  }
  if (p.min_p > 0.0) {
    // Probabilities relative to the best: keep those >= min_p * max (the best has ratio 1).
    if (sorted < keep) {
      std::sort(idx.begin() + sorted, idx.begin() + keep, better);
      sorted = keep;
    }
    size_t i = 1;
    while (i < keep && std::exp(static_cast<double>(logits[idx[i]]) - top) >= p.min_p) ++i;
    keep = i;
  }
  double mass = 0;
  for (size_t i = 0; i < keep; ++i) mass += std::exp(static_cast<double>(logits[idx[i]]) - top);
  double u = uniform01(seq.rng) * mass;
  for (size_t i = 0; i < keep; ++i) {
    u -= std::exp(static_cast<double>(logits[idx[i]]) - top);
    if (u < 0) return idx[i];
  }
  return idx[keep - 1];
}

}  // namespace tessera
