#include "beam.hpp"

#include "search.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <numeric>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace unshuffle {

namespace {
constexpr int64_t kProbeTile = 64;  // rows per float Gram tile (then added into the double normal equations)
// A feature whose variance not explained by the earlier ones is below this fraction of its own is dropped:
// float32 Gram tiles resolve ~1e-6, and near-collinear squares (a collapsed stream) add nothing to the fit.
// The whitened linear features are orthonormal, so this only ever drops squares.
constexpr double kProbePivot = 1e-5;
inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// In-place Cholesky (lower triangle) of the n x n symmetric matrix A, row stride lda, with dropping: column j is
// dropped when usable[j] <= 0 or its remaining diagonal (plus ridge) is <= threshold. A dropped row and column
// become the identity's (dropped[j] = 1), which keeps every later loop a branch-free dot product.
void cholesky_dropping(double* A, int64_t n, int64_t lda, double ridge, double threshold, const double* usable,
                       char* dropped) {
  for (int64_t j = 0; j < n; ++j) {
    double* Aj = A + j * lda;
    double diag = Aj[j] + ridge;
    for (int64_t p = 0; p < j; ++p) diag -= Aj[p] * Aj[p];
    dropped[j] = !(usable[j] > 0.0 && diag > threshold);
    if (dropped[j]) {
      for (int64_t p = 0; p < j; ++p) Aj[p] = 0.0;
      Aj[j] = 1.0;
      for (int64_t i = j + 1; i < n; ++i) A[i * lda + j] = 0.0;
      continue;
    }
    const double ajj = std::sqrt(diag);
    Aj[j] = ajj;
    for (int64_t i = j + 1; i < n; ++i) {
      double* Ai = A + i * lda;
      double v = Ai[j];
      for (int64_t p = 0; p < j; ++p) v -= Ai[p] * Aj[p];
      Ai[j] = v / ajj;
    }
  }
}
}  // namespace

Probe::Probe(int64_t d, int64_t k, int features, double ridge)
    : d_(d), k_(k), nf_(features == kProbeQuadratic ? 2 * d + 1 : d + 1), features_(features), ridge_(ridge) {
  na_ = nf_ + k_;
  Np_ = round_up(na_, simd_floats());
  Mp_ = round_up(na_, kRowAlign);
  F_ = FloatBuf(static_cast<std::size_t>(kProbeTile * Np_));
  FT_ = FloatBuf(static_cast<std::size_t>(Mp_ * kProbeTile));
  Gt_ = FloatBuf(static_cast<std::size_t>(Mp_ * Np_));
  zero_ = FloatBuf(static_cast<std::size_t>(std::max<int64_t>(Np_, round_up(d_, simd_floats()))));
  sd_.resize(static_cast<std::size_t>(d_));
  f_.resize(static_cast<std::size_t>(nf_));
  G_.resize(static_cast<std::size_t>(na_ * na_));
  C_.resize(static_cast<std::size_t>(nf_ * k_));
  scale_.resize(static_cast<std::size_t>(nf_));
  y_.resize(static_cast<std::size_t>(nf_));
  dropped_.resize(static_cast<std::size_t>(nf_));
  mean_.resize(static_cast<std::size_t>(d_));
  cov_.resize(static_cast<std::size_t>(d_ * d_));
  W_.resize(static_cast<std::size_t>(d_));
}



void Probe::row_features(const float* z, const float* u, float* f) const {
  for (int64_t j = 0; j < d_; ++j) f[j] = z[j];
  // Squares of the standardised coordinates (not of the whitened ones: which quadratic functions the probe
  // can use matters for the search, and the coordinates' own squares are what it was tuned with). They
  // saturate at 8 standard deviations: a few exploding rows (a badly ordered stream can reach 1e4 times its
  // typical size) would otherwise dominate the float32 Gram.
  if (features_ == kProbeQuadratic)
    for (int64_t j = 0; j < d_; ++j) f[d_ + j] = std::min(u[j] * u[j], 64.f);
  f[nf_ - 1] = 1.f;
}

