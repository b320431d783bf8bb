// fiber.cpp: the x86-64 context switch (System V ABI).
//
// tf_emu_ctx_switch(void** save_sp, void* load_sp): pushes the callee-saved
// registers (rbp rbx r12-r15), stores rsp in *save_sp, loads load_sp, pops the same
// registers of the other context and returns into it. A new context's stack is laid
// out by ctx_init (fiber.h) so that this `ret` enters its entry function with the
// alignment of a normal call. MXCSR and the x87 control word are not switched: kernel
// code never changes the rounding mode.
#include "fiber.h"

#if defined(TF_EMU_ASM_SWITCH)
asm(R"(
    .text
    .globl tf_emu_ctx_switch
    .hidden tf_emu_ctx_switch
    .type tf_emu_ctx_switch, @function
    .p2align 4
tf_emu_ctx_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size tf_emu_ctx_switch, .-tf_emu_ctx_switch
)");
#endif
