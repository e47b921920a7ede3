#include "kernels/cpu/cpu_backend.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "core/sys.h"

#include "core/status.h"

namespace tessera {

namespace {

void check_rows(const Tensor& t, const char* what) {
  TESSERA_CHECK(t.device() == Device::kCPU) << what << " is not on the CPU";
  TESSERA_CHECK(t.dim() == 2) << what << " must be 2-d, got " << t.shape_string();
  TESSERA_CHECK(t.stride(1) == 1 || t.size(1) <= 1) << what << " rows must be contiguous";
}

void check_f32_rows(const Tensor& t, const char* what) {
  check_rows(t, what);
  TESSERA_CHECK(t.dtype() == DType::kF32) << what << " must be f32, got " << dtype_name(t.dtype());
}

// Rows of work per task so that tiny ops do not pay for waking threads.
int64_t min_rows_per_thread(int64_t width) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(width, 1));
}

}  // namespace

const char* CpuBackend::op_name(Op op) {
  static const char* kNames[] = {"embedding",  "linear",           "rms_norm",    "rope_table",
                                 "rope",       "gated_activation", "add",         "layer_norm",
                                 "activation", "softcap",          "gather_rows", "add_rows_scaled",
                                 "write_kv",   "paged_attention"};
  return kNames[static_cast<int>(op)];
}

CpuBackend::~CpuBackend() {
  if (!profile_) return;
  double total = 0;
  for (const auto& e : profile_->entries) total += e.seconds;
  std::fprintf(stderr, "cpu backend op profile (TESSERA_PROFILE):\n");
  for (int i = 0; i < kNumOps; ++i) {
    const auto& e = profile_->entries[i];
    if (e.calls == 0) continue;
    std::fprintf(stderr, "  %-18s %9lld calls %9.3f s %5.1f%%\n", op_name(static_cast<Op>(i)),
                 static_cast<long long>(e.calls), e.seconds,
                 100 * e.seconds / std::max(total, 1e-9));
  }
}

CpuBackend::CpuBackend(ThreadPool& pool, cpu::Isa isa, MatmulPrecision precision, bool fp8_weights)
    : pool_(pool),
      isa_(isa),
      gemm_(isa == cpu::Isa::kAvx512 ? cpu::gemm_kernels_avx512() : cpu::gemm_kernels_generic()),
      ops_(isa == cpu::Isa::kAvx512 ? cpu::ops_kernels_avx512() : cpu::ops_kernels_generic()),
      precision_(precision),
      fp8_weights_(fp8_weights),
      attn_scratch_(pool.size()) {
  if (const char* env = std::getenv("TESSERA_PROFILE"); env && *env && std::string(env) != "0")
    profile_ = std::make_unique<Profile>();
}

std::string CpuBackend::name() const {
  return "cpu (" + std::string(cpu::isa_name(isa_)) + ", " + std::to_string(pool_.size()) +
         " threads, " + (precision_ == MatmulPrecision::kExact ? "exact" : "bf16") + " matmuls" +
         (fp8_weights_ ? ", fp8 weights" : "") + ")";
}

Tensor CpuBackend::empty(std::span<const int64_t> shape, DType dtype) {
  Tensor t = Tensor::empty(shape, dtype);
  return Tensor::wrap(t.raw(), shape, dtype,
                      meter_.track(t.owner(), static_cast<int64_t>(t.nbytes())));
}

void CpuBackend::copy(const Tensor& src, const Tensor& dst) {
  TESSERA_CHECK(src.dtype() == dst.dtype() && src.numel() == dst.numel());
  Tensor s = src.contiguous();
  if (dst.is_contiguous()) {
    std::memcpy(dst.raw(), s.raw(), s.nbytes());
    return;
  }
  check_rows(dst, "copy destination");
  size_t row_bytes = dst.size(1) * dtype_size(dst.dtype());
  for (int64_t r = 0; r < dst.size(0); ++r)
    std::memcpy(static_cast<char*>(dst.raw()) + r * dst.stride(0) * dtype_size(dst.dtype()),
                static_cast<const char*>(s.raw()) + r * row_bytes, row_bytes);
}

void CpuBackend::fill_zero(const Tensor& dst) {
  TESSERA_CHECK(dst.is_contiguous());
  // In parallel chunks: a large buffer (the KV cache) is committed by both cores at once.
  const size_t bytes = dst.nbytes();
  constexpr size_t kChunk = 1u << 22;
  const int64_t chunks = static_cast<int64_t>((bytes + kChunk - 1) / kChunk);
  char* base = static_cast<char*>(dst.raw());
  auto body = [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c)
      std::memset(base + c * kChunk, 0, std::min(kChunk, bytes - c * kChunk));
  };
  if (chunks > 1)
    pool_.parallel_for(chunks, body);
  else
    body(0, chunks);
}

