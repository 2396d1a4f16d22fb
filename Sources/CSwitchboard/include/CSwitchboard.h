// CSwitchboard: only what Swift cannot import from Glibc and OpenSSL on its own.
// - sys/epoll.h and sys/eventfd.h are not part of Swift's Glibc module.
// - accept4 needs _GNU_SOURCE, which must not leak into a public header (it breaks SwiftGlibc),
//   so it is wrapped in the .c file.
// - OpenSSL's SSL_CTX_set_mode & co. are function-like macros, invisible to the importer.
#ifndef CSWITCHBOARD_H
#define CSWITCHBOARD_H

#include <stdint.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <openssl/ssl.h>

/// accept4(2) with SOCK_NONBLOCK|SOCK_CLOEXEC; returns -1 and sets errno like the syscall.
int csb_accept4_nonblocking(int fd, struct sockaddr *addr, socklen_t *len);

/// The connected Unix-socket peer's uid (SO_PEERCRED; struct ucred needs _GNU_SOURCE). 0 on success.
int csb_peer_uid(int fd, uint32_t *uid);

/// CLOCK_MONOTONIC_COARSE in milliseconds: read from the vDSO, no syscall, ~1-4 ms resolution.
uint64_t csb_monotonic_coarse_ms(void);
/// CLOCK_MONOTONIC in nanoseconds (vDSO).
uint64_t csb_monotonic_ns(void);
/// CLOCK_REALTIME in milliseconds since the Unix epoch.
uint64_t csb_realtime_ms(void);

/// glibc malloc_trim(3): gives free heap pages of every arena back to the kernel (madvise), not only
/// the top of the heap. Takes each arena's lock in turn: call it on a helper thread.
int csb_malloc_trim(size_t pad);
/// Bytes glibc holds free in its arenas (mallinfo2().fordblks); walks the free lists.
size_t csb_malloc_free_bytes(void);

// OpenSSL macros.
long csb_SSL_CTX_set_mode(SSL_CTX *ctx, long mode);
long csb_SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version);
long csb_SSL_set_tlsext_host_name(SSL *ssl, const char *name);
long csb_SSL_CTX_set_session_cache_mode(SSL_CTX *ctx, long mode);
uint64_t csb_SSL_OP_NO_RENEGOTIATION(void);
uint64_t csb_SSL_OP_NO_COMPRESSION(void);
long csb_SSL_MODE_RELEASE_BUFFERS(void);
long csb_SSL_MODE_ENABLE_PARTIAL_WRITE(void);
long csb_SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER(void);
int csb_TLS1_2_VERSION(void);
int csb_TLS1_3_VERSION(void);

// SwitchboardTLS: more function-like macros and SSL_OP_BIT() constants the importer cannot see.
long csb_SSL_CTX_set_max_proto_version(SSL_CTX *ctx, int version);
/// Peer closing TCP without close_notify reads as a clean EOF (frames protect against truncation).
uint64_t csb_SSL_OP_IGNORE_UNEXPECTED_EOF(void);
uint64_t csb_SSL_OP_CIPHER_SERVER_PREFERENCE(void);
/// Only for tests that prove the server refuses old protocol versions.
int csb_TLS1_1_VERSION(void);
/// Read-ahead: OpenSSL fills its record buffer per recv instead of reading header and body separately.
void csb_SSL_CTX_set_read_ahead(SSL_CTX *ctx, int yes);

#endif
