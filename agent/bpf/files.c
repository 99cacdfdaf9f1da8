/* file.write: the file mutations that are not opens -- rename, link,
 * symlink, unlink, rmdir, truncate -- under a protected tree.
 *
 * Uses the open classifier's trees, cwd and dirfd state and its hash walk
 * (agent/bpf/gpu_open.c, pasted before this file). Compiled alone, as the
 * loader does to find a broken sensor, this file is empty; the sensor's
 * user-space side then reports it off (agent/sensors/files.py).
 * Enter: read the path(s), judge them in the kernel (a rename or link counts
 * when either end is protected: moving a tree file out, or hard-linking it
 * elsewhere, gives a writable handle on it). Exit: emit with the result.
 */
#ifdef GPUAUDIT_OPEN_CLASSIFIER

#define FILES_AT_REMOVEDIR 0x200

struct files_call {
    u32 fop;
    s32 flags;
    s32 dirfd;
    s32 old_dirfd;
    u32 verdict;
    u32 pad;
    u64 tree;
    u64 base;
    u64 old_tree;
    u64 old_base;
    char path[FILE_PATH_LEN];
    char old_path[FILE_PATH_LEN];
};

BPF_PERCPU_ARRAY(files_scratch, struct files_call, 1);
/* Judged calls waiting for their exit, keyed by pid_tgid. */
BPF_HASH(files_inflight, u64, struct files_call, 1024);

static __always_inline u32 files_worse(u32 a, u32 b)
{
    if (a == FW_IN_TREE || b == FW_IN_TREE)
        return FW_IN_TREE;
    return a | b; /* FW_MAYBE or 0 */
}

/* old: the second path (rename/link source, symlink target), or NULL. */
static __always_inline int files_enter(u32 fop, s32 flags, s32 dirfd, const char *path,
                                       s32 old_dirfd, const char *old)
{
    u32 zero = 0;
    struct files_call *c = files_scratch.lookup(&zero);
    if (!c)
        return 0;
    if (bpf_probe_read_user_str(c->path, sizeof(c->path), path) <= 0)
        return 0; /* unreadable: the syscall fails with EFAULT */
    /* Results go through map memory with a compiler barrier between the two
     * walks: the verifier then sees one state, not one per way the first
     * walk ended, when it checks the second (two walks otherwise exceed its
     * budget). */
    c->verdict = files_judge(c->path, dirfd, &c->tree, &c->base);
    c->old_tree = 0;
    c->old_base = 0;
    c->old_path[0] = 0;
    asm volatile("" ::: "memory");
    if (old && bpf_probe_read_user_str(c->old_path, sizeof(c->old_path), old) > 0 &&
        fop != FW_SYMLINK) { /* a symlink's target is only text */
        u32 v2 = files_judge(c->old_path, old_dirfd, &c->old_tree, &c->old_base);
        c->verdict = files_worse(c->verdict, v2);
    }
    asm volatile("" ::: "memory");
    if (!c->verdict)
        return 0;
    if (!c->tree)
        c->tree = c->old_tree;
    c->fop = fop;
    c->flags = flags;
    c->dirfd = dirfd;
    c->old_dirfd = old_dirfd;
    c->pad = 0;
    u64 id = bpf_get_current_pid_tgid();
    if (files_inflight.update(&id, c) != 0)
        count_lost();
    return 0;
}

