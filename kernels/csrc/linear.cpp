// Linear layer y = x @ W.T (+ b) for the CPU path, on a weight packed once at load: fp32 on FMAs, bf16 on vdpbf16ps
// (AVX512_BF16 builds).
//
// Why not oneDNN: in a decode step every layer's weights come from DRAM (SmolLM2's fp32 linears are 13x the L3), and
// at 64 rows oneDNN's packed matmuls then run at 310-430 GFLOP/s in fp32 (610-830 in bf16) on the 2-core AVX-512
// CPU, where the same calls with the weight in cache reach 410-500 (710-950). This kernel requests the next column
// panel of W while it computes the current one, so the weight stream hides behind the arithmetic: 390-490 GFLOP/s in
// fp32 (860-990 in bf16) at 64 rows with the weights in DRAM, and on a par with oneDNN at 1000 rows
// (benchmarks/linears_cpu.py, docs/KERNELS.md).
//
// Layout: W [N, K] is packed as ceil(N / NR) column panels, each [K][NR] (NR = two vectors, zero past N; bf16 keeps
// pairs of k together, [K / 2][NR][2]), so one k step of a panel is two vector loads. A tile holds R <= MR rows x NR
// columns of fp32 accumulators in registers: per k step it loads the panel's two vectors and broadcasts one x value
// (a bf16 pair) per row, 2R FMAs (dot products) for R + 2 loads. Each row's sum runs over k in order, one chain per
// output (no split over k), so a result does not depend on how many rows are in the call. The threads split the
// panels; every thread walks all rows against its own panels.
#include "vector.h"

// -O2, not the library's -O3: at -O3 GCC 12 parks one or both of the panel's vectors on the stack in some tile
// sizes (11 or 12 rows; which ones moved with unrelated edits) and feeds every FMA from memory, 1.2-2x slower at the
// row counts of most decode steps. At -O2 every tile size keeps its accumulators and the panel in registers.
#pragma GCC optimize("O2")

