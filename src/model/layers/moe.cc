#include "model/layers/moe.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/status.h"
#include "distributed/world_config.h"

namespace tessera {

MoeRouting route_tokens(const float* logits, int64_t tokens, int64_t experts, int64_t top_k,
                        bool renormalize) {
  TESSERA_CHECK(0 < top_k && top_k <= experts);
  MoeRouting r;
  r.rows.resize(experts);
  r.weights.resize(experts);
  std::vector<float> p(experts);
  std::vector<int32_t> order(experts);
  for (int64_t t = 0; t < tokens; ++t) {
    const float* row = logits + t * experts;
    const float m = *std::max_element(row, row + experts);
    float sum = 0;
    for (int64_t e = 0; e < experts; ++e) sum += p[e] = std::exp(row[e] - m);
    for (float& v : p) v /= sum;
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + top_k, order.end(),
                      [&](int32_t a, int32_t b) { return p[a] > p[b] || (p[a] == p[b] && a < b); });
    float chosen = 0;
    for (int64_t i = 0; i < top_k; ++i) chosen += p[order[i]];
    for (int64_t i = 0; i < top_k; ++i) {
      const int32_t e = order[i];
      r.rows[e].push_back(static_cast<int32_t>(t));
      r.weights[e].push_back(renormalize ? p[e] / chosen : p[e]);
    }
  }
  return r;
}

MoeRouting route_tokens_grouped(const float* logits, int64_t tokens, int64_t experts,
                                const GroupedRouting& g) {
  TESSERA_CHECK(0 < g.top_k && g.top_k <= experts && experts % g.n_group == 0 && 0 < g.topk_group &&
                g.topk_group <= g.n_group);
  const int64_t per_group = experts / g.n_group;
  MoeRouting r;
  r.rows.resize(experts);
  r.weights.resize(experts);
  std::vector<float> scores(experts), choice(experts), group_score(g.n_group);
  std::vector<int32_t> order(experts), groups(g.n_group);
  auto by = [](const std::vector<float>& v) {
    return [&v](int32_t a, int32_t b) { return v[a] > v[b] || (v[a] == v[b] && a < b); };
  };
  for (int64_t t = 0; t < tokens; ++t) {
    const float* row = logits + t * experts;
    for (int64_t e = 0; e < experts; ++e) {
      scores[e] = 1.0f / (1.0f + std::exp(-row[e]));
      choice[e] = scores[e] + (g.bias ? g.bias[e] : 0.0f);
    }
    for (int64_t k = 0; k < g.n_group; ++k) {
      const float* c = choice.data() + k * per_group;
      if (per_group == 1) {
        group_score[k] = c[0];
        continue;
      }
      float best = -INFINITY, second = -INFINITY;
      for (int64_t i = 0; i < per_group; ++i) {
        if (c[i] > best) {
          second = best;
          best = c[i];
        } else if (c[i] > second) {
          second = c[i];
        }
      }
      group_score[k] = best + second;
    }
    std::iota(groups.begin(), groups.end(), 0);
    std::partial_sort(groups.begin(), groups.begin() + g.topk_group, groups.end(), by(group_score));
    std::vector<bool> kept(g.n_group, false);
    for (int64_t i = 0; i < g.topk_group; ++i) kept[groups[i]] = true;
    // Experts of dropped groups count 0, as masked_fill(~mask, 0.0) leaves them.
    for (int64_t e = 0; e < experts; ++e)
      if (!kept[e / per_group]) choice[e] = 0.0f;
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + g.top_k, order.end(), by(choice));
    float sum = 0;
    for (int64_t i = 0; i < g.top_k; ++i) sum += scores[order[i]];
    for (int64_t i = 0; i < g.top_k; ++i) {
      const int32_t e = order[i];
      const float w = g.renormalize ? scores[e] / (sum + 1e-20f) : scores[e];
      r.rows[e].push_back(static_cast<int32_t>(t));
      r.weights[e].push_back(w * g.scaling);
    }
  }
  return r;
}

SparseMoe::SparseMoe(ModelContext& ctx, WeightSource& w, const std::string& prefix,
                     const MoeNames& names, const ModelConfig& c)
    : ctx_(ctx) {
  hidden_ = c.hidden_size;
  top_k_ = c.num_experts_per_tok;
  renormalize_ = c.norm_topk_prob;
  act_ = c.hidden_act;
  router_.emplace(ctx, w, prefix + names.router, c.num_experts, c.hidden_size);
  const int64_t f = c.moe_intermediate_size;
  const Range part = split_evenly(f, ctx.tp_size(), ctx.tp_rank());
  width_ = part.size();
  experts_.resize(c.num_experts);
  for (int64_t e = 0; e < c.num_experts; ++e) {
    const std::string p = prefix + fmt::vformat(names.expert_format, fmt::make_format_args(e));
    experts_[e].gate_up.emplace(ctx, w,
                                std::vector<ColumnPart>{{p + names.gate, f, part.begin, part.end},
                                                        {p + names.up, f, part.begin, part.end}},
                                c.hidden_size);
    experts_[e].down.emplace(ctx, w, p + names.down, c.hidden_size, f, part, false);
  }
  if (c.shared_expert_intermediate_size > 0) {
    const int64_t s = c.shared_expert_intermediate_size;
    const Range sp = split_evenly(s, ctx.tp_size(), ctx.tp_rank());
    const std::string p = prefix + names.shared + ".";
    shared_.emplace();
    shared_->gate_up.emplace(ctx, w,
                             std::vector<ColumnPart>{{p + names.gate, s, sp.begin, sp.end},
                                                     {p + names.up, s, sp.begin, sp.end}},
                             c.hidden_size);
    shared_->down.emplace(ctx, w, p + names.down, c.hidden_size, s, sp, false);
    if (c.shared_expert_gated)
      shared_gate_.emplace(ctx, w, prefix + names.shared_gate, 1, c.hidden_size);
    shared_width_ = sp.size();
  }
  if (c.sigmoid_grouped_routing) {
    grouped_.emplace();
    grouped_->top_k = c.num_experts_per_tok;
    grouped_->n_group = c.n_group;
    grouped_->topk_group = c.topk_group;
    grouped_->renormalize = c.norm_topk_prob;
    grouped_->scaling = static_cast<float>(c.routed_scaling_factor);
    const std::string bias = prefix + names.router_bias;
    if (w.has(bias)) {
      Tensor b = w.get(bias, {c.num_experts}).to(DType::kF32);
      router_bias_.assign(b.data<float>(), b.data<float>() + c.num_experts);
      grouped_->bias = router_bias_.data();
    }
  }
}

