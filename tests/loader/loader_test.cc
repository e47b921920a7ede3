// Safetensors reading and writing, model folders, and the errors a bad folder gives.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <tuple>

#include "config/model_config.h"
#include "loader/checkpoint.h"
#include "loader/safetensors.h"
#include "loader/weight_source.h"
#include "model/model.h"
#include "model/model_test_util.h"
#include "test_util.h"

namespace tessera {
namespace {

namespace fs = std::filesystem;
using testing::random_tensor;

std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_all(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Writes a raw safetensors file from a header JSON and a data section.
void write_raw(const fs::path& p, const std::string& header, const std::string& data) {
  uint64_t n = header.size();
  write_all(p, std::string(reinterpret_cast<const char*>(&n), 8) + header + data);
}

// The message of the tessera::Error thrown by f, or "" if none.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Safetensors, RoundTripsEveryDtype) {
  const fs::path dir = testing::temp_dir("st");
  std::vector<std::pair<std::string, Tensor>> tensors = {
      {"a", random_tensor({3, 5}, DType::kF32, 1)},
      {"b", random_tensor({7}, DType::kBF16, 2)},
      {"c", random_tensor({2, 2, 2}, DType::kF16, 3)}};
  write_safetensors(dir / "x.safetensors", tensors, {{"format", "pt"}});
  auto file = SafetensorsFile::open(dir / "x.safetensors");
  ASSERT_EQ(file->tensors().size(), 3u);
  EXPECT_EQ(file->data_offset() % 8, 0u) << "header padded to 8 bytes";
  for (const auto& [name, t] : tensors) {
    Tensor r = file->tensor(name);
    EXPECT_EQ(r.dtype(), t.dtype());
    ASSERT_EQ(r.shape_string(), t.shape_string());
    EXPECT_EQ(0, std::memcmp(r.raw(), t.raw(), t.nbytes())) << name;
  }
  fs::remove_all(dir);
}

TEST(Safetensors, CorruptFilesGiveErrorsNamingTheFile) {
  const fs::path dir = testing::temp_dir("st_bad");
  const fs::path p = dir / "bad.safetensors";
  const std::string data(24, '\0');
  struct Case {
    std::string header, data, expect;
  };
  const Case cases[] = {
      {R"({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}})", data, ""},
      {R"({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}})", data.substr(0, 20),
       "truncated"},
      {R"({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}})", data,
       "20 bytes of data for shape"},
      {R"({"w": {"dtype": "Q4", "shape": [6], "data_offsets": [0, 24]}})", data,
       "unsupported dtype"},
      {R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 24]}})", data, "bad shape"},
      {R"({"w": {"dtype": "F32", "shape": [6]}})", data, "needs dtype, shape and data_offsets"},
      {R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},)"
       R"( "v": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}})",
       data, "overlap"},
      {R"({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]})", data,
       "malformed safetensors header"},
      {R"([1, 2])", data, "not a JSON object"},
  };
  for (const Case& c : cases) {
    write_raw(p, c.header, c.data);
    const std::string msg = error_of([&] { SafetensorsFile::open(p); });
    if (c.expect.empty()) {
      EXPECT_EQ(msg, "") << c.header;
    } else {
      EXPECT_NE(msg.find(c.expect), std::string::npos) << "header " << c.header << " gave: " << msg;
      EXPECT_NE(msg.find("bad.safetensors"), std::string::npos) << msg;
    }
  }
  // A header length larger than the file, and a file shorter than the length field.
  write_all(p, std::string("\xff\xff\xff\x00\x00\x00\x00\x00{}", 10));
  EXPECT_NE(error_of([&] { SafetensorsFile::open(p); }).find("truncated or corrupt"),
            std::string::npos);
  write_all(p, "abc");
  EXPECT_NE(error_of([&] { SafetensorsFile::open(p); }).find("truncated"), std::string::npos);
  EXPECT_NE(
      error_of([&] { SafetensorsFile::open(dir / "missing.safetensors"); }).find("cannot open"),
      std::string::npos);
  fs::remove_all(dir);
}

TEST(Checkpoint, ShardedFolderMissingShardAndStrayTensor) {
  const fs::path dir =
      testing::make_tiny("llama", DType::kF32, 1, nlohmann::json::object(), 400000);
  ASSERT_TRUE(fs::exists(dir / "model.safetensors.index.json"));
  Checkpoint ok = Checkpoint::open(dir);
  EXPECT_GT(ok.files().size(), 2u);
  EXPECT_TRUE(ok.contains("model.norm.weight"));

  // A tensor listed in the index but stored nowhere.
  nlohmann::json index = nlohmann::json::parse(read_all(dir / "model.safetensors.index.json"));
  const std::string first_shard = index["weight_map"]["model.norm.weight"];
  index["weight_map"]["model.extra.weight"] = first_shard;
  write_all(dir / "model.safetensors.index.json", index.dump());
  std::string msg = error_of([&] { Checkpoint::open(dir); });
  EXPECT_NE(msg.find("model.extra.weight"), std::string::npos) << msg;

  // A missing shard file.
  index["weight_map"].erase("model.extra.weight");
  write_all(dir / "model.safetensors.index.json", index.dump());
  fs::rename(dir / first_shard, dir / "moved.bin");
  msg = error_of([&] { Checkpoint::open(dir); });
  EXPECT_NE(msg.find("is missing"), std::string::npos) << msg;
  EXPECT_NE(msg.find(first_shard), std::string::npos) << msg;
  fs::remove_all(dir);
}

