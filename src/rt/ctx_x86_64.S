/* ctx_x86_64.S - the process context switch for x86-64 (System V ABI).
 *
 * keel__ctx_swap(void **save_sp, void *load_sp) saves the callee-saved
 * registers (rbx, rbp, r12-r15), the SSE control/status word (MXCSR) and the
 * x87 control word on the current stack, stores the stack pointer in *save_sp,
 * loads load_sp and restores the same set from there (the control words only
 * when they differ from the current ones, since loading them is slow). Everything else is
 * caller-saved under the ABI, so the C caller has already saved what it needs.
 * No system call, no signal mask: a switch is about twenty instructions.
 *
 * A fresh context (built by keel__ctx_make in ctx.c) holds a frame in the
 * same layout whose return address is keel__ctx_boot, with the entry function
 * in r12 and its argument in r13.
 */
    .text
    .globl keel__ctx_swap
    .type keel__ctx_swap, @function
    .p2align 4
keel__ctx_swap:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    /* Reload the control words only if they differ: ldmxcsr and fldcw
     * serialise the pipeline and were most of a switch's cost (perf). The
     * compare covers MXCSR (bytes 0-3) and the x87 control word (4-5). */
    movq (%rdi), %rax
    movq (%rax), %rcx
    xorq (%rsp), %rcx
    shlq $16, %rcx
    jz 1f
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
1:
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size keel__ctx_swap, .-keel__ctx_swap

    .globl keel__ctx_boot
    .type keel__ctx_boot, @function
    .p2align 4
keel__ctx_boot:
    /* rsp is 16-byte aligned here; the call below keeps the ABI alignment. */
    movq %r13, %rdi
    callq *%r12
    ud2                     /* the entry never returns */
    .size keel__ctx_boot, .-keel__ctx_boot

    .section .note.GNU-stack,"",@progbits
