// Linear assignment (the pairing's Hungarian step) without importing scipy.optimize (~0.3 s here).
// Algorithm: shortest augmenting paths with dual variables (a Dijkstra search per row), as described in
// D. F. Crouse, "On implementing 2D rectangular assignment algorithms", IEEE TAES 52(4), 2016, pp. 1685-1686.
// Ties are broken the way scipy.optimize.linear_sum_assignment breaks them (columns scanned from the last
// one down, and among equally short paths one that ends at a free column), so that both return the same
// assignment; tests/test_native.py compares them on random matrices with many ties.
//
// Exact floating-point semantics matter for those ties (the build uses -ffast-math elsewhere).
#if defined(__clang__)
#pragma clang fp reassociate(off)
#elif defined(__GNUC__)
#pragma GCC optimize("no-fast-math")
#endif

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "native.hpp"

namespace unshuffle {

int lap_min_cost(int64_t nr, int64_t nc, const double* cost_in, int64_t* col4row) {
  if (nr <= 0) return 0;
  const double inf = std::numeric_limits<double>::infinity();
  // Costs shifted so the smallest is 0 (the reduced costs below then round the same way as scipy's).
  double lo = cost_in[0];
  for (int64_t q = 1; q < nr * nc; ++q) lo = std::min(lo, cost_in[q]);
  std::vector<double> cost(static_cast<std::size_t>(nr * nc));
  for (int64_t q = 0; q < nr * nc; ++q) cost[q] = cost_in[q] - lo;

  std::vector<double> u(nr, 0.0), v(nc, 0.0), dist(nc);
  std::vector<int64_t> via(nc, -1), row_of(nc, -1), col_of(nr, -1), open(nc);
  std::vector<char> row_seen(nr), col_seen(nc);

  for (int64_t start = 0; start < nr; ++start) {
    // Dijkstra over reduced costs from row `start` to the nearest unassigned column.
    std::fill(row_seen.begin(), row_seen.end(), 0);
    std::fill(col_seen.begin(), col_seen.end(), 0);
    std::fill(dist.begin(), dist.end(), inf);
    int64_t n_open = nc;
    for (int64_t q = 0; q < nc; ++q) open[q] = nc - 1 - q;  // last column first: a constant matrix -> identity
    double reach = 0.0;
    int64_t i = start, sink = -1;
    while (sink < 0) {
      row_seen[i] = 1;
      int64_t pick = -1;
      double shortest = inf;
      for (int64_t q = 0; q < n_open; ++q) {
        const int64_t j = open[q];
        const double r = reach + cost[i * nc + j] - u[i] - v[j];
        if (r < dist[j]) {
          via[j] = i;
          dist[j] = r;
        }
        if (dist[j] < shortest || (dist[j] == shortest && row_of[j] < 0)) {
          shortest = dist[j];
          pick = q;
        }
      }
      if (pick < 0 || shortest == inf) return -1;  // every remaining column is forbidden: infeasible
      reach = shortest;
      const int64_t j = open[pick];
      col_seen[j] = 1;
      open[pick] = open[--n_open];
      if (row_of[j] < 0)
        sink = j;
      else
        i = row_of[j];
    }
    // Dual update keeps every reduced cost >= 0 and the new path tight.
    u[start] += reach;
    for (int64_t r = 0; r < nr; ++r)
      if (row_seen[r] && r != start) u[r] += reach - dist[col_of[r]];
    for (int64_t c = 0; c < nc; ++c)
      if (col_seen[c]) v[c] -= reach - dist[c];
    // Augment: flip the assignment along the path back to `start`.
    for (int64_t j = sink;;) {
      const int64_t r = via[j];
      row_of[j] = r;
      std::swap(col_of[r], j);
      if (r == start) break;
    }
  }
  for (int64_t r = 0; r < nr; ++r) col4row[r] = col_of[r];
  return 0;
}

}  // namespace unshuffle
