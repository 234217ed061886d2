// Native CPU paged attention for Tide: a C ABI library loaded through ctypes (kernels/native.py builds it).
//
// No torch headers, so the library compiles in about a second. The ISA comes from the compiler flags that the loader
// picks at run time from the CPU's features (vector.h: W floats per vector op).
// Built with AVX512_BF16 at the native width, bf16 attention runs on vdpbf16ps instead (the TIDE_DPBF16 section):
// scores and values straight from the bf16 cache, the probabilities rounded to bf16, the sums in fp32.
//
// Work items are (sequence, kv head, query tile, key range): one item reads each K/V block once for every query
// head of its GQA group and every query row of its tile, with an fp32 online softmax. A single query token (a
// decode) instead takes two passes, all scores and then all values, with one softmax in between; with many
// decodes in the batch one item covers all kv heads of its sequence, whose rows sit together in each block. Long
// decodes are split over key ranges when there are too few items to keep the threads busy; a merge step then
// combines the splits' partial states by their softmax maxima.
#include "vector.h"

namespace {

// GCC deletes a loop of __builtin_prefetch calls as free of side effects once it can count the loop's trips.
inline void prefetch(const void* p) {
#if defined(__x86_64__) || defined(__i386__)
  asm volatile("prefetcht0 %0" : : "m"(*static_cast<const char*>(p)));
#else
  __builtin_prefetch(p);
#endif
}

// One head's rows of the next block, fetched a few rows at a time between the FMAs of the current one: a whole
// block at once stalls on the core's few outstanding misses instead of overlapping with the arithmetic.
struct Ahead {
  const char* base = nullptr;  // the next block's first row of the head; null when there is none
  int64_t stride = 0;          // bytes between rows
  int row_bytes = 0, rows = 0;

  // Fetches the rows in the fraction [lo, hi) / total of the block.
  void fetch(int lo, int hi, int total) const {
    if (!base) return;
    for (int j = lo * rows / total; j < hi * rows / total; ++j)
      for (int b = 0; b < row_bytes; b += 64) prefetch(base + j * stride + b);
  }
};

struct Args {
  const void* q;
  int64_t q_stride;  // elements between query tokens (heads are contiguous, head_dim elements each)
  const void* k_cache;  // [num_blocks, block_size, num_kv_heads, head_dim]
  const void* v_cache;
  void* out;  // [T, num_q_heads, head_dim], contiguous
  const int32_t* query_start_loc;
  const int32_t* seq_lens;
  const int32_t* block_tables;
  int64_t table_stride;
  int num_seqs, num_q_heads, num_kv_heads, head_dim, block_size;
  float scale;
};

// The Ahead for kv head `head`'s rows of cache block `block`. Blocks sit at scattered addresses and a head's rows
// are strided by the other heads, which the hardware prefetchers do not follow.
template <typename T>
inline Ahead block_ahead(const Args& a, const T* cache, int block, int head) {
  const int64_t first = (int64_t(block) * a.block_size * a.num_kv_heads + head) * a.head_dim;
  return {reinterpret_cast<const char*>(cache + first), int64_t(a.num_kv_heads) * a.head_dim * int64_t(sizeof(T)),
          a.head_dim * int(sizeof(T)), a.block_size};
}

struct Item {
  int seq, head, q0, q1;  // first kv head; query rows [q0, q1) of the sequence's chunk
  int k0, k1;             // key positions [k0, k1)
  int part;               // slot of this split's partial state, -1 when the item writes `out` itself
  int64_t cost;
  int nh = 1;  // kv heads [head, head + nh): a decode reads whole blocks of every head at once
};

// Per-thread scratch, grown on demand and kept between calls.
struct Scratch {
  std::vector<float> q, acc, m, l, alpha, s, k, v;
  std::vector<int> lim;
  std::vector<bf16> qb, pb;  // bf16 queries and probabilities of the vdpbf16ps path
  std::vector<uint32_t> kt, vi;  // a block's keys transposed and values interleaved, in pairs of bf16
};

// One head's rows [j0, j1) of a cache block as fp32, with the key stride in *stride: the cache itself for fp32,
// else those rows widened into scratch (BS x D).
template <typename T>
inline const float* block_rows(const T* cache, int64_t base, int64_t kv_stride, int j0, int j1, int D,
                               float* scratch, int64_t* stride) {
  if constexpr (sizeof(T) == sizeof(float)) {
    *stride = kv_stride;
    return reinterpret_cast<const float*>(cache + base);
  } else {
    for (int j = j0; j < j1; ++j)
      for (int c = 0; c < D; c += W) store(scratch + size_t(j) * D + c, load(cache + base + j * kv_stride + c));
    *stride = D;
    return scratch;
  }
}

typedef float v4f __attribute__((vector_size(16)));

// s[0..3] = the sums over lane groups of 4 of v (lane l holds a partial sum of entry l % 4).
inline void store_sums4(vf v, float* s) {
  v4f t = {};
  for (int g = 0; g < W; g += 4) {
    v4f part;
    std::memcpy(&part, reinterpret_cast<const float*>(&v) + g, sizeof part);
    t += part;
  }
  std::memcpy(s, &t, sizeof t);
}

// Scores of R query rows (nc * W apart at q) against the 4 keys at k, k + ks, k + 2 ks, k + 3 ks, into
// s[r * ss + 0..3]. Each key chunk is loaded once for all R rows: with R = 3 the 12 accumulators, 3 query chunks
// and the key chunk fill the 16 AVX2 registers, at 7 loads per 12 FMAs where one row at a time needs one per FMA.
template <int R>
inline void scores4(const float* q, int nc, const float* k, int64_t ks, float* s, int64_t ss) {
  vf acc[R][4] = {};
  for (int c = 0; c < nc; ++c) {
    vf qc[R];
    for (int r = 0; r < R; ++r) qc[r] = load(q + (r * nc + c) * W);
    for (int j = 0; j < 4; ++j) {
      const vf kj = load(k + j * ks + c * W);
      for (int r = 0; r < R; ++r) acc[r][j] += qc[r] * kj;
    }
  }
  for (int r = 0; r < R; ++r)
    store_sums4(fold<2>(fold<1>(acc[r][0], acc[r][1]), fold<1>(acc[r][2], acc[r][3])), s + r * ss);
}

// Scores of R query rows against keys [j0, je) of a block of bs keys (key stride ks) into s[r * ss + j]. Whole
// groups of 4 keys go first, so entries of s outside [j0, je) may be written too: the caller masks them.
template <int R>
inline void block_scores(const float* q, int nc, const float* kp, int64_t ks, int bs, int j0, int je, float* s,
                         int64_t ss, const Ahead& ahead) {
  int j = j0 / 4 * 4;
  for (; j + 4 <= bs && j < je; j += 4) {
    ahead.fetch(j, j + 4, bs);
    scores4<R>(q, nc, kp + j * ks, ks, s + j, ss);
  }
  for (j = std::max(j, j0); j < je; ++j)  // blocks of fewer than 4 keys
    for (int r = 0; r < R; ++r) {
      vf s0 = {};
      for (int c = 0; c < nc; ++c) s0 += load(q + (r * nc + c) * W) * load(kp + j * ks + c * W);
      s[r * ss + j] = hsum(s0);
    }
}

// Output chunks [0, CN) of R rows (D apart at acc): acc = acc * alpha[r] + sum over keys j in [j0, je) of
// p[r * ps + j] * v[j] (alpha null: 1). Each value chunk is loaded once for all R rows, into R * CN independent
// FMA chains.
template <int R, int CN>
inline void values_chunk(float* acc, int D, const float* p, int64_t ps, const float* v, int64_t ks, int j0, int je,
                         const float* alpha) {
  vf o[R][CN];
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < CN; ++i) o[r][i] = alpha ? load(acc + r * D + i * W) * alpha[r] : load(acc + r * D + i * W);
  for (int j = j0; j < je; ++j) {
    vf pj[R];
    for (int r = 0; r < R; ++r) pj[r] = splat(p[r * ps + j]);
    for (int i = 0; i < CN; ++i) {
      const vf vi = load(v + j * ks + i * W);
      for (int r = 0; r < R; ++r) o[r][i] += pj[r] * vi;
    }
  }
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < CN; ++i) store(acc + r * D + i * W, o[r][i]);
}

#if defined(__AVX512F__)
constexpr int VREGS = 32;
#else
constexpr int VREGS = 16;
#endif

