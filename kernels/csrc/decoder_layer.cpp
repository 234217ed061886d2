// One decoder layer of a Llama-style model (RMSNorm, fused qkv with neox rotary, paged attention, gated SiLU MLP; no
// biases, no q/k norm) in a single call: the same exported kernels, in the same order and with the same arguments as
// the model's modules call them one by one from Python (engine/models/native_layers.py), so the bits are the same.
// What it saves is the Python around each of its eight calls (checks, output tensors, ctypes), which on a small model
// is a sixth of a decode step.
#include <cstdint>

extern "C" {

int tide_linear(const void* x, int64_t ldx, int64_t M, int64_t K, const void* packed, const void* bias, int64_t N,
                void* y, int64_t ldy, int dtype, int y_dtype, int layout, int num_threads);
void tide_add_rms_norm(const void* x, const void* residual, const void* weight, void* out, void* residual_out,
                       int64_t rows, int hidden, float eps, int dtype, int num_threads);
int tide_rotary_write_kv(const int64_t* positions, void* q, int64_t q_stride, int num_q_heads, void* k,
                         int64_t k_stride, const void* v, int64_t v_stride, int num_kv_heads, int head_dim,
                         const void* cos_sin, void* k_cache, void* v_cache, const int64_t* slots, int64_t rows,
                         int64_t num_slots, int dtype, int num_threads);
int tide_paged_attention(const void* q, int64_t q_stride, const void* k_cache, const void* v_cache, void* out,
                         const int32_t* query_start_loc, const int32_t* seq_lens, const int32_t* block_tables,
                         int64_t table_stride, int num_seqs, int num_q_heads, int num_kv_heads, int head_dim,
                         int block_size, float scale, int dtype, int num_threads);

// A layer's weights: its two norms and its projections packed by tide_pack_linear_weight (gate_up GATED).
struct TideLayerWeights {
  const void *input_norm, *post_norm, *qkv, *o, *gate_up, *down;
};

// What every layer of one step shares: shapes, the step's positions, slots and attention layout, and scratch rows.
struct TideLayerStep {
  int64_t rows, num_slots, table_stride;
  int hidden, num_q_heads, num_kv_heads, head_dim, inter, num_seqs, block_size, dtype, num_threads;
  float eps, scale;
  const int64_t *positions, *slots;
  const void* cos_sin;
  const int32_t *query_start_loc, *seq_lens, *block_tables;
  void *x, *qkv, *attn, *o, *act;  // [rows, hidden], [rows, q + 2 kv], [rows, q], [rows, hidden], [rows, inter]
};

// h_out = the layer's output for h; residual is updated in place. The first layer has no residual yet (null): h
// itself becomes it, as in the modules, and is overwritten. Returns 0, or the 1-based stage that refused its
// arguments (nothing after it ran).
int tide_decoder_layer(const TideLayerWeights* w, const TideLayerStep* s, void* h, void* residual, void* h_out,
                       void* k_cache, void* v_cache) {
  const int D = s->head_dim, q_size = s->num_q_heads * D, kv_size = s->num_kv_heads * D;
  const int width = q_size + 2 * kv_size, dt = s->dtype, nt = s->num_threads;
  const int64_t es = dt == 0 ? 4 : 2;
  char* qkv = static_cast<char*>(s->qkv);
  tide_add_rms_norm(h, residual, w->input_norm, s->x, residual, s->rows, s->hidden, s->eps, dt, nt);
  if (residual == nullptr) residual = h;
  if (tide_linear(s->x, s->hidden, s->rows, s->hidden, w->qkv, nullptr, width, qkv, width, dt, dt, 0, nt)) return 1;
  if (tide_rotary_write_kv(s->positions, qkv, width, s->num_q_heads, qkv + q_size * es, width,
                           qkv + (q_size + kv_size) * es, width, s->num_kv_heads, D, s->cos_sin, k_cache, v_cache,
                           s->slots, s->rows, s->num_slots, dt, nt))
    return 2;
  if (tide_paged_attention(qkv, width, k_cache, v_cache, s->attn, s->query_start_loc, s->seq_lens, s->block_tables,
                           s->table_stride, s->num_seqs, s->num_q_heads, s->num_kv_heads, D, s->block_size, s->scale,
                           dt, nt))
    return 3;
  if (tide_linear(s->attn, q_size, s->rows, q_size, w->o, nullptr, s->hidden, s->o, s->hidden, dt, dt, 0, nt)) return 4;
  tide_add_rms_norm(s->o, residual, w->post_norm, s->x, residual, s->rows, s->hidden, s->eps, dt, nt);
  if (tide_linear(s->x, s->hidden, s->rows, s->hidden, w->gate_up, nullptr, 2 * s->inter, s->act, s->inter, dt, dt,
                  2, nt))
    return 5;
  if (tide_linear(s->act, s->inter, s->rows, s->inter, w->down, nullptr, s->hidden, h_out, s->hidden, dt, dt, 0, nt))
    return 6;
  return 0;
}

}  // extern "C"
