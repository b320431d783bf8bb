// guard.cpp: the emulator's fault handler, its signal stacks and the watchdog
// (guard.h says what each is for).
//
// Async-signal safety: the handler reads thread-local and atomic state, stores
// into the worker's Interrupt record and switches context (runtime.cpp's
// interrupt_fiber); it never formats, allocates or locks. The switch leaves the
// handler for good, like siglongjmp: the handlers are installed with SA_NODEFER so
// that a later fault on the same thread is still delivered, and the re-entry guard
// below turns a fault inside the handler into a clean end of the process.
#include "guard.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#ifndef AT_MINSIGSTKSZ
#define AT_MINSIGSTKSZ 51
#endif

namespace tf_emu {
namespace {

// The watchdog's signal: ignored by default, so a stray one does nothing.
constexpr int kWatchSig = SIGURG;
// How often the watchdog looks.
constexpr auto kTick = std::chrono::milliseconds(20);
// After a stop was requested and the worker made no progress, the process ends
// after this long (or the launch's limit, if longer).
constexpr uint64_t kLastResortNs = 10ull * 1000 * 1000 * 1000;

struct sigaction g_old_segv, g_old_bus, g_old_watch;

__thread volatile sig_atomic_t t_in_handler __attribute__((tls_model("initial-exec"))) = 0;
__thread Watch* t_watch __attribute__((tls_model("initial-exec"))) = nullptr;
std::atomic<int> g_fault_in_handler{0};

uint64_t now_ns() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void say(const char* s) {
    size_t n = strlen(s);
    while (n > 0) {
        const ssize_t w = write(STDERR_FILENO, s, n);
        if (w <= 0) {
            if (w < 0 && errno == EINTR) continue;
            return;
        }
        s += w;
        n -= (size_t)w;
    }
}

[[noreturn]] void die_in_handler() {
    say("tf_emu: a fault inside the emulator's own fault handler (a bug of the emulator, or its signal stack "
        "exhausted); ending the process instead of recursing\n");
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(SIGABRT, &dfl, nullptr);
    abort();
}

void chain(int sig, siginfo_t* si, void* uctx) {
    const struct sigaction& old = sig == SIGBUS ? g_old_bus : sig == SIGSEGV ? g_old_segv : g_old_watch;
    if (old.sa_flags & SA_SIGINFO) {
        old.sa_sigaction(sig, si, uctx);
    } else if (old.sa_handler != SIG_DFL && old.sa_handler != SIG_IGN) {
        old.sa_handler(sig);
    } else if (sig != kWatchSig) {
        sigaction(sig, &old, nullptr);  // the default action when the access faults again
    }
}

uintptr_t pc_of(void* uctx) {
#if defined(__x86_64__)
    return (uintptr_t) static_cast<ucontext_t*>(uctx)->uc_mcontext.gregs[REG_RIP];
#elif defined(__aarch64__)
    return (uintptr_t) static_cast<ucontext_t*>(uctx)->uc_mcontext.pc;
#else
    (void)uctx;
    return 0;
#endif
}

void on_signal(int sig, siginfo_t* si, void* uctx) {
    if (t_in_handler) die_in_handler();
    t_in_handler = 1;
    if (sig != kWatchSig && g_fault_in_handler.exchange(0)) {
        static volatile uintptr_t wild = 16;  // the test hook: a fault inside the handler
        *reinterpret_cast<volatile int*>(wild) = 1;
    }
    Interrupt why;
    why.sig = sig;
    why.pc = pc_of(uctx);
    if (sig == kWatchSig) {
        Watch* w = t_watch;
        // Only the stop the watchdog asked for, and only if nothing moved since.
        if (!w || w->kill_at.load(std::memory_order_relaxed) != w->progress.load(std::memory_order_relaxed) + 1) {
            t_in_handler = 0;
            chain(sig, si, uctx);
            return;
        }
        why.kind = Stop::Timeout;
    } else {
        why.kind = Stop::Fault;
        why.addr = si->si_addr;
    }
    interrupt_fiber(why);  // does not return when the thread was running a fiber
    t_in_handler = 0;
    chain(sig, si, uctx);
}

// ------------------------------------------------------------------ watchdog

// The watchdog's state. Never destroyed: the detached thread waits on the condition
// variable until the process ends, and destroying a condition variable that a
// thread waits on blocks exit() forever.
struct Watchdog {
    std::mutex mu;
    std::condition_variable cv;
    std::vector<Watch*> watches;
};

Watchdog& dog() {
    static Watchdog* d = new Watchdog();
    return *d;
}

void watchdog_main() {
    Watchdog& d = dog();
    std::unique_lock<std::mutex> lk(d.mu);
    for (;;) {
        if (d.watches.empty()) {
            d.cv.wait(lk);
            continue;
        }
        d.cv.wait_for(lk, kTick);
        const uint64_t now = now_ns();
        for (Watch* w : d.watches) {
            if (!w->limit_ns) continue;
            const uint64_t p = w->progress.load(std::memory_order_relaxed);
            if (p != w->seen) {
                w->seen = p;
                w->since_ns = now;
                w->stage = 0;
                continue;
            }
            const uint64_t idle = now - w->since_ns;
            if (w->stage == 0 && idle >= w->limit_ns) {
                w->kill_at.store(p + 1, std::memory_order_relaxed);
                w->stage = 1;
                w->since_ns = now;
                pthread_kill(w->thread, kWatchSig);
            } else if (w->stage == 1 && idle >= std::max(w->limit_ns, kLastResortNs)) {
                char msg[512];
                snprintf(msg, sizeof msg,
                         "tf_emu: kernel `%s` made no progress for %.1f s and its worker thread could not be "
                         "interrupted (it is not running kernel code); ending the process instead of hanging\n",
                         w->kernel ? w->kernel : "?", (double)(w->limit_ns + idle) / 1e9);
                say(msg);
                abort();
            }
        }
    }
}

}  // namespace

void left_handler() { t_in_handler = 0; }

void install_guard() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_signal;
        // SA_NODEFER: the handler leaves by a context switch, never by returning, so
        // the signal must not stay blocked on the thread.
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, &g_old_segv);
        sigaction(SIGBUS, &sa, &g_old_bus);
        sigaction(kWatchSig, &sa, &g_old_watch);
        try {
            std::thread(watchdog_main).detach();
        } catch (const std::exception&) {
            say("tf_emu: could not start the watchdog thread; a kernel that never yields will hang\n");
        }
    });
}

