// Tensor views and copies against index arithmetic.
#include <gtest/gtest.h>

#include "core/tensor.h"

namespace tessera {
namespace {

TEST(Tensor, TransposedCopiesEveryElementAcrossBlockEdges) {
  // 37 x 70 crosses the 32-element blocks; a column slice gives a row stride wider than the row.
  Tensor wide = Tensor::empty({37, 75}, DType::kF32);
  for (int64_t i = 0; i < 37 * 75; ++i) wide.data<float>()[i] = static_cast<float>(i);
  Tensor x = wide.slice(1, 3, 73);
  Tensor t = x.transposed();
  ASSERT_EQ(t.size(0), 70);
  ASSERT_EQ(t.size(1), 37);
  ASSERT_TRUE(t.is_contiguous());
  for (int64_t r = 0; r < 37; ++r)
    for (int64_t c = 0; c < 70; ++c)
      ASSERT_EQ(t.data<float>()[c * 37 + r], static_cast<float>(r * 75 + c + 3));
}

TEST(Tensor, TransposedKeepsSixteenBitValues) {
  Tensor x = Tensor::empty({3, 2}, DType::kBF16);
  for (int i = 0; i < 6; ++i) x.data<uint16_t>()[i] = static_cast<uint16_t>(0x3f80 + i);
  Tensor t = x.transposed();
  EXPECT_EQ(t.dtype(), DType::kBF16);
  const uint16_t want[6] = {0x3f80, 0x3f82, 0x3f84, 0x3f81, 0x3f83, 0x3f85};
  for (int i = 0; i < 6; ++i) EXPECT_EQ(t.data<uint16_t>()[i], want[i]) << i;
}

}  // namespace
}  // namespace tessera
