/* process.ptrace / process.vm_write / code.bpf_load: someone reaching into
 * another process, or loading BPF code (possibly to blind this agent).
 *
 * Each syscall's enter probe filters in the kernel (only attaching/modifying
 * ptrace requests, only writes into another process, only BPF_PROG_LOAD not
 * made by the agent) and parks the arguments in tamper_inflight, keyed by
 * pid_tgid; the exit probe pairs them with the result and emits the record.
 * A thread is in one syscall at a time, so one map serves all three, and the
 * op stored with the arguments guards against a stale entry.
 * Only tracepoint arguments, bpf_get_current_* helpers and user memory
 * (bpf_probe_read_user of the caller's bpf_attr) are read.
 */

/* The agent's own tgid, passed by the loader as -DAGENT_TGID (a compile-time
 * constant: the agent compiles this text in its own process, and a constant
 * needs no map a local root could rewrite to hide its loads behind). */
#ifndef AGENT_TGID
#define AGENT_TGID 0
#endif

#define BPF_CMD_PROG_LOAD 5 /* enum bpf_cmd BPF_PROG_LOAD (uapi, stable) */
/* Offsets into union bpf_attr for BPF_PROG_LOAD (uapi, stable since 4.15). */
#define ATTR_PROG_TYPE_END 4
#define ATTR_INSN_CNT_END 8
#define ATTR_PROG_NAME_OFF 48

struct tamper_call {
    u32 op;         /* OP_PTRACE / OP_VM_WRITE / OP_BPF_LOAD */
    u32 target_pid;
    s64 request;
    u32 prog_type;
    u32 insn_cnt;
    char prog_name[BPF_PROG_NAME_LEN];
};

BPF_HASH(tamper_inflight, u64, struct tamper_call, 4096);

static __always_inline void park(struct tamper_call *c)
{
    u64 id = bpf_get_current_pid_tgid();
    if (tamper_inflight.update(&id, c) != 0)
        count_lost();
}

/* The parked call of this thread if it is `op`; the entry is removed. */
static __always_inline int unpark(u32 op, struct tamper_call *out)
{
    u64 id = bpf_get_current_pid_tgid();
    struct tamper_call *c = tamper_inflight.lookup(&id);
    if (!c)
        return 0;
    int match = c->op == op;
    if (match)
        __builtin_memcpy(out, c, sizeof(*out));
    tamper_inflight.delete(&id);
    return match;
}

/* Requests that take control of a process or change its memory or registers.
 * Reads (PEEK*, GETREGS) and PTRACE_TRACEME are left out: TRACEME is the
 * caller offering *itself* to its parent (gdb/strace starting a program); any
 * change the parent then makes arrives as a POKE or SET request, reported. */
static __always_inline int ptrace_reported(long request)
{
    switch (request) {
    case 4:      /* PTRACE_POKETEXT */
    case 5:      /* PTRACE_POKEDATA */
    case 6:      /* PTRACE_POKEUSER */
    case 13:     /* PTRACE_SETREGS (x86, arm32) */
    case 15:     /* PTRACE_SETFPREGS */
    case 16:     /* PTRACE_ATTACH */
    case 0x4205: /* PTRACE_SETREGSET */
    case 0x4206: /* PTRACE_SEIZE */
        return 1;
    }
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_ptrace)
{
    if (!ptrace_reported(args->request))
        return 0;
    struct tamper_call c = {};
    c.op = OP_PTRACE;
    c.target_pid = (u32)args->pid;
    c.request = args->request;
    park(&c);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_ptrace)
{
    struct tamper_call c = {};
    if (!unpark(OP_PTRACE, &c))
        return 0;
    struct ptrace_rec *r = events.ringbuf_reserve(sizeof(struct ptrace_rec));
    if (!r) {
        count_lost();
        return 0;
    }
    fill_hdr(&r->h, OP_PTRACE);
    r->target_pid = c.target_pid;
    r->pad = 0;
    r->request = c.request;
    r->result = args->ret;
    events.ringbuf_submit(r, 0);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_process_vm_writev)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 target = (u32)args->pid;
    /* Into itself (its tgid or one of its own tids named by the caller) is
     * not tampering with anyone. A sibling thread's tid passes: rare, and
     * mapping tid -> tgid would need task_struct. */
    if (target == (u32)(id >> 32) || target == (u32)id)
        return 0;
    struct tamper_call c = {};
    c.op = OP_VM_WRITE;
    c.target_pid = target;
    park(&c);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_process_vm_writev)
{
    struct tamper_call c = {};
    if (!unpark(OP_VM_WRITE, &c))
        return 0;
    struct vm_write_rec *r = events.ringbuf_reserve(sizeof(struct vm_write_rec));
    if (!r) {
        count_lost();
        return 0;
    }
    fill_hdr(&r->h, OP_VM_WRITE);
    r->target_pid = c.target_pid;
    r->pad = 0;
    r->result = args->ret;
    events.ringbuf_submit(r, 0);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_bpf)
{
    if (args->cmd != BPF_CMD_PROG_LOAD)
        return 0;
    if ((u32)(bpf_get_current_pid_tgid() >> 32) == AGENT_TGID)
        return 0;
    struct tamper_call c = {};
    c.op = OP_BPF_LOAD;
    /* The attr is the caller's memory; read only what `size` says it holds
     * (a short attr is legal: the kernel zero-fills the rest). */
    const char *attr = (const char *)args->uattr;
    u32 size = (u32)args->size;
    if (size >= ATTR_INSN_CNT_END) {
        bpf_probe_read_user(&c.prog_type, sizeof(c.prog_type), attr);
        bpf_probe_read_user(&c.insn_cnt, sizeof(c.insn_cnt), attr + ATTR_PROG_TYPE_END);
    }
    if (size >= ATTR_PROG_NAME_OFF + BPF_PROG_NAME_LEN)
        bpf_probe_read_user(&c.prog_name, sizeof(c.prog_name), attr + ATTR_PROG_NAME_OFF);
    park(&c);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_bpf)
{
    struct tamper_call c = {};
    if (!unpark(OP_BPF_LOAD, &c))
        return 0;
    struct bpf_load_rec *r = events.ringbuf_reserve(sizeof(struct bpf_load_rec));
    if (!r) {
        count_lost();
        return 0;
    }
    fill_hdr(&r->h, OP_BPF_LOAD);
    r->prog_type = c.prog_type;
    r->insn_cnt = c.insn_cnt;
    r->result = args->ret;
    __builtin_memcpy(r->prog_name, c.prog_name, sizeof(r->prog_name));
    events.ringbuf_submit(r, 0);
    return 0;
}
