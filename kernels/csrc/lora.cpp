// LoRA updates for a step whose rows use different adapters: y[row] += (x[row] @ A[slot]) @ B[slot], for each row
// of each segment (slot, start, end) of a row order grouped by slot (the shrink-expand of Punica's SGMV).
//
// A[slot] is [in, parts * block] and B[slot] [parts * block, out], the fused layout of engine/lora/adapter.py:
// part p (q, k, v or gate, up) has its A in columns p * block onwards and its B in those rows, writing only its own
// output columns cols[p]..cols[p + 1]. B's other blocks are zero, so the expand reads only the diagonal ones.
//
// One call does a whole projection: the gather of the rows, both products and the add, with the intermediate kept in
// fp32 (one rounding, at the add into y). Work items are tiles of a segment's rows, so each adapter's A and B stay
// in cache across the rows that use them. Every (row, column) sums in the same order whatever the tiling, so a row's
// update does not depend on which other rows share its step.
#include "vector.h"

namespace {

constexpr int ITEM_ROWS = 8;  // rows per work item: A and B are read once per 4 of them, from cache
constexpr int TILE_ROWS = 4;
constexpr int MAX_VECS = W == 16 ? 4 : 2;  // column vectors per tile: TILE_ROWS * MAX_VECS accumulators in registers

// t[r, j0 .. j0 + NV * W) = xf[r, :] @ a[:, j0 ..] for NR rows; xf fp32 [NR, in], a [in, ld_a], t fp32 (row stride ld_t).
template <typename T, int NR, int NV>
void shrink_tile(const float* xf, int in, const T* a, int ld_a, float* t, int ld_t) {
  vf acc[NR][NV] = {};
  for (int i = 0; i < in; ++i) {
    vf av[NV];
    for (int v = 0; v < NV; ++v) av[v] = load(a + int64_t(i) * ld_a + v * W);
    for (int r = 0; r < NR; ++r) {
      const vf xb = splat(xf[r * in + i]);
      for (int v = 0; v < NV; ++v) acc[r][v] += xb * av[v];
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int v = 0; v < NV; ++v) store(t + r * ld_t + v * W, acc[r][v]);
}

// y[rows[r], c .. c + NV * W) += t[r, 0 .. block) @ b[0 .. block, c ..] for NR rows; b row stride ld_b.
template <typename T, int NR, int NV>
void expand_tile(const float* t, int ld_t, int block, const T* b, int64_t ld_b, T* y, int64_t ld_y,
                 const int32_t* rows) {
  vf acc[NR][NV] = {};
  for (int k = 0; k < block; ++k) {
    vf bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = load(b + k * ld_b + v * W);
    // B's rows are `out` apart: too many strided streams for the hardware prefetcher, and a decode step reads each
    // adapter's B from memory. Fetch this row's part of the tile after next (a prefetch past the end is harmless).
    for (int byte = 0; byte < NV * W * int(sizeof(T)); byte += 64)
      __builtin_prefetch(reinterpret_cast<const char*>(b + k * ld_b + 2 * NV * W) + byte);
    for (int r = 0; r < NR; ++r) {
      const vf tb = splat(t[r * ld_t + k]);
      for (int v = 0; v < NV; ++v) acc[r][v] += tb * bv[v];
    }
  }
  for (int r = 0; r < NR; ++r) {
    T* yr = y + rows[r] * ld_y;
    for (int v = 0; v < NV; ++v) store(yr + v * W, load(yr + v * W) + acc[r][v]);
  }
}

// Compile-time tile shapes from run-time counts: nr in 1..TILE_ROWS, nv in 1..MAX_VECS.
template <template <typename, int, int> class Op, typename T, int NR = 1>
struct Tiles {
  template <typename... Args>
  static void run(int nr, int nv, Args... args) {
    if constexpr (NR < TILE_ROWS) {
      if (nr > NR) return Tiles<Op, T, NR + 1>::run(nr, nv, args...);
    }
    by_vecs<1>(nv, args...);
  }
  template <int NV, typename... Args>
  static void by_vecs(int nv, Args... args) {
    if constexpr (NV < MAX_VECS) {
      if (nv > NV) return by_vecs<NV + 1>(nv, args...);
    }
    Op<T, NR, NV>::apply(args...);
  }
};

template <typename T, int NR, int NV>
struct Shrink {
  static void apply(const float* xf, int in, const T* a, int ld_a, float* t, int ld_t) {
    shrink_tile<T, NR, NV>(xf, in, a, ld_a, t, ld_t);
  }
};

template <typename T, int NR, int NV>
struct Expand {
  static void apply(const float* t, int ld_t, int block, const T* b, int64_t ld_b, T* y, int64_t ld_y,
                    const int32_t* rows) {
    expand_tile<T, NR, NV>(t, ld_t, block, b, ld_b, y, ld_y, rows);
  }
};

struct LoraArgs {
  const void* x;
  int64_t x_stride;
  void* y;
  int64_t y_stride;
  const void* a;
  const void* b;
  int in, block, parts;
  const int32_t* cols;  // [parts + 1] output column where each part starts, then out
};

// One work item: n <= ITEM_ROWS rows (row indices `rows`) under `slot`.
template <typename T>
void lora_item(const LoraArgs& p, int slot, const int32_t* rows, int n) {
  const int rank_cols = p.parts * p.block, out = p.cols[p.parts];
  thread_local std::vector<float> xf, t;
  xf.resize(size_t(ITEM_ROWS) * p.in);
  t.resize(size_t(ITEM_ROWS) * rank_cols);
  const T* x = static_cast<const T*>(p.x);
  for (int r = 0; r < n; ++r)
    for (int i = 0; i < p.in; ++i) xf[r * p.in + i] = to_float(x[rows[r] * p.x_stride + i]);
  const T* a = static_cast<const T*>(p.a) + int64_t(slot) * p.in * rank_cols;
  const T* b = static_cast<const T*>(p.b) + int64_t(slot) * rank_cols * out;
  T* y = static_cast<T*>(p.y);
  for (int r0 = 0; r0 < n; r0 += TILE_ROWS) {
    const int nr = std::min(TILE_ROWS, n - r0);
    for (int j = 0; j < rank_cols; j += MAX_VECS * W)
      Tiles<Shrink, T>::run(nr, std::min(MAX_VECS, (rank_cols - j) / W), xf.data() + r0 * p.in, p.in, a + j,
                            rank_cols, t.data() + r0 * rank_cols + j, rank_cols);
    for (int part = 0; part < p.parts; ++part) {
      const T* bp = b + int64_t(part) * p.block * out;
      for (int c = p.cols[part]; c < p.cols[part + 1]; c += MAX_VECS * W)
        Tiles<Expand, T>::run(nr, std::min(MAX_VECS, (p.cols[part + 1] - c) / W),
                              t.data() + r0 * rank_cols + part * p.block, rank_cols, p.block, bp + c, int64_t(out),
                              y + c, p.y_stride, rows + r0);
    }
  }
}

template <typename T>
void lora_apply(const LoraArgs& p, const int32_t* order, const int32_t* segments, int num_segments,
                int num_threads) {
  std::vector<int32_t> item_segment, item_start;  // the work items: (segment, first place in `order`)
  for (int s = 0; s < num_segments; ++s)
    for (int start = segments[3 * s + 1]; start < segments[3 * s + 2]; start += ITEM_ROWS) {
      item_segment.push_back(s);
      item_start.push_back(start);
    }
  const int items = int(item_segment.size());
#pragma omp parallel for schedule(dynamic, 1) num_threads(items > 1 ? num_threads : 1)
  for (int i = 0; i < items; ++i) {
    const int32_t* seg = segments + 3 * item_segment[i];
    lora_item<T>(p, seg[0], order + item_start[i], std::min(ITEM_ROWS, seg[2] - item_start[i]));
  }
}

}  // namespace

extern "C" {

// y[order[i]] += (x[order[i]] @ a[slot]) @ b[slot] for i in each segment (slot, start, end) of `segments`
// [num_segments, 3]; x [T, in] and y [T, cols[parts]] with row strides; a [slots, in, parts * block] and
// b [slots, parts * block, cols[parts]] contiguous. dtype 0 = float32, 1 = bfloat16 (all of x, y, a, b). The caller
// checks that parts * block and every part's width are multiples of the vector width. Returns 0, or -1 for a dtype
// it does not know.
int tide_lora_apply(const void* x, int64_t x_stride, void* y, int64_t y_stride, const void* a, const void* b,
                    const int32_t* order, const int32_t* segments, int num_segments, int in, int block, int parts,
                    const int32_t* cols, int dtype, int num_threads) {
  const LoraArgs p{x, x_stride, y, y_stride, a, b, in, block, parts, cols};
  num_threads = std::max(1, num_threads);
  if (dtype == 0)
    lora_apply<float>(p, order, segments, num_segments, num_threads);
  else if (dtype == 1)
    lora_apply<bf16>(p, order, segments, num_segments, num_threads);
  else
    return -1;
  return 0;
}

}  // extern "C"
