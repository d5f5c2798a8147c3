// Internal C surface of YoMoQUIC: the ngtcp2 0.12 / gnutls headers plus small
// shims for what Swift cannot express (CMSG macros, variadic callbacks, fixed
// gnutls set-up sequences). Never exported as a product.
#ifndef CNGTCP2_H
#define CNGTCP2_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <malloc.h>
#include <signal.h>
#include <ngtcp2/ngtcp2.h>
#include <ngtcp2/ngtcp2_crypto.h>
#include <ngtcp2/ngtcp2_crypto_gnutls.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <gnutls/crypto.h>

/// Sends one datagram, or `len / segment` equal datagrams in one syscall when
/// `segment` is non-zero and smaller than `len` (UDP GSO). `addr` may be NULL on
/// a connected socket. Returns bytes sent or -errno.
ssize_t cngtcp2_send(int fd, const uint8_t *buf, size_t len, size_t segment,
                     const struct sockaddr *addr, socklen_t addrlen);
/// The same, from the source address `from` (its address only; NULL: the
/// kernel's choice), for a socket bound to a wildcard address.
ssize_t cngtcp2_send_from(int fd, const uint8_t *buf, size_t len, size_t segment,
                          const struct sockaddr *addr, socklen_t addrlen,
                          const struct sockaddr *from);

/// Receives one datagram (or a GRO-coalesced train of them: `*segment` is then
/// set to their size, else to the returned length). Returns bytes or -errno.
ssize_t cngtcp2_recv(int fd, uint8_t *buf, size_t cap,
                     struct sockaddr_storage *addr, socklen_t *addrlen,
                     size_t *segment);
/// The same, with `*to` set to the address the datagram was sent to (its
/// address only, port 0) when the socket reports it (cngtcp2_enable_pktinfo),
/// else to family AF_UNSPEC.
ssize_t cngtcp2_recv_to(int fd, uint8_t *buf, size_t cap,
                        struct sockaddr_storage *addr, socklen_t *addrlen,
                        size_t *segment, struct sockaddr_storage *to);
/* Reports each received datagram's destination address (IP_PKTINFO,
   IPV6_RECVPKTINFO): a socket bound to a wildcard address answers from it. */
int cngtcp2_enable_pktinfo(int fd, int family);

/// Asks the kernel to coalesce received datagrams (UDP GRO). 0 on success.
int cngtcp2_enable_gro(int fd);
/* Don't-fragment on the socket (IPv4, and IPv6 for AF_INET6), so that Path
   MTU Discovery probes that are too big fail instead of being fragmented. */
int cngtcp2_set_dont_fragment(int fd, int family);
/* Queues ICMP errors for the datagrams a socket sent (IP_RECVERR,
   IPV6_RECVERR), to be read with cngtcp2_recv_icmp_error. */
int cngtcp2_enable_recverr(int fd, int family);
/* What an error from the socket's error queue says. */
enum {
  CNGTCP2_ICMP_OTHER = 0,
  /* ICMP or ICMPv6 port unreachable. */
  CNGTCP2_ICMP_UNREACHABLE = 1,
  /* The datagram was too big for the path: ICMP fragmentation needed, ICMPv6
     packet too big, or the local interface's MTU; *mtu is the MTU reported. */
  CNGTCP2_ICMP_TOO_BIG = 2,
};
/* Reads one error from the socket's error queue: one of the values above,
   with *addr the address the datagram went to; -errno (-EAGAIN once the
   queue is empty). */
ssize_t cngtcp2_recv_icmp_error(int fd, struct sockaddr_storage *addr, socklen_t *addrlen, uint32_t *mtu);

/// Fills `cred` with a fresh self-signed ECDSA P-256 certificate for
/// "localhost", 127.0.0.1 and ::1 (what the Go zipper does at start).
int cngtcp2_set_self_signed(gnutls_certificate_credentials_t cred);

/// Creates a gnutls session wired to ngtcp2 for QUIC: TLS 1.3 only without the
/// middlebox compatibility mode, ALPN `alpn` (mandatory), `conn_ref` as the
/// session pointer. Client: `sni` (may be NULL) is sent as SNI; when `verify`
/// is set the chain is checked and, if `verify_name` is not NULL, the name too
/// (gnutls keeps the `verify_name` pointer: it must outlive the session).
/// Server: `verify` requires and checks a client certificate.
/// Returns a gnutls error code (0 = success).
int cngtcp2_tls_session_new(gnutls_session_t *psession, int is_server,
                            gnutls_certificate_credentials_t cred,
                            const char *sni, const char *verify_name, int verify,
                            const char *alpn, ngtcp2_crypto_conn_ref *conn_ref);

/// epoll_wait with a nanosecond timeout (`timeout_ns` < 0: wait forever), so
/// sub-millisecond pacing and retransmission timers are honoured.
int cngtcp2_epoll_wait(int epfd, struct epoll_event *events, int maxevents,
                       int64_t timeout_ns);

/// Sets `settings.log_printf` to a printer of ngtcp2's debug trace to stderr
/// (Swift cannot implement a variadic callback).
void cngtcp2_settings_enable_log(ngtcp2_settings *settings);

/// Catches `signo` with a handler that writes its number, one byte, to
/// `write_fd` and does nothing else (async-signal-safe; the fd should not
/// block). The disposition it replaces goes to `previous`. Every signal so
/// caught shares the last `write_fd` given. Returns sigaction's result.
int cngtcp2_relay_signal(int signo, int write_fd, struct sigaction *previous);

#endif
