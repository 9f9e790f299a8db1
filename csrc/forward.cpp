// Whole-network forwards (verification), the greedy seed, torch's randperm and the pairing scores.
// The float32 paths use the scorer's kernel (gemm_f32), so a verified output is computed with the same
// block arithmetic the search scored; the float64 path has its own small kernel below.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <random>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "native.hpp"

namespace unshuffle {

namespace {

constexpr int64_t kTile = 48;  // rows per work item, a multiple of kRowAlign (as the scorer's default)

inline int64_t rup(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Threads for `items` independent work items totalling `flops`: with n_threads = 0, one more thread per
// ~2e8 flops (a few ms of kernel time). Small calls stay on one thread: waking a team and its closing
// barrier cost far more than they save when the machine is shared and busy (measured: a 5 ms float64
// pass took 24 ms on two threads under load).
int team_size(int n_threads, int64_t items, double flops) {
#ifdef _OPENMP
  int64_t nt = n_threads > 0 ? n_threads : std::min<int64_t>(omp_get_max_threads(), static_cast<int64_t>(flops / 2e8) + 1);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(nt, items)));
#else
  (void)n_threads, (void)items, (void)flops;
  return 1;
#endif
}

// 64-byte aligned, zeroed buffer of T.
template <class T>
struct Aligned {
  struct Free { void operator()(T* p) const { std::free(p); } };
  std::unique_ptr<T[], Free> p;
  explicit Aligned(std::size_t n) {
    const std::size_t bytes = rup(static_cast<int64_t>(std::max<std::size_t>(n, 1) * sizeof(T)), 64);
    T* q = static_cast<T*>(std::aligned_alloc(64, bytes));
    if (!q) throw std::bad_alloc();
    std::memset(q, 0, bytes);
    p.reset(q);
  }
  T* get() const { return p.get(); }
};

// Copies nr rows of width d into a tile of stride ld, zeroing the padding columns and rows nr..M-1.
template <class Src, class Dst>
void load_rows(const Src* src, int64_t nr, int64_t d, int64_t ld, int64_t M, Dst* x) {
  for (int64_t r = 0; r < nr; ++r) {
    for (int64_t j = 0; j < d; ++j) x[r * ld + j] = static_cast<Dst>(src[r * d + j]);
    for (int64_t j = d; j < ld; ++j) x[r * ld + j] = Dst(0);
  }
  for (int64_t r = nr; r < M; ++r)
    for (int64_t j = 0; j < ld; ++j) x[r * ld + j] = Dst(0);
}

// ---------------------------------------------------------------------------------- float64 kernel

constexpr int VD = 8;  // doubles per vector (one AVX-512 register; the compiler splits it elsewhere)
constexpr int MRD = 6;  // rows per micro-tile: 6 x 4 vectors = 24 accumulators
typedef double vd __attribute__((vector_size(VD * sizeof(double))));

template <int NV, bool RELU, bool ADD>
void micro_d(const double* __restrict A, int64_t lda, const double* __restrict B, int64_t ldb, int64_t K,
             const double* __restrict bias, double* __restrict C, int64_t ldc) {
  vd acc[MRD][NV];
  for (int j = 0; j < NV; ++j) {
    const vd bj = *reinterpret_cast<const vd*>(bias + j * VD);
    for (int i = 0; i < MRD; ++i) acc[i][j] = bj;
  }
  for (int64_t k = 0; k < K; ++k) {
    vd b[NV];
    for (int j = 0; j < NV; ++j) b[j] = *reinterpret_cast<const vd*>(B + k * ldb + j * VD);
    for (int i = 0; i < MRD; ++i) {
      const vd a = vd{} + A[i * lda + k];
      for (int j = 0; j < NV; ++j) acc[i][j] += a * b[j];
    }
  }
  for (int i = 0; i < MRD; ++i)
    for (int j = 0; j < NV; ++j) {
      vd v = acc[i][j];
      double* c = C + i * ldc + j * VD;
      if (RELU) v = v > vd{} ? v : vd{};
      if (ADD) v = *reinterpret_cast<vd*>(c) + v;
      *reinterpret_cast<vd*>(c) = v;
    }
}

// C[M x nvec*VD] (op)= f(A B + bias); M a multiple of MRD.
template <bool RELU, bool ADD>
void gemm_d(const double* A, int64_t lda, const double* B, int64_t ldb, int64_t K, const double* bias, double* C,
            int64_t ldc, int64_t M, int64_t nvec) {
  for (int64_t j0 = 0; j0 < nvec; j0 += 4) {
    const int64_t nv = std::min<int64_t>(4, nvec - j0), off = j0 * VD;
    for (int64_t i = 0; i < M; i += MRD) {
      const double* a = A + i * lda;
      double* c = C + i * ldc + off;
      switch (nv) {
        case 1: micro_d<1, RELU, ADD>(a, lda, B + off, ldb, K, bias + off, c, ldc); break;
        case 2: micro_d<2, RELU, ADD>(a, lda, B + off, ldb, K, bias + off, c, ldc); break;
        case 3: micro_d<3, RELU, ADD>(a, lda, B + off, ldb, K, bias + off, c, ldc); break;
        default: micro_d<4, RELU, ADD>(a, lda, B + off, ldb, K, bias + off, c, ldc); break;
      }
    }
  }
}

}  // namespace