TEST(WeightSource, ChecksShapesDtypesAndLeftovers) {
  const fs::path dir = testing::temp_dir("ws");
  write_safetensors(dir / "model.safetensors", {{"a", random_tensor({4, 6}, DType::kBF16, 1)},
                                                {"ids", Tensor::zeros({3}, DType::kI64)},
                                                {"spare", random_tensor({2}, DType::kF32, 2)}});
  Checkpoint ckpt = Checkpoint::open(dir);
  for (LoadFormat format : {LoadFormat::kAuto, LoadFormat::kMmap}) {
    WeightSource w(&ckpt, format, nullptr, DType::kBF16);
    EXPECT_NE(error_of([&] {
                w.get("a", {6, 4});
              }).find("has shape [4, 6], expected [6, 4]"),
              std::string::npos);
    EXPECT_NE(error_of([&] { w.get("ids", {3}); }).find("has dtype I64"), std::string::npos);
    EXPECT_NE(error_of([&] { w.get("nope", {1}); }).find("missing tensor \"nope\""),
              std::string::npos);
    Tensor rows = w.get("a", {4, 6}, Slice{0, 1, 3});
    Tensor cols = w.get("a", {4, 6}, Slice{1, 2, 5});
    Tensor full = ckpt.tensor("a");
    for (int64_t i = 0; i < 2; ++i)
      for (int64_t j = 0; j < 6; ++j)
        EXPECT_EQ(testing::at(rows, i, j), testing::at(full, i + 1, j));
    for (int64_t i = 0; i < 4; ++i)
      for (int64_t j = 0; j < 3; ++j)
        EXPECT_EQ(testing::at(cols, i, j), testing::at(full, i, j + 2));
    // Only the slices' bytes are read: 2 rows of 6 and 4 rows of 3 bf16 values.
    if (format == LoadFormat::kAuto) {
      EXPECT_EQ(w.bytes_read(), (2 * 6 + 4 * 3) * 2u);
    }
    const std::string msg = error_of([&] { w.check_all_used(); });
    EXPECT_NE(msg.find("unexpected tensor"), std::string::npos) << msg;
    EXPECT_NE(msg.find("spare"), std::string::npos) << msg;
  }
  fs::remove_all(dir);
}

// FP8 checkpoints: F8_E4M3 weights with scales per tensor, per row or per block. get() gives
// scale * e4m3(code) (any slice); get_fp8_rows() gives the codes as stored with the scales of
// every row, starting inside a block for a column slice, or transposed.
TEST(WeightSource, Fp8WeightsDequantizeAndKeepTheirCodes) {
  const fs::path dir = testing::temp_dir("ws_fp8");
  const int64_t n = 5, k = 7;
  Tensor codes = Tensor::empty({n, k}, DType::kF8E4M3);
  for (int64_t i = 0; i < n * k; ++i)
    codes.data<uint8_t>()[i] = static_cast<uint8_t>((i * 29) % 126);
  Tensor tensor_scale = Tensor::empty({}, DType::kF32);
  tensor_scale.data<float>()[0] = 0.5f;
  Tensor row_scale = Tensor::empty({n, 1}, DType::kBF16);  // compressed-tensors: the model dtype
  for (int64_t r = 0; r < n; ++r) store_from_f32(row_scale.raw(), DType::kBF16, r, 0.25f * (r + 1));
  Tensor block_scale = Tensor::empty({3, 3}, DType::kF32);  // blocks of 2 x 3
  for (int64_t i = 0; i < 9; ++i) block_scale.data<float>()[i] = 0.125f * (i + 1);
  write_safetensors(dir / "model.safetensors",
                    {{"t.weight", codes},
                     {"t.weight_scale", tensor_scale},
                     {"t.input_scale", tensor_scale},
                     {"r.weight", codes},
                     {"r.weight_scale", row_scale},
                     {"b.weight", codes},
                     {"b.weight_scale_inv", block_scale},
                     {"bare.weight", codes},
                     {"odd.weight", codes},
                     {"odd.weight_scale_inv", Tensor::zeros({2, 2}, DType::kF32)}});
  Checkpoint ckpt = Checkpoint::open(dir);
  auto want = [&](const std::string& name, int64_t r, int64_t c) {
    const float code = fp8_e4m3_to_f32(codes.data<uint8_t>()[r * k + c]);
    if (name == "t.weight") return 0.5f * code;
    if (name == "r.weight") return 0.25f * (r + 1) * code;
    return block_scale.data<float>()[(r / 2) * 3 + c / 3] * code;
  };
  for (LoadFormat format : {LoadFormat::kAuto, LoadFormat::kMmap}) {
    WeightSource w(&ckpt, format, nullptr, DType::kF32);
    w.set_fp8(2, 3, DType::kF32);
    for (const std::string name : {"t.weight", "r.weight", "b.weight"}) {
      SCOPED_TRACE(name);
      const Tensor full = w.get(name, {n, k});
      EXPECT_EQ(full.dtype(), DType::kF32);
      const Tensor cols = w.get(name, {n, k}, Slice{1, 2, 6});
      const Tensor rows = w.get(name, {n, k}, Slice{0, 1, 4});
      for (int64_t r = 0; r < n; ++r)
        for (int64_t c = 0; c < k; ++c) {
          EXPECT_EQ(testing::at(full, r, c), want(name, r, c)) << r << "," << c;
          if (c >= 2 && c < 6) {
            EXPECT_EQ(testing::at(cols, r, c - 2), want(name, r, c));
          }
          if (r >= 1 && r < 4) {
            EXPECT_EQ(testing::at(rows, r - 1, c), want(name, r, c));
          }
        }
      // As stored: every code, and scales that give the same values.
      for (bool transposed : {false, true}) {
        const Slice slice = transposed ? Slice{0, 1, 5} : Slice{1, 2, 6};
        const int64_t shape[] = {n, k};
        std::optional<Fp8Rows> f = w.get_fp8_rows(name, shape, slice, transposed);
        if (transposed && name == "r.weight") {  // per-row scales do not transpose
          EXPECT_FALSE(f);
          continue;
        }
        ASSERT_TRUE(f);
        const int64_t fr = f->codes.size(0), fc = f->codes.size(1);
        EXPECT_EQ(fr, transposed ? k : n);
        for (int64_t i = 0; i < fr; ++i)
          for (int64_t j = 0; j < fc; ++j) {
            const int64_t r = transposed ? j + 1 : i, c = transposed ? i : j + 2;
            EXPECT_EQ(f->codes.data<uint8_t>()[i * f->codes.stride(0) + j],
                      codes.data<uint8_t>()[r * k + c]);
            const float scale =
                f->block_cols == 0 ? f->scales.data<float>()[i]
                                   : f->scales.data<float>()[i * f->scales.size(1) +
                                                             (j + f->block_offset) / f->block_cols];
            EXPECT_EQ(scale * fp8_e4m3_to_f32(codes.data<uint8_t>()[r * k + c]), want(name, r, c))
                << (transposed ? "transposed " : "") << i << "," << j;
          }
        if (name == "b.weight") {  // rows from 1 (of 2), cols from 2 (of 3)
          EXPECT_EQ(f->block_offset, transposed ? 1 : 2);
        }
      }
    }
    EXPECT_NE(error_of([&] {
                w.get("bare.weight", {n, k});
              }).find("has no scale"),
              std::string::npos);
    EXPECT_NE(error_of([&] {
                w.get("odd.weight", {n, k});
              }).find("has shape [2, 2], expected [3, 3] for a [5, 7] weight in blocks of 2 x 3"),
              std::string::npos);
    w.ignore("bare.weight");
    w.ignore("odd.weight");
    w.ignore_suffix(".input_scale");
    EXPECT_EQ(error_of([&] { w.check_all_used(); }), "");
  }
  // The dequantized dtype: the model's, or --dtype's.
  WeightSource bf16(&ckpt, LoadFormat::kAuto, nullptr, DType::kBF16);
  bf16.set_fp8(2, 3, DType::kBF16);
  EXPECT_EQ(bf16.get("t.weight", {n, k}).dtype(), DType::kBF16);
  fs::remove_all(dir);
}

