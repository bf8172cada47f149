// A small persistent thread pool: parallel_for(n, fn) runs fn(begin, end, worker) over [0, n) split
// into one contiguous chunk per thread. Threads = AJUSTE_THREADS or the number of hardware threads.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace ajuste {

class ThreadPool {
 public:
  static ThreadPool& get() {
    static ThreadPool pool;
    return pool;
  }
  int size() const { return n_threads_; }

  // Calls fn(begin, end, worker_index) for contiguous chunks covering [0, n). Blocks until done.
  // Chunks are aligned to `grain` items. Runs inline when n is small or there is one thread.
  void parallel_for(long n, const std::function<void(long, long, int)>& fn, long grain = 1) {
    if (n <= 0) return;
    long chunks = (n + grain - 1) / grain;
    int workers = (int)std::min<long>(n_threads_, chunks);
    if (workers <= 1 || in_parallel_) { fn(0, n, 0); return; }
    long per = ((chunks + workers - 1) / workers) * grain;
    std::unique_lock<std::mutex> lk(mu_);
    job_ = &fn; job_n_ = n; job_per_ = per; job_workers_ = workers;
    pending_ = workers - 1;
    generation_++;
    lk.unlock();
    cv_.notify_all();
    in_parallel_ = true;
    fn(0, std::min(per, n), 0);
    in_parallel_ = false;
    lk.lock();
    done_cv_.wait(lk, [&] { return pending_ == 0; });
    job_ = nullptr;
  }

  ~ThreadPool() {
    { std::lock_guard<std::mutex> lk(mu_); stop_ = true; generation_++; }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }

 private:
  ThreadPool() {
    int n = (int)std::thread::hardware_concurrency();
    if (const char* s = std::getenv("AJUSTE_THREADS")) { int v = std::atoi(s); if (v > 0) n = v; }
    if (n < 1) n = 1;
    n_threads_ = n;
    for (int i = 1; i < n; i++) threads_.emplace_back([this, i] { loop(i); });
  }

  void loop(int idx) {
    unsigned long seen = 0;
    for (;;) {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      if (idx >= job_workers_) continue;
      const auto* fn = job_;
      long begin = idx * job_per_, end = std::min(job_n_, begin + job_per_);
      lk.unlock();
      in_parallel_ = true;
      if (begin < end) (*fn)(begin, end, idx);
      in_parallel_ = false;
      lk.lock();
      if (--pending_ == 0) done_cv_.notify_one();
    }
  }

  int n_threads_ = 1;
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(long, long, int)>* job_ = nullptr;
  long job_n_ = 0, job_per_ = 0;
  int job_workers_ = 0, pending_ = 0;
  unsigned long generation_ = 0;
  bool stop_ = false;
  static thread_local bool in_parallel_;
};

inline thread_local bool ThreadPool::in_parallel_ = false;

}  // namespace ajuste
