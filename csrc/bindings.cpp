// Thin pybind11 layer over the C++ core (scorer.hpp, search.hpp): validates numpy inputs (dtype, C order,
// shapes, index ranges), releases the GIL while the core works, and turns problems into ValueErrors that
// name the function, the argument and what is wrong. Inputs are never silently converted.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <sstream>
#include <string>
#include <vector>

#include "beam.hpp"
#include "certificate.hpp"
#include "native.hpp"
#include "scorer.hpp"
#include "search.hpp"
#include "stop.hpp"

namespace py = pybind11;
using namespace unshuffle;

namespace {

[[noreturn]] void fail(const std::string& fn, const std::string& msg) { throw py::value_error(fn + ": " + msg); }

std::string shape_str(const py::array& a) {
  std::ostringstream s;
  s << "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s << (i ? ", " : "") << a.shape(i);
  if (a.ndim() == 1) s << ",";
  s << ")";
  return s.str();
}

// dtype (float32 or int64, native byte order), ndim, C-contiguity and alignment; returns the shape.
std::vector<int64_t> check(const py::array& a, const std::string& fn, const char* name, bool is_float, int ndim,
                           const char* layout) {
  const py::dtype want = is_float ? py::dtype::of<float>() : py::dtype::of<int64_t>();
  if (!a.dtype().is(want))
    fail(fn, std::string(name) + " must be a " + (is_float ? "float32" : "int64") + " array, got dtype " +
                 std::string(py::str(a.dtype())));
  if (a.ndim() != ndim)
    fail(fn, std::string(name) + " must be " + std::to_string(ndim) + "-D " + layout + ", got shape " + shape_str(a));
  if (!(a.flags() & py::array::c_style))
    fail(fn, std::string(name) + " must be C-contiguous (use np.ascontiguousarray)");
  if (reinterpret_cast<std::uintptr_t>(a.data()) % a.itemsize() != 0)
    fail(fn, std::string(name) + " is not aligned to its item size (copy it)");
  std::vector<int64_t> s(static_cast<std::size_t>(ndim));
  for (int i = 0; i < ndim; ++i) s[i] = static_cast<int64_t>(a.shape(i));
  return s;
}

void expect_shape(const std::string& fn, const char* name, const py::array& a, const std::vector<int64_t>& want,
                  const std::string& why) {
  for (std::size_t i = 0; i < want.size(); ++i)
    if (a.shape(static_cast<py::ssize_t>(i)) != want[i]) {
      std::ostringstream s;
      s << name << " has shape " << shape_str(a) << ", expected (";
      for (std::size_t j = 0; j < want.size(); ++j) s << (j ? ", " : "") << want[j];
      s << (want.size() == 1 ? ",)" : ")") << " " << why;
      fail(fn, s.str());
    }
}

template <class T>
const T* ptr(const py::array& a) { return static_cast<const T*>(a.data()); }

// Validated block stacks: W_in (Ni, h, d), b_in (Ni, h), W_out (No, d, h), b_out (No, d); d fixed by the caller.
struct Stacks { int64_t Ni, No, h; };

Stacks check_stacks(const std::string& fn, int64_t d, const char* d_from, const py::array& W_in, const py::array& b_in,
                    const py::array& W_out, const py::array& b_out) {
  auto wi = check(W_in, fn, "W_in", true, 3, "(Ni, h, d)");
  const int64_t Ni = wi[0], h = wi[1];
  expect_shape(fn, "W_in", W_in, {Ni, h, d}, std::string("(Ni, h, d) with d from ") + d_from);
  check(b_in, fn, "b_in", true, 2, "(Ni, h)");
  expect_shape(fn, "b_in", b_in, {Ni, h}, "(Ni, h) from W_in");
  auto wo = check(W_out, fn, "W_out", true, 3, "(No, d, h)");
  const int64_t No = wo[0];
  expect_shape(fn, "W_out", W_out, {No, d, h}, "(No, d, h) with d, h from W_in");
  check(b_out, fn, "b_out", true, 2, "(No, d)");
  expect_shape(fn, "b_out", b_out, {No, d}, "(No, d) from W_out");
  return {Ni, No, h};
}

// The last layer (W_last (k, d), b_last (k,)); returns k. d_from says where d came from (error messages).
int64_t check_last(const std::string& fn, int64_t d, const char* d_from, const py::array& W_last,
                   const py::array& b_last) {
  auto wl = check(W_last, fn, "W_last", true, 2, "(k, d)");
  const int64_t k = wl[0];
  expect_shape(fn, "W_last", W_last, {k, d}, std::string("(k, d) with d from ") + d_from);
  check(b_last, fn, "b_last", true, 1, "(k,)");
  expect_shape(fn, "b_last", b_last, {k}, "(k,) from W_last");
  return k;
}

void check_head(const std::string& fn, int64_t R, int64_t d, const py::array& W_last, const py::array& b_last,
                const py::array& target) {
  const int64_t k = check_last(fn, d, "the rows", W_last, b_last);
  check(target, fn, "target", true, 2, "(R, k)");
  expect_shape(fn, "target", target, {R, k}, "(R, k): one row per input row, k from W_last");
}

// starts (K,), seq_in and seq_out (K, L) of a batch of candidates: their shapes, as {K, L}
std::pair<int64_t, int64_t> candidate_shape(const std::string& fn, const py::array& starts, const py::array& seq_in,
                                            const py::array& seq_out) {
  auto st = check(starts, fn, "starts", false, 1, "(K,)");
  const int64_t K = st[0];
  auto sq = check(seq_in, fn, "seq_in", false, 2, "(K, L)");
  expect_shape(fn, "seq_in", seq_in, {K, sq[1]}, "(K, L) with K from starts");
  const int64_t L = sq[1];
  check(seq_out, fn, "seq_out", false, 2, "(K, L)");
  expect_shape(fn, "seq_out", seq_out, {K, L}, "(K, L): the same shape as seq_in");
  return {K, L};
}

// their values: starts in [0, P), pieces in range, naming the first bad entry
void check_candidate_values(const std::string& fn, const py::array& starts, const py::array& seq_in,
                            const py::array& seq_out, int64_t K, int64_t L, int64_t P, int64_t Ni, int64_t No) {
  const IndexError e = check_candidates(ptr<int64_t>(starts), ptr<int64_t>(seq_in), ptr<int64_t>(seq_out), K, L, P,
                                        Ni, No);
  if (!e.ok) {
    std::string where = e.arg + "[" + std::to_string(e.row) + (e.col >= 0 ? ", " + std::to_string(e.col) : "") + "]";
    fail(fn, where + " = " + std::to_string(e.value) + " " + e.what);
  }
}

void check_order(const std::string& fn, const py::array& order_in, const py::array& order_out, int64_t Ni,
                 int64_t No, bool check_range) {
  auto n = check(order_in, fn, "order_in", false, 1, "(N,)");
  check(order_out, fn, "order_out", false, 1, "(N,)");
  expect_shape(fn, "order_out", order_out, {n[0]}, "(N,): same length as order_in");
  if (!check_range) return;
  const int64_t* oi = ptr<int64_t>(order_in);
  const int64_t* oo = ptr<int64_t>(order_out);
  for (int64_t t = 0; t < n[0]; ++t) {
    if (oi[t] < 0 || oi[t] >= Ni)
      fail(fn, "order_in[" + std::to_string(t) + "] = " + std::to_string(oi[t]) + " is out of range [0, " +
                   std::to_string(Ni) + ") (W_in has " + std::to_string(Ni) + " pieces)");
    if (oo[t] < 0 || oo[t] >= No)
      fail(fn, "order_out[" + std::to_string(t) + "] = " + std::to_string(oo[t]) + " is out of range [0, " +
                   std::to_string(No) + ") (W_out has " + std::to_string(No) + " pieces)");
  }
}

void check_threads(const std::string& fn, int n_threads) {
  if (n_threads < 0) fail(fn, "n_threads must be >= 0 (0 = OpenMP default), got " + std::to_string(n_threads));
}

int parse_kind(const std::string& fn, const char* arg, py::handle h) {
  static const char* names[] = {"adjacent", "swap", "insert", "repair"};
  if (py::isinstance<py::str>(h)) {
    const std::string s = py::cast<std::string>(h);
    for (int i = 0; i < 4; ++i)
      if (s == names[i]) return i;
    fail(fn, std::string(arg) + " has unknown move kind '" + s + "' (use adjacent, swap, insert, repair or 0-3)");
  }
  if (py::isinstance<py::int_>(h)) {
    const long long v = py::cast<long long>(h);
    if (v < 0 || v > 3) fail(fn, std::string(arg) + " has move kind " + std::to_string(v) + ", expected 0-3");
    return static_cast<int>(v);
  }
  fail(fn, std::string(arg) + " must hold move kinds (int 0-3 or name), got " +
               std::string(py::str(py::type::of(h).attr("__name__"))));
}

std::vector<int> parse_kinds(const std::string& fn, const char* arg, py::handle seq) {
  if (!py::isinstance<py::sequence>(seq) || py::isinstance<py::str>(seq))
    fail(fn, std::string(arg) + " must be a sequence of move kinds");
  std::vector<int> out;
  for (py::handle h : py::reinterpret_borrow<py::sequence>(seq)) out.push_back(parse_kind(fn, arg, h));
  return out;
}

template <class T>
py::array_t<T> to_array(const std::vector<T>& v, std::vector<py::ssize_t> shape) {
  py::array_t<T> a(shape);
  if (static_cast<py::ssize_t>(v.size()) != a.size())  // a core result of the wrong size must never overrun
    throw std::logic_error("internal error: result of " + std::to_string(v.size()) + " values for an array of " +
                           std::to_string(a.size()));
  if (!v.empty()) std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

// Raised (as unshuffle._core.Stopped, a RuntimeError) when a StopFlag or time limit cuts a scoring call.
struct StoppedError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// None -> no limit (0); otherwise a positive number of seconds (inf: no limit).
double parse_time_limit(const std::string& fn, const py::object& t) {
  if (t.is_none()) return 0.0;
  const double v = py::cast<double>(t);
  if (!(v > 0)) fail(fn, "time_limit_s must be > 0 or None (no limit), got " + std::to_string(v));
  return std::isinf(v) ? 0.0 : v;
}

// ---------------------------------------------------------------------------------------------------------

py::array_t<double> score_candidates_py(py::array prefix, py::array starts, py::array seq_in, py::array seq_out,
                                        py::array W_in, py::array b_in, py::array W_out, py::array b_out,
                                        py::array W_last, py::array b_last, py::array target, int n_threads,
                                        int tile_rows, const StopFlag* stop, py::object time_limit_s) {
  const std::string fn = "score_candidates";
  const double tl = parse_time_limit(fn, time_limit_s);
  auto ps = check(prefix, fn, "prefix", true, 3, "(P, R, d)");
  const int64_t P = ps[0], R = ps[1], d = ps[2];
  if (P < 1) fail(fn, "prefix must hold at least one position (P >= 1), got shape " + shape_str(prefix));
  const auto [K, L] = candidate_shape(fn, starts, seq_in, seq_out);
  const Stacks s = check_stacks(fn, d, "prefix", W_in, b_in, W_out, b_out);
  check_head(fn, R, d, W_last, b_last, target);
  check_threads(fn, n_threads);
  check_candidate_values(fn, starts, seq_in, seq_out, K, L, P, s.Ni, s.No);
  py::array_t<double> out(K);
  double* o = out.mutable_data();
  const Head head{ptr<float>(W_last), ptr<float>(b_last), ptr<float>(target), static_cast<int64_t>(W_last.shape(0))};
  bool cut = false;
  const char* why = nullptr;
  {
    py::gil_scoped_release nogil;
    const PackedNet net = pack_net(ptr<float>(W_in), ptr<float>(b_in), s.Ni, ptr<float>(W_out), ptr<float>(b_out),
                                   s.No, d, s.h);
    const Stopper stopper(stop, tl);
    score_candidates(net, ptr<float>(prefix), R, ptr<int64_t>(starts), ptr<int64_t>(seq_in), ptr<int64_t>(seq_out),
                     K, L, head, o, n_threads, tile_rows, &stopper, &cut);
    if (cut) why = stopper.reason();
  }
  if (cut) throw StoppedError(why ? why : "interrupted");
  return out;
}

py::tuple branch_errors_py(py::array X, py::array order_in, py::array order_out, py::array starts, py::array seq_in,
                           py::array seq_out, py::array W_in, py::array b_in, py::array W_out, py::array b_out,
                           py::array W_last, py::array b_last, py::array target, bool per_row, int n_threads,
                           const StopFlag* stop, py::object time_limit_s) {
  const std::string fn = "branch_errors";
  const double tl = parse_time_limit(fn, time_limit_s);
  auto xs = check(X, fn, "X", true, 2, "(R, d)");
  const int64_t R = xs[0], d = xs[1];
  const Stacks s = check_stacks(fn, d, "X", W_in, b_in, W_out, b_out);
  check_head(fn, R, d, W_last, b_last, target);
  check_order(fn, order_in, order_out, s.Ni, s.No, true);
  const int64_t N = order_in.shape(0);
  const auto [K, L] = candidate_shape(fn, starts, seq_in, seq_out);
  check_threads(fn, n_threads);
  // starts index the base order's N + 1 prefixes
  check_candidate_values(fn, starts, seq_in, seq_out, K, L, N + 1, s.Ni, s.No);
  py::array_t<double> max_abs(K), sse(K);
  double* pm = max_abs.mutable_data();
  double* ps = sse.mutable_data();
  py::array_t<double> rows({static_cast<py::ssize_t>(per_row ? K : 0), static_cast<py::ssize_t>(per_row ? R : 0)});
  double* pr = per_row ? rows.mutable_data() : nullptr;
  bool cut = false;
  const char* why = nullptr;
  {
    py::gil_scoped_release nogil;
    const PackedNet net = pack_net(ptr<float>(W_in), ptr<float>(b_in), s.Ni, ptr<float>(W_out), ptr<float>(b_out),
                                   s.No, d, s.h);
    const Stopper stopper(stop, tl);
    branch_errors(net, ptr<float>(X), R, ptr<int64_t>(order_in), ptr<int64_t>(order_out), N, ptr<int64_t>(starts),
                  ptr<int64_t>(seq_in), ptr<int64_t>(seq_out), K, L, ptr<float>(W_last), ptr<float>(b_last),
                  ptr<float>(target), static_cast<int64_t>(W_last.shape(0)), pm, ps, pr, n_threads, &stopper, &cut);
    if (cut) why = stopper.reason();
  }
  if (cut) throw StoppedError(why ? why : "interrupted");
  if (per_row) return py::make_tuple(max_abs, sse, rows);
  return py::make_tuple(max_abs, sse);
}

py::array_t<float> forward_prefixes_py(py::array X, py::array order_in, py::array order_out, py::array W_in,
                                       py::array b_in, py::array W_out, py::array b_out, int n_threads, int tile_rows) {
  const std::string fn = "forward_prefixes";
  auto xs = check(X, fn, "X", true, 2, "(R, d)");
  const int64_t R = xs[0], d = xs[1];
  const Stacks s = check_stacks(fn, d, "X", W_in, b_in, W_out, b_out);
  check_order(fn, order_in, order_out, s.Ni, s.No, true);
  check_threads(fn, n_threads);
  const int64_t N = order_in.shape(0);
  py::array_t<float> out({static_cast<py::ssize_t>(N + 1), static_cast<py::ssize_t>(R), static_cast<py::ssize_t>(d)});
  float* o = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    std::copy(ptr<float>(X), ptr<float>(X) + R * d, o);
    const PackedNet net = pack_net(ptr<float>(W_in), ptr<float>(b_in), s.Ni, ptr<float>(W_out), ptr<float>(b_out),
                                   s.No, d, s.h);
    forward_from(net, o, R, ptr<int64_t>(order_in), ptr<int64_t>(order_out), N, 0, n_threads, tile_rows);
  }
  return out;
}

py::tuple generate_candidates_py(py::array order_in, py::array order_out, py::object kinds) {
  const std::string fn = "generate_candidates";
  check_order(fn, order_in, order_out, 0, 0, false);
  const std::vector<int> ks = parse_kinds(fn, "kinds", kinds);
  Candidates c;
  {
    py::gil_scoped_release nogil;
    generate_candidates(ptr<int64_t>(order_in), ptr<int64_t>(order_out), order_in.shape(0), ks, c);
  }
  const auto K = static_cast<py::ssize_t>(c.K), L = static_cast<py::ssize_t>(c.L);
  return py::make_tuple(to_array(c.starts, {K}), to_array(c.seq_in, {K, L}), to_array(c.seq_out, {K, L}),
                        to_array(c.moves, {K, 3}));
}

py::tuple apply_move_py(py::array order_in, py::array order_out, int kind, int64_t i, int64_t j) {
  const std::string fn = "apply_move";
  check_order(fn, order_in, order_out, 0, 0, false);
  const int64_t N = order_in.shape(0);
  if (kind < 0 || kind > 4) fail(fn, "kind must be 0-4 (adjacent, swap, insert, repair, kick), got " + std::to_string(kind));
  if (i < 0 || i >= N) fail(fn, "i = " + std::to_string(i) + " is out of range [0, " + std::to_string(N) + ")");
  if (j < 0 || j >= N) fail(fn, "j = " + std::to_string(j) + " is out of range [0, " + std::to_string(N) + ")");
  std::vector<int64_t> oi(ptr<int64_t>(order_in), ptr<int64_t>(order_in) + N);
  std::vector<int64_t> oo(ptr<int64_t>(order_out), ptr<int64_t>(order_out) + N);
  apply_move(oi.data(), oo.data(), N, kind, i, j);
  return py::make_tuple(to_array(oi, {static_cast<py::ssize_t>(N)}), to_array(oo, {static_cast<py::ssize_t>(N)}));
}

uint64_t ordering_hash_py(py::array order_in, py::array order_out) {
  check_order("ordering_hash", order_in, order_out, 0, 0, false);
  return ordering_hash(ptr<int64_t>(order_in), ptr<int64_t>(order_out), order_in.shape(0));
}

py::dict local_search_py(py::array X, py::array target, py::array W_in, py::array b_in, py::array W_out,
                         py::array b_out, py::array W_last, py::array b_last, py::array order_in, py::array order_out,
                         py::object schedule, double stop_loss, int64_t max_rounds, int64_t kicks, uint64_t seed,
                         py::object time_limit_s, int n_threads, bool multi, const StopFlag* stop) {
  const std::string fn = "local_search";
  auto xs = check(X, fn, "X", true, 2, "(R, d)");
  const int64_t R = xs[0], d = xs[1];
  const Stacks s = check_stacks(fn, d, "X", W_in, b_in, W_out, b_out);
  check_head(fn, R, d, W_last, b_last, target);
  check_order(fn, order_in, order_out, s.Ni, s.No, true);
  check_threads(fn, n_threads);
  SearchParams p;
  if (schedule.is_none()) {  // unshuffle.search.DEFAULT_SCHEDULE
    p.schedule = {{kAdjacent}, {kSwap, kInsert}, {kRepair}};
  } else {
    if (!py::isinstance<py::sequence>(schedule) || py::isinstance<py::str>(schedule))
      fail(fn, "schedule must be a sequence of move sets (sequences of move kinds)");
    for (py::handle lvl : py::reinterpret_borrow<py::sequence>(schedule))
      p.schedule.push_back(parse_kinds(fn, "schedule", lvl));
  }
  if (std::isnan(stop_loss)) fail(fn, "stop_loss must not be NaN");
  if (max_rounds < 0) fail(fn, "max_rounds must be >= 0, got " + std::to_string(max_rounds));
  if (kicks < 0) fail(fn, "kicks must be >= 0, got " + std::to_string(kicks));
  p.stop_loss = stop_loss, p.max_rounds = max_rounds, p.kicks = kicks, p.seed = seed, p.n_threads = n_threads;
  p.multi = multi;
  p.time_limit_s = parse_time_limit(fn, time_limit_s);
  p.stop = stop;
  const int64_t N = order_in.shape(0);
  const Head head{ptr<float>(W_last), ptr<float>(b_last), ptr<float>(target), static_cast<int64_t>(W_last.shape(0))};
  SearchResult r;
  {
    py::gil_scoped_release nogil;
    const PackedNet net = pack_net(ptr<float>(W_in), ptr<float>(b_in), s.Ni, ptr<float>(W_out), ptr<float>(b_out),
                                   s.No, d, s.h);
    r = local_search(net, ptr<float>(X), R, head, ptr<int64_t>(order_in), ptr<int64_t>(order_out), N, p);
  }
  std::vector<double> hist;
  hist.reserve(r.history.size() * 6);
  for (const auto& row : r.history) hist.insert(hist.end(), row.begin(), row.end());
  py::dict out;
  out["order_in"] = to_array(r.order_in, {static_cast<py::ssize_t>(N)});
  out["order_out"] = to_array(r.order_out, {static_cast<py::ssize_t>(N)});
  out["loss"] = r.loss;
  out["history"] = to_array(hist, {static_cast<py::ssize_t>(r.history.size()), 6});
  out["rounds"] = r.rounds;
  out["candidates_scored"] = r.candidates_scored;
  out["block_rows"] = r.block_rows;
  out["stopped_reason"] = r.stopped_reason;
  return out;
}

int parse_features(const std::string& fn, const std::string& features) {
  if (features == "linear") return kProbeLinear;
  if (features == "quadratic") return kProbeQuadratic;
  fail(fn, "features must be 'linear' or 'quadratic', got '" + features + "'");
}

double probe_sse_py(py::array x, py::array target, const std::string& features, double ridge) {
  const std::string fn = "probe_sse";
  auto xs = check(x, fn, "x", true, 2, "(R, d)");
  auto ts = check(target, fn, "target", true, 2, "(R, k)");
  expect_shape(fn, "target", target, {xs[0], ts[1]}, "(R, k): one row per row of x");
  const int f = parse_features(fn, features);
  if (!(ridge >= 0)) fail(fn, "ridge must be >= 0");
  py::gil_scoped_release nogil;
  Probe p(xs[1], ts[1], f, ridge);
  return p.sse(ptr<float>(x), xs[0], ptr<float>(target));
}

py::dict probe_beam_py(py::array X, py::array target, py::array W_in, py::array b_in, py::array W_out,
                       py::array b_out, py::array allowed, py::object prefix_in, py::object prefix_out, int64_t width,
                       const std::string& features, double ridge, int n_threads, const StopFlag* stop,
                       py::object time_limit_s, int64_t screen_rows, int64_t screen_keep) {
  const std::string fn = "probe_beam";
  auto xs = check(X, fn, "X", true, 2, "(R, d)");
  const int64_t R = xs[0], d = xs[1];
  const Stacks s = check_stacks(fn, d, "X", W_in, b_in, W_out, b_out);
  auto ts = check(target, fn, "target", true, 2, "(R, k)");
  expect_shape(fn, "target", target, {R, ts[1]}, "(R, k): one row per row of X");
  const int64_t k = ts[1];
  auto as = check(allowed, fn, "allowed", false, 2, "(Ni, m)");
  expect_shape(fn, "allowed", allowed, {s.Ni, as[1]}, "(Ni, m): one row per W_in piece");
  const int64_t m = as[1];
  if (m < 1) fail(fn, "allowed must have at least one column");
  const int64_t* al = ptr<int64_t>(allowed);
  for (int64_t i = 0; i < s.Ni * m; ++i)
    if (al[i] < -1 || al[i] >= s.No)
      fail(fn, "allowed[" + std::to_string(i / m) + ", " + std::to_string(i % m) + "] = " + std::to_string(al[i]) +
                   " is out of range [-1, " + std::to_string(s.No) + ")");
  if (s.No < s.Ni) fail(fn, "W_out has fewer pieces than W_in: every block needs one");
  if (width < 1) fail(fn, "width must be >= 1, got " + std::to_string(width));
  if (screen_rows < 0) fail(fn, "screen_rows must be >= 0 (0: no screening), got " + std::to_string(screen_rows));
  if (screen_keep < 0) fail(fn, "screen_keep must be >= 0, got " + std::to_string(screen_keep));
  if (!(ridge >= 0)) fail(fn, "ridge must be >= 0");
  check_threads(fn, n_threads);
  std::vector<int64_t> pin, pout;
  if (prefix_in.is_none() != prefix_out.is_none()) fail(fn, "give both prefix_in and prefix_out, or neither");
  if (!prefix_in.is_none()) {
    py::array pi = prefix_in, po = prefix_out;
    check_order(fn, pi, po, s.Ni, s.No, true);
    pin.assign(ptr<int64_t>(pi), ptr<int64_t>(pi) + pi.shape(0));
    pout.assign(ptr<int64_t>(po), ptr<int64_t>(po) + po.shape(0));
    std::vector<char> ui(static_cast<std::size_t>(s.Ni), 0), uo(static_cast<std::size_t>(s.No), 0);
    for (std::size_t t = 0; t < pin.size(); ++t) {
      if (ui[pin[t]]++) fail(fn, "prefix_in repeats piece " + std::to_string(pin[t]));
      if (uo[pout[t]]++) fail(fn, "prefix_out repeats piece " + std::to_string(pout[t]));
    }
  }
  BeamParams p;
  p.width = width, p.features = parse_features(fn, features), p.ridge = ridge, p.n_threads = n_threads;
  p.screen_rows = screen_rows, p.screen_keep = screen_keep;
  const double tl = parse_time_limit(fn, time_limit_s);
  BeamResult r;
  {
    py::gil_scoped_release nogil;
    const PackedNet net = pack_net(ptr<float>(W_in), ptr<float>(b_in), s.Ni, ptr<float>(W_out), ptr<float>(b_out),
                                   s.No, d, s.h);
    const Stopper stopper(stop, tl);
    r = probe_beam(net, ptr<float>(X), R, ptr<float>(target), k, al, m, pin.data(), pout.data(),
                   static_cast<int64_t>(pin.size()), p, stopper);
  }
  py::dict out;
  const auto F = static_cast<py::ssize_t>(r.n_final), N = static_cast<py::ssize_t>(r.N);
  out["orders_in"] = to_array(r.orders_in, {F, N});
  out["orders_out"] = to_array(r.orders_out, {F, N});
  out["losses"] = to_array(r.losses, {F});
  out["best_path"] = to_array(r.best_path, {static_cast<py::ssize_t>(r.best_path.size())});
  out["candidates"] = r.candidates;
  out["rescored"] = r.rescored;
  out["stopped"] = r.stopped;
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// native.hpp: verification forwards, greedy seed, randperm, pairing scores, assignment, CSV numbers

py::array_t<float> forward_f32_py(py::array X, py::array order_in, py::array order_out, py::array W_in,
                                  py::array b_in, py::array W_out, py::array b_out, py::array W_last,
                                  py::array b_last, int n_threads) {
  const std::string fn = "forward_f32";
  auto xs = check(X, fn, "X", true, 2, "(R, d)");
  const int64_t R = xs[0], d = xs[1];
  const Stacks s = check_stacks(fn, d, "X", W_in, b_in, W_out, b_out);
  check_order(fn, order_in, order_out, s.Ni, s.No, true);
  const int64_t k = check_last(fn, d, "X", W_last, b_last);
  check_threads(fn, n_threads);
  py::array_t<float> out({static_cast<py::ssize_t>(R), static_cast<py::ssize_t>(k)});
  float* o = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    const PackedNet net = pack_net(ptr<float>(W_in), ptr<float>(b_in), s.Ni, ptr<float>(W_out), ptr<float>(b_out),
                                   s.No, d, s.h);
    forward_f32(net, ptr<float>(X), R, ptr<int64_t>(order_in), ptr<int64_t>(order_out), order_in.shape(0),
                ptr<float>(W_last), ptr<float>(b_last), k, o, n_threads);
  }
  return out;
}

py::array_t<double> forward_f64_py(py::array X, py::array order_in, py::array order_out, py::array W_in,
                                   py::array b_in, py::array W_out, py::array b_out, py::array W_last,
                                   py::array b_last, int n_threads) {
  const std::string fn = "forward_f64";
  auto xs = check(X, fn, "X", true, 2, "(R, d)");
  const int64_t R = xs[0], d = xs[1];
  const Stacks s = check_stacks(fn, d, "X", W_in, b_in, W_out, b_out);
  check_order(fn, order_in, order_out, s.Ni, s.No, true);
  const int64_t k = check_last(fn, d, "X", W_last, b_last);
  check_threads(fn, n_threads);
  py::array_t<double> out({static_cast<py::ssize_t>(R), static_cast<py::ssize_t>(k)});
  double* o = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    forward_f64(ptr<float>(W_in), ptr<float>(b_in), s.Ni, ptr<float>(W_out), ptr<float>(b_out), s.No, d, s.h,
                ptr<float>(X), R, ptr<int64_t>(order_in), ptr<int64_t>(order_out), order_in.shape(0),
                ptr<float>(W_last), ptr<float>(b_last), k, o, n_threads);
  }
  return out;
}