// quantization_config: which checkpoints load (FP8 E4M3 in vLLM's "fp8" and compressed-tensors
// layouts) and what the others are called in the refusal.
TEST(ModelConfig, QuantizationConfigs) {
  auto parse = [](nlohmann::json q) {
    nlohmann::json j = {{"architectures", {"LlamaForCausalLM"}},
                        {"hidden_size", 64},
                        {"num_hidden_layers", 2},
                        {"num_attention_heads", 4},
                        {"intermediate_size", 128},
                        {"vocab_size", 100},
                        {"quantization_config", q}};
    return parse_model_config(j, "config.json");
  };
  auto ct = [](int bits, const std::string& type, const std::string& strategy,
               const std::string& format) {
    return nlohmann::json{
        {"quant_method", "compressed-tensors"},
        {"format", format},
        {"config_groups",
         {{"group_0",
           {{"weights", {{"num_bits", bits}, {"type", type}, {"strategy", strategy}}}}}}}};
  };
  ModelConfig c = parse({{"quant_method", "fp8"}, {"activation_scheme", "static"}});
  EXPECT_TRUE(c.fp8_checkpoint);
  EXPECT_EQ(c.fp8_block_rows, 0);
  c = parse({{"quant_method", "fp8"}, {"fmt", "e4m3"}, {"weight_block_size", {128, 64}}});
  EXPECT_TRUE(c.fp8_checkpoint);
  EXPECT_EQ(c.fp8_block_rows, 128);
  EXPECT_EQ(c.fp8_block_cols, 64);
  EXPECT_TRUE(parse(ct(8, "float", "channel", "float-quantized")).fp8_checkpoint);
  nlohmann::json block = ct(8, "float", "block", "float-quantized");
  block["config_groups"]["group_0"]["weights"]["block_structure"] = {128, 128};
  c = parse(block);
  EXPECT_TRUE(c.fp8_checkpoint);
  EXPECT_EQ(c.fp8_block_cols, 128);
  c = parse(ct(8, "int", "channel", "int-quantized"));
  EXPECT_FALSE(c.fp8_checkpoint);
  EXPECT_EQ(c.quant_scheme,
            "compressed-tensors int-quantized, 8-bit int weights (channel strategy)");
  EXPECT_EQ(c.int_format, "int-quantized");
  c = parse(ct(4, "int", "group", "pack-quantized"));  // a group strategy with no group_size
  EXPECT_FALSE(c.fp8_checkpoint);
  EXPECT_FALSE(c.int_checkpoint());
  c = parse({{"quant_method", "fp8"}, {"fmt", "e5m2"}});
  EXPECT_FALSE(c.fp8_checkpoint);
  EXPECT_EQ(c.quant_scheme, "fp8 with fmt \"e5m2\"");
  c = parse({{"quant_method", "awq"}, {"bits", 4}});
  EXPECT_FALSE(c.fp8_checkpoint);
  EXPECT_EQ(c.int_format, "awq");
  EXPECT_EQ(c.int_group_size, 128);
  // Integer checkpoints: GPTQ (per row with group_size -1, 8 bits, v2 zeros), AWQ (its own
  // field names), compressed-tensors W4A16 / W8A8.
  c = parse({{"quant_method", "gptq"},
             {"bits", 8},
             {"group_size", -1},
             {"sym", false},
             {"checkpoint_format", "gptq_v2"}});
  EXPECT_EQ(c.int_format, "gptq");
  EXPECT_EQ(c.int_bits, 8);
  EXPECT_EQ(c.int_group_size, 0);
  EXPECT_FALSE(c.int_symmetric);
  EXPECT_TRUE(c.int_gptq_v2);
  c = parse({{"quant_method", "awq"}, {"w_bit", 4}, {"q_group_size", 64}, {"version", "GEMM"}});
  EXPECT_EQ(c.int_format, "awq");
  EXPECT_EQ(c.int_group_size, 64);
  nlohmann::json w4 = ct(4, "int", "group", "pack-quantized");
  w4["config_groups"]["group_0"]["weights"]["group_size"] = 128;
  c = parse(w4);
  EXPECT_EQ(c.int_format, "pack-quantized");
  EXPECT_EQ(c.int_bits, 4);
  EXPECT_EQ(c.int_group_size, 128);
  nlohmann::json mixed = w4;
  mixed["config_groups"]["group_1"] = mixed["config_groups"]["group_0"];
  mixed["config_groups"]["group_1"]["weights"]["group_size"] = 64;
  EXPECT_FALSE(parse(mixed).int_checkpoint());
  // What does not load is named.
  EXPECT_EQ(parse({{"quant_method", "gptq"}, {"bits", 3}}).quant_scheme, "gptq with 3-bit weights");
  EXPECT_EQ(parse({{"quant_method", "gptq"}, {"is_marlin_format", true}}).quant_scheme,
            "gptq in the \"marlin\" layout");
  EXPECT_EQ(parse({{"quant_method", "awq"}, {"version", "gemv"}}).quant_scheme,
            "awq version \"gemv\" (the GEMM layout loads)");
  EXPECT_FALSE(parse({{"quant_method", "awq"}, {"version", "gemv"}}).int_checkpoint());
  EXPECT_FALSE(parse({{"quant_method", "awq"}, {"zero_point", false}}).int_checkpoint());
  EXPECT_NE(error_of([&] {
              parse({{"quant_method", "fp8"}, {"weight_block_size", {128}}});
            }).find("weight_block_size must be two positive integers"),
            std::string::npos);
}