void CpuBackend::embedding(const Tensor& table, const Tensor& ids, int64_t vocab_start, float scale,
                           const Tensor& out) {
  OpTimer timer(profile_, Op::kEmbedding);
  check_rows(table, "embedding table");
  check_f32_rows(out, "embedding output");
  TESSERA_CHECK(ids.dtype() == DType::kI32 && ids.numel() == out.size(0));
  TESSERA_CHECK_EQ(table.size(1), out.size(1));
  const int64_t width = out.size(1), rows = table.size(0);
  const int32_t* id = ids.data<int32_t>();
  pool_.parallel_for(out.size(0), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      float* o = out.data<float>() + t * out.stride(0);
      int64_t r = static_cast<int64_t>(id[t]) - vocab_start;
      if (r < 0 || r >= rows) {
        std::fill(o, o + width, 0.0f);
        continue;
      }
      if (table.layout() == cpu::kLayoutBf16Tiles) {  // a tied LM head's packed weight
        const uint16_t* packed = table.data<uint16_t>();
        for (int64_t i = 0; i < width; ++i)
          o[i] = bf16_to_f32(cpu::packed_bf16_at(packed, width, r, i)) * scale;
        continue;
      }
      const char* src = static_cast<const char*>(table.raw()) +
                        r * table.stride(0) * static_cast<int64_t>(dtype_size(table.dtype()));
      for (int64_t i = 0; i < width; ++i) o[i] = load_as_f32(src, table.dtype(), i) * scale;
    }
  });
}

Tensor CpuBackend::prepare_linear_weight(Tensor w) {
  if (!gemm_.bf16_packed || w.dtype() != DType::kBF16 || w.layout() != 0 || w.dim() != 2) return w;
  check_rows(w, "linear weight");
  const int64_t n = w.size(0), k = w.size(1), groups = cpu::round_up(n, 16) / 16;
  const int64_t stride = cpu::tile_stride(k);
  // Group g's packed values take exactly the bytes of rows [16g, 16g + 16) when n and k need no
  // padding, so a weight that nothing else holds is packed in place (no second copy of the
  // model, no fresh pages to fault in); otherwise into a new buffer.
  const bool in_place =
      n % 16 == 0 && k % 2 == 0 && w.is_contiguous() && w.owner() && w.owner().use_count() == 1;
  if (in_place) {
    uint16_t* base = w.data<uint16_t>();
    pool_.parallel_for(groups, [&](int64_t b, int64_t e) {
      std::vector<uint16_t> rows(static_cast<size_t>(16 * k));  // [16, k]: the group's rows
      for (int64_t g = b; g < e; ++g) {
        std::memcpy(rows.data(), base + g * stride, rows.size() * sizeof(uint16_t));
        cpu::pack_bf16_tiles(rows.data(), k, 16, k, base + g * stride, 0, 1);
      }
    });
    return w.with_layout(cpu::kLayoutBf16Tiles);
  }
  Tensor buf = Tensor::empty({cpu::packed_bf16_elems(n, k)}, DType::kBF16);
  const uint16_t* src = w.data<uint16_t>();
  pool_.parallel_for(groups, [&](int64_t b, int64_t e) {
    cpu::pack_bf16_tiles(src, w.stride(0), n, k, buf.data<uint16_t>(), b, e);
  });
  const int64_t shape[] = {n, k};
  return Tensor::wrap(buf.raw(), shape, DType::kBF16, buf.owner())
      .with_layout(cpu::kLayoutBf16Tiles);
}

Tensor CpuBackend::prepare_layer_weight(Tensor w, std::span<const float> row_absmax) {
  if (!fp8_weights_) return prepare_linear_weight(std::move(w));
  check_rows(w, "linear weight");
  TESSERA_CHECK(w.layout() == 0) << "linear weight in an unknown layout";
  TESSERA_CHECK(is_float(w.dtype()) && w.dtype() != DType::kF64)
      << "FP8 quantization of a " << dtype_name(w.dtype()) << " weight";
  const int64_t n = w.size(0), k = w.size(1), groups = cpu::round_up(n, 16) / 16;
  TESSERA_CHECK(row_absmax.empty() || static_cast<int64_t>(row_absmax.size()) == n);
  Tensor buf = Tensor::empty({cpu::packed_fp8_bytes(n, k)}, DType::kU8);
  const int64_t codes = cpu::round_up(n, 16) * k;  // then padding up to the scales
  std::memset(buf.data<uint8_t>() + codes, 0, cpu::fp8_scales_offset(n, k) - codes);
  pool_.parallel_for(groups, [&](int64_t b, int64_t e) {
    cpu::pack_fp8_tiles(w.raw(), w.dtype(), w.stride(0), n, k,
                        row_absmax.empty() ? nullptr : row_absmax.data(), buf.data<uint8_t>(), b,
                        e);
  });
  quantization_saved_bytes_ += static_cast<int64_t>(w.nbytes()) - buf.numel();
  const int64_t shape[] = {n, k};
  return Tensor::wrap(buf.raw(), shape, DType::kU8, buf.owner()).with_layout(cpu::kLayoutFp8Tiles);
}

