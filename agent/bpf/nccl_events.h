/* nccl.* records (agent/bpf/nccl.c). Op codes 20-27. */
#ifndef GPUAUDIT_NCCL_EVENTS_H
#define GPUAUDIT_NCCL_EVENTS_H

#endif /* GPUAUDIT_NCCL_EVENTS_H */
