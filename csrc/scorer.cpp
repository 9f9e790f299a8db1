// Fused CPU scorer: each work item is one (candidate, row tile); the tile's activations stay in L1/L2
// while every block of the candidate is applied, then the last layer and the squared error are fused in.
#include "scorer.hpp"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace unshuffle {

namespace {

// SIMD width (floats) and the accumulator budget of the register file: AVX-512 has 32 vector registers
// (24 accumulators + B row + broadcast), AVX/SSE have 16.
#if defined(__AVX512F__)
constexpr int VW = 16, ACC = 24, NVMAX = 6;
#elif defined(__AVX__)
constexpr int VW = 8, ACC = 12, NVMAX = 3;
#else
constexpr int VW = 4, ACC = 12, NVMAX = 3;
#endif

typedef float vf __attribute__((vector_size(VW * sizeof(float))));

inline vf vload(const float* p) { return *reinterpret_cast<const vf*>(p); }  // p is VW-aligned
inline void vstore(float* p, vf v) { *reinterpret_cast<vf*>(p) = v; }

// Rows per micro-tile for NV column vectors; every value divides kRowAlign (24).
constexpr int mr_for(int nv) { return ACC / nv >= 8 ? 8 : ACC / nv; }

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// C[MR x NV*VW] (op)= A[MR x K] * B[K x NV*VW] + bias. RELU: C = relu(.), ADD: C += (.).
template <int MR, int NV, bool RELU, bool ADD>
inline void micro(const float* __restrict A, int64_t lda, const float* __restrict B, int64_t ldb, int64_t K,
                  const float* __restrict bias, float* __restrict C, int64_t ldc) {
  vf acc[MR][NV];
#pragma GCC unroll 8
  for (int j = 0; j < NV; ++j) {
    const vf bj = vload(bias + j * VW);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) acc[i][j] = bj;
  }
  for (int64_t k = 0; k < K; ++k) {
    vf b[NV];
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) b[j] = vload(B + k * ldb + j * VW);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const vf a = vf{} + A[i * lda + k];
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) acc[i][j] += a * b[j];
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) {
      vf v = acc[i][j];
      float* c = C + i * ldc + j * VW;
      if (RELU) v = v > vf{} ? v : vf{};
      if (ADD) v = vload(c) + v;
      vstore(c, v);
    }
  }
}

template <bool RELU, bool ADD, int NV>
void run_cols(const float* A, int64_t lda, const float* B, int64_t ldb, int64_t K, const float* bias, float* C,
              int64_t ldc, int64_t M) {
  constexpr int MR = mr_for(NV);
  for (int64_t i = 0; i < M; i += MR) micro<MR, NV, RELU, ADD>(A + i * lda, lda, B, ldb, K, bias, C + i * ldc, ldc);
}

// M (a multiple of kRowAlign) rows, nvec*VW columns, split into near-equal column chunks of <= NVMAX vectors.
template <bool RELU, bool ADD>
void gemm(const float* A, int64_t lda, const float* B, int64_t ldb, int64_t K, const float* bias, float* C,
          int64_t ldc, int64_t M, int64_t nvec) {
  const int64_t nchunks = (nvec + NVMAX - 1) / NVMAX;
  const int64_t base = nvec / nchunks, extra = nvec % nchunks;
  int64_t j0 = 0;
  for (int64_t ch = 0; ch < nchunks; ++ch) {
    const int64_t nv = base + (ch < extra ? 1 : 0), off = j0 * VW;
    switch (nv) {
      case 1: run_cols<RELU, ADD, 1>(A, lda, B + off, ldb, K, bias + off, C + off, ldc, M); break;
      case 2: run_cols<RELU, ADD, 2>(A, lda, B + off, ldb, K, bias + off, C + off, ldc, M); break;
      case 3: run_cols<RELU, ADD, 3>(A, lda, B + off, ldb, K, bias + off, C + off, ldc, M); break;
      case 4: run_cols<RELU, ADD, 4>(A, lda, B + off, ldb, K, bias + off, C + off, ldc, M); break;
      case 5: run_cols<RELU, ADD, 5>(A, lda, B + off, ldb, K, bias + off, C + off, ldc, M); break;
      case 6: run_cols<RELU, ADD, 6>(A, lda, B + off, ldb, K, bias + off, C + off, ldc, M); break;
      default: break;  // unreachable: nv <= NVMAX
    }
    j0 += nv;
  }
}

