/* Shared maps and helpers for all gpuaudit BPF sensors.
 *
 * All sensors are compiled into ONE bcc program (agent/sensors/loader.py) so
 * they share one ring buffer and one loss counter, and user space polls one fd.
 */
#ifndef GPUAUDIT_COMMON_H
#define GPUAUDIT_COMMON_H

#include <uapi/linux/ptrace.h>
#include "events.h"

#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 1024 /* 4 MiB; must be a power of two */
#endif

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);

/* Records the kernel could not reserve in the ring buffer (buffer full).
 * Per-CPU so the hot path never contends; user space sums the CPUs. */
BPF_PERCPU_ARRAY(lost, u64, 1);

/* tgid of the parent at fork time, keyed by child pid. Lets exec/exit records
 * carry ppid without reading task_struct. LRU: bounded under fork storms. */
BPF_TABLE("lru_hash", u32, u32, fork_parent, 65536);

/* tgids that successfully opened a GPU device (process.exit's held_gpu).
 * User space also inserts processes found holding GPU fds at start. */
BPF_TABLE("lru_hash", u32, u8, gpu_holders, 65536);

/* tgids that mapped libcuda or libnccl (inserted by user space when code.load
 * sees the mapping, and by the NCCL uprobes). With gpu_holders this is "a GPU
 * or NCCL process" for the network sensor's in-kernel filter. */
BPF_TABLE("lru_hash", u32, u8, accel_procs, 65536);

static __always_inline int is_gpu_or_nccl_proc(u32 tgid)
{
    return gpu_holders.lookup(&tgid) != NULL || accel_procs.lookup(&tgid) != NULL;
}

static __always_inline void count_lost(void)
{
    u32 zero = 0;
    u64 *v = lost.lookup(&zero);
    if (v)
        (*v)++;
}

static __always_inline void fill_hdr(struct hdr *h, u8 op)
{
    u64 id = bpf_get_current_pid_tgid();
    u64 ug = bpf_get_current_uid_gid();

    h->op = op;
    h->pid = id >> 32;
    h->tid = (u32)id;
    h->uid = (u32)ug;
    h->gid = ug >> 32;
    h->ktime_ns = bpf_ktime_get_boot_ns();
    h->cgroup_id = bpf_get_current_cgroup_id();
    bpf_get_current_comm(&h->comm, sizeof(h->comm));
    u32 *pp = fork_parent.lookup(&h->pid);
    h->ppid = pp ? *pp : 0;
}

#endif /* GPUAUDIT_COMMON_H */
