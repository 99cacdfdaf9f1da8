#ifndef GPUAUDIT_FILES_EVENTS_H
#define GPUAUDIT_FILES_EVENTS_H

/* Records of the open classifier (agent/bpf/gpu_open.c) and file.write
 * sensors (agent/bpf/files.c). Op codes 12-19. */

/* file.write: a change under a protected tree (agent/files/), from the open
 * classifier (write-opens) and files.c (rename, link, unlink, truncate). */
#define OP_FILE_WRITE 12
/* net.rdma_open: an open under /dev/infiniband/; carries a struct gpu_open_rec. */
#define OP_RDMA_OPEN 13
/* A successful chdir/fchdir: user space re-reads /proc/PID/cwd and tells the
 * kernel the new directory's hash (files_cwd). No event of its own. */
#define OP_FILES_CWD 14

#define FILE_PATH_LEN 256

/* file_write_rec.fop: which syscall family changed the file. */
#define FW_OPEN 1     /* open/openat/openat2 with O_WRONLY/O_RDWR/O_CREAT/O_TRUNC */
#define FW_RENAME 2   /* rename/renameat/renameat2: path = new, old_path = old */
#define FW_LINK 3     /* link/linkat: path = new link, old_path = existing file */
#define FW_SYMLINK 4  /* symlink/symlinkat: path = new link, old_path = its target text */
#define FW_UNLINK 5   /* unlink/unlinkat */
#define FW_RMDIR 6    /* rmdir, unlinkat(AT_REMOVEDIR) */
#define FW_TRUNCATE 7 /* truncate(2) by path */

/* How the kernel judged the path (the in-kernel filter's verdict). */
#define FW_IN_TREE 1  /* under a protected tree (hash of a path prefix matched) */
#define FW_MAYBE 2    /* could not tell: cwd/dirfd not yet known, "..", or a cut path */

struct file_write_rec {
    struct hdr h;
    u32 fop;        /* FW_* */
    s32 flags;      /* open flags; renameat2/linkat/unlinkat flags; else 0 */
    s32 dirfd;      /* dirfd of path; AT_FDCWD (-100) for cwd-relative and the old syscalls */
    s32 old_dirfd;  /* dirfd of old_path (rename, link), else AT_FDCWD */
    s64 result;     /* syscall result: fd or 0, or -errno */
    u64 tree;       /* FW_IN_TREE: hash of the protected path matched (of old_path's
                     * when only that is protected); 0 for FW_MAYBE */
    u64 base;       /* relative path: hash of the directory it started from (cwd or
                     * dirfd) as the kernel knew it; 0 if absolute or unknown */
    u64 old_base;   /* the same for old_path */
    u32 verdict;    /* FW_IN_TREE or FW_MAYBE */
    u32 pad;
    char path[FILE_PATH_LEN];     /* as passed to the syscall (may be relative) */
    char old_path[FILE_PATH_LEN]; /* rename/link source, symlink target; "" otherwise */
};

/* OP_FILES_CWD: the process changed directory; header = the process. */
struct files_cwd_rec {
    struct hdr h;
    u32 gen;        /* its chdir generation after this change (files_cwd_gen) */
    u32 pad;
};

/* checkpoint.scan input: a model file (by suffix) opened for reading by any
 * process; user space (agent/sensors/checkpoint.py) keeps GPU and Python
 * processes and scans the file. Header = the opener. */
#define OP_MODEL_OPEN 18
#define MODEL_PATH_LEN 256

struct model_open_rec {
    struct hdr h;
    s32 flags;      /* open(2) flags */
    s32 ret;        /* fd, or -errno */
    s32 dirfd;      /* openat's dirfd; AT_FDCWD (-100) for cwd-relative and open(2) */
    u32 pad;
    char path[MODEL_PATH_LEN]; /* as passed to the syscall (may be relative) */
};

#endif /* GPUAUDIT_FILES_EVENTS_H */
