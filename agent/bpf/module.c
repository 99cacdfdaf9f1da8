/* code.module_load: init_module(2) and finit_module(2), whatever the outcome.
 *
 * A sensor of its own because kernels built without module support have no
 * such tracepoints: that turns off this sensor only, not tamper.c.
 * Enter parks the arguments by pid_tgid, exit emits them with the result.
 * The module file's path is resolved in user space from /proc/<pid>/fd/<fd>.
 */

struct module_call {
    u32 syscall;    /* 0 init_module, 1 finit_module */
    s32 fd;
    s32 flags;
    u32 pad;
};

BPF_HASH(module_inflight, u64, struct module_call, 1024);

static __always_inline int module_enter(u32 syscall, s32 fd, s32 flags)
{
    struct module_call c = {};
    c.syscall = syscall;
    c.fd = fd;
    c.flags = flags;
    u64 id = bpf_get_current_pid_tgid();
    if (module_inflight.update(&id, &c) != 0)
        count_lost();
    return 0;
}

static __always_inline int module_exit(long ret)
{
    u64 id = bpf_get_current_pid_tgid();
    struct module_call *c = module_inflight.lookup(&id);
    if (!c)
        return 0;
    struct module_rec *r = events.ringbuf_reserve(sizeof(struct module_rec));
    if (r) {
        fill_hdr(&r->h, OP_MODULE_LOAD);
        r->syscall = c->syscall;
        r->fd = c->fd;
        r->flags = c->flags;
        r->pad = 0;
        r->result = ret;
        events.ringbuf_submit(r, 0);
    } else {
        count_lost();
    }
    module_inflight.delete(&id);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_init_module)
{
    return module_enter(0, -1, 0);
}

TRACEPOINT_PROBE(syscalls, sys_exit_init_module)
{
    return module_exit(args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_enter_finit_module)
{
    return module_enter(1, (s32)args->fd, (s32)args->flags);
}

TRACEPOINT_PROBE(syscalls, sys_exit_finit_module)
{
    return module_exit(args->ret);
}
