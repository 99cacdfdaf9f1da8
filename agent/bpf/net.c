/* net.connect / net.accept / net.listen / net.flow: the sockets of processes
 * that touched a GPU or loaded NCCL (is_gpu_or_nccl_proc, common.h).
 *
 * Which tracepoint gives what, without reading a kernel struct:
 *  - syscalls:sys_{enter,exit}_{connect,accept,accept4,listen}: the fd, the
 *    result, and the caller's sockaddr (user memory: connect's target at
 *    enter, accept's peer at exit through the pointer saved at enter).
 *    Parked per thread in net_inflight between enter and exit.
 *  - sock:inet_sock_set_state: TCP's socket address (skaddr) with its 4-tuple.
 *    SYN_SENT and LISTEN run in the caller's context inside connect(2) and
 *    listen(2), so they complete the parked call with the local address and
 *    tie the socket (sk) to its peer in net_sk_peer. Passive opens reach
 *    ESTABLISHED in softirq context (no process to filter on): they are kept
 *    only when the local port is one a GPU/NCCL process listens on
 *    (net_listen_ports), and also filed by their remote end (net_accepted)
 *    so accept(2), which returns that remote end, finds its local address.
 *    TCP_CLOSE forgets the socket, so a reused sk address never inherits an
 *    old peer.
 *  - tcp:tcp_rcv_space_adjust (optional): recvmsg on TCP, in the reader's
 *    context, with skaddr and 4-tuple: learns the peer of sockets the two
 *    ways above missed (set up before the agent started, or before the
 *    process became a GPU process).
 *  - sock:sock_send_length / sock:sock_recv_length: every sendmsg/recvmsg
 *    through the socket layer (send*, recv*, write/read/writev/readv on a
 *    socket, sendfile/splice *into* a socket, io_uring send/recv), with sk
 *    and the byte count. Bytes are added to net_flows under (tgid, peer of
 *    sk). MSG_PEEK reads are not counted (the data is read again later).
 *
 * Every probe that runs in a process's context checks is_gpu_or_nccl_proc
 * first, so other processes cost one or two hash lookups per call; the
 * syscall exit probes instead look up net_inflight, which holds only calls
 * of GPU/NCCL processes (one lookup).
 */

#define NET_AF_INET 2
#define NET_AF_INET6 10
#define NET_IPPROTO_TCP 6
#define NET_MSG_PEEK 2
#define NET_EAGAIN 11
#define NET_EINTR 4
/* ERESTARTSYS..ERESTART_RESTARTBLOCK (include/linux/errno.h): the syscall
 * exit sees these before the kernel restarts the call; the restarted call
 * reports the outcome. */
#define NET_ERESTART_FIRST 512
#define NET_ERESTART_LAST 516
#define NET_RESTARTED(ret) ((ret) <= -NET_ERESTART_FIRST && (ret) >= -NET_ERESTART_LAST)
/* enum tcp_state (include/net/tcp_states.h; uapi-stable values) */
#define NET_TCP_ESTABLISHED 1
#define NET_TCP_SYN_SENT 2
#define NET_TCP_SYN_RECV 3
#define NET_TCP_CLOSE 7
#define NET_TCP_LISTEN 10

/* A connect/accept/listen between its enter and exit, per thread. */
struct net_call {
    u32 op;            /* OP_NET_CONNECT / OP_NET_ACCEPT / OP_NET_LISTEN */
    s32 fd;
    u64 sk;            /* connect: the socket seen in SYN_SENT; 0 if none */
    u64 uaddr;         /* accept: the caller's peer sockaddr buffer (may be 0) */
    u32 ubuf_len;      /* accept: its size, read from *upeer_addrlen at enter */
    u16 family;
    u8 protocol;
    u8 have_local;
    u8 have_remote;
    u8 pad[1];
    u16 local_port;
    u16 remote_port;
    u8 local_addr[NET_ADDR_LEN];
    u8 remote_addr[NET_ADDR_LEN];
};

/* LRU: a thread killed while blocked in accept(2)/connect(2) never reaches
 * the exit probe; its entry must not stay forever. Eviction of a live entry
 * would need 16384 threads of GPU processes inside these calls at once. */
BPF_TABLE("lru_hash", u64, struct net_call, net_inflight, 16384);
BPF_TABLE("lru_hash", u64, struct net_peer, net_sk_peer, NET_PEER_ENTRIES);
/* local ports GPU/NCCL processes listen on (any netns, any family) */
BPF_TABLE("lru_hash", u16, u8, net_listen_ports, 4096);
/* passive opens on those ports, by remote end, until accept(2) takes them:
 * the accepted socket's local address without a look into /proc */
