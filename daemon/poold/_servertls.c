/*
 * TLS on a server leg in C: SSL_read and SSL_write on libpq's own session, with
 * the results worded as recv and send word theirs, for _sockio.c's transport.
 * Each function mirrors a part of servertls.TlsTransport (named in its comment);
 * the OpenSSL functions come as addresses from servertls.functions, so both
 * twins call the same libssl: the one libpq was linked with.
 */
#include "_servertls.h"

#include <stdint.h>
#include <string.h>

#define SSL_ERROR_SSL 1
#define SSL_ERROR_WANT_READ 2
#define SSL_ERROR_WANT_WRITE 3
#define SSL_ERROR_SYSCALL 5
#define SSL_ERROR_ZERO_RETURN 6
#define SSL_CTRL_MODE 33
#define SSL_CTRL_CLEAR_MODE 78
#define N_FUNCTIONS 11
#define RELAY_MODES 0x3 /* SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER */
#define CHUNK_MAX (1 << 30)

/* The process's copies of the function tables (one per libssl; one in practice). */
#define MAX_OPS 4
static TlsOps ops_seen[MAX_OPS];
static int n_ops_seen;

/* TlsTransport.__init__: ``spec`` is (ssl address, addresses of the functions);
 * the relay's modes are switched on. 0, or -1 with an exception set. */
int
servertls_open(TlsLeg *leg, PyObject *spec)
{
    unsigned long long ssl;
    PyObject *addresses;
    if (!PyArg_ParseTuple(spec, "KO!:tls", &ssl, &PyTuple_Type, &addresses))
        return -1;
    void *fn[N_FUNCTIONS];
    if (PyTuple_GET_SIZE(addresses) != N_FUNCTIONS) {
        PyErr_SetString(PyExc_ValueError, "tls: 11 function addresses expected");
        return -1;
    }
    for (int i = 0; i < N_FUNCTIONS; i++) {
        fn[i] = PyLong_AsVoidPtr(PyTuple_GET_ITEM(addresses, i));
        if (fn[i] == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "tls: a null function address");
            return -1;
        }
    }
    TlsOps ops;
    memcpy(&ops.read, &fn[0], sizeof fn[0]);
    memcpy(&ops.write, &fn[1], sizeof fn[1]);
    memcpy(&ops.get_error, &fn[2], sizeof fn[2]);
    memcpy(&ops.pending, &fn[3], sizeof fn[3]);
    memcpy(&ops.ctrl, &fn[4], sizeof fn[4]);
    memcpy(&ops.err_clear, &fn[5], sizeof fn[5]);
    memcpy(&ops.err_get, &fn[6], sizeof fn[6]);
    memcpy(&ops.err_string_n, &fn[7], sizeof fn[7]);
    memcpy(&ops.has_pending, &fn[8], sizeof fn[8]);
    memcpy(&ops.get_read_ahead, &fn[9], sizeof fn[9]);
    memcpy(&ops.set_read_ahead, &fn[10], sizeof fn[10]);
    int i;
    for (i = 0; i < n_ops_seen && memcmp(&ops_seen[i], &ops, sizeof ops) != 0; i++)
        ;
    if (i == n_ops_seen) {
        if (n_ops_seen == MAX_OPS) {
            PyErr_SetString(PyExc_RuntimeError, "tls: too many OpenSSL libraries");
            return -1;
        }
        ops_seen[n_ops_seen++] = ops;
    }
    leg->ops = &ops_seen[i];
    leg->ssl = (void *)(uintptr_t)ssl;
    leg->added_modes = RELAY_MODES & ~leg->ops->ctrl(leg->ssl, SSL_CTRL_MODE, 0, NULL);
    leg->ops->ctrl(leg->ssl, SSL_CTRL_MODE, RELAY_MODES, NULL);
    /* the function, not SSL_ctrl: from OpenSSL 3.2 only it reaches the record layer in use */
    leg->read_ahead = leg->ops->get_read_ahead(leg->ssl);
    leg->ops->set_read_ahead(leg->ssl, 1);
    leg->read_wants_write = leg->write_wants_read = 0;
    return 0;
}

/* TlsTransport._finish: libpq gets its session back with the modes and the
 * read-ahead it had. */
void
servertls_close(TlsLeg *leg)
{
    if (leg->ssl == NULL)
        return;
    if (leg->added_modes)
        leg->ops->ctrl(leg->ssl, SSL_CTRL_CLEAR_MODE, leg->added_modes, NULL);
    leg->ops->set_read_ahead(leg->ssl, (int)leg->read_ahead);
    leg->ssl = NULL;
}

/* OpenSSL's queued error as a ConnectionError (the queue cleared). */
static Py_ssize_t
failed(TlsLeg *leg, const char *otherwise)
{
    unsigned long code = leg->ops->err_get();
    leg->ops->err_clear();
    if (code) {
        char text[256];
        leg->ops->err_string_n(code, text, sizeof text);
        PyErr_SetString(PyExc_ConnectionError, text);
    }
    else
        PyErr_SetString(PyExc_ConnectionError, otherwise);
    return TLS_FAILED;
}

/* One SSL_read of TlsTransport._read: bytes, 0 at EOF (close_notify, or the
 * socket closed), TLS_AGAIN, or TLS_FAILED. */
Py_ssize_t
servertls_recv(TlsLeg *leg, char *buf, Py_ssize_t n)
{
    const TlsOps *ops = leg->ops;
    ops->err_clear();
    int got = ops->read(leg->ssl, buf, n > CHUNK_MAX ? CHUNK_MAX : (int)n);
    if (got > 0)
        return got;
    int err = ops->get_error(leg->ssl, got);
    if (err == SSL_ERROR_WANT_READ)
        return TLS_AGAIN;
    if (err == SSL_ERROR_WANT_WRITE) {
        leg->read_wants_write = 1;
        return TLS_AGAIN;
    }
    if (err == SSL_ERROR_ZERO_RETURN || (err == SSL_ERROR_SYSCALL && ops->err_get() == 0))
        return 0;
    return failed(leg, "TLS error");
}

/* One SSL_write of TlsTransport._flush (partial writes on): bytes taken,
 * TLS_AGAIN, or TLS_FAILED. */
Py_ssize_t
servertls_send(TlsLeg *leg, const char *buf, Py_ssize_t n)
{
    const TlsOps *ops = leg->ops;
    ops->err_clear();
    int sent = ops->write(leg->ssl, buf, n > CHUNK_MAX ? CHUNK_MAX : (int)n);
    if (sent > 0)
        return sent;
    int err = ops->get_error(leg->ssl, sent);
    if (err == SSL_ERROR_WANT_WRITE)
        return TLS_AGAIN;
    if (err == SSL_ERROR_WANT_READ) {
        leg->write_wants_read = 1;
        return TLS_AGAIN;
    }
    return failed(leg, err == SSL_ERROR_SSL ? "TLS error" : "server connection lost while writing");
}

/* TlsTransport._held: whether OpenSSL holds bytes the socket will not announce
 * again (decrypted, or read ahead and not yet decrypted). */
int
servertls_pending(const TlsLeg *leg)
{
    return leg->ssl != NULL && leg->ops->has_pending(leg->ssl);
}