Tensor CpuBackend::prepare_fp8_layer_weight(const Tensor& codes, const Tensor& scales,
                                            int64_t block_cols, int64_t block_offset) {
  TESSERA_CHECK(codes.dtype() == DType::kF8E4M3 && codes.dim() == 2 && codes.stride(1) == 1 &&
                codes.layout() == 0)
      << "FP8 codes " << codes.shape_string();
  const int64_t n = codes.size(0), k = codes.size(1), groups = cpu::round_up(n, 16) / 16;
  const bool blocks = block_cols > 0;
  const int64_t bc = blocks ? block_cols : k, off = blocks ? block_offset : 0;
  TESSERA_CHECK(0 <= off && off < bc);
  const int64_t chunks = (k + off + bc - 1) / bc;
  TESSERA_CHECK(scales.dtype() == DType::kF32 && scales.is_contiguous() &&
                scales.numel() == n * chunks)
      << "FP8 scales " << scales.shape_string() << " for codes " << codes.shape_string();
  const int64_t shape[] = {n, k};
  if (!blocks) {
    Tensor buf = Tensor::empty({cpu::packed_fp8_bytes(n, k)}, DType::kU8);
    const int64_t used = cpu::round_up(n, 16) * k;  // then padding up to the scales
    std::memset(buf.data<uint8_t>() + used, 0, cpu::fp8_scales_offset(n, k) - used);
    pool_.parallel_for(groups, [&](int64_t b, int64_t e) {
      cpu::pack_fp8_codes(codes.data<uint8_t>(), codes.stride(0), n, k, scales.data<float>(),
                          buf.data<uint8_t>(), b, e);
    });
    return Tensor::wrap(buf.raw(), shape, DType::kU8, buf.owner())
        .with_layout(cpu::kLayoutFp8Tiles);
  }
  // The codes in whole-row groups (each group's inputs one stream, as without blocks), then each
  // chunk's scales for every row.
  Tensor buf = Tensor::empty({cpu::packed_fp8_blocks_bytes(n, k, chunks)}, DType::kU8);
  uint8_t* p = buf.data<uint8_t>();
  std::memset(p, 0, cpu::kFp8BlocksHeader);
  const int64_t header[3] = {bc, off, chunks};
  std::memcpy(p, header, sizeof header);
  const int64_t used = cpu::kFp8BlocksHeader + cpu::round_up(n, 16) * k;
  std::memset(p + used, 0, cpu::fp8_blocks_scales_offset(n, k) - used);
  pool_.parallel_for(groups, [&](int64_t b, int64_t e) {
    cpu::pack_fp8_codes(codes.data<uint8_t>(), codes.stride(0), n, k, nullptr,
                        p + cpu::kFp8BlocksHeader, b, e);
  });
  const int64_t np = cpu::round_up(n, 16);
  float* out = reinterpret_cast<float*>(p + cpu::fp8_blocks_scales_offset(n, k));
  for (int64_t c = 0; c < chunks; ++c)
    for (int64_t j = 0; j < np; ++j)
      out[c * np + j] = j < n ? scales.data<float>()[j * chunks + c] : 1.0f;
  return Tensor::wrap(buf.raw(), shape, DType::kU8, buf.owner()).with_layout(cpu::kLayoutFp8Blocks);
}

namespace {

// Columns [lo, hi) of a kLayoutFp8Blocks weight, a row-major or (lda = -1) in pack_tiles'
// layout. Column blocks of a few groups at a time (the inputs of their groups stream on from
// chunk to chunk): the first chunk's product goes to c, each later chunk's to a scratch block
// that is then added; then the bias.
void gemm_fp8_blocks(const cpu::GemmKernels& g, const float* a, int64_t lda, int64_t m, int64_t k,
                     const uint8_t* packed, int64_t n, int64_t lo, int64_t hi, float* c,
                     int64_t ldc, const float* bias) {
  int64_t h[3];
  std::memcpy(h, packed, sizeof h);
  const int64_t bc = h[0], off = h[1], chunks = h[2], np = cpu::round_up(n, 16);
  const uint8_t* codes = packed + cpu::kFp8BlocksHeader;
  const float* scales =
      reinterpret_cast<const float*>(packed + cpu::fp8_blocks_scales_offset(n, k));
  // Input k0 of row 0: a column offset, or k0 values into the first tile.
  const bool tiled = lda < 0;
  const int64_t a_step = tiled ? g.tile_rows : 1, tile_k = tiled ? k : 0;
  // Decode rows: 8 groups (one tile of the kernel); more rows: 32 groups per pass over a.
  const int64_t span = m <= 12 ? 128 : 512;
  thread_local std::vector<float> tmp;
  for (int64_t s0 = lo; s0 < hi;) {
    const int64_t base = s0 / 16 * 16, s1 = std::min(hi, (s0 / span + 1) * span);
    const int64_t width = s1 - base;  // columns [base, s1) of the scratch block
    tmp.resize(static_cast<size_t>(m * width));
    for (int64_t ch = 0; ch < chunks; ++ch) {
      const int64_t k0 = std::max<int64_t>(0, ch * bc - off), k1 = std::min(k, (ch + 1) * bc - off);
      const uint8_t* cg = codes + (base / 16) * 16 * k + k0 * 16;
      const float* sc = scales + ch * np + base;
      if (ch == 0) {
        g.gemm_fp8_codes(a + k0 * a_step, lda, tile_k, m, k1 - k0, cg, 16 * k, sc, s0 - base,
                         s1 - base, c + base, ldc);
        continue;
      }
      g.gemm_fp8_codes(a + k0 * a_step, lda, tile_k, m, k1 - k0, cg, 16 * k, sc, s0 - base,
                       s1 - base, tmp.data(), width);
      for (int64_t i = 0; i < m; ++i) {
        float* ci = c + i * ldc;
        const float* ti = tmp.data() + i * width;
        for (int64_t j = s0; j < s1; ++j) ci[j] += ti[j - base];
      }
    }
    if (bias)
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = s0; j < s1; ++j) c[i * ldc + j] += bias[j];
    s0 = s1;
  }
}

}  // namespace

