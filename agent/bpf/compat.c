/* process.compat_syscall: syscalls made through the ia32 ABI.
 *
 * On x86-64 the per-syscall tracepoints (syscalls:sys_enter_*) ignore compat
 * syscalls (ARCH_TRACE_IGNORE_COMPAT_SYSCALLS: trace_get_syscall_nr() is -1
 * when in_ia32_syscall()), so `int $0x80` with ia32 numbers goes around every
 * other sensor. The raw tracepoint sys_enter fires for every syscall, compat
 * ones included (args[0] = struct pt_regs *, args[1] = the nr, ia32 numbering
 * for compat calls); this is the only program on it.
 *
 * It runs on EVERY syscall of the node, so the common path must be tiny.
 * Two ways to tell a compat syscall apart; the sensor's runtime attaches one:
 *
 * compat_sys_enter_ts (built when user space passes -DCOMPAT_TI_STATUS_OFF):
 *   the kernel's own flag. The compat entries (int $0x80, sysenter, syscall
 *   from 32-bit code) set TS_COMPAT in current's thread_info.status before
 *   the tracepoint, and it is cleared on every return to user space: it is
 *   what in_ia32_syscall() tests, which is how the syscall tracepoints skip
 *   these calls. User space cannot set it. The common path is one
 *   bpf_get_current_task() and one 4-byte bpf_probe_read_kernel. The offset
 *   is not from the compile headers (they may be another kernel's): the
 *   runtime reads it from the RUNNING kernel's BTF (agent/btf.py) and proves
 *   it at start with compat_selftest_ts before relying on it.
 *
 * compat_sys_enter (fallback: no BTF, or the self-test failed): the pt_regs
 *   the entry code saved (uapi ptrace layout, stable):
 *   - the `syscall` instruction puts the return RIP in rcx and RFLAGS in
 *     r11, and entry_SYSCALL_64 saves those very registers as ip and flags
 *     too, so every native call has cx == ip and r11 == flags;
 *   - the compat entries either save a 32-bit code segment (0x23) or keep
 *     the user's rcx/r11.
 *   So native = cs == 0x33 && cx == ip && r11 == flags. A deliberate
 *   attacker in 64-bit code can forge both equalities (see docs: residual
 *   evasion); an ordinary int $0x80 (and every 32-bit program) is caught.
 *
 * Reported: the first call per (tgid, nr), again after COMPAT_REPORT_AGAIN_NS
 * (an LRU map; also limits the harm of pid reuse). Records are rate-bounded
 * per CPU (COMPAT_BURST at once, 1 per COMPAT_GAP_NS after), what is held back
 * is counted (compat_limited -> agent.loss "compat_rate_limited") and stays
 * unmarked, so the process's next such call is reported.
 *
 * The program is attached by the sensor's runtime, not at load: when the ABI
 * is off or the operator turned the detector off, it costs nothing.
 */
#include "compat_events.h"

#define COMPAT_USER64_CS 0x33
/* Offset of bx in struct pt_regs (x86-64: r15 r14 r13 r12 bp bx ...). */
#define COMPAT_REGS_BX_OFF 40

/* pt_regs from bx to flags: one contiguous read. */
struct compat_regs {
    u64 bx, r11, r10, r9, r8, ax, cx, dx, si, di, orig_ax, ip, cs, flags;
};

struct compat_key {
    u32 tgid;
    u32 nr;
};

/* (tgid, nr) -> boot ns of its last report */
BPF_TABLE("lru_hash", struct compat_key, u64, compat_seen, COMPAT_SEEN_ENTRIES);
/* per CPU: theoretical arrival time of the next record (GCRA, as codeload.c) */
BPF_PERCPU_ARRAY(compat_tat, u64, 1);
BPF_PERCPU_ARRAY(compat_limited, u64, 1);

static __always_inline int compat_admit(u64 now)
{
    u32 zero = 0;
    u64 *tat = compat_tat.lookup(&zero);
    if (!tat)
        return 0;
    u64 t = *tat > now ? *tat : now;
    if (t - now >= (u64)COMPAT_BURST * COMPAT_GAP_NS) {
        u64 *n = compat_limited.lookup(&zero);
        if (n)
            (*n)++;
        return 0;
    }
    *tat = t + COMPAT_GAP_NS;
    return 1;
}

