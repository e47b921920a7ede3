#include "core/dtype.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/status.h"

namespace tessera {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kF64:
    case DType::kI64:
      return 8;
    case DType::kF32:
    case DType::kI32:
      return 4;
    case DType::kF16:
    case DType::kBF16:
    case DType::kI16:
      return 2;
    case DType::kI8:
    case DType::kU8:
    case DType::kBool:
    case DType::kF8E4M3:
      return 1;
  }
  TESSERA_CHECK(false) << "bad dtype";
  return 0;
}

std::string_view dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
    case DType::kF64:
      return "F64";
    case DType::kI64:
      return "I64";
    case DType::kI32:
      return "I32";
    case DType::kI16:
      return "I16";
    case DType::kI8:
      return "I8";
    case DType::kU8:
      return "U8";
    case DType::kBool:
      return "BOOL";
    case DType::kF8E4M3:
      return "F8_E4M3";
  }
  return "?";
}

bool parse_safetensors_dtype(std::string_view name, DType* out) {
  static constexpr struct {
    std::string_view name;
    DType dtype;
  } kNames[] = {{"F32", DType::kF32},   {"F16", DType::kF16},       {"BF16", DType::kBF16},
                {"F64", DType::kF64},   {"I64", DType::kI64},       {"I32", DType::kI32},
                {"I16", DType::kI16},   {"I8", DType::kI8},         {"U8", DType::kU8},
                {"BOOL", DType::kBool}, {"F8_E4M3", DType::kF8E4M3}};
  for (const auto& entry : kNames) {
    if (entry.name == name) {
      *out = entry.dtype;
      return true;
    }
  }
  return false;
}

bool parse_torch_dtype(std::string_view name, DType* out) {
  if (name.starts_with("torch.")) name.remove_prefix(6);
  if (name == "float32" || name == "float" || name == "f32" || name == "fp32") {
    *out = DType::kF32;
  } else if (name == "bfloat16" || name == "bf16") {
    *out = DType::kBF16;
  } else if (name == "float16" || name == "half" || name == "f16" || name == "fp16") {
    *out = DType::kF16;
  } else {
    return false;
  }
  return true;
}

bool is_float(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16 ||
         dtype == DType::kF64;
}

// IEEE half conversions written out so that results do not depend on F16C being present.
float f16_to_f32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0) {
    if (mantissa == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int shift = 0;
      while ((mantissa & 0x400u) == 0) {
        mantissa <<= 1;
        ++shift;
      }
      mantissa &= 0x3ffu;
      bits = sign | (static_cast<uint32_t>(127 - 15 + 1 - shift) << 23) | (mantissa << 13);
    }
  } else if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else {
    bits = sign | ((exponent + (127 - 15)) << 23) | (mantissa << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  uint32_t sign = (bits >> 16) & 0x8000u;
  uint32_t abs = bits & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);   // NaN
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (abs < 0x38800000u) {  // subnormal or zero in half
    if (abs < 0x33000000u) return static_cast<uint16_t>(sign);
    uint32_t exponent = abs >> 23;
    uint32_t mantissa = (abs & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - exponent;  // 14 + (112 - exponent) ... aligns to half subnormal
    uint32_t value = mantissa >> shift;
    uint32_t remainder = mantissa & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (remainder > half || (remainder == half && (value & 1u))) ++value;
    return static_cast<uint16_t>(sign | value);
  }
  uint32_t value = ((abs >> 13) - ((127 - 15) << 10));
  uint32_t remainder = abs & 0x1fffu;
  if (remainder > 0x1000u || (remainder == 0x1000u && (value & 1u))) ++value;
  return static_cast<uint16_t>(sign | value);
}

float fp8_e4m3_to_f32(uint8_t v) {
  const int exponent = (v >> 3) & 0xf, mantissa = v & 0x7;
  const float sign = (v & 0x80) ? -1.0f : 1.0f;
  if (exponent == 0xf && mantissa == 0x7) return std::numeric_limits<float>::quiet_NaN();
  if (exponent == 0) return sign * std::ldexp(static_cast<float>(mantissa), -9);
  return sign * std::ldexp(static_cast<float>(8 + mantissa), exponent - 10);
}

uint8_t f32_to_fp8_e4m3(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  const uint8_t sign = static_cast<uint8_t>(bits >> 24) & 0x80;
  const uint32_t mag = bits & 0x7fffffffu;
  if (mag > 0x7f800000u) return 0x7f;          // NaN
  if (mag >= 0x43e00000u) return sign | 0x7e;  // >= 448 (and inf): saturate
  if (mag < 0x3c800000u) {                     // below 2^-6: steps of 2^-9 (subnormals)
    float a;
    std::memcpy(&a, &mag, sizeof a);
    // Exact scaling, rounded to nearest even by the default rounding mode; 8 is the smallest
    // normal's code, which the encoding reaches by itself.
    return sign | static_cast<uint8_t>(std::nearbyint(a * 512.0f));
  }
  // Round the 23-bit mantissa to 3 bits, to nearest even; a carry moves into the exponent.
  const uint32_t r = (mag + 0x7ffffu + ((mag >> 20) & 1u)) >> 20;  // f32 exponent << 3 | 3 bits
  const uint32_t code = r - (120u << 3);                           // exponent bias 127 -> 7
  return code > 0x7e ? (sign | 0x7e) : static_cast<uint8_t>(sign | code);
}

}  // namespace tessera