// Output chunks per values_chunk pass for R rows: R * CN accumulators, R broadcasts, a value chunk and a spare fit
// in the vector registers (with none spare GCC already keeps accumulators on the stack), and up to 8 chunks.
constexpr int values_width(int R) {
  const int n = (VREGS - R - 2) / R;
  return n >= 8 ? 8 : n >= 4 ? 4 : n >= 2 ? 2 : 1;
}

// R rows' acc = acc * alpha[r] + sum over keys j in [j0, je) of p[r * ps + j] * v[j], output chunks [c, nc) of
// D = nc * W, CN chunks at a time and narrower passes for the rest.
template <int R, int CN = values_width(R)>
inline void block_values(float* acc, int nc, const float* p, int64_t ps, const float* vp, int64_t ks, int j0, int je,
                         const float* alpha, const Ahead& ahead, int c = 0) {
  for (; c + CN <= nc; c += CN) {
    ahead.fetch(c, c + CN, nc);
    values_chunk<R, CN>(acc + c * W, nc * W, p, ps, vp + c * W, ks, j0, je, alpha);
  }
  if constexpr (CN > 1) block_values<R, CN / 2>(acc, nc, p, ps, vp, ks, j0, je, alpha, ahead, c);
}

// Calls fn(std::integral_constant<int, R>(), first) over rows [0, n) in chunks of R <= 3 rows (4 as 2 + 2), the
// rows that share one read of each key or value chunk.
template <typename F>
inline void for_row_chunks(int n, F&& fn) {
  int r = 0;
  for (; n - r == 3 || n - r > 4; r += 3) fn(std::integral_constant<int, 3>(), r);
  for (; n - r >= 2; r += 2) fn(std::integral_constant<int, 2>(), r);
  if (r < n) fn(std::integral_constant<int, 1>(), r);
}

// Sizes the scratch for an item of R rows and loads its queries, scaled, with each row's visible key limit.
template <typename T>
void start_item(const Args& a, const Item& it, Scratch& sc, int R) {
  const int G = a.num_q_heads / a.num_kv_heads, D = a.head_dim, nq = it.q1 - it.q0, HG = it.nh * G;
  const int q_len = a.query_start_loc[it.seq + 1] - a.query_start_loc[it.seq];
  const int first_pos = a.seq_lens[it.seq] - q_len;
  sc.q.resize(size_t(R) * D);
  sc.acc.assign(size_t(R) * D, 0.f);
  sc.m.assign(R, NEG_INF);
  sc.l.assign(R, 0.f);
  sc.alpha.resize(R);
  sc.lim.resize(R);
  if (sizeof(T) != sizeof(float)) {
    sc.k.resize(size_t(it.nh) * a.block_size * D);
    sc.v.resize(size_t(it.nh) * a.block_size * D);
  }
  const T* q = static_cast<const T*>(a.q);
  for (int i = 0; i < nq; ++i) {
    const int64_t row = a.query_start_loc[it.seq] + it.q0 + i;
    for (int g = 0; g < HG; ++g) {  // row r = i * HG + g: query head it.head * G + g
      const int r = i * HG + g;
      const T* src = q + row * a.q_stride + int64_t(it.head * G + g) * D;
      for (int d = 0; d < D; ++d) sc.q[size_t(r) * D + d] = to_float(src[d]) * a.scale;
      sc.lim[r] = first_pos + it.q0 + i + 1;  // keys < lim are visible to this row
    }
  }
}

// Writes an item's rows (acc / l) to out, or its unnormalised state to its split's partial slot.
template <typename T>
void finish_item(const Args& a, const Item& it, const Scratch& sc, float* part, int R) {
  const int G = a.num_q_heads / a.num_kv_heads, HG = it.nh * G, D = a.head_dim;
  if (part) {  // partial state of one split: [R, D] accumulator, then R maxima, then R denominators
    std::memcpy(part, sc.acc.data(), sizeof(float) * R * D);
    std::memcpy(part + R * D, sc.m.data(), sizeof(float) * R);
    std::memcpy(part + R * D + R, sc.l.data(), sizeof(float) * R);
    return;
  }
  T* out = static_cast<T*>(a.out);
  for (int r = 0; r < R; ++r) {
    const int64_t row = a.query_start_loc[it.seq] + it.q0 + r / HG;
    T* dst = out + (row * a.num_q_heads + it.head * G + r % HG) * D;
    const float inv = 1.f / sc.l[r];
    for (int d = 0; d < D; ++d) from_float(sc.acc[size_t(r) * D + d] * inv, dst + d);
  }
}

// Turns a row of scores s[lo, hi) into exp(s - m) in place, m = max(m_floor, max of s[lo, hi)) (whole vectors over
// [0, span), zero outside [lo, hi), masked by lane compares); returns m, and the sum of the exponentials in *sum
// (both reduced across lanes by halving).
inline float softmax_row(float* s, int lo, int hi, int span, float m_floor, float* sum) {
  vi lane;
  for (int i = 0; i < W; ++i) lane[i] = i;
  vf vmax = splat(NEG_INF);
  for (int j = 0; j < span; j += W) {
    const vi key = lane + j;
    const vf v = (key >= lo) & (key < hi) ? load(s + j) : splat(NEG_INF);
    store(s + j, v);
    vmax = v > vmax ? v : vmax;
  }
  const float m = std::max(m_floor, hmax_tree(vmax));
  vf psum = {};
  for (int j = 0; j < span; j += W) {
    const vf p = vexp(load(s + j) - m);
    store(s + j, p);
    psum += p;
  }
  *sum = hsum_tree(psum);
  return m;
}

// Blocks per online-softmax step of a prefill tile: whole blocks up to CHUNK_KEYS keys (when the block size is a
// multiple of 16, so each block's keys fill whole vectors). A step per 16-key block spent more on its max, sum, exp
// and rescale than on its dot products at head_dim 64: at 64 keys bf16 prefill ran 1.6x and fp32 1.2x faster.
constexpr int CHUNK_KEYS = 64, MAX_CHUNK_BLOCKS = CHUNK_KEYS / 16;
inline int chunk_blocks(int block_size) { return block_size % 16 == 0 ? std::max(1, CHUNK_KEYS / block_size) : 1; }

// Calls fn(std::integral_constant<int, N>(), first) over rows [0, n) in chunks of N, then the rest as one chunk.
template <int N, typename F>
inline void rest_rows(int left, int first, F& fn) {
  if constexpr (N > 0) {
    if (left == N) fn(std::integral_constant<int, N>(), first);
    else rest_rows<N - 1>(left, first, fn);
  }
}
template <int N, typename F>
inline void for_rows(int n, F&& fn) {
  int r = 0;
  for (; r + N <= n; r += N) fn(std::integral_constant<int, N>(), r);
  rest_rows<N - 1>(n - r, r, fn);
}


#if TIDE_DPBF16
// ---- bf16 attention on vdpbf16ps (AVX512_BF16) ----------------------------------------------------------------------
// vdpbf16ps adds the products of 16 pairs of bf16 lanes to 16 fp32 lanes, so K and V are read as the cache holds them,
// with no widened copy and half the instructions of fp32 FMAs. Scores: a query row's 32-lane chunks against a key's,
// closed by the same transposing reduction as the fp32 path. Values: two keys' rows interleaved lane by lane (one
// unpack per 32 lanes) against the two keys' probabilities, rounded to bf16, as one broadcast pair. The unpack works
// inside 128-bit lanes, so the accumulators hold each 32-dim chunk's dims in the order 0-3, 8-11, 16-19, 24-27 (low
// half) and 4-7, 12-15, 20-23, 28-31 (high half): `unpermute_rows` puts them back once an item's sums are done.

inline __m512i load_bf16x32(const bf16* p) { return _mm512_loadu_si512(p); }