// ------------------------------------------------------------------------------------------ forwards

void forward_f32(const PackedNet& net, const float* X, int64_t R, const int64_t* order_in, const int64_t* order_out,
                 int64_t N, const float* W_last, const float* b_last, int64_t k, float* out, int n_threads) {
  if (R <= 0) return;
  const int VW = simd_floats();
  const int64_t d = net.d, h = net.h, Dp = net.Dp, Hp = net.Hp;
  const int64_t ntiles = (R + kTile - 1) / kTile;
  const int nt = team_size(n_threads, ntiles, 4.0 * static_cast<double>(R) * N * d * h);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    FloatBuf xb(static_cast<std::size_t>(kTile * Dp)), hb(static_cast<std::size_t>(kTile * Hp));
    float* x = xb.data();
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < ntiles; ++t) {
      const int64_t r0 = t * kTile, nr = std::min<int64_t>(kTile, R - r0), M = rup(nr, kRowAlign);
      load_rows(X + r0 * d, nr, d, Dp, M, x);
      for (int64_t p = 0; p < N; ++p) {
        const int64_t a = order_in[p], b = order_out[p];
        gemm_f32(x, Dp, net.win_t.data() + a * d * Hp, Hp, d, net.bin.data() + a * Hp, hb.data(), Hp, M, Hp / VW,
                 true, false);
        gemm_f32(hb.data(), Hp, net.wout_t.data() + b * h * Dp, Dp, h, net.bout.data() + b * Dp, x, Dp, M, Dp / VW,
                 false, true);
      }
      for (int64_t r = 0; r < nr; ++r)
        for (int64_t o = 0; o < k; ++o) {
          float dot = 0.f;
          for (int64_t j = 0; j < d; ++j) dot += x[r * Dp + j] * W_last[o * d + j];
          out[(r0 + r) * k + o] = dot + b_last[o];
        }
    }
  }
}

void forward_f64(const float* W_in, const float* b_in, int64_t Ni, const float* W_out, const float* b_out,
                 int64_t No, int64_t d, int64_t h, const float* X, int64_t R, const int64_t* order_in,
                 const int64_t* order_out, int64_t N, const float* W_last, const float* b_last, int64_t k,
                 double* out, int n_threads) {
  if (R <= 0) return;
  const int64_t Dq = rup(std::max<int64_t>(d, 1), VD), Hq = rup(std::max<int64_t>(h, 1), VD);
  // Transposed, zero-padded float64 copies of the blocks the order uses (as PackedNet does for float32).
  std::vector<int64_t> slot_in(static_cast<std::size_t>(Ni), -1), slot_out(static_cast<std::size_t>(No), -1);
  int64_t ni = 0, no = 0;
  for (int64_t p = 0; p < N; ++p) {
    if (slot_in[order_in[p]] < 0) slot_in[order_in[p]] = ni++;
    if (slot_out[order_out[p]] < 0) slot_out[order_out[p]] = no++;
  }
  Aligned<double> win(static_cast<std::size_t>(std::max<int64_t>(ni, 1) * d * Hq)),
      bin(static_cast<std::size_t>(std::max<int64_t>(ni, 1) * Hq)),
      wout(static_cast<std::size_t>(std::max<int64_t>(no, 1) * h * Dq)),
      bout(static_cast<std::size_t>(std::max<int64_t>(no, 1) * Dq));
  for (int64_t a = 0; a < Ni; ++a) {
    if (slot_in[a] < 0) continue;
    double* wt = win.get() + slot_in[a] * d * Hq;
    for (int64_t o = 0; o < h; ++o)
      for (int64_t i = 0; i < d; ++i) wt[i * Hq + o] = W_in[(a * h + o) * d + i];
    for (int64_t o = 0; o < h; ++o) bin.get()[slot_in[a] * Hq + o] = b_in[a * h + o];
  }
  for (int64_t b = 0; b < No; ++b) {
    if (slot_out[b] < 0) continue;
    double* wt = wout.get() + slot_out[b] * h * Dq;
    for (int64_t o = 0; o < d; ++o)
      for (int64_t i = 0; i < h; ++i) wt[i * Dq + o] = W_out[(b * d + o) * h + i];
    for (int64_t o = 0; o < d; ++o) bout.get()[slot_out[b] * Dq + o] = b_out[b * d + o];
  }
  const int64_t ntiles = (R + kTile - 1) / kTile;
  const int nt = team_size(n_threads, ntiles, 8.0 * static_cast<double>(R) * N * d * h);  // float64: ~2x the time
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    Aligned<double> xb(static_cast<std::size_t>(kTile * Dq)), hb(static_cast<std::size_t>(kTile * Hq));
    double* x = xb.get();
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < ntiles; ++t) {
      const int64_t r0 = t * kTile, nr = std::min<int64_t>(kTile, R - r0), M = rup(nr, MRD);
      load_rows(X + r0 * d, nr, d, Dq, M, x);
      for (int64_t p = 0; p < N; ++p) {
        const int64_t a = slot_in[order_in[p]], b = slot_out[order_out[p]];
        gemm_d<true, false>(x, Dq, win.get() + a * d * Hq, Hq, d, bin.get() + a * Hq, hb.get(), Hq, M, Hq / VD);
        gemm_d<false, true>(hb.get(), Hq, wout.get() + b * h * Dq, Dq, h, bout.get() + b * Dq, x, Dq, M, Dq / VD);
      }
      for (int64_t r = 0; r < nr; ++r)
        for (int64_t o = 0; o < k; ++o) {
          double dot = 0.0;
          for (int64_t j = 0; j < d; ++j) dot += x[r * Dq + j] * static_cast<double>(W_last[o * d + j]);
          out[(r0 + r) * k + o] = dot + static_cast<double>(b_last[o]);
        }
    }
  }
}

