from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ProcessCompatSyscall(_message.Message):
    __slots__ = ("nr", "name", "mode", "args", "cs", "ip")
    NR_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    CS_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    nr: int
    name: str
    mode: str
    args: _containers.RepeatedScalarFieldContainer[int]
    cs: int
    ip: int
    def __init__(self, nr: _Optional[int] = ..., name: _Optional[str] = ..., mode: _Optional[str] = ..., args: _Optional[_Iterable[int]] = ..., cs: _Optional[int] = ..., ip: _Optional[int] = ...) -> None: ...