// Integer checkpoints, from words written here by hand: the word 0x76543210 holds the values
// 0..7 in its nibbles, lowest first. GPTQ packs inputs in order (zeros stored minus one), AWQ
// packs outputs in the order 0 2 4 6 1 3 5 7 (so outputs 0..7 read 0 4 1 5 2 6 3 7), and
// compressed-tensors packs inputs in order, offset by 8.
TEST(WeightSource, IntWeightsUnpackAsTheirFormatsDefine) {
  const fs::path dir = testing::temp_dir("ws_int");
  const int32_t word = 0x76543210;
  auto filled = [](std::initializer_list<int64_t> shape, DType dtype, double v) {
    Tensor t = Tensor::empty(shape, dtype);
    for (int64_t i = 0; i < t.numel(); ++i) {
      if (dtype == DType::kI32)
        t.data<int32_t>()[i] = static_cast<int32_t>(v);
      else
        store_from_f32(t.raw(), dtype, i, static_cast<float>(v));
    }
    return t;
  };
  // [out 8, in 8] each: one word per output (GPTQ, compressed) or per input (AWQ).
  Tensor gptq_scales = filled({1, 8}, DType::kF16, 0.5);
  Tensor shape = Tensor::empty({2}, DType::kI64);
  shape.data<int64_t>()[0] = shape.data<int64_t>()[1] = 8;
  write_safetensors(dir / "gptq.safetensors",
                    {{"g.qweight", filled({1, 8}, DType::kI32, word)},
                     {"g.qzeros", filled({1, 1}, DType::kI32, 0x77777777)},  // zeros of 8
                     {"g.scales", gptq_scales},
                     {"g.g_idx", Tensor::zeros({8}, DType::kI32)}});
  {
    Checkpoint ckpt = Checkpoint::open(dir);
    WeightSource w(&ckpt, LoadFormat::kAuto, nullptr, DType::kF32);
    w.set_int_weights({IntWeights::Kind::kGptq, 4, 0, true, false}, DType::kF32);
    EXPECT_TRUE(w.has("g.weight"));
    const Tensor t = w.get("g.weight", {8, 8});
    for (int64_t o = 0; o < 8; ++o)
      for (int64_t i = 0; i < 8; ++i) EXPECT_EQ(testing::at(t, o, i), 0.5f * (i - 8)) << o << i;
    EXPECT_NE(error_of([&] {
                w.get("g.weight", {8, 16});
              }).find("is [8, 8], expected [8, 16]"),
              std::string::npos);
    w.check_all_used();
  }
  fs::remove(dir / "gptq.safetensors");
  write_safetensors(dir / "awq.safetensors",
                    {{"a.qweight", filled({8, 1}, DType::kI32, word)},
                     {"a.qzeros", filled({1, 1}, DType::kI32, 0x11111111)},  // zeros of 1
                     {"a.scales", filled({1, 8}, DType::kF16, 1.0)}});
  {
    Checkpoint ckpt = Checkpoint::open(dir);
    WeightSource w(&ckpt, LoadFormat::kMmap, nullptr, DType::kF32);
    w.set_int_weights({IntWeights::Kind::kAwq, 4, 0, false, false}, DType::kF32);
    const Tensor t = w.get("a.weight", {8, 8});
    const float want[8] = {0, 4, 1, 5, 2, 6, 3, 7};
    for (int64_t o = 0; o < 8; ++o)
      for (int64_t i = 0; i < 8; ++i) EXPECT_EQ(testing::at(t, o, i), want[o] - 1) << o << i;
    // As E4M3 codes, outputs [2, 6) (a column-parallel shard inside one word).
    const int64_t full[] = {8, 8};
    std::optional<Fp8Rows> f = w.get_fp8_rows("a.weight", full, Slice{0, 2, 6});
    ASSERT_TRUE(f);
    ASSERT_EQ(f->codes.size(0), 4);
    for (int64_t o = 0; o < 4; ++o) {
      EXPECT_EQ(f->scales.data<float>()[o], 1.0f);
      for (int64_t i = 0; i < 8; ++i)
        EXPECT_EQ(fp8_e4m3_to_f32(f->codes.data<uint8_t>()[o * 8 + i]), want[o + 2] - 1);
    }
    w.check_all_used();
  }
  fs::remove(dir / "awq.safetensors");
  write_safetensors(dir / "ct.safetensors", {{"c.weight_packed", filled({8, 1}, DType::kI32, word)},
                                             {"c.weight_scale", filled({8, 1}, DType::kBF16, 2.0)},
                                             {"c.weight_shape", shape}});
  {
    Checkpoint ckpt = Checkpoint::open(dir);
    WeightSource w(&ckpt, LoadFormat::kAuto, nullptr, DType::kF32);
    w.set_int_weights({IntWeights::Kind::kPacked, 4, 0, true, false}, DType::kBF16);
    const Tensor t = w.get("c.weight", {8, 8}, Slice{1, 3, 8});
    EXPECT_EQ(t.dtype(), DType::kBF16);
    for (int64_t o = 0; o < 8; ++o)
      for (int64_t i = 3; i < 8; ++i) EXPECT_EQ(testing::at(t, o, i - 3), 2.0f * (i - 8)) << o << i;
    w.check_all_used();
  }
  {  // Asymmetric packed weights need their zero points: a missing one is named.
    Checkpoint ckpt = Checkpoint::open(dir);
    WeightSource w(&ckpt, LoadFormat::kAuto, nullptr, DType::kF32);
    w.set_int_weights({IntWeights::Kind::kPacked, 4, 0, false, false}, DType::kF32);
    EXPECT_NE(error_of([&] {
                w.get("c.weight", {8, 8});
              }).find("c.weight_zero_point"),
              std::string::npos);
  }
  fs::remove_all(dir);
}