namespace {

constexpr int NR = 2 * W;
// Accumulators fill the register file: 2 * MR of 32 zmm (AVX-512), of 16 ymm (AVX2), with room for the two panel
// vectors and a broadcast.
constexpr int MR = W == 16 ? 14 : 6;
// Bytes of x rows a thread keeps against its panels at a time: half its L2 (1-2 MB a core on current CPUs).
constexpr int64_t CHUNK_BYTES = 512 << 10;

// Which rows of W a panel holds. PLAIN: rows [p NR, p NR + NR). GATED (a SiLU MLP's fused gate/up projection, N = 2I
// with I a multiple of W): gate rows [p W, p W + W) in its first vector and the up rows I after them in its second,
// so one tile has both halves of W outputs; tide_linear writes them back in place, or (GATED_SILU) their
// silu(gate) * up, y [M, I].
enum Layout { PLAIN = 0, GATED = 1, GATED_SILU = 2 };

inline vf fmadd(vf a, vf b, vf c) {
#if VW == 16 && defined(__AVX512F__)
  return (vf)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif VW == 8 && defined(__FMA__)
  return (vf)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
  return a * b + c;  // the tests' 16-wide build on AVX2: GCC splits it
#endif
}

// Exact fp32 scalar of one output: the chain a tile's lane computes (fused multiply-adds over k in order from 0), so
// it is the same bits as that output of tide_linear.
inline float chain(const float* x, const float* panel_lane, int64_t K) {
  float acc = 0.f;
  for (int64_t k = 0; k < K; ++k) {
#if (VW == 16 && defined(__AVX512F__)) || (VW == 8 && defined(__FMA__))
    acc = std::fma(x[k], panel_lane[k * NR], acc);
#else
    acc = x[k] * panel_lane[k * NR] + acc;  // as fmadd's fallback
#endif
  }
  return acc;
}

// A k step of a panel is 2W lanes x Step<T>::K k's: fp32 panels hold one k a step ([K][NR] floats); bf16 panels a
// pair of k's a step ([K / 2][NR][2]), the pairs vdpbf16ps multiplies and adds into one fp32 lane. Either way a step
// is 128 bytes of W.
template <typename T>
struct Step {
  static constexpr int K = std::is_same_v<T, float> ? 1 : 2;
};

template <typename T>
struct Call {
  int64_t K, ldx;
  const T* bias;  // [N] or null
  int64_t ldy, N;
  int layout;  // Layout
};

// A gated panel's gate and up vectors for one row, each with its bias: stored in place (GATED) or as
// silu(gate) * up (GATED_SILU), each rounded to T first as the separate silu_and_mul reads them.
template <typename T, typename O>
inline void store_gated(const Call<T>& c, vf gate, vf up, O* row, int64_t p) {
  const int64_t g0 = p * W, half = c.N / 2;
  if (c.bias != nullptr) gate += load(c.bias + g0), up += load(c.bias + half + g0);
  if (c.layout == GATED) {
    store(row + g0, gate);
    store(row + half + g0, up);
    return;
  }
  const T* tag = nullptr;
  store(row + g0, silu<T>(round_to(gate, tag)) * round_to(up, tag));
}

// Rows x[0, R) against one panel. `ahead` (or null) is the panel this thread computes next: its cache lines are
// requested during the k loop, one k step's worth per step, so they are in L2 by the time it starts.
template <typename T, typename O, int R>
void tile(const Call<T>& c, const T* x, const T* panel, O* y, int64_t p, const char* ahead) {
  vf acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = vf{};
  const int64_t steps = c.K / Step<T>::K;
  for (int64_t s = 0; s < steps; ++s) {
    if (ahead != nullptr) {
      for (int line = 0; line < NR * 4; line += 64) __builtin_prefetch(ahead + s * NR * 4 + line, 0, 2);
    }
    if constexpr (std::is_same_v<T, float>) {
      const vf w0 = load(panel + s * NR), w1 = load(panel + s * NR + W);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const vf xb = splat(x[r * c.ldx + s]);
        acc[r][0] = fmadd(xb, w0, acc[r][0]);
        acc[r][1] = fmadd(xb, w1, acc[r][1]);
      }
    } else {
#if TIDE_DPBF16
      const __m512bh w0 = (__m512bh)_mm512_loadu_si512(panel + s * 2 * NR);
      const __m512bh w1 = (__m512bh)_mm512_loadu_si512(panel + s * 2 * NR + 2 * W);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        int32_t pair;
        std::memcpy(&pair, x + r * c.ldx + 2 * s, sizeof pair);
        const __m512bh xb = (__m512bh)_mm512_set1_epi32(pair);
        acc[r][0] = (vf)_mm512_dpbf16_ps((__m512)acc[r][0], xb, w0);
        acc[r][1] = (vf)_mm512_dpbf16_ps((__m512)acc[r][1], xb, w1);
      }
#endif
    }
  }
  if (c.layout != PLAIN) {
    for (int r = 0; r < R; ++r) store_gated(c, acc[r][0], acc[r][1], y + r * c.ldy, p);
    return;
  }
  const int64_t col0 = p * NR;
  const int cols = int(std::min<int64_t>(NR, c.N - col0));
  for (int r = 0; r < R; ++r) {
    O* out = y + r * c.ldy + col0;
    if (cols == NR && c.bias == nullptr) {
      store(out, acc[r][0]);
      store(out + W, acc[r][1]);
    } else {  // sum in fp32, then one rounding to O, as for the full tiles
      float sum[NR];
      store(sum, acc[r][0]);
      store(sum + W, acc[r][1]);
      for (int j = 0; j < cols; ++j) sum[j] += c.bias != nullptr ? to_float(c.bias[col0 + j]) : 0.f;
      O rounded[NR];
      store(rounded, load(sum));
      store(rounded + W, load(sum + W));
      std::memcpy(out, rounded, cols * sizeof(O));
    }
  }
}

// tile<R> for a run-time row count in 1..MR.
template <typename T, typename O, int R>
void tile_rows(int rows, const Call<T>& c, const T* x, const T* panel, O* y, int64_t p, const char* ahead) {
  if constexpr (R > 1) {
    if (rows < R) return tile_rows<T, O, R - 1>(rows, c, x, panel, y, p, ahead);
  }
  tile<T, O, R>(c, x, panel, y, p, ahead);
}

