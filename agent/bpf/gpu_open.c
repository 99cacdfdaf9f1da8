/* gpu.open: opens of GPU device nodes, successful or refused.
 *
 * Enter: read a short prefix of the path and keep only /dev/nvidia* and
 * /dev/dri/renderD* (the in-kernel filter: ordinary opens stop here, costing
 * one short user read). Exit: pair the matched open with its result.
 * A global in-flight counter lets every non-matching exit return after one
 * inlined array read instead of a hash lookup (the exit probe runs for every
 * open on the node).
 */

struct open_args {
    s32 flags;
    u32 pad;
    char path[OPEN_PATH_LEN];
};

BPF_PERCPU_ARRAY(open_scratch, struct open_args, 1);
/* Matched opens waiting for their syscall exit, keyed by pid_tgid. */
BPF_HASH(open_inflight, u64, struct open_args, 4096);
/* Number of entries in open_inflight (approximate upper bound: only used to
 * skip the lookup when nothing can be in flight). */
BPF_ARRAY(open_inflight_n, s64, 1);

#define PREFIX_LEN 17 /* strlen("/dev/dri/renderD") + NUL */

static __always_inline int is_gpu_prefix(const char *p)
{
    if (p[0] != '/' || p[1] != 'd' || p[2] != 'e' || p[3] != 'v' || p[4] != '/')
        return 0;
    if (p[5] == 'n' && p[6] == 'v' && p[7] == 'i' && p[8] == 'd' && p[9] == 'i' && p[10] == 'a')
        return 1; /* /dev/nvidia* incl. nvidiactl, nvidia-uvm*, nvidia-caps/ */
    return p[5] == 'd' && p[6] == 'r' && p[7] == 'i' && p[8] == '/' && p[9] == 'r' &&
           p[10] == 'e' && p[11] == 'n' && p[12] == 'd' && p[13] == 'e' && p[14] == 'r' &&
           p[15] == 'D';
}

static __always_inline int open_enter(const char *filename, s32 flags)
{
    char prefix[PREFIX_LEN] = {};
    if (bpf_probe_read_user_str(prefix, sizeof(prefix), filename) < 12)
        return 0; /* shorter than "/dev/nvidia" + NUL: cannot match */
    if (!is_gpu_prefix(prefix))
        return 0;

    u32 zero = 0;
    struct open_args *a = open_scratch.lookup(&zero);
    if (!a)
        return 0;
    a->flags = flags;
    bpf_probe_read_user_str(a->path, sizeof(a->path), filename);
    u64 id = bpf_get_current_pid_tgid();
    if (open_inflight.update(&id, a) == 0) {
        s64 *n = open_inflight_n.lookup(&zero);
        if (n)
            __sync_fetch_and_add(n, 1);
    } else {
        count_lost();
    }
    return 0;
}

static __always_inline int open_exit(long ret)
{
    u32 zero = 0;
    s64 *n = open_inflight_n.lookup(&zero);
    if (!n || *n <= 0)
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    struct open_args *a = open_inflight.lookup(&id);
    if (!a)
        return 0;

    struct gpu_open_rec *r = events.ringbuf_reserve(sizeof(struct gpu_open_rec));
    if (r) {
        fill_hdr(&r->h, OP_GPU_OPEN);
        r->flags = a->flags;
        r->ret = (s32)ret;
        __builtin_memcpy(r->path, a->path, sizeof(r->path));
        events.ringbuf_submit(r, 0);
    } else {
        count_lost();
    }
    if (ret >= 0) {
        u32 tgid = id >> 32;
        u8 one = 1;
        gpu_holders.update(&tgid, &one);
    }
    open_inflight.delete(&id);
    __sync_fetch_and_add(n, -1);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_openat)
{
    return open_enter(args->filename, (s32)args->flags);
}

TRACEPOINT_PROBE(syscalls, sys_exit_openat)
{
    return open_exit(args->ret);
}

#ifdef HAVE_TP_sys_enter_open
TRACEPOINT_PROBE(syscalls, sys_enter_open)
{
    return open_enter(args->filename, (s32)args->flags);
}

TRACEPOINT_PROBE(syscalls, sys_exit_open)
{
    return open_exit(args->ret);
}
#endif

#ifdef HAVE_TP_sys_enter_openat2
TRACEPOINT_PROBE(syscalls, sys_enter_openat2)
{
    /* struct open_how lives in user memory; its first member is u64 flags. */
    u64 flags = 0;
    bpf_probe_read_user(&flags, sizeof(flags), (void *)args->how);
    return open_enter(args->filename, (s32)flags);
}

TRACEPOINT_PROBE(syscalls, sys_exit_openat2)
{
    return open_exit(args->ret);
}
#endif