// Scores of R bf16 query rows (D apart at q, nc chunks of 32) against the 4 keys at k + j * ks, scaled, into
// s[r * ss + 0..3].
template <int R>
inline void scores4_dp(const bf16* q, int D, const bf16* k, int64_t ks, float* s, int64_t ss, float scale) {
  __m512 acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_setzero_ps();
  for (int c = 0; c < D; c += 32) {
    __m512bh qc[R];
    for (int r = 0; r < R; ++r) qc[r] = (__m512bh)load_bf16x32(q + r * D + c);
    for (int j = 0; j < 4; ++j) {
      const __m512bh kj = (__m512bh)load_bf16x32(k + j * ks + c);
      for (int r = 0; r < R; ++r) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], qc[r], kj);
    }
  }
  for (int r = 0; r < R; ++r) {
    const vf sums = fold<2>(fold<1>((vf)acc[r][0], (vf)acc[r][1]), fold<1>((vf)acc[r][2], (vf)acc[r][3]));
    v4f t = {};
    for (int g = 0; g < W; g += 4) t += (v4f){sums[g], sums[g + 1], sums[g + 2], sums[g + 3]};
    t *= scale;
    std::memcpy(s + r * ss, &t, sizeof t);
  }
}

// Scores of R rows against keys [j0, je) of a block of bs keys, as block_scores.
template <int R>
inline void block_scores_dp(const bf16* q, int D, const bf16* kp, int64_t ks, int bs, int j0, int je, float* s,
                            int64_t ss, float scale, const Ahead& ahead) {
  int j = j0 / 4 * 4;
  for (; j + 4 <= bs && j < je; j += 4) {
    ahead.fetch(j, j + 4, bs);
    scores4_dp<R>(q, D, kp + j * ks, ks, s + j, ss, scale);
  }
  for (j = std::max(j, j0); j < je; ++j)
    for (int r = 0; r < R; ++r) {
      float dot = 0.f;
      for (int d = 0; d < D; ++d) dot += to_float(q[r * D + d]) * to_float(kp[j * ks + d]);
      s[r * ss + j] = dot * scale;
    }
}

// R rows' acc (permuted as above, D apart) += sum over keys j in [j0, je) of p[r * ps + j] * v[j], for the 64 dims
// [c, c + 64) (CN = 2 chunks of 32) or 32 (CN = 1), p in bf16. Keys go in pairs from an even one; a key outside
// [j0, je) in a pair counts as a row of zeros (its probability is 0, but its slot may hold anything).
template <int R, int CN>
inline void values_dp(float* acc, int D, const bf16* p, int64_t ps, const bf16* v, int64_t ks, int j0, int je,
                      int c) {
  __m512 o[R][2 * CN];
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < 2 * CN; ++i) o[r][i] = _mm512_loadu_ps(acc + r * D + c + 16 * i);
  for (int j = j0 & ~1; j < je; j += 2) {
    __m512bh pj[R];
    for (int r = 0; r < R; ++r) {
      uint32_t pair;
      std::memcpy(&pair, p + r * ps + j, sizeof pair);
      pj[r] = (__m512bh)_mm512_set1_epi32(int(pair));
    }
    for (int i = 0; i < CN; ++i) {
      const __m512i a = j >= j0 ? load_bf16x32(v + j * ks + c + 32 * i) : _mm512_setzero_si512();
      const __m512i b = j + 1 < je ? load_bf16x32(v + (j + 1) * ks + c + 32 * i) : _mm512_setzero_si512();
      const __m512bh lo = (__m512bh)_mm512_unpacklo_epi16(a, b), hi = (__m512bh)_mm512_unpackhi_epi16(a, b);
      for (int r = 0; r < R; ++r) {
        o[r][2 * i] = _mm512_dpbf16_ps(o[r][2 * i], pj[r], lo);
        o[r][2 * i + 1] = _mm512_dpbf16_ps(o[r][2 * i + 1], pj[r], hi);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < 2 * CN; ++i) _mm512_storeu_ps(acc + r * D + c + 16 * i, o[r][i]);
}

template <int R>
inline void block_values_dp(float* acc, int D, const bf16* p, int64_t ps, const bf16* vp, int64_t ks, int j0, int je,
                            const Ahead& ahead) {
  int c = 0;
  for (; c + 64 <= D; c += 64) {
    ahead.fetch(c, c + 64, D);
    values_dp<R, 2>(acc, D, p, ps, vp, ks, j0, je, c);
  }
  if (c < D) values_dp<R, 1>(acc, D, p, ps, vp, ks, j0, je, c);
}

// Puts each row's dims back in order after values_dp.
inline void unpermute_rows(float* acc, int rows, int D) {
  const __m512i first = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i second = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < D; c += 32) {
      float* x = acc + size_t(r) * D + c;
      const __m512 lo = _mm512_loadu_ps(x), hi = _mm512_loadu_ps(x + 16);
      _mm512_storeu_ps(x, _mm512_permutex2var_ps(lo, first, hi));
      _mm512_storeu_ps(x + 16, _mm512_permutex2var_ps(lo, second, hi));
    }
}

// The softmax numerators of a row of scores s[lo, hi), rounded to bf16 into p[0, span) (zero outside [lo, hi); span
// a multiple of 16): exp(s - m) with m = max(m_floor, max of s[lo, hi)). Returns m, and the fp32 sum of the
// numerators in *sum. The fp32 path is softmax_row.
inline float softmax_bf16(const float* s, int lo, int hi, int span, float m_floor, float* sum, bf16* p) {
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  auto visible = [&](int j) {
    const __m512i key = _mm512_add_epi32(lane, _mm512_set1_epi32(j));
    return __mmask16(_mm512_cmpge_epi32_mask(key, _mm512_set1_epi32(lo)) &
                     _mm512_cmplt_epi32_mask(key, _mm512_set1_epi32(hi)));
  };
  __m512 vmax = _mm512_set1_ps(m_floor);
  for (int j = lo / 16 * 16; j < hi; j += 16) vmax = _mm512_mask_max_ps(vmax, visible(j), vmax, _mm512_loadu_ps(s + j));
  const float m = _mm512_reduce_max_ps(vmax);
  __m512 vsum = _mm512_setzero_ps();
  for (int j = 0; j < span; j += 16) {
    const __mmask16 in = visible(j);
    __m512 e = _mm512_setzero_ps();
    if (in) e = _mm512_maskz_mov_ps(in, (__m512)vexp((vf)_mm512_sub_ps(_mm512_loadu_ps(s + j), _mm512_set1_ps(m))));
    vsum = _mm512_add_ps(vsum, e);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + j), (__m256i)_mm512_cvtneps_pbh(e));
  }
  *sum = _mm512_reduce_add_ps(vsum);
  return m;
}

// The bf16 queries of an item's R rows, unscaled (the scale multiplies the scores).
inline void load_queries_bf16(const Args& a, const Item& it, Scratch& sc, int R) {
  const int G = a.num_q_heads / a.num_kv_heads, D = a.head_dim, HG = it.nh * G;
  sc.qb.resize(size_t(R) * D);
  const bf16* q = static_cast<const bf16*>(a.q);
  for (int r = 0; r < R; ++r) {
    const int64_t row = a.query_start_loc[it.seq] + it.q0 + r / HG;
    std::memcpy(&sc.qb[size_t(r) * D], q + row * a.q_stride + int64_t(it.head * G + r % HG) * D, sizeof(bf16) * D);
  }
}

// Walks the blocks holding keys [k0, k1) of an item, as for_each_block, handing fn each kv head's rows as stored.
template <typename F>
void for_each_block_bf16(const Args& a, const Item& it, const bf16* cache, F&& fn) {
  const int G = a.num_q_heads / a.num_kv_heads, D = a.head_dim, BS = a.block_size;
  const int64_t kv_stride = int64_t(a.num_kv_heads) * D;
  const int32_t* table = a.block_tables + int64_t(it.seq) * a.table_stride;
  const int kb = it.k0 / BS * BS;
  for (int key0 = kb; key0 < it.k1; key0 += BS) {
    const int j0 = std::max(it.k0 - key0, 0), j1 = std::min(BS, it.k1 - key0);
    for (int h = 0; h < it.nh; ++h) {
      const int64_t base = (int64_t(table[key0 / BS]) * BS * a.num_kv_heads + it.head + h) * D;
      const Ahead ahead = key0 + BS < it.k1 ? block_ahead(a, cache, table[key0 / BS + 1], it.head + h) : Ahead();
      fn(h * G, cache + base, kv_stride, key0 - kb, j0, j1, ahead);
    }
  }
}

