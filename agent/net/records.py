"""ctypes mirrors of agent/bpf/net_events.h (checked by tests/integration/test_alignment.py)."""

from __future__ import annotations

import ctypes as ct

from agent.sensors.records import C, Hdr

OP_NET_CONNECT: int = C["OP_NET_CONNECT"]
OP_NET_ACCEPT: int = C["OP_NET_ACCEPT"]
OP_NET_LISTEN: int = C["OP_NET_LISTEN"]
ADDR = ct.c_uint8 * C["NET_ADDR_LEN"]


class NetConnRec(ct.Structure):
    _fields_ = (
        ("h", Hdr),
        ("fd", ct.c_int32),
        ("family", ct.c_uint16),
        ("protocol", ct.c_uint8),
        ("have_local", ct.c_uint8),
        ("have_remote", ct.c_uint8),
        ("pad", ct.c_uint8 * 3),
        ("local_port", ct.c_uint16),
        ("remote_port", ct.c_uint16),
        ("result", ct.c_int64),
        ("local_addr", ADDR),
        ("remote_addr", ADDR),
    )


class NetPeer(ct.Structure):
    _fields_ = (
        ("family", ct.c_uint16),
        ("protocol", ct.c_uint8),
        ("pad", ct.c_uint8),
        ("local_port", ct.c_uint16),
        ("remote_port", ct.c_uint16),
        ("local_addr", ADDR),
        ("remote_addr", ADDR),
    )


class NetRemote(ct.Structure):
    _fields_ = (
        ("family", ct.c_uint16),
        ("port", ct.c_uint16),
        ("addr", ADDR),
    )


class NetFlowKey(ct.Structure):
    _fields_ = (
        ("tgid", ct.c_uint32),
        ("family", ct.c_uint16),
        ("protocol", ct.c_uint8),
        ("pad", ct.c_uint8),
        ("remote_port", ct.c_uint16),
        ("pad2", ct.c_uint16),
        ("remote_addr", ADDR),
    )


class NetFlowVal(ct.Structure):
    _fields_ = (
        ("bytes_sent", ct.c_uint64),
        ("bytes_received", ct.c_uint64),
    )


MIRRORS: dict[str, type] = {
    "net_conn_rec": NetConnRec,
    "net_peer": NetPeer,
    "net_remote": NetRemote,
    "net_flow_key": NetFlowKey,
    "net_flow_val": NetFlowVal,
}