// ------------------------------------------------------------------------------------------ seeds

void greedy_seed(const PackedNet& net, const float* X, int64_t R, const int64_t* out_of, int64_t n, int64_t* order,
                 double* first_scores, int n_threads) {
  // One thread: every position needs all candidates' scores before the next can start, and that barrier per
  // position (n of them) costs more than a second thread gains when the machine is busy.
  (void)n_threads;
  if (n <= 0) return;
  const int VW = simd_floats();
  const int64_t d = net.d, h = net.h, Dp = net.Dp, Hp = net.Hp;
  const int64_t ntiles = std::max<int64_t>(1, (R + kTile - 1) / kTile), tile_sz = kTile * Dp;
  const double rows = static_cast<double>(std::max<int64_t>(R, 1));
  FloatBuf x(static_cast<std::size_t>(ntiles * tile_sz)), hb(static_cast<std::size_t>(kTile * Hp));
  for (int64_t t = 0; t < ntiles; ++t) {
    const int64_t r0 = t * kTile, nr = std::max<int64_t>(0, std::min<int64_t>(kTile, R - r0));
    load_rows(X + r0 * d, nr, d, Dp, kTile, x.data() + t * tile_sz);
  }
  // Each candidate's update, tile by tile, so that the chosen one is added without recomputing it.
  FloatBuf delta(static_cast<std::size_t>(n * ntiles * tile_sz));
  std::vector<int64_t> rem(static_cast<std::size_t>(n));
  std::vector<double> last(static_cast<std::size_t>(n), 0.0);  // each block's last score (or lower bound)
  for (int64_t a = 0; a < n; ++a) rem[a] = a;
  std::vector<int64_t> visit;
  for (int64_t step = 0; step < n; ++step) {
    const int64_t m = static_cast<int64_t>(rem.size());
    // Score = mean over rows of ||update||, summed in row order. Partial sums only grow, so a candidate whose
    // partial score already exceeds the best full score cannot win and is dropped (exact pruning; the first
    // position is scored in full, for first_scores). Likely winners go first so the bound tightens early.
    visit.resize(static_cast<std::size_t>(m));
    for (int64_t s = 0; s < m; ++s) visit[s] = s;
    std::stable_sort(visit.begin(), visit.end(), [&](int64_t p, int64_t q) { return last[rem[p]] < last[rem[q]]; });
    int64_t best = -1;
    double best_score = std::numeric_limits<double>::infinity();
    for (int64_t s : visit) {
      const int64_t a = rem[s], b = out_of[a];
      double sum = 0.0;
      bool dropped = false;
      for (int64_t t = 0; t < ntiles; ++t) {
        const int64_t r0 = t * kTile, nr = std::min<int64_t>(kTile, R - r0);
        if (nr <= 0) break;
        const int64_t M = rup(nr, kRowAlign);
        float* dt = delta.data() + (s * ntiles + t) * tile_sz;
        gemm_f32(x.data() + t * tile_sz, Dp, net.win_t.data() + a * d * Hp, Hp, d, net.bin.data() + a * Hp,
                 hb.data(), Hp, M, Hp / VW, true, false);
        gemm_f32(hb.data(), Hp, net.wout_t.data() + b * h * Dp, Dp, h, net.bout.data() + b * Dp, dt, Dp, M,
                 Dp / VW, false, false);
        for (int64_t r = 0; r < nr; ++r) {
          double sq = 0.0;
          for (int64_t j = 0; j < d; ++j) sq += static_cast<double>(dt[r * Dp + j]) * dt[r * Dp + j];
          sum += std::sqrt(sq);
        }
        if (step > 0 && sum / rows > best_score) {
          dropped = true;
          break;
        }
      }
      const double score = sum / rows;
      last[a] = score;
      if (step == 0) first_scores[a] = score;
      // First minimum in block-index order, as argmin over the remaining blocks (kept in index order).
      if (!dropped && (best < 0 || score < best_score || (score == best_score && s < best))) best = s, best_score = score;
    }
    for (int64_t t = 0; t < ntiles; ++t) {
      const int64_t nr = std::max<int64_t>(0, std::min<int64_t>(kTile, R - t * kTile));
      float* xt = x.data() + t * tile_sz;
      const float* dt = delta.data() + (best * ntiles + t) * tile_sz;
      for (int64_t r = 0; r < nr; ++r)
        for (int64_t j = 0; j < d; ++j) xt[r * Dp + j] += dt[r * Dp + j];
    }
    order[step] = rem[best];
    rem.erase(rem.begin() + best);
  }
}