void CpuBackend::linear(const Tensor& x, std::span<const LinearSegment> segments,
                        const Tensor& out) {
  OpTimer timer(profile_, Op::kLinear);
  check_f32_rows(x, "linear input");
  check_f32_rows(out, "linear output");
  const int64_t m = x.size(0), k = x.size(1);
  TESSERA_CHECK_EQ(out.size(0), m);
  int64_t n_total = 0;
  // Per segment: its weight packed for gemm_bf16 (prepared at load, or packed here for a bf16
  // weight that was not), or null for the stored-layout path.
  if (packed_.size() < segments.size()) packed_.resize(segments.size());
  std::vector<const uint16_t*> packed(segments.size(), nullptr);
  std::vector<const uint8_t*> fp8(segments.size(), nullptr);         // kLayoutFp8Tiles weights
  std::vector<const uint8_t*> fp8_blocks(segments.size(), nullptr);  // kLayoutFp8Blocks
  for (size_t s = 0; s < segments.size(); ++s) {
    const LinearSegment& seg = segments[s];
    check_rows(seg.weight, "linear weight");
    TESSERA_CHECK(seg.weight.size(1) == k)
        << "weight " << seg.weight.shape_string() << " vs input " << x.shape_string();
    if (seg.bias.defined())
      TESSERA_CHECK(seg.bias.dtype() == DType::kF32 && seg.bias.numel() == seg.weight.size(0));
    n_total += seg.weight.size(0);
    if (seg.weight.layout() == cpu::kLayoutBf16Tiles) {
      TESSERA_CHECK(gemm_.bf16_packed) << "packed weight on a backend without the packed kernels";
      packed[s] = seg.weight.data<uint16_t>();
    } else if (seg.weight.layout() == cpu::kLayoutFp8Tiles) {
      fp8[s] = seg.weight.data<uint8_t>();
    } else if (seg.weight.layout() == cpu::kLayoutFp8Blocks) {
      fp8_blocks[s] = seg.weight.data<uint8_t>();
    } else if (seg.weight.dtype() == DType::kBF16 && gemm_.bf16_packed && m > 0) {
      const int64_t n = seg.weight.size(0);
      packed_[s].resize(static_cast<size_t>(cpu::packed_bf16_elems(n, k)));
      cpu::pack_bf16_tiles(seg.weight.data<uint16_t>(), seg.weight.stride(0), n, k,
                           packed_[s].data(), 0, cpu::round_up(n, 16) / 16);
      packed[s] = packed_[s].data();
    } else {
      TESSERA_CHECK(seg.weight.layout() == 0) << "linear weight in an unknown layout";
    }
  }
  TESSERA_CHECK_EQ(out.size(1), n_total);
  if (m == 0 || n_total == 0) return;

  // Activations for the packed kernel: many rows are rearranged into row tiles (each tile one
  // stream of 12-value groups, cpu/gemm.h), and so are few rows when bf16 matmul precision
  // rounds them first; otherwise few rows are read in place.
  const bool any_packed =
      std::any_of(packed.begin(), packed.end(), [](auto p) { return p; }) ||
      std::any_of(fp8.begin(), fp8.end(), [](auto p) { return p; }) ||
      std::any_of(fp8_blocks.begin(), fp8_blocks.end(), [](auto p) { return p; });
  const bool round_bf16 = precision_ == MatmulPrecision::kBf16;
  const float* a = x.data<float>();
  int64_t lda = x.stride(0);
  if (any_packed && !gemm_.pack_tiles && round_bf16) {
    // The portable kernels read rows in place: round a row-major copy (FP8 weights here).
    act_.resize(static_cast<size_t>(m * k));
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < k; ++j) act_[i * k + j] = round_to_bf16(a[i * lda + j]);
    a = act_.data();
    lda = k;
  } else if (any_packed && gemm_.pack_tiles && (m >= gemm_.tile_rows || round_bf16)) {
    const int64_t tiles = (m + gemm_.tile_rows - 1) / gemm_.tile_rows;
    const size_t need = static_cast<size_t>(tiles * gemm_.tile_rows * k);
    if (act_.size() < need) act_.resize(need);
    pool_.parallel_for(tiles, [&](int64_t b, int64_t e) {
      gemm_.pack_tiles(x.data<float>(), x.stride(0), m, k, act_.data(), b, e, round_bf16);
    });
    a = act_.data();
    lda = -1;
  }

  // Each thread takes a contiguous range of output columns, which may span several segments.
  auto run_columns = [&](int64_t col_begin, int64_t col_end) {
    int64_t seg_start = 0;
    for (size_t s = 0; s < segments.size(); ++s) {
      const LinearSegment& seg = segments[s];
      const int64_t rows = seg.weight.size(0);
      const int64_t lo = std::max(col_begin, seg_start), hi = std::min(col_end, seg_start + rows);
      if (lo < hi) {
        const int64_t local = lo - seg_start;
        if (packed[s]) {
          gemm_.gemm_bf16(a, lda, m, k, packed[s], local, hi - seg_start,
                          out.data<float>() + seg_start, out.stride(0),
                          seg.bias.defined() ? seg.bias.data<float>() : nullptr);
        } else if (fp8[s]) {
          gemm_.gemm_fp8(a, lda, m, k, fp8[s], rows, local, hi - seg_start,
                         out.data<float>() + seg_start, out.stride(0),
                         seg.bias.defined() ? seg.bias.data<float>() : nullptr);
        } else if (fp8_blocks[s]) {
          gemm_fp8_blocks(gemm_, a, lda, m, k, fp8_blocks[s], rows, local, hi - seg_start,
                          out.data<float>() + seg_start, out.stride(0),
                          seg.bias.defined() ? seg.bias.data<float>() : nullptr);
        } else {
          const size_t elem = dtype_size(seg.weight.dtype());
          const void* w = static_cast<const char*>(seg.weight.raw()) +
                          static_cast<size_t>(local * seg.weight.stride(0)) * elem;
          const float* bias = seg.bias.defined() ? seg.bias.data<float>() + local : nullptr;
          gemm_.gemm_f32(x.data<float>(), x.stride(0), m, k, w, seg.weight.dtype(),
                         seg.weight.stride(0), hi - lo, out.data<float>() + lo, out.stride(0),
                         bias);
        }
      }
      seg_start += rows;
    }
  };
  const int threads = pool_.size();
  if (threads == 1 || n_total < 32) {
    run_columns(0, n_total);
    return;
  }
  // Threads take chunks of columns from a shared counter rather than fixed halves, so a thread
  // that the OS deschedules (the cores are shared with the engine and HTTP threads, or with
  // other programs) holds up one chunk, not half the op. Chunks are multiples of 48 columns for
  // the stored-layout kernels (full 4 x 4 .. 1 x 8 tiles), of 128 (8 groups) for packed decode
  // tiles and 32 (2 groups) for packed tiles of many rows; many rows take fewer, larger chunks
  // because each chunk re-reads all activations. A column's arithmetic does not depend on its
  // chunk.
  const int64_t per_thread = m >= 8 ? 2 : 8;
  const int64_t multiple = !any_packed ? 48 : m >= 12 ? 32 : 128;
  const int64_t chunk =
      cpu::round_up((n_total + threads * per_thread - 1) / (threads * per_thread), multiple);
  const int64_t chunks = (n_total + chunk - 1) / chunk;
  std::atomic<int64_t> next{0};
  pool_.run([&](int) {
    for (int64_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < chunks;)
      run_columns(c * chunk, std::min(n_total, (c + 1) * chunk));
  });
}

