/* nccl.comm_init / nccl.collective / nccl.comm_end: uprobes on libnccl.
 *
 * None of these functions is attached by bcc at load time: agent/nccl/attach.py
 * attaches them with attach_uprobe/attach_uretprobe to every distinct
 * libnccl file a process maps (the uprobe sticks to the inode, so it fires in
 * every process mapping that file, already running or not).
 *
 * Arguments are read per the x86-64 System V ABI (the only one supported;
 * the runtime refuses others). A struct bigger than 16 bytes is of class
 * MEMORY: the caller copies it onto its stack and it takes NO integer
 * register. So for
 *   ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId commId, int rank)
 * comm is in rdi, nranks in rsi, rank in rdx (PARM3, not PARM4), and at the
 * entry uprobe (first instruction, before any push) the 128-byte commId sits
 * just above the return address: [sp+8, sp+136). ncclCommInitRankConfig is
 * the same with config in rcx. ncclReduce's 7th argument (comm) is the first
 * stack argument: [sp+8]. Checked against the call site the compiler emits
 * for tests/fixtures/fakenccl/driver.c (rep movs of 32 dwords to (%rsp), then
 * rdi/esi/edx) and by tests/integration/test_nccl.py.
 *
 * Collective calls are aggregated here, per (tgid, comm, op, datatype), in
 * nccl_coll: counters only grow (atomic adds), and user space reports the
 * differences between two reads, so no call is lost between a read and a
 * reset. Only entry probes on the collectives: no uretprobe on the hot path.
 */

/* Starts with a struct nccl_comm_id (id, rank, nranks): nccl_comms is
 * written straight from it. */
struct nccl_init_call {
    u8 id[NCCL_ID_LEN];
    s32 rank;
    s32 nranks;
    u64 comm_pp;     /* ncclComm_t* the call will write */
    u32 fn;
    u32 pad;
    u64 ip;
};

struct nccl_end_call {
    u64 comm;
    u32 fn;
    u32 pad;
};

struct nccl_comm_key {
    u32 tgid;
    u32 pad;
    u64 comm;
};

struct nccl_comm_id {
    u8 id[NCCL_ID_LEN];
    s32 rank;        /* -1 for ncclCommInitAll (user space numbers its handles) */
    s32 nranks;
};

/* Arguments parked between entry and return, keyed by pid_tgid (a thread is
 * in one NCCL init or destroy at a time). */
BPF_HASH(nccl_init_args, u64, struct nccl_init_call, 4096);
BPF_HASH(nccl_end_args, u64, struct nccl_end_call, 4096);
/* (tgid, handle) -> ncclUniqueId, written when an init returns: user space
 * names a communicator's collectives from it even before the init record
 * has come through the ring. Entries go when their process exits. */
BPF_HASH(nccl_comms, struct nccl_comm_key, struct nccl_comm_id, 16384);
BPF_HASH(nccl_coll, struct nccl_coll_key, struct nccl_coll_val, 16384);
BPF_HASH(nccl_marks, struct nccl_coll_key, struct nccl_mark, 16384);
/* A zeroed nccl_coll_val to insert from (it is too big for the BPF stack). */
BPF_PERCPU_ARRAY(nccl_zero, struct nccl_coll_val, 1);
/* Collective calls not counted because nccl_coll was full (agent.loss). */
BPF_PERCPU_ARRAY(nccl_dropped, u64, 1);

/* ncclCommInitAll has no unique id: the stand-in is this 8-byte tag, the
 * tgid and the call's time, so all handles of one call share a comm_id. */
#define NCCL_INITALL_TAG 0x4c4c41544e49434eULL /* "NCINTALL" */

static __always_inline u32 nccl_log2(u64 v)
{
    u32 r = 0, s;
    s = (v > 0xFFFFFFFFULL) << 5; v >>= s; r |= s;
    s = (v > 0xFFFF) << 4; v >>= s; r |= s;
    s = (v > 0xFF) << 3; v >>= s; r |= s;
    s = (v > 0xF) << 2; v >>= s; r |= s;
    s = (v > 0x3) << 1; v >>= s; r |= s;
    return r | (u32)(v >> 1);
}

static __always_inline void nccl_mark_accel(void)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    u8 one = 1;
    accel_procs.update(&tgid, &one);
}

static __always_inline int nccl_init_enter(struct pt_regs *ctx, u32 fn)
{
    struct nccl_init_call c = {};
    u64 id = bpf_get_current_pid_tgid();
    c.comm_pp = PT_REGS_PARM1(ctx);
    c.nranks = (s32)PT_REGS_PARM2(ctx);
    c.fn = fn;
    c.ip = PT_REGS_IP(ctx);
    if (fn == NCCL_FN_INIT_ALL) {
        u64 tag[3] = {NCCL_INITALL_TAG, id >> 32, bpf_ktime_get_boot_ns()};
        __builtin_memcpy(c.id, tag, sizeof(tag));
        c.rank = -1;
    } else {
        c.rank = (s32)PT_REGS_PARM3(ctx); /* commId took no register: see top */
        bpf_probe_read_user(c.id, sizeof(c.id), (void *)(PT_REGS_SP(ctx) + 8));
    }
    if (nccl_init_args.update(&id, &c) != 0)
        count_lost();
    nccl_mark_accel();
    return 0;
}