void SparseMoe::run_expert(const Expert& e, int64_t width, const Tensor& x, const Tensor& rows,
                           const Tensor& scale, const Tensor& out, Buffers& buf) {
  Backend& b = ctx_.backend;
  const int64_t n = rows.numel();
  Tensor xe = buf.gathered.get(b, n, hidden_);
  b.gather_rows(x, rows, xe);
  Tensor gate_up = buf.gate_up.get(b, n, 2 * width);
  e.gate_up->forward(xe, gate_up);
  Tensor act = buf.act_out.get(b, n, width);
  b.gated_activation(gate_up, act_, act);
  Tensor ye = buf.expert_out.get(b, n, hidden_);
  e.down->forward_unreduced(act, ye);
  b.add_rows_scaled(ye, rows, scale, out);
}

int64_t SparseMoe::activation_floats(const ModelConfig& c, int tp) {
  const int64_t width =
      std::max(c.moe_intermediate_size / tp + 1, c.shared_expert_intermediate_size / tp + 1);
  // router logits, gathered rows, gate/up, activation, expert output (the shared expert reuses
  // them), its gate's logit, and each token's expert rows and weights.
  const int64_t picks = c.num_experts_per_tok + (c.shared_expert_intermediate_size > 0);
  return c.num_experts + 2 * c.hidden_size + 3 * width +
         (c.shared_expert_gated && c.shared_expert_intermediate_size > 0) + 2 * picks;
}

void SparseMoe::forward(const Tensor& x, const Tensor& out, Buffers& buf) {
  Backend& b = ctx_.backend;
  const int64_t t = x.size(0), experts = static_cast<int64_t>(experts_.size());
  Tensor logits = buf.logits.get(b, t, experts);
  router_->forward(x, logits);
  Tensor host_logits = Tensor::empty({t, experts}, DType::kF32);
  b.copy(logits, host_logits);
  MoeRouting routing =
      grouped_ ? route_tokens_grouped(host_logits.data<float>(), t, experts, *grouped_)
               : route_tokens(host_logits.data<float>(), t, experts, top_k_, renormalize_);
  if (shared_) {
    // The shared expert as one more "expert" that every token takes: at sigmoid of its gate
    // (Qwen2-MoE), or unweighted (DeepSeek).
    routing.rows.emplace_back(t);
    routing.weights.emplace_back(t, 1.0f);
    for (int64_t i = 0; i < t; ++i) routing.rows.back()[i] = static_cast<int32_t>(i);
    if (shared_gate_) {
      Tensor gate = buf.shared_logit.get(b, t, 1);
      shared_gate_->forward(x, gate);
      Tensor host_gate = Tensor::empty({t, 1}, DType::kF32);
      b.copy(gate, host_gate);
      for (int64_t i = 0; i < t; ++i)
        routing.weights.back()[i] = 1.0f / (1.0f + std::exp(-host_gate.data<float>()[i]));
    }
  }
  const int64_t groups = static_cast<int64_t>(routing.rows.size());
  // All experts' token rows and weights in one upload each, expert after expert.
  const int64_t n_all = t * top_k_ + (shared_ ? t : 0);
  Tensor host_rows = Tensor::empty({n_all}, DType::kI32);
  Tensor host_weights = Tensor::empty({n_all}, DType::kF32);
  std::vector<int64_t> begin(groups + 1, 0);
  for (int64_t e = 0; e < groups; ++e) {
    const int64_t n = static_cast<int64_t>(routing.rows[e].size());
    std::copy(routing.rows[e].begin(), routing.rows[e].end(), host_rows.data<int32_t>() + begin[e]);
    std::copy(routing.weights[e].begin(), routing.weights[e].end(),
              host_weights.data<float>() + begin[e]);
    begin[e + 1] = begin[e] + n;
  }
  TESSERA_CHECK(begin[groups] == n_all);
  Tensor rows = b.empty({n_all}, DType::kI32);
  Tensor weights = b.empty({n_all}, DType::kF32);
  b.copy(host_rows, rows);
  b.copy(host_weights, weights);
  b.fill_zero(out);
  // Experts in index order: each output row sums its experts in the same order whatever else
  // is in the batch.
  for (int64_t e = 0; e < groups; ++e) {
    if (begin[e + 1] == begin[e]) continue;
    const bool is_shared = e == experts;
    run_expert(is_shared ? *shared_ : experts_[e], is_shared ? shared_width_ : width_, x,
               rows.slice(0, begin[e], begin[e + 1]), weights.slice(0, begin[e], begin[e + 1]), out,
               buf);
  }
  experts_.front().down->reduce(out);
}

}  // namespace tessera
