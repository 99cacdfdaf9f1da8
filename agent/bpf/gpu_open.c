/* The node's open classifier: the ONLY open/openat/openat2 probes.
 *
 * Every open on the node passes here, so it reads the path once and runs the
 * cheapest checks first:
 *   1. /dev/nvidia*, /dev/dri/renderD*  -> gpu.open      (prefix compare)
 *   2. /dev/infiniband/...              -> net.rdma_open (prefix compare)
 *   3. write-open (O_WRONLY/O_RDWR/O_CREAT/O_TRUNC) under a protected tree
 *                                       -> file.write    (hash walk, below)
 *   4. read-only open of a model file (.pt .pth .bin .ckpt .pkl .pickle
 *      .joblib .npy .npz)              -> model_open_rec (checkpoint.scan)
 *   5. other read-only opens in or above a tree: remember the fd, so that
 *      openat(dirfd, "relative") can be judged later (files_dirfd)
 * Everything else returns after one user read and a few compares. Matched
 * opens are parked until the syscall exit pairs them with the result.
 *
 * Protected trees (agent/files/trees.py) are filtered in the kernel by a hash
 * walk: user space puts the FNV-1a hash of each normalised tree path into
 * files_trees; the kernel hashes the opened path component by component
 * ("." skipped, "//" collapsed) and looks the hash up at each component end.
 * A relative path continues from the hash of the cwd (files_cwd: set here
 * at chdir, and by user space from /proc/PID/cwd) or of the dirfd
 * (files_dirfd, set here at opens in or above a tree; a dirfd not there is
 * outside every tree). When the cwd is unknown, or the path has "..", or is
 * longer than the buffer, the verdict is "maybe" and user space decides
 * (agent/files/runtime.py). files.c reuses all this.
 */

#define GPUAUDIT_OPEN_CLASSIFIER 1 /* files.c and process.c test for it */

#define FILES_AT_FDCWD (-100)
#define FILES_O_WRITE (01 | 02 | 0100 | 01000) /* O_WRONLY O_RDWR O_CREAT O_TRUNC */
#define FNV_BASIS 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL
#define CLS_DIRREG 100 /* parked internal op: register a directory fd */

struct open_args {
    u32 op;         /* OP_GPU_OPEN, OP_RDMA_OPEN, OP_FILE_WRITE, OP_MODEL_OPEN, CLS_DIRREG */
    s32 flags;
    s32 dirfd;
    u32 verdict;    /* OP_FILE_WRITE: FW_*; CLS_DIRREG: the directory's kind */
    u64 hash;       /* CLS_DIRREG: hash of the directory's normalised path */
    u64 tree;       /* hash of the protected prefix matched, 0 if none */
    u64 base;       /* OP_FILE_WRITE: hash of the relative path's start, 0 if none */
    char path[FILE_PATH_LEN];
};

BPF_PERCPU_ARRAY(open_scratch, struct open_args, 1);
/* Matched opens waiting for their syscall exit, keyed by pid_tgid. */
BPF_HASH(open_inflight, u64, struct open_args, 4096);
/* Number of entries in open_inflight (approximate upper bound: only used to
 * skip the lookup when nothing can be in flight). */
BPF_ARRAY(open_inflight_n, s64, 1);

/* hash of a normalised protected path ("/usr/lib/python3/dist-packages",
 * "/etc/ld.so.preload": no trailing slash) -> FW_IN_TREE, and of each
 * directory above one ("/usr/lib/python3") -> FILES_ANCESTOR. User space. */
#define FILES_ANCESTOR 3
#define FILES_OUTSIDE 4 /* a cwd or dirfd neither in nor above a tree */
#define FILES_MISS 5    /* files_walk: a prefix that is neither a tree nor above one */
BPF_HASH(files_trees, u64, u8, 4096);

/* Where a relative path starts: the hash of a directory's normalised path,
 * and its kind: FW_IN_TREE (inside a tree), FILES_ANCESTOR (above one),
 * FILES_OUTSIDE, or 0 (not known to be above one: the walk looks it up). */
