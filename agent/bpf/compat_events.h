/* Records of the compat sensor (agent/bpf/compat.c): process.compat_syscall.
 * Op codes 36-37 are this header's range (37 unused so far). */
#ifndef GPUAUDIT_COMPAT_EVENTS_H
#define GPUAUDIT_COMPAT_EVENTS_H

#define OP_COMPAT_SYSCALL 36

#define COMPAT_SEEN_ENTRIES 65536
#define COMPAT_BURST 512
#define COMPAT_GAP_NS 1000000
#define COMPAT_REPORT_AGAIN_NS 600000000000
/* (tgid, nr) pairs the start-up self-test of the BTF method can note; a
 * wrong offset fills it (and then fails the test: the probe's call is absent) */
#define COMPAT_SELFTEST_ENTRIES 1024

/* process.compat_syscall: the first ia32 syscall of a process with a given
 * number (again after COMPAT_REPORT_AGAIN_NS). Header = the caller. */
struct compat_rec {
    struct hdr h;
    u32 nr;         /* ia32 syscall number (orig_ax) */
    u32 cs;         /* user code segment at the call: 0x33 64-bit, 0x23 32-bit */
    u64 ip;         /* user address after the calling instruction */
    u64 args[3];    /* bx, cx, dx: the first three ia32 arguments */
};

#endif /* GPUAUDIT_COMPAT_EVENTS_H */
