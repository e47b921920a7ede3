// Sampling: exact rules (greedy, penalties, bias, min_tokens) and statistical checks that the
// filtered distributions are the right ones (chi-square at a fixed seed; a wrong filter fails).
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "engine/sampler.h"

namespace tessera {
namespace {

Sequence make_seq(std::vector<int32_t> prompt, SamplingParams p, uint64_t seed = 1) {
  Sequence s;
  s.tokens = std::move(prompt);
  s.num_prompt_tokens = static_cast<int64_t>(s.tokens.size());
  s.params = p;
  s.rng.seed(seed);
  return s;
}

// log(probabilities) as logits.
std::vector<float> logits_of(const std::vector<double>& probs) {
  std::vector<float> l;
  for (double p : probs) l.push_back(static_cast<float>(std::log(p)));
  return l;
}

// Samples n times and returns the counts per token.
std::map<int32_t, int> histogram(const std::vector<float>& logits, const SamplingParams& p, int n) {
  Sampler sampler({});
  Sequence seq = make_seq({0}, p, 42);
  std::map<int32_t, int> counts;
  for (int i = 0; i < n; ++i) ++counts[sampler.sample(logits, seq)];
  return counts;
}

// Chi-square statistic of counts against expected probabilities (which sum to 1).
double chi_square(const std::map<int32_t, int>& counts, const std::map<int32_t, double>& expected,
                  int n) {
  double chi = 0;
  for (const auto& [token, p] : expected) {
    const double e = p * n;
    const double o = counts.count(token) ? counts.at(token) : 0;
    chi += (o - e) * (o - e) / e;
  }
  return chi;
}

const std::vector<double> kProbs = {0.30, 0.20, 0.15, 0.12, 0.08, 0.06, 0.04, 0.03, 0.015, 0.005};
constexpr int kDraws = 40000;

// 99.99th percentile of chi-square with k - 1 degrees of freedom, for k = 2..10.
double chi_limit(size_t categories) {
  static const double kLimits[] = {0, 0, 15.1, 18.4, 21.1, 23.5, 25.7, 27.9, 29.9, 31.8, 33.7};
  return kLimits[categories];
}

void expect_distribution(const std::map<int32_t, int>& counts,
                         const std::map<int32_t, double>& expected) {
  for (const auto& [token, c] : counts)
    EXPECT_TRUE(expected.count(token))
        << "token " << token << " is filtered out but was sampled " << c << " times";
  EXPECT_LT(chi_square(counts, expected, kDraws), chi_limit(expected.size()));
}

TEST(Sampler, PlainSamplingFollowsSoftmax) {
  SamplingParams p;
  std::map<int32_t, double> expected;
  for (size_t i = 0; i < kProbs.size(); ++i) expected[static_cast<int32_t>(i)] = kProbs[i];
  expect_distribution(histogram(logits_of(kProbs), p, kDraws), expected);
}

TEST(Sampler, TemperatureSharpens) {
  SamplingParams p;
  p.temperature = 0.5;  // probabilities become p_i^2, renormalised
  double z = 0;
  for (double q : kProbs) z += q * q;
  // Tokens expected fewer than 20 times are pooled into one category (id -1) for the test.
  std::map<int32_t, double> expected;
  for (size_t i = 0; i < kProbs.size(); ++i) {
    const double q = kProbs[i] * kProbs[i] / z;
    expected[q * kDraws >= 20 ? static_cast<int32_t>(i) : -1] += q;
  }
  std::map<int32_t, int> pooled;
  for (const auto& [t, c] : histogram(logits_of(kProbs), p, kDraws))
    pooled[expected.count(t) ? t : -1] += c;
  expect_distribution(pooled, expected);
}

TEST(Sampler, TopKKeepsTheKMostLikely) {
  SamplingParams p;
  p.top_k = 3;
  expect_distribution(histogram(logits_of(kProbs), p, kDraws),
                      {{0, 0.30 / 0.65}, {1, 0.20 / 0.65}, {2, 0.15 / 0.65}});
}

TEST(Sampler, TopPKeepsTheSmallestNucleus) {
  SamplingParams p;
  p.top_p = 0.6;  // 0.30 + 0.20 = 0.50 < 0.6, + 0.15 = 0.65 >= 0.6
  expect_distribution(histogram(logits_of(kProbs), p, kDraws),
                      {{0, 0.30 / 0.65}, {1, 0.20 / 0.65}, {2, 0.15 / 0.65}});
  p.top_p = 0.5;  // exactly reached by the first two
  auto counts = histogram(logits_of(kProbs), p, kDraws);
  EXPECT_FALSE(counts.count(2) && counts.at(2) > 0.03 * kDraws)
      << "the third token is outside a 0.5 nucleus";
}

TEST(Sampler, MinPDropsTokensBelowAShareOfTheBest) {
  SamplingParams p;
  p.min_p = 0.45;  // keeps p >= 0.135: tokens 0, 1, 2
  expect_distribution(histogram(logits_of(kProbs), p, kDraws),
                      {{0, 0.30 / 0.65}, {1, 0.20 / 0.65}, {2, 0.15 / 0.65}});
}

TEST(Sampler, TopKThenTopPCombine) {
  SamplingParams p;
  p.top_k = 4;
  p.top_p = 0.7;  // within top-4 (mass .77): .30/.77=.39, +.26=.65, +.195=.844 >= .7 -> 3 tokens
  expect_distribution(histogram(logits_of(kProbs), p, kDraws),
                      {{0, 0.30 / 0.65}, {1, 0.20 / 0.65}, {2, 0.15 / 0.65}});
}

TEST(Sampler, SameSeedSameTokensAndSeedsDiffer) {
  Sampler sampler({});
  SamplingParams p;
  std::vector<int32_t> a, b, c;
  Sequence s1 = make_seq({0}, p, 7), s2 = make_seq({0}, p, 7), s3 = make_seq({0}, p, 8);
  for (int i = 0; i < 64; ++i) {
    a.push_back(sampler.sample(logits_of(kProbs), s1));
    b.push_back(sampler.sample(logits_of(kProbs), s2));
    c.push_back(sampler.sample(logits_of(kProbs), s3));
  }
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
}

TEST(Sampler, GreedyAndPenalties) {
  Sampler sampler({5});
  SamplingParams p;
  p.temperature = 0;
  std::vector<float> l = {2.0f, 1.9f, 1.0f, -1.0f, 0.5f, 3.0f};
  Sequence s = make_seq({0, 3}, p);
  EXPECT_EQ(sampler.sample(l, s), 5);
  // min_tokens suppresses EOS (5) until enough tokens were generated.
  s.params.min_tokens = 1;
  EXPECT_EQ(sampler.sample(l, s), 0);
  s.params.min_tokens = 0;
  s.params.logit_bias = {{5, -10.0}};
  EXPECT_EQ(sampler.sample(l, s), 0);
  // Repetition penalty divides positive logits of seen tokens: 2.0 / 1.1 < 1.9.
  s.params.repetition_penalty = 1.1;
  EXPECT_EQ(sampler.sample(l, s), 1);
  // ... and multiplies negative ones: token 3 (-1.0 -> -2.0) loses to token 4.
  std::vector<float> l2 = {-3.0f, -3.0f, -3.0f, -1.0f, -1.5f, -9.0f};
  s.params.logit_bias.clear();
  s.params.repetition_penalty = 2.0;
  EXPECT_EQ(sampler.sample(l2, s), 4);
  // Frequency and presence penalties apply to output tokens only.
  s.params.repetition_penalty = 1.0;
  s.tokens.push_back(1);
  s.tokens.push_back(1);  // token 1 generated twice
  s.params.logit_bias = {{5, -10.0}};
  s.params.frequency_penalty = 0.3;  // 1.9 - 0.6 = 1.3 < 2.0
  EXPECT_EQ(sampler.sample(l, s), 0);
  s.params.frequency_penalty = 0;
  s.params.presence_penalty = -1.0;  // 1.9 + 1 = 2.9 > 2.0
  EXPECT_EQ(sampler.sample(l, s), 1);
  // Ties go to the lowest id.
  EXPECT_EQ(sampler.sample(std::vector<float>{1.0f, 3.0f, 3.0f}, s = make_seq({0}, p)), 1);
}

TEST(Sampler, LogprobsOfRawLogits) {
  std::vector<float> l = {1.0f, 3.0f, 2.0f, 3.0f};
  TokenLogprobs lp = compute_logprobs(l, 2, 3);
  double z = std::exp(1.0) + 2 * std::exp(3.0) + std::exp(2.0);
  EXPECT_NEAR(lp.logprob, 2.0 - std::log(z), 1e-6);
  EXPECT_EQ(lp.rank, 3);
  ASSERT_EQ(lp.top.size(), 3u);
  EXPECT_EQ(lp.top[0].first, 1);  // ties: lower id first
  EXPECT_EQ(lp.top[1].first, 3);
  EXPECT_EQ(lp.top[2].first, 2);
  EXPECT_NEAR(lp.top[0].second, 3.0 - std::log(z), 1e-6);
}

}  // namespace
}  // namespace tessera
