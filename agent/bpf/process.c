/* process.exec / process.exit / process.signal, plus the fork map that gives
 * all of them a ppid.
 *
 * argv is captured at sys_enter_execve (user memory is still the old image's)
 * and emitted from sched_process_exec, which fires only when exec succeeded.
 * Exit status comes from exit_group()/exit() arguments and fatal signals from
 * the signal tracepoints, because task_struct->exit_code must not be read.
 *
 * process.exec's preload variables (LD_PRELOAD, PYTHONPATH, ...) are read from
 * the envp passed to exec, at the same moment as argv: reading them later from
 * /proc/PID/environ would miss a process that exits within a millisecond, and
 * a preloaded library can overwrite that memory before the agent looks.
 */

struct exec_args {
    u32 argc;
    u32 truncated;
    char argv[EXEC_MAX_ARGS][EXEC_ARG_LEN];
};

BPF_PERCPU_ARRAY(exec_scratch, struct exec_args, 1);
BPF_TABLE("lru_hash", u32, struct exec_args, exec_inflight, 4096);

/* Preload variables of one exec, parked like argv (only when one is set). */
struct exec_env {
    u32 set;
    u32 cut;
    u32 partial;
    u32 pad;
    char val[EXEC_ENV_VARS][EXEC_ENV_VAL_LEN];
};

BPF_PERCPU_ARRAY(exec_env_scratch, struct exec_env, 1);
BPF_TABLE("lru_hash", u32, struct exec_env, exec_env_inflight, 1024);

#define ENV_PREFIX_LEN 24 /* longest name + '=' is NCCL_PROFILER_PLUGIN= (21) */

/* 1 when s starts with the n-byte literal `name` (unrolled: the literal's
 * bytes become immediates, no string constant in the program). */
static __always_inline int env_is(const char *s, const char *name, int n)
{
#pragma unroll
    for (int j = 0; j < ENV_PREFIX_LEN; j++) {
        if (j >= n)
            return 1;
        if (s[j] != name[j])
            return 0;
    }
    return 1;
}

#define ENV_IS(s, lit) env_is(s, lit, sizeof(lit) - 1)
#define ENV_MATCH(s, lit, i) \
    if (ENV_IS(s, lit)) {    \
        *off = sizeof(lit) - 1; \
        return i;            \
    }

/* Index of the preload variable `s` ("NAME=value") sets, -1 for any other;
 * *off is where its value starts. Order = process.py PRELOAD_VARS. The first
 * byte decides which names are compared at all (most variables stop there). */
static __always_inline int env_index(const char *s, int *off)
{
    if (s[0] == 'L') {
        ENV_MATCH(s, "LD_PRELOAD=", 0);
        ENV_MATCH(s, "LD_LIBRARY_PATH=", 1);
        ENV_MATCH(s, "LD_AUDIT=", 2);
    } else if (s[0] == 'P') {
        ENV_MATCH(s, "PYTHONPATH=", 3);
        ENV_MATCH(s, "PYTHONSTARTUP=", 4);
    } else if (s[0] == 'N') {
        ENV_MATCH(s, "NCCL_NET_PLUGIN=", 5);
        ENV_MATCH(s, "NCCL_PROFILER_PLUGIN=", 6);
        ENV_MATCH(s, "NCCL_TUNER_PLUGIN=", 7);
    }
    return -1;
}

/* Scan the first EXEC_ENV_SCAN entries of envp. A variable given twice keeps
 * its LAST value: that is the one ld.so (and Python's os.environ) use. */
static __always_inline void exec_env_enter(const char *const *envp)
{
    u32 zero = 0;
    struct exec_env *e = exec_env_scratch.lookup(&zero);
    if (!e || !envp)
        return;
    e->set = 0;
    e->cut = 0;
    e->partial = 0;
    for (int i = 0; i < EXEC_ENV_SCAN; i++) {
        const char *p = NULL;
        char pre[ENV_PREFIX_LEN] = {};
        int off = 0;
        bpf_probe_read_user(&p, sizeof(p), &envp[i]);
        if (!p)
            goto done;
        if (bpf_probe_read_user_str(pre, sizeof(pre), p) < 10)
            continue; /* shorter than "LD_AUDIT=" + one byte + NUL */
        int idx = env_index(pre, &off);
        if (idx < 0)
            continue;
        idx &= EXEC_ENV_VARS - 1;
        off &= 31; /* bounds the offset for the verifier (at most 21) */
        int n = bpf_probe_read_user_str(e->val[idx], EXEC_ENV_VAL_LEN, p + off);
        e->set |= 1u << idx;
        if (n >= EXEC_ENV_VAL_LEN)
            e->cut |= 1u << idx;
        else
            e->cut &= ~(1u << idx);
    }
    {
        const char *more = NULL;
        bpf_probe_read_user(&more, sizeof(more), &envp[EXEC_ENV_SCAN]);
        if (more)
            e->partial = 1;
    }
done:
    if (!e->set && !e->partial)
        return;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    exec_env_inflight.update(&tid, e);
}

