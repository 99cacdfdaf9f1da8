"""ctypes mirrors of agent/bpf/nccl_events.h (checked against the compiled
layout by tests/integration/test_alignment.py)."""

from __future__ import annotations

import ctypes as ct

from agent.sensors.records import C, Hdr

OP_NCCL_INIT: int = C["OP_NCCL_INIT"]
OP_NCCL_END: int = C["OP_NCCL_END"]
ID_LEN: int = C["NCCL_ID_LEN"]
MAX_COMMS: int = C["NCCL_MAX_COMMS"]
HIST_BUCKETS: int = C["NCCL_HIST_BUCKETS"]
MAX_EXCLUDED: int = C["NCCL_MAX_EXCLUDED"]


class NcclInitRec(ct.Structure):
    _fields_ = (
        ("h", Hdr),
        ("fn", ct.c_uint32),
        ("nranks", ct.c_int32),
        ("rank", ct.c_int32),
        ("result", ct.c_int32),
        ("ip", ct.c_uint64),
        ("ncomms", ct.c_uint32),
        ("pad", ct.c_uint32),
        ("comms", ct.c_uint64 * MAX_COMMS),
        ("id", ct.c_uint8 * ID_LEN),
        ("parent", ct.c_uint64),
        ("color", ct.c_int32),
        ("key", ct.c_int32),
        ("id_known", ct.c_uint32),
        ("nexcluded", ct.c_int32),
        ("excluded", ct.c_int32 * MAX_EXCLUDED),
    )


class NcclEndRec(ct.Structure):
    _fields_ = (
        ("h", Hdr),
        ("fn", ct.c_uint32),
        ("result", ct.c_int32),
        ("comm", ct.c_uint64),
        ("known", ct.c_uint32),
        ("pad", ct.c_uint32),
        ("id", ct.c_uint8 * ID_LEN),
    )


class NcclCollKey(ct.Structure):
    _fields_ = (
        ("tgid", ct.c_uint32),
        ("op", ct.c_uint16),
        ("datatype", ct.c_uint16),
        ("comm", ct.c_uint64),
    )


class NcclCollVal(ct.Structure):
    _fields_ = (
        ("calls", ct.c_uint64),
        ("elems", ct.c_uint64),
        ("first_ns", ct.c_uint64),
        ("last_ns", ct.c_uint64),
        ("hist", ct.c_uint64 * HIST_BUCKETS),
    )


class NcclMark(ct.Structure):
    _fields_ = (
        ("calls", ct.c_uint64),
        ("first_ns", ct.c_uint64),
        ("first_call", ct.c_uint64),
    )


MIRRORS: dict[str, type] = {
    "nccl_init_rec": NcclInitRec,
    "nccl_end_rec": NcclEndRec,
    "nccl_coll_key": NcclCollKey,
    "nccl_coll_val": NcclCollVal,
    "nccl_mark": NcclMark,
}