// run_single_item for a bf16 cache on vdpbf16ps (head_dim a multiple of 32, even block size).
void run_single_item_dp(const Args& a, const Item& it, Scratch& sc, float* part) {
  const int G = a.num_q_heads / a.num_kv_heads, D = a.head_dim, BS = a.block_size, R = it.nh * G;
  const int kb = it.k0 / BS * BS, lo = it.k0 - kb, hi = it.k1 - kb;
  const int span = (hi + W - 1) / W * W;
  start_item<bf16>(a, it, sc, R);
  load_queries_bf16(a, it, sc, R);
  sc.s.resize(size_t(R) * span);
  sc.pb.resize(size_t(R) * span);
  const bf16* k_cache = static_cast<const bf16*>(a.k_cache);
  const bf16* v_cache = static_cast<const bf16*>(a.v_cache);
  auto scores = [&](int r0, const bf16* kp, int64_t ks, int off, int j0, int j1, const Ahead& ahead) {
    for_row_chunks(G, [&](auto rows, int g) {
      constexpr int n = decltype(rows)::value;
      block_scores_dp<n>(&sc.qb[size_t(r0 + g) * D], D, kp, ks, BS, j0, j1, &sc.s[size_t(r0 + g) * span + off], span,
                         a.scale, g == 0 ? ahead : Ahead());
    });
  };
  for_each_block_bf16(a, it, k_cache, scores);
  for (int h = 0; h < it.nh; ++h)
    block_ahead(a, v_cache, a.block_tables[int64_t(it.seq) * a.table_stride + kb / BS], it.head + h).fetch(0, 1, 1);
  for (int r = 0; r < R; ++r)
    sc.m[r] = softmax_bf16(&sc.s[size_t(r) * span], lo, hi, span, NEG_INF, &sc.l[r], &sc.pb[size_t(r) * span]);
  auto values = [&](int r0, const bf16* vp, int64_t ks, int off, int j0, int j1, const Ahead& ahead) {
    for_row_chunks(G, [&](auto rows, int g) {
      constexpr int n = decltype(rows)::value;
      block_values_dp<n>(&sc.acc[size_t(r0 + g) * D], D, &sc.pb[size_t(r0 + g) * span + off], span, vp, ks, j0, j1,
                         g == 0 ? ahead : Ahead());
    });
  };
  for_each_block_bf16(a, it, v_cache, values);
  unpermute_rows(sc.acc.data(), R, D);
  finish_item<bf16>(a, it, sc, part, R);
}


// Keys [16c, 16c + 16) of one head's block as dim pairs: kt[(c * D / 2 + p) * 16 + j] holds dims 2p, 2p + 1 of key
// 16c + j, so one vdpbf16ps scores a query row's dim pair against 16 keys with no reduction. Keys outside [0, n)
// (past the visible ones, or the block) are zero.
inline void transpose_keys(const bf16* kp, int64_t ks, int n, int D, uint32_t* kt) {
  const int np = D / 2;
  const __m512i rows = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                          _mm512_set1_epi32(int(ks / 2)));
  for (int c = 0; 16 * c < n; ++c) {
    const __mmask16 valid = n - 16 * c >= 16 ? 0xffff : __mmask16((1u << (n - 16 * c)) - 1);
    const void* base = kp + int64_t(16 * c) * ks;
    for (int p = 0; p < np; ++p)
      _mm512_storeu_si512(kt + (size_t(c) * np + p) * 16,
                          _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), valid,
                                                      _mm512_add_epi32(rows, _mm512_set1_epi32(p)), base, 4));
  }
}

// Value rows [0, n) of one head's block as key pairs: vi[jp * D + d] holds dim d of keys 2jp and 2jp + 1 (a key past
// n as zero), so one vdpbf16ps adds two keys' weighted values to 16 dims.
inline void interleave_values(const bf16* vp, int64_t ks, int n, int D, uint32_t* vi) {
  const __m512i first = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i second = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  for (int j = 0; j < n; j += 2)
    for (int c = 0; c < D; c += 32) {
      const __m512i a = load_bf16x32(vp + j * ks + c);
      const __m512i b = j + 1 < n ? load_bf16x32(vp + (j + 1) * ks + c) : _mm512_setzero_si512();
      const __m512i lo = _mm512_unpacklo_epi16(a, b), hi = _mm512_unpackhi_epi16(a, b);
      _mm512_storeu_si512(vi + size_t(j / 2) * D + c, _mm512_permutex2var_epi32(lo, first, hi));
      _mm512_storeu_si512(vi + size_t(j / 2) * D + c + 16, _mm512_permutex2var_epi32(lo, second, hi));
    }
}

// Scaled scores of R query rows (bf16 pairs, D / 2 per row at q) against 16 transposed keys, into s[r * ss + 0..15].
// Two accumulators per row halve the chain of dependent vdpbf16ps.
template <int R>
inline void tile_scores(const uint32_t* q, int np, const uint32_t* kt, float* s, int64_t ss, float scale) {
  __m512 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int p = 0; p < np; p += 2)
    for (int h = 0; h < 2; ++h) {
      const __m512bh k = (__m512bh)_mm512_loadu_si512(kt + (p + h) * 16);
      for (int r = 0; r < R; ++r)
        acc[r][h] = _mm512_dpbf16_ps(acc[r][h], (__m512bh)_mm512_set1_epi32(int(q[r * np + p + h])), k);
    }
  for (int r = 0; r < R; ++r)
    _mm512_storeu_ps(s + r * ss, _mm512_mul_ps(_mm512_add_ps(acc[r][0], acc[r][1]), _mm512_set1_ps(scale)));
}

// R rows' acc[r] (64 dims at c, D apart) = acc * alpha[r] + sum over key pairs jp < npairs of p pair * vi[jp].
template <int R>
inline void tile_values(float* acc, int D, int c, const float* alpha, const uint32_t* p, int64_t ps,
                        const uint32_t* vi, int npairs) {
  __m512 o[R][4];
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < 4; ++i)
      o[r][i] = _mm512_mul_ps(_mm512_loadu_ps(acc + r * D + c + 16 * i), _mm512_set1_ps(alpha[r]));
  for (int jp = 0; jp < npairs; ++jp)
    for (int i = 0; i < 4; ++i) {
      const __m512bh v = (__m512bh)_mm512_loadu_si512(vi + size_t(jp) * D + c + 16 * i);
      for (int r = 0; r < R; ++r)
        o[r][i] = _mm512_dpbf16_ps(o[r][i], (__m512bh)_mm512_set1_epi32(int(p[r * ps + jp])), v);
    }
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < 4; ++i) _mm512_storeu_ps(acc + r * D + c + 16 * i, o[r][i]);
}