py::tuple greedy_seed_py(py::array X, py::array W_in, py::array b_in, py::array W_out, py::array b_out,
                         py::array out_of, int n_threads) {
  const std::string fn = "greedy_seed";
  auto xs = check(X, fn, "X", true, 2, "(R, d)");
  const int64_t R = xs[0], d = xs[1];
  const Stacks s = check_stacks(fn, d, "X", W_in, b_in, W_out, b_out);
  auto ns = check(out_of, fn, "out_of", false, 1, "(n,)");
  const int64_t n = ns[0];
  if (n > s.Ni)
    fail(fn, "out_of has " + std::to_string(n) + " entries but W_in has only " + std::to_string(s.Ni) + " pieces");
  const int64_t* oo = ptr<int64_t>(out_of);
  for (int64_t a = 0; a < n; ++a)
    if (oo[a] < 0 || oo[a] >= s.No)
      fail(fn, "out_of[" + std::to_string(a) + "] = " + std::to_string(oo[a]) + " is out of range [0, " +
                   std::to_string(s.No) + ") (W_out has " + std::to_string(s.No) + " pieces)");
  check_threads(fn, n_threads);
  py::array_t<int64_t> order(n);
  py::array_t<double> first(n);
  int64_t* po = order.mutable_data();
  double* pf = first.mutable_data();
  {
    py::gil_scoped_release nogil;
    const PackedNet net = pack_net(ptr<float>(W_in), ptr<float>(b_in), s.Ni, ptr<float>(W_out), ptr<float>(b_out),
                                   s.No, d, s.h);
    greedy_seed(net, ptr<float>(X), R, oo, n, po, pf, n_threads);
  }
  return py::make_tuple(order, first);
}

