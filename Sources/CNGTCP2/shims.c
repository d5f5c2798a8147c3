#define _GNU_SOURCE
#include "cngtcp2.h"

#include <errno.h>
#include <unistd.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <linux/errqueue.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

ssize_t cngtcp2_send(int fd, const uint8_t *buf, size_t len, size_t segment,
                     const struct sockaddr *addr, socklen_t addrlen) {
  return cngtcp2_send_from(fd, buf, len, segment, addr, addrlen, NULL);
}

/* Appends one control message at `*used` bytes into `control`. */
static void append_cmsg(char *control, size_t *used, int level, int type, const void *data, size_t len) {
  struct cmsghdr *cm = (struct cmsghdr *)(control + *used);
  cm->cmsg_level = level;
  cm->cmsg_type = type;
  cm->cmsg_len = CMSG_LEN(len);
  memcpy(CMSG_DATA(cm), data, len);
  *used += CMSG_SPACE(len);
}

ssize_t cngtcp2_send_from(int fd, const uint8_t *buf, size_t len, size_t segment,
                          const struct sockaddr *addr, socklen_t addrlen,
                          const struct sockaddr *from) {
  struct iovec iov = {(void *)buf, len};
  struct msghdr msg;
  memset(&msg, 0, sizeof(msg));
  msg.msg_name = (void *)addr;
  msg.msg_namelen = addr ? addrlen : 0;
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  union {
    char buf[CMSG_SPACE(sizeof(uint16_t)) + CMSG_SPACE(sizeof(struct in6_pktinfo))];
    struct cmsghdr align;
  } control;
  memset(&control, 0, sizeof(control));
  size_t used = 0;
  if (segment > 0 && segment < len) {
    uint16_t seg = (uint16_t)segment;
    append_cmsg(control.buf, &used, SOL_UDP, UDP_SEGMENT, &seg, sizeof(seg));
  }
  /* The source address, for a socket bound to a wildcard address on a host
     with several: the one the peer wrote to, else its connected socket drops
     what comes from another. */
  if (from && from->sa_family == AF_INET) {
    struct in_pktinfo info;
    memset(&info, 0, sizeof(info));
    info.ipi_spec_dst = ((const struct sockaddr_in *)from)->sin_addr;
    append_cmsg(control.buf, &used, IPPROTO_IP, IP_PKTINFO, &info, sizeof(info));
  } else if (from && from->sa_family == AF_INET6) {
    struct in6_pktinfo info;
    memset(&info, 0, sizeof(info));
    info.ipi6_addr = ((const struct sockaddr_in6 *)from)->sin6_addr;
    append_cmsg(control.buf, &used, IPPROTO_IPV6, IPV6_PKTINFO, &info, sizeof(info));
  }
  if (used > 0) {
    msg.msg_control = control.buf;
    msg.msg_controllen = used;
  }
  ssize_t n;
  do {
    n = sendmsg(fd, &msg, 0);
  } while (n < 0 && errno == EINTR);
  return n < 0 ? -errno : n;
}

/* One recvmsg without waiting, retried on EINTR, into `msg` (for its control
   messages and flags); *addr gets the message's address: the sender, or from
   the error queue the refused datagram's destination. -errno on failure. */