static __always_inline void compat_report(struct compat_regs *r, u32 nr)
{
    struct compat_key key = {};
    key.tgid = bpf_get_current_pid_tgid() >> 32;
    key.nr = nr;
    u64 now = bpf_ktime_get_boot_ns();
    u64 *seen = compat_seen.lookup(&key);
    if (seen && now - *seen < COMPAT_REPORT_AGAIN_NS)
        return;
    if (!compat_admit(now))
        return;
    struct compat_rec *rec = events.ringbuf_reserve(sizeof(struct compat_rec));
    if (!rec) {
        count_lost();
        return;
    }
    fill_hdr(&rec->h, OP_COMPAT_SYSCALL);
    rec->nr = nr;
    rec->cs = (u32)r->cs;
    rec->ip = r->ip;
    /* compat syscalls take 32-bit arguments (the kernel truncates them) */
    rec->args[0] = (u32)r->bx;
    rec->args[1] = (u32)r->cx;
    rec->args[2] = (u32)r->dx;
    events.ringbuf_submit(rec, 0);
    compat_seen.update(&key, &now);
}

static __always_inline int compat_read_regs(struct bpf_raw_tracepoint_args *ctx,
                                            struct compat_regs *r)
{
    const char *regs = (const char *)ctx->args[0];
    return bpf_probe_read_kernel(r, sizeof(*r), regs + COMPAT_REGS_BX_OFF);
}

/* The register heuristic; attached by agent/sensors/compat.py when the
 * thread_info.status method is not available or failed its self-test. */
int compat_sys_enter(struct bpf_raw_tracepoint_args *ctx)
{
    struct compat_regs r;
    if (compat_read_regs(ctx, &r) != 0)
        return 0;
    if (r.cs == COMPAT_USER64_CS && r.cx == r.ip && r.r11 == r.flags)
        return 0;
    compat_report(&r, (u32)ctx->args[1]);
    return 0;
}

#ifdef COMPAT_TI_STATUS_OFF
/* arch/x86/include/asm/thread_info.h */
#define COMPAT_TS_COMPAT 0x0002

/* (tgid, nr) of every compat call compat_selftest_ts saw; nothing else. */
BPF_HASH(compat_selftest, struct compat_key, u32, COMPAT_SELFTEST_ENTRIES);

/* current's thread_info.status has TS_COMPAT: this syscall came in through
 * a compat entry. thread_info is embedded in task_struct (x86:
 * THREAD_INFO_IN_TASK); COMPAT_TI_STATUS_OFF is its status's offset in
 * task_struct, from the running kernel's BTF. */
static __always_inline int compat_ts_is_ia32(void)
{
    u32 status = 0;
    const char *task = (const char *)bpf_get_current_task();
    if (bpf_probe_read_kernel(&status, sizeof(status), task + COMPAT_TI_STATUS_OFF) != 0)
        return 0;
    return status & COMPAT_TS_COMPAT;
}

/* The detector by the kernel's own flag: unforgeable from user space. */
int compat_sys_enter_ts(struct bpf_raw_tracepoint_args *ctx)
{
    if (!compat_ts_is_ia32())
        return 0;
    struct compat_regs r;
    if (compat_read_regs(ctx, &r) != 0)
        return 0;
    compat_report(&r, (u32)ctx->args[1]);
    return 0;
}

/* The same decision, attached briefly at start around a probe process that
 * makes one int $0x80 getpid among its native calls. It only notes
 * (tgid, nr) in compat_selftest: a wrong offset that flags every syscall
 * fills that map, never the ring (no bogus event reaches the collector),
 * and the probe's own int $0x80 is no event either. */
int compat_selftest_ts(struct bpf_raw_tracepoint_args *ctx)
{
    if (!compat_ts_is_ia32())
        return 0;
    struct compat_key key = {};
    key.tgid = bpf_get_current_pid_tgid() >> 32;
    key.nr = (u32)ctx->args[1];
    u32 one = 1;
    compat_selftest.update(&key, &one);
    return 0;
}
#endif /* COMPAT_TI_STATUS_OFF */
