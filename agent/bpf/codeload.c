/* code.load: executable mappings of files.
 *
 * sys_enter_mmap keeps only PROT_EXEC mappings of a file (fd >= 0, not
 * MAP_ANONYMOUS) -- a few ALU ops on the arguments, so ordinary mmaps (heap,
 * data files, anonymous memory) stop there -- and parks them, keyed by
 * pid_tgid; sys_exit_mmap pairs the park with the address the kernel chose.
 * mprotect/pkey_mprotect adding PROT_EXEC are parked the same way: mapping a
 * file read-write and then making it executable is the other way to run a
 * file's bytes, and the kernel side cannot tell a file range from anonymous
 * memory (that needs the vma), so user space resolves every range through
 * /proc/PID/map_files and drops anonymous ones (JIT code).
 * The path cannot be read here (the tracepoints carry only the fd), so every
 * exec mapping reaches user space: the record is 88 bytes.
 * A global in-flight counter lets every other mmap/mprotect exit return after
 * one array read instead of a hash lookup (as gpu_open.c does for opens).
 *
 * Rate limit: a process that maps code in a loop would otherwise flood the
 * ring buffer and the agent's queue, costing everyone else's events. Records
 * are limited per process to CODE_MAP_BURST at once and 1 per CODE_MAP_GAP_NS
 * (1000/s) sustained, counted at the syscall's entry (a call that then fails
 * uses up a slot too) (a generic cell rate algorithm: one u64 per process);
 * what is held back is counted (codeload_limited -> agent.loss
 * "code_rate_limited"), never dropped silently. ld.so loading a large
 * program's few hundred libraries stays well inside the burst.
 */

#define CODE_MAP_GAP_NS 1000000ULL
#define CODE_MAP_BURST 4096ULL

#define CL_PROT_EXEC 0x4
#define CL_MAP_ANONYMOUS 0x20

struct codeload_call {
    u64 addr;       /* mprotect's start; 0 for mmap (known at exit) */
    u64 len;
    s32 fd;
    u32 prot;
    u32 flags;
    u32 syscall;
};

BPF_HASH(codeload_inflight, u64, struct codeload_call, 4096);
BPF_ARRAY(codeload_inflight_n, s64, 1);
/* per tgid: theoretical arrival time of its next record (boot ns) */
BPF_TABLE("lru_hash", u32, u64, codeload_tat, 16384);
BPF_PERCPU_ARRAY(codeload_limited, u64, 1);

/* 1 when this process may emit one more record now (and it is counted). */
static __always_inline int codeload_admit(void)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    u64 now = bpf_ktime_get_boot_ns();
    u64 *tat = codeload_tat.lookup(&tgid);
    u64 t = (tat && *tat > now) ? *tat : now;
    if (t - now >= CODE_MAP_BURST * CODE_MAP_GAP_NS) {
        u32 zero = 0;
        u64 *n = codeload_limited.lookup(&zero);
        if (n)
            (*n)++;
        return 0;
    }
    t += CODE_MAP_GAP_NS;
    codeload_tat.update(&tgid, &t);
    return 1;
}

/* Park a call for its exit probe; a call over the process's rate is held
 * back here already (counted), so a flood costs no hash update either. */
static __always_inline void codeload_park(struct codeload_call *c)
{
    if (!codeload_admit())
        return;
    u64 id = bpf_get_current_pid_tgid();
    if (codeload_inflight.update(&id, c) != 0) {
        count_lost();
        return;
    }
    u32 zero = 0;
    s64 *n = codeload_inflight_n.lookup(&zero);
    if (n)
        __sync_fetch_and_add(n, 1);
}

/* The parked call of this thread, removed; 0 when there is none. */
static __always_inline int codeload_unpark(struct codeload_call *out)
{
    u32 zero = 0;
    s64 *n = codeload_inflight_n.lookup(&zero);
    if (!n || *n <= 0)
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    struct codeload_call *c = codeload_inflight.lookup(&id);
    if (!c)
        return 0;
    __builtin_memcpy(out, c, sizeof(*out));
    codeload_inflight.delete(&id);
    __sync_fetch_and_add(n, -1);
    return 1;
}

static __always_inline void codeload_emit(struct codeload_call *c, u64 addr)
{
    struct code_map_rec *r = events.ringbuf_reserve(sizeof(struct code_map_rec));
    if (!r) {
        count_lost();
        return;
    }
    fill_hdr(&r->h, OP_CODE_MAP);
    r->addr = addr;
    r->len = c->len;
    r->fd = c->fd;
    r->prot = c->prot;
    r->flags = c->flags;
    r->syscall = c->syscall;
    events.ringbuf_submit(r, 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_mmap)
{
    if (!(args->prot & CL_PROT_EXEC) || (args->flags & CL_MAP_ANONYMOUS) || (s32)args->fd < 0)
        return 0;
    struct codeload_call c = {};
    c.len = args->len;
    c.fd = (s32)args->fd;
    c.prot = (u32)args->prot;
    c.flags = (u32)args->flags;
    c.syscall = CODE_MAP_MMAP;
    codeload_park(&c);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_mmap)
{
    struct codeload_call c;
    if (!codeload_unpark(&c) || c.syscall != CODE_MAP_MMAP)
        return 0; /* nothing parked, or a stale park of another syscall */
    /* errors are -4095..-1: no mapping was made */
    if ((unsigned long)args->ret >= (unsigned long)-4095L)
        return 0;
    codeload_emit(&c, (u64)args->ret);
    return 0;
}

static __always_inline int mprotect_enter(u64 start, u64 len, u64 prot, u32 syscall)
{
    if (!(prot & CL_PROT_EXEC))
        return 0;
    struct codeload_call c = {};
    c.addr = start;
    c.len = len;
    c.fd = -1;
    c.prot = (u32)prot;
    c.syscall = syscall;
    codeload_park(&c);
    return 0;
}

static __always_inline int mprotect_exit(long ret)
{
    struct codeload_call c;
    if (!codeload_unpark(&c) || c.syscall == CODE_MAP_MMAP)
        return 0;
    if (ret == 0)
        codeload_emit(&c, c.addr);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_mprotect)
{
    return mprotect_enter(args->start, args->len, args->prot, CODE_MAP_MPROTECT);
}

TRACEPOINT_PROBE(syscalls, sys_exit_mprotect)
{
    return mprotect_exit(args->ret);
}

#ifdef HAVE_TP_sys_enter_pkey_mprotect
TRACEPOINT_PROBE(syscalls, sys_enter_pkey_mprotect)
{
    return mprotect_enter(args->start, args->len, args->prot, CODE_MAP_PKEY_MPROTECT);
}

TRACEPOINT_PROBE(syscalls, sys_exit_pkey_mprotect)
{
    return mprotect_exit(args->ret);
}
#endif