// run_tile_item for a bf16 cache on vdpbf16ps (head_dim a multiple of 64): each block's K is transposed and its V
// interleaved once for all the tile's rows, so scores come 16 keys to a vector and values two keys per instruction;
// the online softmax steps a chunk of blocks at a time (chunk_blocks).
void run_tile_item_dp(const Args& a, const Item& it, Scratch& sc, float* part) {
  const int G = a.num_q_heads / a.num_kv_heads, D = a.head_dim, BS = a.block_size, np = D / 2;
  const int NB = chunk_blocks(BS), CK = NB * BS, CSP = (CK + 15) / 16 * 16, R = (it.q1 - it.q0) * G;
  const int64_t kv_stride = int64_t(a.num_kv_heads) * D;
  start_item<bf16>(a, it, sc, R);
  load_queries_bf16(a, it, sc, R);
  sc.s.resize(size_t(R) * CSP);
  sc.pb.resize(size_t(R) * CSP);
  sc.kt.resize(size_t(CSP) * np);
  sc.vi.resize(size_t(CSP / 2) * D);
  const uint32_t* q = reinterpret_cast<const uint32_t*>(sc.qb.data());
  const uint32_t* pb = reinterpret_cast<const uint32_t*>(sc.pb.data());
  const int32_t* table = a.block_tables + int64_t(it.seq) * a.table_stride;
  const bf16* k_cache = static_cast<const bf16*>(a.k_cache);
  const bf16* v_cache = static_cast<const bf16*>(a.v_cache);
  for (int key0 = it.k0 / BS * BS; key0 < it.k1; key0 += CK) {
    int loaded = 0;  // keys of the chunk in kt and vi: whole blocks, the item's last one maybe in part
    for (int b = 0; b < NB && key0 + b * BS < it.k1; ++b) {
      const int kb = key0 + b * BS, n = std::min(BS, it.k1 - kb);
      const int64_t base = (int64_t(table[kb / BS]) * BS * a.num_kv_heads + it.head) * D;
      if (kb + BS < it.k1) {
        block_ahead(a, k_cache, table[kb / BS + 1], it.head).fetch(0, 1, 1);
        block_ahead(a, v_cache, table[kb / BS + 1], it.head).fetch(0, 1, 1);
      }
      // block b's keys start at 16-key group b * BS / 16 of kt (BS a multiple of 16 when NB > 1), its key pairs at
      // b * BS / 2 of vi
      transpose_keys(k_cache + base, kv_stride, n, D, sc.kt.data() + size_t(b) * BS * np);
      interleave_values(v_cache + base, kv_stride, n, D, sc.vi.data() + size_t(b) * BS / 2 * D);
      loaded = b * BS + n;
    }
    const int j0 = std::max(it.k0 - key0, 0);
    const int visible = std::min(loaded, sc.lim[R - 1] - key0);  // the tile's last row sees the most keys
    for_rows<6>(R, [&](auto rows, int r0) {
      constexpr int n = decltype(rows)::value;
      for (int c = 0; 16 * c < visible; ++c)
        tile_scores<n>(q + size_t(r0) * np, np, sc.kt.data() + size_t(c) * np * 16, &sc.s[size_t(r0) * CSP + 16 * c],
                       CSP, a.scale);
      for (int r = r0; r < r0 + n; ++r) {
        const int je = std::min(loaded, sc.lim[r] - key0);
        const float m_old = sc.m[r];
        float sum;
        sc.m[r] = softmax_bf16(&sc.s[size_t(r) * CSP], j0, std::max(je, j0), CSP, m_old, &sum, &sc.pb[size_t(r) * CSP]);
        sc.alpha[r] = m_old == NEG_INF ? 0.f : std::exp(m_old - sc.m[r]);
        sc.l[r] = sc.l[r] * sc.alpha[r] + sum;
      }
      for (int c = 0; c < D; c += 64)
        tile_values<n>(&sc.acc[size_t(r0) * D], D, c, &sc.alpha[r0], pb + size_t(r0) * CSP / 2, CSP / 2,
                       sc.vi.data(), (visible + 1) / 2);
    });
  }
  finish_item<bf16>(a, it, sc, part, R);
}

// The vdpbf16ps paths read bf16 pairs: 64-dim chunks of each row, and pairs of keys from an even one.
inline bool dp_serves(const Args& a) { return a.head_dim % 64 == 0 && a.block_size % 2 == 0; }
#endif  // TIDE_DPBF16