static ssize_t recv_message(int fd, int flags, struct msghdr *msg, struct iovec *iov,
                            void *control, size_t control_length,
                            struct sockaddr_storage *addr, socklen_t *addrlen) {
  memset(msg, 0, sizeof(*msg));
  msg->msg_name = addr;
  msg->msg_namelen = sizeof(*addr);
  msg->msg_iov = iov;
  msg->msg_iovlen = 1;
  msg->msg_control = control;
  msg->msg_controllen = control_length;
  ssize_t n;
  do {
    n = recvmsg(fd, msg, flags | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return -errno;
  *addrlen = msg->msg_namelen;
  return n;
}

ssize_t cngtcp2_recv(int fd, uint8_t *buf, size_t cap,
                     struct sockaddr_storage *addr, socklen_t *addrlen,
                     size_t *segment) {
  return cngtcp2_recv_to(fd, buf, cap, addr, addrlen, segment, NULL);
}

ssize_t cngtcp2_recv_to(int fd, uint8_t *buf, size_t cap,
                        struct sockaddr_storage *addr, socklen_t *addrlen,
                        size_t *segment, struct sockaddr_storage *to) {
  struct iovec iov = {buf, cap};
  union {
    char buf[CMSG_SPACE(sizeof(int)) + CMSG_SPACE(sizeof(struct in6_pktinfo)) + CMSG_SPACE(sizeof(struct in_pktinfo))];
    struct cmsghdr align;
  } control;
  struct msghdr msg;
  ssize_t n = recv_message(fd, 0, &msg, &iov, control.buf, sizeof(control.buf), addr, addrlen);
  if (n < 0) return n;
  *segment = (size_t)n;
  if (to) to->ss_family = AF_UNSPEC;
  for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
    if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO) {
      int seg;
      memcpy(&seg, CMSG_DATA(cm), sizeof(seg));
      if (seg > 0) *segment = (size_t)seg;
    } else if (to && cm->cmsg_level == IPPROTO_IP && cm->cmsg_type == IP_PKTINFO) {
      struct in_pktinfo info;
      memcpy(&info, CMSG_DATA(cm), sizeof(info));
      struct sockaddr_in *sin = (struct sockaddr_in *)to;
      memset(sin, 0, sizeof(*sin));
      sin->sin_family = AF_INET;
      sin->sin_addr = info.ipi_addr;
    } else if (to && cm->cmsg_level == IPPROTO_IPV6 && cm->cmsg_type == IPV6_PKTINFO) {
      struct in6_pktinfo info;
      memcpy(&info, CMSG_DATA(cm), sizeof(info));
      struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)to;
      memset(sin6, 0, sizeof(*sin6));
      sin6->sin6_family = AF_INET6;
      sin6->sin6_addr = info.ipi6_addr;
    }
  }
  // A truncated datagram is useless to QUIC; report it as such.
  if (msg.msg_flags & MSG_TRUNC) return -EMSGSIZE;
  return n;
}

int cngtcp2_enable_gro(int fd) {
  int on = 1;
  return setsockopt(fd, SOL_UDP, UDP_GRO, &on, sizeof(on));
}

int cngtcp2_set_dont_fragment(int fd, int family) {
  /* PROBE: set DF and never fragment, without the kernel's PMTU cache
     shrinking our datagrams; ngtcp2's PMTUD finds the size itself. */
  int probe4 = IP_PMTUDISC_PROBE;
  int rv = setsockopt(fd, IPPROTO_IP, IP_MTU_DISCOVER, &probe4, sizeof(probe4));
  if (family == AF_INET6) {
    int probe6 = IPV6_PMTUDISC_PROBE;
    rv = setsockopt(fd, IPPROTO_IPV6, IPV6_MTU_DISCOVER, &probe6, sizeof(probe6));
  }
  return rv;
}

int cngtcp2_enable_pktinfo(int fd, int family) {
  int on = 1;
  int rv = setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &on, sizeof(on));
  if (family == AF_INET6) rv = setsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &on, sizeof(on));
  return rv;
}

int cngtcp2_enable_recverr(int fd, int family) {
  int on = 1;
  /* On an IPv6 socket the IPv4 option covers its v4-mapped peers. */
  int rv = setsockopt(fd, IPPROTO_IP, IP_RECVERR, &on, sizeof(on));
  if (family == AF_INET6) rv = setsockopt(fd, IPPROTO_IPV6, IPV6_RECVERR, &on, sizeof(on));
  return rv;
}

ssize_t cngtcp2_recv_icmp_error(int fd, struct sockaddr_storage *addr, socklen_t *addrlen, uint32_t *mtu) {
  uint8_t payload[64]; /* the refused datagram's start: not needed */
  struct iovec iov = {payload, sizeof(payload)};
  /* Room for the packet-info messages that come first on a socket that asks
     for them (cngtcp2_enable_pktinfo): cut short, the error would be lost. */
  union {
    char buf[CMSG_SPACE(sizeof(struct sock_extended_err) + sizeof(struct sockaddr_in6)) +
             CMSG_SPACE(sizeof(struct in6_pktinfo)) + CMSG_SPACE(sizeof(struct in_pktinfo)) + 64];
    struct cmsghdr align;
  } control;
  struct msghdr msg;
  ssize_t n = recv_message(fd, MSG_ERRQUEUE, &msg, &iov, control.buf, sizeof(control.buf), addr, addrlen);
  if (n < 0) return n;
  for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
    int v4 = cm->cmsg_level == IPPROTO_IP && cm->cmsg_type == IP_RECVERR;
    int v6 = cm->cmsg_level == IPPROTO_IPV6 && cm->cmsg_type == IPV6_RECVERR;
    if (!v4 && !v6) continue;
    struct sock_extended_err err;
    memcpy(&err, CMSG_DATA(cm), sizeof(err));
    if (err.ee_origin == SO_EE_ORIGIN_ICMP && err.ee_type == 3 && err.ee_code == 3) return CNGTCP2_ICMP_UNREACHABLE;
    if (err.ee_origin == SO_EE_ORIGIN_ICMP6 && err.ee_type == 1 && err.ee_code == 4) return CNGTCP2_ICMP_UNREACHABLE;
    if (err.ee_errno == EMSGSIZE && err.ee_info > 0) {
      *mtu = err.ee_info;
      return CNGTCP2_ICMP_TOO_BIG;
    }
  }
  return CNGTCP2_ICMP_OTHER;
}