BPF_TABLE("lru_hash", struct net_remote, struct net_peer, net_accepted, 4096);
BPF_HASH(net_flows, struct net_flow_key, struct net_flow_val, NET_FLOW_ENTRIES);
/* send/recv calls whose bytes could not be counted: net_flows was full */
BPF_PERCPU_ARRAY(net_flow_lost, u64, 1);

static __always_inline int net_self_gpu(void)
{
    return is_gpu_or_nccl_proc(bpf_get_current_pid_tgid() >> 32);
}

static __always_inline void net_park(struct net_call *c)
{
    u64 id = bpf_get_current_pid_tgid();
    if (net_inflight.update(&id, c) != 0)
        count_lost();
}

/* Reads a sockaddr_in/_in6 of `len` bytes from user memory. Returns the
 * family (2 or 10), 0 for an unreadable one, or the other family read. */
static __always_inline u16 net_read_sockaddr(const void *uaddr, u32 len, u16 *port, u8 *addr)
{
    u16 family = 0;
    if (!uaddr || len < sizeof(family) || bpf_probe_read_user(&family, sizeof(family), uaddr))
        return 0;
    if (family == NET_AF_INET && len >= 16) {
        bpf_probe_read_user(port, 2, uaddr + 2);
        bpf_probe_read_user(addr, 4, uaddr + 4);
    } else if (family == NET_AF_INET6 && len >= 24) {
        bpf_probe_read_user(port, 2, uaddr + 2);
        bpf_probe_read_user(addr, NET_ADDR_LEN, uaddr + 8);
    } else if (family == NET_AF_INET || family == NET_AF_INET6) {
        return 0; /* too short to hold the address */
    }
    *port = bpf_ntohs(*port);
    return family;
}

static __always_inline void net_emit(struct net_call *c, s64 ret)
{
    struct net_conn_rec *r = events.ringbuf_reserve(sizeof(struct net_conn_rec));
    if (!r) {
        count_lost();
        return;
    }
    fill_hdr(&r->h, c->op);
    r->fd = c->fd;
    r->family = c->family;
    r->protocol = c->protocol;
    r->have_local = c->have_local;
    r->have_remote = c->have_remote;
    __builtin_memset(r->pad, 0, sizeof(r->pad));
    r->local_port = c->local_port;
    r->remote_port = c->remote_port;
    r->result = ret;
    __builtin_memcpy(r->local_addr, c->local_addr, NET_ADDR_LEN);
    __builtin_memcpy(r->remote_addr, c->remote_addr, NET_ADDR_LEN);
    events.ringbuf_submit(r, 0);
}

/* The parked call of this thread if it is `op`; removed from the map. */
static __always_inline int net_unpark(u32 op, struct net_call *out)
{
    u64 id = bpf_get_current_pid_tgid();
    struct net_call *c = net_inflight.lookup(&id);
    if (!c)
        return 0;
    int match = c->op == op;
    if (match)
        __builtin_memcpy(out, c, sizeof(*out));
    net_inflight.delete(&id);
    return match;
}

/* ---- connect ---------------------------------------------------------- */

TRACEPOINT_PROBE(syscalls, sys_enter_connect)
{
    if (!net_self_gpu())
        return 0;
    struct net_call c = {};
    c.op = OP_NET_CONNECT;
    c.fd = (s32)args->fd;
    c.family = net_read_sockaddr(args->uservaddr, (u32)args->addrlen, &c.remote_port,
                                 c.remote_addr);
    /* AF_UNIX, AF_UNSPEC (a UDP disconnect), netlink...: not network peers */
    if (c.family != NET_AF_INET && c.family != NET_AF_INET6)
        return 0;
    c.have_remote = 1;
    net_park(&c);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_connect)
{
    struct net_call c = {};
    if (!net_unpark(OP_NET_CONNECT, &c) || NET_RESTARTED(args->ret))
        return 0;
    if (c.sk) {
        /* a blocking connect that succeeded: ESTABLISHED (softirq) completed
         * the local port, which SYN_SENT may not have had yet */
        struct net_peer *p = net_sk_peer.lookup(&c.sk);
        if (p && p->local_port) {
            c.local_port = p->local_port;
            __builtin_memcpy(c.local_addr, p->local_addr, NET_ADDR_LEN);
            c.have_local = 1;
        }
    }
    net_emit(&c, args->ret);
    return 0;
}

/* ---- accept ----------------------------------------------------------- */