// The linear readout [x, 1] straight from the correlation's factor: with xs the standardised columns and
// xs^T xs / R = L L^T, the least-squares SSE of each centred target column t is t^T t - |L^-1 xs^T t|^2 / R
// (a dropped column's entry is 0: L is the identity there). Everything in double from the float xs, so this
// is the exact SSE of those rows; no whitened copy, no Gram, no residual passes (the quadratic path's cost).
double Probe::linear_sse(const float* XS, int64_t stride, int64_t R, const float* target, const char* dropped) {
  const int64_t d = d_, k = k_;
  const double* L = cov_.data();
  double total = 0.0;
  std::vector<double>& v = W_;
  for (int64_t o = 0; o < k; ++o) {
    double tm = 0.0;
    for (int64_t r = 0; r < R; ++r) tm += target[r * k + o];
    tm /= static_cast<double>(std::max<int64_t>(R, 1));
    double tt = 0.0;
    std::fill(v.begin(), v.begin() + d, 0.0);
    for (int64_t r = 0; r < R; ++r) {
      const double t = target[r * k + o] - tm;
      tt += t * t;
      const float* xr = XS + r * stride;
      for (int64_t j = 0; j < d; ++j) v[j] += t * xr[j];
    }
    double fit = 0.0;
    for (int64_t j = 0; j < d; ++j) {  // forward substitution L y = v, y over v in place
      if (dropped[j]) { v[j] = 0.0; continue; }
      double a = v[j];
      for (int64_t p = 0; p < j; ++p) a -= L[j * d + p] * v[p];
      v[j] = a / L[j * d + j];
      fit += v[j] * v[j];
    }
    total += std::min(tt, std::max(0.0, tt - fit / static_cast<double>(std::max<int64_t>(R, 1))));
  }
  return total;
}

