// Local search over block orders (docs/SEARCH.md), running whole rounds in C++ on the fused scorer.
// No Python headers: bindings.cpp validates inputs and converts results.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "scorer.hpp"

namespace unshuffle {

enum MoveKind : int { kAdjacent = 0, kSwap = 1, kInsert = 2, kRepair = 3, kKick = 4 };

// Candidate arrays of one move set (SEARCH.md "Candidate arrays"): seq_* are (K, L) row-major, -1 padded;
// moves is (K, 3) rows [kind, i, j].
struct Candidates {
  int64_t K = 0, L = 0;
  std::vector<int64_t> starts, seq_in, seq_out, moves;
};

void generate_candidates(const int64_t* order_in, const int64_t* order_out, int64_t N, const std::vector<int>& kinds,
                         Candidates& out);

// Applies (kind, i, j) in place. kKick is an insert. Caller guarantees 0 <= i, j < N.
void apply_move(int64_t* order_in, int64_t* order_out, int64_t N, int kind, int64_t i, int64_t j);

// FNV-1a (64-bit) over the little-endian bytes of the int64 pairs (order_in[t], order_out[t]), t = 0..N-1.
uint64_t ordering_hash(const int64_t* order_in, const int64_t* order_out, int64_t N);

// splitmix64 step (SEARCH.md "Kicks").
uint64_t splitmix64_next(uint64_t& state);

struct SearchParams {
  std::vector<std::vector<int>> schedule;  // move sets, cheapest first
  double stop_loss = 0.0;
  int64_t max_rounds = 1000000;
  int64_t kicks = 0;
  uint64_t seed = 0;
  double time_limit_s = 0.0;  // <= 0: no limit
  const StopFlag* stop = nullptr;  // this search's cancel flag (may be null); see stop.hpp
  int n_threads = 0;
  bool multi = false;  // SEARCH.md "Multi-accept": disjoint improving adjacent swaps applied together
};

struct SearchResult {
  std::vector<int64_t> order_in, order_out;  // best-so-far order
  double loss = 0.0;                         // its loss
  std::vector<std::array<double, 6>> history;  // [round, kind, i, j, loss, n_candidates]
  int64_t rounds = 0, candidates_scored = 0, block_rows = 0;
  std::string stopped_reason;  // exact (loss <= stop_loss) | max_rounds | time_limit | local_optimum | interrupted
};

// Cancellation: params.stop (set from another thread) and params.time_limit_s are polled once per round,
// while drawing a kick, and once per scored work item inside a round, so a stop lands within microseconds
// even when one round scores thousands of candidates; the best order so far is returned.

// X (R, d) search rows; head.target (R, k). order_* (N,) with indices valid for net.
SearchResult local_search(const PackedNet& net, const float* X, int64_t R, const Head& head,
                          const int64_t* order_in, const int64_t* order_out, int64_t N, const SearchParams& params);

}  // namespace unshuffle
