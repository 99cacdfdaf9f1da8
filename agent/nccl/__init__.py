"""User-space side of the nccl.* sensor: the NCCL tables (datatypes, ops),
the kernel counter deltas behind nccl.collective, and attaching uprobes to
every distinct libnccl a process maps. The kernel side is agent/bpf/nccl.c;
the sensor entry is agent/sensors/nccl.py."""
