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

inline vf fmadd(vf a, vf b, vf c) {
#if VW == 16 && defined(__AVX512F__)
  return (vf)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif VW == 8 && defined(__FMA__)
  return (vf)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
  return a * b + c;  // the tests' 16-wide build on AVX2: GCC splits it
#endif
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
};

// Rows x[0, R) against one panel. `ahead` (or null) is the panel this thread computes next: its cache lines are
// requested during the k loop, one k step's worth per step, so they are in L2 by the time it starts.
template <typename T, int R>
void tile(const Call<T>& c, const T* x, const T* panel, T* y, int64_t col0, const char* ahead) {
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
  const int cols = int(std::min<int64_t>(NR, c.N - col0));
  for (int r = 0; r < R; ++r) {
    T* out = y + r * c.ldy;
    if (cols == NR && c.bias == nullptr) {
      store(out, acc[r][0]);
      store(out + W, acc[r][1]);
    } else {  // sum in fp32, then one rounding to T, as for the full tiles
      float sum[NR];
      store(sum, acc[r][0]);
      store(sum + W, acc[r][1]);
      for (int j = 0; j < cols; ++j) sum[j] += c.bias != nullptr ? to_float(c.bias[col0 + j]) : 0.f;
      T rounded[NR];
      store(rounded, load(sum));
      store(rounded + W, load(sum + W));
      std::memcpy(out, rounded, cols * sizeof(T));
    }
  }
}

// tile<R> for a run-time row count in 1..MR.
template <typename T, int R>
void tile_rows(int rows, const Call<T>& c, const T* x, const T* panel, T* y, int64_t col0, const char* ahead) {
  if constexpr (R > 1) {
    if (rows < R) return tile_rows<T, R - 1>(rows, c, x, panel, y, col0, ahead);
  }
  tile<T, R>(c, x, panel, y, col0, ahead);
}

template <typename T>
void pack(const T* w, int64_t N, int64_t K, T* packed, int num_threads) {
  constexpr int KS = Step<T>::K;
  const int64_t panels = (N + NR - 1) / NR;
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t p = 0; p < panels; ++p) {
    T* out = packed + p * K * NR;
    for (int64_t k = 0; k < K; ++k) {
      for (int j = 0; j < NR; ++j) {
        const int64_t n = p * NR + j;
        out[(k / KS * NR + j) * KS + k % KS] = n < N ? w[n * K + k] : T(0);
      }
    }
  }
}

template <typename T>
void linear(const T* x, int64_t ldx, int64_t M, int64_t K, const T* packed, const T* bias, int64_t N, T* y,
            int64_t ldy, int num_threads) {
  const Call<T> c{K, ldx, bias, ldy, N};
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
          tile_rows<T, MR>(int(end - m), c, x + m * ldx, panel, y + m * ldy + p * NR, p * NR,
                           b == b0 ? ahead : nullptr);
        }
      }
    }
  }
}

}  // namespace

extern "C" {

int tide_linear_panel_width() { return NR; }

// packed: ceil(N / NR) panels of K x NR elements, zero past N; bf16 (dtype 1) needs an even K.
void tide_pack_linear_weight(const void* w, int64_t N, int64_t K, void* packed, int dtype, int num_threads) {
  if (dtype == 1) pack(static_cast<const bf16*>(w), N, K, static_cast<bf16*>(packed), num_threads);
  else pack(static_cast<const float*>(w), N, K, static_cast<float*>(packed), num_threads);
}

// y[M, N] (row stride ldy) = x[M, K] (row stride ldx) @ W.T + bias, W packed by tide_pack_linear_weight; fp32
// (dtype 0), or bf16 (dtype 1, even K, fp32 sums rounded once) where tide_bf16_dot_products(). Returns 0, or -1
// for a dtype this build does not serve.
int tide_linear(const void* x, int64_t ldx, int64_t M, int64_t K, const void* packed, const void* bias, int64_t N,
                void* y, int64_t ldy, int dtype, int num_threads) {
  if (dtype == 0) {
    linear(static_cast<const float*>(x), ldx, M, K, static_cast<const float*>(packed),
           static_cast<const float*>(bias), N, static_cast<float*>(y), ldy, num_threads);
    return 0;
  }
#if TIDE_DPBF16
  if (dtype == 1 && K % 2 == 0) {
    linear(static_cast<const bf16*>(x), ldx, M, K, static_cast<const bf16*>(packed), static_cast<const bf16*>(bias),
           N, static_cast<bf16*>(y), ldy, num_threads);
    return 0;
  }
#endif
  return -1;
}

}  // extern "C"
