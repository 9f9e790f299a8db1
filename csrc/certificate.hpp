// Errors of many candidate orders that branch off one base order (the uniqueness certificate's scorer,
// unshuffle/certificate.py). No Python headers: bindings.cpp validates the arrays.
#pragma once

#include <cstdint>

#include "scorer.hpp"
#include "stop.hpp"

namespace unshuffle {

// Candidate c runs the first starts[c] blocks of the base order (order_in, order_out; N blocks), then its own
// blocks (seq_in[c, t], seq_out[c, t]) up to the first -1, then the last layer: the scoring contract of
// score_candidates with prefix = the base order's prefixes of X (unshuffle/reference.py), 0 <= starts[c] <= N.
// For every candidate: max_abs[c] = max over rows and outputs of |double(y) - double(target)| (y the float32
// output) and sse[c] = the sum of those differences squared (float64); row_err (K, R), if not null, gets each
// row's max over outputs. Each row's values depend on that row alone (not on which rows or candidates share
// the call), so the max over a subset of rows never exceeds the max over all rows.
//
// Same block arithmetic per row as forward_f32 (the gemm_f32 kernel, and its last layer), so a candidate
// that is the base order itself gets verify's max abs error. The rows of all candidates that apply the same
// block at the same position are batched into one matrix product, and the base order's prefixes are computed
// on the fly (never stored): one row of thousands of candidates costs about what that many rows of one
// candidate cost, which the certificate's screen needs. Work is split into jobs (candidate subsets x row
// ranges) that run on one thread each; results do not depend on n_threads. stop: polled once per block
// group; if it fires, *stopped is set and the outputs are meaningless. Returns the block-rows computed.
int64_t branch_errors(const PackedNet& net, const float* X, int64_t R, const int64_t* order_in,
                      const int64_t* order_out, int64_t N, const int64_t* starts, const int64_t* seq_in,
                      const int64_t* seq_out, int64_t K, int64_t L, const float* W_last, const float* b_last,
                      const float* target, int64_t k, double* max_abs, double* sse, double* row_err,
                      int n_threads, const Stopper* stop = nullptr, bool* stopped = nullptr);

}  // namespace unshuffle
