/*
 * The relay's sockets in C: client TCP connections accepted, and they and the
 * server legs read and written here, one small object per connection, instead
 * of the event loop's transport objects.
 *
 *   Poller            one epoll set, itself watched by the event loop (add_reader):
 *                     one event loop callback runs every socket event that is ready;
 *                     adopt() puts a server leg (a dup of psycopg's socket) in it
 *   Listener          a listening TCP socket in that set: accept4, TCP_NODELAY, the
 *                     protocol factory, connection_made
 *   SocketTransport   a connected socket: the asyncio.Transport methods the client
 *                     session and the server link use (write, write_eof, close,
 *                     abort, pause_reading, flow control by pause_writing/resume_writing,
 *                     get_extra_info("peername"))
 *
 * The protocols on top are unchanged (client.ClientSession, relay.ServerLink):
 * data_received is called with the bytes read, connection_lost soon after the
 * socket is closed, as asyncio does. TLS is the event loop's: sockio.start_tls
 * hands the socket over (detach). Unix sockets of clients stay with the event loop.
 *
 * Why native, with numbers (docs/performance.md, the login): with pgbench -C a new
 * connection per transaction cost poold 1.29-1.34 times PgBouncer's CPU, and an
 * event loop server doing nothing but a canned login already spent 65-68 us of user
 * CPU per connection (its transport, handles, call_soon callbacks, a weak reference
 * per transport, getsockname and getpeername), against PgBouncer's whole login in
 * 30-35 us of user CPU. Here a connection is one object, a file descriptor in an
 * epoll set and the peer address that accept4 returned.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "_servertls.h"

static PyTypeObject PollerType, ListenerType, TransportType;
static PyObject *s_data_received, *s_connection_made, *s_connection_lost, *s_eof_received, *s_pause_writing,
    *s_resume_writing, *s_call_soon, *s_call_exception_handler, *s_transport,
    *s_protocol, *s_peername, *s_sockname, *s_call_connection_lost;

#define EVENTS_PER_WAIT 64
#define READ_SIZE (256 * 1024)
#define HIGH_WATER (64 * 1024) /* asyncio's default write buffer limits */

typedef struct Pollable Pollable;
typedef void (*on_event_fn)(Pollable *self, uint32_t events);

typedef struct {
    PyObject_HEAD
    int epfd;
    PyObject *loop;
    char dispatching;
    /* while dispatch runs: (transport, exc) pairs whose connection_lost runs when
     * the batch is done, rather than through a call_soon handle each (made when needed) */
    PyObject *lost;
} Poller;

/* What the epoll set holds: a Listener or a SocketTransport. While registered it
 * holds a reference to itself (the set's), given back when it leaves the set. */
#define POLLABLE_HEAD     \
    PyObject_HEAD         \
    on_event_fn on_event; \
    Poller *poller;       \
    int fd;               \
    uint32_t interest;    \
    char registered;

struct Pollable {
    POLLABLE_HEAD
};

typedef struct {
    POLLABLE_HEAD
    PyObject *factory;  /* makes the protocol of each accepted connection */
    PyObject *on_error; /* called with the OSError when accept4 fails for want of resources */
} Listener;

struct SocketTransport {
    POLLABLE_HEAD
    PyObject *protocol;
    PyObject *data_received; /* protocol.data_received, looked up once */
    char *wbuf;              /* bytes the socket did not take yet: wbuf[whead:wlen] */
    Py_ssize_t whead, wlen, wcap;
    Py_ssize_t high, low; /* write buffer limits: pause_writing above high, resume_writing at low */
    char reading, closing, closed, writing_paused, lost_scheduled;
    char eof; /* write_eof was called: the write side is shut once wbuf is sent */
    char shared; /* the socket's open file is another's too (a dup): it leaves the set by epoll_ctl */
    TlsLeg tls;  /* a server leg through libpq's TLS session (tls.ssl set): see _servertls.c */
    struct sockaddr_storage peer;
};

typedef struct SocketTransport SocketTransport;
static PyObject *Transport_call_connection_lost(SocketTransport *self, PyObject *exc);

/* ------------------------------------------------------------------------ */
/* The epoll set                                                            */

/* Leave the set; ``closing``: the socket is about to be closed, which removes it
 * from the set without an epoll_ctl. */
static void
pollable_leave(Pollable *self, int closing)
{
    if (!self->registered)
        return;
    self->registered = 0;
    self->interest = 0;
    if (!closing) {
        struct epoll_event ev = {0};
        epoll_ctl(self->poller->epfd, EPOLL_CTL_DEL, self->fd, &ev);
    }
    Py_DECREF(self); /* the set's reference; the caller holds its own */
}

/* Watch ``events`` of this object's socket (0: leave the set). */
static int
pollable_watch(Pollable *self, uint32_t events)
{
    if (events == self->interest && (events != 0) == self->registered)
        return 0;
    if (events == 0) {
        pollable_leave(self, 0);
        return 0;
    }
    struct epoll_event ev = {.events = events, .data.ptr = self};
    int op = self->registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (epoll_ctl(self->poller->epfd, op, self->fd, &ev) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    if (!self->registered) {
        self->registered = 1;
        Py_INCREF(self);
    }
    self->interest = events;
    return 0;
}

/* The exception set now, taken (Python 3.11 has no PyErr_GetRaisedException). */
static PyObject *
take_exception(void)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (type == NULL)
        return NULL;
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
}

