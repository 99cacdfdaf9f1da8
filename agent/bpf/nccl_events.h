/* nccl.* records (agent/bpf/nccl.c). Op codes 20-27.
 *
 * nccl.comm_init and nccl.comm_end travel in the ring buffer; nccl.collective
 * does not: the kernel aggregates calls in the nccl_coll map (key/value
 * below) and user space reads it every --nccl-flush seconds. */
#ifndef GPUAUDIT_NCCL_EVENTS_H
#define GPUAUDIT_NCCL_EVENTS_H

#define OP_NCCL_INIT 20
#define OP_NCCL_END 21

#define NCCL_ID_LEN 128       /* sizeof(ncclUniqueId): NCCL_UNIQUE_ID_BYTES */
#define NCCL_MAX_COMMS 16     /* ncclCommInitAll handles read per call (devices per node) */
#define NCCL_HIST_BUCKETS 48  /* log2(ns) interval buckets: the last holds >= 2^47 ns (39 h) */
#define NCCL_MAX_EXCLUDED 16  /* ncclCommShrink: excluded ranks read per call */

/* Codes inside the records and map keys: enums, not #defines, as they are
 * no size limits (agent/nccl/types.py reads them from this file). */
enum nccl_init_fn {
    NCCL_FN_INIT_RANK = 0,
    NCCL_FN_INIT_RANK_CONFIG = 1,
    NCCL_FN_INIT_ALL = 2,
    NCCL_FN_INIT_RANK_SCALABLE = 3, /* comm_id from commIds[0] */
    NCCL_FN_SPLIT = 4,              /* ncclCommSplit: a derived communicator */
    NCCL_FN_SHRINK = 5,             /* ncclCommShrink: a derived communicator */
};
enum nccl_end_fn { NCCL_FN_DESTROY = 0, NCCL_FN_ABORT = 1 };
enum nccl_coll_op {
    NCCL_OP_ALLREDUCE = 0,
    NCCL_OP_BROADCAST = 1,
    NCCL_OP_REDUCE = 2,
    NCCL_OP_ALLGATHER = 3,
    NCCL_OP_REDUCESCATTER = 4,
    NCCL_OP_SEND = 5,
    NCCL_OP_RECV = 6,
    NCCL_OP_GROUPSTART = 7,
    NCCL_OP_GROUPEND = 8,
    NCCL_OP_ALLTOALL = 9,  /* in NCCL 2.32 */
    NCCL_OP_GATHER = 10,
    NCCL_OP_SCATTER = 11,
    NCCL_OP_PUTSIGNAL = 12, /* one-sided put into a peer's window (in NCCL 2.32) */
    NCCL_OP_SIGNAL = 13,    /* no data: datatype NCCL_DTYPE_NONE */
    NCCL_OP_WAITSIGNAL = 14, /* no data; elems counts the descriptors waited on */
};
/* nccl_coll_key.datatype of GroupStart/GroupEnd; NCCL_DTYPE_NONE - 1 is
 * any ncclDataType_t value past 254 */
enum nccl_dtype_none { NCCL_DTYPE_NONE = 255 };

/* nccl.comm_init: emitted when ncclCommInitRank/-Config/-All/-Scalable,
 * ncclCommSplit or ncclCommShrink returns. */
struct nccl_init_rec {
    struct hdr h;
    u32 fn;          /* enum nccl_init_fn */
    s32 nranks;      /* nranks (ndev for ncclCommInitAll; -1 for Split/Shrink: not known yet) */
    s32 rank;        /* rank argument; -1 for ncclCommInitAll, ncclCommSplit, ncclCommShrink */
    s32 result;      /* ncclResult_t returned */
    u64 ip;          /* address of the entry point in the caller: names the library mapped there */
    u32 ncomms;      /* handles read into comms[] */
    u32 pad;
    u64 comms[NCCL_MAX_COMMS]; /* ncclComm_t handles the call wrote (*comm, or comm[0..ndev)) */
    u8 id[NCCL_ID_LEN];        /* the ncclUniqueId; for InitAll a per-call stand-in, for
                                * Split/Shrink one derived from the parent's (nccl.c) */
    u64 parent;      /* ncclCommSplit/-Shrink: the parent ncclComm_t; 0 otherwise */
    s32 color;       /* ncclCommSplit: color argument */
    s32 key;         /* ncclCommSplit: key argument */
    u32 id_known;    /* 0 when id[] is unknown (a split of a parent whose init was not seen) */
    s32 nexcluded;   /* ncclCommShrink: excludeRanksCount */
    s32 excluded[NCCL_MAX_EXCLUDED]; /* ncclCommShrink: its first excluded ranks */
};

/* nccl.comm_end: emitted when ncclCommDestroy/ncclCommAbort returns. */
struct nccl_end_rec {
    struct hdr h;
    u32 fn;          /* enum nccl_end_fn */
    s32 result;      /* ncclResult_t returned */
    u64 comm;        /* the ncclComm_t handle */
    u32 known;       /* 1 when id[] holds the communicator's id (its init was seen) */
    u32 pad;
    u8 id[NCCL_ID_LEN];
};

/* nccl_coll map key: one process, one communicator, one operation, one datatype. */
struct nccl_coll_key {
    u32 tgid;
    u16 op;          /* enum nccl_coll_op */
    u16 datatype;    /* ncclDataType_t, NCCL_DTYPE_NONE for groups */
    u64 comm;        /* ncclComm_t handle; 0 for groups */
};

/* nccl_coll map value: cumulative since the first call (never reset: user
 * space reports differences, so no call is lost between a read and a reset). */
struct nccl_coll_val {
    u64 calls;
    u64 elems;       /* sum of the count arguments (bytes = elems x datatype size) */
    u64 first_ns;    /* bpf_ktime_get_boot_ns() of the first call */
    u64 last_ns;     /* of the latest call */
    u64 hist[NCCL_HIST_BUCKETS]; /* intervals between consecutive calls: bucket i = [2^i, 2^(i+1)) ns */
};

/* nccl_marks map value (same key): set by user space after each read to the
 * calls it saw; the kernel stamps the first call past it, which is the first
 * call of the next report. */
struct nccl_mark {
    u64 calls;       /* cumulative calls at the last report */
    u64 first_ns;    /* time of the first call after it, 0 until one came */
    u64 first_call;  /* that call's cumulative number (calls + 1 unless calls slipped in) */
};

#endif /* GPUAUDIT_NCCL_EVENTS_H */