// One residual block on a tile: x (M, Dp) += W_out[b] relu(W_in[a] x + b_in[a]) + b_out[b].
inline void apply_block(const PackedNet& n, int64_t a, int64_t b, float* x, float* hid, int64_t M) {
  gemm<true, false>(x, n.Dp, n.win_t.data() + a * n.d * n.Hp, n.Hp, n.d, n.bin.data() + a * n.Hp, hid, n.Hp, M,
                    n.Hp / VW);
  gemm<false, true>(hid, n.Hp, n.wout_t.data() + b * n.h * n.Dp, n.Dp, n.h, n.bout.data() + b * n.Dp, x, n.Dp, M,
                    n.Dp / VW);
}

// Copies nr rows of width d into the tile (stride Dp), zeroing the padding columns and rows nr..M-1.
inline void load_tile(const float* src, int64_t nr, int64_t d, int64_t Dp, int64_t M, float* x) {
  for (int64_t r = 0; r < nr; ++r) {
    std::memcpy(x + r * Dp, src + r * d, sizeof(float) * d);
    std::memset(x + r * Dp + d, 0, sizeof(float) * (Dp - d));
  }
  if (M > nr) std::memset(x + nr * Dp, 0, sizeof(float) * (M - nr) * Dp);
}

inline void store_tile(const float* x, int64_t nr, int64_t d, int64_t Dp, float* dst) {
  for (int64_t r = 0; r < nr; ++r) std::memcpy(dst + r * d, x + r * Dp, sizeof(float) * d);
}

// Sum over nr rows and k outputs of (x W_last^T + b_last - target)^2: float32 output, float64 sum.
// noinline + always called on a 64-byte aligned, Dp-strided tile: one compiled reduction order everywhere.
__attribute__((noinline)) double tile_loss(const float* x, int64_t ldx, int64_t nr, int64_t d, const Head& hd, const float* target) {
  double s = 0.0;
  for (int64_t r = 0; r < nr; ++r) {
    const float* xr = x + r * ldx;
    for (int64_t o = 0; o < hd.k; ++o) {
      const float* w = hd.W_last + o * d;
      float dot = 0.f;
      for (int64_t j = 0; j < d; ++j) dot += xr[j] * w[j];
      const float diff = (dot + hd.b_last[o]) - target[r * hd.k + o];
      s += static_cast<double>(diff) * static_cast<double>(diff);
    }
  }
  return s;
}

// Threads for a call of `flops` work: small calls stay on one thread, since waking a team costs tens of
// microseconds (far more when the machine is busy) and results do not depend on the thread count anyway.
int resolve_threads(int n_threads, double flops) {
#ifdef _OPENMP
  const int nt = n_threads > 0 ? n_threads : omp_get_max_threads();
  const double per_thread = 4e6;  // ~30-50 us of kernel time
  return static_cast<int>(std::max(1.0, std::min<double>(nt, flops / per_thread)));
#else
  (void)n_threads, (void)flops;
  return 1;
#endif
}

int resolve_tile(int tile_rows) {
  if (tile_rows <= 0) return default_tile_rows();
  return static_cast<int>(round_up(tile_rows, kRowAlign));
}

}  // namespace

void FloatBuf::Free::operator()(float* p) const { std::free(p); }

FloatBuf::FloatBuf(std::size_t n) : n_(n) {
  const std::size_t bytes = std::max<std::size_t>(64, round_up(static_cast<int64_t>(n * sizeof(float)), 64));
  float* p = static_cast<float*>(std::aligned_alloc(64, bytes));
  if (!p) throw std::bad_alloc();
  std::memset(p, 0, bytes);
  p_.reset(p);
}

int default_tile_rows() { return 48; }

PackedNet pack_net(const float* W_in, const float* b_in, int64_t Ni, const float* W_out, const float* b_out,
                   int64_t No, int64_t d, int64_t h) {
  PackedNet n;
  n.Ni = Ni, n.No = No, n.d = d, n.h = h;
  n.Dp = round_up(std::max<int64_t>(d, 1), VW);
  n.Hp = round_up(std::max<int64_t>(h, 1), VW);
  n.win_t = FloatBuf(static_cast<std::size_t>(std::max<int64_t>(Ni, 1) * d * n.Hp));
  n.bin = FloatBuf(static_cast<std::size_t>(std::max<int64_t>(Ni, 1) * n.Hp));
  n.wout_t = FloatBuf(static_cast<std::size_t>(std::max<int64_t>(No, 1) * h * n.Dp));
  n.bout = FloatBuf(static_cast<std::size_t>(std::max<int64_t>(No, 1) * n.Dp));
  for (int64_t a = 0; a < Ni; ++a) {
    float* wt = n.win_t.data() + a * d * n.Hp;
    const float* w = W_in + a * h * d;
    for (int64_t o = 0; o < h; ++o)
      for (int64_t i = 0; i < d; ++i) wt[i * n.Hp + o] = w[o * d + i];
    std::memcpy(n.bin.data() + a * n.Hp, b_in + a * h, sizeof(float) * h);
  }
  for (int64_t b = 0; b < No; ++b) {
    float* wt = n.wout_t.data() + b * h * n.Dp;
    const float* w = W_out + b * d * h;
    for (int64_t o = 0; o < d; ++o)
      for (int64_t i = 0; i < h; ++i) wt[i * n.Dp + o] = w[o * h + i];
    std::memcpy(n.bout.data() + b * n.Dp, b_out + b * d, sizeof(float) * d);
  }
  return n;
}

