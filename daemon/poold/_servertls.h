/*
 * TLS on a server leg in C: send and receive through libpq's own OpenSSL session
 * (an SSL*), for _sockio.c's SocketTransport. The Python reference is
 * servertls.TlsTransport; servertls.py says why the session must be libpq's.
 */
#ifndef POOLD_SERVERTLS_H
#define POOLD_SERVERTLS_H

#include <Python.h>
#include <stddef.h>
#include <sys/types.h>

/* The OpenSSL functions of the libssl libpq was linked with (servertls.functions
 * finds them; OpenSsl.addresses gives them in this order). */
typedef struct {
    int (*read)(void *ssl, void *buf, int n);
    int (*write)(void *ssl, const void *buf, int n);
    int (*get_error)(const void *ssl, int ret);
    int (*pending)(const void *ssl);
    long (*ctrl)(void *ssl, int cmd, long larg, void *parg);
    void (*err_clear)(void);
    unsigned long (*err_get)(void);
    void (*err_string_n)(unsigned long e, char *buf, size_t len);
    int (*has_pending)(const void *ssl);
    int (*get_read_ahead)(const void *ssl);
    void (*set_read_ahead)(void *ssl, int yes);
} TlsOps;

/* A server leg's session: libpq's SSL*, the functions, and the modes switched
 * on while poold has it (given back at close). */
typedef struct {
    void *ssl;
    const TlsOps *ops;
    long added_modes;
    long read_ahead; /* libpq's read-ahead setting, given back at close */
    char read_wants_write; /* SSL_read waits for the socket to be writable */
    char write_wants_read; /* SSL_write waits for it to be readable */
} TlsLeg;

/* What servertls_recv and servertls_send return besides a byte count. */
#define TLS_AGAIN (-1) /* OpenSSL waits for the socket: see read_wants_write, write_wants_read */
#define TLS_FAILED (-2) /* a Python exception (ConnectionError) is set */

int servertls_open(TlsLeg *leg, PyObject *spec);
void servertls_close(TlsLeg *leg);
Py_ssize_t servertls_recv(TlsLeg *leg, char *buf, Py_ssize_t n);
Py_ssize_t servertls_send(TlsLeg *leg, const char *buf, Py_ssize_t n);
int servertls_pending(const TlsLeg *leg);

#endif
