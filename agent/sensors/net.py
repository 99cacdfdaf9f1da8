"""net.* sensor: connections and flows of GPU/NCCL processes (agent/bpf/net.c).

The kernel side filters on is_gpu_or_nccl_proc and counts bytes per
(process, peer); the user-space side (agent/net/) decodes addresses, fills
in from /proc what the kernel could not see, judges peer_in_cluster and
turns the counters into net.flow deltas every ``net_flow_s`` seconds.
"""

from __future__ import annotations

from agent.net.records import MIRRORS
from agent.net.runtime import NetRuntime
from agent.sensors.base import BpfSensor

SENSOR = BpfSensor(
    name="net",
    source="net.c",
    required_tracepoints=(
        "syscalls:sys_enter_connect",
        "syscalls:sys_exit_connect",
        "syscalls:sys_enter_accept",
        "syscalls:sys_exit_accept",
        "syscalls:sys_enter_accept4",
        "syscalls:sys_exit_accept4",
        "syscalls:sys_enter_listen",
        "syscalls:sys_exit_listen",
        "sock:inet_sock_set_state",
        "sock:sock_send_length",
        "sock:sock_recv_length",
    ),
    # learns the peer of sockets set up before the process was watched
    optional_tracepoints=("tcp:tcp_rcv_space_adjust",),
    mirrors=MIRRORS,
    runtime=NetRuntime,
)
