// Cooperative cancellation for long-running core calls. No Python headers.
//
// A StopFlag belongs to one search (or one solve): Python creates it (unshuffle._core.StopFlag), passes it to
// every core call of that search and sets it from a signal handler or another thread. There is no
// process-wide flag, so two searches in one process never cancel each other. A Stopper adds a deadline.
#pragma once

#include <atomic>
#include <chrono>

namespace unshuffle {

struct StopFlag {
  std::atomic<bool> flag{false};
  void set() { flag.store(true, std::memory_order_relaxed); }
  bool is_set() const { return flag.load(std::memory_order_relaxed); }
};

// What loops poll: a flag (may be null) and a deadline (none when time_limit_s <= 0). Cheap enough to
// check once per scored work item (an atomic load and a steady_clock read).
class Stopper {
 public:
  using clock = std::chrono::steady_clock;
  Stopper() = default;
  Stopper(const StopFlag* f, double time_limit_s) : flag_(f) {
    if (time_limit_s > 0) {
      has_deadline_ = true;
      deadline_ = clock::now() + std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(time_limit_s));
    }
  }
  bool interrupted() const { return flag_ != nullptr && flag_->is_set(); }
  bool expired() const { return has_deadline_ && clock::now() >= deadline_; }
  bool should_stop() const { return interrupted() || expired(); }
  // "interrupted" wins over "time_limit"; nullptr when neither.
  const char* reason() const { return interrupted() ? "interrupted" : expired() ? "time_limit" : nullptr; }

 private:
  const StopFlag* flag_ = nullptr;
  bool has_deadline_ = false;
  clock::time_point deadline_{};
};

}  // namespace unshuffle