// Checkpoints written by make-model in every integer layout hold the unquantized model's
// weights to within half a quantization step, read whole or in shards; the 4-bit ones' E4M3
// codes times their scales are exactly what get() dequantizes.
TEST(WeightSource, IntCheckpointsHoldTheirModelsWeights) {
  const fs::path plain = testing::make_tiny("llama", DType::kF32, 5);
  Checkpoint pc = Checkpoint::open(plain);
  WeightSource ref(&pc, LoadFormat::kAuto, nullptr, DType::kF32);
  struct Layout {
    std::string kind;
    nlohmann::json q;
    double steps;  // quantization steps per row's largest |w|
  };
  const std::vector<Layout> layouts = {
      {"gptq", {{"group_size", 48}}, 7},
      {"gptq", {{"group_size", 16}, {"sym", false}, {"desc_act", true}}, 7},
      {"gptq", {{"bits", 8}, {"group_size", -1}}, 127},
      {"awq", {{"group_size", 32}}, 7},
      {"w4a16", {{"config_groups", {{"group_0", {{"weights", {{"symmetric", false}}}}}}}}, 7},
      {"w8a8", nlohmann::json::object(), 127}};
  for (const Layout& l : layouts) {
    SCOPED_TRACE(l.kind + " " + l.q.dump());
    const fs::path dir =
        testing::make_tiny("llama", DType::kF32, 5, {{"quantization_config", l.q}}, 0, l.kind);
    const ModelConfig config = load_model_config(dir);
    ASSERT_TRUE(config.int_checkpoint()) << config.quant_scheme;
    Checkpoint ckpt = Checkpoint::open(dir);
    WeightSource w(&ckpt, LoadFormat::kAuto, nullptr, DType::kF32);
    w.set_int_weights(int_weights_of(config), DType::kF32);
    for (auto [name, n, k] : std::vector<std::tuple<std::string, int64_t, int64_t>>{
             {"model.layers.1.self_attn.q_proj.weight", 64, 64},
             {"model.layers.1.mlp.down_proj.weight", 64, 128}}) {
      const Tensor want = ref.get(name, {n, k});
      const Tensor got = w.get(name, {n, k});
      const Tensor shard = w.get(name, {n, k}, Slice{1, k / 2, k});
      for (int64_t r = 0; r < n; ++r) {
        double amax = 0;
        for (int64_t c = 0; c < k; ++c)
          amax = std::max(amax, double{std::fabs(testing::at(want, r, c))});
        for (int64_t c = 0; c < k; ++c) {
          ASSERT_LE(std::fabs(testing::at(got, r, c) - testing::at(want, r, c)),
                    amax / l.steps * 0.51)
              << name << " " << r << "," << c;
          if (c >= k / 2) {
            ASSERT_EQ(testing::at(shard, r, c - k / 2), testing::at(got, r, c));
          }
        }
      }
      const int64_t shape[] = {n, k};
      std::optional<Fp8Rows> codes = w.get_fp8_rows(name, shape, Slice{1, k / 2, k});
      const bool as_codes = config.int_bits == 4 && !l.q.value("desc_act", false);
      ASSERT_EQ(codes.has_value(), as_codes);
      if (!as_codes) continue;
      const int64_t chunks = codes->scales.dim() == 2 ? codes->scales.size(1) : 1;
      for (int64_t r = 0; r < n; ++r)
        for (int64_t c = 0; c < k / 2; ++c) {
          const int64_t chunk =
              codes->block_cols ? (c + codes->block_offset) / codes->block_cols : 0;
          ASSERT_EQ(codes->scales.data<float>()[r * chunks + chunk] *
                        fp8_e4m3_to_f32(codes->codes.data<uint8_t>()[r * (k / 2) + c]),
                    testing::at(got, r, c + k / 2));
        }
    }
    fs::remove_all(dir);
  }
  fs::remove_all(plain);
}