py::array_t<int64_t> torch_randperm_py(int64_t n, uint64_t seed) {
  if (n < 0) fail("torch_randperm", "n must be >= 0, got " + std::to_string(n));
  if (n >= static_cast<int64_t>(0xffffffffu / 20))
    fail("torch_randperm", "n = " + std::to_string(n) + " is beyond torch's small-n algorithm (n < 2^32 / 20)");
  py::array_t<int64_t> out(n);
  torch_randperm(n, seed, out.mutable_data());
  return out;
}

py::tuple pair_scores_py(py::array W_in, py::array W_out, int n_threads) {
  const std::string fn = "pair_scores";
  auto wi = check(W_in, fn, "W_in", true, 3, "(Ni, h, d)");
  const int64_t Ni = wi[0], h = wi[1], d = wi[2];
  auto wo = check(W_out, fn, "W_out", true, 3, "(No, d, h)");
  const int64_t No = wo[0];
  expect_shape(fn, "W_out", W_out, {No, d, h}, "(No, d, h) with d, h from W_in");
  check_threads(fn, n_threads);
  py::array_t<double> ratio({static_cast<py::ssize_t>(Ni), static_cast<py::ssize_t>(No)});
  py::array_t<double> ntr({static_cast<py::ssize_t>(Ni), static_cast<py::ssize_t>(No)});
  double* pr = ratio.mutable_data();
  double* pt = ntr.mutable_data();
  {
    py::gil_scoped_release nogil;
    pair_scores(ptr<float>(W_in), Ni, ptr<float>(W_out), No, d, h, pr, pt, n_threads);
  }
  return py::make_tuple(ratio, ntr);
}

