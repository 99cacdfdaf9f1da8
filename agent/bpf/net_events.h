/* net.* records (agent/bpf/net.c). Op codes 28-35. */
#ifndef GPUAUDIT_NET_EVENTS_H
#define GPUAUDIT_NET_EVENTS_H

#endif /* GPUAUDIT_NET_EVENTS_H */