// Large tensors are read in several chunks over the thread pool (with read-ahead of what
// follows): every byte must land where the file has it, for sizes that are not multiples of the
// chunk and for row slices that start inside a chunk.
TEST(WeightSource, ParallelChunkedReadsMatchTheFile) {
  const fs::path dir = testing::temp_dir("ws_chunks");
  // 2,883,584 and 6,684,672 bytes of f32: chunks of 1 MiB (3 threads) with a remainder.
  write_safetensors(dir / "model.safetensors",
                    {{"big", random_tensor({704, 1024}, DType::kF32, 3)},
                     {"bigger", random_tensor({1632, 1024}, DType::kF32, 4)}});
  Checkpoint ckpt = Checkpoint::open(dir);
  for (int threads : {1, 3}) {
    ThreadPool pool(threads);
    WeightSource w(&ckpt, LoadFormat::kAuto, &pool, DType::kF32);
    for (const char* name : {"big", "bigger"}) {
      const Tensor file = ckpt.tensor(name);
      const Tensor all = w.get(name, file.shape());
      EXPECT_EQ(std::memcmp(all.raw(), file.raw(), file.nbytes()), 0) << name;
      const int64_t rows = file.size(0);
      const Tensor part = w.get(name, file.shape(), Slice{0, 333, rows - 5});
      EXPECT_EQ(std::memcmp(part.raw(), static_cast<const char*>(file.raw()) + 333 * 1024 * 4,
                            part.nbytes()),
                0)
          << name;
    }
    EXPECT_EQ(w.bytes_read(), (704 + 1632) * 1024 * 4 + (704 - 338 + 1632 - 338) * 1024 * 4u);
  }
  fs::remove_all(dir);
}

TEST(ModelFolder, BadFoldersGiveClearErrors) {
  ThreadPool pool(1);
  CpuBackend backend(pool);
  SingleCommunicator comm;
  ModelContext ctx{backend, comm};
  EXPECT_NE(error_of([&] { load_model("/nonexistent/model", ctx); }).find("does not exist"),
            std::string::npos);

  const fs::path dir = testing::make_tiny("qwen2", DType::kF32);
  nlohmann::json config = nlohmann::json::parse(read_all(dir / "config.json"));
  config["architectures"] = {"MambaForCausalLM"};
  write_all(dir / "config.json", config.dump());
  std::string msg = error_of([&] { load_model(dir, ctx); });
  EXPECT_NE(msg.find("unsupported architecture \"MambaForCausalLM\""), std::string::npos) << msg;
  EXPECT_NE(msg.find("LlamaForCausalLM"), std::string::npos) << "lists the supported ones: " << msg;

  config["architectures"] = {"Qwen2ForCausalLM"};
  config.erase("hidden_size");
  write_all(dir / "config.json", config.dump());
  msg = error_of([&] { load_model(dir, ctx); });
  EXPECT_NE(msg.find("missing required field \"hidden_size\""), std::string::npos) << msg;

  config["hidden_size"] = 64;
  config["num_attention_heads"] = 3;  // 2 kv heads do not divide 3
  write_all(dir / "config.json", config.dump());
  msg = error_of([&] { load_model(dir, ctx); });
  EXPECT_NE(msg.find("not a multiple of num_key_value_heads"), std::string::npos) << msg;

  // A weight with the wrong shape for the config.
  config["num_attention_heads"] = 4;
  config["intermediate_size"] = 256;
  write_all(dir / "config.json", config.dump());
  msg = error_of([&] { load_model(dir, ctx); });
  EXPECT_NE(msg.find("expected [256, 64]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.safetensors"), std::string::npos) << msg;

  write_all(dir / "config.json", "{not json");
  EXPECT_NE(error_of([&] { load_model(dir, ctx); }).find("config.json is not valid JSON"),
            std::string::npos);
  fs::remove_all(dir);
}

// GPT2Config's field names, its defaults, and the attention scale switches.
TEST(ModelConfig, Gpt2ConfigAliasesAndDefaults) {
  nlohmann::json j = {{"architectures", {"GPT2LMHeadModel"}},
                      {"n_embd", 64},
                      {"n_layer", 2},
                      {"n_head", 4},
                      {"n_inner", nullptr},
                      {"n_positions", 128}};
  ModelConfig c = parse_model_config(j, "test");
  EXPECT_EQ(c.vocab_size, 50257);
  EXPECT_EQ(c.intermediate_size, 256);  // n_inner null: 4 x n_embd
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.num_kv_heads, 4);
  EXPECT_EQ(c.max_position_embeddings, 128);
  EXPECT_EQ(c.dtype, DType::kF32);  // the original configs have no torch_dtype
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.hidden_act, Activation::kGeluTanh);
  EXPECT_FLOAT_EQ(c.layer_attention_scale(1), 0.25f);
  j["scale_attn_by_inverse_layer_idx"] = true;
  EXPECT_FLOAT_EQ(parse_model_config(j, "test").layer_attention_scale(1), 0.125f);
  j["scale_attn_weights"] = false;
  EXPECT_FLOAT_EQ(parse_model_config(j, "test").layer_attention_scale(3), 0.25f);
  j["activation_function"] = "swiglu_maybe";
  EXPECT_THROW(parse_model_config(j, "test"), Error);
}

