/* N iterations of send(64 bytes) + recv on a UDP socket connected to itself
 * on loopback: two socket-layer calls, each one sock:sock_send_length or
 * sock:sock_recv_length hit. Prints its pid, waits for a line on stdin (so
 * the bench can mark it a GPU process first), then ns per iteration. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 1000000;
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    char buf[64] = {0}, line[16];
    if (s < 0 || bind(s, (void *)&a, sizeof(a)) || getsockname(s, (void *)&a, &len) ||
        connect(s, (void *)&a, sizeof(a)))
        return perror("socket"), 1;
    printf("%d\n", getpid());
    fflush(stdout);
    if (!fgets(line, sizeof(line), stdin))
        return 1;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < n; i++) {
        if (send(s, buf, sizeof(buf), 0) != sizeof(buf) || recv(s, buf, sizeof(buf), 0) != sizeof(buf))
            return perror("io"), 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%.1f\n", ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / n);
    return 0;
}
