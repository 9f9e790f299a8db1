#include "search.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <unordered_set>

namespace unshuffle {

namespace {

// Strict improvement guarded against float noise (SEARCH.md "Rounds").
inline bool improves(double next, double cur) { return next < cur * (1.0 - 1e-9) - 1e-30; }

// Enumerates the moves of one kind in SEARCH.md order, calling f(kind, i, j, start).
template <class F>
void for_each_move(int kind, int64_t N, F&& f) {
  switch (kind) {
    case kAdjacent:
      for (int64_t i = 0; i + 1 < N; ++i) f(kind, i, i + 1, i);
      break;
    case kSwap:
      for (int64_t i = 0; i + 1 < N; ++i)
        for (int64_t j = i + 2; j < N; ++j) f(kind, i, j, i);
      break;
    case kInsert:
      for (int64_t i = 0; i < N; ++i)
        for (int64_t j = 0; j < N; ++j)
          if (i - j >= 2 || j - i >= 2) f(kind, i, j, std::min(i, j));
      break;
    case kRepair:
      for (int64_t i = 0; i + 1 < N; ++i)
        for (int64_t j = i + 1; j < N; ++j) f(kind, i, j, i);
      break;
    default:
      break;
  }
}

void insert_move(int64_t* v, int64_t i, int64_t j) {  // list.pop(i); list.insert(j, blk)
  const int64_t blk = v[i];
  if (i < j)
    std::memmove(v + i, v + i + 1, sizeof(int64_t) * (j - i));
  else if (j < i)
    std::memmove(v + j + 1, v + j, sizeof(int64_t) * (i - j));
  v[j] = blk;
}

}  // namespace

void apply_move(int64_t* oin, int64_t* oout, int64_t N, int kind, int64_t i, int64_t j) {
  (void)N;
  switch (kind) {
    case kAdjacent:
    case kSwap:
      std::swap(oin[i], oin[j]);
      std::swap(oout[i], oout[j]);
      break;
    case kInsert:
    case kKick:
      insert_move(oin, i, j);
      insert_move(oout, i, j);
      break;
    case kRepair:
      std::swap(oout[i], oout[j]);
      break;
    default:
      break;
  }
}

void generate_candidates(const int64_t* oin, const int64_t* oout, int64_t N, const std::vector<int>& kinds,
                         Candidates& out) {
  out.moves.clear();
  out.starts.clear();
  for (int kind : kinds)
    for_each_move(kind, N, [&](int k, int64_t i, int64_t j, int64_t s) {
      out.moves.insert(out.moves.end(), {static_cast<int64_t>(k), i, j});
      out.starts.push_back(s);
    });
  out.K = static_cast<int64_t>(out.starts.size());
  int64_t min_start = N;
  for (int64_t s : out.starts) min_start = std::min(min_start, s);
  out.L = out.K > 0 ? N - min_start : 0;
  out.seq_in.assign(static_cast<std::size_t>(out.K * out.L), -1);
  out.seq_out.assign(static_cast<std::size_t>(out.K * out.L), -1);
  std::vector<int64_t> tin(oin, oin + N), tout(oout, oout + N);
  for (int64_t c = 0; c < out.K; ++c) {
    const int64_t* m = &out.moves[3 * c];
    std::copy(oin, oin + N, tin.begin());
    std::copy(oout, oout + N, tout.begin());
    apply_move(tin.data(), tout.data(), N, static_cast<int>(m[0]), m[1], m[2]);
    const int64_t s = out.starts[c];
    std::copy(tin.begin() + s, tin.end(), out.seq_in.begin() + c * out.L);
    std::copy(tout.begin() + s, tout.end(), out.seq_out.begin() + c * out.L);
  }
}

uint64_t ordering_hash(const int64_t* oin, const int64_t* oout, int64_t N) {
  uint64_t h = 0xcbf29ce484222325ULL;
  auto eat = [&h](int64_t v) {
    const uint64_t u = static_cast<uint64_t>(v);
    for (int b = 0; b < 8; ++b) {
      h ^= (u >> (8 * b)) & 0xffULL;
      h *= 0x100000001b3ULL;
    }
  };
  for (int64_t t = 0; t < N; ++t) {
    eat(oin[t]);
    eat(oout[t]);
  }
  return h;
}

uint64_t splitmix64_next(uint64_t& state) {
  state += 0x9E3779B97F4A7C15ULL;
  uint64_t z = state;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

SearchResult local_search(const PackedNet& net, const float* X, int64_t R, const Head& head,
                          const int64_t* order_in, const int64_t* order_out, int64_t N, const SearchParams& P) {
  const Stopper stopper(P.stop, P.time_limit_s);
  const int64_t d = net.d;
  SearchResult res;
  std::vector<int64_t> oin(order_in, order_in + N), oout(order_out, order_out + N);

  // prefix[p] = rows after the first p blocks of the current order; only the changed tail is recomputed.
  std::vector<float> prefix(static_cast<std::size_t>((N + 1) * R * d));
  std::copy(X, X + R * d, prefix.begin());
  forward_from(net, prefix.data(), R, oin.data(), oout.data(), N, 0, P.n_threads);
  auto current_loss = [&]() { return head_loss(prefix.data() + N * R * d, R, d, head); };
  double cur = current_loss();

  std::unordered_set<uint64_t> visited{ordering_hash(oin.data(), oout.data(), N)};
  res.order_in = oin, res.order_out = oout, res.loss = cur;
  auto note_best = [&]() {
    if (cur < res.loss) res.order_in = oin, res.order_out = oout, res.loss = cur;
  };

  uint64_t rng = P.seed;
  int64_t kicks_left = P.kicks;
  std::size_t level = 0;
  Candidates cand;
  std::vector<double> losses;
  const std::size_t nlevels = P.schedule.size();

  // Loop structure (and history round numbers) as in the Python reference loop, unshuffle/search.py.
  std::vector<int64_t> tin(N), tout(N);
  std::vector<int64_t> order, taken;  // multi-accept scratch
  std::vector<char> used;
  std::vector<float> cprefix;
  while (true) {
    if (cur <= P.stop_loss) { res.stopped_reason = "exact"; break; }
    if (res.rounds >= P.max_rounds) { res.stopped_reason = "max_rounds"; break; }
    if (const char* why = stopper.reason()) { res.stopped_reason = why; break; }
    if (level >= nlevels) {  // local optimum of the whole schedule: kick or stop
      if (kicks_left <= 0 || N < 3) { res.stopped_reason = "local_optimum"; break; }
      --kicks_left;
      int64_t ki = -1, kj = -1;
      const char* stopped = nullptr;
      for (int64_t attempt = 0; attempt < (int64_t{1} << 24); ++attempt) {
        if ((attempt & 1023) == 0 && (stopped = stopper.reason())) break;
        const int64_t i = static_cast<int64_t>(splitmix64_next(rng) % static_cast<uint64_t>(N));
        const int64_t j = static_cast<int64_t>(splitmix64_next(rng) % static_cast<uint64_t>(N));
        if (i - j < 2 && j - i < 2) continue;
        std::copy(oin.begin(), oin.end(), tin.begin());
        std::copy(oout.begin(), oout.end(), tout.begin());
        apply_move(tin.data(), tout.data(), N, kKick, i, j);
        if (visited.count(ordering_hash(tin.data(), tout.data(), N))) continue;
        ki = i, kj = j;
        break;
      }
      if (stopped) { res.stopped_reason = stopped; break; }
      if (ki < 0) { res.stopped_reason = "local_optimum"; break; }  // (practically) every kick was visited
      oin.swap(tin), oout.swap(tout);
      visited.insert(ordering_hash(oin.data(), oout.data(), N));
      forward_from(net, prefix.data(), R, oin.data(), oout.data(), N, std::min(ki, kj), P.n_threads);
      cur = current_loss();
      res.history.push_back({static_cast<double>(res.rounds), static_cast<double>(kKick), static_cast<double>(ki),
                             static_cast<double>(kj), cur, 0.0});
      note_best();
      level = 0;
      continue;
    }
    generate_candidates(oin.data(), oout.data(), N, P.schedule[level], cand);
    ++res.rounds;
    if (cand.K == 0) { ++level; continue; }
    losses.assign(static_cast<std::size_t>(cand.K), 0.0);
    bool cut = false;
    res.block_rows += score_candidates(net, prefix.data(), R, cand.starts.data(), cand.seq_in.data(),
                                       cand.seq_out.data(), cand.K, cand.L, head, losses.data(), P.n_threads, 0,
                                       &stopper, &cut);
    if (cut) {  // the round was cut short: its losses are incomplete, so it is not used
      const char* why = stopper.reason();
      res.stopped_reason = why ? why : "interrupted";
      break;
    }
    res.candidates_scored += cand.K;
    int64_t best = 0;
    for (int64_t c = 1; c < cand.K; ++c)  // strict <: ties go to the lowest candidate index
      if (losses[c] < losses[best]) best = c;
    if (improves(losses[best], cur)) {
      const int64_t* m = &cand.moves[3 * best];
      bool combined = false;
      if (P.multi && P.schedule[level].size() == 1 && P.schedule[level][0] == kAdjacent) {
        // Improving adjacent swaps on disjoint positions, best first (loss, then candidate index).
        order.clear();
        for (int64_t c = 0; c < cand.K; ++c)
          if (improves(losses[c], cur)) order.push_back(c);
        std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
          return losses[a] < losses[b] || (losses[a] == losses[b] && a < b);
        });
        taken.clear();
        used.assign(static_cast<std::size_t>(N), 0);
        for (int64_t c : order) {
          const int64_t i = cand.moves[3 * c + 1], j = cand.moves[3 * c + 2];
          if (used[i] || used[j]) continue;
          used[i] = used[j] = 1;
          taken.push_back(c);
        }
        if (taken.size() > 1) {
          std::copy(oin.begin(), oin.end(), tin.begin());
          std::copy(oout.begin(), oout.end(), tout.begin());
          int64_t p0 = N;
          for (int64_t c : taken) {
            const int64_t* mc = &cand.moves[3 * c];
            apply_move(tin.data(), tout.data(), N, static_cast<int>(mc[0]), mc[1], mc[2]);
            p0 = std::min(p0, cand.starts[c]);
          }
          // Rows before the first changed position are shared, so only the tail is recomputed (same bits as
          // a full forward); block_rows counts the full forward, as in the Python loop.
          cprefix.resize(prefix.size());
          std::copy(prefix.begin(), prefix.begin() + (p0 + 1) * R * d, cprefix.begin());
          forward_from(net, cprefix.data(), R, tin.data(), tout.data(), N, p0, P.n_threads);
          const double cl = head_loss(cprefix.data() + N * R * d, R, d, head);
          res.block_rows += N * R;
          if (improves(cl, losses[best])) {
            oin.swap(tin), oout.swap(tout), prefix.swap(cprefix);
            visited.insert(ordering_hash(oin.data(), oout.data(), N));
            cur = cl;
            for (int64_t c : taken) {
              const int64_t* mc = &cand.moves[3 * c];
              res.history.push_back({static_cast<double>(res.rounds), static_cast<double>(mc[0]),
                                     static_cast<double>(mc[1]), static_cast<double>(mc[2]), cur,
                                     static_cast<double>(cand.K)});
            }
            combined = true;
          }
        }
      }
      if (!combined) {
        apply_move(oin.data(), oout.data(), N, static_cast<int>(m[0]), m[1], m[2]);
        visited.insert(ordering_hash(oin.data(), oout.data(), N));
        forward_from(net, prefix.data(), R, oin.data(), oout.data(), N, cand.starts[best], P.n_threads);
        cur = losses[best];
        res.history.push_back({static_cast<double>(res.rounds), static_cast<double>(m[0]), static_cast<double>(m[1]),
                               static_cast<double>(m[2]), cur, static_cast<double>(cand.K)});
      }
      note_best();
      level = 0;
    } else {
      ++level;
    }
  }
  return res;
}

}  // namespace unshuffle
