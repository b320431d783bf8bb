// fiber.h: user-mode context switching for the emulator's fibers (one per CUDA thread).
//
// x86-64 (the default there): a hand-written switch that saves the six callee-saved
// registers and the stack pointer, a few nanoseconds and no system call. Elsewhere,
// or with -DTF_EMU_UCONTEXT: ucontext (swapcontext saves the signal mask with a
// system call per switch: correct, about 10x slower).
#pragma once

#include <stddef.h>
#include <stdint.h>

#if defined(__x86_64__) && !defined(TF_EMU_UCONTEXT)
#define TF_EMU_ASM_SWITCH 1
extern "C" void tf_emu_ctx_switch(void** save_sp, void* load_sp);
#else
#include <ucontext.h>
#endif

namespace tf_emu {

struct Ctx {
#if defined(TF_EMU_ASM_SWITCH)
    void* sp = nullptr;
#else
    ucontext_t uc;
#endif
};

// Prepares `c` to run `entry()` on the stack [lo, lo + size) at the next switch to it.
// `entry` must never return (it switches away for good instead).
inline void ctx_init(Ctx* c, char* lo, size_t size, void (*entry)()) {
#if defined(TF_EMU_ASM_SWITCH)
    uintptr_t top = (reinterpret_cast<uintptr_t>(lo) + size) & ~uintptr_t(15);
    uintptr_t* s = reinterpret_cast<uintptr_t*>(top);
    *--s = 0;                                       // entry's (never used) return address
    *--s = reinterpret_cast<uintptr_t>(entry);      // popped by the switch's `ret`
    for (int i = 0; i < 6; ++i) *--s = 0;           // rbp rbx r12 r13 r14 r15
    c->sp = s;
#else
    getcontext(&c->uc);
    c->uc.uc_stack.ss_sp = lo;
    c->uc.uc_stack.ss_size = size;
    c->uc.uc_link = nullptr;
    makecontext(&c->uc, entry, 0);
#endif
}

// Saves the running context into `from` and resumes `to`.
inline void ctx_switch(Ctx* from, Ctx* to) {
#if defined(TF_EMU_ASM_SWITCH)
    tf_emu_ctx_switch(&from->sp, to->sp);
#else
    swapcontext(&from->uc, &to->uc);
#endif
}

}  // namespace tf_emu