double Probe::sse(const float* x, int64_t R, const float* target) {
  const int64_t nf = nf_, k = k_, na = na_, Np = Np_, Mp = Mp_;
  // Whitening (all in float SIMD but for the d x d factorisation): columns standardised in double, their
  // correlation matrix accumulated by GEMM tiles in double, Cholesky corr = L L^T dropping a column whose
  // remaining variance is below 1e-4 (collinear with earlier ones: float32 sums resolve
  // a remaining variance to ~1e-5, so a lower threshold would keep rounding noise as features), z = xs L^-T.
  // [z, min(z*z, 64), 1] stays well conditioned where a chaotic stream has collapsed onto a few directions
  // (raw feature condition numbers of 1e5-1e6, beyond a float32 Gram), and z spans x, so a target linear in x
  // is still read exactly.
  const int64_t d = d_, VW = simd_floats();
  const int64_t Dp = round_up(std::max<int64_t>(d, 1), VW), Dm = round_up(std::max<int64_t>(d, 1), kRowAlign);
  const int64_t Rp = round_up(std::max<int64_t>(R, 1), kRowAlign);
  if (static_cast<int64_t>(XS_.size()) < Rp * Dp) {
    XS_ = FloatBuf(static_cast<std::size_t>(Rp * Dp));
    Z_ = FloatBuf(static_cast<std::size_t>(Rp * Dp));
  }
  if (static_cast<int64_t>(WT_.size()) < std::max(Dm, Dp) * Dp) {
    WT_ = FloatBuf(static_cast<std::size_t>(std::max(Dm, Dp) * Dp));
    CT_ = FloatBuf(static_cast<std::size_t>(Dm * kProbeTile));
    Ct_ = FloatBuf(static_cast<std::size_t>(Dm * Dp));
  }
  double* __restrict mean = mean_.data();
  double* __restrict sd = sd_.data();
  std::fill(mean, mean + d, 0.0);
  std::fill(sd, sd + d, 0.0);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t j = 0; j < d; ++j) mean[j] += x[r * d + j];
  for (int64_t j = 0; j < d; ++j) mean[j] /= static_cast<double>(std::max<int64_t>(R, 1));
  for (int64_t r = 0; r < R; ++r)
    for (int64_t j = 0; j < d; ++j) {
      const double c = x[r * d + j] - mean[j];
      sd[j] += c * c;
    }
  for (int64_t j = 0; j < d; ++j) sd[j] = sd[j] > 0 ? 1.0 / std::sqrt(sd[j] / static_cast<double>(R)) : 0.0;
  float* XS = XS_.data();
  std::fill(XS, XS + Rp * Dp, 0.f);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t j = 0; j < d; ++j) XS[r * Dp + j] = static_cast<float>((x[r * d + j] - mean[j]) * sd[j]);
  // correlation in double (the drop decisions and L need it: a float32 sum resolves a remaining variance only
  // to ~1e-5, which would turn rounding noise into features); a fixed-length inner loop vectorises
  std::fill(cov_.begin(), cov_.end(), 0.0);
  {
    double* __restrict cv = cov_.data();
    // eight rows per pass over the triangle (a rank-8 update): the accumulator row is loaded and stored once
    // per eight rows, not per row (the loop was load/store bound)
    constexpr int64_t kRows = 8;
    std::vector<double>& xb = xblock_;
    xb.assign(static_cast<std::size_t>(kRows * d), 0.0);
    for (int64_t r0 = 0; r0 < R; r0 += kRows) {
      const int64_t nr = std::min<int64_t>(kRows, R - r0);
      for (int64_t q = 0; q < kRows; ++q)
        for (int64_t j = 0; j < d; ++j) xb[q * d + j] = q < nr ? XS[(r0 + q) * Dp + j] : 0.0;
      const double* __restrict x0 = xb.data();
      for (int64_t i = 0; i < d; ++i) {  // the lower triangle (j <= i) only: the factorisation reads no more
        const double a0 = x0[i], a1 = x0[d + i], a2 = x0[2 * d + i], a3 = x0[3 * d + i];
        const double a4 = x0[4 * d + i], a5 = x0[5 * d + i], a6 = x0[6 * d + i], a7 = x0[7 * d + i];
        double* __restrict row = cv + i * d;
        for (int64_t j = 0; j <= i; ++j)
          row[j] += ((a0 * x0[j] + a1 * x0[d + j]) + (a2 * x0[2 * d + j] + a3 * x0[3 * d + j])) +
                    ((a4 * x0[4 * d + j] + a5 * x0[5 * d + j]) + (a6 * x0[6 * d + j] + a7 * x0[7 * d + j]));
      }
    }
  }
  for (int64_t i = 0; i < d; ++i)
    for (int64_t j = 0; j <= i; ++j) cov_[i * d + j] /= static_cast<double>(R);
  std::vector<char> dropped(static_cast<std::size_t>(d), 0);
  double* L = cov_.data();
  cholesky_dropping(L, d, d, 0.0, 1e-10, sd, dropped.data());
  if (features_ == kProbeLinear) return linear_sse(XS, Dp, R, target, dropped.data());
  // WT (d x Dp): row j holds column j of L^-1 transposed, so z = xs WT (z_i = sum_j xs_j (L^-1)[i][j])
  float* WT = WT_.data();
  std::fill(WT, WT + std::max(Dm, Dp) * Dp, 0.f);
  std::vector<double>& wcol = W_;
  for (int64_t j = 0; j < d; ++j) {
    if (dropped[j]) continue;
    std::fill(wcol.begin(), wcol.begin() + d, 0.0);
    wcol[j] = 1.0 / L[j * d + j];
    for (int64_t i = j + 1; i < d; ++i) {
      if (dropped[i]) continue;
      double v = 0.0;
      for (int64_t p = j; p < i; ++p) v -= L[i * d + p] * wcol[p];
      wcol[i] = v / L[i * d + i];
    }
    for (int64_t i = j; i < d; ++i) WT[j * Dp + i] = static_cast<float>(wcol[i]);
  }
  float* Z = Z_.data();
  gemm_f32(XS, Dp, WT, Dp, d, zero_.data(), Z, Dp, Rp, Dp / VW, false, false);
  zstride_ = Dp;
  x = Z_.data();  // every pass below reads the whitened rows (stride zstride_)
  // Normal equations [F T]^T [F T] for F = features: one SIMD GEMM per tile of rows, summed in double.
  std::fill(G_.begin(), G_.end(), 0.0);
  float* F = F_.data();
  float* FT = FT_.data();
  float* Gt = Gt_.data();
  for (int64_t r0 = 0; r0 < R; r0 += kProbeTile) {
    const int64_t nr = std::min<int64_t>(kProbeTile, R - r0);
    std::fill(F, F + kProbeTile * Np, 0.f);
    for (int64_t r = 0; r < nr; ++r) {
      row_features(x + (r0 + r) * zstride_, XS_.data() + (r0 + r) * zstride_, F + r * Np);
      for (int64_t o = 0; o < k; ++o) F[r * Np + nf + o] = target[(r0 + r) * k + o];
    }
    std::fill(FT, FT + Mp * kProbeTile, 0.f);
    for (int64_t r = 0; r < nr; ++r)
      for (int64_t i = 0; i < na; ++i) FT[i * kProbeTile + r] = F[r * Np + i];
    std::fill(Gt, Gt + Mp * Np, 0.f);
    gemm_f32(FT, kProbeTile, F, Np, kProbeTile, zero_.data(), Gt, Np, Mp, Np / simd_floats(), false, true);
    for (int64_t i = 0; i < na; ++i)
      for (int64_t j = 0; j < na; ++j) G_[i * na + j] += Gt[i * Np + j];
  }
  // Scale the feature block to unit diagonal, add a tiny ridge, Cholesky in place (lower triangle). A pivot
  // that vanishes marks an exactly dependent feature: its row and column become the identity's and its
  // coefficient 0, which keeps every inner loop a branch-free dot product.
  double* G = G_.data();
  for (int64_t i = 0; i < nf; ++i) {
    const double g = G[i * na + i];
    scale_[i] = g > 0 ? 1.0 / std::sqrt(g) : 0.0;
  }
  for (int64_t i = 0; i < nf; ++i)
    for (int64_t j = 0; j <= i; ++j) G[i * na + j] *= scale_[i] * scale_[j];
  cholesky_dropping(G, nf, na, ridge_, kProbePivot, scale_.data(), dropped_.data());
  // C = S (L L^T)^-1 S rhs for each output, rhs = F^T t (column nf + o of the Gram).
  auto solve_into = [&](const double* rhs, int64_t stride, double* out) {
    for (int64_t i = 0; i < nf; ++i) {
      double v = dropped_[i] ? 0.0 : rhs[i * stride] * scale_[i];
      const double* Li = G + i * na;
      for (int64_t p = 0; p < i; ++p) v -= Li[p] * y_[p];
      y_[i] = v / Li[i];
    }
    for (int64_t i = nf - 1; i >= 0; --i) {
      double v = y_[i];
      for (int64_t p = i + 1; p < nf; ++p) v -= G[p * na + i] * y_[p];
      y_[i] = v / G[i * na + i];
    }
    for (int64_t i = 0; i < nf; ++i) out[i] = dropped_[i] ? 0.0 : y_[i] * scale_[i];
  };
  std::vector<double> col(static_cast<std::size_t>(nf)), grad(static_cast<std::size_t>(nf * k), 0.0);
  for (int64_t o = 0; o < k; ++o) {
    solve_into(G + nf + o, na, col.data());
    for (int64_t i = 0; i < nf; ++i) C_[i * k + o] = col[i];
  }
  // Residual passes in double. The first also collects F^T r for one step of iterative refinement (the
  // float32 Gram tiles limit C's accuracy when the features are ill conditioned); the SSE of the refined C is
  // measured by the last pass, and it is second order in C's remaining error.
  float* f = f_.data();
  double s = 0.0;
  for (int pass = 0; pass < 2; ++pass) {
    s = 0.0;
    for (int64_t r = 0; r < R; ++r) {
      row_features(x + r * zstride_, XS_.data() + r * zstride_, f);
      for (int64_t o = 0; o < k; ++o) {
        double p = 0.0;
        for (int64_t i = 0; i < nf; ++i) p += static_cast<double>(f[i]) * C_[i * k + o];
        const double e = static_cast<double>(target[r * k + o]) - p;
        s += e * e;
        if (pass == 0)
          for (int64_t i = 0; i < nf; ++i) grad[i * k + o] += static_cast<double>(f[i]) * e;
      }
    }
    if (pass == 1) break;
    // The intercept-only fit bounds the least-squares SSE from above; a solve that lands above it has failed
    // numerically (it would need features near-singular beyond the ridge): the bound is the better estimate.
    tsum_.assign(static_cast<std::size_t>(k), 0.0);
    for (int64_t r = 0; r < R; ++r)
      for (int64_t o = 0; o < k; ++o) tsum_[o] += target[r * k + o];
    sse0_ = 0.0;
    for (int64_t r = 0; r < R; ++r)
      for (int64_t o = 0; o < k; ++o) {
        const double e = target[r * k + o] - tsum_[o] / static_cast<double>(std::max<int64_t>(R, 1));
        sse0_ += e * e;
      }
    for (int64_t o = 0; o < k; ++o) {
      solve_into(grad.data() + o, k, col.data());
      for (int64_t i = 0; i < nf; ++i) C_[i * k + o] += col[i];
    }
  }
  return std::min(s, sse0_);
}