// FalconConfig's defaults (Falcon-7B: multi-query, parallel attention, GELU, 4x FFN), the new
// decoder's key/value groups and norms, the first releases' RWConfig names, and what is refused.
TEST(ModelConfig, FalconConfigLayoutsAliasesAndRefusals) {
  nlohmann::json j = {{"architectures", {"FalconForCausalLM"}},
                      {"model_type", "falcon"},
                      {"hidden_size", 64},
                      {"num_hidden_layers", 2},
                      {"num_attention_heads", 4}};
  ModelConfig c = parse_model_config(j, "test");
  EXPECT_EQ(c.arch, Arch::kFalcon);
  EXPECT_EQ(c.vocab_size, 65024);
  EXPECT_EQ(c.num_kv_heads, 1);  // multi_query defaults to true
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.intermediate_size, 256);
  EXPECT_EQ(c.hidden_act, Activation::kGelu);
  EXPECT_TRUE(c.parallel_attn);
  EXPECT_FALSE(c.new_decoder_architecture || c.separate_mlp_norm);
  EXPECT_FALSE(c.attention_bias || c.o_proj_bias || c.mlp_bias);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.max_position_embeddings, 2048);
  EXPECT_EQ(c.rotary_dim(), 16);
  j["multi_query"] = false;
  EXPECT_EQ(parse_model_config(j, "test").num_kv_heads, 4);
  // The new decoder: num_kv_heads groups, two norms unless num_ln_in_parallel_attn is 1.
  j["new_decoder_architecture"] = true;
  j["num_kv_heads"] = 2;
  c = parse_model_config(j, "test");
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_TRUE(c.separate_mlp_norm);
  j["num_ln_in_parallel_attn"] = 1;
  EXPECT_FALSE(parse_model_config(j, "test").separate_mlp_norm);
  j["parallel_attn"] = false;
  EXPECT_THROW(parse_model_config(j, "test"), Error);
  // Falcon-40B's first config.json: RWForCausalLM, "RefinedWeb", n_embed / n_layer / n_head /
  // n_head_kv, implicitly the new decoder.
  nlohmann::json rw = {{"architectures", {"RWForCausalLM"}},
                       {"model_type", "RefinedWeb"},
                       {"n_embed", 128},
                       {"n_layer", 3},
                       {"n_head", 8},
                       {"n_head_kv", 2},
                       {"bias", false},
                       {"parallel_attn", true},
                       {"vocab_size", 100}};
  c = parse_model_config(rw, "test");
  EXPECT_EQ(c.arch, Arch::kFalcon);
  EXPECT_EQ(c.hidden_size, 128);
  EXPECT_EQ(c.num_layers, 3);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_TRUE(c.new_decoder_architecture && c.separate_mlp_norm);
  // Refused with a message: ALiBi (falcon-rw), and rope scaling we do not implement.
  nlohmann::json alibi = j;
  alibi["alibi"] = true;
  try {
    parse_model_config(alibi, "config.json");
    ADD_FAILURE() << "alibi accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("ALiBi"), std::string::npos) << e.what();
  }
  nlohmann::json dynamic = {{"architectures", {"FalconForCausalLM"}},
                            {"hidden_size", 64},
                            {"num_hidden_layers", 2},
                            {"num_attention_heads", 4},
                            {"rope_scaling", {{"type", "dynamic"}, {"factor", 2.0}}}};
  EXPECT_THROW(parse_model_config(dynamic, "test"), Error);
  dynamic["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  EXPECT_EQ(parse_model_config(dynamic, "test").rope_scaling.type, "linear");
}

// Mixtral and Qwen3-MoE: expert counts, their width, renormalisation, and what is refused.
TEST(ModelConfig, MixtureOfExpertsFields) {
  nlohmann::json mixtral = {{"architectures", {"MixtralForCausalLM"}},
                            {"vocab_size", 100},
                            {"hidden_size", 64},
                            {"intermediate_size", 96},
                            {"num_hidden_layers", 2},
                            {"num_attention_heads", 4},
                            {"num_key_value_heads", 2},
                            {"num_local_experts", 8},
                            {"sliding_window", nullptr}};
  ModelConfig c = parse_model_config(mixtral, "test");
  EXPECT_EQ(c.num_experts, 8);
  EXPECT_EQ(c.num_experts_per_tok, 2);  // MixtralConfig's default
  EXPECT_EQ(c.moe_intermediate_size, 96);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_EQ(c.sliding_window, (std::vector<int32_t>{0, 0}));
  mixtral["sliding_window"] = 16;
  EXPECT_EQ(parse_model_config(mixtral, "test").sliding_window, (std::vector<int32_t>{16, 16}));
  mixtral["num_experts_per_tok"] = 9;
  EXPECT_THROW(parse_model_config(mixtral, "test"), Error);

  nlohmann::json qwen = {{"architectures", {"Qwen3MoeForCausalLM"}},
                         {"vocab_size", 100},
                         {"hidden_size", 64},
                         {"num_hidden_layers", 2},
                         {"num_attention_heads", 4},
                         {"num_key_value_heads", 2},
                         {"num_experts", 16},
                         {"moe_intermediate_size", 24}};
  c = parse_model_config(qwen, "test");
  EXPECT_EQ(c.num_experts_per_tok, 8);
  EXPECT_EQ(c.moe_intermediate_size, 24);
  EXPECT_FALSE(c.norm_topk_prob);  // Qwen3MoeConfig's default; the released models set true
  EXPECT_TRUE(c.qk_norm);
  qwen["mlp_only_layers"] = {1};
  EXPECT_THROW(parse_model_config(qwen, "test"), Error);
  // Qwen2-MoE: Qwen2's q/k/v biases, 4 experts per token by default, a shared expert.
  qwen["architectures"] = {"Qwen2MoeForCausalLM"};
  qwen.erase("mlp_only_layers");
  qwen["shared_expert_intermediate_size"] = 80;
  c = parse_model_config(qwen, "test");
  EXPECT_EQ(c.arch, Arch::kQwen2Moe);
  EXPECT_EQ(c.num_experts_per_tok, 4);
  EXPECT_EQ(c.shared_expert_intermediate_size, 80);
  EXPECT_TRUE(c.attention_bias);
  EXPECT_FALSE(c.qk_norm || c.o_proj_bias);
}

