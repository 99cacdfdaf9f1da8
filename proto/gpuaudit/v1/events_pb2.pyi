import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from gpuaudit.v1 import checkpoint_pb2 as _checkpoint_pb2
from gpuaudit.v1 import code_pb2 as _code_pb2
from gpuaudit.v1 import compat_pb2 as _compat_pb2
from gpuaudit.v1 import files_pb2 as _files_pb2
from gpuaudit.v1 import iouring_pb2 as _iouring_pb2
from gpuaudit.v1 import nccl_pb2 as _nccl_pb2
from gpuaudit.v1 import net_pb2 as _net_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Process(_message.Message):
    __slots__ = ("pid", "tid", "ppid", "uid", "gid", "user", "comm", "exe", "cmdline", "cgroup", "container_id", "pod", "slurm_job")
    PID_FIELD_NUMBER: _ClassVar[int]
    TID_FIELD_NUMBER: _ClassVar[int]
    PPID_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    COMM_FIELD_NUMBER: _ClassVar[int]
    EXE_FIELD_NUMBER: _ClassVar[int]
    CMDLINE_FIELD_NUMBER: _ClassVar[int]
    CGROUP_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    POD_FIELD_NUMBER: _ClassVar[int]
    SLURM_JOB_FIELD_NUMBER: _ClassVar[int]
    pid: int
    tid: int
    ppid: int
    uid: int
    gid: int
    user: str
    comm: str
    exe: str
    cmdline: _containers.RepeatedScalarFieldContainer[str]
    cgroup: str
    container_id: str
    pod: str
    slurm_job: str
    def __init__(self, pid: _Optional[int] = ..., tid: _Optional[int] = ..., ppid: _Optional[int] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., user: _Optional[str] = ..., comm: _Optional[str] = ..., exe: _Optional[str] = ..., cmdline: _Optional[_Iterable[str]] = ..., cgroup: _Optional[str] = ..., container_id: _Optional[str] = ..., pod: _Optional[str] = ..., slurm_job: _Optional[str] = ...) -> None: ...

class GpuOpen(_message.Message):
    __slots__ = ("path", "flags", "fd", "errno", "source")
    PATH_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    FD_FIELD_NUMBER: _ClassVar[int]
    ERRNO_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    path: str
    flags: int
    fd: int
    errno: int
    source: str
    def __init__(self, path: _Optional[str] = ..., flags: _Optional[int] = ..., fd: _Optional[int] = ..., errno: _Optional[int] = ..., source: _Optional[str] = ...) -> None: ...

