// The planner's arithmetic against values worked out by hand from the public config.json files,
// and against the engine itself: for generated models the planner's weights, activations, KV
// block size and block count equal what EngineInstance loads and allocates.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/sys.h"
#include "engine/engine_builder.h"
#include "engine/planner.h"
#include "model/model_test_util.h"

namespace tessera {
namespace {

constexpr int64_t kGiB = 1ll << 30;

PlanRequest h100_nodes() {
  PlanRequest r;
  r.device_memory = 80 * kGiB;
  r.devices_per_node = 8;
  return r;
}

TEST(Planner, Llama31_70BHandChecked) {
  const ModelShape m = load_model_shape("Llama-3.1-70B");
  // hidden h = 8192, 80 layers, 64 heads and 8 KV heads of 128, MLP 28672, vocab 128256, untied.
  // Per layer: q and o 8192 x 8192 each = 134,217,728; k and v 8192 x 1024 each = 16,777,216;
  // gate, up, down 3 x 8192 x 28672 = 704,643,072; two norms 16,384: 855,654,400.
  // 80 layers 68,452,352,000 + embedding and LM head 2 x 128256 x 8192 = 2,101,346,304
  // + final norm 8192 = 70,553,706,496.
  const ParamCount p = count_parameters(m);
  EXPECT_EQ(p.total(), 70'553'706'496);
  EXPECT_NEAR(p.total() / 1e9, 70.6, 0.05);
  EXPECT_EQ(p.bytes(WeightFormat::kBF16), 141'107'412'992);  // 141.1 GB
  // KV per token: 2 (K, V) x 80 layers x 8 heads x 128 x 2 bytes = 327,680 = 320 KiB.
  const int64_t per_token = kv_block_bytes(rank_kv_shape(m, 1, 1, 0), 1, 2);
  EXPECT_EQ(per_token, 320 * 1024);
  // 128,000 tokens: 40,960,000 KiB = 39.0625 GiB.
  EXPECT_DOUBLE_EQ(static_cast<double>(per_token) * 128000 / kGiB, 39.0625);
  // fp8 KV halves it.
  EXPECT_EQ(kv_block_bytes(rank_kv_shape(m, 1, 1, 0), 1, 1), 160 * 1024);
}

TEST(Planner, Llama31_8BKvPerToken) {
  const ModelShape m = load_model_shape("llama-3.1-8b");  // names are case-insensitive
  // 2 x 32 layers x 8 KV heads x 128 x 2 bytes = 131,072 = 128 KiB.
  EXPECT_EQ(kv_block_bytes(rank_kv_shape(m, 1, 1, 0), 1, 2), 128 * 1024);
  // Embedding + LM head 2 x 128256 x 4096 = 1,050,673,152; per layer 4096 x (4096 + 1024 + 1024
  // + 4096) + 3 x 4096 x 14336 + 2 x 4096 = 218,112,000, x 32 = 6,979,584,000; + norm 4096.
  EXPECT_EQ(count_parameters(m).total(), 8'030'261'248);
}

TEST(Planner, Llama31_70BOnOneNodeIsTensorParallelFour) {
  // 80 GiB devices at 0.9: budget floor(0.9 x 85,899,345,920) = 77,309,411,328 bytes per rank.
  // Activations (engine estimate, 2048 batched tokens, f32): tp=2 630,731,776; tp=4 416,822,272.
  // tp=1: 141.1 GB of weights alone exceed the budget.
  // tp=2: weights per rank (heads, KV heads, MLP and vocabulary halved, norms replicated)
  //   35,277,512,704 params = 70,555,025,408 bytes; KV budget 77,309,411,328 - 70,555,025,408
  //   - 630,731,776 = 6,123,654,144; block = 2 x 80 x 4 heads x 128 x 16 x 2 = 2,621,440 bytes,
  //   2335 blocks = 37,360 tokens < 131,072 (max_position_embeddings): rejected.
  // tp=4: 17,639,415,808 params = 35,278,831,616 bytes; KV budget 41,613,757,440; block
  //   1,310,720; 31,748 blocks = 507,968 tokens >= 131,072: 3.88 sequences at full length.
  const Plan plan = make_plan(load_model_shape("Llama-3.1-70B"), h100_nodes());
  ASSERT_TRUE(plan.found) << plan.why;
  EXPECT_EQ(plan.chosen.tp, 4);
  EXPECT_EQ(plan.chosen.pp, 1);
  EXPECT_EQ(plan.chosen.weight_bytes_rank, 35'278'831'616);
  EXPECT_EQ(plan.chosen.activation_bytes_rank, 416'822'272);
  EXPECT_EQ(plan.chosen.budget_bytes_rank, 41'613'757'440);
  EXPECT_EQ(plan.chosen.num_blocks, 31'748);
  EXPECT_EQ(plan.chosen.kv_tokens, 507'968);
  EXPECT_GE(plan.chosen.kv_tokens, plan.max_model_len);
  EXPECT_NEAR(plan.chosen.max_concurrency, 507968.0 / 131072.0, 1e-9);
  ASSERT_EQ(plan.rejected.size(), 2u);
  EXPECT_EQ(plan.rejected[0].tp, 1);
  EXPECT_FALSE(plan.rejected[0].fits);
  EXPECT_EQ(plan.rejected[1].tp, 2);
  EXPECT_EQ(plan.rejected[1].kv_tokens, 37'360);
  EXPECT_NE(plan.serve_command.find("--tensor-parallel-size 4"), std::string::npos);
  EXPECT_EQ(plan.serve_command.find("--pipeline-parallel-size"), std::string::npos);

  // With --max-model-len 32768, tp=2's 37,360 tokens hold a full sequence: tp=2 is enough.
  PlanRequest shorter = h100_nodes();
  shorter.max_model_len = 32768;
  const Plan p2 = make_plan(load_model_shape("Llama-3.1-70B"), shorter);
  EXPECT_EQ(p2.chosen.tp, 2);
  EXPECT_EQ(p2.chosen.kv_tokens, 37'360);
}

TEST(Planner, Llama31_405BNeedsTwoNodes) {
  // 405,853,388,800 params = 811.7 GB in bf16. One node, tp=8: 50,735,300,608 params
  // = 101,470,601,216 bytes per rank > 77,309,411,328: no room for KV at all.
  // Two nodes, tp=8 pp=2 (63 layers per stage): stage 1 holds the final norm and LM head,
  // 25,367,658,496 params = 50,735,316,992 bytes; activations 603,468,800; KV budget
  // 25,970,625,536 (stage 0: 25,970,658,304); block 2 x 63 x 1 head x 128 x 16 x 2 = 516,096;
  // 50,321 blocks on both stages = 805,136 tokens >= 131,072.
  const ModelShape m = load_model_shape("Llama-3.1-405B");
  EXPECT_EQ(count_parameters(m).total(), 405'853'388'800);
  const Plan plan = make_plan(m, h100_nodes());
  ASSERT_TRUE(plan.found) << plan.why;
  EXPECT_EQ(plan.chosen.tp, 8);
  EXPECT_EQ(plan.chosen.pp, 2);
  EXPECT_EQ(plan.chosen.weight_bytes_rank, 50'735'316'992);
  EXPECT_EQ(plan.chosen.num_blocks, 50'321);
  EXPECT_EQ(plan.chosen.kv_tokens, 805'136);
  EXPECT_NE(plan.launch_note.find("mpirun -np 16"), std::string::npos);
  EXPECT_NE(plan.serve_command.find("--distributed-executor-backend mpi"), std::string::npos);
  // Limited to one node, nothing fits.
  PlanRequest one = h100_nodes();
  one.max_nodes = 1;
  EXPECT_FALSE(make_plan(m, one).found);
}

TEST(Planner, BuiltinModelsMatchPublishedSizes) {
  struct Want {
    const char* name;
    double billions;  // the size the model cards give
  };
  for (const Want& w :
       {Want{"Gemma-2-9B", 9.24}, Want{"Gemma-2-27B", 27.2}, Want{"Mistral-7B", 7.25},
        Want{"Mixtral-8x7B", 46.7}, Want{"Qwen2.5-72B", 72.7}, Want{"DeepSeek-R1", 671.0},
        Want{"Falcon-40B", 41.3}}) {
    const ModelShape m = load_model_shape(w.name);
    EXPECT_NEAR(count_parameters(m).total() / 1e9, w.billions, 0.051) << w.name;
  }
  // Mixtral: per layer 8 experts x 3 x 4096 x 14336 + attention 41,943,040 + router 32,768
  // + norms 8,192 = 1,451,270,144; x 32 + 2 x 32000 x 4096 + 4096 = 46,702,792,704.
  EXPECT_EQ(count_parameters(load_model_shape("Mixtral-8x7B")).total(), 46'702'792'704);
}

// compressed-tensors checkpoints are sized by their weights' bits: FP8 (RedHat's FP8-dynamic
// releases), W8A8 int8, W4A16.
TEST(Planner, CompressedTensorsCheckpointsAreSizedByTheirBits) {
  nlohmann::json config = {{"architectures", {"LlamaForCausalLM"}},
                           {"hidden_size", 4096},
                           {"num_hidden_layers", 32},
                           {"num_attention_heads", 32},
                           {"num_key_value_heads", 8},
                           {"intermediate_size", 14336},
                           {"vocab_size", 128256},
                           {"torch_dtype", "bfloat16"}};
  for (auto [bits, type, want] : std::vector<std::tuple<int, std::string, std::string>>{
           {8, "float", "fp8"}, {8, "int", "int8"}, {4, "int", "int4"}}) {
    config["quantization_config"] = {
        {"quant_method", "compressed-tensors"},
        {"config_groups",
         {{"group_0",
           {{"weights", {{"num_bits", bits}, {"type", type}, {"strategy", "channel"}}}}}}}};
    EXPECT_EQ(parse_model_shape(config, "config.json").stored_dtype, want) << bits << type;
  }
}

TEST(Planner, DeepSeekR1UsesMlaCache) {
  const ModelShape m = load_model_shape("DeepSeek-R1");
  ASSERT_TRUE(m.mla());
  EXPECT_EQ(m.stored_dtype, "fp8");
  // MLA caches one latent of kv_lora_rank 512 + rope 64 per layer, which tessera stores as a key
  // and as a value (the engine's cache layout): 2 x 61 x 576 x 2 bytes = 140,544.
  EXPECT_EQ(kv_block_bytes(rank_kv_shape(m, 1, 1, 0), 1, 2), 140'544);
  // The latent is not split by tensor parallelism.
  EXPECT_EQ(kv_block_bytes(rank_kv_shape(m, 8, 1, 0), 1, 2), 140'544);
  // Two stages: 31 and 30 layers.
  EXPECT_EQ(kv_block_bytes(rank_kv_shape(m, 8, 2, 0), 1, 2), 2 * 31 * 576 * 2);
  EXPECT_EQ(kv_block_bytes(rank_kv_shape(m, 8, 2, 1), 1, 2), 2 * 30 * 576 * 2);
  // GQA for comparison would cache 2 x 61 x 128 heads x 192 x 2 = 5,996,544 bytes per token.
}

TEST(Planner, PipelineWhenTensorParallelCannotSplitHeads) {
  // A made-up model with 6 heads (and 6 KV heads) whose weights need 4 devices: tp=4 cannot
  // split 6 heads, so four pipeline stages on one node are chosen.
  nlohmann::json c = {{"architectures", {"LlamaForCausalLM"}},
                      {"hidden_size", 6144},
                      {"intermediate_size", 16384},
                      {"num_hidden_layers", 40},
                      {"num_attention_heads", 6},
                      {"num_key_value_heads", 6},
                      {"vocab_size", 32000},
                      {"max_position_embeddings", 4096},
                      {"torch_dtype", "bfloat16"}};
  const ModelShape m = parse_model_shape(c, "test config");
  PlanRequest r;
  r.device_memory = 16 * kGiB;  // 36 GB of weights: 18 GB per rank at tp=2 is too much
  r.devices_per_node = 4;
  const Plan plan = make_plan(m, r);
  ASSERT_TRUE(plan.found) << plan.why;
  EXPECT_EQ(plan.chosen.tp, 1);
  EXPECT_EQ(plan.chosen.pp, 4);
  EXPECT_NE(plan.why.find("does not divide the 6 attention heads"), std::string::npos) << plan.why;
}

TEST(Planner, BadInputIsAnError) {
  EXPECT_THROW(load_model_shape("no-such-model"), Error);
  EXPECT_THROW(parse_weight_format("int3"), Error);
  PlanRequest r;
  EXPECT_THROW(make_plan(load_model_shape("Mistral-7B"), r), Error);  // no device memory
}

// The planner agrees with the engine: same weights, activations, block size and block count
// for generated models of every architecture the engine runs.
TEST(Planner, AgreesWithEngineInstance) {
  struct Case {
    const char* arch;
    DType dtype;
    nlohmann::json override;
  };
  const std::vector<Case> cases = {
      {"llama", DType::kBF16, nlohmann::json::object()},
      {"llama", DType::kF16, {{"attention_bias", true}, {"mlp_bias", true}}},
      {"mistral", DType::kBF16, nlohmann::json::object()},
      {"qwen2", DType::kBF16, nlohmann::json::object()},
      {"qwen3", DType::kBF16, nlohmann::json::object()},
      {"gemma2", DType::kBF16, nlohmann::json::object()},
      {"gpt2", DType::kBF16, nlohmann::json::object()},
      {"gpt2", DType::kBF16, {{"tie_word_embeddings", false}, {"n_layer", 4}}},
      {"opt", DType::kBF16, nlohmann::json::object()},
      {"opt", DType::kF16, {{"do_layer_norm_before", false}}},
      {"opt", DType::kBF16, {{"do_layer_norm_before", false}, {"word_embed_proj_dim", 40}}},
      {"mixtral", DType::kBF16, nlohmann::json::object()},
      {"qwen3_moe", DType::kBF16, nlohmann::json::object()},
      {"qwen2_moe", DType::kBF16, nlohmann::json::object()},
      {"deepseek_v3", DType::kBF16, nlohmann::json::object()},
      {"deepseek_v3", DType::kBF16, {{"q_lora_rank", nullptr}, {"first_k_dense_replace", 0}}},
      {"falcon", DType::kBF16, nlohmann::json::object()},
      {"falcon", DType::kBF16, {{"new_decoder_architecture", true}, {"num_kv_heads", 2}}},
      {"falcon", DType::kF16, {{"parallel_attn", false}, {"bias", true}}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.arch);
    const auto dir = testing::make_tiny(c.arch, c.dtype, 3, c.override);
    const ModelShape m = load_model_shape(dir.string());
    for (const bool fixed_budget : {true, false}) {
      EngineArgs args;
      args.model = dir;
      args.threads = 2;
      args.kv_cache_dtype = DType::kBF16;
      args.max_model_len = 256;
      args.max_num_batched_tokens = 512;
      if (fixed_budget)
        args.kv_cache_memory = 3 << 20;
      else
        args.gpu_memory_utilization = 0.004;  // of this machine's memory
      auto e = EngineInstance::create(args);

      PlanRequest r;
      r.device_memory = total_memory_bytes();  // what the CPU engine takes as device memory
      r.devices_per_node = 1;
      r.max_model_len = 256;
      r.max_num_batched_tokens = 512;
      r.kv_element_bytes = 2;
      r.gpu_memory_utilization = fixed_budget ? 0.9 : 0.004;
      if (fixed_budget) r.kv_cache_memory = 3 << 20;
      const LayoutEval l = evaluate_layout(m, r, 1, 1);
      EXPECT_EQ(l.weight_bytes_rank, static_cast<int64_t>(e->weight_bytes()));
      EXPECT_EQ(l.kv_bytes_per_token_rank * 16, e->kv_plan().block_bytes);
      EXPECT_EQ(l.num_blocks, e->kv_plan().num_blocks);
      EXPECT_EQ(l.budget_bytes_rank, e->kv_plan().budget_bytes);
    }
  }
}

}  // namespace
}  // namespace tessera
