#ifndef GPUAUDIT_FILES_EVENTS_H
#define GPUAUDIT_FILES_EVENTS_H

/* Records of the open classifier (agent/bpf/gpu_open.c) and file.write
 * sensors (agent/bpf/files.c). Op codes 12-19. */

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
