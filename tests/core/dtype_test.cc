// FP8 E4M3 conversions against their definition: every code decoded from its bit fields, and
// rounding checked against a brute-force search over all 256 codes.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "core/dtype.h"

namespace tessera {
namespace {

// The value of a code from the format's definition (sign, 4-bit exponent with bias 7, 3-bit
// mantissa, subnormals at exponent 0; 0x7f and 0xff are NaN).
double e4m3_definition(int code) {
  const int s = code >> 7, e = (code >> 3) & 15, m = code & 7;
  if (e == 15 && m == 7) return std::numeric_limits<double>::quiet_NaN();
  const double mag = e == 0 ? m / 8.0 * std::pow(2.0, -6) : (1 + m / 8.0) * std::pow(2.0, e - 7);
  return s ? -mag : mag;
}

TEST(Fp8E4M3, DecodesEveryCode) {
  for (int c = 0; c < 256; ++c) {
    const double want = e4m3_definition(c);
    const float got = fp8_e4m3_to_f32(static_cast<uint8_t>(c));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << c;
    } else {
      EXPECT_EQ(static_cast<double>(got), want) << c;
    }
  }
  EXPECT_EQ(fp8_e4m3_to_f32(0x7e), kFp8E4M3Max);
  EXPECT_EQ(fp8_e4m3_to_f32(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
}

TEST(Fp8E4M3, EveryCodeRoundTrips) {
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7f) == 0x7f) continue;  // NaN
    const float v = fp8_e4m3_to_f32(static_cast<uint8_t>(c));
    EXPECT_EQ(f32_to_fp8_e4m3(v), c == 0x80 ? 0x80 : c) << c;
  }
}

// The nearest finite code by search; ties go to the even mantissa (the even code).
int nearest_code(float x) {
  int best = -1;
  double best_err = 0;
  for (int c = 0; c < 256; ++c) {
    const double v = e4m3_definition(c);
    if (std::isnan(v)) continue;
    if (std::signbit(v) != std::signbit(x)) continue;  // keep the sign (also of zero)
    const double err = std::fabs(v - static_cast<double>(x));
    if (best < 0 || err < best_err || (err == best_err && (c & 1) == 0)) {
      best = c;
      best_err = err;
    }
  }
  return best;
}

TEST(Fp8E4M3, RoundsToNearestEvenAndSaturates) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> log_mag(-13.0f, 9.5f);
  for (int i = 0; i < 20000; ++i) {
    float x = std::exp2(log_mag(rng)) * ((rng() & 1) ? -1.0f : 1.0f);
    if (std::fabs(x) > kFp8E4M3Max) {
      EXPECT_EQ(f32_to_fp8_e4m3(x), x < 0 ? 0xfe : 0x7e) << x;
      continue;
    }
    ASSERT_EQ(f32_to_fp8_e4m3(x), nearest_code(x)) << x;
  }
  // Exact midpoints between neighbours go to the even code.
  for (int c = 0; c < 0x7d; ++c) {
    const float lo = fp8_e4m3_to_f32(static_cast<uint8_t>(c));
    const float hi = fp8_e4m3_to_f32(static_cast<uint8_t>(c + 1));
    const float mid = (lo + hi) / 2;  // exact in f32
    EXPECT_EQ(f32_to_fp8_e4m3(mid), (c % 2 == 0) ? c : c + 1) << mid;
  }
  EXPECT_EQ(f32_to_fp8_e4m3(1e9f), 0x7e);
  EXPECT_EQ(f32_to_fp8_e4m3(std::numeric_limits<float>::quiet_NaN()), 0x7f);
}

}  // namespace
}  // namespace tessera
