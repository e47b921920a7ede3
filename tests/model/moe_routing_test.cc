// The host-side router of the sparse MoE layer: softmax over the experts, the top k (ties to the
// lower expert), optional renormalisation, tokens grouped by expert in ascending order.
#include <gtest/gtest.h>

#include <cmath>

#include "model/layers/moe.h"

namespace tessera {
namespace {

TEST(MoeRouting, TopKOfTheSoftmaxGroupedByExpert) {
  // 3 tokens over 4 experts.
  const float logits[] = {
      1.0f,  3.0f, 2.0f,  0.0f,  // experts 1, 2
      0.5f,  0.5f, -1.0f, 0.5f,  // a three-way tie: experts 0, 1
      -2.0f, 0.0f, 0.0f,  4.0f,  // expert 3, then the tie between 1 and 2 goes to 1
  };
  auto softmax = [&](int t, int e) {
    double sum = 0;
    for (int i = 0; i < 4; ++i) sum += std::exp(double(logits[t * 4 + i]));
    return std::exp(double(logits[t * 4 + e])) / sum;
  };
  const MoeRouting plain = route_tokens(logits, 3, 4, 2, false);
  EXPECT_EQ(plain.rows[0], (std::vector<int32_t>{1}));
  EXPECT_EQ(plain.rows[1], (std::vector<int32_t>{0, 1, 2}));
  EXPECT_EQ(plain.rows[2], (std::vector<int32_t>{0}));
  EXPECT_EQ(plain.rows[3], (std::vector<int32_t>{2}));
  EXPECT_NEAR(plain.weights[1][0], softmax(0, 1), 1e-6);
  EXPECT_NEAR(plain.weights[2][0], softmax(0, 2), 1e-6);
  EXPECT_NEAR(plain.weights[3][0], softmax(2, 3), 1e-6);

  const MoeRouting norm = route_tokens(logits, 3, 4, 2, true);
  EXPECT_EQ(norm.rows, plain.rows);
  const double s0 = softmax(0, 1) + softmax(0, 2);
  EXPECT_NEAR(norm.weights[1][0], softmax(0, 1) / s0, 1e-6);
  EXPECT_NEAR(norm.weights[2][0], softmax(0, 2) / s0, 1e-6);
  EXPECT_NEAR(norm.weights[0][0], 0.5, 1e-6);  // token 1: two equal picks
  EXPECT_NEAR(norm.weights[1][1], 0.5, 1e-6);
  // Every token's weights sum to 1 after renormalisation.
  for (int t = 0; t < 3; ++t) {
    double sum = 0;
    for (int e = 0; e < 4; ++e)
      for (size_t i = 0; i < norm.rows[e].size(); ++i)
        if (norm.rows[e][i] == t) sum += norm.weights[e][i];
    EXPECT_NEAR(sum, 1.0, 1e-6) << t;
  }
}

// DeepSeek-V3's grouped routing on one token, 6 experts in 3 groups of 2, keep 1 group, pick 2:
// the bias decides groups and choices but not the weights, which are renormalised sigmoids
// times the scaling factor.
TEST(MoeRouting, GroupedSigmoidRoutingWithBias) {
  const float logits[] = {2.0f, 1.9f, 0.5f, 0.4f, 0.0f, -3.0f};
  const float bias[] = {0.0f, 0.0f, 1.0f, 1.0f, 0.0f, 0.0f};
  auto sig = [](float x) { return 1.0 / (1.0 + std::exp(-double(x))); };
  GroupedRouting g;
  g.top_k = 2;
  g.n_group = 3;
  g.topk_group = 1;
  g.scaling = 2.5f;
  MoeRouting plain = route_tokens_grouped(logits, 1, 6, g);  // no bias: group 0 wins
  EXPECT_EQ(plain.rows[0], (std::vector<int32_t>{0}));
  EXPECT_EQ(plain.rows[1], (std::vector<int32_t>{0}));
  const double s = sig(2.0f) + sig(1.9f);
  EXPECT_NEAR(plain.weights[0][0], 2.5 * sig(2.0f) / s, 1e-6);
  EXPECT_NEAR(plain.weights[1][0], 2.5 * sig(1.9f) / s, 1e-6);
  g.bias = bias;  // group 1's experts now score higher; their weights stay their sigmoids
  MoeRouting biased = route_tokens_grouped(logits, 1, 6, g);
  EXPECT_TRUE(biased.rows[0].empty() && biased.rows[1].empty());
  EXPECT_EQ(biased.rows[2], (std::vector<int32_t>{0}));
  EXPECT_EQ(biased.rows[3], (std::vector<int32_t>{0}));
  const double sb = sig(0.5f) + sig(0.4f);
  EXPECT_NEAR(biased.weights[2][0], 2.5 * sig(0.5f) / sb, 1e-6);
  g.renormalize = false;
  g.scaling = 1.0f;
  MoeRouting raw = route_tokens_grouped(logits, 1, 6, g);
  EXPECT_NEAR(raw.weights[3][0], sig(0.4f), 1e-6);
}

}  // namespace
}  // namespace tessera
