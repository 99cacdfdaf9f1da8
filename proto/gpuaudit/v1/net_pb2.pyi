from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class NetConnection(_message.Message):
    __slots__ = ("family", "protocol", "local_addr", "local_port", "remote_addr", "remote_port", "peer_in_cluster", "result")
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    LOCAL_ADDR_FIELD_NUMBER: _ClassVar[int]
    LOCAL_PORT_FIELD_NUMBER: _ClassVar[int]
    REMOTE_ADDR_FIELD_NUMBER: _ClassVar[int]
    REMOTE_PORT_FIELD_NUMBER: _ClassVar[int]
    PEER_IN_CLUSTER_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    family: str
    protocol: str
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int
    peer_in_cluster: bool
    result: int
    def __init__(self, family: _Optional[str] = ..., protocol: _Optional[str] = ..., local_addr: _Optional[str] = ..., local_port: _Optional[int] = ..., remote_addr: _Optional[str] = ..., remote_port: _Optional[int] = ..., peer_in_cluster: _Optional[bool] = ..., result: _Optional[int] = ...) -> None: ...

class NetFlow(_message.Message):
    __slots__ = ("family", "protocol", "remote_addr", "remote_port", "bytes_sent", "bytes_received", "peer_in_cluster")
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    REMOTE_ADDR_FIELD_NUMBER: _ClassVar[int]
    REMOTE_PORT_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    PEER_IN_CLUSTER_FIELD_NUMBER: _ClassVar[int]
    family: str
    protocol: str
    remote_addr: str
    remote_port: int
    bytes_sent: int
    bytes_received: int
    peer_in_cluster: bool
    def __init__(self, family: _Optional[str] = ..., protocol: _Optional[str] = ..., remote_addr: _Optional[str] = ..., remote_port: _Optional[int] = ..., bytes_sent: _Optional[int] = ..., bytes_received: _Optional[int] = ..., peer_in_cluster: _Optional[bool] = ...) -> None: ...

class RdmaOpen(_message.Message):
    __slots__ = ("path", "flags", "fd", "errno")
    PATH_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    FD_FIELD_NUMBER: _ClassVar[int]
    ERRNO_FIELD_NUMBER: _ClassVar[int]
    path: str
    flags: int
    fd: int
    errno: int
    def __init__(self, path: _Optional[str] = ..., flags: _Optional[int] = ..., fd: _Optional[int] = ..., errno: _Optional[int] = ...) -> None: ...
