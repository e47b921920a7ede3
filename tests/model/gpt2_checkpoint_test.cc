// GPT-2 checkpoints come in two layouts: GPT2LMHeadModel.save_pretrained writes "transformer."
// names and no lm_head.weight; the original files (openai-community/gpt2) have bare names, the
// causal-mask buffers attn.bias and attn.masked_bias, and sometimes lm_head.weight. Both must load
// to the same model, and the mask buffers must not count as weights. (GPT2Config's parsing is
// tested with the other configs in tests/loader/loader_test.cc.)
#include <gtest/gtest.h>

#include <fstream>

#include "loader/safetensors.h"
#include "model/model_test_util.h"

namespace tessera {
namespace {

namespace fs = std::filesystem;
using testing::DirectRunner;

fs::path original_layout(const fs::path& dir) {
  const fs::path out = testing::temp_dir("gpt2_original");
  fs::copy(dir, out, fs::copy_options::overwrite_existing | fs::copy_options::recursive);
  for (const auto& entry : fs::directory_iterator(out))
    if (entry.path().extension() == ".safetensors") fs::remove(entry.path());
  std::vector<std::pair<std::string, Tensor>> tensors;
  int layers = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() != ".safetensors") continue;
    auto file = SafetensorsFile::open(entry.path());
    for (const auto& [name, info] : file->tensors()) {
      std::string bare = name.rfind("transformer.", 0) == 0 ? name.substr(12) : name;
      if (bare.find(".ln_1.weight") != std::string::npos) ++layers;
      tensors.emplace_back(bare, file->tensor(name).contiguous());
      if (bare == "wte.weight") tensors.emplace_back("lm_head.weight", tensors.back().second);
    }
  }
  Tensor mask = Tensor::zeros({1, 1, 16, 16}, DType::kF32);
  for (int l = 0; l < layers; ++l) {
    tensors.emplace_back("h." + std::to_string(l) + ".attn.bias", mask);
    tensors.emplace_back("h." + std::to_string(l) + ".attn.masked_bias",
                         Tensor::zeros({1}, DType::kF32));
  }
  write_safetensors(out / "model.safetensors", tensors);
  return out;
}

TEST(Gpt2Checkpoint, OriginalLayoutLoadsTheSameModel) {
  const fs::path dir = testing::make_tiny("gpt2", DType::kF32, 5);
  const fs::path orig = original_layout(dir);
  ASSERT_EQ(SafetensorsFile::open(orig / "model.safetensors")->tensors().count("wte.weight"), 1u);
  DirectRunner a(dir), b(orig);
  const std::vector<int32_t> ids = testing::test_ids(20, a.config().vocab_size, 9);
  Tensor la = a.run({{0, ids, 0, 20, true}});
  Tensor lb = b.run({{0, ids, 0, 20, true}});
  ASSERT_EQ(la.numel(), lb.numel());
  EXPECT_EQ(0, std::memcmp(la.raw(), lb.raw(), la.nbytes()));
  fs::remove_all(dir);
  fs::remove_all(orig);
}

}  // namespace
}  // namespace tessera
