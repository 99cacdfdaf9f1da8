/* Records of the io_uring sensor (agent/bpf/iouring.c): process.io_uring.
 * Op codes 38-39 are this header's range. */
#ifndef GPUAUDIT_IOURING_EVENTS_H
#define GPUAUDIT_IOURING_EVENTS_H

#define OP_IOURING_SETUP 38
#define OP_IOURING_OP 39

#define IOURING_OP_NAME_LEN 24
#define IOURING_USE_ENTRIES 16384

/* process.io_uring kind "setup": io_uring_setup(2) made a ring.
 * Header = the creator (the tracepoint fires inside its syscall). */
struct iouring_setup_rec {
    struct hdr h;
    u64 ring;       /* kernel address of the ring: an opaque key, never shown as is */
    s32 fd;         /* the ring's fd (an index with IORING_SETUP_REGISTERED_FD_ONLY) */
    u32 sq_entries;
    u32 cq_entries;
    u32 flags;      /* IORING_SETUP_* */
};

/* process.io_uring kind "op": the first submission of an opcode by a process.
 * Header = the submitter: the io_uring_enter(2) caller, or the ring's SQPOLL
 * thread (a thread of the ring creator's process: same tgid, comm iou-sqp-*). */
struct iouring_op_rec {
    struct hdr h;
    u64 ring;       /* kernel address of the ring it was submitted to (opaque key) */
    u64 user_data;  /* the submitter's tag of the request */
    u32 sqe_flags;  /* IOSQE_* bits (the low byte of the request's flags) */
    u8 opcode;      /* IORING_OP_* */
    u8 sq_thread;   /* 1: submitted by the SQPOLL thread */
    u8 pad[2];
    char op_name[IOURING_OP_NAME_LEN]; /* the kernel's own name of the opcode */
};

/* Key and value of the iouring_use map: one entry per (process, opcode). */
struct iouring_use_key {
    u32 tgid;
    u32 opcode;
};

struct iouring_use {
    struct iouring_op_rec first; /* the first submission, as reported */
    u64 count;      /* submissions so far (cumulative; user space takes deltas) */
    u32 notified;   /* 1: `first` went into the ring buffer; 0: user space reports it */
    u32 pad;
};

#endif /* GPUAUDIT_IOURING_EVENTS_H */
