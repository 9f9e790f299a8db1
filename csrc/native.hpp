// The core's loops around the search: whole-network forwards for verification (float32 and float64),
// the greedy seed, the pairing scores, the assignment solver and the CSV number parser. Like scorer.hpp,
// no Python here: bindings.cpp validates the arrays and calls these with raw pointers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "scorer.hpp"

namespace unshuffle {

// ------------------------------------------------------------------------------------------- forward.cpp

// out (R, k) float32 = last layer of the blocks (order_in[t], order_out[t]) applied to X (R, d), with the
// scorer's float32 block arithmetic. Row tiles run in parallel (n_threads: 0 = OpenMP default).
void forward_f32(const PackedNet& net, const float* X, int64_t R, const int64_t* order_in, const int64_t* order_out,
                 int64_t N, const float* W_last, const float* b_last, int64_t k, float* out, int n_threads);

// The same network in float64 (weights and inputs widened exactly from float32): out (R, k) double.
// Each row's result depends on that row only, so a row subset gives the same values as the full run.
void forward_f64(const float* W_in, const float* b_in, int64_t Ni, const float* W_out, const float* b_out,
                 int64_t No, int64_t d, int64_t h, const float* X, int64_t R, const int64_t* order_in,
                 const int64_t* order_out, int64_t N, const float* W_last, const float* b_last, int64_t k,
                 double* out, int n_threads);

// Sequential greedy seed (ordering.greedy_seed): blocks (a, out_of[a]) for a in 0..n-1; at each position
// the remaining block whose update ||out(relu(inp(x)))|| has the least mean over the rows (first minimum
// in index order), then x += that update. order (n,) gets the block indices a; first_scores (n,) the mean
// update norms at the first position (the delta-norm seed and the insertion priority).
void greedy_seed(const PackedNet& net, const float* X, int64_t R, const int64_t* out_of, int64_t n, int64_t* order,
                 double* first_scores, int n_threads);

// torch.randperm(n, generator=torch.Generator().manual_seed(seed)) on the CPU (torch's small-n algorithm:
// Fisher-Yates driven by the standard 32-bit MT19937 seeded with init_genrand(seed mod 2^32)).
void torch_randperm(int64_t n, uint64_t seed, int64_t* out);

// Pairing scores for every (inp a, out b), M = W_out[b] W_in[a] (d x d):
// neg_trace[a, b] = -tr(M) / d (float64 throughout); ratio[a, b] = -(tr(M) / d) / max(mean|offdiag M|, 1e-30)
// with |offdiag M| from one float32 product of all pairs (float64 sums).
void pair_scores(const float* W_in, int64_t Ni, const float* W_out, int64_t No, int64_t d, int64_t h,
                 double* ratio, double* neg_trace, int n_threads);

// ----------------------------------------------------------------------------------------------- lap.cpp

// Minimum-cost assignment of an nr x nc cost matrix (nr <= nc), shortest augmenting paths (Crouse 2016),
// with the tie-breaking of scipy.optimize.linear_sum_assignment. col4row (nr,). Returns 0, or -1 when
// the matrix is infeasible (no finite-cost full assignment).
int lap_min_cost(int64_t nr, int64_t nc, const double* cost, int64_t* col4row);

// ----------------------------------------------------------------------------------------------- csv.cpp

// Strict parse of CSV data lines: exactly ncols fields per line, each a plain decimal number
// ([+-]digits[.digits][e[+-]digits], no spaces, quotes, nan or inf) that is finite in float32; lines end
// in \n or \r\n; the last newline is optional; no blank lines. Values are parsed to the correctly rounded
// double, then rounded to float32 (what pandas' round_trip parse followed by astype(float32) gives).
struct CsvParse {
  bool ok = false;
  int64_t rows = 0;
  int64_t bad_line = -1;  // 0-based data line of the first problem (-1: none / not a line problem)
  int64_t bad_col = -1;
  std::string reason;     // why the strict parse gave up (the caller then uses a general parser)
};

// Counts data lines in buf[0, len) (see above); fills line_starts with each line's [begin, end) offsets.
CsvParse csv_scan_lines(const char* buf, int64_t len, std::vector<int64_t>& bounds);
// Parses the lines found by csv_scan_lines into out (rows, ncols) float32.
CsvParse csv_parse_lines(const char* buf, const std::vector<int64_t>& bounds, int64_t ncols, float* out,
                         int n_threads);

}  // namespace unshuffle
