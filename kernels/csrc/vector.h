// Vector helpers shared by Tide's native CPU kernels (paged_attention.cpp, lora.cpp, linear.cpp, argmax.cpp).
//
// The vector width W is 16 floats with AVX-512, 8 with AVX2, 4 otherwise (GCC vector extensions, so the same code is
// exercised at every width); TIDE_VECTOR_WIDTH forces a width (the tests build the 16-wide code on an AVX2 machine,
// where GCC runs each 16-wide op as two 8-wide ones). Everything sits in an anonymous namespace: each translation
// unit has its own copy, and nothing here is part of the library's C ABI.
#pragma once
#include <omp.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif
#if defined(__AVX512BF16__) && !defined(TIDE_VECTOR_WIDTH)
#define TIDE_DPBF16 1  // bf16 dot products on the CPU's own bf16 arithmetic (vdpbf16ps)
#else
#define TIDE_DPBF16 0
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(TIDE_VECTOR_WIDTH)
#define VW TIDE_VECTOR_WIDTH
#elif defined(__AVX512F__)
#define VW 16
#elif defined(__AVX2__)
#define VW 8
#else
#define VW 4
#endif
constexpr int W = VW;

typedef float vf __attribute__((vector_size(W * 4)));
typedef int32_t vi __attribute__((vector_size(W * 4)));
typedef uint32_t vu __attribute__((vector_size(W * 4)));
typedef uint16_t vh __attribute__((vector_size(W * 2)));
typedef uint16_t bf16;

namespace {

constexpr float NEG_INF = -INFINITY;

inline vf splat(float x) { return x - (vf){}; }  // x - 0 folds away (x + 0 does not: -0 + 0 = +0)

inline vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// bf16 <-> fp32. On AVX-512 a load widens in one move (GCC splits the generic conversion into halves and lane
// permutes); with AVX512_BF16 the rounding to nearest even is the CPU's own vcvtneps2bf16, one instruction where the
// integer formula takes five (bf16 rotary 1.8x, SiLU-and-mul 1.3x faster). They agree on every normal number; the
// instruction gives a quiet NaN for a NaN (the formula could carry a NaN into an infinity) and flushes results
// below bf16's smallest normal (1.2e-38) to zero, where torch keeps a subnormal.
inline vf load(const bf16* p) {  // bf16 -> fp32 is a 16-bit shift
#if VW == 16 && defined(__AVX512F__)
  return (vf)_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16);
#else
  vh h;
  std::memcpy(&h, p, sizeof h);
  return (vf)(__builtin_convertvector(h, vu) << 16);
#endif
}

inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }

inline void store(bf16* p, vf v) {  // round to nearest even
#if TIDE_DPBF16
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), (__m256i)_mm512_cvtneps_pbh((__m512)v));
#else
  vu u = (vu)v;
  u += 0x7fffu + ((u >> 16) & 1u);
#if VW == 16 && defined(__AVX512F__)
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(_mm512_srli_epi32((__m512i)u, 16)));
#else
  vh h = __builtin_convertvector(u >> 16, vh);
  std::memcpy(p, &h, sizeof h);
#endif
#endif
}

// Rounds v to the precision of T (bf16: to nearest even, kept in fp32), as torch does after each bf16 op.
inline vf round_to(vf v, const float*) { return v; }
inline vf round_to(vf v, const bf16*) {
#if TIDE_DPBF16
  return (vf)_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh((__m512)v)), 16);
#else
  vu u = (vu)v;
  u += 0x7fffu + ((u >> 16) & 1u);
  return (vf)(u & 0xffff0000u);
#endif
}

// Keeps the compiler from fusing a product into a following add (FMA), so results round as torch's do.
inline vf no_contract(vf v) {
#if VW * 4 <= 32 || defined(__AVX512F__)
  asm("" : "+x"(v));
#else
  asm("" : "+m"(v));  // a vector wider than the machine's registers (the tests' 16-wide build on AVX2)
#endif
  return v;
}