void CpuBackend::rms_norm(const Tensor& x, const Tensor& weight, float eps, bool unit_offset,
                          const Tensor& out) {
  OpTimer timer(profile_, Op::kRmsNorm);
  TESSERA_CHECK(x.dtype() == DType::kF32 && out.dtype() == DType::kF32);
  TESSERA_CHECK(weight.dtype() == DType::kF32 && weight.is_contiguous());
  const int64_t width = x.size(-1);
  TESSERA_CHECK_EQ(weight.numel(), width);
  TESSERA_CHECK(x.stride(-1) == 1 && out.stride(-1) == 1);
  if (x.dim() == 2) {
    TESSERA_CHECK(out.dim() == 2 && out.size(0) == x.size(0) && out.size(1) == width);
    int64_t rows = x.size(0);
    auto body = [&](int64_t begin, int64_t end) {
      ops_.rms_norm(x.data<float>() + begin * x.stride(0), x.stride(0),
                    out.data<float>() + begin * out.stride(0), out.stride(0), end - begin, width,
                    weight.data<float>(), eps, unit_offset);
    };
    if (rows < 2 * min_rows_per_thread(width)) {
      body(0, rows);
    } else {
      pool_.parallel_for(rows, body);
    }
    return;
  }
  // [tokens, heads, head_dim]: a norm per head (Qwen3's q/k norms).
  TESSERA_CHECK(x.dim() == 3 && out.dim() == 3 && x.size(1) == out.size(1));
  TESSERA_CHECK(x.stride(1) == width && out.stride(1) == width);
  const int64_t tokens = x.size(0), heads = x.size(1);
  auto body = [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t)
      ops_.rms_norm(x.data<float>() + t * x.stride(0), width, out.data<float>() + t * out.stride(0),
                    width, heads, width, weight.data<float>(), eps, unit_offset);
  };
  if (tokens * heads < 2 * min_rows_per_thread(width)) {
    body(0, tokens);
  } else {
    pool_.parallel_for(tokens, body);
  }
}