py::array_t<int64_t> lap_min_cost_py(py::array cost) {
  const std::string fn = "lap_min_cost";
  if (!cost.dtype().is(py::dtype::of<double>()))
    fail(fn, "cost must be a float64 array, got dtype " + std::string(py::str(cost.dtype())));
  if (cost.ndim() != 2) fail(fn, "cost must be 2-D (nr, nc), got shape " + shape_str(cost));
  if (!(cost.flags() & py::array::c_style)) fail(fn, "cost must be C-contiguous (use np.ascontiguousarray)");
  const int64_t nr = cost.shape(0), nc = cost.shape(1);
  if (nr > nc) fail(fn, "cost has more rows than columns " + shape_str(cost) + "; pass its transpose");
  const double* c = ptr<double>(cost);
  for (int64_t q = 0; q < nr * nc; ++q)
    if (std::isnan(c[q]) || c[q] == -std::numeric_limits<double>::infinity())
      fail(fn, "cost matrix contains invalid numeric entries (NaN or -inf)");
  py::array_t<int64_t> out(nr);
  int64_t* o = out.mutable_data();
  int rc = 0;
  {
    py::gil_scoped_release nogil;
    rc = lap_min_cost(nr, nc, c, o);
  }
  if (rc != 0) fail(fn, "cost matrix is infeasible");
  return out;
}