/* An exception a callback raised: to the loop's exception handler, as asyncio
 * reports one from a protocol. */
static void
report(Poller *poller, const char *message, PyObject *exc, PyObject *transport, PyObject *protocol)
{
    PyObject *context = Py_BuildValue("{s:s,s:O}", "message", message, "exception", exc ? exc : Py_None);
    if (context != NULL && transport != NULL)
        PyDict_SetItem(context, s_transport, transport);
    if (context != NULL && protocol != NULL)
        PyDict_SetItem(context, s_protocol, protocol);
    PyObject *r = context ? PyObject_CallMethodOneArg(poller->loop, s_call_exception_handler, context) : NULL;
    if (r == NULL)
        PyErr_WriteUnraisable(poller->loop);
    Py_XDECREF(r);
    Py_XDECREF(context);
}

/* The same for the exception set now. */
static void
report_raised(Poller *poller, const char *message, PyObject *transport, PyObject *protocol)
{
    PyObject *exc = take_exception();
    report(poller, message, exc, transport, protocol);
    Py_XDECREF(exc);
}

static PyObject *
Poller_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *loop;
    static char *kwlist[] = {"loop", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O", kwlist, &loop))
        return NULL;
    Poller *self = (Poller *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->loop = Py_NewRef(loop);
    self->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (self->epfd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void
Poller_dealloc(Poller *self)
{
    if (self->epfd >= 0)
        close(self->epfd);
    Py_XDECREF(self->loop);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The event loop's reader callback: run every event ready now. */
static PyObject *
Poller_dispatch(Poller *self, PyObject *unused)
{
    struct epoll_event events[EVENTS_PER_WAIT];
    int n = epoll_wait(self->epfd, events, EVENTS_PER_WAIT, 0);
    if (n < 0) {
        if (errno == EINTR)
            Py_RETURN_NONE;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    /* An object closed by an earlier event of the same batch leaves the set: its
     * events here are skipped (closed), and it lives until the batch is done. */
    for (int i = 0; i < n; i++)
        Py_INCREF((PyObject *)events[i].data.ptr);
    self->dispatching = 1;
    for (int i = 0; i < n; i++) {
        Pollable *p = events[i].data.ptr;
        if (p->registered)
            p->on_event(p, events[i].events);
    }
    self->dispatching = 0;
    for (int i = 0; i < n; i++)
        Py_DECREF((PyObject *)events[i].data.ptr);
    PyObject *lost = self->lost;
    self->lost = NULL;
    for (Py_ssize_t i = 0; lost != NULL && i < PyList_GET_SIZE(lost); i++) {
        PyObject *pair = PyList_GET_ITEM(lost, i);
        PyObject *transport = PyTuple_GET_ITEM(pair, 0);
        PyObject *r = Transport_call_connection_lost((SocketTransport *)transport, PyTuple_GET_ITEM(pair, 1));
        if (r == NULL)
            report_raised(self, "protocol.connection_lost() failed", transport, NULL);
        Py_XDECREF(r);
    }
    Py_XDECREF(lost);
    Py_RETURN_NONE;
}

static PyObject *
Poller_fileno(Poller *self, PyObject *unused)
{
    return PyLong_FromLong(self->epfd);
}

static PyObject *Poller_adopt(Poller *self, PyObject *args);

static PyMethodDef Poller_methods[] = {
    {"dispatch", (PyCFunction)Poller_dispatch, METH_NOARGS, "Run the socket events ready now."},
    {"fileno", (PyCFunction)Poller_fileno, METH_NOARGS, "The epoll set, for the event loop's add_reader."},
    {"adopt", (PyCFunction)Poller_adopt, METH_VARARGS,
     "adopt(fd, protocol, tls=None): a transport on a connected socket that is a dup of another's; "
     "tls: (SSL* address, OpenSSL function addresses) to go through libpq's TLS session."},
    {NULL},
};

static PyTypeObject PollerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "poold._sockio.Poller",
    .tp_basicsize = sizeof(Poller),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Poller(loop): an epoll set of relayed sockets; dispatch() is the loop's reader callback.",
    .tp_new = Poller_new,
    .tp_dealloc = (destructor)Poller_dealloc,
    .tp_methods = Poller_methods,
};

/* ------------------------------------------------------------------------ */
/* SocketTransport                                                          */

static uint32_t
transport_interest(SocketTransport *self)
{
    if (self->closed)
        return 0;
    return (self->reading && !self->closing ? EPOLLIN : 0) | (self->wlen > self->whead ? EPOLLOUT : 0) |
           (self->tls.write_wants_read ? EPOLLIN : 0) | (self->tls.read_wants_write ? EPOLLOUT : 0);
}

static int
transport_rewatch(SocketTransport *self)
{
    return pollable_watch((Pollable *)self, transport_interest(self));
}

/* The socket is closed: connection_lost(exc) runs soon, as asyncio calls it. */
static void
transport_finish(SocketTransport *self, PyObject *exc)
{
    if (self->closed)
        return;
    Py_INCREF(self);
    self->closed = self->closing = 1;
    pollable_leave((Pollable *)self, !self->shared);
    servertls_close(&self->tls);
    close(self->fd);
    self->fd = -1;
    PyMem_Free(self->wbuf);
    self->wbuf = NULL;
    self->whead = self->wlen = self->wcap = 0;
    Poller *poller = self->poller;
    if (self->protocol != NULL && !self->lost_scheduled && poller->dispatching) {
        self->lost_scheduled = 1; /* at the end of this dispatch */
        if (poller->lost == NULL)
            poller->lost = PyList_New(0);
        PyObject *pair = poller->lost ? PyTuple_Pack(2, (PyObject *)self, exc ? exc : Py_None) : NULL;
        if (pair == NULL || PyList_Append(poller->lost, pair) < 0)
            report_raised(self->poller, "scheduling connection_lost failed", (PyObject *)self, self->protocol);
        Py_XDECREF(pair);
    }
    else if (self->protocol != NULL && !self->lost_scheduled) {
        self->lost_scheduled = 1;
        PyObject *method = PyObject_GetAttr((PyObject *)self, s_call_connection_lost);
        PyObject *r = method ? PyObject_CallMethodObjArgs(self->poller->loop, s_call_soon, method,
                                                          exc ? exc : Py_None, NULL)
                             : NULL;
        if (r == NULL)
            report_raised(self->poller, "scheduling connection_lost failed", (PyObject *)self, self->protocol);
        Py_XDECREF(r);
        Py_XDECREF(method);
    }
    Py_DECREF(self);
}

/* A system call failed (errno): the connection is lost with that error. */
static void
transport_fail(SocketTransport *self)
{
    if (!PyErr_Occurred()) /* a TLS leg's failure comes with OpenSSL's words */
        PyErr_SetFromErrno(PyExc_OSError);
    PyObject *exc = take_exception();
    transport_finish(self, exc);
    Py_XDECREF(exc);
}

/* A protocol callback raised: reported, and the connection aborted with it. */
static void
transport_callback_failed(SocketTransport *self, const char *message)
{
    PyObject *protocol = Py_XNewRef(self->protocol);
    PyObject *exc = take_exception();
    report(self->poller, message, exc, (PyObject *)self, protocol);
    transport_finish(self, exc);
    Py_XDECREF(exc);
    Py_XDECREF(protocol);
}

static void
transport_call_protocol(SocketTransport *self, PyObject *name)
{
    if (self->protocol == NULL)
        return;
    PyObject *r = PyObject_CallMethodNoArgs(self->protocol, name);
    if (r == NULL)
        report_raised(self->poller, "protocol flow control callback failed", (PyObject *)self, self->protocol);
    Py_XDECREF(r);
}

/* send(), or SSL_write on a TLS leg, with send's results (a TLS failure: -1,
 * errno EPROTO, and OpenSSL's words as the exception set). */
static ssize_t
transport_send(SocketTransport *self, const char *p, Py_ssize_t n)
{
    if (self->tls.ssl == NULL)
        return send(self->fd, p, (size_t)n, MSG_NOSIGNAL);
    Py_ssize_t sent = servertls_send(&self->tls, p, n);
    if (sent >= 0)
        return sent;
    errno = sent == TLS_AGAIN ? EAGAIN : EPROTO;
    return -1;
}

/* Send what is buffered; 0, or -1 when the connection was lost meanwhile. */
static int
transport_flush(SocketTransport *self)
{
    while (self->whead < self->wlen) {
        ssize_t n = transport_send(self, self->wbuf + self->whead, self->wlen - self->whead);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            transport_fail(self);
            return -1;
        }
        self->whead += n;
    }
    if (self->whead == self->wlen) {
        self->whead = self->wlen = 0;
        if (self->eof && !self->closing && shutdown(self->fd, SHUT_WR) < 0) {
            transport_fail(self);
            return -1;
        }
    }
    if (self->writing_paused && self->wlen - self->whead <= self->low) {
        self->writing_paused = 0;
        transport_call_protocol(self, s_resume_writing);
        if (self->closed)
            return -1;
    }
    if (self->wlen == 0 && self->closing) {
        transport_finish(self, NULL);
        return -1;
    }
    if (transport_rewatch(self) < 0) {
        transport_callback_failed(self, "epoll_ctl failed");
        return -1;
    }
    return 0;
}

static void transport_read_tls(SocketTransport *self, char *buffer);

static void
transport_read(SocketTransport *self)
{
    static char buffer[READ_SIZE];
    if (self->tls.ssl != NULL) {
        transport_read_tls(self, buffer);
        return;
    }
    ssize_t n = recv(self->fd, buffer, sizeof buffer, 0);
    if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            transport_fail(self);
        return;
    }
    if (n == 0) { /* EOF: eof_received() false (as ClientSession's) closes */
        self->reading = 0;
        PyObject *r = PyObject_CallMethodNoArgs(self->protocol, s_eof_received);
        if (r == NULL) {
            transport_callback_failed(self, "protocol.eof_received() failed");
            return;
        }
        int keep = PyObject_IsTrue(r);
        Py_DECREF(r);
        if (keep <= 0) {
            self->closing = 1;
            if (self->wlen == 0)
                transport_finish(self, NULL);
        }
        if (!self->closed && transport_rewatch(self) < 0)
            transport_callback_failed(self, "epoll_ctl failed");
        return;
    }
    PyObject *data = PyBytes_FromStringAndSize(buffer, n);
    /* held for the call: the protocol may give its place to another meanwhile (set_protocol) */
    PyObject *callback = Py_NewRef(self->data_received);
    PyObject *r = data ? PyObject_CallOneArg(callback, data) : NULL;
    Py_DECREF(callback);
    Py_XDECREF(data);
    if (r == NULL)
        transport_callback_failed(self, "protocol.data_received() failed");
    Py_XDECREF(r);
}

/* servertls.TlsTransport._read: SSL_read while OpenSSL holds bytes (decrypted or
 * read ahead), so that nothing stays behind in it while the socket has nothing
 * more to say; each full buffer goes to the protocol at once (it may pause reading). */
static void
transport_read_tls(SocketTransport *self, char *buffer)
{
    while (self->reading && !self->closing && !self->closed) {
        Py_ssize_t got = 0, n = 0;
        while (got < READ_SIZE && (n = servertls_recv(&self->tls, buffer + got, READ_SIZE - got)) > 0) {
            got += n;
            if (!servertls_pending(&self->tls))
                break; /* OpenSSL holds nothing more: the socket announces what comes next */
        }
        /* OpenSSL's failure, held while the bytes before it are delivered */
        PyObject *failure = n == TLS_FAILED ? take_exception() : NULL;
        if (got > 0) {
            PyObject *data = PyBytes_FromStringAndSize(buffer, got);
            PyObject *callback = Py_NewRef(self->data_received);
            PyObject *r = data ? PyObject_CallOneArg(callback, data) : NULL;
            Py_DECREF(callback);
            Py_XDECREF(data);
            if (r == NULL) {
                Py_XDECREF(failure);
                transport_callback_failed(self, "protocol.data_received() failed");
                return;
            }
            Py_DECREF(r);
        }
        if (failure != NULL) {
            if (!self->closed)
                transport_finish(self, failure);
            Py_DECREF(failure);
            return;
        }
        if (self->closed)
            return;
        if (n > 0) {
            if (got == READ_SIZE && servertls_pending(&self->tls))
                continue; /* the buffer was full, and OpenSSL holds more */
            return;
        }
        if (n == TLS_AGAIN) {
            if (self->tls.read_wants_write && transport_rewatch(self) < 0)
                transport_callback_failed(self, "epoll_ctl failed");
            return;
        }
        /* EOF (close_notify, or the socket closed): as a socket's, eof_received() false closes */
        self->reading = 0;
        PyObject *r = PyObject_CallMethodNoArgs(self->protocol, s_eof_received);
        if (r == NULL) {
            transport_callback_failed(self, "protocol.eof_received() failed");
            return;
        }
        int keep = PyObject_IsTrue(r);
        Py_DECREF(r);
        if (keep <= 0 && !self->closed) {
            self->closing = 1;
            if (self->wlen == self->whead)
                transport_finish(self, NULL);
        }
        if (!self->closed && transport_rewatch(self) < 0)
            transport_callback_failed(self, "epoll_ctl failed");
        return;
    }
}

static void
transport_on_event(Pollable *pollable, uint32_t events)
{
    SocketTransport *self = (SocketTransport *)pollable;
    if (self->tls.write_wants_read && (events & (EPOLLIN | EPOLLERR | EPOLLHUP))) {
        self->tls.write_wants_read = 0; /* SSL_write waited for this */
        if (transport_flush(self) < 0)
            return;
    }
    if (self->tls.read_wants_write && (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
        self->tls.read_wants_write = 0; /* SSL_read waited for this */
        events |= EPOLLIN;
    }
    if ((events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) && self->wlen > self->whead) {
        if (transport_flush(self) < 0)
            return;
    }
    if ((events & (EPOLLIN | EPOLLERR | EPOLLHUP)) && self->reading && !self->closing && !self->closed)
        transport_read(self);
}

static int
transport_buffer(SocketTransport *self, const char *p, Py_ssize_t n)
{
    if (self->wlen + n > self->wcap) {
        if (self->whead) { /* move the unsent part to the front first */
            memmove(self->wbuf, self->wbuf + self->whead, (size_t)(self->wlen - self->whead));
            self->wlen -= self->whead;
            self->whead = 0;
        }
        if (self->wlen + n > self->wcap) {
            Py_ssize_t cap = self->wcap ? self->wcap : 4096;
            while (cap < self->wlen + n)
                cap *= 2;
            char *grown = PyMem_Realloc(self->wbuf, (size_t)cap);
            if (grown == NULL) {
                PyErr_NoMemory();
                return -1;
            }
            self->wbuf = grown;
            self->wcap = cap;
        }
    }
    memcpy(self->wbuf + self->wlen, p, (size_t)n);
    self->wlen += n;
    return 0;
}

static int
transport_write(SocketTransport *self, const char *p, Py_ssize_t n)
{
    if (self->eof) {
        PyErr_SetString(PyExc_RuntimeError, "Cannot call write() after write_eof()");
        return -1;
    }
    if (self->closed || n == 0)
        return 0; /* as asyncio: writes after the connection is lost go nowhere */
    if (self->wlen == self->whead) { /* nothing queued: straight to the socket */
        ssize_t sent;
        do
            sent = transport_send(self, p, n);
        while (sent < 0 && errno == EINTR);
        if (sent == n)
            return 0;
        if (sent < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                transport_fail(self);
                return 0;
            }
            sent = 0;
        }
        p += sent;
        n -= sent;
    }
    if (transport_buffer(self, p, n) < 0)
        return -1;
    if (transport_rewatch(self) < 0)
        return -1;
    if (!self->writing_paused && self->wlen - self->whead > self->high) {
        self->writing_paused = 1;
        transport_call_protocol(self, s_pause_writing);
    }
    return 0;
}

static PyObject *
Transport_write(SocketTransport *self, PyObject *data)
{
    if (PyBytes_CheckExact(data)) {
        if (transport_write(self, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data)) < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int rc = transport_write(self, view.buf, view.len);
    PyBuffer_Release(&view);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
Transport_writelines(SocketTransport *self, PyObject *lines)
{
    PyObject *empty = PyBytes_FromStringAndSize(NULL, 0);
    PyObject *data = empty ? PyObject_CallMethod(empty, "join", "O", lines) : NULL;
    Py_XDECREF(empty);
    if (data == NULL)
        return NULL;
    PyObject *r = Transport_write(self, data);
    Py_DECREF(data);
    return r;
}

static PyObject *
Transport_close(SocketTransport *self, PyObject *unused)
{
    if (!self->closing && !self->closed) {
        self->closing = 1;
        if (self->wlen == self->whead)
            transport_finish(self, NULL);
        else if (transport_rewatch(self) < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

/* asyncio's _SelectorSocketTransport.write_eof: the socket's write side is shut
 * (the peer reads EOF) once what is buffered is sent; reading goes on. */
static PyObject *
Transport_write_eof(SocketTransport *self, PyObject *unused)
{
    if (self->closing || self->closed || self->eof)
        Py_RETURN_NONE;
    if (self->tls.ssl != NULL) {
        PyErr_SetString(PyExc_NotImplementedError, "a TLS server leg has no write_eof");
        return NULL;
    }
    self->eof = 1;
    if (self->wlen == self->whead && shutdown(self->fd, SHUT_WR) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyObject *
Transport_abort(SocketTransport *self, PyObject *unused)
{
    transport_finish(self, NULL);
    Py_RETURN_NONE;
}

static PyObject *
Transport_is_closing(SocketTransport *self, PyObject *unused)
{
    return PyBool_FromLong(self->closing || self->closed);
}

static PyObject *
Transport_pause_reading(SocketTransport *self, PyObject *unused)
{
    self->reading = 0;
    if (!self->closed && transport_rewatch(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
Transport_resume_reading(SocketTransport *self, PyObject *unused)
{
    int was_reading = self->reading;
    self->reading = 1;
    if (!self->closed && transport_rewatch(self) < 0)
        return NULL;
    if (!was_reading && !self->closed && servertls_pending(&self->tls) > 0) {
        /* decrypted already, so the socket will not say so (servertls.TlsTransport.resume_reading) */
        PyObject *method = PyObject_GetAttrString((PyObject *)self, "_read_held");
        PyObject *r = method ? PyObject_CallMethodObjArgs(self->poller->loop, s_call_soon, method, NULL) : NULL;
        Py_XDECREF(method);
        if (r == NULL)
            return NULL;
        Py_DECREF(r);
    }
    Py_RETURN_NONE;
}

/* servertls.TlsTransport._read_held: what OpenSSL held when reading resumed. */
static PyObject *
Transport_read_held(SocketTransport *self, PyObject *unused)
{
    if (self->reading && !self->closing && !self->closed && self->tls.ssl != NULL) {
        transport_read(self);
        if (!self->closed && transport_rewatch(self) < 0)
            transport_callback_failed(self, "epoll_ctl failed");
    }
    Py_RETURN_NONE;
}

static PyObject *
Transport_is_reading(SocketTransport *self, PyObject *unused)
{
    return PyBool_FromLong(self->reading && !self->closing && !self->closed);
}

static PyObject *
Transport_get_write_buffer_size(SocketTransport *self, PyObject *unused)
{
    return PyLong_FromSsize_t(self->wlen - self->whead);
}

static PyObject *
Transport_get_write_buffer_limits(SocketTransport *self, PyObject *unused)
{
    return Py_BuildValue("(nn)", self->low, self->high);
}

static PyObject *
Transport_set_write_buffer_limits(SocketTransport *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"high", "low", NULL};
    PyObject *high_o = Py_None, *low_o = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OO", kwlist, &high_o, &low_o))
        return NULL;
    Py_ssize_t high, low;
    if (high_o == Py_None) { /* asyncio's rules */
        high = low_o == Py_None ? HIGH_WATER : 4 * PyLong_AsSsize_t(low_o);
        if (high == -1 && PyErr_Occurred())
            return NULL;
    }
    else if ((high = PyLong_AsSsize_t(high_o)) == -1 && PyErr_Occurred())
        return NULL;
    if (low_o == Py_None)
        low = high / 4;
    else if ((low = PyLong_AsSsize_t(low_o)) == -1 && PyErr_Occurred())
        return NULL;
    if (!(high >= low && low >= 0)) {
        PyErr_Format(PyExc_ValueError, "high (%zd) must be >= low (%zd) must be >= 0", high, low);
        return NULL;
    }
    self->high = high;
    self->low = low;
    Py_RETURN_NONE;
}

static PyObject *
address_tuple(const struct sockaddr_storage *addr)
{
    char host[INET6_ADDRSTRLEN];
    if (addr->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)addr;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
        return Py_BuildValue("(si)", host, ntohs(a->sin_port));
    }
    if (addr->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)addr;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
        return Py_BuildValue("(siII)", host, ntohs(a->sin6_port), ntohl(a->sin6_flowinfo), a->sin6_scope_id);
    }
    Py_RETURN_NONE;
}

static PyObject *
Transport_get_extra_info(SocketTransport *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"name", "default", NULL};
    PyObject *name, *fallback = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "U|O", kwlist, &name, &fallback))
        return NULL;
    if (PyUnicode_Compare(name, s_peername) == 0)
        return address_tuple(&self->peer);
    if (PyUnicode_Compare(name, s_sockname) == 0 && self->fd >= 0) {
        struct sockaddr_storage addr;
        socklen_t len = sizeof addr;
        if (getsockname(self->fd, (struct sockaddr *)&addr, &len) == 0)
            return address_tuple(&addr);
    }
    return Py_NewRef(fallback);
}

static PyObject *
Transport_get_protocol(SocketTransport *self, PyObject *unused)
{
    return Py_NewRef(self->protocol ? self->protocol : Py_None);
}

static int
transport_set_protocol(SocketTransport *self, PyObject *protocol)
{
    PyObject *method = PyObject_GetAttr(protocol, s_data_received);
    if (method == NULL)
        return -1;
    Py_XSETREF(self->protocol, Py_NewRef(protocol));
    Py_XSETREF(self->data_received, method);
    return 0;
}

static PyObject *
Transport_set_protocol(SocketTransport *self, PyObject *protocol)
{
    if (transport_set_protocol(self, protocol) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
Transport_can_write_eof(SocketTransport *self, PyObject *unused)
{
    return PyBool_FromLong(self->tls.ssl == NULL); /* TLS: no half close libpq would survive */
}

/* call_soon's callback after the socket closed: the protocol's connection_lost,
 * and the transport lets go of it. */
static PyObject *
Transport_call_connection_lost(SocketTransport *self, PyObject *exc)
{
    PyObject *protocol = self->protocol;
    self->protocol = NULL;
    Py_CLEAR(self->data_received);
    if (protocol == NULL)
        Py_RETURN_NONE;
    PyObject *r = PyObject_CallMethodOneArg(protocol, s_connection_lost, exc);
    Py_DECREF(protocol);
    return r;
}

/* The socket leaves the set and this object, open: the transport is closed
 * without a connection_lost, and the descriptor is someone else's (detach, or a
 * failed adopt). */
static void
transport_release(SocketTransport *self)
{
    Py_INCREF(self);
    pollable_watch((Pollable *)self, 0);
    servertls_close(&self->tls);
    self->fd = -1;
    self->closed = self->closing = 1;
    Py_CLEAR(self->protocol);
    Py_CLEAR(self->data_received);
    Py_DECREF(self);
}

/* For TLS (sockio.start_tls): the socket leaves this object, which is then closed
 * without a connection_lost; the file descriptor is the caller's. */
static PyObject *
Transport_detach(SocketTransport *self, PyObject *unused)
{
    if (self->closed || self->closing) {
        PyErr_SetString(PyExc_RuntimeError, "the transport is closing");
        return NULL;
    }
    if (self->wlen > self->whead || self->tls.ssl != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the transport has unsent bytes, or TLS");
        return NULL;
    }
    int fd = self->fd;
    transport_release(self);
    return PyLong_FromLong(fd);
}

static int
Transport_traverse(SocketTransport *self, visitproc visit, void *arg)
{
    Py_VISIT(self->protocol);
    Py_VISIT(self->data_received);
    Py_VISIT(self->poller);
    return 0;
}

static int
Transport_clear(SocketTransport *self)
{
    Py_CLEAR(self->protocol);
    Py_CLEAR(self->data_received);
    return 0;
}

static void
Transport_dealloc(SocketTransport *self)
{
    PyObject_GC_UnTrack(self);
    if (self->fd >= 0)
        close(self->fd); /* not reached while registered: the epoll set holds a reference */
    PyMem_Free(self->wbuf);
    Transport_clear(self);
    Py_CLEAR(self->poller);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Transport_methods[] = {
    {"write", (PyCFunction)Transport_write, METH_O, NULL},
    {"writelines", (PyCFunction)Transport_writelines, METH_O, NULL},
    {"write_eof", (PyCFunction)Transport_write_eof, METH_NOARGS, NULL},
    {"close", (PyCFunction)Transport_close, METH_NOARGS, NULL},
    {"abort", (PyCFunction)Transport_abort, METH_NOARGS, NULL},
    {"is_closing", (PyCFunction)Transport_is_closing, METH_NOARGS, NULL},
    {"pause_reading", (PyCFunction)Transport_pause_reading, METH_NOARGS, NULL},
    {"resume_reading", (PyCFunction)Transport_resume_reading, METH_NOARGS, NULL},
    {"is_reading", (PyCFunction)Transport_is_reading, METH_NOARGS, NULL},
    {"get_write_buffer_size", (PyCFunction)Transport_get_write_buffer_size, METH_NOARGS, NULL},
    {"get_write_buffer_limits", (PyCFunction)Transport_get_write_buffer_limits, METH_NOARGS, NULL},
    {"set_write_buffer_limits", (PyCFunction)(void (*)(void))Transport_set_write_buffer_limits, METH_VARARGS | METH_KEYWORDS, NULL},
    {"get_extra_info", (PyCFunction)(void (*)(void))Transport_get_extra_info, METH_VARARGS | METH_KEYWORDS, NULL},
    {"get_protocol", (PyCFunction)Transport_get_protocol, METH_NOARGS, NULL},
    {"set_protocol", (PyCFunction)Transport_set_protocol, METH_O, NULL},
    {"can_write_eof", (PyCFunction)Transport_can_write_eof, METH_NOARGS, NULL},
    {"_call_connection_lost", (PyCFunction)Transport_call_connection_lost, METH_O, NULL},
    {"_read_held", (PyCFunction)Transport_read_held, METH_NOARGS, NULL},
    {"detach", (PyCFunction)Transport_detach, METH_NOARGS,
     "Take the socket out (for TLS): its file descriptor; no connection_lost follows."},
    {NULL},
};

static PyTypeObject TransportType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "poold._sockio.SocketTransport",
    .tp_basicsize = sizeof(SocketTransport),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "An accepted client socket with the asyncio.Transport methods a client session uses.",
    .tp_dealloc = (destructor)Transport_dealloc,
    .tp_traverse = (traverseproc)Transport_traverse,
    .tp_clear = (inquiry)Transport_clear,
    .tp_methods = Transport_methods,
};

/* ------------------------------------------------------------------------ */
/* Listener                                                                 */

/* A transport on ``fd`` (connected, non-blocking), not yet read by anyone. */
static SocketTransport *
transport_new(Poller *poller, int fd, const struct sockaddr_storage *addr, socklen_t addr_len, int shared)
{
    SocketTransport *t = PyObject_GC_New(SocketTransport, &TransportType);
    if (t == NULL)
        return NULL;
    t->on_event = transport_on_event;
    t->poller = (Poller *)Py_NewRef(poller);
    t->fd = fd;
    t->interest = 0;
    t->registered = 0;
    t->protocol = t->data_received = NULL;
    t->wbuf = NULL;
    t->whead = t->wlen = t->wcap = 0;
    t->high = HIGH_WATER;
    t->low = HIGH_WATER / 4;
    t->reading = 1;
    t->closing = t->closed = t->writing_paused = t->lost_scheduled = t->eof = 0;
    t->shared = (char)shared;
    memset(&t->peer, 0, sizeof t->peer);
    memset(&t->tls, 0, sizeof t->tls);
    memcpy(&t->peer, addr, addr_len);
    PyObject_GC_Track(t);
    return t;
}

static void
listener_accepted(Listener *self, int fd, const struct sockaddr_storage *addr, socklen_t addr_len)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    SocketTransport *t = transport_new(self->poller, fd, addr, addr_len, 0);
    if (t == NULL) {
        close(fd);
        report_raised(self->poller, "accepting a connection failed", NULL, NULL);
        return;
    }
    PyObject *protocol = PyObject_CallNoArgs(self->factory);
    if (protocol == NULL || transport_set_protocol(t, protocol) < 0) {
        report_raised(self->poller, "the protocol factory failed", (PyObject *)t, NULL);
        transport_finish(t, NULL);
    }
    else if (transport_rewatch(t) < 0) {
        report_raised(self->poller, "epoll_ctl failed", (PyObject *)t, protocol);
        transport_finish(t, NULL);
    }
    else {
        PyObject *r = PyObject_CallMethodOneArg(protocol, s_connection_made, (PyObject *)t);
        if (r == NULL)
            transport_callback_failed(t, "protocol.connection_made() failed");
        Py_XDECREF(r);
    }
    Py_XDECREF(protocol);
    Py_DECREF(t);
}

/* Poller.adopt(fd, protocol): a connected socket whose open file is shared (a
 * dup of a server connection's socket): its transport, after connection_made.
 * On an error the descriptor is left to the caller. */
static PyObject *
Poller_adopt(Poller *self, PyObject *args)
{
    int fd;
    PyObject *protocol, *tls = Py_None;
    if (!PyArg_ParseTuple(args, "iO|O:adopt", &fd, &protocol, &tls))
        return NULL;
    struct sockaddr_storage addr;
    socklen_t len = sizeof addr;
    if (getpeername(fd, (struct sockaddr *)&addr, &len) < 0)
        len = 0;
    SocketTransport *t = transport_new(self, fd, &addr, len, 1);
    if (t == NULL)
        return NULL;
    PyObject *r = NULL;
    if ((tls == Py_None || servertls_open(&t->tls, tls) == 0) && transport_set_protocol(t, protocol) == 0 &&
        transport_rewatch(t) == 0)
        r = PyObject_CallMethodOneArg(protocol, s_connection_made, (PyObject *)t);
    if (r == NULL) { /* the exception is the caller's, and so is the descriptor */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        transport_release(t);
        Py_DECREF(t);
        PyErr_Restore(type, value, tb);
        return NULL;
    }
    Py_DECREF(r);
    return (PyObject *)t;
}

/* One connection per event, as libuv accepts: with the set level-triggered, a
 * backlog comes back at once, and no accept4 is spent to learn it is empty. */
static void
listener_on_event(Pollable *pollable, uint32_t events)
{
    Listener *self = (Listener *)pollable;
    struct sockaddr_storage addr;
    socklen_t len = sizeof addr;
    int fd = accept4(self->fd, (struct sockaddr *)&addr, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
        listener_accepted(self, fd, &addr, len);
        return;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
        return;
    /* EMFILE, ENFILE, ENOBUFS, ENOMEM: the Python side logs it and pauses */
    PyErr_SetFromErrno(PyExc_OSError);
    PyObject *exc = take_exception();
    PyObject *r = exc ? PyObject_CallOneArg(self->on_error, exc) : NULL;
    if (r == NULL)
        report_raised(self->poller, "the listener's error callback failed", NULL, NULL);
    Py_XDECREF(r);
    Py_XDECREF(exc);
}

static PyObject *
Listener_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *poller, *factory, *on_error;
    int fd;
    static char *kwlist[] = {"poller", "fd", "factory", "on_error", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!iOO", kwlist, &PollerType, &poller, &fd, &factory, &on_error))
        return NULL;
    Listener *self = (Listener *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->on_event = listener_on_event;
    self->poller = (Poller *)Py_NewRef(poller);
    self->fd = fd;
    self->factory = Py_NewRef(factory);
    self->on_error = Py_NewRef(on_error);
    return (PyObject *)self;
}

static PyObject *
Listener_resume(Listener *self, PyObject *unused)
{
    if (self->fd < 0) {
        PyErr_SetString(PyExc_RuntimeError, "the listener is closed");
        return NULL;
    }
    if (pollable_watch((Pollable *)self, EPOLLIN) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
Listener_pause(Listener *self, PyObject *unused)
{
    pollable_watch((Pollable *)self, 0);
    Py_RETURN_NONE;
}

/* Stop accepting for good; the socket is its owner's to close. */
static PyObject *
Listener_close(Listener *self, PyObject *unused)
{
    pollable_watch((Pollable *)self, 0);
    self->fd = -1;
    Py_RETURN_NONE;
}

static int
Listener_traverse(Listener *self, visitproc visit, void *arg)
{
    Py_VISIT(self->factory);
    Py_VISIT(self->on_error);
    Py_VISIT(self->poller);
    return 0;
}

static int
Listener_clear(Listener *self)
{
    Py_CLEAR(self->factory);
    Py_CLEAR(self->on_error);
    return 0;
}

static void
Listener_dealloc(Listener *self)
{
    PyObject_GC_UnTrack(self);
    Listener_clear(self);
    Py_CLEAR(self->poller);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Listener_methods[] = {
    {"resume", (PyCFunction)Listener_resume, METH_NOARGS, "Accept connections (again)."},
    {"pause", (PyCFunction)Listener_pause, METH_NOARGS, "Stop accepting for now."},
    {"close", (PyCFunction)Listener_close, METH_NOARGS, "Stop accepting; the socket stays its owner's."},
    {NULL},
};

static PyTypeObject ListenerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "poold._sockio.Listener",
    .tp_basicsize = sizeof(Listener),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Listener(poller, fd, factory, on_error): accepts on a listening TCP socket once resumed.",
    .tp_new = Listener_new,
    .tp_dealloc = (destructor)Listener_dealloc,
    .tp_traverse = (traverseproc)Listener_traverse,
    .tp_clear = (inquiry)Listener_clear,
    .tp_methods = Listener_methods,
};

/* ------------------------------------------------------------------------ */

static struct PyModuleDef sockio_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "poold._sockio",
    .m_doc = "The relay's sockets accepted, read and written in C (see sockio.py).",
    .m_size = -1,
};

#define INTERN(var, text)                                     \
    do {                                                      \
        if ((var = PyUnicode_InternFromString(text)) == NULL) \
            return NULL;                                      \
    } while (0)

PyMODINIT_FUNC
PyInit__sockio(void)
{
    INTERN(s_data_received, "data_received");
    INTERN(s_connection_made, "connection_made");
    INTERN(s_connection_lost, "connection_lost");
    INTERN(s_eof_received, "eof_received");
    INTERN(s_pause_writing, "pause_writing");
    INTERN(s_resume_writing, "resume_writing");
    INTERN(s_call_soon, "call_soon");
    INTERN(s_call_exception_handler, "call_exception_handler");
    INTERN(s_transport, "transport");
    INTERN(s_protocol, "protocol");
    INTERN(s_peername, "peername");
    INTERN(s_sockname, "sockname");
    INTERN(s_call_connection_lost, "_call_connection_lost");
    PyTypeObject *types[] = {&PollerType, &ListenerType, &TransportType};
    const char *names[] = {"Poller", "Listener", "SocketTransport"};
    for (int i = 0; i < 3; i++)
        if (PyType_Ready(types[i]) < 0)
            return NULL;
    PyObject *m = PyModule_Create(&sockio_module);
    if (m == NULL)
        return NULL;
    for (int i = 0; i < 3; i++) {
        if (PyModule_AddObjectRef(m, names[i], (PyObject *)types[i]) < 0) {
            Py_DECREF(m);
            return NULL;
        }
    }
    return m;
}
