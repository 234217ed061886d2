// fp32 linear layer y = x @ W.T (+ b) for the CPU path, on a weight packed once at load.
//
// Why not oneDNN: in a decode step every layer's weights come from DRAM (SmolLM2's fp32 linears are 13x the L3), and
// at 64 rows oneDNN's packed matmul then runs at 270-410 GFLOP/s on the 2-core AVX-512 CPU, where the same call with
// the weight in cache reaches 410-500. This kernel requests the next column panel of W while it computes the current
// one, so the weight stream hides behind the FMAs: 410-485 GFLOP/s at 64 rows with the weights in DRAM, and on a par
// with oneDNN at 1000 rows (docs/PERFORMANCE.md).
//
// Layout: W [N, K] is packed as ceil(N / NR) column panels, each [K][NR] (NR = two vectors, zero past N), so one k
// step of a panel is two vector loads. A tile holds R <= MR rows x NR columns of accumulators in registers:
// per k it loads the panel's two vectors and broadcasts one x value per row, 2R FMAs for R + 2 loads. Each row's
// sum runs over k in order, one FMA chain per output (no split over k), so a result does not depend on how many rows
// are in the call. The threads split the panels; every thread walks all rows against its own panels.
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

struct Call {
  int64_t K, ldx;
  const float* packed;
  const float* bias;  // [N] or null
  float* y;
  int64_t ldy, N;
};

// Rows x[0, R) against one panel. `ahead` (or null) is the panel this thread computes next: its cache lines are
// requested during the k loop, one k step's worth per step, so they are in L2 by the time it starts.
template <int R>
void tile(const Call& c, const float* x, const float* panel, float* y, int64_t col0, const char* ahead) {
  vf acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = vf{};
  for (int64_t k = 0; k < c.K; ++k) {
    if (ahead != nullptr) {
      for (int line = 0; line < NR * 4; line += 64) __builtin_prefetch(ahead + k * NR * 4 + line, 0, 2);
    }
    const vf w0 = load(panel + k * NR), w1 = load(panel + k * NR + W);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const vf xb = splat(x[r * c.ldx + k]);
      acc[r][0] = fmadd(xb, w0, acc[r][0]);
      acc[r][1] = fmadd(xb, w1, acc[r][1]);
    }
  }
  const int cols = int(std::min<int64_t>(NR, c.N - col0));
  for (int r = 0; r < R; ++r) {
    float* out = y + r * c.ldy;
    if (cols == NR && c.bias == nullptr) {
      store(out, acc[r][0]);
      store(out + W, acc[r][1]);
    } else {
      for (int j = 0; j < cols; ++j) {
        out[j] = (j < W ? acc[r][0][j] : acc[r][1][j - W]) + (c.bias != nullptr ? c.bias[col0 + j] : 0.f);
      }
    }
  }
}

// tile<R> for a run-time row count in 1..MR.
template <int R>
void tile_rows(int rows, const Call& c, const float* x, const float* panel, float* y, int64_t col0,
               const char* ahead) {
  if constexpr (R > 1) {
    if (rows < R) return tile_rows<R - 1>(rows, c, x, panel, y, col0, ahead);
  }
  tile<R>(c, x, panel, y, col0, ahead);
}

}  // namespace

extern "C" {

int tide_linear_panel_width() { return NR; }

// packed: [ceil(N / NR)][K][NR] floats, zero past N.
void tide_pack_linear_weight(const float* w, int64_t N, int64_t K, float* packed) {
  const int64_t panels = (N + NR - 1) / NR;
  for (int64_t p = 0; p < panels; ++p) {
    float* out = packed + p * K * NR;
    for (int64_t k = 0; k < K; ++k) {
      for (int j = 0; j < NR; ++j) {
        const int64_t n = p * NR + j;
        out[k * NR + j] = n < N ? w[n * K + k] : 0.f;
      }
    }
  }
}

// y[M, N] (row stride ldy) = x[M, K] (row stride ldx) @ W.T + bias, W packed by tide_pack_linear_weight.
void tide_linear(const float* x, int64_t ldx, int64_t M, int64_t K, const float* packed, const float* bias, int64_t N,
                 float* y, int64_t ldy, int num_threads) {
  const Call c{K, ldx, packed, bias, y, ldy, N};
  const int64_t panels = (N + NR - 1) / NR;
  // Rows go in blocks of nearly equal size (64 rows: 13+13+13+13+12, not 14 x 4 + 8). Many rows (a prefill) go in
  // chunks of blocks that stay in L2 while the thread's panels pass by.
  const int64_t blocks = (M + MR - 1) / MR;
  const int64_t chunk = std::max<int64_t>(1, CHUNK_BYTES / (MR * K * 4));
#pragma omp parallel num_threads(std::max<int64_t>(1, std::min<int64_t>(num_threads, panels)))
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t first = panels * t / nt, last = panels * (t + 1) / nt;
    for (int64_t b0 = 0; b0 < blocks; b0 += chunk) {
      const int64_t b1 = std::min(blocks, b0 + chunk);
      for (int64_t p = first; p < last; ++p) {
        const float* panel = packed + p * K * NR;
        const char* ahead = p + 1 < last ? reinterpret_cast<const char*>(panel + K * NR) : nullptr;
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t m = M * b / blocks, end = M * (b + 1) / blocks;
          tile_rows<MR>(int(end - m), c, x + m * ldx, panel, y + m * ldy + p * NR, p * NR, b == b0 ? ahead : nullptr);
        }
      }
    }
  }
}

}  // extern "C"