int nccl_up_init_rank(struct pt_regs *ctx) { return nccl_init_enter(ctx, NCCL_FN_INIT_RANK); }
int nccl_up_init_config(struct pt_regs *ctx) { return nccl_init_enter(ctx, NCCL_FN_INIT_RANK_CONFIG); }
int nccl_up_init_all(struct pt_regs *ctx) { return nccl_init_enter(ctx, NCCL_FN_INIT_ALL); }

/* Remembers handle -> id for a communicator the call created (the id is
 * copied from the parked call, a map value whose head is a struct
 * nccl_comm_id: no 136 bytes on the stack). */
static __always_inline void nccl_remember(u32 tgid, u64 comm, struct nccl_init_call *c)
{
    struct nccl_comm_key k = {.tgid = tgid, .comm = comm};
    nccl_comms.update(&k, (struct nccl_comm_id *)c);
}

int nccl_ret_init(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    struct nccl_init_call *c = nccl_init_args.lookup(&id);
    if (!c)
        return 0; /* the entry probe was attached after the call began */
    struct nccl_init_rec *r = events.ringbuf_reserve(sizeof(struct nccl_init_rec));
    if (!r) {
        count_lost();
        nccl_init_args.delete(&id);
        return 0;
    }
    fill_hdr(&r->h, OP_NCCL_INIT);
    r->fn = c->fn;
    r->nranks = c->nranks;
    r->rank = c->rank;
    r->result = (s32)PT_REGS_RC(ctx);
    r->ip = c->ip;
    r->pad = 0;
    __builtin_memcpy(r->id, c->id, sizeof(r->id));
    u32 n = c->fn == NCCL_FN_INIT_ALL ? (u32)c->nranks : 1;
    /* ncclInProgress: a non-blocking init; the handle is already valid */
    int ok = r->result == 0 || r->result == 7;
    u32 i;
    for (i = 0; i < NCCL_MAX_COMMS; i++) {
        r->comms[i] = 0;
        if (i >= n || !ok)
            continue;
        bpf_probe_read_user(&r->comms[i], sizeof(u64), (void *)(c->comm_pp + i * sizeof(u64)));
        if (r->comms[i])
            nccl_remember(id >> 32, r->comms[i], c);
    }
    r->ncomms = ok ? (n < NCCL_MAX_COMMS ? n : NCCL_MAX_COMMS) : 0;
    nccl_init_args.delete(&id);
    events.ringbuf_submit(r, 0);
    return 0;
}

static __always_inline int nccl_end_enter(struct pt_regs *ctx, u32 fn)
{
    struct nccl_end_call c = {.comm = PT_REGS_PARM1(ctx), .fn = fn};
    u64 id = bpf_get_current_pid_tgid();
    if (nccl_end_args.update(&id, &c) != 0)
        count_lost();
    return 0;
}

int nccl_up_destroy(struct pt_regs *ctx) { return nccl_end_enter(ctx, NCCL_FN_DESTROY); }
int nccl_up_abort(struct pt_regs *ctx) { return nccl_end_enter(ctx, NCCL_FN_ABORT); }

int nccl_ret_end(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    struct nccl_end_call *c = nccl_end_args.lookup(&id);
    if (!c)
        return 0;
    struct nccl_end_rec *r = events.ringbuf_reserve(sizeof(struct nccl_end_rec));
    if (!r) {
        count_lost();
        nccl_end_args.delete(&id);
        return 0;
    }
    fill_hdr(&r->h, OP_NCCL_END);
    r->fn = c->fn;
    r->result = (s32)PT_REGS_RC(ctx);
    r->comm = c->comm;
    r->pad = 0;
    /* The handle's entry stays: the last collectives of this communicator
     * are reported after this, and need its name. */
    struct nccl_comm_key k = {.tgid = id >> 32, .comm = c->comm};
    struct nccl_comm_id *known = nccl_comms.lookup(&k);
    r->known = known != NULL;
    if (known)
        __builtin_memcpy(r->id, known->id, sizeof(r->id));
    else
        __builtin_memset(r->id, 0, sizeof(r->id));
    nccl_end_args.delete(&id);
    events.ringbuf_submit(r, 0);
    return 0;
}

/* Stamps the first call past the last report (see struct nccl_mark). */
static __always_inline void nccl_stamp(struct nccl_coll_key *k, u64 n, u64 now)
{
    struct nccl_mark *m = nccl_marks.lookup(k);
    if (m && m->first_ns == 0 && n > m->calls) {
        m->first_ns = now;
        m->first_call = n;
    }
}