int cngtcp2_set_self_signed(gnutls_certificate_credentials_t cred) {
  gnutls_x509_privkey_t key = NULL;
  gnutls_x509_crt_t crt = NULL;
  int rv;
  if ((rv = gnutls_x509_privkey_init(&key)) < 0) return rv;
  if ((rv = gnutls_x509_crt_init(&crt)) < 0) goto out;
  if ((rv = gnutls_x509_privkey_generate(
           key, GNUTLS_PK_ECDSA,
           GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1), 0)) < 0)
    goto out;
  unsigned char serial[16];
  if ((rv = gnutls_rnd(GNUTLS_RND_NONCE, serial, sizeof(serial))) < 0) goto out;
  serial[0] &= 0x7f;  // positive INTEGER
  time_t now = time(NULL);
  static const unsigned char v4[4] = {127, 0, 0, 1};
  static const unsigned char v6[16] = {0, 0, 0, 0, 0, 0, 0, 0,
                                       0, 0, 0, 0, 0, 0, 0, 1};
  if ((rv = gnutls_x509_crt_set_version(crt, 3)) < 0 ||
      (rv = gnutls_x509_crt_set_serial(crt, serial, sizeof(serial))) < 0 ||
      (rv = gnutls_x509_crt_set_activation_time(crt, now - 3600)) < 0 ||
      (rv = gnutls_x509_crt_set_expiration_time(crt, now + 365 * 24 * 3600)) < 0 ||
      (rv = gnutls_x509_crt_set_dn_by_oid(crt, GNUTLS_OID_X520_ORGANIZATION_NAME,
                                          0, "YoMo", 4)) < 0 ||
      (rv = gnutls_x509_crt_set_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0,
                                          "localhost", 9)) < 0 ||
      (rv = gnutls_x509_crt_set_subject_alt_name(crt, GNUTLS_SAN_DNSNAME,
                                                 "localhost", 9,
                                                 GNUTLS_FSAN_APPEND)) < 0 ||
      (rv = gnutls_x509_crt_set_subject_alt_name(crt, GNUTLS_SAN_IPADDRESS, v4,
                                                 4, GNUTLS_FSAN_APPEND)) < 0 ||
      (rv = gnutls_x509_crt_set_subject_alt_name(crt, GNUTLS_SAN_IPADDRESS, v6,
                                                 16, GNUTLS_FSAN_APPEND)) < 0 ||
      (rv = gnutls_x509_crt_set_key(crt, key)) < 0 ||
      (rv = gnutls_x509_crt_set_basic_constraints(crt, 0, -1)) < 0 ||
      (rv = gnutls_x509_crt_set_key_usage(crt, GNUTLS_KEY_DIGITAL_SIGNATURE)) < 0 ||
      (rv = gnutls_x509_crt_set_key_purpose_oid(crt, GNUTLS_KP_TLS_WWW_SERVER,
                                                0)) < 0 ||
      (rv = gnutls_x509_crt_sign2(crt, crt, key, GNUTLS_DIG_SHA256, 0)) < 0)
    goto out;
  rv = gnutls_certificate_set_x509_key(cred, &crt, 1, key);
out:
  if (crt) gnutls_x509_crt_deinit(crt);
  gnutls_x509_privkey_deinit(key);
  return rv < 0 ? rv : 0;
}

// RFC 9001 §8.4: QUIC forbids the TLS 1.3 middlebox compatibility mode.
static const char priority[] =
    "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-128-GCM:+AES-256-GCM:"
    "+CHACHA20-POLY1305:-GROUP-ALL:+GROUP-X25519:+GROUP-SECP256R1:"
    "+GROUP-SECP384R1:+GROUP-SECP521R1:%DISABLE_TLS13_COMPAT_MODE";

