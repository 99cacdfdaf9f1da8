/* code.load records (agent/bpf/codeload.c) and the exec environment record
 * of process.exec (agent/bpf/process.c). Op codes 9-11. */
#ifndef GPUAUDIT_CODE_EVENTS_H
#define GPUAUDIT_CODE_EVENTS_H

#define OP_CODE_MAP 9
#define OP_EXEC_ENV 10

/* code_map_rec.syscall (an enum, not #defines: those are the size limits) */
enum code_map_syscall {
    CODE_MAP_MMAP = 0,
    CODE_MAP_MPROTECT = 1,
    CODE_MAP_PKEY_MPROTECT = 2,
};

#define EXEC_ENV_VARS 8        /* LD_PRELOAD ... NCCL_TUNER_PLUGIN (process.py PRELOAD_VARS) */
#define EXEC_ENV_VAL_LEN 512   /* each captured value, NUL included */
#define EXEC_ENV_SCAN 128      /* envp entries read at exec; more sets `partial` */

/* code.load: a successful mmap(PROT_EXEC) of a file (fd >= 0, not
 * MAP_ANONYMOUS), or a successful mprotect/pkey_mprotect that adds PROT_EXEC
 * to a range (file-backed or not: the kernel side cannot tell; user space
 * resolves the range through /proc/PID/map_files and drops anonymous ones).
 * Failed calls map nothing and are not emitted. Header = the mapping process. */
struct code_map_rec {
    struct hdr h;
    u64 addr;       /* start of the mapped range (mmap's result, mprotect's start) */
    u64 len;        /* length as passed (not page-rounded) */
    s32 fd;         /* mmap's fd; -1 for mprotect */
    u32 prot;       /* PROT_* asked for */
    u32 flags;      /* mmap's MAP_* flags; 0 for mprotect */
    u32 syscall;    /* enum code_map_syscall */
};

/* process.exec's preload variables, read from the envp passed to
 * execve/execveat. Emitted (only when one of them is set, or envp was longer
 * than EXEC_ENV_SCAN) immediately BEFORE the exec_rec of the same exec: both
 * are reserved in that order in one sched_process_exec run, and this one is
 * discarded when the exec_rec cannot be reserved. Header = the new image. */
struct exec_env_rec {
    struct hdr h;
    u32 old_tid;    /* the tid that called exec, as in exec_rec */
    u32 set;        /* bit i: variable i is set (order: process.py PRELOAD_VARS) */
    u32 cut;        /* bit i: value i filled its buffer and may have been cut */
    u32 partial;    /* 1: envp had more than EXEC_ENV_SCAN entries; the rest was not read */
    char val[EXEC_ENV_VARS][EXEC_ENV_VAL_LEN];
};

#endif /* GPUAUDIT_CODE_EVENTS_H */