struct files_dir {
    u64 hash;
    u64 tree;       /* kind FW_IN_TREE: hash of the protected prefix it is under */
    u32 kind;
    u32 gen;        /* files_cwd only: the chdir generation it was read at */
};
/* cwd per tgid, written by user space (seeded from /proc, re-read after each
 * chdir). Counts only while gen equals files_cwd_gen: a stale read is unknown. */
BPF_TABLE("lru_hash", u32, struct files_dir, files_cwd, 65536);
/* chdir generation per tgid (absent = 0); kernel-owned. */
BPF_TABLE("lru_hash", u32, u32, files_cwd_gen, 65536);

struct files_fd_key {
    u32 tgid;
    s32 fd;
};
/* fds opened in or above a tree while the agent ran (any flags: a directory
 * opened O_RDONLY works as a dirfd too). */
BPF_TABLE("lru_hash", struct files_fd_key, struct files_dir, files_dirfd, 65536);
/* tgid & 0xffff -> 1 once that tgid may own files_dirfd entries: only then
 * must a new fd number of it drop a stale entry (an inlined array read). */
BPF_ARRAY(files_dirfd_tgids, u8, 65536);

#define PREFIX_LEN 17 /* strlen("/dev/infiniband/") + NUL */

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

/* Called after is_gpu_prefix failed, so p starts with "/dev/" or fails fast. */
static __always_inline int is_rdma_prefix(const char *p)
{
    return p[0] == '/' && p[1] == 'd' && p[2] == 'e' && p[3] == 'v' && p[4] == '/' &&
           p[5] == 'i' && p[6] == 'n' && p[7] == 'f' && p[8] == 'i' && p[9] == 'n' &&
           p[10] == 'i' && p[11] == 'b' && p[12] == 'a' && p[13] == 'n' && p[14] == 'd' &&
           p[15] == '/';
}

/* The last 8 bytes of the path (len = strlen), last byte lowest. */
static __always_inline u64 path_tail(const char *p, int len)
{
    u64 t = 0;
#pragma unroll
    for (int k = 8; k >= 1; k--) {
        int i = len - k;
        if (i >= 0)
            t = (t << 8) | (u8)p[i & (FILE_PATH_LEN - 1)];
        else
            t <<= 8;
    }
    return t;
}

#define SFX(t, n, v) (((t) & ((1ULL << (8 * (n))) - 1)) == (v))

static __always_inline int is_model_suffix(const char *p, int n)
{
    int len = n - 1; /* n counts the NUL */
    if (len < 3 || len >= FILE_PATH_LEN - 1)
        return 0; /* a cut path's real suffix is unknown */
    u64 t = path_tail(p, len);
    return SFX(t, 3, 0x2e7074ULL)            /* .pt */
        || SFX(t, 4, 0x2e707468ULL)          /* .pth */
        || SFX(t, 4, 0x2e62696eULL)          /* .bin */
        || SFX(t, 5, 0x2e636b7074ULL)        /* .ckpt */
        || SFX(t, 4, 0x2e706b6cULL)          /* .pkl */
        || SFX(t, 7, 0x2e7069636b6c65ULL)    /* .pickle */
        || SFX(t, 7, 0x2e6a6f626c6962ULL)    /* .joblib */
        || SFX(t, 4, 0x2e6e7079ULL)          /* .npy */
        || SFX(t, 4, 0x2e6e707aULL);         /* .npz */
}

/* The walk's start for path p given dirfd, into *at: 1, or 0 if unknown. */
static __always_inline int files_base(const char *p, s32 dirfd, struct files_dir *at)
{
    at->hash = FNV_BASIS;
    at->tree = 0;
    at->kind = 0;
    at->gen = 0;
    if (p[0] == '/') {
        at->kind = FILES_ANCESTOR; /* "/" is above every tree */
        return 1;
    }
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct files_dir *d;
    if (dirfd == FILES_AT_FDCWD) {
        d = files_cwd.lookup(&tgid);
        if (!d)
            return 0;
        u32 *g = files_cwd_gen.lookup(&tgid);
        if ((g ? *g : 0) != d->gen)
            return 0; /* changed directory since user space read the cwd */
    } else {
        struct files_fd_key k = {.tgid = tgid, .fd = dirfd};
        d = files_dirfd.lookup(&k);
        if (!d) {
            /* Not opened in or above a tree while we watched: outside. */
            at->kind = FILES_OUTSIDE;
            return 1;
        }
    }
    at->hash = d->hash;
    at->tree = d->tree;
    at->kind = d->kind;
    return 1;
}

