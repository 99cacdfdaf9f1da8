/* net.* records and shared map types (agent/bpf/net.c). Op codes 28-35.
 *
 * Addresses are the 16 raw bytes in network order: an IPv4 address sits in
 * the first 4 bytes (family 2), an IPv6 one fills all 16 (family 10; a v4
 * peer of a dual-stack socket arrives v4-mapped, ::ffff:a.b.c.d). Ports are
 * in host order. User space (agent/net/addr.py) turns them into text.
 */
#ifndef GPUAUDIT_NET_EVENTS_H
#define GPUAUDIT_NET_EVENTS_H

#define OP_NET_CONNECT 28
#define OP_NET_ACCEPT 29
#define OP_NET_LISTEN 30

#define NET_ADDR_LEN 16
/* (process, peer) byte counters the kernel holds between two net.flow
 * flushes; an insert into a full table is counted as a loss (net_flow). */
#define NET_FLOW_ENTRIES 16384
/* sockets of GPU/NCCL processes whose peer the kernel learned (LRU). */
#define NET_PEER_ENTRIES 65536

/* net.connect / net.accept / net.listen, emitted at syscall exit. */
struct net_conn_rec {
    struct hdr h;
    s32 fd;          /* connect/listen: the socket; accept: the new fd, or on failure the listening one */
    u16 family;      /* AF_INET 2 / AF_INET6 10; 0: unknown (user space asks /proc) */
    u8 protocol;     /* IPPROTO_TCP 6 when the kernel saw a TCP state change; 0: ask /proc */
    u8 have_local;   /* 1: local_addr/local_port come from the kernel */
    u8 have_remote;  /* 1: remote_addr/remote_port come from the kernel */
    u8 pad[3];
    u16 local_port;
    u16 remote_port;
    s64 result;      /* the syscall's return value (fd, 0, or -errno) */
    u8 local_addr[NET_ADDR_LEN];
    u8 remote_addr[NET_ADDR_LEN];
};

/* What the kernel knows of one socket (net_sk_peer, keyed by its sk address):
 * from sock:inet_sock_set_state and tcp:tcp_rcv_space_adjust. */
struct net_peer {
    u16 family;
    u8 protocol;
    u8 pad;
    u16 local_port;
    u16 remote_port;
    u8 local_addr[NET_ADDR_LEN];
    u8 remote_addr[NET_ADDR_LEN];
};

/* net_accepted key: a passive open's remote end, as accept(2) returns it. */
struct net_remote {
    u16 family;
    u16 port;
    u8 addr[NET_ADDR_LEN];
};

/* net_flows key: one (process, peer). A socket whose peer the kernel does
 * not know counts under the zero peer of its family and protocol. */
struct net_flow_key {
    u32 tgid;
    u16 family;
    u8 protocol;
    u8 pad;
    u16 remote_port;
    u16 pad2;
    u8 remote_addr[NET_ADDR_LEN];
};

/* Cumulative since the entry was made; user space reports differences. */
struct net_flow_val {
    u64 bytes_sent;
    u64 bytes_received;
};

#endif /* GPUAUDIT_NET_EVENTS_H */