IndexError check_candidates(const int64_t* starts, const int64_t* seq_in, const int64_t* seq_out, int64_t K,
                            int64_t L, int64_t P, int64_t Ni, int64_t No) {
  IndexError e;
  auto fail = [&](const char* arg, int64_t r, int64_t c, int64_t v, std::string what) {
    e.ok = false, e.arg = arg, e.row = r, e.col = c, e.value = v, e.what = std::move(what);
    return e;
  };
  for (int64_t c = 0; c < K; ++c)
    if (starts[c] < 0 || starts[c] >= P)
      return fail("starts", c, -1, starts[c], "is out of range [0, " + std::to_string(P) + ") (prefix has " +
                                                  std::to_string(P) + " positions)");
  for (int64_t c = 0; c < K; ++c) {
    bool ended = false;
    for (int64_t t = 0; t < L; ++t) {
      const int64_t a = seq_in[c * L + t], b = seq_out[c * L + t];
      if (a < -1 || a >= Ni)
        return fail("seq_in", c, t, a, "is out of range [-1, " + std::to_string(Ni) + ") (W_in has " +
                                           std::to_string(Ni) + " pieces; -1 is padding)");
      if (b < -1 || b >= No)
        return fail("seq_out", c, t, b, "is out of range [-1, " + std::to_string(No) + ") (W_out has " +
                                            std::to_string(No) + " pieces; -1 is padding)");
      if (ended) continue;  // the contract ignores entries after the first padding
      if ((a < 0) != (b < 0))
        return fail("seq_out", c, t, b, a < 0 ? "is not -1 where seq_in is padding (-1)"
                                              : "is -1 (padding) where seq_in is not");
      if (a < 0) ended = true;
    }
  }
  return e;
}

int64_t score_candidates(const PackedNet& net, const float* prefix, int64_t R, const int64_t* starts,
                         const int64_t* seq_in, const int64_t* seq_out, int64_t K, int64_t L, const Head& head,
                         double* losses, int n_threads, int tile_rows, const Stopper* stop, bool* stopped) {
  if (stopped) *stopped = false;
  if (K <= 0) return 0;
  const int T = resolve_tile(tile_rows);
  const int64_t d = net.d, Dp = net.Dp, Hp = net.Hp;
  const int64_t ntiles = std::max<int64_t>(1, (R + T - 1) / T);
  const int64_t items = K * ntiles;
  std::vector<double> partial(static_cast<std::size_t>(items), 0.0);
  int64_t total_len = 0;
  for (int64_t c = 0; c < K; ++c) {
    int64_t t = 0;
    while (t < L && seq_in[c * L + t] >= 0) ++t;
    total_len += t;
  }
  const int nt = resolve_threads(n_threads, 4.0 * static_cast<double>(total_len) * R * net.d * net.h);
  std::atomic<bool> halted{false};
#pragma omp parallel num_threads(nt) if (nt > 1 && items > 1)
  {
    FloatBuf xb(static_cast<std::size_t>(T * Dp)), hb(static_cast<std::size_t>(T * Hp));
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < items; ++it) {
      // One poll per work item (a row tile of one candidate): a cancelled round ends within microseconds.
      if (halted.load(std::memory_order_relaxed)) continue;
      if (stop && stop->should_stop()) {
        halted.store(true, std::memory_order_relaxed);
        continue;
      }
      const int64_t c = it / ntiles, r0 = (it % ntiles) * T;
      const int64_t nr = std::min<int64_t>(T, R - r0);
      if (nr <= 0) continue;
      const int64_t M = round_up(nr, kRowAlign);
      load_tile(prefix + (starts[c] * R + r0) * d, nr, d, Dp, M, xb.data());
      const int64_t* si = seq_in + c * L;
      const int64_t* so = seq_out + c * L;
      for (int64_t t = 0; t < L && si[t] >= 0; ++t) apply_block(net, si[t], so[t], xb.data(), hb.data(), M);
      partial[it] = tile_loss(xb.data(), Dp, nr, d, head, head.target + r0 * head.k);
    }
  }
  if (halted.load()) {
    if (stopped) *stopped = true;
    return 0;
  }
  // Fixed-order reduction per candidate: independent of the thread count and schedule.
  for (int64_t c = 0; c < K; ++c) {
    double s = 0.0;
    for (int64_t t = 0; t < ntiles; ++t) s += partial[c * ntiles + t];
    losses[c] = s;
  }
  return total_len * R;
}