/* A bit per hash in files_trees (bit h & FILES_BLOOM_MASK), set by user
 * space: an inlined array read answers "no" for almost every prefix, so the
 * hash map is looked up only for real candidates. */
#define FILES_BLOOM_WORDS 1024
#define FILES_BLOOM_MASK (FILES_BLOOM_WORDS * 64 - 1)
BPF_ARRAY(files_bloom, u64, FILES_BLOOM_WORDS);

/* The files_trees value for prefix hash h, 0 when it is none. */
static __always_inline u32 files_lookup(u64 h)
{
    u32 bit = h & FILES_BLOOM_MASK;
    u32 word = bit >> 6;
    u64 *w = files_bloom.lookup(&word);
    if (!w || !(*w & (1ULL << (bit & 63))))
        return 0;
    u8 *t = files_trees.lookup(&h);
    return t ? *t : 0;
}

/* Hash p's components onto at->hash (always the whole path's exact hash, so
 * a directory remembered from it can be recognised by user space later),
 * looking each prefix up until one is protected:
 *  FILES_MISS at the first prefix neither protected nor above a tree: nothing
 *    below it can be protected, so the walk stops there (most paths stop at
 *    their first component) -- unless a later ".." climbs back (files_judge);
 *  FW_MAYBE at "..", or for a path without NUL in the buffer;
 *  else FW_IN_TREE (at->tree = the protected prefix's hash), or
 *  FILES_ANCESTOR when the whole path is a directory above a tree, or 0.
 * The loop carries only the loop index and two flags as exact values (the
 * verifier then prunes per iteration): "." and ".." are recognised by looking
 * back at the bytes before a separator, not by counting a component's length. */
static __always_inline u32 files_walk(const char *p, struct files_dir *at)
{
    if (at->kind == FILES_OUTSIDE)
        return FILES_MISS; /* only a ".." could lead into a tree */
    u64 h = at->hash, hc = at->hash, tree = at->tree;
    u32 last = at->kind == FILES_ANCESTOR ? FILES_ANCESTOR : 0;
    int intree = at->kind == FW_IN_TREE;
    int start = 1; /* at a component's start: its '/' is not hashed yet */
    u32 res = FW_MAYBE; /* cut: no NUL within FILE_PATH_LEN */
    for (int i = 0; i < FILE_PATH_LEN; i++) {
        char c = p[i];
        if (c != '/' && c != 0) {
            if (start)
                h = (h ^ '/') * FNV_PRIME;
            start = 0;
            h = (h ^ (u8)c) * FNV_PRIME;
            continue;
        }
        if (!start) { /* a component ended at i */
            char b1 = p[(i - 1) & (FILE_PATH_LEN - 1)];
            char b2 = i >= 2 ? p[(i - 2) & (FILE_PATH_LEN - 1)] : '/';
            char b3 = i >= 3 ? p[(i - 3) & (FILE_PATH_LEN - 1)] : '/';
            if (b1 == '.' && b2 == '/') {
                h = hc; /* "." */
            } else if (b1 == '.' && b2 == '.' && b3 == '/') {
                res = FW_MAYBE; /* ".." would need the parent's hash: user space */
                break;
            } else if (!intree) {
                last = files_lookup(h);
                if (!last) {
                    res = FILES_MISS;
                    break;
                }
                if (last == FW_IN_TREE) {
                    intree = 1;
                    tree = h;
                }
            }
            hc = h;
            start = 1;
        }
        if (c == 0) {
            res = intree ? FW_IN_TREE : last == FILES_ANCESTOR ? FILES_ANCESTOR : 0;
            break;
        }
    }
    at->hash = h;
    at->tree = intree ? tree : 0;
    return res;
}

