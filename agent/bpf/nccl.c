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
 *
 * Where: at the function's first instruction, or 4 bytes in when it starts
 * with endbr64 (agent/nccl/prologue.py): endbr64 touches no register, flag or
 * the stack pointer, so every read below (registers, [sp+8...]) is the same
 * there, and the kernel emulates the push that usually follows instead of
 * single-stepping the endbr64 (~0.5 us instead of ~6 us per call).
 *
 * NCCL 2.32's nccl*Config collectives take the plain one's arguments plus a
 * trailing const ncclCollConfig_t*, and are separate entry points (neither
 * calls the other): the same programs are attached to both.
 */

/* Starts with a struct nccl_comm_id (id, rank, nranks): nccl_comms is
 * written straight from it. */
struct nccl_init_call {
    u8 id[NCCL_ID_LEN];
    s32 rank;
    s32 nranks;
    u64 comm_pp;     /* ncclComm_t* the call will write */
    u32 fn;
    u32 id_known;    /* 0: id[] unknown (split of an unseen parent): nothing remembered */
    u64 ip;
    u64 parent;      /* ncclCommSplit/-Shrink only */
    s32 color;
    s32 key;
    s32 nexcluded;   /* ncclCommShrink only */
    s32 excluded[NCCL_MAX_EXCLUDED];
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
/* ncclCommSplit's parked call, built off the stack. */
BPF_PERCPU_ARRAY(nccl_split_scratch, struct nccl_init_call, 1);
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
    c.id_known = 1;
    if (fn == NCCL_FN_INIT_ALL) {
        u64 tag[3] = {NCCL_INITALL_TAG, id >> 32, bpf_ktime_get_boot_ns()};
        __builtin_memcpy(c.id, tag, sizeof(tag));
        c.rank = -1;
    } else if (fn == NCCL_FN_INIT_RANK_SCALABLE) {
        /* (newcomm, nranks, myrank, nId, commIds, config): every rank passes
         * the same nId ids in the same order, so commIds[0] names the
         * communicator on every rank (nId >= 1, else NCCL refuses the call). */
        c.rank = (s32)PT_REGS_PARM3(ctx);
        if (bpf_probe_read_user(c.id, sizeof(c.id), (void *)PT_REGS_PARM5(ctx)) != 0)
            c.id_known = 0;
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
int nccl_up_init_scalable(struct pt_regs *ctx) { return nccl_init_enter(ctx, NCCL_FN_INIT_RANK_SCALABLE); }

/* splitmix64's finalizer: a bijection of u64 (mirrored in agent/nccl/types.py). */
static __always_inline u64 nccl_mix64(u64 z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

#define NCCL_SPLIT_TAG 0x54494c5053434e4eULL /* "NNCSPLIT" */
#define NCCL_SHRINK_TAG 0x4b4e49524853434eULL /* "NCSHRINK" */

/* The derived stand-in id of a child of the communicator (tgid, parent):
 * each 64-bit word of the parent's id mixed with the salt and its index
 * (agent/nccl/types.py derive_id). id_known = 0 when the parent's init was
 * not seen. */
static __always_inline void nccl_derive(struct nccl_init_call *c, u32 tgid, u64 salt)
{
    struct nccl_comm_key k = {.tgid = tgid, .comm = c->parent};
    struct nccl_comm_id *p = nccl_comms.lookup(&k);
    c->id_known = p != NULL;
    u32 i;
#pragma unroll
    for (i = 0; i < NCCL_ID_LEN / 8; i++) {
        u64 w = 0;
        if (p)
            __builtin_memcpy(&w, &p->id[i * 8], 8);
        w = nccl_mix64(w ^ salt ^ ((u64)i << 56));
        __builtin_memcpy(&c->id[i * 8], &w, 8);
    }
}

/* The parked call of a Split or Shrink, built in a per-CPU scratch slot
 * (the stack holds only 512 bytes). */
static __always_inline struct nccl_init_call *nccl_derived_call(struct pt_regs *ctx, u32 fn)
{
    u32 zero = 0;
    struct nccl_init_call *c = nccl_split_scratch.lookup(&zero);
    if (!c)
        return 0;
    c->parent = PT_REGS_PARM1(ctx);
    c->rank = -1;
    c->nranks = -1;
    c->fn = fn;
    c->ip = PT_REGS_IP(ctx);
    c->color = 0;
    c->key = 0;
    c->nexcluded = 0;
    __builtin_memset(c->excluded, 0, sizeof(c->excluded));
    return c;
}

static __always_inline int nccl_park_derived(struct nccl_init_call *c, u64 id)
{
    if (nccl_init_args.update(&id, c) != 0)
        count_lost();
    nccl_mark_accel();
    return 0;
}

/* ncclCommSplit(comm, color, key, newcomm, config): a collective call over
 * the parent's ranks; those passing one color make one child. The child has
 * no unique id of its own, so its stand-in is derived from the parent's id
 * and the color, word by word through a bijection: equal on every rank of
 * one child (same parent, same color), different for another color or
 * parent, and a split of a split derives again (agent/nccl/types.py
 * split_id is the same function). Unknown when the parent's init was not
 * seen: then the child's comm_id is "". Its rank and size are not known at
 * this point (key orders the ranks; NCCL computes them inside the call). */
int nccl_up_split(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    struct nccl_init_call *c = nccl_derived_call(ctx, NCCL_FN_SPLIT);
    if (!c)
        return 0;
    c->comm_pp = PT_REGS_PARM4(ctx);
    c->color = (s32)PT_REGS_PARM2(ctx);
    c->key = (s32)PT_REGS_PARM3(ctx);
    nccl_derive(c, id >> 32, NCCL_SPLIT_TAG ^ ((u64)(u32)c->color * 0x9e3779b97f4a7c15ULL));
    return nccl_park_derived(c, id);
}

/* ncclCommShrink(comm, excludeRanksList, excludeRanksCount, newcomm, config,
 * shrinkFlags): every surviving rank passes the same list and joins one
 * child, named from the parent's id and the list (its count and first
 * NCCL_MAX_EXCLUDED ranks, in order): types.py shrink_id. An excluded rank
 * that calls gets no communicator (comm_handles empty). */
int nccl_up_shrink(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    struct nccl_init_call *c = nccl_derived_call(ctx, NCCL_FN_SHRINK);
    if (!c)
        return 0;
    c->comm_pp = PT_REGS_PARM4(ctx);
    c->nexcluded = (s32)PT_REGS_PARM3(ctx);
    u64 list = PT_REGS_PARM2(ctx);
    u64 salt = nccl_mix64(NCCL_SHRINK_TAG ^ (u64)(u32)c->nexcluded);
    u32 i;
#pragma unroll
    for (i = 0; i < NCCL_MAX_EXCLUDED; i++) {
        if ((s32)i >= c->nexcluded)
            break;
        s32 r = 0;
        bpf_probe_read_user(&r, sizeof(r), (void *)(list + i * sizeof(s32)));
        c->excluded[i] = r;
        salt = nccl_mix64(salt ^ (u64)(u32)r ^ ((u64)i << 32));
    }
    nccl_derive(c, id >> 32, salt);
    return nccl_park_derived(c, id);
}

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
    r->parent = c->parent;
    r->color = c->color;
    r->key = c->key;
    r->id_known = c->id_known;
    r->nexcluded = c->nexcluded;
    __builtin_memcpy(r->excluded, c->excluded, sizeof(r->excluded));
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
        if (r->comms[i] && c->id_known)
            nccl_remember(id >> 32, r->comms[i], c);
    }
    r->ncomms = ok ? (n < NCCL_MAX_COMMS ? n : NCCL_MAX_COMMS) : 0;
    if (n == 1 && r->comms[0] == 0)
        r->ncomms = 0; /* no communicator: NCCL_SPLIT_NOCOLOR, or a failed call */
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

/* (sendbuff, recvbuff, count, datatype, comm, stream): count per peer */
int nccl_up_alltoall(struct pt_regs *ctx)
{
    return nccl_coll_call(NCCL_OP_ALLTOALL, PT_REGS_PARM3(ctx), NCCL_DT(PT_REGS_PARM4(ctx)), PT_REGS_PARM5(ctx));
}

/* (sendbuff, recvbuff, count, datatype, root, comm, stream): count per rank */
int nccl_up_gather(struct pt_regs *ctx)
{
    return nccl_coll_call(NCCL_OP_GATHER, PT_REGS_PARM3(ctx), NCCL_DT(PT_REGS_PARM4(ctx)), PT_REGS_PARM6(ctx));
}

int nccl_up_scatter(struct pt_regs *ctx)
{
    return nccl_coll_call(NCCL_OP_SCATTER, PT_REGS_PARM3(ctx), NCCL_DT(PT_REGS_PARM4(ctx)), PT_REGS_PARM6(ctx));
}

/* One-sided (NCCL 2.32): (localbuff, count, datatype, peer, peerWin,
 * peerWinOffset, sigIdx, ctx, flags, comm, stream): the 7th-11th arguments
 * are on the stack, 8 bytes each, so comm is [sp+32]. */
int nccl_up_putsignal(struct pt_regs *ctx)
{
    u64 comm = 0;
    bpf_probe_read_user(&comm, sizeof(comm), (void *)(PT_REGS_SP(ctx) + 32));
    return nccl_coll_call(NCCL_OP_PUTSIGNAL, PT_REGS_PARM2(ctx), NCCL_DT(PT_REGS_PARM3(ctx)), comm);
}

/* (peer, sigIdx, ctx, flags, comm, stream) */
int nccl_up_signal(struct pt_regs *ctx)
{
    return nccl_coll_call(NCCL_OP_SIGNAL, 0, NCCL_DTYPE_NONE, PT_REGS_PARM5(ctx));
}

/* (nDesc, signalDescs, comm, stream) */
int nccl_up_waitsignal(struct pt_regs *ctx)
{
    return nccl_coll_call(NCCL_OP_WAITSIGNAL, (u32)PT_REGS_PARM1(ctx), NCCL_DTYPE_NONE, PT_REGS_PARM3(ctx));
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