namespace {

struct State {
  std::vector<int64_t> oin, oout;
  std::vector<char> used_in, used_out;
  std::vector<int64_t> match_in, match_out;  // a perfect matching of the unused pieces over allowed pairs
  std::vector<float> x;                       // (R, d) activations after the prefix
};

// Pairing feasibility (joint pairing, m > 1): a prefix is kept only if its unused in and out pieces can
// still all be paired through allowed pairs. Each state carries one such matching.
class Matcher {
 public:
  Matcher(const int64_t* allowed, int64_t m, int64_t Ni, int64_t No) : al_(allowed), m_(m), Ni_(Ni), No_(No) {}

  // Kuhn's augmenting paths: a perfect matching of st's unused in pieces, or false.
  bool match(State& st) const {
    st.match_in.assign(static_cast<std::size_t>(Ni_), -1);
    st.match_out.assign(static_cast<std::size_t>(No_), -1);
    for (int64_t a = 0; a < Ni_; ++a) {
      if (st.used_in[a]) continue;
      std::vector<char> seen(static_cast<std::size_t>(No_), 0);
      if (!augment(st, a, -1, -1, seen)) return false;
    }
    return true;
  }

  // Whether st minus (a, b) still has a perfect matching: from st's matching, one augmenting path from the
  // in piece that held b to the out piece a held, avoiding a and b.
  bool feasible(const State& st, int64_t a, int64_t b) const {
    const int64_t b2 = st.match_in[a];
    if (b2 == b) return true;
    const int64_t a2 = st.match_out[b];
    // BFS over in pieces: from a2, through allowed out pieces, to b2
    std::vector<char> seen(static_cast<std::size_t>(No_), 0);
    std::vector<int64_t> queue{a2};
    for (std::size_t q = 0; q < queue.size(); ++q) {
      const int64_t u = queue[q];
      for (int64_t j = 0; j < m_; ++j) {
        const int64_t o = al_[u * m_ + j];
        if (o < 0 || o == b || st.used_out[o] || seen[o]) continue;
        if (o == b2) return true;
        seen[o] = 1;
        const int64_t v = st.match_out[o];
        if (v >= 0 && v != a) queue.push_back(v);
      }
    }
    return false;
  }