/* "..", or two dots anywhere (a superset: then user space decides). */
static __always_inline int files_has_dotdot(const char *p)
{
    for (int i = 0; i < FILE_PATH_LEN - 1; i++) {
        char c = p[i];
        if (c == 0)
            return 0;
        if (c == '.' && p[i + 1] == '.')
            return 1;
    }
    return 1; /* cut */
}

/* Verdict for a path about to be changed: 0 (not protected), FW_IN_TREE
 * (*tree = the matched prefix's hash), FW_MAYBE. *base: the hash a relative
 * path started from (user space checks its /proc reading of the cwd or
 * dirfd against it: the fd may be closed or reused by then). */
static __always_inline u32 files_judge(const char *p, s32 dirfd, u64 *tree, u64 *base)
{
    struct files_dir at;
    *tree = 0;
    *base = 0;
    if (!files_base(p, dirfd, &at))
        return FW_MAYBE;
    if (p[0] != '/' && at.kind != FILES_OUTSIDE)
        *base = at.hash;
    u32 v = files_walk(p, &at);
    *tree = at.tree;
    if (v == FILES_MISS)
        return files_has_dotdot(p) ? FW_MAYBE : 0;
    if (v == FILES_ANCESTOR)
        return FW_IN_TREE; /* renaming or removing a directory above a tree */
    return v == FW_IN_TREE || v == FW_MAYBE ? v : 0;
}

static __always_inline void open_park(struct open_args *a)
{
    u32 zero = 0;
    u64 id = bpf_get_current_pid_tgid();
    if (open_inflight.update(&id, a) == 0) {
        s64 *n = open_inflight_n.lookup(&zero);
        if (n)
            __sync_fetch_and_add(n, 1);
    } else {
        count_lost();
    }
}

/* What to park this open as, or 0 to let it go (steps 3-5 of the header). */
static __always_inline u32 classify_file(struct open_args *a, int n, s32 flags, s32 dirfd)
{
    if (flags & FILES_O_WRITE) {
        a->verdict = files_judge(a->path, dirfd, &a->tree, &a->base);
        return a->verdict ? OP_FILE_WRITE : 0;
    }
    if (is_model_suffix(a->path, n))
        return OP_MODEL_OPEN;
    /* Any read-only open may be a directory later used as a dirfd (Python's
     * os.open(dir, O_RDONLY) has no O_DIRECTORY): remember those in or above
     * a tree. An fd not remembered is judged "not protected". */
    struct files_dir at;
    if (!files_base(a->path, dirfd, &at))
        return 0;
    u32 v = files_walk(a->path, &at);
    if (v != FW_IN_TREE && v != FILES_ANCESTOR)
        return 0;
    a->verdict = v;
    a->hash = at.hash;
    a->tree = at.tree;
    return CLS_DIRREG;
}

static __always_inline int open_enter(const char *filename, s32 flags, s32 dirfd)
{
    u32 zero = 0;
    struct open_args *a = open_scratch.lookup(&zero);
    if (!a)
        return 0;
    int n = bpf_probe_read_user_str(a->path, sizeof(a->path), filename);
    if (n <= 1)
        return 0; /* unreadable or empty: the syscall fails */
    u32 op;
    /* A prefix compare stops at the NUL (no prefix char is 0), so bytes left
     * in the scratch buffer past it by an earlier path never match. */
    if (n >= PREFIX_LEN - 5 && is_gpu_prefix(a->path))
        op = OP_GPU_OPEN;
    else if (n >= PREFIX_LEN && is_rdma_prefix(a->path))
        op = OP_RDMA_OPEN;
    else
        op = classify_file(a, n, flags, dirfd);
    if (!op)
        return 0;
    a->op = op;
    a->flags = flags;
    a->dirfd = dirfd;
    open_park(a);
    return 0;
}