void torch_randperm(int64_t n, uint64_t seed, int64_t* out) {
  std::mt19937 gen(static_cast<uint32_t>(seed & 0xffffffffu));  // = at::mt19937(seed): init_genrand
  for (int64_t i = 0; i < n; ++i) out[i] = i;
  for (int64_t i = 0; i + 1 < n; ++i) {
    const int64_t z = static_cast<int64_t>(static_cast<uint32_t>(gen()) % static_cast<uint64_t>(n - i));
    std::swap(out[i], out[z + i]);
  }
}

// ---------------------------------------------------------------------------------------- pairing

void pair_scores(const float* W_in, int64_t Ni, const float* W_out, int64_t No, int64_t d, int64_t h,
                 double* ratio, double* neg_trace, int n_threads) {
  if (Ni <= 0 || No <= 0) return;
  const int VW = simd_floats();
  // B[j][a*d + i] = W_in[a][j][i]: one product W_out[b] B gives M = W_out[b] W_in[a] for every a at once.
  const int64_t Np = rup(Ni * d, VW), Mp = rup(d, kRowAlign);
  FloatBuf B(static_cast<std::size_t>(h * Np)), zero(static_cast<std::size_t>(Np));
  for (int64_t a = 0; a < Ni; ++a)
    for (int64_t j = 0; j < h; ++j) std::memcpy(B.data() + j * Np + a * d, W_in + (a * h + j) * d, sizeof(float) * d);
  // The trace exactly in float64: tr(W_out[b] W_in[a]) = sum_ij W_out[b][i][j] W_in[a][j][i].
  std::vector<double> win_t(static_cast<std::size_t>(Ni * d * h));
  for (int64_t a = 0; a < Ni; ++a)
    for (int64_t j = 0; j < h; ++j)
      for (int64_t i = 0; i < d; ++i) win_t[(a * d + i) * h + j] = W_in[(a * h + j) * d + i];
  const int nt = team_size(n_threads, No, 2.0 * static_cast<double>(Ni) * No * d * d * h);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    FloatBuf A(static_cast<std::size_t>(Mp * h)), C(static_cast<std::size_t>(Mp * Np));
    std::vector<double> wo(static_cast<std::size_t>(d * h));
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < No; ++b) {
      std::memcpy(A.data(), W_out + b * d * h, sizeof(float) * d * h);  // rows d..Mp-1 stay zero
      for (int64_t q = 0; q < d * h; ++q) wo[q] = W_out[b * d * h + q];
      gemm_f32(A.data(), h, B.data(), Np, h, zero.data(), C.data(), Np, Mp, Np / VW, false, false);
      for (int64_t a = 0; a < Ni; ++a) {
        double tr = 0.0, all = 0.0, diag = 0.0;
        const double* wt = win_t.data() + a * d * h;
        for (int64_t q = 0; q < d * h; ++q) tr += wo[q] * wt[q];
        for (int64_t i = 0; i < d; ++i) {
          const float* row = C.data() + i * Np + a * d;
          for (int64_t c = 0; c < d; ++c) all += std::fabs(static_cast<double>(row[c]));
          diag += std::fabs(static_cast<double>(row[i]));
        }
        const double off = (all - diag) / static_cast<double>(std::max<int64_t>(1, d * (d - 1)));
        neg_trace[a * No + b] = -tr / static_cast<double>(d);
        ratio[a * No + b] = -(tr / static_cast<double>(d)) / std::max(off, 1e-30);
      }
    }
  }
}

}  // namespace unshuffle
