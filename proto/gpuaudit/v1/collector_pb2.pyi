import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from gpuaudit.v1 import events_pb2 as _events_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventBatch(_message.Message):
    __slots__ = ("batch_id", "events", "signature")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    events: _containers.RepeatedCompositeFieldContainer[_events_pb2.Event]
    signature: BatchSignature
    def __init__(self, batch_id: _Optional[int] = ..., events: _Optional[_Iterable[_Union[_events_pb2.Event, _Mapping]]] = ..., signature: _Optional[_Union[BatchSignature, _Mapping]] = ...) -> None: ...

class BatchSignature(_message.Message):
    __slots__ = ("signature", "cert_sha256")
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    CERT_SHA256_FIELD_NUMBER: _ClassVar[int]
    signature: bytes
    cert_sha256: bytes
    def __init__(self, signature: _Optional[bytes] = ..., cert_sha256: _Optional[bytes] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("batch_id", "boot_id", "acked_seq", "stored", "duplicates")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    ACKED_SEQ_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    boot_id: str
    acked_seq: int
    stored: int
    duplicates: int
    def __init__(self, batch_id: _Optional[int] = ..., boot_id: _Optional[str] = ..., acked_seq: _Optional[int] = ..., stored: _Optional[int] = ..., duplicates: _Optional[int] = ...) -> None: ...

class EventQuery(_message.Message):
    __slots__ = ("types", "nodes", "pid", "uid", "since", "limit", "newest")
    TYPES_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    NEWEST_FIELD_NUMBER: _ClassVar[int]
    types: _containers.RepeatedScalarFieldContainer[str]
    nodes: _containers.RepeatedScalarFieldContainer[str]
    pid: int
    uid: int
    since: _timestamp_pb2.Timestamp
    limit: int
    newest: bool
    def __init__(self, types: _Optional[_Iterable[str]] = ..., nodes: _Optional[_Iterable[str]] = ..., pid: _Optional[int] = ..., uid: _Optional[int] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., limit: _Optional[int] = ..., newest: _Optional[bool] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("node", "boot_id", "last_heartbeat", "last_seq", "events_stored", "kernel_lost", "queue_dropped", "decode_errors", "silent", "mode", "sensors", "spool_dropped", "gaps", "missing_events", "rejected")
    NODE_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    EVENTS_STORED_FIELD_NUMBER: _ClassVar[int]
    KERNEL_LOST_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DROPPED_FIELD_NUMBER: _ClassVar[int]
    DECODE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    SILENT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SENSORS_FIELD_NUMBER: _ClassVar[int]
    SPOOL_DROPPED_FIELD_NUMBER: _ClassVar[int]
    GAPS_FIELD_NUMBER: _ClassVar[int]
    MISSING_EVENTS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    node: str
    boot_id: str
    last_heartbeat: _timestamp_pb2.Timestamp
    last_seq: int
    events_stored: int
    kernel_lost: int
    queue_dropped: int
    decode_errors: int
    silent: bool
    mode: str
    sensors: _containers.RepeatedCompositeFieldContainer[_events_pb2.SensorStatus]
    spool_dropped: int
    gaps: int
    missing_events: int
    rejected: int
    def __init__(self, node: _Optional[str] = ..., boot_id: _Optional[str] = ..., last_heartbeat: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seq: _Optional[int] = ..., events_stored: _Optional[int] = ..., kernel_lost: _Optional[int] = ..., queue_dropped: _Optional[int] = ..., decode_errors: _Optional[int] = ..., silent: _Optional[bool] = ..., mode: _Optional[str] = ..., sensors: _Optional[_Iterable[_Union[_events_pb2.SensorStatus, _Mapping]]] = ..., spool_dropped: _Optional[int] = ..., gaps: _Optional[int] = ..., missing_events: _Optional[int] = ..., rejected: _Optional[int] = ...) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("nodes", "events_stored", "db")
    NODES_FIELD_NUMBER: _ClassVar[int]
    EVENTS_STORED_FIELD_NUMBER: _ClassVar[int]
    DB_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStatus]
    events_stored: int
    db: str
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeStatus, _Mapping]]] = ..., events_stored: _Optional[int] = ..., db: _Optional[str] = ...) -> None: ...

class FindingQuery(_message.Message):
    __slots__ = ("since", "min_severity", "limit")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    MIN_SEVERITY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    since: _timestamp_pb2.Timestamp
    min_severity: str
    limit: int
    def __init__(self, since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., min_severity: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class FindingProcess(_message.Message):
    __slots__ = ("pid", "uid", "user", "exe", "comm", "container_id", "pod", "slurm_job")
    PID_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    EXE_FIELD_NUMBER: _ClassVar[int]
    COMM_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    POD_FIELD_NUMBER: _ClassVar[int]
    SLURM_JOB_FIELD_NUMBER: _ClassVar[int]
    pid: int
    uid: int
    user: str
    exe: str
    comm: str
    container_id: str
    pod: str
    slurm_job: str
    def __init__(self, pid: _Optional[int] = ..., uid: _Optional[int] = ..., user: _Optional[str] = ..., exe: _Optional[str] = ..., comm: _Optional[str] = ..., container_id: _Optional[str] = ..., pod: _Optional[str] = ..., slurm_job: _Optional[str] = ...) -> None: ...

class FindingEvent(_message.Message):
    __slots__ = ("node", "boot_id", "seq")
    NODE_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    node: str
    boot_id: str
    seq: int
    def __init__(self, node: _Optional[str] = ..., boot_id: _Optional[str] = ..., seq: _Optional[int] = ...) -> None: ...

class Finding(_message.Message):
    __slots__ = ("id", "rule", "title", "severity", "mitre", "node", "process", "summary", "count", "first_seen", "last_seen", "events", "key")
    ID_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    MITRE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    id: str
    rule: str
    title: str
    severity: str
    mitre: _containers.RepeatedScalarFieldContainer[str]
    node: str
    process: FindingProcess
    summary: str
    count: int
    first_seen: _timestamp_pb2.Timestamp
    last_seen: _timestamp_pb2.Timestamp
    events: _containers.RepeatedCompositeFieldContainer[FindingEvent]
    key: str
    def __init__(self, id: _Optional[str] = ..., rule: _Optional[str] = ..., title: _Optional[str] = ..., severity: _Optional[str] = ..., mitre: _Optional[_Iterable[str]] = ..., node: _Optional[str] = ..., process: _Optional[_Union[FindingProcess, _Mapping]] = ..., summary: _Optional[str] = ..., count: _Optional[int] = ..., first_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., events: _Optional[_Iterable[_Union[FindingEvent, _Mapping]]] = ..., key: _Optional[str] = ...) -> None: ...