void forward_from(const PackedNet& net, float* prefix, int64_t R, const int64_t* order_in, const int64_t* order_out,
                  int64_t N, int64_t p0, int n_threads, int tile_rows) {
  if (p0 >= N || R <= 0) return;
  const int T = resolve_tile(tile_rows);
  const int64_t d = net.d, Dp = net.Dp, Hp = net.Hp;
  const int64_t ntiles = (R + T - 1) / T;
  const int nt = resolve_threads(n_threads, 4.0 * static_cast<double>(N - p0) * R * net.d * net.h);
#pragma omp parallel num_threads(nt) if (nt > 1 && ntiles > 1)
  {
    FloatBuf xb(static_cast<std::size_t>(T * Dp)), hb(static_cast<std::size_t>(T * Hp));
#pragma omp for schedule(dynamic, 1)
    for (int64_t tile = 0; tile < ntiles; ++tile) {
      const int64_t r0 = tile * T, nr = std::min<int64_t>(T, R - r0), M = round_up(nr, kRowAlign);
      load_tile(prefix + (p0 * R + r0) * d, nr, d, Dp, M, xb.data());
      for (int64_t p = p0; p < N; ++p) {
        apply_block(net, order_in[p], order_out[p], xb.data(), hb.data(), M);
        store_tile(xb.data(), nr, d, Dp, prefix + ((p + 1) * R + r0) * d);
      }
    }
  }
}

RowApplier::RowApplier(const PackedNet& net, int tile_rows)
    : net_(net), T_(resolve_tile(tile_rows)), xb_(static_cast<std::size_t>(T_ * net.Dp)),
      hb_(static_cast<std::size_t>(T_ * net.Hp)) {}

void RowApplier::apply(int64_t a, int64_t b, const float* x, float* y, int64_t R) {
  const int64_t d = net_.d;
  for (int64_t r0 = 0; r0 < R; r0 += T_) {
    const int64_t nr = std::min<int64_t>(T_, R - r0), M = round_up(nr, kRowAlign);
    load_tile(x + r0 * d, nr, d, net_.Dp, M, xb_.data());
    apply_block(net_, a, b, xb_.data(), hb_.data(), M);
    store_tile(xb_.data(), nr, d, net_.Dp, y + r0 * d);
  }
}

double head_loss(const float* x, int64_t R, int64_t d, const Head& head, int tile_rows) {
  // Same row tiles, tile layout and reduction order as score_candidates, so a no-op candidate scores
  // bit-identically to the current order.
  const int T = resolve_tile(tile_rows);
  const int64_t Dp = round_up(std::max<int64_t>(d, 1), VW);
  FloatBuf xb(static_cast<std::size_t>(T * Dp));
  double s = 0.0;
  for (int64_t r0 = 0; r0 < R; r0 += T) {
    const int64_t nr = std::min<int64_t>(T, R - r0);
    load_tile(x + r0 * d, nr, d, Dp, round_up(nr, kRowAlign), xb.data());
    s += tile_loss(xb.data(), Dp, nr, d, head, head.target + r0 * head.k);
  }
  return s;
}

void gemm_f32(const float* A, int64_t lda, const float* B, int64_t ldb, int64_t K, const float* bias, float* C,
              int64_t ldc, int64_t M, int64_t nvec, bool relu, bool add) {
  if (relu && add) gemm<true, true>(A, lda, B, ldb, K, bias, C, ldc, M, nvec);
  else if (relu) gemm<true, false>(A, lda, B, ldb, K, bias, C, ldc, M, nvec);
  else if (add) gemm<false, true>(A, lda, B, ldb, K, bias, C, ldc, M, nvec);
  else gemm<false, false>(A, lda, B, ldb, K, bias, C, ldc, M, nvec);
}

int simd_floats() { return VW; }

int gemm_row_align(int64_t nvec) {
  // The micro-tile heights of the column chunks gemm() splits nvec into (same split as gemm()).
  if (nvec <= 0) return 1;
  const int64_t nchunks = (nvec + NVMAX - 1) / NVMAX;
  const int64_t base = nvec / nchunks, extra = nvec % nchunks;
  int a = mr_for(static_cast<int>(base));
  if (extra) a = std::lcm(a, mr_for(static_cast<int>(base + 1)));
  return a;
}

}  // namespace unshuffle