 private:
  bool augment(State& st, int64_t a, int64_t skip_a, int64_t skip_b, std::vector<char>& seen) const {
    for (int64_t j = 0; j < m_; ++j) {
      const int64_t o = al_[a * m_ + j];
      if (o < 0 || o == skip_b || st.used_out[o] || seen[o]) continue;
      seen[o] = 1;
      const int64_t v = st.match_out[o];
      if (v < 0 || (v != skip_a && augment(st, v, skip_a, skip_b, seen))) {
        st.match_in[a] = o, st.match_out[o] = a;
        return true;
      }
    }
    return false;
  }
  const int64_t* al_;
  int64_t m_, Ni_, No_;
};

struct Cand {
  int32_t s;  // parent state
  int64_t a, b;
};

int threads_for(int n_threads) {
#ifdef _OPENMP
  return n_threads > 0 ? n_threads : omp_get_max_threads();
#else
  (void)n_threads;
  return 1;
#endif
}

}  // namespace

BeamResult probe_beam(const PackedNet& net, const float* X, int64_t R, const float* target, int64_t k,
                      const int64_t* allowed, int64_t m, const int64_t* prefix_in, const int64_t* prefix_out,
                      int64_t P0, const BeamParams& P, const Stopper& stop) {
  const int64_t N = net.Ni, d = net.d;
  BeamResult res;
  res.N = N;
  const double nvals = static_cast<double>(R * k);
  State root;
  root.used_in.assign(static_cast<std::size_t>(N), 0);
  root.used_out.assign(static_cast<std::size_t>(net.No), 0);
  root.x.assign(X, X + R * d);
  {
    RowApplier ap(net);
    for (int64_t p = 0; p < P0; ++p) {
      root.oin.push_back(prefix_in[p]), root.oout.push_back(prefix_out[p]);
      root.used_in[prefix_in[p]] = 1, root.used_out[prefix_out[p]] = 1;
      ap.apply(prefix_in[p], prefix_out[p], root.x.data(), root.x.data(), R);
    }
  }
  const Matcher matcher(allowed, m, N, net.No);
  const bool joint = m > 1;
  if (joint && !matcher.match(root)) {  // the allowed pairs cannot pair every piece: nothing to search
    res.stopped = "done";
    return res;
  }
  std::vector<State> states;
  states.push_back(std::move(root));
  const int nt = threads_for(P.n_threads);
  std::vector<Cand> cands;
  std::vector<double> losses;
  std::vector<int64_t> idx;
  for (int64_t depth = P0; depth < N; ++depth) {
    cands.clear();
    for (int32_t s = 0; s < static_cast<int32_t>(states.size()); ++s)
      for (int64_t a = 0; a < N; ++a) {
        if (states[s].used_in[a]) continue;
        for (int64_t j = 0; j < m; ++j) {
          const int64_t b = allowed[a * m + j];
          if (b >= 0 && !states[s].used_out[b] && (!joint || matcher.feasible(states[s], a, b)))
            cands.push_back({s, a, b});
        }
      }
    const int64_t K = static_cast<int64_t>(cands.size());
    if (K == 0) break;  // the allowed table leaves no pairing for some block: stop with what exists
    losses.assign(static_cast<std::size_t>(K), 0.0);
    // Screening: a cheap pass on the first S rows (the caller's rows are a random draw, so any prefix of them is
    // one too), then the full probe for the M best of it only.
    const int64_t M = std::max<int64_t>(P.screen_keep, std::max<int64_t>(P.width, 1));
    const bool screen = P.screen_rows > 0 && P.screen_rows < R && K > M;
    const int64_t S = screen ? P.screen_rows : R;  // rows of the first pass
    auto score = [&](const std::vector<int64_t>* which, int64_t n, int64_t rows, std::atomic<bool>& halted) {
#pragma omp parallel num_threads(nt) if (nt > 1 && n > 1)
      {
        RowApplier ap(net);
        Probe probe(d, k, P.features, P.ridge);
        std::vector<float> y(static_cast<std::size_t>(rows * d));
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < n; ++t) {
          if (halted.load(std::memory_order_relaxed)) continue;
          if (stop.should_stop()) {
            halted.store(true, std::memory_order_relaxed);
            continue;
          }
          const int64_t c = which ? (*which)[t] : t;
          ap.apply(cands[c].a, cands[c].b, states[cands[c].s].x.data(), y.data(), rows);
          losses[c] = probe.sse(y.data(), rows, target) / (static_cast<double>(rows) * static_cast<double>(k));
        }
      }
    };
    auto better = [&](int64_t u, int64_t v) {
      // NaN (a blown-up prefix) sorts last; ties go to the lower candidate index
      const double lu = std::isnan(losses[u]) ? INFINITY : losses[u], lv = std::isnan(losses[v]) ? INFINITY : losses[v];
      return lu < lv || (lu == lv && u < v);
    };
    std::atomic<bool> halted{false};
    score(nullptr, K, S, halted);
    res.candidates += K;
    if (screen && !halted.load()) {
      idx.resize(static_cast<std::size_t>(K));
      std::iota(idx.begin(), idx.end(), 0);
      std::partial_sort(idx.begin(), idx.begin() + M, idx.end(), better);
      std::vector<int64_t> top(idx.begin(), idx.begin() + M);
      for (int64_t t = M; t < K; ++t) losses[idx[t]] = INFINITY;  // screened out
      score(&top, M, R, halted);
      res.rescored += M;
    }
    if (halted.load()) {  // a stop returns no orders (and no losses: n_final is 0)
      const char* why = stop.reason();
      res.stopped = why ? why : "interrupted";
      res.losses.clear();
      return res;
    }
    idx.resize(static_cast<std::size_t>(K));
    std::iota(idx.begin(), idx.end(), 0);
    const int64_t keep = std::min<int64_t>(std::max<int64_t>(P.width, 1), K);
    std::partial_sort(idx.begin(), idx.begin() + keep, idx.end(), better);
    res.best_path.push_back(losses[idx[0]]);
    std::vector<State> next(static_cast<std::size_t>(keep));
    RowApplier ap(net);
    for (int64_t t = 0; t < keep; ++t) {
      const Cand& c = cands[idx[t]];
      const State& par = states[c.s];
      State& st = next[t];
      st.oin = par.oin, st.oout = par.oout, st.used_in = par.used_in, st.used_out = par.used_out;
      st.oin.push_back(c.a), st.oout.push_back(c.b);
      st.used_in[c.a] = 1, st.used_out[c.b] = 1;
      if (joint) matcher.match(st);  // feasible by the check above, so a perfect matching exists
      st.x.resize(static_cast<std::size_t>(R * d));
      ap.apply(c.a, c.b, par.x.data(), st.x.data(), R);
    }
    std::vector<double> kept(static_cast<std::size_t>(keep));
    for (int64_t t = 0; t < keep; ++t) kept[t] = losses[idx[t]];
    states.swap(next);
    res.losses.swap(kept);
  }
  res.stopped = "done";
  for (const State& st : states) {
    if (static_cast<int64_t>(st.oin.size()) != N) continue;
    res.orders_in.insert(res.orders_in.end(), st.oin.begin(), st.oin.end());
    res.orders_out.insert(res.orders_out.end(), st.oout.begin(), st.oout.end());
    ++res.n_final;
  }
  if (static_cast<int64_t>(res.losses.size()) != res.n_final) res.losses.resize(static_cast<std::size_t>(res.n_final));
  return res;
}