/* How a thread group is ending, keyed by tgid. */
struct exit_state {
    s32 code;        /* exit_group()/exit() status & 0xff */
    s32 called_exit; /* 1 once exit_group()/exit() was called */
    s32 gen_sig;     /* last fatal-by-default signal sent to the process */
    s32 deliver_sig; /* fatal signal delivered with the default action */
};
BPF_TABLE("lru_hash", u32, struct exit_state, exit_info, 65536);

/* Signals whose default action is to terminate (with or without core). */
static __always_inline int sig_fatal_by_default(int sig)
{
    if (sig <= 0 || sig > 64)
        return 0;
    switch (sig) {
    case 17: case 18: case 19: case 20: case 21: case 22: case 23: case 28:
        return 0; /* CHLD CONT STOP TSTP TTIN TTOU URG WINCH */
    default:
        return 1;
    }
}

static __always_inline int exec_enter(const char *const *argv)
{
    u32 zero = 0;
    struct exec_args *a = exec_scratch.lookup(&zero);
    if (!a)
        return 0;
    a->argc = 0;
    a->truncated = 0;
#pragma unroll
    for (int i = 0; i < EXEC_MAX_ARGS; i++) {
        const char *p = NULL;
        bpf_probe_read_user(&p, sizeof(p), &argv[i]);
        if (!p)
            goto done;
        int n = bpf_probe_read_user_str(a->argv[i], EXEC_ARG_LEN, p);
        if (n >= EXEC_ARG_LEN)
            a->truncated = 1; /* may have been cut */
        a->argc++;
    }
    {
        const char *more = NULL;
        bpf_probe_read_user(&more, sizeof(more), &argv[EXEC_MAX_ARGS]);
        if (more)
            a->truncated = 1;
    }
done:;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    exec_inflight.update(&tid, a);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_execve)
{
    exec_env_enter(args->envp);
    return exec_enter(args->argv);
}

TRACEPOINT_PROBE(syscalls, sys_enter_execveat)
{
    exec_env_enter(args->envp);
    return exec_enter(args->argv);
}

/* A failed exec leaves no sched_process_exec: drop its argv here. */
TRACEPOINT_PROBE(syscalls, sys_exit_execve)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    exec_inflight.delete(&tid);
    exec_env_inflight.delete(&tid);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_execveat)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    exec_inflight.delete(&tid);
    exec_env_inflight.delete(&tid);
    return 0;
}

/* The preload record of this exec, reserved BEFORE the exec_rec so that it
 * precedes it in the ring; NULL when none is parked or the ring is full. */
static __always_inline struct exec_env_rec *exec_env_reserve(u32 old)
{
    struct exec_env *e = exec_env_inflight.lookup(&old);
    if (!e)
        return NULL;
    struct exec_env_rec *r = events.ringbuf_reserve(sizeof(struct exec_env_rec));
    if (!r) {
        count_lost(); /* the exec is still reported, without its preload */
        exec_env_inflight.delete(&old);
        return NULL;
    }
    fill_hdr(&r->h, OP_EXEC_ENV);
    r->old_tid = old;
    r->set = e->set;
    r->cut = e->cut;
    r->partial = e->partial;
    bpf_probe_read_kernel(r->val, sizeof(r->val), e->val);
    exec_env_inflight.delete(&old);
    return r;
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
    u32 old = args->old_pid;
    struct exec_env_rec *env = exec_env_reserve(old);
    struct exec_rec *r = events.ringbuf_reserve(sizeof(struct exec_rec));
    if (!r) {
        count_lost();
        if (env) /* an env record with no exec after it would be misread */
            events.ringbuf_discard(env, 0);
        return 0;
    }
    if (env)
        events.ringbuf_submit(env, 0);
    fill_hdr(&r->h, OP_EXEC);
    u32 tgid = r->h.pid; /* r must not be touched after submit */
    r->old_tid = old;
    r->pad = 0;
    TP_DATA_LOC_READ_STR(r->filename, filename, EXEC_FILENAME_LEN);
    struct exec_args *a = exec_inflight.lookup(&old);
    if (a) {
        r->argc = a->argc;
        r->truncated = a->truncated;
        bpf_probe_read_kernel(r->argv, sizeof(r->argv), a->argv);
        exec_inflight.delete(&old);
    } else {
        /* exec began before the agent attached: argv unknown */
        r->argc = 0;
        r->truncated = 1;
    }
    events.ringbuf_submit(r, 0);
    /* A new image: exit bookkeeping of the old one no longer applies. */
    exit_info.delete(&tgid);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_fork)
{
    u32 child = args->child_pid;
    u32 parent_tgid = bpf_get_current_pid_tgid() >> 32;
    fork_parent.update(&child, &parent_tgid);
    /* --- file.write (owner: agent/bpf/gpu_open.c): the child inherits its
     * parent's cwd entry; one probe per tracepoint, so it is called from here. */
#ifdef GPUAUDIT_OPEN_CLASSIFIER
    files_cwd_inherit(parent_tgid, child);
#endif
    /* --- end file.write */
    return 0;
}

