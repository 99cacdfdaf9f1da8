/* Records the kernel side emits into the `events` ring buffer.
 *
 * This header is the single definition of the kernel -> user-space ABI.
 * agent/sensors/records.py mirrors these structs with ctypes so records can be
 * decoded (and tested) without root; tests/integration/test_alignment.py checks
 * that bcc's view of every struct here matches the mirror field by field.
 *
 * Every record starts with `struct hdr` whose first byte is the op code.
 * Rule: never dereference kernel structs (task_struct etc.) -- the headers bcc
 * compiles against may not match the running kernel. Use tracepoint arguments
 * and bpf_get_current_* helpers only; user space enriches the rest.
 */
#ifndef GPUAUDIT_EVENTS_H
#define GPUAUDIT_EVENTS_H

#define OP_GPU_OPEN 1
#define OP_EXEC 2
#define OP_EXIT 3
#define OP_SIGNAL 4
#define OP_PTRACE 5
#define OP_VM_WRITE 6
#define OP_MODULE_LOAD 7
#define OP_BPF_LOAD 8

#define COMM_LEN 16
#define OPEN_PATH_LEN 128
#define EXEC_FILENAME_LEN 256
#define EXEC_MAX_ARGS 20
#define EXEC_ARG_LEN 128
#define BPF_PROG_NAME_LEN 16

/* Header shared by all records. */
struct hdr {
    u8 op;
    u8 pad[3];
    u32 pid;        /* tgid */
    u32 tid;
    u32 ppid;       /* tgid of the forking parent, 0 if the fork was not seen */
    u32 uid;
    u32 gid;
    u64 ktime_ns;   /* bpf_ktime_get_boot_ns() */
    u64 cgroup_id;  /* cgroup v2 id == inode of the cgroup directory */
    char comm[COMM_LEN];
};

/* gpu.open: emitted at syscall exit for opens whose path matched the filter. */
struct gpu_open_rec {
    struct hdr h;
    s32 flags;
    s32 ret;        /* fd, or -errno */
    char path[OPEN_PATH_LEN];
};

/* process.exec: emitted from sched_process_exec, so only successful execs. */
struct exec_rec {
    struct hdr h;
    u32 old_tid;    /* the tid that called exec (differs when a thread execs) */
    u32 argc;       /* arguments copied into argv below */
    u32 truncated;  /* 1 when argv had more args, or an arg longer than EXEC_ARG_LEN */
    u32 pad;
    char filename[EXEC_FILENAME_LEN];
    char argv[EXEC_MAX_ARGS][EXEC_ARG_LEN];
};

/* process.exit: emitted when a thread-group leader exits. */
struct exit_rec {
    struct hdr h;
    s32 exit_code;  /* from exit_group()/exit(): status & 0xff */
    s32 signal;     /* fatal signal delivered with default action, 0 if none */
    u32 held_gpu;   /* 1 if the process successfully opened a GPU device */
    u32 pad;
};

/* process.signal: a signal generated for a process that opened a GPU device.
 * The header is the sender (the task that was running: for kill(2),
 * tgkill(2), rt_sigqueueinfo(2) and pidfd_send_signal(2) that is the caller). */
struct signal_rec {
    struct hdr h;
    u32 target_pid; /* tgid the signal was sent to */
    s32 signal;
    s32 result;     /* TRACE_SIGNAL_*: 0 delivered, 1 ignored, 2 already pending, 3 overflow, 4 lose info */
    s32 group;      /* 1: process-directed (shared pending); 0: thread-directed */
};

/* process.ptrace: a ptrace(2) request that attaches to or modifies another
 * process (the in-kernel filter in tamper.c lists them). Header = tracer. */
struct ptrace_rec {
    struct hdr h;
    u32 target_pid; /* ptrace's pid argument: the tracee's tid (its pid for a single-threaded one) */
    u32 pad;
    s64 request;    /* PTRACE_* request number */
    s64 result;     /* 0 (or the peeked word), or -errno */
};

/* process.vm_write: process_vm_writev(2) into another process. Header = writer. */
struct vm_write_rec {
    struct hdr h;
    u32 target_pid; /* pid argument: the process written into */
    u32 pad;
    s64 result;     /* bytes written, or -errno */
};

/* code.module_load: init_module(2) / finit_module(2). Header = the loader. */
struct module_rec {
    struct hdr h;
    u32 syscall;    /* 0: init_module (image from memory), 1: finit_module (from fd) */
    s32 fd;         /* finit_module's fd, -1 for init_module */
    s32 flags;      /* finit_module's MODULE_INIT_* flags, 0 for init_module */
    u32 pad;
    s64 result;     /* 0, or -errno */
};

/* code.bpf_load: bpf(BPF_PROG_LOAD) by any process except the agent. */
struct bpf_load_rec {
    struct hdr h;
    u32 prog_type;  /* BPF_PROG_TYPE_*, read from the caller's attr; 0 if unreadable */
    u32 insn_cnt;   /* instructions, from the same attr */
    s64 result;     /* program fd, or -errno */
    char prog_name[BPF_PROG_NAME_LEN]; /* attr.prog_name, "" if not given or unreadable */
};

/* Records of the later sensors, one header each (a sensor owns its header).
 * Op codes are allocated in ranges so the headers never collide:
 *   9-11 code_events.h (code.load)      12-19 files_events.h (file.write, opens)
 *  20-27 nccl_events.h (nccl.*)         28-35 net_events.h (net.*)
 *  36-37 compat_events.h (process.compat_syscall)
 *  38-39 iouring_events.h (process.io_uring)
 * Numbers #defined in these headers are size limits (documented in the "Size
 * limits" table of docs/events.md), except the codes named OP_* and FW_*. */
#include "code_events.h"
#include "files_events.h"
#include "nccl_events.h"
#include "net_events.h"
#include "compat_events.h"
#include "iouring_events.h"

#endif /* GPUAUDIT_EVENTS_H */
