// Probe beam search: builds block orders front to back, scoring each prefix by how well a least-squares
// readout of its activations predicts the target (docs/ORDERING.md, "Probe beam"). No Python headers.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "scorer.hpp"
#include "stop.hpp"

namespace unshuffle {

// Readout features of a row x (d values): linear [x, 1] (d + 1) or quadratic [x, x*x, 1] (2d + 1).
enum ProbeFeatures : int { kProbeLinear = 0, kProbeQuadratic = 1 };

// Sum of squared errors of the least-squares fit target ~ features(x) C, over R rows and k outputs.
// x is first whitened (columns standardised, z = L^-1 xs with corr = L L^T; a column whose remaining
// variance is below 1e-10 is dropped as collinear) and the features are [z, min(u*u, 64), 1] (quadratic) or [z, 1] (linear): z spans x,
// so a target linear in x is read exactly, and the normal equations stay well conditioned when a stream
// grows large or collapses onto a few directions. The squares are those of the standardised coordinates u. The normal equations are accumulated in float per tile of rows and in double across tiles, solved in double
// after scaling by the diagonal (a tiny relative ridge; exactly dependent features are dropped), and the SSE
// is measured by a second pass over the rows: the residual is stationary in C, so errors in C enter only to
// second order. Deterministic: the same inputs give the same bits on every thread.
class Probe {
 public:
  Probe(int64_t d, int64_t k, int features, double ridge = 1e-10);
  int64_t n_features() const { return nf_; }
  double sse(const float* x, int64_t R, const float* target);

 private:
  void row_features(const float* z, const float* u, float* f) const;
  double linear_sse(const float* XS, int64_t stride, int64_t R, const float* target, const char* dropped);
  int64_t d_, k_, nf_, na_, Np_, Mp_;  // na_ = nf_ + k_ columns: features then targets
  int features_;
  double ridge_;
  FloatBuf F_, FT_, Gt_, zero_;        // one tile: rows x columns, its transpose, F^T F; a zero bias row
  std::vector<float> f_;
  std::vector<double> G_, C_, scale_, y_, mean_, sd_, tsum_, cov_, W_, xblock_;
  FloatBuf XS_, Z_, WT_, CT_, Ct_;  // standardised rows, whitened rows (stride zstride_), whitening map, tiles
  int64_t zstride_ = 0;
  double sse0_ = 0.0;
  std::vector<char> dropped_;
};

struct BeamParams {
  int64_t width = 16;                // states kept per depth
  int features = kProbeQuadratic;    // ProbeFeatures
  double ridge = 1e-10;
  int n_threads = 0;                 // 0 = OpenMP default
  // Screening (0 = off): score every candidate on the first screen_rows rows, then only the
  // max(screen_keep, width) best of those on all rows; the kept states are chosen by the all-rows loss.
  int64_t screen_rows = 0;
  int64_t screen_keep = 0;
};

struct BeamResult {
  int64_t N = 0, n_final = 0;
  std::vector<int64_t> orders_in, orders_out;  // (n_final, N) row-major, best (lowest probe loss) first
  std::vector<double> losses;                  // (n_final,) probe SSE / (R k) of each final state
  std::vector<double> best_path;               // (steps,) best probe loss at each depth from P0 + 1
  int64_t candidates = 0;                      // prefixes scored
  int64_t rescored = 0;                        // of those, re-scored on all rows after screening
  std::string stopped;                         // done | interrupted | time_limit
};

// Orders all Ni blocks. allowed is (Ni, m): the out pieces in piece a may pair with (-1 = unused slot); m = 1 is
// a fixed pairing. prefix_in/prefix_out (P0 each) are placed first and fixed. A stop returns no orders.
BeamResult probe_beam(const PackedNet& net, const float* X, int64_t R, const float* target, int64_t k,
                      const int64_t* allowed, int64_t m, const int64_t* prefix_in, const int64_t* prefix_out,
                      int64_t P0, const BeamParams& params, const Stopper& stop);

}  // namespace unshuffle

namespace unshuffle {

// Local search on the probe path (docs/ORDERING.md, "Path search"): J(order) = sum over depths p > first of
// the probe loss of the activations after p blocks. Best improvement over the given move kinds (adjacent,
// swap, insert, repair) on positions >= first, all kinds at once. A candidate's evaluation stops as soon as
// its partial sum exceeds the best J known in the round (probe losses are >= 0), which keeps the result
// exact (the same move as a full evaluation would pick, ties to the lower candidate index).
struct PathSearchParams {
  std::vector<int> kinds;
  int64_t first = 0;
  int features = kProbeQuadratic;
  double ridge = 1e-10;
  int64_t max_rounds = 1000;
  int n_threads = 0;
  // repairable[a] (by in-piece stack index; empty = every piece): a re-pairing move is tried only when the in
  // pieces at both its positions are repairable (the pairing is trusted elsewhere)
  std::vector<uint8_t> repairable;
  // list_keep > 0: a candidate list. A full round keeps the J of every move that improves the order; the
  // rounds after it score only the list_keep listed moves of lowest stored J (a move that no longer improves
  // leaves the list, the others take their new J) and take the best if it improves, else a full round rebuilds
  // the list (so the search still ends at a local optimum).
  int64_t list_keep = 0;
};

struct PathSearchResult {
  std::vector<int64_t> order_in, order_out;
  double J = 0.0;                               // sum of probe losses (each SSE / (R k)) over depths > first
  std::vector<double> path;                     // (N,) probe loss after each depth 1..N of the final order
  std::vector<std::array<double, 5>> history;   // [round, kind, i, j, J after]
  int64_t rounds = 0, candidates = 0, probes = 0;
  int64_t full_rounds = 0;                      // rounds that scored every candidate on all rows
  std::string stopped;                          // local_optimum | max_rounds | interrupted | time_limit
};

PathSearchResult path_search(const PackedNet& net, const float* X, int64_t R, const float* target, int64_t k,
                             const int64_t* order_in, const int64_t* order_out, int64_t N,
                             const PathSearchParams& params, const Stopper& stop);

}  // namespace unshuffle