namespace {

struct Move {
  int kind;
  int64_t i, j, s;  // s: first changed position
};

void path_moves(const std::vector<int>& kinds, int64_t first, int64_t N, std::vector<Move>& out) {
  out.clear();
  for (int kind : kinds) {
    switch (kind) {
      case kAdjacent:
        for (int64_t i = first; i + 1 < N; ++i) out.push_back({kind, i, i + 1, i});
        break;
      case kSwap:
        for (int64_t i = first; i + 1 < N; ++i)
          for (int64_t j = i + 2; j < N; ++j) out.push_back({kind, i, j, i});
        break;
      case kInsert:
        for (int64_t i = first; i < N; ++i)
          for (int64_t j = first; j < N; ++j)
            if (i - j >= 2 || j - i >= 2) out.push_back({kind, i, j, std::min(i, j)});
        break;
      case kRepair:
        for (int64_t i = first; i + 1 < N; ++i)
          for (int64_t j = i + 1; j < N; ++j) out.push_back({kind, i, j, i});
        break;
      default:
        break;
    }
  }
}

// Strict improvement guarded against float noise (as the MSE search's).
inline bool path_improves(double next, double cur) { return next < cur * (1.0 - 1e-9) - 1e-30; }

}  // namespace

PathSearchResult path_search(const PackedNet& net, const float* X, int64_t R, const float* target, int64_t k,
                             const int64_t* order_in, const int64_t* order_out, int64_t N,
                             const PathSearchParams& P, const Stopper& stop) {
  const int64_t d = net.d;
  const double nvals = static_cast<double>(R * k);
  PathSearchResult res;
  std::vector<int64_t> oin(order_in, order_in + N), oout(order_out, order_out + N);
  // prefix[p]: rows after p blocks; probe[p]: probe loss of prefix[p] (p >= 1).
  std::vector<float> prefix(static_cast<std::size_t>((N + 1) * R * d));
  std::vector<double> probe(static_cast<std::size_t>(N + 1), 0.0);
  std::copy(X, X + R * d, prefix.begin());
  RowApplier ap(net);
  Probe pr(d, k, P.features, P.ridge);
  auto refresh = [&](int64_t from) {  // recompute prefix and probe losses after position `from`
    for (int64_t p = from; p < N; ++p) {
      ap.apply(oin[p], oout[p], prefix.data() + p * R * d, prefix.data() + (p + 1) * R * d, R);
      probe[p + 1] = pr.sse(prefix.data() + (p + 1) * R * d, R, target) / nvals;
      ++res.probes;
    }
  };
  refresh(0);
  const int64_t first = std::max<int64_t>(0, std::min<int64_t>(P.first, N));
  auto total = [&]() {
    double J = 0.0;
    for (int64_t p = first + 1; p <= N; ++p) J += probe[p];
    return J;
  };
  double cur = total();
  std::vector<Move> moves;
  path_moves(P.kinds, first, N, moves);
  const int64_t K = static_cast<int64_t>(moves.size());
  std::vector<double> cand(static_cast<std::size_t>(K));
  std::vector<double> head(static_cast<std::size_t>(N + 1), 0.0);  // head[s] = sum of probe[first+1 .. s]
  std::vector<int64_t> all(static_cast<std::size_t>(K)), top;
  std::iota(all.begin(), all.end(), 0);
  const int64_t L = std::max<int64_t>(P.list_keep, 0);
  std::vector<double> lval;  // the candidate list: a move's last J while it improved, INFINITY otherwise
  bool have_list = false;
  auto lowest = [&](const std::vector<double>& v, int64_t keep) {  // `top` = the keep lowest finite v, ascending index
    top.clear();
    for (int64_t c = 0; c < K; ++c)
      if (std::isfinite(v[c])) top.push_back(c);
    const int64_t M = std::min<int64_t>(std::max<int64_t>(keep, 1), static_cast<int64_t>(top.size()));
    std::partial_sort(top.begin(), top.begin() + M, top.end(),
                      [&](int64_t u, int64_t w) { return v[u] < v[w] || (v[u] == v[w] && u < w); });
    top.resize(static_cast<std::size_t>(M));
    std::sort(top.begin(), top.end());
  };
#ifdef _OPENMP
  const int nt = P.n_threads > 0 ? P.n_threads : omp_get_max_threads();
#else
  const int nt = 1;
#endif
  // Score the candidates `which` into out[c] (J; INFINITY: cut, skipped or halted); true when the stop flag
  // halted it. tighten: the bound falls to the best J found so far (only the argmin is wanted); else it stays
  // at bound0 (the candidate list keeps the J of every move that beats bound0).
  auto score = [&](const std::vector<int64_t>& which, double bound0, bool tighten, std::vector<double>& out) {
    for (int64_t s = 0; s <= N; ++s) head[s] = (s > first ? head[s - 1] + probe[s] : 0.0);
    const int64_t n = static_cast<int64_t>(which.size());
    std::atomic<bool> halted{false};
    std::atomic<int64_t> nprobes{0};
    // The round's best J so far, shared by the threads as a bound (a plain mutex-free min via compare-exchange
    // on the double's value).
    std::atomic<double> bound{bound0};
#pragma omp parallel num_threads(nt) if (nt > 1 && n > 1)
    {
      RowApplier tap(net);
      Probe tpr(d, k, P.features, P.ridge);
      std::vector<float> x(static_cast<std::size_t>(R * d)), y(static_cast<std::size_t>(R * d));
      std::vector<int64_t> tin(static_cast<std::size_t>(N)), tout(static_cast<std::size_t>(N));
      int64_t local_probes = 0;
#pragma omp for schedule(dynamic, 1)
      for (int64_t t = 0; t < n; ++t) {
        const int64_t c = which[t];
        out[c] = INFINITY;
        if (halted.load(std::memory_order_relaxed)) continue;
        if (stop.should_stop()) {
          halted.store(true, std::memory_order_relaxed);
          continue;
        }
        const Move& mv = moves[c];
        if (mv.kind == kRepair && !P.repairable.empty() && !(P.repairable[oin[mv.i]] && P.repairable[oin[mv.j]]))
          continue;  // a trusted pair: not a candidate
        std::copy(oin.begin(), oin.end(), tin.begin());
        std::copy(oout.begin(), oout.end(), tout.begin());
        apply_move(tin.data(), tout.data(), N, mv.kind, mv.i, mv.j);
        double acc = head[mv.s];
        const float* src = prefix.data() + mv.s * R * d;
        bool cut = false;
        for (int64_t p = mv.s; p < N; ++p) {
          tap.apply(tin[p], tout[p], src, y.data(), R);
          acc += tpr.sse(y.data(), R, target) / nvals;
          ++local_probes;
          // every later term is >= 0: once past the best known J this candidate cannot win (strict >, so a
          // candidate tying the eventual best is always completed and the tie goes to the lower index)
          if (acc > bound.load(std::memory_order_relaxed)) { cut = true; break; }
          x.swap(y);
          src = x.data();
        }
        if (cut) continue;
        out[c] = acc;
        if (!tighten) continue;
        double b = bound.load(std::memory_order_relaxed);
        while (acc < b && !bound.compare_exchange_weak(b, acc, std::memory_order_relaxed)) {
        }
      }
      nprobes.fetch_add(local_probes);
    }
    res.probes += nprobes.load();
    return halted.load();
  };
  auto argmin = [&](const std::vector<int64_t>& which, const std::vector<double>& v) {
    int64_t best = -1;
    for (int64_t c : which)  // `which` ascending: ties go to the lower index
      if (std::isfinite(v[c]) && (best < 0 || v[c] < v[best])) best = c;
    return best;
  };
  // a scored move's entry in the list: its J while it improves on the current J, else INFINITY (it leaves)
  auto listed = [&](double v) { return std::isfinite(v) && path_improves(v, cur) ? v : INFINITY; };
  bool halted = false;
  while (true) {
    if (const char* why = stop.reason()) { res.stopped = why; break; }
    if (res.rounds >= P.max_rounds) { res.stopped = "max_rounds"; break; }
    if (K == 0) { res.stopped = "local_optimum"; break; }
    ++res.rounds;
    int64_t best = -1;
    if (L && have_list) {  // the list's most promising moves (cut at the current J only: each keeps its J)
      lowest(lval, L);
      const int64_t M = static_cast<int64_t>(top.size());
      if (M > 0) {
        if ((halted = score(top, cur, false, cand))) break;
        res.candidates += M;
        for (int64_t c : top) lval[c] = listed(cand[c]);
        best = argmin(top, cand);
        if (best >= 0 && !path_improves(cand[best], cur)) best = -1;
      }
    }
    if (best < 0) {  // no list, or none of its moves improves J: the full round
      // (with a list, every improving move's J is kept: no bound below the current J)
      if ((halted = score(all, cur, L == 0, cand))) break;
      res.candidates += K;
      ++res.full_rounds;
      best = argmin(all, cand);
      if (best < 0 || !path_improves(cand[best], cur)) { res.stopped = "local_optimum"; break; }
      if (L) {
        lval.resize(static_cast<std::size_t>(K));
        std::transform(cand.begin(), cand.end(), lval.begin(), listed);
        have_list = true;
      }
    }
    if (L) lval[best] = INFINITY;  // the move taken: its index names another move in the new order
    const Move& mv = moves[best];
    apply_move(oin.data(), oout.data(), N, mv.kind, mv.i, mv.j);
    refresh(mv.s);
    cur = total();
    res.history.push_back({static_cast<double>(res.rounds), static_cast<double>(mv.kind), static_cast<double>(mv.i),
                           static_cast<double>(mv.j), cur});
  }
  if (halted) {
    const char* why = stop.reason();
    res.stopped = why ? why : "interrupted";
  }
  res.order_in = oin, res.order_out = oout, res.J = cur;
  res.path.assign(probe.begin() + 1, probe.end());
  return res;
}

}  // namespace unshuffle