py::tuple parse_csv_py(py::buffer buf, int64_t offset, int64_t ncols, int n_threads) {
  const std::string fn = "parse_csv";
  py::buffer_info info = buf.request();
  if (info.ndim != 1 || info.itemsize != 1) fail(fn, "buf must be a 1-D bytes-like object");
  const int64_t len = static_cast<int64_t>(info.size);
  if (offset < 0 || offset > len) fail(fn, "offset " + std::to_string(offset) + " is outside the buffer");
  if (ncols < 1) fail(fn, "ncols must be >= 1, got " + std::to_string(ncols));
  check_threads(fn, n_threads);
  const char* data = static_cast<const char*>(info.ptr) + offset;
  std::vector<int64_t> bounds;
  CsvParse r;
  {
    py::gil_scoped_release nogil;
    r = csv_scan_lines(data, len - offset, bounds);
  }
  py::array_t<float> out({static_cast<py::ssize_t>(r.ok ? r.rows : 0), static_cast<py::ssize_t>(ncols)});
  if (r.ok && r.rows > 0) {
    float* o = out.mutable_data();
    py::gil_scoped_release nogil;
    r = csv_parse_lines(data, bounds, ncols, o, n_threads);
  }
  py::dict why;
  why["ok"] = r.ok;
  why["rows"] = r.rows;
  why["line"] = r.bad_line;
  why["col"] = r.bad_col;
  why["reason"] = r.reason;
  return py::make_tuple(r.ok ? py::object(out) : py::object(py::none()), why);
}

