// branch_errors (certificate.hpp): candidates branching off a base order, scored position by position with
// the rows of every candidate that applies the same block at the same position gathered into one product.
#include "certificate.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <numeric>
#include <unordered_map>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace unshuffle {

namespace {

constexpr int64_t kChunk = 48;                   // rows per product (a multiple of kRowAlign)
constexpr int64_t kJobRows = 256;                // rows per job
constexpr int64_t kJobFloats = int64_t(1) << 22;  // ~16 MB of activations per job at a time

inline int64_t rup(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// One block applied at one position to a set of slots (0 = the base order, 1 + q = the job's q-th candidate).
struct Group {
  int64_t a, b, begin, end;  // members[begin, end) are the slots
};

// The block schedule of one subset of candidates: which slots apply which block at each position.
struct Plan {
  std::vector<int64_t> cands;        // candidate indices of this subset
  std::vector<std::vector<int64_t>> branch_at;  // slots that copy the base rows at position p
  std::vector<Group> groups;
  std::vector<int64_t> members, group_begin;
  int64_t end = 0, applied = 0;  // positions to run; block applications per row
};

Plan make_plan(const std::vector<int64_t>& cands, const int64_t* order_in, const int64_t* order_out,
               const int64_t* starts, const int64_t* seq_in, const int64_t* seq_out, int64_t L,
               const std::vector<int64_t>& len, int64_t No) {
  Plan P;
  P.cands = cands;
  // The base order only has to run as far as the last branch point.
  int64_t base_end = 0;
  for (int64_t c : cands) base_end = std::max(base_end, starts[c]), P.end = std::max(P.end, starts[c] + len[c]);
  P.end = std::max(P.end, base_end);
  P.branch_at.resize(static_cast<std::size_t>(P.end + 1));
  // Entries (block key = a * No + b, slot) bucketed by position.
  std::vector<int64_t> count(static_cast<std::size_t>(P.end + 1), 0);
  for (int64_t p = 0; p < base_end; ++p) ++count[p + 1];
  for (int64_t c : cands)
    for (int64_t t = 0; t < len[c]; ++t) ++count[starts[c] + t + 1];
  for (int64_t p = 0; p < P.end; ++p) count[p + 1] += count[p];
  const int64_t n_entries = count[P.end];
  std::vector<int64_t> key(static_cast<std::size_t>(n_entries)), slot(static_cast<std::size_t>(n_entries));
  {
    std::vector<int64_t> fill(count.begin(), count.end() - 1);
    for (int64_t p = 0; p < base_end; ++p) key[fill[p]] = order_in[p] * No + order_out[p], slot[fill[p]++] = 0;
    for (std::size_t q = 0; q < cands.size(); ++q) {
      const int64_t c = cands[q], sl = static_cast<int64_t>(q) + 1;
      P.branch_at[starts[c]].push_back(sl);
      for (int64_t t = 0; t < len[c]; ++t) {
        const int64_t p = starts[c] + t;
        key[fill[p]] = seq_in[c * L + t] * No + seq_out[c * L + t], slot[fill[p]++] = sl;
      }
    }
  }
  P.group_begin.assign(static_cast<std::size_t>(P.end + 1), 0);
  P.members.reserve(static_cast<std::size_t>(n_entries));
  std::unordered_map<int64_t, int64_t> first;  // key -> index of its group at this position
  for (int64_t p = 0; p < P.end; ++p) {
    P.group_begin[p] = static_cast<int64_t>(P.groups.size());
    // Group by key in order of first appearance (stable in slot order): a hash map, since most entries of
    // a position share one key (the base order's block) and there are few distinct keys.
    first.clear();
    std::vector<std::vector<int64_t>> by;
    std::vector<int64_t> keys;
    for (int64_t e = count[p]; e < count[p + 1]; ++e) {
      auto it = first.find(key[e]);
      if (it == first.end()) {
        it = first.emplace(key[e], static_cast<int64_t>(by.size())).first;
        by.emplace_back();
        keys.push_back(key[e]);
      }
      by[it->second].push_back(slot[e]);
    }
    for (std::size_t g = 0; g < by.size(); ++g) {
      const int64_t begin = static_cast<int64_t>(P.members.size());
      P.members.insert(P.members.end(), by[g].begin(), by[g].end());
      P.groups.push_back({keys[g] / No, keys[g] % No, begin, static_cast<int64_t>(P.members.size())});
    }
    P.applied += count[p + 1] - count[p];
  }
  P.group_begin[P.end] = static_cast<int64_t>(P.groups.size());
  return P;
}

// Runs one subset over rows [ra, rb) on one thread; pm/ps get each candidate's max and sum over those rows.
// Returns false if stopped.
bool run_job(const PackedNet& net, const Plan& P, const float* X, int64_t ra, int64_t rb, const float* W_last,
             const float* b_last, const float* target, int64_t k, int64_t align_h, int64_t align_d, double* pm,
             double* ps, double* row_err, int64_t R, const Stopper* stop) {
  const int VW = simd_floats();
  const int64_t d = net.d, h = net.h, Dp = net.Dp, Hp = net.Hp;
  const int64_t slots = static_cast<int64_t>(P.cands.size()) + 1;
  const int64_t T = std::max<int64_t>(1, std::min<int64_t>(rb - ra, kJobFloats / (slots * Dp)));
  FloatBuf state(static_cast<std::size_t>(slots * T * Dp)), xb(static_cast<std::size_t>(kChunk * Dp)),
      hb(static_cast<std::size_t>(kChunk * Hp));
  float* S = state.data();
  float* x = xb.data();
  auto row = [&](int64_t slot, int64_t r) { return S + (slot * T + r) * Dp; };
  for (std::size_t q = 0; q + 1 < static_cast<std::size_t>(slots); ++q) pm[q] = 0.0, ps[q] = 0.0;
  for (int64_t r0 = ra; r0 < rb; r0 += T) {
    const int64_t nr = std::min(T, rb - r0);
    for (int64_t r = 0; r < nr; ++r) {
      std::memcpy(row(0, r), X + (r0 + r) * d, sizeof(float) * d);
      std::memset(row(0, r) + d, 0, sizeof(float) * (Dp - d));
    }
    for (int64_t p = 0; p <= P.end; ++p) {
      for (int64_t slot : P.branch_at[p]) std::memcpy(row(slot, 0), row(0, 0), sizeof(float) * nr * Dp);
      if (p == P.end) break;
      for (int64_t gi = P.group_begin[p]; gi < P.group_begin[p + 1]; ++gi) {
        if (stop && stop->should_stop()) return false;
        const Group& g = P.groups[gi];
        const int64_t rows = (g.end - g.begin) * nr;  // the group's slots' rows laid end to end
        for (int64_t f0 = 0; f0 < rows; f0 += kChunk) {
          // Each product is padded only to its own micro-tile height; padding rows are discarded (the second
          // product may read hidden rows left by an earlier item there, which only touch padding rows of x).
          const int64_t n = std::min(kChunk, rows - f0), Mh = rup(n, align_h), Md = rup(n, align_d);
          for (int64_t q = 0; q < n; ++q)
            std::memcpy(x + q * Dp, row(P.members[g.begin + (f0 + q) / nr], (f0 + q) % nr), sizeof(float) * Dp);
          const int64_t M = std::max(Mh, Md);
          if (M > n) std::memset(x + n * Dp, 0, sizeof(float) * (M - n) * Dp);
          gemm_f32(x, Dp, net.win_t.data() + g.a * d * Hp, Hp, d, net.bin.data() + g.a * Hp, hb.data(), Hp, Mh,
                   Hp / VW, true, false);
          gemm_f32(hb.data(), Hp, net.wout_t.data() + g.b * h * Dp, Dp, h, net.bout.data() + g.b * Dp, x, Dp, Md,
                   Dp / VW, false, true);
          for (int64_t q = 0; q < n; ++q)
            std::memcpy(row(P.members[g.begin + (f0 + q) / nr], (f0 + q) % nr), x + q * Dp, sizeof(float) * Dp);
        }
      }
    }
    // Last layer as forward_f32 computes it (float32 dot, then + bias); differences and sums in float64,
    // rows in order.
    for (int64_t q = 0; q + 1 < slots; ++q) {
      double m = pm[q], s = ps[q];
      for (int64_t r = 0; r < nr; ++r) {
        const float* xr = row(q + 1, r);
        double mr = 0.0;
        for (int64_t o = 0; o < k; ++o) {
          float dot = 0.f;
          for (int64_t j = 0; j < d; ++j) dot += xr[j] * W_last[o * d + j];
          const double diff = static_cast<double>(dot + b_last[o]) - static_cast<double>(target[(r0 + r) * k + o]);
          const double a = std::fabs(diff);
          if (a > mr || std::isnan(a)) mr = std::isnan(mr) ? mr : a;  // a NaN output makes the max NaN
          s += diff * diff;
        }
        if (mr > m || std::isnan(mr)) m = std::isnan(m) ? m : mr;
        if (row_err) row_err[P.cands[q] * R + r0 + r] = mr;
      }
      pm[q] = m, ps[q] = s;
    }
  }
  return true;
}

}  // namespace

int64_t branch_errors(const PackedNet& net, const float* X, int64_t R, const int64_t* order_in,
                      const int64_t* order_out, int64_t N, const int64_t* starts, const int64_t* seq_in,
                      const int64_t* seq_out, int64_t K, int64_t L, const float* W_last, const float* b_last,
                      const float* target, int64_t k, double* max_abs, double* sse, double* row_err,
                      int n_threads, const Stopper* stop, bool* stopped) {
  if (stopped) *stopped = false;
  for (int64_t c = 0; c < K; ++c) max_abs[c] = 0.0, sse[c] = 0.0;
  if (K <= 0 || R <= 0) return 0;
  const int VW = simd_floats();
  // Few rows per group are common (the screen gives each candidate one row): pad a product only to the
  // kernel's micro-tile height, not to kRowAlign.
  const int64_t align_h = gemm_row_align(net.Hp / VW), align_d = gemm_row_align(net.Dp / VW);
  std::vector<int64_t> len(static_cast<std::size_t>(K));
  int64_t total_len = 0;
  for (int64_t c = 0; c < K; ++c) {
    int64_t t = 0;
    while (t < L && seq_in[c * L + t] >= 0) ++t;
    len[c] = t, total_len += t;
  }
  int nt = 1;
#ifdef _OPENMP
  nt = n_threads > 0 ? n_threads : omp_get_max_threads();
  // One more thread per ~1e9 flops (~8 ms of kernel time on one core). A second thread only
  // pays when it has milliseconds of work: on a shared machine waking it and waiting for it at the end costs a
  // scheduler time slice (measured: a 2 ms call took 20 ms on two threads).
  if (n_threads <= 0) {
    const double flops = 4.0 * static_cast<double>(total_len + N) * R * net.d * net.h;
    nt = static_cast<int>(std::min<double>(nt, 1.0 + flops / 1e9));
  }
#else
  (void)n_threads;
#endif
  // Jobs = (candidate subset) x (row range), each run by one thread start to finish: no barrier per position
  // (they cost milliseconds each when the machine is shared). Subsets are contiguous index ranges (similar
  // moves, which share more products) of about equal total length, one per thread when rows are few: fewer,
  // larger groups. Results do not depend on the split (each row's arithmetic is the same in any group and the
  // sums run over fixed row chunks), hence not on n_threads.
  const int64_t n_rchunks = (R + kJobRows - 1) / kJobRows;
  const int64_t n_sub = std::max<int64_t>(1, std::min<int64_t>(K, n_rchunks >= nt ? 1 : nt));
  std::vector<std::vector<int64_t>> subsets;
  {
    std::vector<int64_t> cur;
    int64_t acc = 0;
    for (int64_t c = 0; c < K; ++c) {
      cur.push_back(c);
      acc += len[c] + 1;
      const int64_t made = static_cast<int64_t>(subsets.size());
      if (made + 1 < n_sub && acc * n_sub >= (total_len + K) * (made + 1)) subsets.push_back(std::move(cur)), cur.clear();
    }
    if (!cur.empty()) subsets.push_back(std::move(cur));
  }
  const int64_t n_sub_made = static_cast<int64_t>(subsets.size());
  const int64_t n_jobs = n_sub_made * n_rchunks;
  nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(nt, n_jobs)));
  std::vector<Plan> plans(subsets.size());
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1 && n_sub_made > 1)
  for (int64_t q = 0; q < n_sub_made; ++q)
    plans[q] = make_plan(subsets[q], order_in, order_out, starts, seq_in, seq_out, L, len, net.No);
  // Partial results per (row chunk, candidate), reduced in row-chunk order.
  std::vector<double> pm(static_cast<std::size_t>(n_rchunks * K)), ps(static_cast<std::size_t>(n_rchunks * K));
  std::vector<int64_t> offset(static_cast<std::size_t>(n_sub_made), 0);
  int64_t applied = 0;
  for (int64_t q = 0; q < n_sub_made; ++q) {
    offset[q] = plans[q].cands.front();
    applied += plans[q].applied;
  }
  std::atomic<bool> halted{false};
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
  for (int64_t jb = 0; jb < n_jobs; ++jb) {
    if (halted.load(std::memory_order_relaxed)) continue;
    const int64_t s = jb % n_sub_made, rc = jb / n_sub_made;
    const int64_t ra = rc * kJobRows, rb = std::min(R, ra + kJobRows);
    const std::size_t at = static_cast<std::size_t>(rc * K + offset[s]);
    if (!run_job(net, plans[s], X, ra, rb, W_last, b_last, target, k, align_h, align_d, pm.data() + at,
                 ps.data() + at, row_err, R, stop))
      halted.store(true, std::memory_order_relaxed);
  }
  if (halted.load()) {
    if (stopped) *stopped = true;
    return 0;
  }
  for (int64_t rc = 0; rc < n_rchunks; ++rc)
    for (int64_t c = 0; c < K; ++c) {
      const double m = pm[rc * K + c];
      if (m > max_abs[c] || std::isnan(m)) max_abs[c] = std::isnan(max_abs[c]) ? max_abs[c] : m;
      sse[c] += ps[rc * K + c];
    }
  return applied * R;
}

}  // namespace unshuffle