static __always_inline void net_enter_accept(int fd, void *uaddr, int *ulen)
{
    if (!net_self_gpu())
        return;
    struct net_call c = {};
    c.op = OP_NET_ACCEPT;
    c.fd = fd;
    c.uaddr = (u64)uaddr;
    if (uaddr && ulen)
        bpf_probe_read_user(&c.ubuf_len, sizeof(c.ubuf_len), ulen);
    net_park(&c);
}

static __always_inline void net_exit_accept(s64 ret)
{
    struct net_call c = {};
    if (!net_unpark(OP_NET_ACCEPT, &c))
        return;
    /* Nothing accepted, nothing happened: a non-blocking accept with nothing
     * queued, or one interrupted by a signal (and retried). */
    if (ret == -NET_EAGAIN || ret == -NET_EINTR || NET_RESTARTED(ret))
        return;
    /* success: the new fd; failure: the listening fd stays (its address is
     * what user space can report) */
    if (ret >= 0)
        c.fd = (s32)ret;
    if (ret >= 0 && c.uaddr) {
        u16 family = net_read_sockaddr((void *)c.uaddr, c.ubuf_len, &c.remote_port,
                                       c.remote_addr);
        if (family != 0 && family != NET_AF_INET && family != NET_AF_INET6)
            return; /* AF_UNIX and friends: not a network peer */
        c.family = family;
        c.have_remote = family != 0;
    }
    if (c.have_remote) {
        struct net_remote key = {};
        key.family = c.family;
        key.port = c.remote_port;
        __builtin_memcpy(key.addr, c.remote_addr, NET_ADDR_LEN);
        struct net_peer *p = net_accepted.lookup(&key);
        if (p) {
            c.protocol = p->protocol;
            c.local_port = p->local_port;
            __builtin_memcpy(c.local_addr, p->local_addr, NET_ADDR_LEN);
            c.have_local = 1;
            net_accepted.delete(&key);
        }
    }
    /* family 0 (no or short buffer): user space resolves the fd in /proc */
    net_emit(&c, ret);
}

TRACEPOINT_PROBE(syscalls, sys_enter_accept4)
{
    net_enter_accept((int)args->fd, (void *)args->upeer_sockaddr, (int *)args->upeer_addrlen);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_accept4)
{
    net_exit_accept(args->ret);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_accept)
{
    net_enter_accept((int)args->fd, (void *)args->upeer_sockaddr, (int *)args->upeer_addrlen);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_accept)
{
    net_exit_accept(args->ret);
    return 0;
}

/* ---- listen ----------------------------------------------------------- */

TRACEPOINT_PROBE(syscalls, sys_enter_listen)
{
    if (!net_self_gpu())
        return 0;
    struct net_call c = {};
    c.op = OP_NET_LISTEN;
    c.fd = (s32)args->fd;
    net_park(&c);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_listen)
{
    struct net_call c = {};
    if (!net_unpark(OP_NET_LISTEN, &c))
        return 0;
    /* No TCP_LISTEN transition: a unix socket, or a listen(2) that only
     * changed the backlog of a socket already listening. */
    if (c.protocol != NET_IPPROTO_TCP)
        return 0;
    net_emit(&c, args->ret);
    return 0;
}

/* ---- TCP state: which socket talks to whom ---------------------------- */

/* A net_peer from a tracepoint with TCP's 4-tuple fields (inet_sock_set_state,
 * tcp_rcv_space_adjust). A macro: bcc defines each probe's args struct
 * inside that probe only. */
#define NET_PEER_FROM_ARGS(p, args)                                         \
    do {                                                                    \
        (p)->family = (args)->family;                                       \
        (p)->protocol = NET_IPPROTO_TCP;                                    \
        (p)->local_port = (args)->sport;                                    \
        (p)->remote_port = (args)->dport;                                   \
        if ((args)->family == NET_AF_INET6) {                               \
            __builtin_memcpy((p)->local_addr, (args)->saddr_v6, NET_ADDR_LEN); \
            __builtin_memcpy((p)->remote_addr, (args)->daddr_v6, NET_ADDR_LEN); \
        } else {                                                            \
            __builtin_memcpy((p)->local_addr, (args)->saddr, 4);            \
            __builtin_memcpy((p)->remote_addr, (args)->daddr, 4);           \
        }                                                                   \
    } while (0)