class ProcessExec(_message.Message):
    __slots__ = ("filename", "argv", "argv_truncated", "source", "fileless", "fileless_kind", "preload")
    class PreloadEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    ARGV_FIELD_NUMBER: _ClassVar[int]
    ARGV_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    FILELESS_FIELD_NUMBER: _ClassVar[int]
    FILELESS_KIND_FIELD_NUMBER: _ClassVar[int]
    PRELOAD_FIELD_NUMBER: _ClassVar[int]
    filename: str
    argv: _containers.RepeatedScalarFieldContainer[str]
    argv_truncated: bool
    source: str
    fileless: bool
    fileless_kind: str
    preload: _containers.ScalarMap[str, str]
    def __init__(self, filename: _Optional[str] = ..., argv: _Optional[_Iterable[str]] = ..., argv_truncated: _Optional[bool] = ..., source: _Optional[str] = ..., fileless: _Optional[bool] = ..., fileless_kind: _Optional[str] = ..., preload: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ProcessExit(_message.Message):
    __slots__ = ("exit_code", "signal", "held_gpu", "source")
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    HELD_GPU_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    exit_code: int
    signal: int
    held_gpu: bool
    source: str
    def __init__(self, exit_code: _Optional[int] = ..., signal: _Optional[int] = ..., held_gpu: _Optional[bool] = ..., source: _Optional[str] = ...) -> None: ...

class ProcessSignal(_message.Message):
    __slots__ = ("target_pid", "signal", "signal_name", "result", "group", "target_user", "target_comm")
    TARGET_PID_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_NAME_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    TARGET_USER_FIELD_NUMBER: _ClassVar[int]
    TARGET_COMM_FIELD_NUMBER: _ClassVar[int]
    target_pid: int
    signal: int
    signal_name: str
    result: int
    group: bool
    target_user: str
    target_comm: str
    def __init__(self, target_pid: _Optional[int] = ..., signal: _Optional[int] = ..., signal_name: _Optional[str] = ..., result: _Optional[int] = ..., group: _Optional[bool] = ..., target_user: _Optional[str] = ..., target_comm: _Optional[str] = ...) -> None: ...

class ProcessPtrace(_message.Message):
    __slots__ = ("target_pid", "request", "request_name", "result", "target_user", "target_comm")
    TARGET_PID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    REQUEST_NAME_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    TARGET_USER_FIELD_NUMBER: _ClassVar[int]
    TARGET_COMM_FIELD_NUMBER: _ClassVar[int]
    target_pid: int
    request: int
    request_name: str
    result: int
    target_user: str
    target_comm: str
    def __init__(self, target_pid: _Optional[int] = ..., request: _Optional[int] = ..., request_name: _Optional[str] = ..., result: _Optional[int] = ..., target_user: _Optional[str] = ..., target_comm: _Optional[str] = ...) -> None: ...

class ProcessVmWrite(_message.Message):
    __slots__ = ("target_pid", "bytes", "result", "target_user", "target_comm")
    TARGET_PID_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    TARGET_USER_FIELD_NUMBER: _ClassVar[int]
    TARGET_COMM_FIELD_NUMBER: _ClassVar[int]
    target_pid: int
    bytes: int
    result: int
    target_user: str
    target_comm: str
    def __init__(self, target_pid: _Optional[int] = ..., bytes: _Optional[int] = ..., result: _Optional[int] = ..., target_user: _Optional[str] = ..., target_comm: _Optional[str] = ...) -> None: ...

class ModuleLoad(_message.Message):
    __slots__ = ("syscall", "path", "flags", "result")
    SYSCALL_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    syscall: str
    path: str
    flags: int
    result: int
    def __init__(self, syscall: _Optional[str] = ..., path: _Optional[str] = ..., flags: _Optional[int] = ..., result: _Optional[int] = ...) -> None: ...

class BpfLoad(_message.Message):
    __slots__ = ("prog_type", "prog_type_name", "prog_name", "insn_cnt", "result")
    PROG_TYPE_FIELD_NUMBER: _ClassVar[int]
    PROG_TYPE_NAME_FIELD_NUMBER: _ClassVar[int]
    PROG_NAME_FIELD_NUMBER: _ClassVar[int]
    INSN_CNT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    prog_type: int
    prog_type_name: str
    prog_name: str
    insn_cnt: int
    result: int
    def __init__(self, prog_type: _Optional[int] = ..., prog_type_name: _Optional[str] = ..., prog_name: _Optional[str] = ..., insn_cnt: _Optional[int] = ..., result: _Optional[int] = ...) -> None: ...

class SensorStatus(_message.Message):
    __slots__ = ("name", "state", "detail")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: str
    detail: str
    def __init__(self, name: _Optional[str] = ..., state: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class AgentHealth(_message.Message):
    __slots__ = ("events_emitted", "kernel_lost", "queue_dropped", "decode_errors", "sensors", "mode", "interval_s", "version", "spool_dropped", "spool_pending", "spool_bytes")
    EVENTS_EMITTED_FIELD_NUMBER: _ClassVar[int]
    KERNEL_LOST_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DROPPED_FIELD_NUMBER: _ClassVar[int]
    DECODE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    SENSORS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SPOOL_DROPPED_FIELD_NUMBER: _ClassVar[int]
    SPOOL_PENDING_FIELD_NUMBER: _ClassVar[int]
    SPOOL_BYTES_FIELD_NUMBER: _ClassVar[int]
    events_emitted: int
    kernel_lost: int
    queue_dropped: int
    decode_errors: int
    sensors: _containers.RepeatedCompositeFieldContainer[SensorStatus]
    mode: str
    interval_s: int
    version: str
    spool_dropped: int
    spool_pending: int
    spool_bytes: int
    def __init__(self, events_emitted: _Optional[int] = ..., kernel_lost: _Optional[int] = ..., queue_dropped: _Optional[int] = ..., decode_errors: _Optional[int] = ..., sensors: _Optional[_Iterable[_Union[SensorStatus, _Mapping]]] = ..., mode: _Optional[str] = ..., interval_s: _Optional[int] = ..., version: _Optional[str] = ..., spool_dropped: _Optional[int] = ..., spool_pending: _Optional[int] = ..., spool_bytes: _Optional[int] = ...) -> None: ...

class AgentSilent(_message.Message):
    __slots__ = ("last_seen", "silent_for_s")
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    SILENT_FOR_S_FIELD_NUMBER: _ClassVar[int]
    last_seen: _timestamp_pb2.Timestamp
    silent_for_s: int
    def __init__(self, last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., silent_for_s: _Optional[int] = ...) -> None: ...

class AgentLoss(_message.Message):
    __slots__ = ("reason", "count", "total", "lost_boot_id", "first_seq", "last_seq")
    REASON_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    LOST_BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    reason: str
    count: int
    total: int
    lost_boot_id: str
    first_seq: int
    last_seq: int
    def __init__(self, reason: _Optional[str] = ..., count: _Optional[int] = ..., total: _Optional[int] = ..., lost_boot_id: _Optional[str] = ..., first_seq: _Optional[int] = ..., last_seq: _Optional[int] = ...) -> None: ...

class AgentGap(_message.Message):
    __slots__ = ("cause", "lost_boot_id", "first_seq", "last_seq", "count", "reason", "report_seq")
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    LOST_BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REPORT_SEQ_FIELD_NUMBER: _ClassVar[int]
    cause: str
    lost_boot_id: str
    first_seq: int
    last_seq: int
    count: int
    reason: str
    report_seq: int
    def __init__(self, cause: _Optional[str] = ..., lost_boot_id: _Optional[str] = ..., first_seq: _Optional[int] = ..., last_seq: _Optional[int] = ..., count: _Optional[int] = ..., reason: _Optional[str] = ..., report_seq: _Optional[int] = ...) -> None: ...

class AgentRejected(_message.Message):
    __slots__ = ("claimed_node", "cert_names", "peer", "reason", "batches")
    CLAIMED_NODE_FIELD_NUMBER: _ClassVar[int]
    CERT_NAMES_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    claimed_node: str
    cert_names: _containers.RepeatedScalarFieldContainer[str]
    peer: str
    reason: str
    batches: int
    def __init__(self, claimed_node: _Optional[str] = ..., cert_names: _Optional[_Iterable[str]] = ..., peer: _Optional[str] = ..., reason: _Optional[str] = ..., batches: _Optional[int] = ...) -> None: ...

class MigDevice(_message.Message):
    __slots__ = ("index", "uuid", "gpu_instance_id", "compute_instance_id", "memory_total")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    GPU_INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_FIELD_NUMBER: _ClassVar[int]
    index: int
    uuid: str
    gpu_instance_id: int
    compute_instance_id: int
    memory_total: int
    def __init__(self, index: _Optional[int] = ..., uuid: _Optional[str] = ..., gpu_instance_id: _Optional[int] = ..., compute_instance_id: _Optional[int] = ..., memory_total: _Optional[int] = ...) -> None: ...

class GpuDevice(_message.Message):
    __slots__ = ("index", "minor_number", "uuid", "serial", "name", "pci_bus_id", "driver_version", "cuda_driver_version", "memory_total", "persistence_mode", "compute_mode", "mig_mode", "mig_devices", "unavailable", "change")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    MINOR_NUMBER_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PCI_BUS_ID_FIELD_NUMBER: _ClassVar[int]
    DRIVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    CUDA_DRIVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_FIELD_NUMBER: _ClassVar[int]
    PERSISTENCE_MODE_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MODE_FIELD_NUMBER: _ClassVar[int]
    MIG_MODE_FIELD_NUMBER: _ClassVar[int]
    MIG_DEVICES_FIELD_NUMBER: _ClassVar[int]
    UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    index: int
    minor_number: int
    uuid: str
    serial: str
    name: str
    pci_bus_id: str
    driver_version: str
    cuda_driver_version: str
    memory_total: int
    persistence_mode: str
    compute_mode: str
    mig_mode: str
    mig_devices: _containers.RepeatedCompositeFieldContainer[MigDevice]
    unavailable: _containers.RepeatedScalarFieldContainer[str]
    change: str
    def __init__(self, index: _Optional[int] = ..., minor_number: _Optional[int] = ..., uuid: _Optional[str] = ..., serial: _Optional[str] = ..., name: _Optional[str] = ..., pci_bus_id: _Optional[str] = ..., driver_version: _Optional[str] = ..., cuda_driver_version: _Optional[str] = ..., memory_total: _Optional[int] = ..., persistence_mode: _Optional[str] = ..., compute_mode: _Optional[str] = ..., mig_mode: _Optional[str] = ..., mig_devices: _Optional[_Iterable[_Union[MigDevice, _Mapping]]] = ..., unavailable: _Optional[_Iterable[str]] = ..., change: _Optional[str] = ...) -> None: ...

class GpuProcess(_message.Message):
    __slots__ = ("state", "gpu_index", "gpu_uuid", "mig_uuid", "kind", "used_memory", "sm_util", "mem_util", "seen_open", "max_memory", "gpu_time_ms")
    STATE_FIELD_NUMBER: _ClassVar[int]
    GPU_INDEX_FIELD_NUMBER: _ClassVar[int]
    GPU_UUID_FIELD_NUMBER: _ClassVar[int]
    MIG_UUID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    USED_MEMORY_FIELD_NUMBER: _ClassVar[int]
    SM_UTIL_FIELD_NUMBER: _ClassVar[int]
    MEM_UTIL_FIELD_NUMBER: _ClassVar[int]
    SEEN_OPEN_FIELD_NUMBER: _ClassVar[int]
    MAX_MEMORY_FIELD_NUMBER: _ClassVar[int]
    GPU_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    state: str
    gpu_index: int
    gpu_uuid: str
    mig_uuid: str
    kind: str
    used_memory: int
    sm_util: int
    mem_util: int
    seen_open: bool
    max_memory: int
    gpu_time_ms: int
    def __init__(self, state: _Optional[str] = ..., gpu_index: _Optional[int] = ..., gpu_uuid: _Optional[str] = ..., mig_uuid: _Optional[str] = ..., kind: _Optional[str] = ..., used_memory: _Optional[int] = ..., sm_util: _Optional[int] = ..., mem_util: _Optional[int] = ..., seen_open: _Optional[bool] = ..., max_memory: _Optional[int] = ..., gpu_time_ms: _Optional[int] = ...) -> None: ...

class GpuXid(_message.Message):
    __slots__ = ("gpu_index", "gpu_uuid", "event", "xid", "gpu_instance_id", "compute_instance_id")
    GPU_INDEX_FIELD_NUMBER: _ClassVar[int]
    GPU_UUID_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    XID_FIELD_NUMBER: _ClassVar[int]
    GPU_INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    gpu_index: int
    gpu_uuid: str
    event: str
    xid: int
    gpu_instance_id: int
    compute_instance_id: int
    def __init__(self, gpu_index: _Optional[int] = ..., gpu_uuid: _Optional[str] = ..., event: _Optional[str] = ..., xid: _Optional[int] = ..., gpu_instance_id: _Optional[int] = ..., compute_instance_id: _Optional[int] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("type", "time", "node", "boot_id", "seq", "process", "gpu_open", "process_exec", "process_exit", "agent_health", "agent_silent", "agent_loss", "agent_gap", "agent_rejected", "gpu_device", "gpu_process", "gpu_xid", "process_signal", "process_ptrace", "process_vm_write", "code_module_load", "code_bpf_load", "code_load", "file_write", "checkpoint_scan", "nccl_comm_init", "nccl_collective", "nccl_comm_end", "net_connect", "net_accept", "net_listen", "net_flow", "net_rdma_open", "process_compat_syscall", "process_io_uring")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    GPU_OPEN_FIELD_NUMBER: _ClassVar[int]
    PROCESS_EXEC_FIELD_NUMBER: _ClassVar[int]
    PROCESS_EXIT_FIELD_NUMBER: _ClassVar[int]
    AGENT_HEALTH_FIELD_NUMBER: _ClassVar[int]
    AGENT_SILENT_FIELD_NUMBER: _ClassVar[int]
    AGENT_LOSS_FIELD_NUMBER: _ClassVar[int]
    AGENT_GAP_FIELD_NUMBER: _ClassVar[int]
    AGENT_REJECTED_FIELD_NUMBER: _ClassVar[int]
    GPU_DEVICE_FIELD_NUMBER: _ClassVar[int]
    GPU_PROCESS_FIELD_NUMBER: _ClassVar[int]
    GPU_XID_FIELD_NUMBER: _ClassVar[int]
    PROCESS_SIGNAL_FIELD_NUMBER: _ClassVar[int]
    PROCESS_PTRACE_FIELD_NUMBER: _ClassVar[int]
    PROCESS_VM_WRITE_FIELD_NUMBER: _ClassVar[int]
    CODE_MODULE_LOAD_FIELD_NUMBER: _ClassVar[int]
    CODE_BPF_LOAD_FIELD_NUMBER: _ClassVar[int]
    CODE_LOAD_FIELD_NUMBER: _ClassVar[int]
    FILE_WRITE_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_SCAN_FIELD_NUMBER: _ClassVar[int]
    NCCL_COMM_INIT_FIELD_NUMBER: _ClassVar[int]
    NCCL_COLLECTIVE_FIELD_NUMBER: _ClassVar[int]
    NCCL_COMM_END_FIELD_NUMBER: _ClassVar[int]
    NET_CONNECT_FIELD_NUMBER: _ClassVar[int]
    NET_ACCEPT_FIELD_NUMBER: _ClassVar[int]
    NET_LISTEN_FIELD_NUMBER: _ClassVar[int]
    NET_FLOW_FIELD_NUMBER: _ClassVar[int]
    NET_RDMA_OPEN_FIELD_NUMBER: _ClassVar[int]
    PROCESS_COMPAT_SYSCALL_FIELD_NUMBER: _ClassVar[int]
    PROCESS_IO_URING_FIELD_NUMBER: _ClassVar[int]
    type: str
    time: _timestamp_pb2.Timestamp
    node: str
    boot_id: str
    seq: int
    process: Process
    gpu_open: GpuOpen
    process_exec: ProcessExec
    process_exit: ProcessExit
    agent_health: AgentHealth
    agent_silent: AgentSilent
    agent_loss: AgentLoss
    agent_gap: AgentGap
    agent_rejected: AgentRejected
    gpu_device: GpuDevice
    gpu_process: GpuProcess
    gpu_xid: GpuXid
    process_signal: ProcessSignal
    process_ptrace: ProcessPtrace
    process_vm_write: ProcessVmWrite
    code_module_load: ModuleLoad
    code_bpf_load: BpfLoad
    code_load: _code_pb2.CodeLoad
    file_write: _files_pb2.FileWrite
    checkpoint_scan: _checkpoint_pb2.CheckpointScan
    nccl_comm_init: _nccl_pb2.NcclCommInit
    nccl_collective: _nccl_pb2.NcclCollective
    nccl_comm_end: _nccl_pb2.NcclCommEnd
    net_connect: _net_pb2.NetConnection
    net_accept: _net_pb2.NetConnection
    net_listen: _net_pb2.NetConnection
    net_flow: _net_pb2.NetFlow
    net_rdma_open: _net_pb2.RdmaOpen
    process_compat_syscall: _compat_pb2.ProcessCompatSyscall
    process_io_uring: _iouring_pb2.ProcessIoUring
    def __init__(self, type: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., node: _Optional[str] = ..., boot_id: _Optional[str] = ..., seq: _Optional[int] = ..., process: _Optional[_Union[Process, _Mapping]] = ..., gpu_open: _Optional[_Union[GpuOpen, _Mapping]] = ..., process_exec: _Optional[_Union[ProcessExec, _Mapping]] = ..., process_exit: _Optional[_Union[ProcessExit, _Mapping]] = ..., agent_health: _Optional[_Union[AgentHealth, _Mapping]] = ..., agent_silent: _Optional[_Union[AgentSilent, _Mapping]] = ..., agent_loss: _Optional[_Union[AgentLoss, _Mapping]] = ..., agent_gap: _Optional[_Union[AgentGap, _Mapping]] = ..., agent_rejected: _Optional[_Union[AgentRejected, _Mapping]] = ..., gpu_device: _Optional[_Union[GpuDevice, _Mapping]] = ..., gpu_process: _Optional[_Union[GpuProcess, _Mapping]] = ..., gpu_xid: _Optional[_Union[GpuXid, _Mapping]] = ..., process_signal: _Optional[_Union[ProcessSignal, _Mapping]] = ..., process_ptrace: _Optional[_Union[ProcessPtrace, _Mapping]] = ..., process_vm_write: _Optional[_Union[ProcessVmWrite, _Mapping]] = ..., code_module_load: _Optional[_Union[ModuleLoad, _Mapping]] = ..., code_bpf_load: _Optional[_Union[BpfLoad, _Mapping]] = ..., code_load: _Optional[_Union[_code_pb2.CodeLoad, _Mapping]] = ..., file_write: _Optional[_Union[_files_pb2.FileWrite, _Mapping]] = ..., checkpoint_scan: _Optional[_Union[_checkpoint_pb2.CheckpointScan, _Mapping]] = ..., nccl_comm_init: _Optional[_Union[_nccl_pb2.NcclCommInit, _Mapping]] = ..., nccl_collective: _Optional[_Union[_nccl_pb2.NcclCollective, _Mapping]] = ..., nccl_comm_end: _Optional[_Union[_nccl_pb2.NcclCommEnd, _Mapping]] = ..., net_connect: _Optional[_Union[_net_pb2.NetConnection, _Mapping]] = ..., net_accept: _Optional[_Union[_net_pb2.NetConnection, _Mapping]] = ..., net_listen: _Optional[_Union[_net_pb2.NetConnection, _Mapping]] = ..., net_flow: _Optional[_Union[_net_pb2.NetFlow, _Mapping]] = ..., net_rdma_open: _Optional[_Union[_net_pb2.RdmaOpen, _Mapping]] = ..., process_compat_syscall: _Optional[_Union[_compat_pb2.ProcessCompatSyscall, _Mapping]] = ..., process_io_uring: _Optional[_Union[_iouring_pb2.ProcessIoUring, _Mapping]] = ...) -> None: ...
