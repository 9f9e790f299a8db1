// Fused CPU scorer for the scoring contract in unshuffle/reference.py. No Python headers here: the
// binding (bindings.cpp) validates shapes/dtypes and calls these functions with raw pointers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "stop.hpp"

namespace unshuffle {

// 64-byte aligned float buffer (zero-initialised).
class FloatBuf {
 public:
  FloatBuf() = default;
  explicit FloatBuf(std::size_t n);
  float* data() { return p_.get(); }
  const float* data() const { return p_.get(); }
  std::size_t size() const { return n_; }

 private:
  struct Free { void operator()(float* p) const; };
  std::unique_ptr<float[], Free> p_;
  std::size_t n_ = 0;
};

// Block weights repacked once per call so that both inner loops vectorise over the output features:
// win_t[a] is W_in[a]^T (d, Hp) and wout_t[b] is W_out[b]^T (h, Dp), zero-padded to the SIMD width.
struct PackedNet {
  int64_t Ni = 0, No = 0, d = 0, h = 0, Dp = 0, Hp = 0;
  FloatBuf win_t, bin, wout_t, bout;
};

PackedNet pack_net(const float* W_in, const float* b_in, int64_t Ni, const float* W_out, const float* b_out,
                   int64_t No, int64_t d, int64_t h);

// The last layer and the target rows the losses are measured against.
struct Head {
  const float* W_last;  // (k, d)
  const float* b_last;  // (k,)
  const float* target;  // (R, k)
  int64_t k;
};

// Rows per work item; a multiple of kRowAlign. 0 means the default.
constexpr int kRowAlign = 24;
int default_tile_rows();

// Error found by the core's index checks (the binding turns it into a ValueError naming `arg`).
struct IndexError {
  bool ok = true;
  std::string arg;   // argument name, e.g. "seq_in"
  int64_t row = -1;  // first index (candidate), -1 if 1-D
  int64_t col = -1;  // second index
  int64_t value = 0;
  std::string what;  // what is wrong
};

// Checks starts in [0, P), seq_in/seq_out in range with consistent -1 padding.
IndexError check_candidates(const int64_t* starts, const int64_t* seq_in, const int64_t* seq_out, int64_t K,
                            int64_t L, int64_t P, int64_t Ni, int64_t No);

// losses[c] = contract loss of candidate c. prefix is (P, R, d). Per-candidate sums are reduced in a fixed
// order (row tile by row tile), so results do not depend on n_threads (0 = OpenMP default).
// Returns the number of block-rows computed (sum of candidate lengths times R). With a `stop` that fires
// during the call, the remaining work items are skipped, *stopped is set and the losses are meaningless.
int64_t score_candidates(const PackedNet& net, const float* prefix, int64_t R, const int64_t* starts,
                         const int64_t* seq_in, const int64_t* seq_out, int64_t K, int64_t L, const Head& head,
                         double* losses, int n_threads, int tile_rows = 0, const Stopper* stop = nullptr,
                         bool* stopped = nullptr);

// prefix is (N+1, R, d); rows prefix[0..p0] must be valid. Recomputes prefix[p0+1..N] for the order.
void forward_from(const PackedNet& net, float* prefix, int64_t R, const int64_t* order_in, const int64_t* order_out,
                  int64_t N, int64_t p0, int n_threads, int tile_rows = 0);

// Applies blocks to rows one call at a time, single-threaded, with the exact tile arithmetic of forward_from
// (so its outputs are bit-identical to forward_from's for the same block). Holds its own scratch tiles;
// one per thread.
class RowApplier {
 public:
  explicit RowApplier(const PackedNet& net, int tile_rows = 0);
  // y (R, d) = x + W_out[b] relu(W_in[a] x + b_in[a]) + b_out[b]; y may equal x.
  void apply(int64_t a, int64_t b, const float* x, float* y, int64_t R);

 private:
  const PackedNet& net_;
  int T_;
  FloatBuf xb_, hb_;
};

// Loss of the rows x (R, d) under the head, with the same tiling/reduction order as score_candidates.
double head_loss(const float* x, int64_t R, int64_t d, const Head& head, int tile_rows = 0);

// The scorer's register-tiled kernel, exported for the other dense loops of the core (forward.cpp):
// C[M x nvec*simd_floats()] (op)= f(A[M x K] B[K x nvec*simd_floats()] + bias), f = relu or identity, op '='
// or '+=' (add). M must be a multiple of kRowAlign; B, bias and C rows aligned to the SIMD width.
void gemm_f32(const float* A, int64_t lda, const float* B, int64_t ldb, int64_t K, const float* bias, float* C,
              int64_t ldc, int64_t M, int64_t nvec, bool relu, bool add);
// Floats per SIMD vector of the kernel (PackedNet pads d and h to a multiple of this).
int simd_floats();
// Smallest row count M that gemm_f32 accepts for nvec column vectors (M must be a multiple of it); it
// divides kRowAlign. Lets callers with few rows pad less than kRowAlign (certificate.cpp).
int gemm_row_align(int64_t nvec);

}  // namespace unshuffle