/* Fills the thread's parked connect/listen with what the state change says. */
static __always_inline void net_complete_call(u64 sk, struct net_peer *p, u32 op)
{
    u64 id = bpf_get_current_pid_tgid();
    struct net_call *c = net_inflight.lookup(&id);
    if (!c || c->op != op)
        return;
    c->sk = sk;
    c->protocol = NET_IPPROTO_TCP;
    c->family = p->family;
    c->local_port = p->local_port;
    __builtin_memcpy(c->local_addr, p->local_addr, NET_ADDR_LEN);
    c->have_local = op == OP_NET_LISTEN || p->local_port != 0;
}

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol != NET_IPPROTO_TCP)
        return 0;
    u64 sk = (u64)args->skaddr;
    int state = args->newstate;
    struct net_peer p = {};

    if (state == NET_TCP_CLOSE) {
        net_sk_peer.delete(&sk);
        if (args->oldstate == NET_TCP_LISTEN) {
            u16 port = args->sport;
            net_listen_ports.delete(&port);
        }
        return 0;
    }
    if (state == NET_TCP_SYN_SENT || state == NET_TCP_LISTEN) {
        /* in the caller's context: connect(2), sendto(MSG_FASTOPEN), listen(2) */
        if (!net_self_gpu())
            return 0;
        NET_PEER_FROM_ARGS(&p, args);
        if (state == NET_TCP_SYN_SENT) {
            net_sk_peer.update(&sk, &p);
            net_complete_call(sk, &p, OP_NET_CONNECT);
        } else {
            u8 one = 1;
            u16 port = args->sport; /* 0 when listen(2) autobinds: user space adds it */
            if (port)
                net_listen_ports.update(&port, &one);
            net_complete_call(sk, &p, OP_NET_LISTEN);
        }
        return 0;
    }
    if (state != NET_TCP_ESTABLISHED)
        return 0;
    struct net_peer *known = net_sk_peer.lookup(&sk);
    if (known) {
        /* active open completed: the local port is bound now */
        NET_PEER_FROM_ARGS(&p, args);
        net_sk_peer.update(&sk, &p);
        return 0;
    }
    if (args->oldstate != NET_TCP_SYN_RECV)
        return 0;
    u16 lport = args->sport;
    if (!net_listen_ports.lookup(&lport))
        return 0;
    NET_PEER_FROM_ARGS(&p, args);
    net_sk_peer.update(&sk, &p);
    struct net_remote remote = {};
    remote.family = p.family;
    remote.port = p.remote_port;
    __builtin_memcpy(remote.addr, p.remote_addr, NET_ADDR_LEN);
    net_accepted.update(&remote, &p);
    return 0;
}

#ifdef HAVE_TP_tcp_rcv_space_adjust
TRACEPOINT_PROBE(tcp, tcp_rcv_space_adjust)
{
    if (!net_self_gpu())
        return 0;
    u64 sk = (u64)args->skaddr;
    if (net_sk_peer.lookup(&sk))
        return 0;
    struct net_peer p = {};
    NET_PEER_FROM_ARGS(&p, args);
    net_sk_peer.update(&sk, &p);
    return 0;
}
#endif

/* ---- bytes ------------------------------------------------------------ */

static __always_inline void net_count(u64 sk, u16 family, u16 protocol, int ret, int sent)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!is_gpu_or_nccl_proc(tgid))
        return;
    if (ret <= 0 || (family != NET_AF_INET && family != NET_AF_INET6))
        return;
    struct net_flow_key k = {};
    k.tgid = tgid;
    k.family = family;
    k.protocol = (u8)protocol;
    struct net_peer *p = net_sk_peer.lookup(&sk);
    if (p) {
        k.family = p->family;
        k.remote_port = p->remote_port;
        __builtin_memcpy(k.remote_addr, p->remote_addr, NET_ADDR_LEN);
    }
    struct net_flow_val *v = net_flows.lookup(&k);
    if (!v) {
        struct net_flow_val zero = {};
        /* BPF_NOEXIST: when another CPU inserted first, its entry (and
         * its counts) stay, and the lookup below finds it */
        net_flows.insert(&k, &zero);
        v = net_flows.lookup(&k);
        if (!v) {
            u32 z = 0;
            u64 *lost = net_flow_lost.lookup(&z);
            if (lost)
                (*lost)++;
            return;
        }
    }
    if (sent)
        __sync_fetch_and_add(&v->bytes_sent, (u64)ret);
    else
        __sync_fetch_and_add(&v->bytes_received, (u64)ret);
}

TRACEPOINT_PROBE(sock, sock_send_length)
{
    net_count((u64)args->sk, args->family, args->protocol, args->ret, 1);
    return 0;
}

TRACEPOINT_PROBE(sock, sock_recv_length)
{
    if (args->flags & NET_MSG_PEEK)
        return 0;
    net_count((u64)args->sk, args->family, args->protocol, args->ret, 0);
    return 0;
}