// DeepSeek-V3's fields: the latent attention's dims (the cached "head" is latent + rope),
// grouped routing, shared experts, dense first layers; refused variants name themselves.
TEST(ModelConfig, DeepseekV3Fields) {
  nlohmann::json j = {{"architectures", {"DeepseekV3ForCausalLM"}},
                      {"vocab_size", 100},
                      {"hidden_size", 64},
                      {"intermediate_size", 96},
                      {"num_hidden_layers", 3},
                      {"num_attention_heads", 4},
                      {"num_key_value_heads", 4},
                      {"q_lora_rank", 24},
                      {"kv_lora_rank", 32},
                      {"qk_nope_head_dim", 16},
                      {"qk_rope_head_dim", 8},
                      {"v_head_dim", 12},
                      {"n_routed_experts", 8},
                      {"n_shared_experts", 2},
                      {"num_experts_per_tok", 2},
                      {"moe_intermediate_size", 20},
                      {"n_group", 4},
                      {"topk_group", 2},
                      {"routed_scaling_factor", 2.5},
                      {"first_k_dense_replace", 1},
                      {"rope_scaling",
                       {{"type", "yarn"},
                        {"factor", 40.0},
                        {"mscale", 1.0},
                        {"mscale_all_dim", 1.0},
                        {"original_max_position_embeddings", 4096}}}};
  const ModelConfig c = parse_model_config(j, "test");
  EXPECT_TRUE(c.mla());
  EXPECT_EQ(c.head_dim, 40);
  EXPECT_EQ(c.num_kv_heads, 1);
  EXPECT_EQ(c.rotary_dim(), 8);
  EXPECT_EQ(c.shared_expert_intermediate_size, 40);
  EXPECT_FALSE(c.shared_expert_gated);
  EXPECT_TRUE(c.sigmoid_grouped_routing && c.norm_topk_prob);
  EXPECT_EQ(c.first_dense_layers, 1);
  EXPECT_DOUBLE_EQ(c.routed_scaling_factor, 2.5);
  for (const auto& [key, value] : std::vector<std::pair<std::string, nlohmann::json>>{
           {"scoring_func", "softmax"}, {"topk_group", 5}, {"rope_interleave", false}}) {
    nlohmann::json bad = j;
    bad[key] = value;
    EXPECT_THROW(parse_model_config(bad, "test"), Error) << key;
  }
}

TEST(ModelConfig, ReadsEveryArchitectureRule) {
  nlohmann::json base = {{"architectures", {"Gemma2ForCausalLM"}},
                         {"vocab_size", 10},
                         {"hidden_size", 8},
                         {"intermediate_size", 16},
                         {"num_hidden_layers", 4},
                         {"num_attention_heads", 2},
                         {"num_key_value_heads", 1},
                         {"head_dim", 6},
                         {"sliding_window", 3},
                         {"query_pre_attn_scalar", 9},
                         {"torch_dtype", "bfloat16"},
                         {"eos_token_id", {1, 7}}};
  ModelConfig g = parse_model_config(base, "test");
  EXPECT_EQ(g.head_dim, 6);
  EXPECT_EQ(g.sliding_window, (std::vector<int32_t>{3, 0, 3, 0}));  // even layers slide
  EXPECT_FLOAT_EQ(g.attention_scale(), 1.0f / 3.0f);
  EXPECT_TRUE(g.tie_word_embeddings && g.norm_unit_offset && g.sandwich_norms);
  EXPECT_EQ(g.eos_token_ids, (std::vector<int32_t>{1, 7}));
  base["layer_types"] = {"full_attention", "sliding_attention", "full_attention", "full_attention"};
  EXPECT_EQ(parse_model_config(base, "test").sliding_window, (std::vector<int32_t>{0, 3, 0, 0}));
  base["layer_types"] = {"chunked_attention", "full_attention", "full_attention", "full_attention"};
  EXPECT_NE(error_of([&] { parse_model_config(base, "test"); }).find("unsupported layer type"),
            std::string::npos);
  base.erase("layer_types");
  base["architectures"] = {"Qwen2ForCausalLM"};
  base["use_sliding_window"] = true;
  base["max_window_layers"] = 2;
  EXPECT_EQ(parse_model_config(base, "test").sliding_window, (std::vector<int32_t>{0, 0, 3, 3}));
  base["rope_scaling"] = {{"rope_type", "longrope"}};
  EXPECT_NE(
      error_of([&] { parse_model_config(base, "test"); }).find("unsupported rope_scaling type"),
      std::string::npos);
}

TEST(ModelConfig, Llama3RopeScalingMatchesTheFormula) {
  nlohmann::json c = {{"architectures", {"LlamaForCausalLM"}},
                      {"vocab_size", 10},
                      {"hidden_size", 256},
                      {"intermediate_size", 16},
                      {"num_hidden_layers", 1},
                      {"num_attention_heads", 2},
                      {"rope_theta", 500000.0},
                      {"rope_scaling",
                       {{"rope_type", "llama3"},
                        {"factor", 8.0},
                        {"low_freq_factor", 1.0},
                        {"high_freq_factor", 4.0},
                        {"original_max_position_embeddings", 8192}}}};
  ModelConfig config = parse_model_config(c, "test");
  float scaling = 0;
  std::vector<float> inv = rope_inv_freq(config, &scaling);
  ASSERT_EQ(inv.size(), 64u);
  EXPECT_EQ(scaling, 1.0f);
  for (size_t i = 0; i < inv.size(); ++i) {
    const double base = 1.0 / std::pow(500000.0, 2.0 * i / 128.0);
    const double wavelen = 2 * M_PI / base;
    double expect = base;
    if (wavelen > 8192.0) {
      expect = base / 8;
    } else if (wavelen >= 8192.0 / 4) {
      const double smooth = (8192.0 / wavelen - 1) / 3;
      expect = (1 - smooth) * base / 8 + smooth * base;
    }
    EXPECT_NEAR(inv[i], expect, 1e-6 * expect) << i;
  }
}

}  // namespace
}  // namespace tessera
