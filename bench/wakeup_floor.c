/* The device side of bench/wakeup_floor.py, in C: what dvrlinkd's system calls cost per
 * 10 KB write when nothing else runs around them (no cipher, no protocol, no interpreter).
 *
 *     wakeup_floor SEGMENT TCP_PORT UDP_PORT
 *
 * Connects to 127.0.0.1:TCP_PORT (the source) and, per TCP read, sends what it read to
 * 127.0.0.1:UDP_PORT in one sendmsg with UDP_SEGMENT = SEGMENT (each datagram alone where the
 * kernel refuses GSO). Datagrams that come back (the viewer's ACKs) are read until EAGAIN, as
 * dvrlinkd reads its ICE sockets. At the source's EOF it prints one line:
 *
 *     writes N cpu_ns C wall_ns W gso 0|1
 *
 * with its own CPU time (/proc/self/schedstat) from the first read to the EOF.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif

static long long cpu_ns(void)
{
    long long value = -1;
    FILE *file = fopen("/proc/self/schedstat", "r");
    if (file != NULL) {
        if (fscanf(file, "%lld", &value) != 1)
            value = -1;
        fclose(file);
    }
    return value;
}

static long long wall_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (long long)now.tv_sec * 1000000000LL + now.tv_nsec;
}

static int send_one_run(int sock, const struct sockaddr_in *peer, char *data, size_t size, int segment, int *gso);

/* A read from the source can hold several writes when this process ran late (a busy machine): one
 * GSO send carries at most 64 segments and 65,507 bytes, so longer reads go out as several runs. */
static int send_run(int sock, const struct sockaddr_in *peer, char *data, size_t size, int segment, int *gso)
{
    size_t most = (size_t)segment * (65507 / (size_t)segment < 64 ? 65507 / (size_t)segment : 64);
    for (size_t at = 0; at < size; at += most) {
        size_t piece = size - at < most ? size - at : most;
        if (send_one_run(sock, peer, data + at, piece, segment, gso) != 0)
            return -1;
    }
    return 0;
}

static int send_one_run(int sock, const struct sockaddr_in *peer, char *data, size_t size, int segment, int *gso)
{
    if (*gso) {
        char control[CMSG_SPACE(sizeof(unsigned short))];
        struct iovec iov = {data, size};
        struct msghdr msg;
        memset(&msg, 0, sizeof msg);
        memset(control, 0, sizeof control);
        msg.msg_name = (void *)peer;
        msg.msg_namelen = sizeof *peer;
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_UDP;
        cmsg->cmsg_type = UDP_SEGMENT;
        cmsg->cmsg_len = CMSG_LEN(sizeof(unsigned short));
        unsigned short seg = (unsigned short)segment;
        memcpy(CMSG_DATA(cmsg), &seg, sizeof seg);
        if (sendmsg(sock, &msg, 0) >= 0)
            return 0;
        if (errno != EIO && errno != EINVAL && errno != ENOPROTOOPT)
            return -1;
        *gso = 0; /* the kernel refuses GSO here: one datagram each from now on */
    }
    for (size_t at = 0; at < size; at += (size_t)segment) {
        size_t piece = size - at < (size_t)segment ? size - at : (size_t)segment;
        if (sendto(sock, data + at, piece, 0, (const struct sockaddr *)peer, sizeof *peer) < 0 && errno != EAGAIN)
            return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s SEGMENT TCP_PORT UDP_PORT (run by python -m bench.wakeup_floor)\n", argv[0]);
        return 2;
    }
    int segment = atoi(argv[1]);
    struct sockaddr_in source = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[2]))};
    struct sockaddr_in viewer = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[3]))};
    inet_pton(AF_INET, "127.0.0.1", &source.sin_addr);
    inet_pton(AF_INET, "127.0.0.1", &viewer.sin_addr);
    int tcp = socket(AF_INET, SOCK_STREAM, 0);
    if (tcp < 0 || connect(tcp, (struct sockaddr *)&source, sizeof source) != 0) {
        perror("wakeup_floor: connecting to the source");
        return 1;
    }
    int udp = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(udp, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one); /* as dvrlinkd's stamped reads */
    int poll = epoll_create1(0);
    struct epoll_event event = {.events = EPOLLIN};
    event.data.fd = tcp;
    epoll_ctl(poll, EPOLL_CTL_ADD, tcp, &event);
    event.data.fd = udp;
    epoll_ctl(poll, EPOLL_CTL_ADD, udp, &event);
    static char buffer[262144], incoming[65536], control[256];
    long long cpu0 = -1, wall0 = 0;
    long writes = 0;
    int gso = 1;
    for (;;) {
        struct epoll_event ready[4];
        int count = epoll_wait(poll, ready, 4, 30000);
        if (count <= 0) {
            fprintf(stderr, "wakeup_floor: nothing from the source for 30 s\n");
            return 1;
        }
        int done = 0;
        for (int i = 0; i < count; i++) {
            if (ready[i].data.fd == tcp) {
                ssize_t got = recv(tcp, buffer, sizeof buffer, 0);
                if (got <= 0) {
                    done = 1;
                    break;
                }
                if (cpu0 < 0) {
                    cpu0 = cpu_ns();
                    wall0 = wall_ns();
                }
                if (send_run(udp, &viewer, buffer, (size_t)got, segment, &gso) != 0) {
                    perror("wakeup_floor: sending");
                    return 1;
                }
                writes++;
            } else {
                for (;;) {
                    struct iovec iov = {incoming, sizeof incoming};
                    struct msghdr msg;
                    memset(&msg, 0, sizeof msg);
                    msg.msg_iov = &iov;
                    msg.msg_iovlen = 1;
                    msg.msg_control = control;
                    msg.msg_controllen = sizeof control;
                    if (recvmsg(udp, &msg, 0) < 0)
                        break;
                }
            }
        }
        if (done)
            break;
    }
    printf("writes %ld cpu_ns %lld wall_ns %lld gso %d\n", writes, cpu_ns() - cpu0, wall_ns() - wall0, gso);
    return 0;
}
