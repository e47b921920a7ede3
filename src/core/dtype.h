// Element types and the scalar conversions between the 16-bit floats and f32.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace tessera {

// kF8E4M3: FP8 checkpoints' weights ("F8_E4M3"); read by the loader and dequantized or handed to
// an FP8 kernel, never a kernel operand of its own (is_float() is false for it).
enum class DType : uint8_t { kF32, kF16, kBF16, kF64, kI64, kI32, kI16, kI8, kU8, kBool, kF8E4M3 };

size_t dtype_size(DType dtype);
// Safetensors spelling: "F32", "BF16", ...
std::string_view dtype_name(DType dtype);
// Parses the safetensors spelling; returns false for an unknown name.
bool parse_safetensors_dtype(std::string_view name, DType* out);
// Parses the config.json / CLI spelling: "float32", "bfloat16", "bf16", "half", ...
bool parse_torch_dtype(std::string_view name, DType* out);
bool is_float(DType dtype);

inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Round to nearest even; NaN stays NaN (quiet).
inline uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

inline float round_to_bf16(float f) {
  return bf16_to_f32(f32_to_bf16(f));
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// FP8 E4M3 ("e4m3fn", as in PyTorch and vLLM): 1 sign, 4 exponent (bias 7) and 3 mantissa bits,
// subnormals, no infinities, 0x7f / 0xff are NaN, largest finite value 448.
inline constexpr float kFp8E4M3Max = 448.0f;
float fp8_e4m3_to_f32(uint8_t v);
// Round to nearest even, saturating to +-448 (as PyTorch's cast after a clamp); NaN -> 0x7f.
uint8_t f32_to_fp8_e4m3(float f);

}  // namespace tessera
