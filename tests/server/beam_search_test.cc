// Beam search (server/beam_search.h) on toy next-token distributions: against exhaustive search
// where beams never prune, greedy decoding at width 1, and vLLM's scoring rules worked by hand.
#include "server/beam_search.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>

namespace tessera {
namespace {

constexpr int32_t kEos = 0;

// A fixed random distribution over `vocab` tokens for every prefix (log-softmax of hashed
// logits), and its candidates best first.
struct ToyModel {
  int vocab;
  std::vector<double> logprobs(const std::vector<int32_t>& prefix) const {
    uint64_t h = 1469598103934665603ULL;
    for (int32_t t : prefix) h = (h ^ static_cast<uint64_t>(t + 1)) * 1099511628211ULL;
    std::mt19937_64 rng(h);
    std::normal_distribution<double> n(0, 2);
    std::vector<double> l(vocab);
    double m = -1e300, z = 0;
    for (double& x : l) m = std::max(m, x = n(rng));
    for (double x : l) z += std::exp(x - m);
    for (double& x : l) x -= m + std::log(z);
    return l;
  }
  BeamExpander expander(size_t k) const {
    return [this, k](const std::vector<std::vector<int32_t>>& beams) {
      std::vector<BeamCandidates> out;
      for (const auto& b : beams) {
        const std::vector<double> l = logprobs(b);
        BeamCandidates c;
        for (int t = 0; t < vocab; ++t) c.emplace_back(t, l[t]);
        std::stable_sort(c.begin(), c.end(),
                         [](const auto& a, const auto& b) { return a.second > b.second; });
        c.resize(std::min(k, c.size()));
        out.push_back(std::move(c));
      }
      return out;
    };
  }
};

// Every continuation of up to `left` tokens (ending at EOS or at the length), with its
// cumulative log-probability.
void enumerate(const ToyModel& m, std::vector<int32_t> seq, double cum, int left,
               std::vector<std::pair<std::vector<int32_t>, double>>& out) {
  if (left == 0) {
    out.emplace_back(seq, cum);
    return;
  }
  const std::vector<double> l = m.logprobs(seq);
  for (int t = 0; t < m.vocab; ++t) {
    std::vector<int32_t> next = seq;
    if (t == kEos) {
      out.emplace_back(next, cum + l[t]);  // EOS ends it (and is not kept)
      continue;
    }
    next.push_back(t);
    enumerate(m, next, cum + l[t], left - 1, out);
  }
}

TEST(BeamSearch, WithoutPruningItIsExhaustiveSearch) {
  const ToyModel m{4};
  const std::vector<int32_t> prompt = {3, 1};
  for (int len = 1; len <= 4; ++len) {
    std::vector<std::pair<std::vector<int32_t>, double>> all;
    enumerate(m, prompt, 0, len, all);
    std::stable_sort(all.begin(), all.end(),
                     [](const auto& a, const auto& b) { return a.second > b.second; });
    BeamSearchParams p;
    // Up to 3^(len-1) = 27 live beams before the last step: none is pruned before it, and
    // the last step's pruning (81 to 64) drops only sequences below the top 64.
    p.beam_width = 64;
    p.max_tokens = len;
    p.length_penalty = 0;  // the score is the cumulative log-probability
    const std::vector<Beam> beams = beam_search(prompt, p, {kEos}, m.expander(m.vocab));
    ASSERT_EQ(beams.size(), std::min<size_t>(64, all.size()));
    for (size_t i = 0; i < std::min<size_t>(5, all.size()); ++i) {
      EXPECT_EQ(beams[i].tokens, all[i].first) << "len " << len << " rank " << i;
      EXPECT_NEAR(beams[i].cum_logprob, all[i].second, 1e-9);
    }
  }
}

TEST(BeamSearch, WidthOneIsGreedy) {
  const ToyModel m{7};
  std::vector<int32_t> greedy = {5};
  double cum = 0;
  for (int i = 0; i < 6; ++i) {
    const std::vector<double> l = m.logprobs(greedy);
    const auto best = std::max_element(l.begin() + 1, l.end());  // EOS aside (ignore_eos)
    const int32_t t = static_cast<int32_t>(best - l.begin());
    cum += l[t];
    greedy.push_back(t);
  }
  BeamSearchParams p;
  p.max_tokens = 6;
  p.ignore_eos = true;
  // ignore_eos: EOS is an ordinary token; make it lose by leaving it out of the candidates.
  const BeamExpander no_eos = [&](const std::vector<std::vector<int32_t>>& beams) {
    std::vector<BeamCandidates> out = m.expander(m.vocab)(beams);
    for (auto& c : out)
      c.erase(std::remove_if(c.begin(), c.end(), [](const auto& x) { return x.first == kEos; }),
              c.end());
    for (auto& c : out) c.resize(2);
    return out;
  };
  const std::vector<Beam> beams = beam_search({5}, p, {kEos}, no_eos);
  ASSERT_EQ(beams.size(), 1u);
  EXPECT_EQ(beams[0].tokens, greedy);
  EXPECT_NEAR(beams[0].cum_logprob, cum, 1e-9);
  EXPECT_FALSE(beams[0].ended_by_eos);
}

// Hand-worked: prompt [9] (1 token), width 2, length_penalty 1.
//   step 1 candidates of [9]: EOS -1.0, 5 -0.5, 6 -2.0
//     completed [9] (EOS) score -1.0 / 1; live [9 5] -0.5/2 = -0.25, [9 6] -2.0/2 = -1.0
//   step 2: of [9 5]: 7 -0.1, EOS -3; of [9 6]: 8 -0.1
//     completed [9 5] (EOS) -3.5/2; live [9 5 7] -0.6/3 = -0.2, [9 6 8] -2.1/3 = -0.7
// Final, by score: [9 5 7] -0.2, [9 6 8] -0.7 (then [9] -1.0, [9 5] -1.75).
TEST(BeamSearch, ScoresCountThePromptAndNotTheEos) {
  const std::map<std::vector<int32_t>, BeamCandidates> table = {
      {{9}, {{kEos, -1.0}, {5, -0.5}, {6, -2.0}}},
      {{9, 5}, {{7, -0.1}, {kEos, -3.0}}},
      {{9, 6}, {{8, -0.1}}},
  };
  const BeamExpander expand = [&](const std::vector<std::vector<int32_t>>& beams) {
    std::vector<BeamCandidates> out;
    for (const auto& b : beams) out.push_back(table.at(b));
    return out;
  };
  BeamSearchParams p;
  p.beam_width = 2;
  p.max_tokens = 2;
  std::vector<Beam> beams = beam_search({9}, p, {kEos}, expand);
  ASSERT_EQ(beams.size(), 2u);
  EXPECT_EQ(beams[0].tokens, (std::vector<int32_t>{9, 5, 7}));
  EXPECT_EQ(beams[1].tokens, (std::vector<int32_t>{9, 6, 8}));
  EXPECT_NEAR(beam_score(beams[0], {kEos}, 1.0), -0.2, 1e-12);
  // Scores are negative, so a larger length penalty favours long beams further: [9 5 7]
  // -0.6 / 3^3 = -0.022 and [9 6 8] -2.1 / 27 = -0.078 beat [9] (EOS) -1.0 / 1.
  p.length_penalty = 3;
  beams = beam_search({9}, p, {kEos}, expand);
  ASSERT_EQ(beams.size(), 2u);
  EXPECT_EQ(beams[0].tokens, (std::vector<int32_t>{9, 5, 7}));
  EXPECT_EQ(beams[1].tokens, (std::vector<int32_t>{9, 6, 8}));
  // One step: [9 5] -0.5 / 2^3 and [9 6] -2.0 / 8 = -0.25 beat [9] (EOS) -1.0.
  p.max_tokens = 1;
  beams = beam_search({9}, p, {kEos}, expand);
  ASSERT_EQ(beams.size(), 2u);
  EXPECT_EQ(beams[0].tokens, (std::vector<int32_t>{9, 5}));
  EXPECT_EQ(beams[1].tokens, (std::vector<int32_t>{9, 6}));
  // Without the penalty's help [9] (EOS, -1.0 / 1) ties [9 6] (-2.0 / 2) and, completed
  // first, comes before it.
  p.length_penalty = 1;
  beams = beam_search({9}, p, {kEos}, expand);
  EXPECT_EQ(beams[0].tokens, (std::vector<int32_t>{9, 5}));  // -0.25
  EXPECT_EQ(beams[1].tokens, (std::vector<int32_t>{9}));     // EOS: -1.0 / 1, ties [9 6]'s -1.0
  EXPECT_TRUE(beams[1].ended_by_eos);
  EXPECT_EQ(beams[1].eos, kEos);
  // include_stop_str_in_output keeps the EOS id; the length still leaves it out.
  p.include_stop_str_in_output = true;
  beams = beam_search({9}, p, {kEos}, expand);
  EXPECT_EQ(beams[1].tokens, (std::vector<int32_t>{9, kEos}));
  EXPECT_NEAR(beam_score(beams[1], {kEos}, 1.0), -1.0, 1e-12);
}

TEST(BeamSearch, StopsAtTheContextLength) {
  const ToyModel m{5};
  BeamSearchParams p;
  p.beam_width = 2;
  p.max_tokens = 10;
  p.ignore_eos = true;
  p.max_model_len = 4;
  const std::vector<Beam> beams = beam_search({1, 2}, p, {kEos}, m.expander(4));
  ASSERT_EQ(beams.size(), 2u);
  for (const Beam& b : beams) EXPECT_EQ(b.tokens.size(), 4u);
}

}  // namespace
}  // namespace tessera