#if VW == 16 && defined(__AVX512F__)
// out[c] = column c of the 16 x 16 floats a[0..15] (a[r] = row r): pairs of rows interleaved, then quads of rows
// within each 128-bit lane, then the 128-bit lanes of four rows at a time.
inline void transpose16(__m512 a[16], float* out, int stride) {
  __m512 b[16], c[16];
  for (int p = 0; p < 8; ++p) {
    b[2 * p] = _mm512_unpacklo_ps(a[2 * p], a[2 * p + 1]);
    b[2 * p + 1] = _mm512_unpackhi_ps(a[2 * p], a[2 * p + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    c[4 * i] = _mm512_shuffle_ps(b[4 * i], b[4 * i + 2], 0x44);
    c[4 * i + 1] = _mm512_shuffle_ps(b[4 * i], b[4 * i + 2], 0xEE);
    c[4 * i + 2] = _mm512_shuffle_ps(b[4 * i + 1], b[4 * i + 3], 0x44);
    c[4 * i + 3] = _mm512_shuffle_ps(b[4 * i + 1], b[4 * i + 3], 0xEE);
  }
  for (int m = 0; m < 4; ++m) {  // c[4i + m], lane k: rows 4i..4i+3 at column 4k + m
    const __m512 e0 = _mm512_shuffle_f32x4(c[m], c[4 + m], 0x88), e1 = _mm512_shuffle_f32x4(c[m], c[4 + m], 0xDD);
    const __m512 e2 = _mm512_shuffle_f32x4(c[8 + m], c[12 + m], 0x88);
    const __m512 e3 = _mm512_shuffle_f32x4(c[8 + m], c[12 + m], 0xDD);
    _mm512_storeu_ps(out + size_t(m) * stride, _mm512_shuffle_f32x4(e0, e2, 0x88));
    _mm512_storeu_ps(out + size_t(4 + m) * stride, _mm512_shuffle_f32x4(e1, e3, 0x88));
    _mm512_storeu_ps(out + size_t(8 + m) * stride, _mm512_shuffle_f32x4(e0, e2, 0xDD));
    _mm512_storeu_ps(out + size_t(12 + m) * stride, _mm512_shuffle_f32x4(e1, e3, 0xDD));
  }
}
#endif

// Keys [0, n) of one head's block as fp32, transposed: kt[d * stride + j] holds dim d of key j, so
// one vector of kt holds a dim of W keys and a row's scores add up as a matrix product, a broadcast dim at a time,
// with no reduction across lanes.
// Keys go to columns [0, n) of rows `stride` apart, and columns [n, end) are zeroed.
template <typename T>
inline void transpose_block(const T* kp, int64_t ks, int n, int D, int stride, int end, float* kt) {
#if VW == 16 && defined(__AVX512F__)
  if (std::is_same_v<T, float> && n == 16 && D % 16 == 0) {  // a whole block: 16 x 16 tiles in registers
    const float* k = reinterpret_cast<const float*>(kp);
    for (int d0 = 0; d0 < D; d0 += 16) {
      __m512 a[16];
      for (int j = 0; j < 16; ++j) a[j] = _mm512_loadu_ps(k + j * ks + d0);
      transpose16(a, kt + size_t(d0) * stride, stride);
    }
  } else
#endif
  for (int j = 0; j < n; ++j)
    for (int d = 0; d < D; ++d) kt[size_t(d) * stride + j] = to_float(kp[j * ks + d]);
  for (int d = 0; d < D; ++d)
    for (int j = n; j < end; ++j) kt[size_t(d) * stride + j] = 0.f;
}

// Scores of R query rows (D apart at q, already scaled) against the W transposed keys at kt (dims BSP apart), into
// s[r * ss + 0..W). One key vector load feeds R FMAs.
template <int R, int DC = 0>
inline void tile_scores_f32(const float* q, int D_, const float* kt, int BSP, float* s, int64_t ss) {
  // DC: head_dim known at compile time, so each row's query is a constant offset from one pointer (at run time the
  // R row offsets need R registers, more than the core has free, and spill)
  const int D = DC ? DC : D_;
  vf acc[R] = {};
  for (int d = 0; d < D; ++d) {
    const vf k = load(kt + size_t(d) * BSP);
    for (int r = 0; r < R; ++r) acc[r] += splat(q[r * D + d]) * k;
  }
  for (int r = 0; r < R; ++r) store(s + r * ss, acc[r]);
}

// Rows per pass: scores keep one accumulator per row (and a key vector and a broadcast) in registers; values keep
// values_width(rows) output chunks per row.
constexpr int SCORE_ROWS = 12;
constexpr int VALUE_ROWS = VREGS == 32 ? 6 : 2;

// A tile of query rows over its causal keys, a chunk of blocks (chunk_blocks) per online-softmax step. Each block's
// keys are transposed once for all the tile's rows (up to about 96: tokens x heads of the group), so scores come as
// a matrix product, W keys to a vector.
template <typename T>
void run_tile_item(const Args& a, const Item& it, Scratch& sc, float* part) {
#if TIDE_DPBF16
  if constexpr (std::is_same_v<T, bf16>)
    if (dp_serves(a)) return run_tile_item_dp(a, it, sc, part);
#endif
  const int G = a.num_q_heads / a.num_kv_heads, D = a.head_dim, BS = a.block_size, nc = D / W;
  const int NB = chunk_blocks(BS), CK = NB * BS, CSP = (CK + W - 1) / W * W, R = (it.q1 - it.q0) * G;
  const int64_t kv_stride = int64_t(a.num_kv_heads) * D;  // elements between keys of one block
  start_item<T>(a, it, sc, R);
  sc.s.resize(size_t(R) * CSP);
  sc.k.resize(size_t(D) * CSP);
  sc.v.resize(size_t(NB) * BS * D);
  const int32_t* table = a.block_tables + int64_t(it.seq) * a.table_stride;
  const T* k_cache = static_cast<const T*>(a.k_cache);
  const T* v_cache = static_cast<const T*>(a.v_cache);
  const float* vp[MAX_CHUNK_BLOCKS];  // each block's value rows as fp32, their key strides in vs
  int64_t vs[MAX_CHUNK_BLOCKS];
  for (int key0 = it.k0 / BS * BS; key0 < it.k1; key0 += CK) {
    const int j0 = std::max(it.k0 - key0, 0);
    int loaded = 0, blocks = 0;  // keys of the chunk in sc.k (whole blocks, the item's last one maybe in part)
    for (; blocks < NB && key0 + blocks * BS < it.k1; ++blocks) {
      const int b = blocks, kb = key0 + b * BS, n = std::min(BS, it.k1 - kb);
      const int64_t base = (int64_t(table[kb / BS]) * BS * a.num_kv_heads + it.head) * D;
      if (kb + BS < it.k1) {
        block_ahead(a, k_cache, table[kb / BS + 1], it.head).fetch(0, 1, 1);
        block_ahead(a, v_cache, table[kb / BS + 1], it.head).fetch(0, 1, 1);
      }
      const bool last = b + 1 == NB || kb + BS >= it.k1;
      transpose_block(k_cache + base, kv_stride, n, D, CSP, last ? CSP - b * BS : n, sc.k.data() + b * BS);
      vp[b] = block_rows(v_cache, base, kv_stride, b == 0 ? j0 : 0, n, D, sc.v.data() + size_t(b) * BS * D, &vs[b]);
      loaded = b * BS + n;
    }
    for_rows<SCORE_ROWS>(R, [&](auto rows, int r0) {
      constexpr int n = decltype(rows)::value;
      const int visible = std::min(loaded, sc.lim[r0 + n - 1] - key0);  // rows go by token: the last sees the most
      if (visible <= j0) return;
      float* s = &sc.s[size_t(r0) * CSP];
      for (int c = j0 / W * W; c < visible; c += W)
        if (D == 64) tile_scores_f32<n, 64>(&sc.q[size_t(r0) * D], D, sc.k.data() + c, CSP, s + c, CSP);
        else tile_scores_f32<n>(&sc.q[size_t(r0) * D], D, sc.k.data() + c, CSP, s + c, CSP);
      for (int r = r0; r < r0 + n; ++r) {
        const int je = std::min(loaded, sc.lim[r] - key0);
        float* sr = &sc.s[size_t(r) * CSP];
        if (je <= j0) {  // this row's token comes before every key of the chunk: it adds nothing
          std::fill(sr, sr + CSP, 0.f);
          sc.alpha[r] = 1.f;
          continue;
        }
        const float m_old = sc.m[r];
        float sum;
        sc.m[r] = softmax_row(sr, j0, je, CSP, m_old, &sum);
        sc.alpha[r] = m_old == sc.m[r] ? 1.f : m_old == NEG_INF ? 0.f : std::exp(m_old - sc.m[r]);
        sc.l[r] = sc.l[r] * sc.alpha[r] + sum;
      }
      for (int b = 0; b < blocks && b * BS < visible; ++b)  // the first block's pass also rescales by alpha
        for_rows<VALUE_ROWS>(n, [&](auto vrows, int v0) {
          constexpr int m = decltype(vrows)::value;
          block_values<m>(&sc.acc[size_t(r0 + v0) * D], nc, s + size_t(v0) * CSP + b * BS, CSP, vp[b], vs[b],
                          b == 0 ? j0 : 0, std::min(BS, visible - b * BS), b == 0 ? &sc.alpha[r0 + v0] : nullptr,
                          Ahead());
        });
    });
  }
  finish_item<T>(a, it, sc, part, R);
}

// Walks the blocks holding keys [k0, k1) of an item and calls fn(first_row, rows, ks, offset, j0, j1, ahead) for
// each of its kv heads: that head's rows of the block as fp32 (key stride ks, see block_rows), valid in [j0, j1), at
// key offset `offset` from the item's first block, for the item's query rows [first_row, first_row + G); `ahead`
// is the same head's rows of the next block.
template <typename T, typename F>
void for_each_block(const Args& a, const Item& it, const T* cache, float* scratch, F&& fn) {
  const int G = a.num_q_heads / a.num_kv_heads, D = a.head_dim, BS = a.block_size;
  const int64_t kv_stride = int64_t(a.num_kv_heads) * D;
  const int32_t* table = a.block_tables + int64_t(it.seq) * a.table_stride;
  const int kb = it.k0 / BS * BS;
  for (int key0 = kb; key0 < it.k1; key0 += BS) {
    const int j0 = std::max(it.k0 - key0, 0), j1 = std::min(BS, it.k1 - key0);
    for (int h = 0; h < it.nh; ++h) {
      const int64_t base = (int64_t(table[key0 / BS]) * BS * a.num_kv_heads + it.head + h) * D;
      const Ahead ahead = key0 + BS < it.k1 ? block_ahead(a, cache, table[key0 / BS + 1], it.head + h) : Ahead();
      int64_t ks;
      const float* rows = block_rows(cache, base, kv_stride, j0, j1, D, scratch + size_t(h) * BS * D, &ks);
      fn(h * G, rows, ks, key0 - kb, j0, j1, ahead);
    }
  }
}

// One query token (a decode, or a split of one) over keys [k0, k1), all visible to it: every score first, then one
// softmax per row, then the weighted sum of the values. Each block then costs its two passes of FMAs and little
// else, where an online softmax rescales per block and row.
template <typename T>
void run_single_item(const Args& a, const Item& it, Scratch& sc, float* part) {
#if TIDE_DPBF16
  if constexpr (std::is_same_v<T, bf16>)
    if (dp_serves(a)) return run_single_item_dp(a, it, sc, part);
#endif
  const int G = a.num_q_heads / a.num_kv_heads, D = a.head_dim, BS = a.block_size, nc = D / W, R = it.nh * G;
  const int kb = it.k0 / BS * BS, lo = it.k0 - kb, hi = it.k1 - kb;  // scores of row r: s[r * span + key - kb]
  const int span = (hi + W - 1) / W * W;
  start_item<T>(a, it, sc, R);
  sc.s.resize(size_t(R) * span);
  const T* k_cache = static_cast<const T*>(a.k_cache);
  const T* v_cache = static_cast<const T*>(a.v_cache);
  auto scores = [&](int r0, const float* kp, int64_t ks, int off, int j0, int j1, const Ahead& ahead) {
    for_row_chunks(G, [&](auto rows, int g) {
      constexpr int n = decltype(rows)::value;
      block_scores<n>(&sc.q[size_t(r0 + g) * D], nc, kp, ks, BS, j0, j1, &sc.s[size_t(r0 + g) * span + off], span,
                      g == 0 ? ahead : Ahead());
    });
  };
  for_each_block(a, it, k_cache, sc.k.data(), scores);
  for (int h = 0; h < it.nh; ++h)
    block_ahead(a, v_cache, a.block_tables[int64_t(it.seq) * a.table_stride + kb / BS], it.head + h).fetch(0, 1, 1);
  for (int r = 0; r < R; ++r) sc.m[r] = softmax_row(&sc.s[size_t(r) * span], lo, hi, span, NEG_INF, &sc.l[r]);
  auto values = [&](int r0, const float* vp, int64_t ks, int off, int j0, int j1, const Ahead& ahead) {
    for_row_chunks(G, [&](auto rows, int g) {
      constexpr int n = decltype(rows)::value;
      block_values<n>(&sc.acc[size_t(r0 + g) * D], nc, &sc.s[size_t(r0 + g) * span + off], span, vp, ks, j0, j1,
                      nullptr, g == 0 ? ahead : Ahead());
    });
  };
  for_each_block(a, it, v_cache, sc.v.data(), values);
  finish_item<T>(a, it, sc, part, R);
}

// Combines the splits of one decode (sequence, kv head): weights each by exp(its max - the overall max).
template <typename T>
void merge_splits(const Args& a, const Item* first, int num_splits, const float* parts, int part_size) {
  const int G = a.num_q_heads / a.num_kv_heads, D = a.head_dim;
  const int64_t row = a.query_start_loc[first->seq];
  T* out = static_cast<T*>(a.out);
  for (int g = 0; g < G; ++g) {
    float m = NEG_INF;
    for (int s = 0; s < num_splits; ++s) m = std::max(m, parts[size_t(first[s].part) * part_size + G * D + g]);
    float l = 0.f;
    std::vector<float> o(D, 0.f);
    for (int s = 0; s < num_splits; ++s) {
      const float* p = parts + size_t(first[s].part) * part_size;
      const float w = std::exp(p[G * D + g] - m);
      l += w * p[G * D + G + g];
      for (int d = 0; d < D; ++d) o[d] += w * p[g * D + d];
    }
    T* dst = out + (row * a.num_q_heads + first->head * G + g) * D;
    for (int d = 0; d < D; ++d) from_float(o[d] / l, dst + d);
  }
}

// Query rows per prefill tile: about 96 rows (query tokens x heads of the group) share each K/V block read and
// its transposition (twice the rows of 48 took 12% off fp32 prefill on this path's benchmark, bf16 unchanged).
inline int tile_tokens(int group) { return std::max(1, 96 / group); }

// Decodes are split over key ranges of at least this many keys when there are too few items for the threads.
constexpr int MIN_SPLIT_KEYS = 256;

std::vector<Item> plan(const Args& a, int num_threads, std::vector<int>& split_first, int& num_parts) {
  const int G = a.num_q_heads / a.num_kv_heads, tm = tile_tokens(G);
  int64_t base_items = 0;
  for (int b = 0; b < a.num_seqs; ++b) {
    const int q_len = a.query_start_loc[b + 1] - a.query_start_loc[b];
    base_items += int64_t((q_len + tm - 1) / tm) * a.num_kv_heads;
  }
  const int64_t want = 4 * int64_t(num_threads);
  // Decodes take all kv heads in one item when that still leaves plenty of items to even out the threads.
  const bool group_heads = base_items >= 4 * want * a.num_kv_heads;
  std::vector<Item> items;
  num_parts = 0;
  for (int b = 0; b < a.num_seqs; ++b) {
    const int q_len = a.query_start_loc[b + 1] - a.query_start_loc[b], len = a.seq_lens[b];
    if (q_len <= 0) continue;
    int splits = 1;
    if (q_len == 1 && base_items < want && num_threads > 1) {
      splits = int(std::min<int64_t>((want + base_items - 1) / base_items, len / MIN_SPLIT_KEYS));
      splits = std::max(splits, 1);
    }
    if (group_heads && q_len == 1) {  // one item reads every head's rows of each block: contiguous memory
      Item whole{b, 0, 0, 1, 0, len, -1, int64_t(a.num_q_heads) * len};
      whole.nh = a.num_kv_heads;
      items.push_back(whole);
      continue;
    }
    for (int h = 0; h < a.num_kv_heads; ++h) {
      if (splits > 1) {
        const int chunk = (len / splits + a.block_size - 1) / a.block_size * a.block_size;
        split_first.push_back(int(items.size()));
        for (int k0 = 0; k0 < len; k0 += chunk)
          items.push_back({b, h, 0, 1, k0, std::min(len, k0 + chunk), num_parts++, int64_t(G) * chunk});
        split_first.push_back(int(items.size()));
        continue;
      }
      for (int q0 = 0; q0 < q_len; q0 += tm) {
        const int q1 = std::min(q_len, q0 + tm), k1 = len - q_len + q1;
        items.push_back({b, h, q0, q1, 0, k1, -1, int64_t(q1 - q0) * G * k1});
      }
    }
  }
  return items;
}

template <typename T>
void paged_attention(const Args& a, int num_threads) {
  std::vector<int> split_bounds;
  int num_parts = 0;
  std::vector<Item> items = plan(a, num_threads, split_bounds, num_parts);
  // Largest first, handed out dynamically: the long tail of small items evens out the threads.
  std::vector<int> order(items.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = int(i);
  std::sort(order.begin(), order.end(), [&](int x, int y) { return items[x].cost > items[y].cost; });
  const int G = a.num_q_heads / a.num_kv_heads;
  const int part_size = G * a.head_dim + 2 * G;
  std::vector<float> parts(size_t(num_parts) * part_size);
  const int n = int(items.size());
#pragma omp parallel num_threads(num_threads)
  {
    static thread_local Scratch scratch;
#pragma omp for schedule(dynamic, 1)
    for (int i = 0; i < n; ++i) {
      const Item& it = items[order[i]];
      float* part = it.part < 0 ? nullptr : parts.data() + size_t(it.part) * part_size;
      if (it.q1 - it.q0 == 1)
        run_single_item<T>(a, it, scratch, part);
      else
        run_tile_item<T>(a, it, scratch, part);
    }
    const int num_merges = int(split_bounds.size() / 2);
#pragma omp for schedule(static)
    for (int i = 0; i < num_merges; ++i) {
      const int first = split_bounds[2 * i], last = split_bounds[2 * i + 1];
      merge_splits<T>(a, &items[first], last - first, parts.data(), part_size);
    }
  }
}

// ---- element-wise ops (same rounding as the PyTorch twins in kernels/torch_ops.py) ---------------------------------

// residual_out = x + residual (rounded to T); out = weight * T(r * rsqrt(mean(r^2) + eps)), the mean in fp32.
template <typename T>
void add_rms_norm(const T* x, const T* residual, const T* weight, T* out, T* residual_out, int64_t rows, int hidden,
                  float eps, int num_threads) {
  const T* tag = nullptr;
#pragma omp parallel for schedule(static) num_threads(threads_for(rows * hidden, num_threads))
  for (int64_t t = 0; t < rows; ++t) {
    const T* xr = x + t * hidden;
    T* src = residual_out + t * hidden;
    vf sq = {};
    if (residual) {
      const T* rr = residual + t * hidden;
      for (int c = 0; c < hidden; c += W) {
        const vf v = round_to(load(xr + c) + load(rr + c), tag);
        store(src + c, v);
        sq += no_contract(v * v);
      }
    } else {
      for (int c = 0; c < hidden; c += W) {
        const vf v = load(xr + c);
        sq += no_contract(v * v);
      }
      src = const_cast<T*>(xr);
    }
    const float inv = 1.f / std::sqrt(hsum(sq) / float(hidden) + eps);
    T* o = out + t * hidden;
    for (int c = 0; c < hidden; c += W) store(o + c, load(weight + c) * round_to(load(src + c) * inv, tag));
  }
}

// out[t] = T(silu(gate)) * up for x [rows, 2I] = [gate | up] (vector.h's silu).
template <typename T>
void silu_and_mul(const T* x, T* out, int64_t rows, int inter, int num_threads) {
#pragma omp parallel for schedule(static) num_threads(threads_for(rows * inter, num_threads))
  for (int64_t t = 0; t < rows; ++t) {
    const T* g = x + t * 2 * inter;
    int c = 0;
    // Four vectors at a time: each exp is a long dependent chain, which one vector alone leaves the core waiting on.
    for (; c + 4 * W <= inter; c += 4 * W) {
      vf act[4];
      for (int u = 0; u < 4; ++u) act[u] = silu<T>(load(g + c + u * W));
      for (int u = 0; u < 4; ++u) store(out + t * inter + c + u * W, act[u] * load(g + inter + c + u * W));
    }
    for (; c < inter; c += W) store(out + t * inter + c, silu<T>(load(g + c)) * load(g + inter + c));
  }
}

// Rotates one token's heads [num_heads, D] in place by its position's cos/sin row cs = [cos | sin]: neox pairs
// (i, i + D/2); each product and each sum rounded to T. cos and sin are read once for all of the token's heads (held
// in registers up to D = 256 on AVX-512).
template <typename T>
inline void rotate_heads(T* x, int num_heads, int head_dim, const T* cs) {
  const T* tag = nullptr;
  const int half = head_dim / 2;
  constexpr int MAX_VECS = 128 / W;
  for (int c0 = 0; c0 < half; c0 += MAX_VECS * W) {
    const int n = std::min(MAX_VECS, (half - c0) / W);
    vf cos[MAX_VECS], sin[MAX_VECS];
    for (int i = 0; i < n; ++i) cos[i] = load(cs + c0 + i * W), sin[i] = load(cs + half + c0 + i * W);
    for (int h = 0; h < num_heads; ++h) {
      T* x1 = x + int64_t(h) * head_dim + c0;
      T* x2 = x1 + half;
      for (int i = 0; i < n; ++i) {
        const vf a = load(x1 + i * W), b = load(x2 + i * W);
        const vf r1 = no_contract(round_to(a * cos[i], tag)) - no_contract(round_to(b * sin[i], tag));
        const vf r2 = no_contract(round_to(b * cos[i], tag)) + no_contract(round_to(a * sin[i], tag));
        store(x1 + i * W, r1);
        store(x2 + i * W, r2);
      }
    }
  }
}

// Rotates heads [rows, num_heads, D] (token stride `stride`) in place by cos/sin rows [max_pos, D].
template <typename T>
void rotary_neox(const int64_t* positions, T* x, int64_t stride, int64_t rows, int num_heads, int head_dim,
                 const T* cos_sin, int num_threads) {
#pragma omp parallel for schedule(static) num_threads(threads_for(rows * num_heads * head_dim, num_threads))
  for (int64_t t = 0; t < rows; ++t)
    rotate_heads(x + t * stride, num_heads, head_dim, cos_sin + positions[t] * head_dim);
}

// The attention block's glue in one pass over the tokens: rotates q and k in place (as rotary_neox), then copies
// each token's k and v rows ([num_kv_heads * D] contiguous) into its cache slot (slot -1: not written).
template <typename T>
void rotary_write_kv(const int64_t* positions, T* q, int64_t q_stride, int num_q_heads, T* k, int64_t k_stride,
                     const T* v, int64_t v_stride, int num_kv_heads, int head_dim, const T* cos_sin, T* k_cache,
                     T* v_cache, const int64_t* slots, int64_t rows, int num_threads) {
  const int64_t row = int64_t(num_kv_heads) * head_dim;
#pragma omp parallel for schedule(static) \
    num_threads(threads_for(rows * (num_q_heads + num_kv_heads) * head_dim, num_threads))
  for (int64_t t = 0; t < rows; ++t) {
    const T* cs = cos_sin + positions[t] * head_dim;
    rotate_heads(q + t * q_stride, num_q_heads, head_dim, cs);
    rotate_heads(k + t * k_stride, num_kv_heads, head_dim, cs);
    if (slots[t] < 0) continue;
    std::memcpy(k_cache + slots[t] * row, k + t * k_stride, sizeof(T) * row);
    std::memcpy(v_cache + slots[t] * row, v + t * v_stride, sizeof(T) * row);
  }
}

}  // namespace

extern "C" {

// What the library was compiled for: the vector width in floats.
int tide_vector_width() { return W; }

// Whether bf16 attention runs on vdpbf16ps (built with AVX512_BF16 at the native width).
int tide_bf16_dot_products() { return TIDE_DPBF16; }

// Attention of q [T, Hq, D] (row stride q_stride elements) over the paged cache; writes out [T, Hq, D].
// dtype: 0 = float32, 1 = bfloat16 (q, caches and out share it). Returns 0, or -1 for arguments it cannot serve.
int tide_paged_attention(const void* q, int64_t q_stride, const void* k_cache, const void* v_cache, void* out,
                         const int32_t* query_start_loc, const int32_t* seq_lens, const int32_t* block_tables,
                         int64_t table_stride, int num_seqs, int num_q_heads, int num_kv_heads, int head_dim,
                         int block_size, float scale, int dtype, int num_threads) {
  if (num_kv_heads <= 0 || num_q_heads % num_kv_heads || head_dim % W || block_size <= 0) return -1;
  const Args a{q, q_stride, k_cache, v_cache, out, query_start_loc, seq_lens, block_tables, table_stride,
               num_seqs, num_q_heads, num_kv_heads, head_dim, block_size, scale};
  num_threads = std::max(1, num_threads);
  if (dtype == 0)
    paged_attention<float>(a, num_threads);
  else if (dtype == 1)
    paged_attention<bf16>(a, num_threads);
  else
    return -1;
  return 0;
}

// Copies key/value rows [T, row_elems] (row stride key_stride / value_stride) into the caches at slot_mapping[t]
// (slot = block * block_size + offset, row_elems = Hkv * D contiguous elements per slot); slot -1 is skipped.
// Returns 0, or -1 (and writes nothing) when a slot is past num_slots.
int tide_write_kv_cache(const void* key, int64_t key_stride, const void* value, int64_t value_stride,
                        void* k_cache, void* v_cache, const int64_t* slot_mapping, int64_t num_tokens,
                        int64_t num_slots, int64_t row_elems, int elem_size) {
  for (int64_t t = 0; t < num_tokens; ++t)
    if (slot_mapping[t] >= num_slots) return -1;
  const char* k = static_cast<const char*>(key);
  const char* v = static_cast<const char*>(value);
  char* kc = static_cast<char*>(k_cache);
  char* vc = static_cast<char*>(v_cache);
  const size_t row_bytes = size_t(row_elems) * elem_size;
  for (int64_t t = 0; t < num_tokens; ++t) {
    const int64_t slot = slot_mapping[t];
    if (slot < 0) continue;
    std::memcpy(kc + slot * row_bytes, k + t * key_stride * elem_size, row_bytes);
    std::memcpy(vc + slot * row_bytes, v + t * value_stride * elem_size, row_bytes);
  }
  return 0;
}

// Element-wise ops; dtype 0 = float32, 1 = bfloat16. The callers check that widths are multiples of the vector
// width. residual may be null (then residual_out is x itself and is not written).
void tide_add_rms_norm(const void* x, const void* residual, const void* weight, void* out, void* residual_out,
                       int64_t rows, int hidden, float eps, int dtype, int num_threads) {
  if (dtype == 0)
    add_rms_norm(static_cast<const float*>(x), static_cast<const float*>(residual),
                 static_cast<const float*>(weight), static_cast<float*>(out), static_cast<float*>(residual_out),
                 rows, hidden, eps, num_threads);
  else
    add_rms_norm(static_cast<const bf16*>(x), static_cast<const bf16*>(residual), static_cast<const bf16*>(weight),
                 static_cast<bf16*>(out), static_cast<bf16*>(residual_out), rows, hidden, eps, num_threads);
}

void tide_silu_and_mul(const void* x, void* out, int64_t rows, int inter, int dtype, int num_threads) {
  if (dtype == 0)
    silu_and_mul(static_cast<const float*>(x), static_cast<float*>(out), rows, inter, num_threads);
  else
    silu_and_mul(static_cast<const bf16*>(x), static_cast<bf16*>(out), rows, inter, num_threads);
}

void tide_rotary_neox(const int64_t* positions, void* x, int64_t stride, int64_t rows, int num_heads, int head_dim,
                      const void* cos_sin, int dtype, int num_threads) {
  if (dtype == 0)
    rotary_neox(positions, static_cast<float*>(x), stride, rows, num_heads, head_dim,
                static_cast<const float*>(cos_sin), num_threads);
  else
    rotary_neox(positions, static_cast<bf16*>(x), stride, rows, num_heads, head_dim,
                static_cast<const bf16*>(cos_sin), num_threads);
}

// rotary_write_kv for q [T, Hq, D], k and v [T, Hkv, D] (token strides in elements, heads contiguous), cos/sin
// [max_pos, D] and caches of num_slots slots; dtype 0 = float32, 1 = bfloat16. Returns 0, or -1 (touching
// nothing) when a slot is past num_slots.
int tide_rotary_write_kv(const int64_t* positions, void* q, int64_t q_stride, int num_q_heads, void* k,
                         int64_t k_stride, const void* v, int64_t v_stride, int num_kv_heads, int head_dim,
                         const void* cos_sin, void* k_cache, void* v_cache, const int64_t* slots, int64_t rows,
                         int64_t num_slots, int dtype, int num_threads) {
  for (int64_t t = 0; t < rows; ++t)
    if (slots[t] >= num_slots) return -1;
  if (dtype == 0)
    rotary_write_kv(positions, static_cast<float*>(q), q_stride, num_q_heads, static_cast<float*>(k), k_stride,
                    static_cast<const float*>(v), v_stride, num_kv_heads, head_dim,
                    static_cast<const float*>(cos_sin), static_cast<float*>(k_cache), static_cast<float*>(v_cache),
                    slots, rows, num_threads);
  else
    rotary_write_kv(positions, static_cast<bf16*>(q), q_stride, num_q_heads, static_cast<bf16*>(k), k_stride,
                    static_cast<const bf16*>(v), v_stride, num_kv_heads, head_dim,
                    static_cast<const bf16*>(cos_sin), static_cast<bf16*>(k_cache), static_cast<bf16*>(v_cache),
                    slots, rows, num_threads);
  return 0;
}

}  // extern "C"