// exp(x), Cephes' expf polynomial: about 1 ulp. exp(-inf) and anything below the smallest normal float's
// logarithm give exactly 0; arguments above 88.376 are clamped there (exp ~ 2.4e38).
inline vf vexp(vf x) {
  const vf lo = splat(-87.3365448f), hi = splat(88.3762626647949f);
  vi dead = x < lo;
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  vf t = x * 1.44269504088896341f;
  vi n_i = __builtin_convertvector(t + (t >= 0 ? splat(0.5f) : splat(-0.5f)), vi);
  vf n = __builtin_convertvector(n_i, vf);
  vf r = x - n * 0.693359375f + n * 2.12194440e-4f;
  vf y = splat(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3333452003e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * (r * r) + r + 1.f;
  y = y * (vf)((n_i + 127) << 23);
  return (vf)((vi)y & ~dead);
}

// T(silu(x)) in fp32, x already in T's precision: the one formula of the separate op (silu_and_mul) and of the gated
// linear's tiles (linear.cpp), so that both give the same bits.
template <typename T>
inline vf silu(vf x) {
  const T* tag = nullptr;
  return round_to(x / (1.f + vexp(-x)), tag);
}

// Threads for an element-wise op over `elems` elements: below ~64k, starting a second thread costs more than it saves.
inline int threads_for(int64_t elems, int num_threads) { return elems < (1 << 16) ? 1 : num_threads; }

inline float hsum(vf v) {
  float s = 0.f;
  for (int i = 0; i < W; ++i) s += v[i];
  return s;
}

// Max and sum of a vector's N lanes by halving (log2 N steps), where hsum adds lane by lane in order.
template <int N>
struct lanes {
  typedef float type __attribute__((vector_size(N * 4)));
};
template <int N, bool Max>
inline float reduce_tree(typename lanes<N>::type v) {
  if constexpr (N == 1) {
    return v[0];
  } else {
    typename lanes<N / 2>::type lo, hi;
    std::memcpy(&lo, &v, sizeof lo);
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof lo, sizeof hi);
    if constexpr (Max) return reduce_tree<N / 2, Max>(lo > hi ? lo : hi);
    else return reduce_tree<N / 2, Max>(lo + hi);
  }
}
inline float hmax_tree(vf v) { return reduce_tree<W, true>(v); }
inline float hsum_tree(vf v) { return reduce_tree<W, false>(v); }

// Lane shuffle of two vectors by constant indices (0..W-1 from x, W..2W-1 from y). GCC before 12 lacks
// __builtin_shufflevector and clang lacks __builtin_shuffle.
#if defined(__clang__)
#define SHUFFLE(x, y, ...) __builtin_shufflevector(x, y, __VA_ARGS__)
#else
#define SHUFFLE(x, y, ...) __builtin_shuffle(x, y, (vi){__VA_ARGS__})
#endif

// One level of a transposing reduction: x and y hold partial sums in lane blocks of K; the result holds, in
// alternate blocks, x's and y's sums over adjacent block pairs. fold<2>(fold<1>(a, b), fold<1>(c, d)) leaves the
// four vectors' partial sums in lanes l % 4 with 6 shuffles, instead of four scalar reductions.
template <int K>
inline vf fold(vf x, vf y) {
  static_assert(K == 1 || K == 2, "only the two levels that close 4 keys");
#if VW == 4
  if constexpr (K == 1) return SHUFFLE(x, y, 0, 4, 2, 6) + SHUFFLE(x, y, 1, 5, 3, 7);
  else return SHUFFLE(x, y, 0, 1, 4, 5) + SHUFFLE(x, y, 2, 3, 6, 7);
#elif VW == 8
  if constexpr (K == 1)
    return SHUFFLE(x, y, 0, 8, 2, 10, 4, 12, 6, 14) +
           SHUFFLE(x, y, 1, 9, 3, 11, 5, 13, 7, 15);
  else
    return SHUFFLE(x, y, 0, 1, 8, 9, 4, 5, 12, 13) +
           SHUFFLE(x, y, 2, 3, 10, 11, 6, 7, 14, 15);
#elif VW == 16
  if constexpr (K == 1)
    return SHUFFLE(x, y, 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30) +
           SHUFFLE(x, y, 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
  else
    return SHUFFLE(x, y, 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29) +
           SHUFFLE(x, y, 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
#else
#error "vector width must be 4, 8 or 16"
#endif
}

inline float to_float(float x) { return x; }
inline float to_float(bf16 x) {
  uint32_t u = uint32_t(x) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline void from_float(float x, float* dst) { *dst = x; }
inline void from_float(float x, bf16* dst) {  // round to nearest even
  uint32_t u;
  std::memcpy(&u, &x, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  *dst = bf16(u >> 16);
}

}  // namespace