static int client_hello_alpn_check(gnutls_session_t session, unsigned int htype,
                                   unsigned when, unsigned int incoming,
                                   const gnutls_datum_t *msg) {
  (void)htype; (void)when; (void)incoming; (void)msg;
  gnutls_datum_t selected;
  if (gnutls_alpn_get_selected_protocol(session, &selected) != 0)
    return GNUTLS_E_NO_APPLICATION_PROTOCOL;
  return 0;
}

int cngtcp2_tls_session_new(gnutls_session_t *psession, int is_server,
                            gnutls_certificate_credentials_t cred,
                            const char *sni, const char *verify_name, int verify,
                            const char *alpn, ngtcp2_crypto_conn_ref *conn_ref) {
  gnutls_session_t session;
  int rv = gnutls_init(&session, (is_server ? GNUTLS_SERVER : GNUTLS_CLIENT) |
                                     GNUTLS_ENABLE_EARLY_DATA |
                                     GNUTLS_NO_END_OF_EARLY_DATA);
  if (rv != 0) return rv;
  rv = is_server ? ngtcp2_crypto_gnutls_configure_server_session(session)
                 : ngtcp2_crypto_gnutls_configure_client_session(session);
  if (rv != 0) { rv = GNUTLS_E_INTERNAL_ERROR; goto fail; }
  if ((rv = gnutls_priority_set_direct(session, priority, NULL)) != 0) goto fail;
  if ((rv = gnutls_credentials_set(session, GNUTLS_CRD_CERTIFICATE, cred)) != 0)
    goto fail;
  gnutls_datum_t proto = {(unsigned char *)alpn, (unsigned int)strlen(alpn)};
  if ((rv = gnutls_alpn_set_protocols(session, &proto, 1,
                                      GNUTLS_ALPN_MANDATORY)) != 0)
    goto fail;
  if (is_server) {
    gnutls_handshake_set_hook_function(session, GNUTLS_HANDSHAKE_CLIENT_HELLO,
                                       GNUTLS_HOOK_POST, client_hello_alpn_check);
    if (verify) {
      gnutls_certificate_server_set_request(session, GNUTLS_CERT_REQUIRE);
      gnutls_session_set_verify_cert(session, NULL, 0);
    }
  } else {
    if (sni && *sni &&
        (rv = gnutls_server_name_set(session, GNUTLS_NAME_DNS, sni,
                                     strlen(sni))) != 0)
      goto fail;
    // Not calling set_verify_cert means no verification (the Go SDK default).
    if (verify)
      gnutls_session_set_verify_cert(
          session, (verify_name && *verify_name) ? verify_name : NULL, 0);
  }
  gnutls_session_set_ptr(session, conn_ref);
  *psession = session;
  return 0;
fail:
  gnutls_deinit(session);
  return rv;
}

static void log_printf(void *user_data, const char *format, ...) {
  (void)user_data;
  va_list ap;
  va_start(ap, format);
  vfprintf(stderr, format, ap);
  va_end(ap);
  fputc('\n', stderr);
}

int cngtcp2_epoll_wait(int epfd, struct epoll_event *events, int maxevents,
                       int64_t timeout_ns) {
  struct timespec ts;
  if (timeout_ns >= 0) {
    ts.tv_sec = timeout_ns / 1000000000;
    ts.tv_nsec = timeout_ns % 1000000000;
  }
  int n = epoll_pwait2(epfd, events, maxevents, timeout_ns >= 0 ? &ts : NULL, NULL);
  if (n < 0 && errno == ENOSYS) {
    // Kernels before 5.11: millisecond resolution, rounded up.
    int ms = timeout_ns < 0 ? -1 : (int)((timeout_ns + 999999) / 1000000);
    n = epoll_wait(epfd, events, maxevents, ms);
  }
  return n;
}

void cngtcp2_settings_enable_log(ngtcp2_settings *settings) {
  settings->log_printf = log_printf;
}

/* The pipe that cngtcp2_relay_signal's handler writes to. */
static volatile sig_atomic_t relay_fd = -1;

static void relay_signal_handler(int signo) {
  int saved = errno;
  unsigned char byte = (unsigned char)signo;
  if (relay_fd >= 0) {
    ssize_t written = write(relay_fd, &byte, 1);
    (void)written;
  }
  errno = saved;
}

int cngtcp2_relay_signal(int signo, int write_fd, struct sigaction *previous) {
  relay_fd = write_fd;
  struct sigaction action;
  memset(&action, 0, sizeof action);
  action.sa_handler = relay_signal_handler;
  action.sa_flags = SA_RESTART;
  sigemptyset(&action.sa_mask);
  return sigaction(signo, &action, previous);
}