void CpuBackend::rope_table(const Tensor& positions, const Tensor& inv_freq,
                            float attention_scaling, const Tensor& table) {
  OpTimer timer(profile_, Op::kRopeTable);
  TESSERA_CHECK(positions.dtype() == DType::kI32 && inv_freq.dtype() == DType::kF32);
  TESSERA_CHECK(table.is_contiguous() && table.dim() == 2);
  const int rot_half = static_cast<int>(inv_freq.numel());
  TESSERA_CHECK_EQ(table.size(1), 2 * rot_half);
  TESSERA_CHECK_EQ(table.size(0), positions.numel());
  ops_.rope_table(positions.data<int32_t>(), positions.numel(), inv_freq.data<float>(), rot_half,
                  attention_scaling, table.data<float>());
}

void CpuBackend::rope(const Tensor& x, int head_dim, const Tensor& table) {
  OpTimer timer(profile_, Op::kRope);
  check_f32_rows(x, "rope input");
  TESSERA_CHECK(x.size(1) % head_dim == 0);
  TESSERA_CHECK(table.is_contiguous() && table.size(0) == x.size(0));
  const int rot_half = static_cast<int>(table.size(1) / 2);
  TESSERA_CHECK_LE(2 * rot_half, head_dim);
  const int heads = static_cast<int>(x.size(1) / head_dim);
  auto body = [&](int64_t begin, int64_t end) {
    ops_.rope(x.data<float>() + begin * x.stride(0), x.stride(0), end - begin, heads, head_dim,
              table.data<float>() + begin * table.size(1), rot_half);
  };
  if (x.size(0) < 2 * min_rows_per_thread(x.size(1))) {
    body(0, x.size(0));
  } else {
    pool_.parallel_for(x.size(0), body);
  }
}

void CpuBackend::gated_activation(const Tensor& gate_up, Activation act, const Tensor& out) {
  OpTimer timer(profile_, Op::kGatedActivation);
  check_f32_rows(gate_up, "gate_up");
  check_f32_rows(out, "activation output");
  const int64_t width = out.size(1);
  TESSERA_CHECK(gate_up.size(1) == 2 * width && gate_up.size(0) == out.size(0));
  auto body = [&](int64_t begin, int64_t end) {
    ops_.gated_activation(gate_up.data<float>() + begin * gate_up.stride(0), gate_up.stride(0),
                          out.data<float>() + begin * out.stride(0), out.stride(0), end - begin,
                          width, act);
  };
  pool_.parallel_for(out.size(0) == 1 ? 1 : out.size(0), body);
}

void CpuBackend::layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps,
                            const Tensor& out) {
  OpTimer timer(profile_, Op::kLayerNorm);
  check_f32_rows(x, "layer_norm input");
  check_f32_rows(out, "layer_norm output");
  const int64_t width = x.size(1);
  TESSERA_CHECK(out.size(0) == x.size(0) && out.size(1) == width);
  TESSERA_CHECK(weight.dtype() == DType::kF32 && weight.is_contiguous() && weight.numel() == width);
  TESSERA_CHECK(bias.dtype() == DType::kF32 && bias.is_contiguous() && bias.numel() == width);
  auto body = [&](int64_t begin, int64_t end) {
    ops_.layer_norm(x.data<float>() + begin * x.stride(0), x.stride(0),
                    out.data<float>() + begin * out.stride(0), out.stride(0), end - begin, width,
                    weight.data<float>(), bias.data<float>(), eps);
  };
  if (x.size(0) < 2 * min_rows_per_thread(width)) {
    body(0, x.size(0));
  } else {
    pool_.parallel_for(x.size(0), body);
  }
}