py::dict path_search_py(py::array X, py::array target, py::array W_in, py::array b_in, py::array W_out,
                        py::array b_out, py::array order_in, py::array order_out, py::object kinds, int64_t first,
                        const std::string& features, double ridge, int64_t max_rounds, int n_threads,
                        const StopFlag* stop, py::object time_limit_s, py::object repairable, int64_t list_keep) {
  const std::string fn = "path_search";
  auto xs = check(X, fn, "X", true, 2, "(R, d)");
  const int64_t R = xs[0], d = xs[1];
  const Stacks s = check_stacks(fn, d, "X", W_in, b_in, W_out, b_out);
  auto ts = check(target, fn, "target", true, 2, "(R, k)");
  expect_shape(fn, "target", target, {R, ts[1]}, "(R, k): one row per row of X");
  check_order(fn, order_in, order_out, s.Ni, s.No, true);
  check_threads(fn, n_threads);
  if (first < 0) fail(fn, "first must be >= 0, got " + std::to_string(first));
  if (max_rounds < 0) fail(fn, "max_rounds must be >= 0, got " + std::to_string(max_rounds));
  if (!(ridge >= 0)) fail(fn, "ridge must be >= 0");
  PathSearchParams p;
  p.kinds = parse_kinds(fn, "kinds", kinds);
  p.first = first, p.features = parse_features(fn, features), p.ridge = ridge, p.max_rounds = max_rounds;
  p.n_threads = n_threads;
  if (list_keep < 0) fail(fn, "list_keep must be >= 0, got " + std::to_string(list_keep));
  p.list_keep = list_keep;
  if (!repairable.is_none()) {  // one flag per in piece (stack index)
    for (py::handle v : repairable) p.repairable.push_back(py::cast<bool>(v) ? 1 : 0);
    if (static_cast<int64_t>(p.repairable.size()) != s.Ni)
      fail(fn, "repairable must hold one flag per in piece (" + std::to_string(s.Ni) + "), got " +
                   std::to_string(p.repairable.size()));
  }
  const double tl = parse_time_limit(fn, time_limit_s);
  const int64_t N = order_in.shape(0);
  PathSearchResult r;
  {
    py::gil_scoped_release nogil;
    const PackedNet net = pack_net(ptr<float>(W_in), ptr<float>(b_in), s.Ni, ptr<float>(W_out), ptr<float>(b_out),
                                   s.No, d, s.h);
    const Stopper stopper(stop, tl);
    r = path_search(net, ptr<float>(X), R, ptr<float>(target), ts[1], ptr<int64_t>(order_in),
                    ptr<int64_t>(order_out), N, p, stopper);
  }
  std::vector<double> hist;
  for (const auto& row : r.history) hist.insert(hist.end(), row.begin(), row.end());
  py::dict out;
  out["order_in"] = to_array(r.order_in, {static_cast<py::ssize_t>(N)});
  out["order_out"] = to_array(r.order_out, {static_cast<py::ssize_t>(N)});
  out["J"] = r.J;
  out["path"] = to_array(r.path, {static_cast<py::ssize_t>(r.path.size())});
  out["history"] = to_array(hist, {static_cast<py::ssize_t>(r.history.size()), 5});
  out["rounds"] = r.rounds;
  out["candidates"] = r.candidates;
  out["probes"] = r.probes;
  out["full_rounds"] = r.full_rounds;
  out["stopped"] = r.stopped;
  return out;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "unshuffle C++ core: fused CPU scorer and local search (see unshuffle/reference.py, docs/SEARCH.md)";
  m.attr("MOVE_KINDS") = py::make_tuple("adjacent", "swap", "insert", "repair", "kick");
  m.def("score_candidates", &score_candidates_py, py::arg("prefix"), py::arg("starts"), py::arg("seq_in"),
        py::arg("seq_out"), py::arg("W_in"), py::arg("b_in"), py::arg("W_out"), py::arg("b_out"), py::arg("W_last"),
        py::arg("b_last"), py::arg("target"), py::arg("n_threads") = 0, py::arg("tile_rows") = 0,
        py::arg("stop") = nullptr, py::arg("time_limit_s") = py::none(),
        "Contract losses (K,) float64 of K candidates (see unshuffle.reference). All arrays float32/int64,\n"
        "C-contiguous. n_threads=0 uses the OpenMP default; results do not depend on it. tile_rows (rows per\n"
        "work item, rounded up to a multiple of 24; 0 = default) is a tuning knob for benchmarks. stop\n"
        "(StopFlag) or time_limit_s cut the call short: it then raises Stopped('interrupted'|'time_limit').");
  m.def("branch_errors", &branch_errors_py, py::arg("X"), py::arg("order_in"), py::arg("order_out"),
        py::arg("starts"), py::arg("seq_in"), py::arg("seq_out"), py::arg("W_in"), py::arg("b_in"), py::arg("W_out"),
        py::arg("b_out"), py::arg("W_last"), py::arg("b_last"), py::arg("target"), py::arg("per_row") = false,
        py::arg("n_threads") = 0, py::arg("stop") = nullptr, py::arg("time_limit_s") = py::none(),
        "(max_abs (K,), sse (K,)) float64 of K candidates that run the first starts[c] blocks of the order\n"
        "(order_in, order_out), then seq_in[c]/seq_out[c] (-1 padded), then the last layer: max |y - target| and\n"
        "the sum of (y - target)^2 over the rows of X, y the float32 output (score_candidates' contract with the\n"
        "order's prefixes of X; 0 <= starts <= N). Candidates applying the same block at the same position are\n"
        "batched into one product (the certificate's scorer). per_row=True adds a third array (K, R): each\n"
        "row's max over outputs. Each row's values depend on that row only. stop / time_limit_s: raises Stopped.");
  m.def("simd_floats", &simd_floats,
        "Floats per SIMD vector this build's kernel uses (16: AVX-512, 8: AVX/AVX2, 4: baseline; see setup.py).");
  m.def("forward_prefixes", &forward_prefixes_py, py::arg("X"), py::arg("order_in"), py::arg("order_out"),
        py::arg("W_in"), py::arg("b_in"), py::arg("W_out"), py::arg("b_out"), py::arg("n_threads") = 0,
        py::arg("tile_rows") = 0, "Activations after each position of the order: (N+1, R, d) float32, [0] = X.");
  m.def("generate_candidates", &generate_candidates_py, py::arg("order_in"), py::arg("order_out"), py::arg("kinds"),
        "Candidates of a move set (docs/SEARCH.md): (starts (K,), seq_in (K, L), seq_out (K, L), moves (K, 3)\n"
        "rows [kind, i, j]). kinds: sequence of 0-3 or adjacent/swap/insert/repair.");
  m.def("apply_move", &apply_move_py, py::arg("order_in"), py::arg("order_out"), py::arg("kind"), py::arg("i"),
        py::arg("j"), "New (order_in, order_out) after move (kind, i, j); kind 4 (kick) is an insert.");
  m.def("ordering_hash", &ordering_hash_py, py::arg("order_in"), py::arg("order_out"),
        "64-bit FNV-1a over the little-endian bytes of the int64 pairs (order_in[t], order_out[t]).");
  m.def("local_search", &local_search_py, py::arg("X"), py::arg("target"), py::arg("W_in"), py::arg("b_in"),
        py::arg("W_out"), py::arg("b_out"), py::arg("W_last"), py::arg("b_last"), py::arg("order_in"),
        py::arg("order_out"), py::arg("schedule") = py::none(), py::arg("stop_loss") = 0.0,
        py::arg("max_rounds") = 10000, py::arg("kicks") = 0, py::arg("seed") = 0,
        py::arg("time_limit_s") = py::none(), py::arg("n_threads") = 0, py::arg("multi") = false,
        py::arg("stop") = nullptr,
        "Local search of docs/SEARCH.md, whole loop in C++ with the GIL released. Defaults as\n"
        "unshuffle.search.local_search: schedule [[adjacent], [swap, insert], [repair]], max_rounds 10000. Returns dict(order_in, order_out, loss (best so far), history (M, 6)\n"
        "rows [round, kind, i, j, loss, n_candidates] (round: 1-based round that found the move; kicks: kind 4,\n"
        "n_candidates 0, round = rounds done so far),\n"
        "rounds, candidates_scored, block_rows (scored block applications x rows), stopped_reason in\n"
        "{exact (loss <= stop_loss), max_rounds, time_limit, local_optimum, interrupted (stop was set)}).\n"
        "multi=True: docs/SEARCH.md \"Multi-accept\" (disjoint improving adjacent swaps applied together; one\n"
        "history row per applied move, all with the same round).");
  py::class_<StopFlag>(m, "StopFlag",
                       "A cancel flag for one search: pass it as stop= to local_search / score_candidates and\n"
                       "set() it from any thread (no GIL needed by the core). It never clears; make a new one.")
      .def(py::init<>())
      .def("set", &StopFlag::set, "Ask every core call holding this flag to stop (best so far is returned).")
      .def("is_set", &StopFlag::is_set);
  py::register_exception<StoppedError>(m, "Stopped", PyExc_RuntimeError);
  m.def("probe_sse", &probe_sse_py, py::arg("x"), py::arg("target"), py::arg("features") = "quadratic",
        py::arg("ridge") = 1e-10,
        "SSE of the least-squares readout target ~ [x, x*x, 1] C ('quadratic') or [x, 1] C ('linear'),\n"
        "float32 inputs, normal equations in double (see unshuffle.beam.probe_sse_reference).");
  m.def("path_search", &path_search_py, py::arg("X"), py::arg("target"), py::arg("W_in"), py::arg("b_in"),
        py::arg("W_out"), py::arg("b_out"), py::arg("order_in"), py::arg("order_out"),
        py::arg("kinds") = std::vector<std::string>{"adjacent", "swap", "insert"}, py::arg("first") = 0,
        py::arg("features") = "quadratic", py::arg("ridge") = 1e-10, py::arg("max_rounds") = 1000,
        py::arg("n_threads") = 0, py::arg("stop") = nullptr, py::arg("time_limit_s") = py::none(),
        py::arg("repairable") = py::none(), py::arg("list_keep") = 0,
        "Best-improvement local search on J = sum over depths p > first of the probe loss after p blocks\n"
        "(unshuffle.beam). Moves of `kinds` on positions >= first; a re-pairing move only between two in pieces\n"
        "flagged in `repairable` (one flag per in piece; None = all). list_keep > 0: after a full round, only the\n"
        "list_keep moves that improved most (by their last J) are re-scored, until none of them improves.\n"
        "Returns dict(order_in, order_out, J, path\n"
        "(N,) probe loss after each depth, history (M, 5) [round, kind, i, j, J], rounds, candidates, probes,\n"
        "full_rounds, stopped in {local_optimum, max_rounds, interrupted, time_limit}).");
  m.def("probe_beam", &probe_beam_py, py::arg("X"), py::arg("target"), py::arg("W_in"), py::arg("b_in"),
        py::arg("W_out"), py::arg("b_out"), py::arg("allowed"), py::arg("prefix_in") = py::none(),
        py::arg("prefix_out") = py::none(), py::arg("width") = 16, py::arg("features") = "quadratic",
        py::arg("ridge") = 1e-10, py::arg("n_threads") = 0, py::arg("stop") = nullptr,
        py::arg("time_limit_s") = py::none(), py::arg("screen_rows") = 0, py::arg("screen_keep") = 0,
        "Probe beam search (unshuffle.beam): orders every W_in piece front to back, keeping the `width`\n"
        "prefixes whose activations give the best least-squares readout of target. allowed (Ni, m) int64:\n"
        "out pieces each in piece may pair with (-1 = none). Returns dict(orders_in (F, N), orders_out,\n"
        "losses (F,), best_path, candidates, rescored, stopped in {done, interrupted, time_limit}); F = 0 if\n"
        "stopped. screen_rows > 0: each depth scores every candidate on the first screen_rows rows, then the\n"
        "max(screen_keep, width) best of those on all rows, and keeps the width best by the all-rows loss.");
  m.def("forward_f32", &forward_f32_py, py::arg("X"), py::arg("order_in"), py::arg("order_out"), py::arg("W_in"),
        py::arg("b_in"), py::arg("W_out"), py::arg("b_out"), py::arg("W_last"), py::arg("b_last"),
        py::arg("n_threads") = 0,
        "Network outputs (R, k) float32 for a block order, with the scorer's float32 block arithmetic.");
  m.def("forward_f64", &forward_f64_py, py::arg("X"), py::arg("order_in"), py::arg("order_out"), py::arg("W_in"),
        py::arg("b_in"), py::arg("W_out"), py::arg("b_out"), py::arg("W_last"), py::arg("b_last"),
        py::arg("n_threads") = 0,
        "The same outputs computed in float64 (R, k); each row's value depends on that row only.");
  m.def("greedy_seed", &greedy_seed_py, py::arg("X"), py::arg("W_in"), py::arg("b_in"), py::arg("W_out"),
        py::arg("b_out"), py::arg("out_of"), py::arg("n_threads") = 0,
        "Sequential greedy seed (unshuffle.ordering.greedy_seed): (order (n,) int64, first-position mean\n"
        "update norms (n,) float64) for blocks (a, out_of[a]), a < n.");
  m.def("torch_randperm", &torch_randperm_py, py::arg("n"), py::arg("seed"),
        "torch.randperm(n, generator=torch.Generator().manual_seed(seed)) on the CPU, without torch.");
  m.def("pair_scores", &pair_scores_py, py::arg("W_in"), py::arg("W_out"), py::arg("n_threads") = 0,
        "(ratio, neg_trace), each (Ni, No) float64: Park's signed ratio and -tr(W_out[b] W_in[a]) / d.");
  m.def("lap_min_cost", &lap_min_cost_py, py::arg("cost"),
        "Minimum-cost assignment of a float64 (nr, nc) matrix, nr <= nc: col4row (nr,) int64, the same\n"
        "assignment as scipy.optimize.linear_sum_assignment (ties included).");
  m.def("parse_csv", &parse_csv_py, py::arg("buf"), py::arg("offset"), py::arg("ncols"), py::arg("n_threads") = 0,
        "Strict parse of the CSV data lines in buf[offset:]: (float32 (rows, ncols) or None, info dict with\n"
        "ok, rows, line, col, reason). None means the text is outside the strict form (use a general parser).");
}