static __always_inline void emit_device_open(struct open_args *a, long ret)
{
    struct gpu_open_rec *r = events.ringbuf_reserve(sizeof(struct gpu_open_rec));
    if (!r) {
        count_lost();
        return;
    }
    fill_hdr(&r->h, a->op == OP_GPU_OPEN ? OP_GPU_OPEN : OP_RDMA_OPEN);
    r->flags = a->flags;
    r->ret = (s32)ret;
    bpf_probe_read_kernel(r->path, sizeof(r->path), a->path);
    r->path[OPEN_PATH_LEN - 1] = 0; /* cut like bpf_probe_read_user_str would */
    events.ringbuf_submit(r, 0);
}

static __always_inline void emit_model_open(struct open_args *a, long ret)
{
    struct model_open_rec *r = events.ringbuf_reserve(sizeof(struct model_open_rec));
    if (!r) {
        count_lost();
        return;
    }
    fill_hdr(&r->h, OP_MODEL_OPEN);
    r->flags = a->flags;
    r->ret = (s32)ret;
    r->dirfd = a->dirfd;
    r->pad = 0;
    bpf_probe_read_kernel(r->path, sizeof(r->path), a->path);
    events.ringbuf_submit(r, 0);
}

static __always_inline void emit_open_write(struct open_args *a, long ret)
{
    struct file_write_rec *r = events.ringbuf_reserve(sizeof(struct file_write_rec));
    if (!r) {
        count_lost();
        return;
    }
    fill_hdr(&r->h, OP_FILE_WRITE);
    r->fop = FW_OPEN;
    r->flags = a->flags;
    r->dirfd = a->dirfd;
    r->old_dirfd = FILES_AT_FDCWD;
    r->result = ret;
    r->tree = a->tree;
    r->base = a->base;
    r->old_base = 0;
    r->verdict = a->verdict;
    r->pad = 0;
    bpf_probe_read_kernel(r->path, sizeof(r->path), a->path);
    r->old_path[0] = 0;
    events.ringbuf_submit(r, 0);
}

/* A new fd number of this process no longer names the directory that an
 * earlier, closed fd with the same number did. */
static __always_inline void files_forget_fd(u64 id, long fd)
{
    u32 tgid = id >> 32;
    u32 slot = tgid & 0xffff;
    u8 *may = files_dirfd_tgids.lookup(&slot);
    if (!may || !*may)
        return;
    struct files_fd_key k = {.tgid = tgid, .fd = (s32)fd};
    files_dirfd.delete(&k);
}

static __always_inline void files_remember_dir(u64 id, struct open_args *a, long fd)
{
    u32 tgid = id >> 32;
    u32 slot = tgid & 0xffff;
    struct files_fd_key k = {.tgid = tgid, .fd = (s32)fd};
    struct files_dir d = {.hash = a->hash, .tree = a->tree, .kind = a->verdict, .gen = 0};
    files_dirfd.update(&k, &d);
    u8 one = 1;
    files_dirfd_tgids.update(&slot, &one);
}

static __always_inline int open_exit(long ret)
{
    u32 zero = 0;
    u64 id = bpf_get_current_pid_tgid();
    s64 *n = open_inflight_n.lookup(&zero);
    struct open_args *a = NULL;
    if (n && *n > 0)
        a = open_inflight.lookup(&id);
    if (!a || !n) {
        if (ret >= 0)
            files_forget_fd(id, ret);
        return 0;
    }
    u32 op = a->op;
    if (op == OP_GPU_OPEN || op == OP_RDMA_OPEN)
        emit_device_open(a, ret);
    else if (op == OP_MODEL_OPEN)
        emit_model_open(a, ret);
    else if (op == OP_FILE_WRITE)
        emit_open_write(a, ret);
    if (ret >= 0) {
        if (op == CLS_DIRREG) {
            files_remember_dir(id, a, ret);
        } else {
            files_forget_fd(id, ret);
        }
        if (op == OP_GPU_OPEN) {
            u32 tgid = id >> 32;
            u8 one = 1;
            gpu_holders.update(&tgid, &one);
        }
    }
    open_inflight.delete(&id);
    __sync_fetch_and_add(n, -1);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_openat)
{
    return open_enter(args->filename, (s32)args->flags, (s32)args->dfd);
}