void CpuBackend::activation(const Tensor& x, Activation act, const Tensor& out) {
  OpTimer timer(profile_, Op::kActivation);
  check_f32_rows(x, "activation input");
  check_f32_rows(out, "activation output");
  TESSERA_CHECK(out.size(0) == x.size(0) && out.size(1) == x.size(1));
  auto body = [&](int64_t begin, int64_t end) {
    ops_.activation(x.data<float>() + begin * x.stride(0), x.stride(0),
                    out.data<float>() + begin * out.stride(0), out.stride(0), end - begin,
                    x.size(1), act);
  };
  pool_.parallel_for(x.size(0) == 1 ? 1 : x.size(0), body);
}

void CpuBackend::add(const Tensor& a, const Tensor& b, const Tensor& out) {
  OpTimer timer(profile_, Op::kAdd);
  check_f32_rows(a, "add input");
  check_f32_rows(b, "add input");
  check_f32_rows(out, "add output");
  TESSERA_CHECK(a.size(0) == b.size(0) && a.size(1) == b.size(1) && a.size(0) == out.size(0) &&
                a.size(1) == out.size(1));
  auto body = [&](int64_t begin, int64_t end) {
    ops_.add(a.data<float>() + begin * a.stride(0), a.stride(0),
             b.data<float>() + begin * b.stride(0), b.stride(0),
             out.data<float>() + begin * out.stride(0), out.stride(0), end - begin, a.size(1));
  };
  if (a.size(0) < 2 * min_rows_per_thread(a.size(1))) {
    body(0, a.size(0));
  } else {
    pool_.parallel_for(a.size(0), body);
  }
}

void CpuBackend::softcap(const Tensor& x, float cap) {
  OpTimer timer(profile_, Op::kSoftcap);
  check_f32_rows(x, "softcap input");
  pool_.parallel_for(x.size(0), [&](int64_t begin, int64_t end) {
    ops_.softcap(x.data<float>() + begin * x.stride(0), x.stride(0), end - begin, x.size(1), cap);
  });
}

void CpuBackend::gather_rows(const Tensor& x, const Tensor& rows, const Tensor& out) {
  OpTimer timer(profile_, Op::kGatherRows);
  check_rows(x, "gather input");
  check_rows(out, "gather output");
  TESSERA_CHECK(rows.dtype() == DType::kI32 && rows.numel() == out.size(0));
  TESSERA_CHECK(x.dtype() == out.dtype() && x.size(1) == out.size(1));
  const size_t elem = dtype_size(x.dtype());
  const size_t row_bytes = x.size(1) * elem;
  for (int64_t i = 0; i < out.size(0); ++i) {
    int32_t r = rows.data<int32_t>()[i];
    TESSERA_CHECK(r >= 0 && r < x.size(0));
    std::memcpy(static_cast<char*>(out.raw()) + i * out.stride(0) * elem,
                static_cast<const char*>(x.raw()) + r * x.stride(0) * elem, row_bytes);
  }
}

void CpuBackend::argmax_rows(const Tensor& x, const Tensor& out) {
  TESSERA_CHECK(x.dim() == 2 && x.dtype() == DType::kF32 && x.stride(1) == 1);
  TESSERA_CHECK(out.dtype() == DType::kI32 && out.numel() == x.size(0) && out.is_contiguous());
  const int64_t rows = x.size(0), width = x.size(1);
  pool_.parallel_for(rows, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const float* v = x.data<float>() + r * x.stride(0);
      int64_t best = 0;
      for (int64_t i = 1; i < width; ++i)
        if (v[i] > v[best]) best = i;
      out.data<int32_t>()[r] = static_cast<int32_t>(best);
    }
  });
}

void CpuBackend::add_rows_scaled(const Tensor& x, const Tensor& rows, const Tensor& scale,
                                 const Tensor& out) {
  OpTimer timer(profile_, Op::kAddRowsScaled);
  check_f32_rows(x, "add_rows_scaled input");
  check_f32_rows(out, "add_rows_scaled output");
  const int64_t n = x.size(0), width = x.size(1);
  TESSERA_CHECK(rows.dtype() == DType::kI32 && rows.numel() == n);
  TESSERA_CHECK(scale.dtype() == DType::kF32 && scale.numel() == n);
  TESSERA_CHECK(out.size(1) == width);
  const int32_t* r = rows.data<int32_t>();
  const float* s = scale.data<float>();
  for (int64_t i = 0; i < n; ++i) TESSERA_CHECK(r[i] >= 0 && r[i] < out.size(0));
  // Rows are distinct, so the tasks never write the same row.
  auto body = [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* src = x.data<float>() + i * x.stride(0);
      float* dst = out.data<float>() + r[i] * out.stride(0);
      const float w = s[i];
      for (int64_t j = 0; j < width; ++j) dst[j] += w * src[j];
    }
  };
  if (n < 2 * min_rows_per_thread(width)) {
    body(0, n);
  } else {
    pool_.parallel_for(n, body);
  }
}

