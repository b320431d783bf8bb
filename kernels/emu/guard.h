// guard.h: what keeps an emulator launch from killing or hanging the process.
//
// - The fault handler: a SIGSEGV / SIGBUS raised while a fiber runs kernel code (a
//   stack overflow into a guard page, an access past the shared-memory window, a
//   wild pointer) stops that fiber and becomes an error of the launch. The handler
//   only records what happened (plain stores) and switches to the worker's
//   scheduler; the scheduler formats the message afterwards, outside the handler.
//   A fault inside the handler itself ends the process with a message (it never
//   re-enters itself).
// - The signal stack: each worker thread runs the handler on a stack the emulator
//   maps and sizes itself (64 KiB plus the kernel's AT_MINSIGSTKSZ, a guard page
//   below), installed for the duration of a launch and then replaced by whatever
//   the thread had before. A borrowed stack (the one the Rust runtime gives each
//   thread, sized for its own handler) can be too small for a signal frame with
//   AVX-512 state.
// - The watchdog: one background thread watches every worker running a launch. A
//   worker whose fibers make no progress (no fiber switch) within the launch's
//   limit is sent a signal whose handler stops the running fiber the same way, and
//   the launch fails naming the kernel and where each thread stands. If the worker
//   cannot be interrupted (it is not running a fiber), the process ends with a
//   message after a second limit instead of hanging.
#pragma once

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include <atomic>

namespace tf_emu {

enum class Stop : int { None = 0, Fault = 1, Timeout = 2 };

// Why a fiber was stopped from a signal handler. Filled in the handler, read by the
// scheduler.
struct Interrupt {
    Stop kind = Stop::None;
    int sig = 0;
    const void* addr = nullptr;  // the faulting address (faults)
    uintptr_t pc = 0;            // the interrupted instruction, where the platform says
};

// Defined by the runtime (runtime.cpp): when the calling thread runs a fiber of a
// launch that has not failed, records `why` and switches to the worker's scheduler
// (never returns); otherwise returns.
void interrupt_fiber(const Interrupt& why);

// Called by the scheduler once it has taken over from an interrupted fiber: the
// thread is no longer inside the handler.
void left_handler();

// Installs the SIGSEGV, SIGBUS and watchdog handlers (once per process) and starts
// the watchdog thread.
void install_guard();

// A signal stack owned by a worker: mapped once, installed per launch, kept for
// the process's life (as the workers are).
struct SignalStack {
    char* base = nullptr;  // the mapping: a guard page, then `size` usable bytes
    size_t size = 0;
    bool map();
};

// Installs `s` as the calling thread's signal stack for the scope's lifetime and
// then restores the previous one.
class SignalStackScope {
public:
    explicit SignalStackScope(SignalStack& s);
    ~SignalStackScope();
    SignalStackScope(const SignalStackScope&) = delete;
    SignalStackScope& operator=(const SignalStackScope&) = delete;
    bool installed() const { return installed_; }

private:
    bool installed_ = false;
    char old_[64];  // the previous stack_t (opaque here)
};

// One worker thread as the watchdog sees it.
struct Watch {
    std::atomic<uint64_t> progress{0};  // bumped by the worker at every fiber switch
    std::atomic<uint64_t> kill_at{0};   // progress + 1 at which the watchdog asked for a stop
    // Set by watch_begin, read by the watchdog under its lock.
    pthread_t thread{};
    const char* kernel = nullptr;
    uint64_t limit_ns = 0;  // 0: not watched
    uint64_t seen = 0, since_ns = 0;
    int stage = 0;  // 0 watching, 1 signalled
};

// Registers the calling thread's `w` for a launch of `kernel` with a limit of
// `limit_ns` nanoseconds without progress (0: unwatched); `watch_end` removes it.
void watch_begin(Watch* w, const char* kernel, uint64_t limit_ns);
void watch_end(Watch* w);

inline void bump(Watch& w) { w.progress.store(w.progress.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed); }

// The limit for a launch: `ms` milliseconds if non-zero, else TF_EMU_TIMEOUT_S
// (seconds, fractions allowed; 0 turns the watchdog off), else 60 s. In ns.
uint64_t watchdog_limit_ns(uint32_t ms);

}  // namespace tf_emu

// Test hook: makes the next fault handled by the emulator fault again inside its
// handler (to check that this ends the process with a message instead of recursing).
extern "C" void tf_emu_test_fault_in_handler(int on);