// The row of W behind lane j of panel p.
inline int64_t panel_row(int layout, int64_t N, int64_t p, int j) {
  if (layout == PLAIN) return p * NR + j;
  return j < W ? p * W + j : N / 2 + p * W + (j - W);
}

template <typename T>
void pack(const T* w, int64_t N, int64_t K, T* packed, int layout, int num_threads) {
  constexpr int KS = Step<T>::K;
  const int64_t panels = (N + NR - 1) / NR;
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t p = 0; p < panels; ++p) {
    T* out = packed + p * K * NR;
    for (int64_t k = 0; k < K; ++k) {
      for (int j = 0; j < NR; ++j) {
        const int64_t n = panel_row(layout, N, p, j);
        out[(k / KS * NR + j) * KS + k % KS] = n < N ? w[n * K + k] : T(0);
      }
    }
  }
}

template <typename T, typename O>
void linear(const T* x, int64_t ldx, int64_t M, int64_t K, const T* packed, const T* bias, int64_t N, O* y,
            int64_t ldy, int layout, int num_threads) {
  const Call<T> c{K, ldx, bias, ldy, N, layout};
  const int64_t panels = (N + NR - 1) / NR;
  // Rows go in blocks of nearly equal size (64 rows: 13+13+13+13+12, not 14 x 4 + 8). Many rows (a prefill) go in
  // chunks of blocks that stay in L2 while the thread's panels pass by.
  const int64_t blocks = (M + MR - 1) / MR;
  const int64_t chunk = std::max<int64_t>(1, CHUNK_BYTES / (MR * K * int64_t(sizeof(T))));
#pragma omp parallel num_threads(std::max<int64_t>(1, std::min<int64_t>(num_threads, panels)))
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t first = panels * t / nt, last = panels * (t + 1) / nt;
    for (int64_t b0 = 0; b0 < blocks; b0 += chunk) {
      const int64_t b1 = std::min(blocks, b0 + chunk);
      for (int64_t p = first; p < last; ++p) {
        const T* panel = packed + p * K * NR;
        const char* ahead = p + 1 < last ? reinterpret_cast<const char*>(panel + K * NR) : nullptr;
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t m = M * b / blocks, end = M * (b + 1) / blocks;
          tile_rows<T, O, MR>(int(end - m), c, x + m * ldx, panel, y + m * ldy, p, b == b0 ? ahead : nullptr);
        }
      }
    }
  }
}

}  // namespace