void CpuBackend::write_kv(const Tensor& k, const Tensor& v, const Tensor& k_cache,
                          const Tensor& v_cache, const AttentionMetadata& meta) {
  OpTimer timer(profile_, Op::kWriteKv);
  check_f32_rows(k, "k");
  check_f32_rows(v, "v");
  TESSERA_CHECK(k_cache.dim() == 4 && k_cache.is_contiguous() && v_cache.is_contiguous());
  const int64_t bs = k_cache.size(1), heads = k_cache.size(2), d = k_cache.size(3);
  TESSERA_CHECK(k.size(1) == heads * d && v.size(1) == heads * d);
  const int64_t slots = k_cache.size(0) * bs;
  const int32_t* slot = meta.slot_mapping.data<int32_t>();
  const DType dtype = k_cache.dtype();
  // Within a block, keys are [heads, d, block_size] (a tile of keys is d rows of contiguous
  // positions, ready for the score product) and values [heads, block_size, d]. Threads split the
  // heads: each writes its own part of every block, so none share cache lines.
  for (int64_t t = 0; t < k.size(0); ++t)
    if (slot[t] >= 0) TESSERA_CHECK_LT(slot[t], slots);
  auto body = [&](int64_t h0, int64_t h1) {
    for (int64_t t = 0; t < k.size(0); ++t) {
      if (slot[t] < 0) continue;
      const int64_t block = slot[t] / bs, off = slot[t] % bs;
      const float* kr = k.data<float>() + t * k.stride(0);
      const float* vr = v.data<float>() + t * v.stride(0);
      for (int64_t h = h0; h < h1; ++h) {
        const int64_t base = (block * heads + h) * d * bs;
        if (dtype == DType::kF32) {
          float* kc = k_cache.data<float>() + base + off;
          for (int64_t e = 0; e < d; ++e) kc[e * bs] = kr[h * d + e];
          std::memcpy(v_cache.data<float>() + base + off * d, vr + h * d, d * sizeof(float));
          continue;
        }
        for (int64_t e = 0; e < d; ++e) {
          store_from_f32(k_cache.raw(), dtype, base + e * bs + off, kr[h * d + e]);
          store_from_f32(v_cache.raw(), dtype, base + off * d + e, vr[h * d + e]);
        }
      }
    }
  };
  if (k.size(0) >= 16 && heads > 1)
    pool_.parallel_for(heads, body);
  else
    body(0, heads);
}

void CpuBackend::paged_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                                 const AttentionMetadata& meta, const AttentionParams& params,
                                 const Tensor& out) {
  OpTimer timer(profile_, Op::kPagedAttention);
  check_f32_rows(q, "q");
  check_f32_rows(out, "attention output");
  TESSERA_CHECK(params.num_kv_heads > 0 && params.num_heads % params.num_kv_heads == 0);
  TESSERA_CHECK_EQ(q.size(1), static_cast<int64_t>(params.num_heads) * params.head_dim);
  TESSERA_CHECK_EQ(k_cache.size(2), params.num_kv_heads);
  TESSERA_CHECK_EQ(k_cache.size(3), params.head_dim);
  TESSERA_CHECK_EQ(k_cache.size(1), meta.block_size);

  cpu::AttentionArgs args;
  args.q = q.data<float>();
  args.ldq = q.stride(0);
  args.k_cache = k_cache.raw();
  args.v_cache = v_cache.raw();
  args.kv_dtype = k_cache.dtype();
  args.query_start = meta.query_start.data<int32_t>();
  args.seq_lens = meta.seq_lens.data<int32_t>();
  args.block_tables = meta.block_tables.data<int32_t>();
  args.max_blocks = meta.block_tables.size(1);
  args.block_size = meta.block_size;
  args.out = out.data<float>();
  args.ldo = out.stride(0);
  args.params = params;

  struct Item {
    int seq, kv_head;
    int64_t begin, end;
  };
  std::vector<Item> items;
  const int64_t per_item = cpu::attention_rows_per_item(params);
  for (int s = 0; s < meta.num_seqs; ++s) {
    const int64_t begin = args.query_start[s], end = args.query_start[s + 1];
    for (int64_t r = begin; r < end; r += per_item)
      for (int h = 0; h < params.num_kv_heads; ++h)
        items.push_back({s, h, r, std::min(end, r + per_item)});
  }
  const size_t scratch = cpu::attention_scratch_floats(params, per_item);
  std::atomic<size_t> next{0};
  auto worker = [&](int t) {
    auto& buf = attn_scratch_[t];
    if (buf.size() < scratch) buf.resize(scratch);
    for (size_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < items.size();) {
      const Item& it = items[i];
      ops_.attention(args, it.seq, it.kv_head, it.begin, it.end, buf.data());
    }
  };
  if (items.size() == 1) {
    worker(0);
  } else {
    pool_.run(worker);
  }
}

}  // namespace tessera