/* ncclDataType_t is an int: only the low 32 bits of its register are
 * defined. Values past the table are kept apart as NCCL_DTYPE_NONE - 1. */
#define NCCL_DT(reg) ((u32)(reg) < NCCL_DTYPE_NONE ? (u16)(u32)(reg) : NCCL_DTYPE_NONE - 1)

static __always_inline int nccl_coll_call(u16 op, u64 count, u16 dtype, u64 comm)
{
    u64 now = bpf_ktime_get_boot_ns();
    struct nccl_coll_key k = {};
    k.tgid = bpf_get_current_pid_tgid() >> 32;
    k.op = op;
    k.datatype = dtype;
    k.comm = comm;
    struct nccl_coll_val *v = nccl_coll.lookup(&k);
    if (!v) {
        u32 zero = 0;
        struct nccl_coll_val *z = nccl_zero.lookup(&zero);
        if (z)
            nccl_coll.insert(&k, z); /* NOEXIST: a racing insert of the same key wins */
        v = nccl_coll.lookup(&k);
        if (!v) {
            u64 *d = nccl_dropped.lookup(&zero);
            if (d)
                (*d)++;
            return 0;
        }
    }
    u64 n = __sync_fetch_and_add(&v->calls, 1) + 1;
    __sync_fetch_and_add(&v->elems, count);
    /* last_ns is a plain store: NCCL forbids using one communicator from two
     * threads at once, so calls of one key do not overlap; were they to,
     * only an interval would be off, never a count. */
    u64 prev = v->last_ns;
    v->last_ns = now;
    if (n == 1) {
        v->first_ns = now;
    } else {
        u32 b = now > prev ? nccl_log2(now - prev) : 0;
        if (b >= NCCL_HIST_BUCKETS)
            b = NCCL_HIST_BUCKETS - 1;
        __sync_fetch_and_add(&v->hist[b], 1);
    }
    nccl_stamp(&k, n, now);
    return 0;
}

/* (sendbuff, recvbuff, count, datatype, op|root, comm, stream) */
int nccl_up_allreduce(struct pt_regs *ctx)
{
    return nccl_coll_call(NCCL_OP_ALLREDUCE, PT_REGS_PARM3(ctx), NCCL_DT(PT_REGS_PARM4(ctx)), PT_REGS_PARM6(ctx));
}

int nccl_up_broadcast(struct pt_regs *ctx)
{
    return nccl_coll_call(NCCL_OP_BROADCAST, PT_REGS_PARM3(ctx), NCCL_DT(PT_REGS_PARM4(ctx)), PT_REGS_PARM6(ctx));
}

int nccl_up_reducescatter(struct pt_regs *ctx)
{
    return nccl_coll_call(NCCL_OP_REDUCESCATTER, PT_REGS_PARM3(ctx), NCCL_DT(PT_REGS_PARM4(ctx)), PT_REGS_PARM6(ctx));
}

/* (sendbuff, recvbuff, count, datatype, op, root, comm, stream): comm is the 7th */
int nccl_up_reduce(struct pt_regs *ctx)
{
    u64 comm = 0;
    bpf_probe_read_user(&comm, sizeof(comm), (void *)(PT_REGS_SP(ctx) + 8));
    return nccl_coll_call(NCCL_OP_REDUCE, PT_REGS_PARM3(ctx), NCCL_DT(PT_REGS_PARM4(ctx)), comm);
}

/* (sendbuff, recvbuff, sendcount, datatype, comm, stream) */
int nccl_up_allgather(struct pt_regs *ctx)
{
    return nccl_coll_call(NCCL_OP_ALLGATHER, PT_REGS_PARM3(ctx), NCCL_DT(PT_REGS_PARM4(ctx)), PT_REGS_PARM5(ctx));
}

/* (buff, count, datatype, peer, comm, stream) */
int nccl_up_send(struct pt_regs *ctx)
{
    return nccl_coll_call(NCCL_OP_SEND, PT_REGS_PARM2(ctx), NCCL_DT(PT_REGS_PARM3(ctx)), PT_REGS_PARM5(ctx));
}

int nccl_up_recv(struct pt_regs *ctx)
{
    return nccl_coll_call(NCCL_OP_RECV, PT_REGS_PARM2(ctx), NCCL_DT(PT_REGS_PARM3(ctx)), PT_REGS_PARM5(ctx));
}

int nccl_up_group_start(struct pt_regs *ctx) { return nccl_coll_call(NCCL_OP_GROUPSTART, 0, NCCL_DTYPE_NONE, 0); }
int nccl_up_group_end(struct pt_regs *ctx) { return nccl_coll_call(NCCL_OP_GROUPEND, 0, NCCL_DTYPE_NONE, 0); }