static __always_inline struct exit_state *exit_state_for(u32 tgid)
{
    struct exit_state zero = {};
    exit_info.lookup_or_try_init(&tgid, &zero);
    return exit_info.lookup(&tgid);
}

TRACEPOINT_PROBE(syscalls, sys_enter_exit_group)
{
    struct exit_state *st = exit_state_for(bpf_get_current_pid_tgid() >> 32);
    if (st) {
        st->code = args->error_code & 0xff;
        st->called_exit = 1;
    }
    return 0;
}

/* exit() ends only the calling thread; it ends the process when that thread
 * is the last one, so record it as a candidate status for the group. */
TRACEPOINT_PROBE(syscalls, sys_enter_exit)
{
    struct exit_state *st = exit_state_for(bpf_get_current_pid_tgid() >> 32);
    if (st && !st->called_exit)
        st->code = args->error_code & 0xff;
    return 0;
}

/* process.signal: a signal a task sent to a GPU holder.
 *
 * Only si_code <= 0 (SI_USER from kill(2)/pidfd_send_signal(2), SI_TKILL,
 * SI_QUEUE, ...): those are generated in the sender's own syscall, so the
 * current task really is the sender. Kernel-originated signals (SI_KERNEL:
 * OOM kill, tty ^C, rlimits; positive codes: faults, SIGCHLD's CLD_*) are run
 * from whatever task or interrupt happens to be current, and SIGCHLD alone
 * would be one record per child exit of a GPU process.
 * args->pid is the target *task*: for process-directed signals the tgid; for
 * a thread-directed one to a non-leader thread a tid, which gpu_holders
 * (keyed by tgid) does not match -- a known, documented blind spot, because
 * mapping tid -> tgid would need task_struct. */
static __always_inline void emit_signal(u32 target, int sig, int result, int group)
{
    if (!gpu_holders.lookup(&target))
        return;
    struct signal_rec *r = events.ringbuf_reserve(sizeof(struct signal_rec));
    if (!r) {
        count_lost();
        return;
    }
    fill_hdr(&r->h, OP_SIGNAL);
    r->target_pid = target;
    r->signal = sig;
    r->result = result;
    r->group = group;
    events.ringbuf_submit(r, 0);
}

/* One handler for both uses: bcc names the program after the tracepoint, so
 * a second signal_generate probe in the shared program text cannot exist. */
TRACEPOINT_PROBE(signal, signal_generate)
{
    if (args->code <= 0)
        emit_signal((u32)args->pid, args->sig, args->result, args->group);
    /* Sender side of exit accounting: remembers e.g. SIGTERM, which the kernel
     * turns into a group-wide SIGKILL before delivery (complete_signal()). */
    if (args->result != 0 || !sig_fatal_by_default(args->sig))
        return 0;
    struct exit_state *st = exit_state_for((u32)args->pid);
    if (st)
        st->gen_sig = args->sig;
    return 0;
}

/* Receiver side: a fatal signal taken with the default action (SIG_DFL). */
TRACEPOINT_PROBE(signal, signal_deliver)
{
    if (args->sa_handler != 0 || !sig_fatal_by_default(args->sig))
        return 0;
    struct exit_state *st = exit_state_for(bpf_get_current_pid_tgid() >> 32);
    if (st && !st->called_exit && !st->deliver_sig)
        st->deliver_sig = args->sig;
    return 0;
}

static __always_inline s32 fatal_signal(struct exit_state *st)
{
    if (st->called_exit || !st->deliver_sig)
        return 0;
    /* group exit shows up as SIGKILL at delivery; the sent signal is the cause */
    if (st->deliver_sig == 9 && st->gen_sig)
        return st->gen_sig;
    return st->deliver_sig;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    u32 tid = (u32)id;
#ifdef HAVE_EXIT_GROUP_DEAD
    int last = args->group_dead; /* the whole thread group is gone */
#else
    int last = (tid == tgid);   /* older kernels: the leader's exit */
#endif
    if (tid != tgid)
        fork_parent.delete(&tid);
    if (!last)
        return 0;

    struct exit_rec *r = events.ringbuf_reserve(sizeof(struct exit_rec));
    if (r) {
        fill_hdr(&r->h, OP_EXIT);
        struct exit_state *st = exit_info.lookup(&tgid);
        r->exit_code = st ? st->code : 0;
        r->signal = st ? fatal_signal(st) : 0;
        r->held_gpu = gpu_holders.lookup(&tgid) ? 1 : 0;
        r->pad = 0;
        events.ringbuf_submit(r, 0);
    } else {
        count_lost();
    }
    exit_info.delete(&tgid);
    gpu_holders.delete(&tgid);
    accel_procs.delete(&tgid); /* set by code.load / NCCL for this process only */
    fork_parent.delete(&tgid);
    return 0;
}
