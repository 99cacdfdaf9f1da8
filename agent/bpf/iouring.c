/* process.io_uring: what processes do through io_uring rings.
 *
 * Requests submitted through a ring (IORING_OP_OPENAT, RENAMEAT, CONNECT,
 * WRITE, ...) are carried out inside the kernel without the syscall of the
 * same name, so no syscalls:sys_enter_* tracepoint -- none of the other
 * sensors -- sees them. The io_uring tracepoints do, but only as far as their
 * arguments go: the opcode, the ring and the submitter's tag, never the
 * request's own arguments (the path, the address: the kernel copies those
 * from the SQE into the request, which we must not dereference). So this
 * sensor says WHO uses io_uring for WHAT kind of operation, and how often.
 *
 * - io_uring_create fires inside io_uring_setup(2), in the creator's context:
 *   one record per ring (OP_IOURING_SETUP).
 * - io_uring_submit_req fires for every request taken off a submission queue,
 *   in the submitter's context: the io_uring_enter(2) caller, or the ring's
 *   SQPOLL thread, which is a thread of the ring creator's process (same tgid,
 *   comm iou-sqp-PID), so bpf_get_current_pid_tgid() names the process either
 *   way. io-wq workers (iou-wrk-PID) only execute requests; they submit none.
 *   One iouring_use entry per (tgid, opcode) counts them; the first one of a
 *   key is also sent to the ring buffer (OP_IOURING_OP). User space
 *   (agent/sensors/iouring.py) reads the counts every few seconds, reports the
 *   increases and deletes the entries of processes that ended.
 *
 * No loss is silent and none is needed: a first submission whose ring record
 * could not be reserved stays in the map with notified = 0 and user space
 * reports it from there. Only a full map loses: those submissions are counted
 * in iouring_untracked (agent.loss "iouring_untracked").
 *
 * Cost: these tracepoints fire only for io_uring requests; every other
 * syscall of the node pays nothing. Per request: one hash lookup and an
 * atomic add.
 */
#include "iouring_events.h"

BPF_HASH(iouring_use, struct iouring_use_key, struct iouring_use, IOURING_USE_ENTRIES);
BPF_PERCPU_ARRAY(iouring_untracked, u64, 1);

#define IOURING_SQE_FLAGS_MASK 0xff /* REQ_F_* bits 0-7 are the IOSQE_* bits */

TRACEPOINT_PROBE(io_uring, io_uring_create)
{
    struct iouring_setup_rec *r = events.ringbuf_reserve(sizeof(struct iouring_setup_rec));
    if (!r) {
        count_lost();
        return 0;
    }
    fill_hdr(&r->h, OP_IOURING_SETUP);
    r->ring = (u64)args->ctx;
    r->fd = args->fd;
    r->sq_entries = args->sq_entries;
    r->cq_entries = args->cq_entries;
    r->flags = args->flags;
    events.ringbuf_submit(r, 0);
    return 0;
}

TRACEPOINT_PROBE(io_uring, io_uring_submit_req)
{
    struct iouring_use_key key = {};
    key.tgid = bpf_get_current_pid_tgid() >> 32;
    key.opcode = args->opcode;
    struct iouring_use *u = iouring_use.lookup(&key);
    if (u) {
        __sync_fetch_and_add(&u->count, 1);
        return 0;
    }
    /* First of its key (rare): the whole record is built once, kept in the
     * map and, if the ring buffer has room, sent. Whether it was sent is
     * decided before the insert, so user space never reports it twice. */
    struct iouring_use v = {};
    fill_hdr(&v.first.h, OP_IOURING_OP);
    v.first.ring = (u64)args->ctx;
    v.first.user_data = args->user_data;
    v.first.sqe_flags = (u32)(args->flags & IOURING_SQE_FLAGS_MASK);
    v.first.opcode = args->opcode;
    v.first.sq_thread = args->sq_thread ? 1 : 0;
    TP_DATA_LOC_READ_STR(v.first.op_name, op_str, sizeof(v.first.op_name));
    v.count = 1;
    struct iouring_op_rec *r = events.ringbuf_reserve(sizeof(struct iouring_op_rec));
    v.notified = r != NULL;
    if (iouring_use.insert(&key, &v) != 0) {
        if (r)
            events.ringbuf_discard(r, 0);
        /* another CPU inserted the key just now, or the map is full */
        u = iouring_use.lookup(&key);
        if (u) {
            __sync_fetch_and_add(&u->count, 1);
        } else {
            u32 zero = 0;
            u64 *n = iouring_untracked.lookup(&zero);
            if (n)
                (*n)++;
        }
        return 0;
    }
    if (r) {
        __builtin_memcpy(r, &v.first, sizeof(struct iouring_op_rec));
        events.ringbuf_submit(r, 0);
    }
    return 0;
}