bool SignalStack::map() {
    if (base) return true;
    const size_t ps = (size_t)sysconf(_SC_PAGESIZE);
    size_t want = 64 * 1024 + (size_t)getauxval(AT_MINSIGSTKSZ);
    if (want < (size_t)SIGSTKSZ) want = (size_t)SIGSTKSZ;
    want = (want + ps - 1) / ps * ps;
    void* m = mmap(nullptr, want + ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return false;
    if (mprotect(m, ps, PROT_NONE) != 0) {
        munmap(m, want + ps);
        return false;
    }
    base = static_cast<char*>(m);
    size = want;
    return true;
}

SignalStackScope::SignalStackScope(SignalStack& s) {
    static_assert(sizeof(stack_t) <= sizeof(old_), "stack_t does not fit");
    if (!s.map()) return;
    stack_t st;
    memset(&st, 0, sizeof st);
    st.ss_sp = s.base + (size_t)sysconf(_SC_PAGESIZE);
    st.ss_size = s.size;
    st.ss_flags = 0;
    stack_t old;
    if (sigaltstack(&st, &old) != 0) return;
    memcpy(old_, &old, sizeof old);
    installed_ = true;
}

SignalStackScope::~SignalStackScope() {
    if (!installed_) return;
    stack_t old;
    memcpy(&old, old_, sizeof old);
    if (old.ss_flags & SS_DISABLE) {
        memset(&old, 0, sizeof old);
        old.ss_flags = SS_DISABLE;
    }
    sigaltstack(&old, nullptr);
}

void watch_begin(Watch* w, const char* kernel, uint64_t limit_ns) {
    w->thread = pthread_self();
    w->kernel = kernel;
    w->limit_ns = limit_ns;
    w->kill_at.store(0, std::memory_order_relaxed);
    Watchdog& d = dog();
    std::lock_guard<std::mutex> g(d.mu);
    w->seen = w->progress.load(std::memory_order_relaxed);
    w->since_ns = now_ns();
    w->stage = 0;
    d.watches.push_back(w);
    t_watch = w;
    d.cv.notify_one();
}

void watch_end(Watch* w) {
    Watchdog& d = dog();
    std::lock_guard<std::mutex> g(d.mu);
    d.watches.erase(std::remove(d.watches.begin(), d.watches.end(), w), d.watches.end());
    w->kill_at.store(0, std::memory_order_relaxed);
    t_watch = nullptr;
}

uint64_t watchdog_limit_ns(uint32_t ms) {
    static const uint64_t from_env = [] {
        const uint64_t dflt = 60ull * 1000000000ull;
        const char* e = getenv("TF_EMU_TIMEOUT_S");
        if (!e || !*e) return dflt;
        char* end = nullptr;
        const double s = strtod(e, &end);
        if (end == e || *end || !(s >= 0.0) || s > 1e6) {
            fprintf(stderr, "tf_emu: TF_EMU_TIMEOUT_S=%s is not a number of seconds in [0, 1e6]; using 60\n", e);
            return dflt;
        }
        return (uint64_t)(s * 1e9);
    }();
    return ms ? (uint64_t)ms * 1000000ull : from_env;
}

}  // namespace tf_emu

extern "C" void tf_emu_test_fault_in_handler(int on) { tf_emu::g_fault_in_handler.store(on ? 1 : 0); }