static __always_inline int files_exit(long ret)
{
    u64 id = bpf_get_current_pid_tgid();
    struct files_call *c = files_inflight.lookup(&id);
    if (!c)
        return 0;
    struct file_write_rec *r = events.ringbuf_reserve(sizeof(struct file_write_rec));
    if (r) {
        fill_hdr(&r->h, OP_FILE_WRITE);
        r->fop = c->fop;
        r->flags = c->flags;
        r->dirfd = c->dirfd;
        r->old_dirfd = c->old_dirfd;
        r->result = ret;
        r->tree = c->tree;
        r->base = c->base;
        r->old_base = c->old_base;
        r->verdict = c->verdict;
        r->pad = 0;
        bpf_probe_read_kernel(r->path, sizeof(r->path), c->path);
        bpf_probe_read_kernel(r->old_path, sizeof(r->old_path), c->old_path);
        events.ringbuf_submit(r, 0);
    } else {
        count_lost();
    }
    files_inflight.delete(&id);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_renameat2)
{
    return files_enter(FW_RENAME, (s32)args->flags, (s32)args->newdfd, args->newname,
                       (s32)args->olddfd, args->oldname);
}
TRACEPOINT_PROBE(syscalls, sys_exit_renameat2) { return files_exit(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_linkat)
{
    return files_enter(FW_LINK, (s32)args->flags, (s32)args->newdfd, args->newname,
                       (s32)args->olddfd, args->oldname);
}
TRACEPOINT_PROBE(syscalls, sys_exit_linkat) { return files_exit(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_symlinkat)
{
    return files_enter(FW_SYMLINK, 0, (s32)args->newdfd, args->newname,
                       FILES_AT_FDCWD, args->oldname);
}
TRACEPOINT_PROBE(syscalls, sys_exit_symlinkat) { return files_exit(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_unlinkat)
{
    u32 fop = (args->flag & FILES_AT_REMOVEDIR) ? FW_RMDIR : FW_UNLINK;
    return files_enter(fop, (s32)args->flag, (s32)args->dfd, args->pathname,
                       FILES_AT_FDCWD, NULL);
}
TRACEPOINT_PROBE(syscalls, sys_exit_unlinkat) { return files_exit(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_truncate)
{
    return files_enter(FW_TRUNCATE, 0, FILES_AT_FDCWD, args->path, FILES_AT_FDCWD, NULL);
}
TRACEPOINT_PROBE(syscalls, sys_exit_truncate) { return files_exit(args->ret); }

/* The old syscalls (absent on arm64 and other newer architectures). */
#ifdef HAVE_TP_sys_enter_renameat
TRACEPOINT_PROBE(syscalls, sys_enter_renameat)
{
    return files_enter(FW_RENAME, 0, (s32)args->newdfd, args->newname,
                       (s32)args->olddfd, args->oldname);
}
TRACEPOINT_PROBE(syscalls, sys_exit_renameat) { return files_exit(args->ret); }
#endif

#ifdef HAVE_TP_sys_enter_rename
TRACEPOINT_PROBE(syscalls, sys_enter_rename)
{
    return files_enter(FW_RENAME, 0, FILES_AT_FDCWD, args->newname, FILES_AT_FDCWD,
                       args->oldname);
}
TRACEPOINT_PROBE(syscalls, sys_exit_rename) { return files_exit(args->ret); }
#endif

#ifdef HAVE_TP_sys_enter_link
TRACEPOINT_PROBE(syscalls, sys_enter_link)
{
    return files_enter(FW_LINK, 0, FILES_AT_FDCWD, args->newname, FILES_AT_FDCWD,
                       args->oldname);
}
TRACEPOINT_PROBE(syscalls, sys_exit_link) { return files_exit(args->ret); }
#endif

#ifdef HAVE_TP_sys_enter_symlink
TRACEPOINT_PROBE(syscalls, sys_enter_symlink)
{
    return files_enter(FW_SYMLINK, 0, FILES_AT_FDCWD, args->newname, FILES_AT_FDCWD,
                       args->oldname);
}
TRACEPOINT_PROBE(syscalls, sys_exit_symlink) { return files_exit(args->ret); }
#endif

#ifdef HAVE_TP_sys_enter_unlink
TRACEPOINT_PROBE(syscalls, sys_enter_unlink)
{
    return files_enter(FW_UNLINK, 0, FILES_AT_FDCWD, args->pathname, FILES_AT_FDCWD, NULL);
}
TRACEPOINT_PROBE(syscalls, sys_exit_unlink) { return files_exit(args->ret); }
#endif

#ifdef HAVE_TP_sys_enter_rmdir
TRACEPOINT_PROBE(syscalls, sys_enter_rmdir)
{
    return files_enter(FW_RMDIR, 0, FILES_AT_FDCWD, args->pathname, FILES_AT_FDCWD, NULL);
}
TRACEPOINT_PROBE(syscalls, sys_exit_rmdir) { return files_exit(args->ret); }
#endif

#endif /* GPUAUDIT_OPEN_CLASSIFIER */