TRACEPOINT_PROBE(syscalls, sys_exit_openat)
{
    return open_exit(args->ret);
}

#ifdef HAVE_TP_sys_enter_open
TRACEPOINT_PROBE(syscalls, sys_enter_open)
{
    return open_enter(args->filename, (s32)args->flags, FILES_AT_FDCWD);
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
    return open_enter(args->filename, (s32)flags, (s32)args->dfd);
}

TRACEPOINT_PROBE(syscalls, sys_exit_openat2)
{
    return open_exit(args->ret);
}
#endif

/* cwd tracking. chdir(path)'s enter judges the new directory like an open
 * (absolute, or relative to a known cwd) and fchdir(fd) looks up the fd; at
 * a successful exit the process's generation is bumped, the new entry set
 * when the kernel could tell, and user space is asked to re-read
 * /proc/PID/cwd anyway (canonical through symlinks, and the only way after
 * "cd .."). Until an entry of the current generation exists, relative writes
 * are "maybe". */
BPF_HASH(files_chdir_inflight, u64, struct files_dir, 1024);

TRACEPOINT_PROBE(syscalls, sys_enter_chdir)
{
    u32 zero = 0;
    struct open_args *a = open_scratch.lookup(&zero);
    if (!a || bpf_probe_read_user_str(a->path, sizeof(a->path), args->filename) <= 1)
        return 0;
    struct files_dir d;
    if (!files_base(a->path, FILES_AT_FDCWD, &d))
        return 0;
    u32 v = files_walk(a->path, &d);
    if (v == FW_MAYBE)
        return 0;
    /* below a miss, the hash is only the missed prefix's: mark it outside */
    d.kind = v == FW_IN_TREE || v == FILES_ANCESTOR ? v : FILES_OUTSIDE;
    d.gen = 0;
    u64 id = bpf_get_current_pid_tgid();
    files_chdir_inflight.update(&id, &d);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_fchdir)
{
    u64 id = bpf_get_current_pid_tgid();
    struct files_fd_key k = {.tgid = id >> 32, .fd = (s32)args->fd};
    struct files_dir *d = files_dirfd.lookup(&k);
    if (d)
        files_chdir_inflight.update(&id, d);
    return 0;
}

static __always_inline int files_chdir_exit(long ret)
{
    u64 id = bpf_get_current_pid_tgid();
    struct files_dir *d = files_chdir_inflight.lookup(&id);
    struct files_dir next = {};
    int known = 0;
    if (d) {
        next = *d;
        known = 1;
        files_chdir_inflight.delete(&id);
    }
    if (ret != 0)
        return 0;
    u32 tgid = id >> 32;
    u32 zero = 0;
    u32 *g = files_cwd_gen.lookup_or_try_init(&tgid, &zero);
    if (!g) {
        count_lost();
        return 0;
    }
    __sync_fetch_and_add(g, 1);
    u32 gen = *g;
    if (known) {
        next.gen = gen;
        files_cwd.update(&tgid, &next);
    }
    struct files_cwd_rec *r = events.ringbuf_reserve(sizeof(struct files_cwd_rec));
    if (!r) {
        count_lost();
        return 0;
    }
    fill_hdr(&r->h, OP_FILES_CWD);
    r->gen = gen;
    r->pad = 0;
    events.ringbuf_submit(r, 0);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_chdir)
{
    return files_chdir_exit(args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_exit_fchdir)
{
    return files_chdir_exit(args->ret);
}

/* Called by process.c's sched_process_fork handler: a child starts in its
 * parent's cwd, so it inherits the parent's entry (or none). */
static __always_inline void files_cwd_inherit(u32 parent_tgid, u32 child)
{
    struct files_dir *d = files_cwd.lookup(&parent_tgid);
    if (!d) {
        files_cwd.delete(&child);
        return;
    }
    struct files_dir copy = *d;
    u32 *g = files_cwd_gen.lookup(&parent_tgid);
    u32 gen = g ? *g : 0;
    files_cwd.update(&child, &copy);
    files_cwd_gen.update(&child, &gen);
}