extern "C" {

int tide_linear_panel_width() { return NR; }

// packed: ceil(N / NR) panels of K x NR elements, zero past N; bf16 (dtype 1) needs an even K. `layout` (Layout):
// GATED needs N = 2I with I a multiple of W. Returns 0, or -1 for a shape the layout cannot take.
int tide_pack_linear_weight(const void* w, int64_t N, int64_t K, void* packed, int dtype, int layout,
                            int num_threads) {
  if (layout != PLAIN && (layout != GATED || N % (2 * W) != 0)) return -1;
  if (dtype == 1) pack(static_cast<const bf16*>(w), N, K, static_cast<bf16*>(packed), layout, num_threads);
  else pack(static_cast<const float*>(w), N, K, static_cast<float*>(packed), layout, num_threads);
  return 0;
}

// y[M, N] (row stride ldy) = x[M, K] (row stride ldx) @ W.T + bias, W packed by tide_pack_linear_weight in `layout`;
// fp32 (dtype 0), or bf16 (dtype 1, even K, fp32 sums rounded once) where tide_bf16_dot_products(). y is in the same
// dtype, or fp32 (y_dtype 0) for a bf16 product left unrounded. With GATED_SILU (a GATED weight), y [M, N / 2] holds
// silu(gate) * up instead, in W's dtype. Returns 0, or -1 for a combination this build does not serve.
int tide_linear(const void* x, int64_t ldx, int64_t M, int64_t K, const void* packed, const void* bias, int64_t N,
                void* y, int64_t ldy, int dtype, int y_dtype, int layout, int num_threads) {
  if (layout < PLAIN || layout > GATED_SILU || (layout != PLAIN && (N % (2 * W) != 0 || y_dtype != dtype)))
    return -1;
  if (dtype == 0 && y_dtype == 0) {
    linear(static_cast<const float*>(x), ldx, M, K, static_cast<const float*>(packed),
           static_cast<const float*>(bias), N, static_cast<float*>(y), ldy, layout, num_threads);
    return 0;
  }
#if TIDE_DPBF16
  if (dtype == 1 && K % 2 == 0 && (y_dtype == 0 || y_dtype == 1)) {
    const bf16 *xb = static_cast<const bf16*>(x), *wb = static_cast<const bf16*>(packed);
    const bf16* bb = static_cast<const bf16*>(bias);
    if (y_dtype == 1) linear(xb, ldx, M, K, wb, bb, N, static_cast<bf16*>(y), ldy, layout, num_threads);
    else linear(xb, ldx, M, K, wb, bb, N, static_cast<float*>(y), ldy, layout, num_threads);
    return 0;
  }
#endif
  return -1;
}

// For greedy decoding, where only each row's argmax of x @ W.T matters: s [M, N] (row stride lds) holds an estimate
// of the product whose entry j is within b_j = c * |x_m|_2 * wnorm[j] of the exact one (a bf16 product; the
// caller's c and wnorm make that hold). Every entry that could be its row's largest, s_j + b_j >= max over i of
// (s_i - b_i), is replaced by its exact value (the bits tide_linear gives from the fp32 panels). Every other entry
// is then below the row's exact maximum, so each row's argmax, first index among equals, is that of the exact
// product. Returns the number of entries replaced, or -1 when an x row, estimate or bound is not finite (the rows
// are then not to be trusted).
int64_t tide_linear_refine_max(const float* x, int64_t ldx, int64_t M, int64_t K, const float* packed, int64_t N,
                               const float* wnorm, float wnorm_max, float c, float* s, int64_t lds,
                               int num_threads) {
  int64_t replaced = 0;
  bool finite = true;
#pragma omp parallel for schedule(static) num_threads(num_threads) reduction(+ : replaced) reduction(&& : finite)
  for (int64_t m = 0; m < M; ++m) {
    const float* xm = x + m * ldx;
    float* sm = s + m * lds;
    double squares = 0.0;
    for (int64_t k = 0; k < K; ++k) squares += double(xm[k]) * double(xm[k]);
    const float cn = float(double(c) * std::sqrt(squares));
    // One pass over the row: t, the largest lower end of an entry's range, which is at most the exact maximum; and
    // the largest upper end of each vector of entries, so that the second pass visits only vectors that reach t.
    // v * 0 turns an inf or NaN into NaN.
    thread_local std::vector<float> upper;
    upper.resize(size_t(N / W));
    vf low = splat(NEG_INF), probe = {};
    int64_t j = 0;
    for (; j + W <= N; j += W) {
      const vf v = load(sm + j), b = cn * load(wnorm + j);
      probe += v * 0.f;
      const vf l = v - b, h = v + b;
      low = l > low ? l : low;
      upper[j / W] = hmax_tree(h);
    }
    float t = NEG_INF, bad = 0.f;
    for (int i = 0; i < W; ++i) t = std::max(t, low[i]), bad += probe[i];
    for (int64_t i = j; i < N; ++i) bad += sm[i] * 0.f, t = std::max(t, sm[i] - cn * wnorm[i]);
    if (!(bad == 0.f) || !std::isfinite(t) || !std::isfinite(cn)) {
      finite = false;
      continue;
    }
    // slack for the rounding of the sums above (a few ulps of the operands), far below any bound
    const float floor_ = t - (std::fabs(t) + 2.f * cn * wnorm_max) * 0x1p-20f - 0x1p-96f;
    for (int64_t i = 0; i < N; ++i) {
      if (i < j && upper[i / W] < floor_) {
        i += W - 1;
        continue;
      }
      if (sm[i] + cn * wnorm[i] >= floor_) {
        sm[i] = chain(xm, packed + (i / NR) * K * NR + i % NR, K);
        ++replaced;
      }
    }
  }
  return finite ? replaced : -1;
}

}  // extern "C"
