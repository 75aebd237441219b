/* ctx_aarch64.S - the process context switch for AArch64 (AAPCS64).
 *
 * keel__ctx_swap(void **save_sp, void *load_sp) saves the callee-saved
 * registers x19-x28, the frame pointer x29, the link register x30, the low
 * halves d8-d15 of v8-v15 and the floating-point control register FPCR on the
 * current stack, stores sp in *save_sp, loads load_sp and restores the same
 * set. A fresh context holds a frame whose x30 is keel__ctx_boot, with the
 * entry function in x19 and its argument in x20.
 */
    .text
    .globl keel__ctx_swap
    .type keel__ctx_swap, %function
    .p2align 4
keel__ctx_swap:
    sub sp, sp, #176
    stp x19, x20, [sp, #0]
    stp x21, x22, [sp, #16]
    stp x23, x24, [sp, #32]
    stp x25, x26, [sp, #48]
    stp x27, x28, [sp, #64]
    stp x29, x30, [sp, #80]
    stp d8, d9, [sp, #96]
    stp d10, d11, [sp, #112]
    stp d12, d13, [sp, #128]
    stp d14, d15, [sp, #144]
    mrs x9, fpcr
    str x9, [sp, #160]
    mov x9, sp
    str x9, [x0]
    mov sp, x1
    ldp x19, x20, [sp, #0]
    ldp x21, x22, [sp, #16]
    ldp x23, x24, [sp, #32]
    ldp x25, x26, [sp, #48]
    ldp x27, x28, [sp, #64]
    ldp x29, x30, [sp, #80]
    ldp d8, d9, [sp, #96]
    ldp d10, d11, [sp, #112]
    ldp d12, d13, [sp, #128]
    ldp d14, d15, [sp, #144]
    ldr x10, [sp, #160]
    mrs x9, fpcr            /* still the suspended context's: reload only if different */
    cmp x9, x10
    b.eq 1f
    msr fpcr, x10
1:
    add sp, sp, #176
    ret
    .size keel__ctx_swap, .-keel__ctx_swap

    .globl keel__ctx_boot
    .type keel__ctx_boot, %function
    .p2align 4
keel__ctx_boot:
    mov x0, x20
    blr x19
    brk #0x1                /* the entry never returns */
    .size keel__ctx_boot, .-keel__ctx_boot

    .section .note.GNU-stack,"",%progbits
