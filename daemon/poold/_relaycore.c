/*
 * The relay's per-transaction path in C: the same steps as the Python
 * reference classes, with the same names, for the common case only.
 *
 *   StatsCore, HistogramCore   stats.py     StatsCorePy, HistogramCorePy
 *   ServerCore                 relay.py     ServerCorePy (ServerLink's base)
 *   ClientCore                 client.py    ClientCorePy (ClientSession's base)
 *   PoolCore                   pools.py     PoolCorePy (Pool's base)
 *
 * Each type holds the state the hot path reads and writes, as plain members
 * that the Python subclasses use like any attribute. Its methods do what the
 * Python reference does when nothing unusual happens: a client request goes to
 * the server connection it holds (or a free one is leased for it, or it waits
 * in line for one), the reply goes back, and at ReadyForQuery 'I' the
 * connection goes to the longest waiter or back to the free list. Anything
 * else (login, a ParameterStatus or ErrorResponse in a reply, internal
 * queries, a wait that needs the breaker, a new connection or the
 * wait timer, draining, a reconnect epoch, a shrink) is handed to the Python
 * method that handles it there, with the same arguments, so the rare cases
 * have one implementation.
 *
 * Why native, with numbers (bench/cpu_split.py, select-only, the same run as
 * PgBouncer; docs/performance.md): with these steps in Python poold spent
 * 6.2 us of user CPU per transaction at -c 16 and 7.0 us at -c 200, against
 * PgBouncer's 1.4-2.7 us and a 1:1 Python proxy's 2.3-4.3 us; here 3.4-4.0 us
 * at -c 16. In isolation the steps cost 2.46 us per transaction in Python,
 * 0.42 us here. Compiling the same Python with mypyc had not helped: the cost is the
 * generic object protocol (attribute lookups, bound-method calls, boxed
 * numbers), which this file avoids by keeping the state in struct members.
 * I/O stays with the event loop's transports: the calls out are
 * transport.write (cached per transport), the frame scanner, and the Python
 * methods for the rare cases.
 *
 * ClientCore also reads the common login (client_login, below: a startup
 * packet and SCRAM against known keys), and hands every other login to the
 * Python one (login.py, _login_steps) by replaying the client's bytes there.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <time.h>

#include "protocol/framing_capi.h"
#include "protocol/scram_core.h"

#include <sys/random.h>

static PyTypeObject HistogramCoreType, StatsCoreType, ServerCoreType, ClientCoreType, PoolCoreType;

static PyObject *ProtocolError; /* poold.protocol.errors.ProtocolError */
static FramingCAPI *framing;    /* the native scanner's C API; NULL when _framing was not built */
static unsigned char SYNC_COUNTED[256]; /* SYNC_POINTS as a table */
static PyObject *SYNC_POINTS;   /* b"QSF": Query, Sync and FunctionCall each owe one ReadyForQuery */
static PyObject *TERMINATE;     /* ord("X") */
static PyObject *IDLE;          /* b"I" */
static PyObject *EMPTY;         /* b"" */
static PyObject *COPY_FAIL;     /* messages.COPY_FAIL_TERMINATED: a Terminate's stand-in while replies are owed */
static PyObject *DRAIN_STATE, *DRAIN_MESSAGE;

static PyObject *s_feed, *s_tally, *s_at_boundary, *s_in_progress, *s_max_length, *s_is_closing, *s_draining, *s_max_size, *s_on_frames, *s_stream_corrupt,
    *s_login_data, *s_relay, *s_relay_error, *s_join, *s_end_after_requests, *s_outlive_client, *s_fatal, *s_unpause, *s_pause_reading, *s_resume_reading,
    *s_settle, *s_release_settings, *s_session_statement,
    *s_give_back, *s_retire, *s_set_aside, *s_acquire_wait, *s_write, *s_popleft, *s_on_server, *s_open,
    *s_acquire_timeout, *s_append, *s_native_login_plan, *s_native_login_done, *s_native_login_fallback,
    *s_ssl_context, *s_welcome, *s_pool_key, *s_pools, *s_defaults, *s_clients, *s_logins, *s_by_key,
    *s_pids, *s_secrets, *s_draw_secrets, *s_mode, *s_settings, *SESSION,
    *s_config, *s_max_message_size, *s_login_plans, *s_max_client_conn, *s_tls, *s_require, *s_user,
    *s_database, *s_keys, *s_scanner_type, *s_end_login, *s_cancel_wait, *s_hand_back, *s_session_ended,
    *s_before_database_command, *s_max_login_conn, *s_make_room_for_login, *s_guard, *s_pairs, *s_native_login_held,
    *s_max_prepared_statements, *s_rewrite, *s_ps, *s_names, *s_lru, *s_name, *s_registry, *s_hits, *s_move_to_end,
    *s_bound;
static PyObject *NO_KEY;    /* (0, 0): a session's cancel key until it has one */
static PyObject *EMPTY_STR; /* "" */
static PyObject *AUTH_SASL; /* AuthenticationSASL offering SCRAM-SHA-256: auth.py's _AUTH_SCRAM */

static double
monotonic(void)
{
    /* time.monotonic()'s clock */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* isinstance for the core types: their instances are direct subclasses
 * (ServerLink, ClientSession, Pool, PoolStats, Histogram), so the usual check
 * is one comparison rather than PyType_IsSubtype's walk of the MRO. */
static inline int
is_core(PyObject *o, PyTypeObject *type)
{
    return Py_IS_TYPE(o, type) || Py_TYPE(o)->tp_base == type || PyType_IsSubtype(Py_TYPE(o), type);
}

/* ReadyForQuery's status is b"I": idle, no transaction open */
static inline int
is_idle(PyObject *status)
{
    return PyBytes_Check(status) && PyBytes_GET_SIZE(status) == 1 && PyBytes_AS_STRING(status)[0] == 'I';
}

static int
is_none(PyObject *o)
{
    return o == NULL || o == Py_None;
}

/* The scanner's walks: a C call for the native scanner, a method call for the
 * Python one (POOLD_FRAME_SCANNER=python). */
static int
native_scanner(PyObject *scanner, PyObject *data)
{
    return framing != NULL && Py_IS_TYPE(scanner, framing->scanner_type) && PyBytes_CheckExact(data);
}

static PyObject *
scanner_feed(PyObject *scanner, PyObject *data)
{
    if (native_scanner(scanner, data))
        return framing->feed(scanner, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data));
    return PyObject_CallMethodOneArg(scanner, s_feed, data);
}

/* tally(data, b"QSF", ord("X")); stop_start is -1 when there is no Terminate. */
static int
scanner_tally(PyObject *scanner, PyObject *data, Py_ssize_t *count, Py_ssize_t *stop_start, int *last)
{
    if (native_scanner(scanner, data))
        return framing->tally(scanner, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), SYNC_COUNTED, 'X', count,
                              stop_start, last);
    PyObject *args[4] = {scanner, data, SYNC_POINTS, TERMINATE};
    PyObject *tally = PyObject_VectorcallMethod(s_tally, args, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (tally == NULL)
        return -1;
    *count = PyLong_AsSsize_t(PyTuple_GET_ITEM(tally, 0));
    PyObject *stop = PyTuple_GET_ITEM(tally, 1);
    *stop_start = stop == Py_None ? -1 : PyLong_AsSsize_t(stop);
    *last = (int)PyLong_AsLong(PyTuple_GET_ITEM(tally, 2));
    Py_DECREF(tally);
    return PyErr_Occurred() ? -1 : 0;
}

static int
scanner_at_boundary(PyObject *scanner)
{
    if (framing != NULL && Py_IS_TYPE(scanner, framing->scanner_type))
        return framing->at_boundary(scanner);
    PyObject *boundary = PyObject_GetAttr(scanner, s_at_boundary);
    if (boundary == NULL)
        return -1;
    int result = PyObject_IsTrue(boundary);
    Py_DECREF(boundary);
    return result;
}

/* The message the scanner's stream is inside: *skip its bytes still to come, and its
 * type (or -1); *max_length, the longest message it takes; -2 with an exception set
 * (FrameScanner.in_progress and .max_length). */
static int
scanner_in_progress(PyObject *scanner, Py_ssize_t *skip, long long *max_length)
{
    if (framing != NULL && Py_IS_TYPE(scanner, framing->scanner_type))
        return framing->in_progress(scanner, skip, max_length);
    PyObject *state = PyObject_GetAttr(scanner, s_in_progress);
    PyObject *limit = state ? PyObject_GetAttr(scanner, s_max_length) : NULL;
    int type = -2;
    if (limit != NULL && PyTuple_Check(state) && PyTuple_GET_SIZE(state) == 2) {
        *skip = PyLong_AsSsize_t(PyTuple_GET_ITEM(state, 0));
        type = (int)PyLong_AsLong(PyTuple_GET_ITEM(state, 1));
        *max_length = PyLong_AsLongLong(limit);
        if (PyErr_Occurred())
            type = -2;
    }
    else if (limit != NULL) {
        PyErr_SetString(PyExc_TypeError, "a scanner's in_progress is (int, int)");
    }
    Py_XDECREF(limit);
    Py_XDECREF(state);
    return type;
}

/* Call and drop the result; 0, or -1 with an exception set. */
static int
call_done(PyObject *result)
{
    if (result == NULL)
        return -1;
    Py_DECREF(result);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* HistogramCore: stats.HistogramCorePy                                      */

#define MAX_BOUNDS 32

typedef struct {
    PyObject_HEAD
    Py_ssize_t nbounds;
    double bounds[MAX_BOUNDS];
    long long counts[MAX_BOUNDS + 1];
    double sum;
} HistogramCore;

static inline void
histogram_observe(HistogramCore *h, double value)
{
    /* bisect_left: the first bound >= value, or the +Inf bucket */
    Py_ssize_t lo = 0, hi = h->nbounds;
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if (h->bounds[mid] < value)
            lo = mid + 1;
        else
            hi = mid;
    }
    h->counts[lo]++;
    h->sum += value;
}

static int
Histogram_init(HistogramCore *self, PyObject *args, PyObject *kwds)
{
    PyObject *bounds;
    if (!PyArg_ParseTuple(args, "O", &bounds))
        return -1;
    PyObject *seq = PySequence_Fast(bounds, "bounds must be a sequence of floats");
    if (seq == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > MAX_BOUNDS) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "at most %d histogram bounds", MAX_BOUNDS);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        self->bounds[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
        if (self->bounds[i] == -1.0 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
    }
    Py_DECREF(seq);
    self->nbounds = n;
    memset(self->counts, 0, sizeof(self->counts));
    self->sum = 0.0;
    return 0;
}

static PyObject *
Histogram_observe(HistogramCore *self, PyObject *arg)
{
    double value = PyFloat_AsDouble(arg);
    if (value == -1.0 && PyErr_Occurred())
        return NULL;
    histogram_observe(self, value);
    Py_RETURN_NONE;
}

static PyObject *
Histogram_get_counts(HistogramCore *self, void *closure)
{
    PyObject *list = PyList_New(self->nbounds + 1);
    if (list == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i <= self->nbounds; i++) {
        PyObject *n = PyLong_FromLongLong(self->counts[i]);
        if (n == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, n);
    }
    return list;
}

static PyObject *
Histogram_get_sum(HistogramCore *self, void *closure)
{
    return PyFloat_FromDouble(self->sum);
}

static PyObject *
Histogram_get_bounds(HistogramCore *self, void *closure)
{
    PyObject *bounds = PyTuple_New(self->nbounds);
    if (bounds == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < self->nbounds; i++) {
        PyObject *b = PyFloat_FromDouble(self->bounds[i]);
        if (b == NULL) {
            Py_DECREF(bounds);
            return NULL;
        }
        PyTuple_SET_ITEM(bounds, i, b);
    }
    return bounds;
}

static PyMethodDef Histogram_methods[] = {
    {"observe", (PyCFunction)Histogram_observe, METH_O, "observe(value): count one value."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Histogram_getset[] = {
    {"counts", (getter)Histogram_get_counts, NULL, "count per bucket, the +Inf bucket last", NULL},
    {"sum", (getter)Histogram_get_sum, NULL, "sum of the observed values", NULL},
    {"bounds", (getter)Histogram_get_bounds, NULL, "the buckets' upper bounds (the last bucket is +Inf)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject HistogramCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "poold._relaycore.HistogramCore",
    .tp_doc = "Bucket counts and sum (stats.HistogramCorePy in C).",
    .tp_basicsize = sizeof(HistogramCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Histogram_init,
    .tp_methods = Histogram_methods,
    .tp_getset = Histogram_getset,
};

/* ------------------------------------------------------------------------ */
/* StatsCore: stats.StatsCorePy                                              */

typedef struct {
    PyObject_HEAD
    long long transactions, queries, bytes_in, bytes_out;
    PyObject *wait, *xact; /* HistogramCore */
} StatsCore;

static int
Stats_traverse(StatsCore *self, visitproc visit, void *arg)
{
    Py_VISIT(self->wait);
    Py_VISIT(self->xact);
    return 0;
}

static int
Stats_clear(StatsCore *self)
{
    Py_CLEAR(self->wait);
    Py_CLEAR(self->xact);
    return 0;
}

static void
Stats_dealloc(StatsCore *self)
{
    PyObject_GC_UnTrack(self);
    Stats_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef Stats_members[] = {
    {"transactions", T_LONGLONG, offsetof(StatsCore, transactions), 0, NULL},
    {"queries", T_LONGLONG, offsetof(StatsCore, queries), 0, NULL},
    {"bytes_in", T_LONGLONG, offsetof(StatsCore, bytes_in), 0, "client -> server"},
    {"bytes_out", T_LONGLONG, offsetof(StatsCore, bytes_out), 0, "server -> client"},
    {"wait", T_OBJECT, offsetof(StatsCore, wait), 0, NULL},
    {"xact", T_OBJECT, offsetof(StatsCore, xact), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject StatsCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "poold._relaycore.StatsCore",
    .tp_doc = "The counters the hot path bumps (stats.StatsCorePy in C).",
    .tp_basicsize = sizeof(StatsCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_traverse = (traverseproc)Stats_traverse,
    .tp_clear = (inquiry)Stats_clear,
    .tp_dealloc = (destructor)Stats_dealloc,
    .tp_members = Stats_members,
};

/* The pool's stats, when they are ours (always, unless a test swapped them). */
static StatsCore *
stats_of(PyObject *stats)
{
    return (stats != NULL && is_core(stats, &StatsCoreType)) ? (StatsCore *)stats : NULL;
}

static void
observe(PyObject *histogram, double value)
{
    if (histogram != NULL && is_core(histogram, &HistogramCoreType))
        histogram_observe((HistogramCore *)histogram, value);
}

/* ------------------------------------------------------------------------ */
/* Shared: a transport and its cached write method                          */

static int
set_transport(PyObject **transport, PyObject **write, PyObject *value)
{
    PyObject *method = NULL;
    if (value == NULL)
        value = Py_None;
    if (value != Py_None) {
        method = PyObject_GetAttr(value, s_write);
        if (method == NULL)
            return -1;
    }
    Py_INCREF(value);
    Py_XSETREF(*transport, value);
    Py_XSETREF(*write, method);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* ServerCore: relay.ServerCorePy                                            */

typedef struct {
    PyObject_HEAD
    PyObject *owner;     /* the client session holding it, or None */
    PyObject *transport; /* asyncio transport on poold's duplicate of the socket */
    PyObject *write;     /* transport.write */
    PyObject *scanner;   /* FrameScanner(b"ZSE") */
    PyObject *status;    /* b"I", b"T" or b"E" from the last ReadyForQuery */
    PyObject *stats;     /* the pool's StatsCore */
    PyObject *params;    /* tracked settings differing from defaults */
    Py_ssize_t pending;  /* ReadyForQuery messages still owed to the owner */
    Py_ssize_t swallow;  /* ReadyForQuery messages owed to internal queries */
    Py_ssize_t cancels;  /* CancelRequests in flight for it (Pool.cancel_query): no other client gets it */
    double busy_since, cancel_at, expires_at, idle_since;
    long epoch;
    char closed;
    char dirty;     /* an internal query failed: discarded at its release */
    char expecting; /* poold's own requests in flight, or held (prepared.LinkStatements.busy): no fast path */
    char carries;   /* params hold a setting beyond the reported ones: reset before release (relay.carries_settings) */
} ServerCore;

typedef struct {
    PyObject_HEAD
    PyObject *transport, *write, *scanner, *pool, *server, *buffered, *wanted, *rt;
    PyObject *head; /* bytes: a message's start too short to look at, kept for the next read (settings.look) */
    PyObject *startup, *pinned; /* settings.py: the startup settings (or None), what pins it (or None) */
    Py_ssize_t buffered_syncs, transactions;
    double xact_start, wait_start;
    char relaying, waiting, terminating, closed, in_batch, session_mode, server_paused;
    char settle; /* a request may have changed a setting: ClientSession._settle at the release */
    /* the C login (see client_login): */
    char native_login;    /* set by ClientSession.connection_made: the client's login bytes come here */
    int login_sent;       /* messages it wrote: 0, 1 (AuthenticationSASL), 2 (and SASLContinue) */
    int negotiated;       /* SSLRequest or GSSENCRequest answered 'N' before the startup packet: 0 or 1 */
    PyObject *login_buf;  /* every byte the client sent so far (since the startup packet, after an 'N') */
    Py_ssize_t login_pos; /* where the next unread message starts */
    ScramServer *scram;
    /* the rest of ClientSession's state, here so that a connection starts without Python */
    PyObject *login, *login_wait, *peer, *plan, *reader, *key, *user, *database;
    double connected_at;
    char tls, self_paused;
    char cancel_request; /* it brought a CancelRequest: nothing is written to it (set by _negotiate, read by _refuse) */
    /* named prepared statements (prepared.py): the client's ClientStatements or None, and
     * whether its stream stopped inside a request that the Python path holds or passes */
    PyObject *ps;
    char ps_mid;
} ClientCore;

typedef struct {
    PyObject_HEAD
    PyObject *free;     /* list of idle ServerCore, LIFO */
    PyObject *active;   /* set of leased-out ServerCore */
    PyObject *waiters;  /* deque of (waiter, deadline) */
    PyObject *stats;    /* StatsCore */
    PyObject *settings; /* config.PoolSettings (frozen): set through Pool_set_settings */
    PyObject *breaker;  /* breaker.Breaker */
    PyObject *loop_time; /* the event loop's time(), the clock of its timers */
    Py_ssize_t leased, connecting;
    Py_ssize_t max_size;    /* settings.max_size, read when settings is set */
    Py_ssize_t max_prepared; /* settings.max_prepared_statements, likewise */
    double acquire_timeout; /* settings.acquire_timeout, likewise */
    double wait_until;  /* the deadline the wait timer is armed for; 0: not armed */
    long epoch;
    char paused, closed;
} PoolCore;

static PyObject *client_server_ready(ClientCore *self, PyObject *status);
static PyObject *Client_data_received(ClientCore *self, PyObject *data);
static PyObject *client_relay(ClientCore *self, StatsCore *stats, PyObject *data, int look, Py_ssize_t at, int tail);
static int client_on_server(ClientCore *self, ServerCore *link);

static int
Server_traverse(ServerCore *self, visitproc visit, void *arg)
{
    Py_VISIT(self->owner);
    Py_VISIT(self->transport);
    Py_VISIT(self->write);
    Py_VISIT(self->scanner);
    Py_VISIT(self->stats);
    Py_VISIT(self->params);
    return 0;
}

static int
Server_clear(ServerCore *self)
{
    Py_CLEAR(self->owner);
    Py_CLEAR(self->transport);
    Py_CLEAR(self->write);
    Py_CLEAR(self->scanner);
    Py_CLEAR(self->status);
    Py_CLEAR(self->stats);
    Py_CLEAR(self->params);
    return 0;
}

static void
Server_dealloc(ServerCore *self)
{
    PyObject_GC_UnTrack(self);
    Server_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* data_received: a chunk from the server. The common chunk (a reply whose
 * only watched messages are ReadyForQuery, for a client, with no internal
 * query in flight and none of poold's own prepared-statement requests) is written to the client here; any other goes to
 * ServerLink._on_frames with the frames already scanned. */
static PyObject *
Server_data_received(ServerCore *self, PyObject *data)
{
    PyObject *frames = scanner_feed(self->scanner, data);
    if (frames == NULL) {
        if (PyErr_ExceptionMatches(ProtocolError)) {
            PyErr_Clear();
            return PyObject_CallMethodNoArgs((PyObject *)self, s_stream_corrupt);
        }
        return NULL;
    }
    Py_ssize_t nframes = PyList_GET_SIZE(frames);
    int fast = self->swallow == 0 && !self->expecting && !is_none(self->owner) && is_core(self->owner, &ClientCoreType) &&
               PyBytes_CheckExact(data);
    for (Py_ssize_t i = 0; fast && i < nframes; i++) {
        PyObject *frame = PyList_GET_ITEM(frames, i);
        fast = PyLong_AsLong(PyTuple_GET_ITEM(frame, 0)) == 'Z' && PyBytes_Check(PyTuple_GET_ITEM(frame, 3));
    }
    ClientCore *owner = fast ? (ClientCore *)self->owner : NULL;
    Py_ssize_t n = fast ? PyBytes_GET_SIZE(data) : 0;
    if (fast && (owner->write == NULL || (n && !stats_of(self->stats))))
        fast = 0;
    if (!fast) {
        PyObject *result = PyObject_CallMethodObjArgs((PyObject *)self, s_on_frames, data, frames, NULL);
        Py_DECREF(frames);
        return result;
    }
    PyObject *result = NULL;
    Py_INCREF(owner);
    if (n) {
        if (call_done(PyObject_CallOneArg(owner->write, data)) < 0)
            goto done;
        ((StatsCore *)self->stats)->bytes_out += n;
    }
    for (Py_ssize_t i = 0; i < nframes; i++) {
        PyObject *body = PyTuple_GET_ITEM(PyList_GET_ITEM(frames, i), 3);
        Py_XSETREF(self->status, Py_NewRef(PyBytes_GET_SIZE(body) ? body : IDLE));
        self->pending -= 1;
        self->cancel_at = 0.0;
        if (self->pending <= 0) {
            self->pending = 0;
            PyObject *status = Py_NewRef(self->status);
            int rc = call_done(client_server_ready(owner, status));
            Py_DECREF(status);
            if (rc < 0)
                goto done;
        }
        else {
            self->busy_since = monotonic(); /* pipelined requests: the next one's clock starts now */
        }
    }
    result = Py_NewRef(Py_None);
done:
    Py_DECREF(owner);
    Py_DECREF(frames);
    return result;
}

static PyObject *
Server_get_transport(ServerCore *self, void *closure)
{
    return Py_NewRef(self->transport ? self->transport : Py_None);
}

static int
Server_set_transport(ServerCore *self, PyObject *value, void *closure)
{
    return set_transport(&self->transport, &self->write, value);
}

static PyMethodDef Server_methods[] = {
    {"data_received", (PyCFunction)Server_data_received, METH_O, "asyncio.Protocol.data_received"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Server_members[] = {
    {"owner", T_OBJECT, offsetof(ServerCore, owner), 0, NULL},
    {"scanner", T_OBJECT, offsetof(ServerCore, scanner), 0, NULL},
    {"status", T_OBJECT, offsetof(ServerCore, status), 0, NULL},
    {"stats", T_OBJECT, offsetof(ServerCore, stats), 0, NULL},
    {"params", T_OBJECT, offsetof(ServerCore, params), 0, NULL},
    {"carries", T_BOOL, offsetof(ServerCore, carries), 0, NULL},
    {"pending", T_PYSSIZET, offsetof(ServerCore, pending), 0, NULL},
    {"swallow", T_PYSSIZET, offsetof(ServerCore, swallow), 0, NULL},
    {"cancels", T_PYSSIZET, offsetof(ServerCore, cancels), 0, NULL},
    {"dirty", T_BOOL, offsetof(ServerCore, dirty), 0, NULL},
    {"busy_since", T_DOUBLE, offsetof(ServerCore, busy_since), 0, NULL},
    {"cancel_at", T_DOUBLE, offsetof(ServerCore, cancel_at), 0, NULL},
    {"expires_at", T_DOUBLE, offsetof(ServerCore, expires_at), 0, NULL},
    {"idle_since", T_DOUBLE, offsetof(ServerCore, idle_since), 0, NULL},
    {"epoch", T_LONG, offsetof(ServerCore, epoch), 0, NULL},
    {"closed", T_BOOL, offsetof(ServerCore, closed), 0, NULL},
    {"expecting", T_BOOL, offsetof(ServerCore, expecting), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef Server_getset[] = {
    {"transport", (getter)Server_get_transport, (setter)Server_set_transport, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ServerCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "poold._relaycore.ServerCore",
    .tp_doc = "A server connection's hot-path state (relay.ServerCorePy in C).",
    .tp_basicsize = sizeof(ServerCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_traverse = (traverseproc)Server_traverse,
    .tp_clear = (inquiry)Server_clear,
    .tp_dealloc = (destructor)Server_dealloc,
    .tp_methods = Server_methods,
    .tp_members = Server_members,
    .tp_getset = Server_getset,
};

/* ------------------------------------------------------------------------ */
/* PoolCore: pools.PoolCorePy                                                */

/* A free link, leased (in ``active``), or NULL: none free, or paused (or an
 * error is set). */
static ServerCore *
pool_take_free(PoolCore *self)
{
    if (self->paused || self->free == NULL || !PyList_CheckExact(self->free))
        return NULL;
    Py_ssize_t n;
    while ((n = PyList_GET_SIZE(self->free)) > 0) {
        PyObject *link = Py_NewRef(PyList_GET_ITEM(self->free, n - 1));
        if (PyList_SetSlice(self->free, n - 1, n, NULL) < 0) {
            Py_DECREF(link);
            return NULL;
        }
        if (!is_core(link, &ServerCoreType)) {
            Py_DECREF(link);
            PyErr_SetString(PyExc_TypeError, "a pool's free list holds ServerCore links");
            return NULL;
        }
        if (!((ServerCore *)link)->closed) {
            if (PySet_Add(self->active, link) < 0) {
                Py_DECREF(link);
                return NULL;
            }
            StatsCore *stats = stats_of(self->stats);
            if (stats != NULL)
                observe(stats->wait, 0.0); /* no wait */
            return (ServerCore *)link;
        }
        Py_DECREF(link);
    }
    return NULL;
}

/* _serve_waiter: hand ``link`` to the longest-waiting client. */
static int
pool_serve_waiter(PoolCore *self, ServerCore *link)
{
    PyObject *item = PyObject_CallMethodNoArgs(self->waiters, s_popleft);
    if (item == NULL)
        return -1;
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
        Py_DECREF(item);
        PyErr_SetString(PyExc_TypeError, "a pool's waiters are (waiter, deadline) pairs");
        return -1;
    }
    PyObject *waiter = Py_NewRef(PyTuple_GET_ITEM(item, 0));
    Py_DECREF(item);
    int rc = PySet_Add(self->active, (PyObject *)link);
    if (rc == 0) {
        if (is_core(waiter, &ClientCoreType))
            rc = client_on_server((ClientCore *)waiter, link);
        else
            rc = call_done(PyObject_CallMethodOneArg(waiter, s_on_server, (PyObject *)link));
    }
    Py_DECREF(waiter);
    return rc;
}

/* release: take back an idle link (ReadyForQuery 'I', nothing pending). A link
 * with a cancel in flight, or whose internal query failed, is Pool._set_aside's. */
static int
pool_release(PoolCore *self, ServerCore *link, double now)
{
    Py_XSETREF(link->owner, Py_NewRef(Py_None));
    if (link->cancels || link->dirty)
        return call_done(PyObject_CallMethodOneArg((PyObject *)self, s_set_aside, (PyObject *)link));
    if (PySet_Discard(self->active, (PyObject *)link) < 0)
        return -1;
    if (link->closed)
        return 0;
    if (now == 0.0)
        now = monotonic();
    if (self->closed || link->epoch != self->epoch || link->expires_at <= now)
        return call_done(PyObject_CallMethodOneArg((PyObject *)self, s_give_back, (PyObject *)link));
    if (self->leased > self->max_size) /* shrinking after a reload */
        return call_done(PyObject_CallMethodOneArg((PyObject *)self, s_retire, (PyObject *)link));
    Py_ssize_t waiting = PyObject_Length(self->waiters);
    if (waiting < 0)
        return -1;
    if (waiting && !self->paused)
        return pool_serve_waiter(self, link);
    link->idle_since = now;
    return PyList_Append(self->free, (PyObject *)link);
}

/* _acquire_wait, for the usual case at saturation: the breaker closed, the
 * wait timer already armed for an earlier deadline, no connection to add. Any
 * other case is Pool._acquire_wait's. */
static int
pool_acquire_wait(PoolCore *self, PyObject *waiter)
{
    int usual = !self->closed && self->wait_until > 0.0 && !is_none(self->breaker) && !is_none(self->loop_time);
    double deadline = 0.0;
    if (usual) {
        PyObject *is_open_obj = PyObject_GetAttr(self->breaker, s_open); /* a slot: Breaker.closed is a property */
        if (is_open_obj == NULL)
            return -1;
        int is_open = PyObject_IsTrue(is_open_obj);
        Py_DECREF(is_open_obj);
        if (is_open < 0)
            return -1;
        usual = !is_open;
    }
    if (usual) {
        double now = 0.0;
        PyObject *t = PyObject_CallNoArgs(self->loop_time);
        if (t == NULL)
            return -1;
        now = PyFloat_AsDouble(t);
        Py_DECREF(t);
        if (now == -1.0 && PyErr_Occurred())
            return -1;
        deadline = now + self->acquire_timeout; /* the loop's clock, as call_at's */
        usual = deadline >= self->wait_until;
    }
    if (usual) {
        Py_ssize_t waiting = PyObject_Length(self->waiters);
        if (waiting < 0)
            return -1;
        /* the grow check, with this waiter counted */
        usual = !(waiting + 1 > self->connecting && self->leased + self->connecting < self->max_size);
    }
    if (!usual)
        return call_done(PyObject_CallMethodOneArg((PyObject *)self, s_acquire_wait, waiter));
    PyObject *item = Py_BuildValue("(Od)", waiter, deadline);
    if (item == NULL)
        return -1;
    int rc = call_done(PyObject_CallMethodOneArg(self->waiters, s_append, item));
    Py_DECREF(item);
    return rc;
}

/* acquire: a free link (a new reference), or NULL with ``waiter`` queued, or
 * failed at once by _acquire_wait (no exception), or NULL with an exception. */
static ServerCore *
pool_acquire(PoolCore *self, PyObject *waiter)
{
    ServerCore *link = pool_take_free(self);
    if (link == NULL && !PyErr_Occurred())
        pool_acquire_wait(self, waiter);
    return link;
}

static PyObject *
Pool_acquire(PoolCore *self, PyObject *waiter)
{
    ServerCore *link = pool_acquire(self, waiter);
    if (link != NULL)
        return (PyObject *)link;
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
Pool_release(PoolCore *self, PyObject *const *args, Py_ssize_t nargs)
{
    double now = 0.0;
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "release(link, now=0.0)");
        return NULL;
    }
    if (!is_core(args[0], &ServerCoreType)) {
        PyErr_SetString(PyExc_TypeError, "release: a ServerCore link");
        return NULL;
    }
    if (nargs == 2) {
        now = PyFloat_AsDouble(args[1]);
        if (now == -1.0 && PyErr_Occurred())
            return NULL;
    }
    if (pool_release(self, (ServerCore *)args[0], now) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
Pool_serve_waiter(PoolCore *self, PyObject *link)
{
    if (!is_core(link, &ServerCoreType)) {
        PyErr_SetString(PyExc_TypeError, "_serve_waiter: a ServerCore link");
        return NULL;
    }
    if (pool_serve_waiter(self, (ServerCore *)link) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static int
Pool_traverse(PoolCore *self, visitproc visit, void *arg)
{
    Py_VISIT(self->free);
    Py_VISIT(self->active);
    Py_VISIT(self->waiters);
    Py_VISIT(self->stats);
    Py_VISIT(self->settings);
    Py_VISIT(self->breaker);
    Py_VISIT(self->loop_time);
    return 0;
}

static int
Pool_clear(PoolCore *self)
{
    Py_CLEAR(self->free);
    Py_CLEAR(self->active);
    Py_CLEAR(self->waiters);
    Py_CLEAR(self->stats);
    Py_CLEAR(self->settings);
    Py_CLEAR(self->breaker);
    Py_CLEAR(self->loop_time);
    return 0;
}

static void
Pool_dealloc(PoolCore *self)
{
    PyObject_GC_UnTrack(self);
    Pool_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Pool_methods[] = {
    {"acquire", (PyCFunction)Pool_acquire, METH_O, "A free link now, or None and the waiter is called back later."},
    {"release", (PyCFunction)(void (*)(void))Pool_release, METH_FASTCALL,
     "release(link, now=0.0): take back an idle link."},
    {"_serve_waiter", (PyCFunction)Pool_serve_waiter, METH_O, "Hand a link to the longest-waiting client."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Pool_members[] = {
    {"free", T_OBJECT, offsetof(PoolCore, free), 0, NULL},
    {"active", T_OBJECT, offsetof(PoolCore, active), 0, NULL},
    {"waiters", T_OBJECT, offsetof(PoolCore, waiters), 0, NULL},
    {"stats", T_OBJECT, offsetof(PoolCore, stats), 0, NULL},
    {"breaker", T_OBJECT, offsetof(PoolCore, breaker), 0, NULL},
    {"_loop_time", T_OBJECT, offsetof(PoolCore, loop_time), 0, NULL},
    {"leased", T_PYSSIZET, offsetof(PoolCore, leased), 0, NULL},
    {"connecting", T_PYSSIZET, offsetof(PoolCore, connecting), 0, NULL},
    {"_wait_until", T_DOUBLE, offsetof(PoolCore, wait_until), 0, NULL},
    {"epoch", T_LONG, offsetof(PoolCore, epoch), 0, NULL},
    {"paused", T_BOOL, offsetof(PoolCore, paused), 0, NULL},
    {"_closed", T_BOOL, offsetof(PoolCore, closed), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

/* obj.name as a C number: -1 with an exception set when it fails */
static Py_ssize_t
ssize_attr(PyObject *obj, PyObject *name)
{
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL)
        return -1;
    Py_ssize_t result = PyLong_AsSsize_t(value);
    Py_DECREF(value);
    return result;
}

static double
float_attr(PyObject *obj, PyObject *name)
{
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL)
        return -1.0;
    double result = PyFloat_AsDouble(value);
    Py_DECREF(value);
    return result;
}

static PyObject *
Pool_get_settings(PoolCore *self, void *closure)
{
    return Py_NewRef(self->settings ? self->settings : Py_None);
}

/* The three settings the hot path reads are taken here, once per assignment
 * (Pool.__init__ and a reload), not per transaction. */
static int
Pool_set_settings(PoolCore *self, PyObject *value, void *closure)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "a pool's settings cannot be deleted");
        return -1;
    }
    Py_ssize_t limit = ssize_attr(value, s_max_size);
    if (limit == -1 && PyErr_Occurred())
        return -1;
    double timeout = float_attr(value, s_acquire_timeout);
    if (timeout == -1.0 && PyErr_Occurred())
        return -1;
    Py_ssize_t prepared = ssize_attr(value, s_max_prepared_statements);
    if (prepared == -1 && PyErr_Occurred())
        return -1;
    Py_XSETREF(self->settings, Py_NewRef(value));
    self->max_prepared = prepared;
    self->max_size = limit;
    self->acquire_timeout = timeout;
    return 0;
}

static PyGetSetDef Pool_getset[] = {
    {"settings", (getter)Pool_get_settings, (setter)Pool_set_settings, "config.PoolSettings", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject PoolCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "poold._relaycore.PoolCore",
    .tp_doc = "A pool's free list and hand-off (pools.PoolCorePy in C).",
    .tp_basicsize = sizeof(PoolCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_traverse = (traverseproc)Pool_traverse,
    .tp_clear = (inquiry)Pool_clear,
    .tp_dealloc = (destructor)Pool_dealloc,
    .tp_methods = Pool_methods,
    .tp_members = Pool_members,
    .tp_getset = Pool_getset,
};

/* ------------------------------------------------------------------------ */
/* ClientCore: client.ClientCorePy                                           */

static int
same_settings(PyObject *a, PyObject *b)
{
    if (a == NULL || b == NULL)
        return 0; /* not set up yet: ClientSession._attach decides */
    if (PyDict_CheckExact(a) && PyDict_CheckExact(b) && PyDict_GET_SIZE(a) == 0 && PyDict_GET_SIZE(b) == 0)
        return 1;
    return PyObject_RichCompareBool(a, b, Py_EQ);
}

/* prepared.clean: whether a client chunk may go to the server as it is: whole
 * messages, the last a sync point (Query, Sync, FunctionCall), none naming a
 * statement (Parse, Bind, Describe 'S', Close 'S' with a name), no Query or
 * unnamed Parse text that may be or hold DEALLOCATE or DISCARD (or starts with
 * white space or a comment, or is a Query of more than one statement). A header
 * walk, a byte or two per message and a look for ';' in each Query. */
static uint32_t be32(const char *p);
static void put_be32(char *p, uint32_t v);

static int
ps_may_drop(const unsigned char *p, Py_ssize_t start, Py_ssize_t end)
{
    if (start >= end)
        return 0;
    unsigned char c = p[start];
    if (c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '-' || c == '/')
        return 1;
    if (end - start < 4 || (c | 0x20) != 'd')
        return 0;
    unsigned char c1 = p[start + 1] | 0x20, c2 = p[start + 2] | 0x20, c3 = p[start + 3] | 0x20;
    return (c1 == 'e' && c2 == 'a' && c3 == 'l') || (c1 == 'i' && c2 == 's' && c3 == 'c');
}

/* Whether p[start:end] holds ``word`` (lower case letters) in any case. */
static int
ps_names_word(const unsigned char *p, Py_ssize_t start, Py_ssize_t end, const char *word)
{
    Py_ssize_t len = (Py_ssize_t)strlen(word);
    for (Py_ssize_t i = start; i + len <= end; i++) {
        if ((p[i] | 0x20) != (unsigned char)word[0])
            continue;
        Py_ssize_t k = 1;
        while (k < len && (p[i + k] | 0x20) == (unsigned char)word[k])
            k++;
        if (k == len)
            return 1;
    }
    return 0;
}

/* prepared._query_may_drop: a whole Query's text that may be or hold DEALLOCATE or
 * DISCARD: its first statement may (ps_may_drop), or there is more than one (a ';'
 * with more than white space or ';' after it) and it names either word in any case:
 * then its tags are watched (its replies read in Python). */
static int
ps_query_may_drop(const unsigned char *p, Py_ssize_t start, Py_ssize_t end)
{
    if (ps_may_drop(p, start, end))
        return 1;
    Py_ssize_t last = end;
    while (last > start) {
        unsigned char c = p[last - 1];
        if (c != ';' && c != ' ' && c != '\t' && c != '\r' && c != '\n' && c != 0)
            break;
        last--;
    }
    if (last <= start || memchr(p + start, ';', (size_t)(last - start)) == NULL)
        return 0;
    return ps_names_word(p, start, last, "deallocate") || ps_names_word(p, start, last, "discard");
}

/* prepared._names_statement: a Parse, Bind, Describe or Close naming a statement (or an
 * unnamed Parse whose text may drop statements); 1 too for what is malformed. */
static int
ps_names_statement(const unsigned char *p, unsigned char t, Py_ssize_t start, Py_ssize_t end)
{
    if (start >= end)
        return 1;
    if (t == 'P')
        return p[start] != 0 || ps_may_drop(p, start + 1, end);
    if (t == 'B') {
        const unsigned char *z = memchr(p + start, 0, (size_t)(end - start));
        return z == NULL || z + 1 >= p + end || z[1] != 0;
    }
    return p[start] == 'S' && (start + 1 >= end || p[start + 1] != 0);
}

static int
ps_clean(PyObject *data)
{
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t n = PyBytes_GET_SIZE(data), pos = 0;
    int last = -1;
    while (pos < n) {
        if (n - pos < 5)
            return 0;
        unsigned char t = p[pos];
        int32_t length = (int32_t)be32((const char *)p + pos + 1);
        if (length < 4 || (Py_ssize_t)length > n - pos - 1)
            return 0;
        Py_ssize_t start = pos + 5, end = pos + 1 + length;
        if (t == 'P' || t == 'B' || t == 'D' || t == 'C') {
            if (ps_names_statement(p, t, start, end))
                return 0;
        }
        else if (t == 'Q' && ps_query_may_drop(p, start, end)) {
            return 0;
        }
        last = t;
        pos = end;
    }
    return last == 'Q' || last == 'S' || last == 'F';
}

/* prepared.ClientStatements.rename's walk: whole messages ending at a sync point
 * whose only named requests are Binds and Describes of statements in ``names``
 * (the client's) that ``lru`` (the link's LinkStatements.lru) has ready (False,
 * not stale), renamed to poold's names. 1 with *out (a new reference) and the
 * statements appended to ``bound``, 0 when it is not this case, -1 on error. */
#define PS_RENAMES_MAX 32

static int
ps_rename_walk(PyObject *names, PyObject *lru, PyObject *data, PyObject *bound, PyObject **out)
{
    struct {
        Py_ssize_t pos, start, name_start, name_end, end;
        PyObject *name;
    } ren[PS_RENAMES_MAX];
    int nren = 0, rc = 0;
    *out = NULL;
    if (!PyDict_Check(names) || !PyDict_Check(lru) || !PyBytes_CheckExact(data) || !PyList_Check(bound))
        return 0;
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t n = PyBytes_GET_SIZE(data), pos = 0;
    int last = -1;
    while (pos < n) {
        if (n - pos < 5)
            goto done;
        unsigned char t = p[pos];
        int32_t length = (int32_t)be32((const char *)p + pos + 1);
        if (length < 4 || (Py_ssize_t)length > n - pos - 1)
            goto done;
        Py_ssize_t start = pos + 5, end = pos + 1 + length, name_start = -1;
        if (t == 'B') {
            const unsigned char *z = memchr(p + start, 0, (size_t)(end - start));
            if (z == NULL || z + 1 >= p + end)
                goto done;
            name_start = z + 1 - p;
        }
        else if (t == 'D' && start + 1 < end && p[start] == 'S' && p[start + 1] != 0) {
            name_start = start + 1;
        }
        if (name_start >= 0) {
            const unsigned char *z = memchr(p + name_start, 0, (size_t)(end - name_start));
            if (z == NULL)
                goto done;
            Py_ssize_t name_end = z - p;
            if (name_end > name_start) {
                if (nren == PS_RENAMES_MAX)
                    goto done;
                PyObject *key = PyBytes_FromStringAndSize((const char *)p + name_start, name_end - name_start);
                if (key == NULL) {
                    rc = -1;
                    goto done;
                }
                PyObject *stmt = PyDict_GetItemWithError(names, key); /* borrowed */
                Py_DECREF(key);
                PyObject *stale = stmt ? PyDict_GetItemWithError(lru, stmt) : NULL;
                if (stale != Py_False) {
                    rc = PyErr_Occurred() ? -1 : 0;
                    goto done;
                }
                PyObject *name = PyObject_GetAttr(stmt, s_name);
                if (name == NULL || !PyBytes_Check(name) || PyList_Append(bound, stmt) < 0) {
                    Py_XDECREF(name);
                    rc = PyErr_Occurred() ? -1 : 0;
                    goto done;
                }
                ren[nren].pos = pos;
                ren[nren].start = start;
                ren[nren].name_start = name_start;
                ren[nren].name_end = name_end;
                ren[nren].end = end;
                ren[nren].name = name;
                nren++;
            }
        }
        else if ((t == 'P' || t == 'C' || t == 'D') && ps_names_statement(p, t, start, end)) {
            goto done;
        }
        else if (t == 'Q' && ps_query_may_drop(p, start, end)) {
            goto done;
        }
        last = t;
        pos = end;
    }
    if (!(last == 'Q' || last == 'S' || last == 'F') || nren == 0)
        goto done;
    Py_ssize_t size = n;
    for (int i = 0; i < nren; i++)
        size += PyBytes_GET_SIZE(ren[i].name) - (ren[i].name_end - ren[i].name_start);
    PyObject *result = PyBytes_FromStringAndSize(NULL, size);
    if (result == NULL) {
        rc = -1;
        goto done;
    }
    char *w = PyBytes_AS_STRING(result);
    Py_ssize_t from = 0;
    for (int i = 0; i < nren; i++) {
        Py_ssize_t k = PyBytes_GET_SIZE(ren[i].name);
        memcpy(w, p + from, (size_t)(ren[i].pos - from));
        w += ren[i].pos - from;
        Py_ssize_t body = (ren[i].name_start - ren[i].start) + k + (ren[i].end - ren[i].name_end);
        *w++ = (char)p[ren[i].pos];
        put_be32(w, (uint32_t)(body + 4));
        w += 4;
        memcpy(w, p + ren[i].start, (size_t)(ren[i].name_start - ren[i].start));
        w += ren[i].name_start - ren[i].start;
        memcpy(w, PyBytes_AS_STRING(ren[i].name), (size_t)k);
        w += k;
        memcpy(w, p + ren[i].name_end, (size_t)(ren[i].end - ren[i].name_end));
        w += ren[i].end - ren[i].name_end;
        from = ren[i].end;
    }
    memcpy(w, p + from, (size_t)(n - from));
    *out = result;
    rc = 1;
done:
    for (int i = 0; i < nren; i++)
        Py_DECREF(ren[i].name);
    if (rc != 1 && PyList_Check(bound) && PyList_SetSlice(bound, 0, PyList_GET_SIZE(bound), NULL) < 0)
        rc = -1;
    return rc;
}

/* prepared.ClientStatements.rename, called from ClientSession._rewrite's first
 * branch: ps_rename_walk over the client's names and the link's LRU, then the
 * bookkeeping of the Python: the statements move to the LRU's end, registry.hits
 * counts them, link.ps.bound lists them (a 0A000 that follows marks them stale).
 * 1 with *out (a new reference), 0 when it is not this case (Python's _rewrite
 * has it), -1 on error. */
static int
ps_rename(ClientCore *self, ServerCore *link, PyObject *data, PyObject **out)
{
    int rc = 0;
    *out = NULL;
    if (is_none(self->ps) || self->ps_mid || link->expecting || !PyBytes_CheckExact(data))
        return 0;
    PyObject *lps = NULL, *names = NULL, *lru = NULL, *bound = NULL, *result = NULL;
    if ((lps = PyObject_GetAttr((PyObject *)link, s_ps)) == NULL)
        return -1;
    if (lps == Py_None)
        goto done;
    names = PyObject_GetAttr(self->ps, s_names);
    lru = names ? PyObject_GetAttr(lps, s_lru) : NULL;
    bound = lru ? PyList_New(0) : NULL;
    if (bound == NULL) {
        rc = -1;
        goto done;
    }
    if ((rc = ps_rename_walk(names, lru, data, bound, &result)) != 1)
        goto done;
    PyObject *registry = PyObject_GetAttr(self->ps, s_registry);
    PyObject *hits = registry ? PyObject_GetAttr(registry, s_hits) : NULL;
    PyObject *count = hits ? PyLong_FromSsize_t(PyList_GET_SIZE(bound)) : NULL;
    PyObject *more = count ? PyNumber_Add(hits, count) : NULL;
    rc = more != NULL && PyObject_SetAttr(registry, s_hits, more) == 0 ? 1 : -1;
    Py_XDECREF(more);
    Py_XDECREF(count);
    Py_XDECREF(hits);
    Py_XDECREF(registry);
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(bound) && rc == 1; i++)
        if (call_done(PyObject_CallMethodOneArg(lru, s_move_to_end, PyList_GET_ITEM(bound, i))) < 0)
            rc = -1;
    if (rc == 1 && PyObject_SetAttr(lps, s_bound, bound) < 0)
        rc = -1;
    if (rc == 1)
        *out = Py_NewRef(result);
done:
    Py_XDECREF(result);
    Py_XDECREF(bound);
    Py_XDECREF(lru);
    Py_XDECREF(names);
    Py_XDECREF(lps);
    return rc;
}

/* ClientSession._forward, with its caller's test: requests for ``link`` go as they
 * are unless transaction mode carries named statements and they are not clean;
 * then renamed (ps_rename, _rewrite's first branch) or ClientSession._rewrite's. */
static int
client_forward(ClientCore *self, ServerCore *link, PyObject *data, Py_ssize_t syncs)
{
    /* A client pinned after naming statements keeps its renames (session_mode is then set). */
    int plain = is_none(self->ps) &&
                (self->session_mode || !(is_core(self->pool, &PoolCoreType) && ((PoolCore *)self->pool)->max_prepared > 0));
    if (plain || (!self->ps_mid && !link->expecting && PyBytes_CheckExact(data) && ps_clean(data)))
        return call_done(PyObject_CallOneArg(link->write, data));
    PyObject *renamed;
    int done = ps_rename(self, link, data, &renamed);
    if (done != 0) {
        if (done < 0)
            return -1;
        int rc = call_done(PyObject_CallOneArg(link->write, renamed));
        Py_DECREF(renamed);
        return rc;
    }
    PyObject *n = PyLong_FromSsize_t(syncs);
    if (n == NULL)
        return -1;
    int rc = call_done(PyObject_CallMethodObjArgs((PyObject *)self, s_rewrite, (PyObject *)link, data, n, NULL));
    Py_DECREF(n);
    return rc;
}

/* _attach: take a freshly leased link and send it the first request. */
static int
client_attach(ClientCore *self, ServerCore *link, PyObject *data, Py_ssize_t syncs)
{
    int same = same_settings(link->params, self->wanted);
    if (same < 0)
        return -1;
    if (!same || link->write == NULL) /* a SET goes first: ClientSession._attach */
        return call_done(PyObject_CallMethod((PyObject *)self, "_attach", "OOn", link, data, syncs));
    self->waiting = 0;
    Py_XSETREF(self->server, Py_NewRef(link));
    Py_XSETREF(link->owner, Py_NewRef(self));
    if (syncs) {
        link->pending = syncs;
        link->busy_since = self->xact_start = monotonic();
    }
    if (PyBytes_GET_SIZE(data) && client_forward(self, link, data, syncs) < 0)
        return -1;
    return 0;
}

/* _buffer: keep a request until a server connection is free; past
 * BUFFERED_CHUNKS_MAX chunks (client.py's), pause reading the client. */
#define BUFFERED_CHUNKS_MAX 4

static int
client_buffer(ClientCore *self, PyObject *data, Py_ssize_t syncs)
{
    if (PyList_Append(self->buffered, data) < 0)
        return -1;
    self->buffered_syncs += syncs;
    if (PyList_GET_SIZE(self->buffered) >= BUFFERED_CHUNKS_MAX)
        return call_done(PyObject_CallMethodNoArgs((PyObject *)self, s_pause_reading));
    return 0;
}

/* client._may_be_database_command: a Query or Parse whose text starts with
 * "drop" or "crea" in any case, which may be DROP DATABASE or CREATE DATABASE
 * ... TEMPLATE, or with white space or a comment (the first request of every
 * transaction is looked at: two bytes, mostly). */
static int
may_be_database_command(PyObject *data)
{
    Py_ssize_t n = PyBytes_GET_SIZE(data), start;
    const char *p = PyBytes_AS_STRING(data);
    if (n < 6)
        return 0;
    if (p[0] == 'Q') {
        start = 5;
    }
    else if (p[0] == 'P') {
        const char *end = memchr(p + 5, 0, (size_t)(n - 5)); /* after the statement's name */
        if (end == NULL)
            return 0;
        start = end - p + 1;
    }
    else {
        return 0;
    }
    if (start + 4 > n)
        return 0;
    p += start;
    if (p[0] == '-' || p[0] == '/' || p[0] == ' ' || p[0] == '\t' || p[0] == '\r' || p[0] == '\n')
        return 1; /* white space or a comment first: messages.database_command reads past them */
    if ((p[0] | 0x20) == 'd')
        return (p[1] | 0x20) == 'r' && (p[2] | 0x20) == 'o' && (p[3] | 0x20) == 'p';
    if ((p[0] | 0x20) == 'c')
        return (p[1] | 0x20) == 'r' && (p[2] | 0x20) == 'e' && (p[3] | 0x20) == 'a';
    return 0;
}

/* the words settings.may_carry_state looks for */
static const char *const CARRY_KEYWORDS[] = {"set", "reset", "discard", "listen", "prepare", "declare", "create"};
static const char *const CARRY_ANYWHERE[] = {"advisory_lock", "ADVISORY_LOCK", "set_config", "SET_CONFIG"};

static int
is_ident_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '$';
}

/* settings._may_carry: one Query or Parse (its type at p, avail bytes of it in the chunk) */
static int
request_may_carry(const char *p, Py_ssize_t avail)
{
    Py_ssize_t start;
    if (p[0] == 'Q') {
        start = 5;
    }
    else {
        const char *end = memchr(p + 5, 0, (size_t)(avail - 5)); /* after the statement's name */
        if (end == NULL || end - p + 1 >= avail)
            return 0;
        start = end - p + 1;
    }
    if (start >= avail)
        return 0;
    char first = p[start];
    if (first == '-' || first == '/' || first == ' ' || first == '\t' || first == '\r' || first == '\n')
        return 1;
    for (size_t k = 0; k < sizeof CARRY_KEYWORDS / sizeof CARRY_KEYWORDS[0]; k++) {
        const char *word = CARRY_KEYWORDS[k];
        Py_ssize_t len = (Py_ssize_t)strlen(word), i;
        if ((first | 0x20) != word[0] || start + len > avail)
            continue;
        for (i = 1; i < len && (p[start + i] | 0x20) == word[i]; i++)
            ;
        if (i == len && (start + len >= avail || !is_ident_char(p[start + len])))
            return 1;
    }
    if (p[0] == 'Q') { /* more than one statement (a ';' before the last words): each is looked at */
        const char *text = p + start, *text_end = memchr(text, 0, (size_t)(avail - start));
        if (text_end == NULL)
            text_end = p + avail;
        while (text_end > text && (text_end[-1] == ';' || text_end[-1] == ' ' || text_end[-1] == '\t' ||
                                   text_end[-1] == '\r' || text_end[-1] == '\n'))
            text_end--;
        if (text_end > text && memchr(text, ';', (size_t)(text_end - text)) != NULL)
            return 1;
    }
    return 0;
}

/* settings.HEAD_BYTES: a Query's or Parse's first bytes (and every header) reach the look in one read */
#define HEAD_BYTES 256

/* The memchr pass of settings._ANYWHERE over p[0:n]: each name has one '_', so one
 * pass finds the few places to compare. */
static int
names_anywhere(const char *p, Py_ssize_t n)
{
    const char *end = p + n, *u = p;
    while ((u = memchr(u, '_', (size_t)(end - u))) != NULL) {
        for (size_t k = 0; k < sizeof CARRY_ANYWHERE / sizeof CARRY_ANYWHERE[0]; k++) {
            const char *name = CARRY_ANYWHERE[k];
            size_t len = strlen(name), at = (size_t)(strchr(name, '_') - name);
            if ((size_t)(u - p) >= at && (size_t)(end - (u - at)) >= len && memcmp(u - at, name, len) == 0)
                return 1;
        }
        u++;
    }
    return 0;
}

/* settings.look: whether a chunk (its messages starting at ``at``; before it, the rest
 * of a message of type ``tail`` begun in an earlier read, -1 if not known) may change
 * the session's state: a Query or Parse whose text starts with SET, RESET, DISCARD,
 * LISTEN, PREPARE, DECLARE or CREATE (any case, a whole word), or with white space or a
 * comment, or a Query of more than one statement; or a chunk with a Query or Parse that
 * names advisory_lock or set_config (lower or upper case); or the rest of a Query with a
 * ';', of a Query or Parse with one of those names. *cut: where a message's start too
 * short to look at begins (a header, or less than a Query's or Parse's first HEAD_BYTES,
 * of one no longer than ``limit``, the longest the scanner takes), kept for the next
 * read; n if none. A walk over the chunk's message headers, the first
 * bytes of each Query and Parse, and one memchr pass. */
static int
may_carry_state(const char *p, Py_ssize_t n, Py_ssize_t at, int tail, long long limit, Py_ssize_t *cut)
{
    Py_ssize_t pos = at;
    int seen = 0, look = 0;
    *cut = n;
    while (pos < n) {
        if (n - pos < 5) {
            *cut = pos;
            break;
        }
        const unsigned char *h = (const unsigned char *)p + pos;
        Py_ssize_t length = (Py_ssize_t)((uint32_t)h[1] << 24 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 8 | h[4]);
        if (length < 4)
            break; /* the relay refuses it */
        if (length + 1 > n - pos && (p[pos] == 'Q' || p[pos] == 'P') && n - pos < 5 + HEAD_BYTES &&
            (long long)length <= limit) {
            *cut = pos;
            break;
        }
        Py_ssize_t avail = n - pos < 1 + length ? n - pos : 1 + length;
        int is_request = 0; /* with some text in the chunk: settings.requests */
        if (p[pos] == 'Q') {
            is_request = avail > 5;
        }
        else if (p[pos] == 'P' && avail > 5) {
            const char *nul = memchr(p + pos + 5, 0, (size_t)(avail - 5));
            is_request = nul != NULL && nul - (p + pos) + 1 < avail;
        }
        if (is_request) {
            seen = 1;
            if (!look)
                look = request_may_carry(p + pos, avail);
        }
        pos += 1 + length;
    }
    if (!look && seen)
        look = names_anywhere(p, *cut);
    if (!look && at > 0 && (tail == 'Q' || tail == 'P')) /* settings.rest_may_carry */
        look = (tail == 'Q' && memchr(p, ';', (size_t)at) != NULL) || names_anywhere(p, at);
    return look;
}

/* _lease_and_send: a free link at once, else wait for one (Pool._acquire_wait queues). */
static int
client_lease_and_send(ClientCore *self, PyObject *data, Py_ssize_t syncs)
{
    if (PyBytes_CheckExact(data) && may_be_database_command(data) &&
        call_done(PyObject_CallMethodOneArg((PyObject *)self, s_before_database_command, data)) < 0)
        return -1;
    self->waiting = 1; /* before acquire: a failure at once clears it (on_acquire_failed) */
    ServerCore *link = pool_acquire((PoolCore *)self->pool, (PyObject *)self);
    if (link == NULL) {
        if (PyErr_Occurred())
            return -1;
        if (!self->waiting) /* failed at once, and we are closed */
            return 0;
        /* Queued: on_server follows. */
        self->wait_start = monotonic();
        return client_buffer(self, data, syncs);
    }
    int rc = client_attach(self, link, data, syncs);
    Py_DECREF(link);
    return rc;
}

/* on_server: the link this client waited for; send what was buffered. */
static int
client_on_server(ClientCore *self, ServerCore *link)
{
    PoolCore *pool = (PoolCore *)self->pool;
    if (is_none(self->pool) || !is_core(self->pool, &PoolCoreType)) {
        PyErr_SetString(PyExc_TypeError, "on_server: the client has no PoolCore");
        return -1;
    }
    if (self->wait_start) {
        StatsCore *stats = stats_of(pool->stats);
        if (stats != NULL)
            observe(stats->wait, monotonic() - self->wait_start);
        self->wait_start = 0.0;
    }
    int ended = self->closed || self->transport == NULL || is_none(self->transport);
    if (!ended) { /* ended meanwhile, its connection_lost not run yet (ClientSession._refuse) */
        PyObject *closing = PyObject_CallMethodNoArgs(self->transport, s_is_closing);
        ended = closing == NULL ? -1 : PyObject_IsTrue(closing);
        Py_XDECREF(closing);
        if (ended < 0)
            return -1;
    }
    if (ended) {
        self->waiting = 0;
        return pool_release(pool, link, 0.0);
    }
    Py_ssize_t syncs = self->buffered_syncs;
    self->buffered_syncs = 0;
    PyObject *data;
    Py_ssize_t nbuf = PyList_GET_SIZE(self->buffered);
    if (nbuf == 1)
        data = Py_NewRef(PyList_GET_ITEM(self->buffered, 0));
    else if (nbuf == 0)
        data = Py_NewRef(EMPTY);
    else
        data = PyObject_CallMethodOneArg(EMPTY, s_join, self->buffered);
    if (data == NULL || PyList_SetSlice(self->buffered, 0, nbuf, NULL) < 0) {
        Py_XDECREF(data);
        return -1;
    }
    /* read again: before the write, whose flow control may pause it anew */
    if (self->self_paused && call_done(PyObject_CallMethodNoArgs((PyObject *)self, s_resume_reading)) < 0) {
        Py_DECREF(data);
        return -1;
    }
    int rc = client_attach(self, link, data, syncs);
    Py_DECREF(data);
    return rc;
}

static PyObject *
Client_on_server(ClientCore *self, PyObject *link)
{
    if (!is_core(link, &ServerCoreType)) {
        PyErr_SetString(PyExc_TypeError, "on_server: a ServerCore link");
        return NULL;
    }
    if (client_on_server(self, (ServerCore *)link) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------ */
/* The login, in C, for the common case: login.py's _login_steps             */
/*
 * A StartupMessage (after one SSLRequest or GSSENCRequest answered 'N' where
 * no TLS is configured), then SCRAM-SHA-256 against keys already known (a
 * verifier in the auth file, a password already derived, or an unknown user's
 * mock keys): the messages and checks of _login_steps and auth._scram, with
 * scram_core.c for the exchange. The session's own decisions stay in Python,
 * one call each: whether this login is the common case
 * (ClientSession._native_login_plan, from the startup packet)
 * and, once the proof is good, joining the pool and the welcome
 * (_native_login_done, the same steps as the Python login's from there on,
 * waiting for the pool to open if it must).
 *
 * Anything else, and every failure, goes to _native_login_fallback with every
 * byte the client sent and what was written so far: it replays them through
 * the Python login, with the same server nonce and the messages already sent
 * not sent again, so that the client sees exactly what the Python login would
 * have sent: the same answer, the same error. This code never refuses a
 * client.
 *
 * Why native, with numbers (bench/login_cost.py, docs/performance.md): the
 * Python login's own work was 60-90 us of CPU per login, and a whole login
 * through poold 1.62-1.92 times PgBouncer's; with this, 1.36-1.48 times.
 */

#define LOGIN_MAX_STARTUP 4096 /* a longer startup packet is left to the Python login */
#define LOGIN_MAX_BUFFER 8192

static uint32_t
be32(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | u[3];
}

static void
put_be32(char *p, uint32_t v)
{
    p[0] = (char)(v >> 24);
    p[1] = (char)(v >> 16);
    p[2] = (char)(v >> 8);
    p[3] = (char)v;
}

static void
login_reset(ClientCore *self)
{
    self->native_login = 0;
    Py_CLEAR(self->login_buf);
    self->login_pos = 0;
    self->negotiated = 0;
    PyMem_Free(self->scram);
    self->scram = NULL;
}

/* Hand the login to Python: every byte received since the startup packet began, how
 * many messages were sent since, the server nonce once SASLContinue went out with it,
 * and whether an encryption request was answered 'N' before. */
static PyObject *
login_fallback(ClientCore *self)
{
    PyObject *transcript = self->login_buf != NULL ? Py_NewRef(self->login_buf) : Py_NewRef(EMPTY);
    PyObject *nonce = Py_NewRef(Py_None);
    if (self->login_sent == 2 && self->scram != NULL) {
        ScramServer *s = self->scram;
        Py_SETREF(nonce, PyUnicode_FromStringAndSize(s->server_first + 2 + s->nonce_len - SCRAM_NONCE_LEN,
                                                    SCRAM_NONCE_LEN));
    }
    PyObject *sent = PyLong_FromLong(self->login_sent);
    PyObject *negotiated = PyLong_FromLong(self->negotiated);
    login_reset(self);
    PyObject *result = NULL;
    if (nonce != NULL && sent != NULL && negotiated != NULL)
        result = PyObject_CallMethodObjArgs((PyObject *)self, s_native_login_fallback, transcript, sent, nonce,
                                            negotiated, NULL);
    Py_DECREF(transcript);
    Py_XDECREF(nonce);
    Py_XDECREF(sent);
    Py_XDECREF(negotiated);
    return result;
}

static int
login_write(ClientCore *self, PyObject *message)
{
    if (message == NULL)
        return -1;
    int rc = call_done(PyObject_CallOneArg(self->write, message));
    Py_DECREF(message);
    return rc;
}

/* Random bytes from the kernel, drawn 1 KiB at a time (one getrandom per 56 logins). */
static int
login_random(unsigned char *out, size_t n)
{
    static unsigned char pool[1024];
    static size_t left;
    if (left < n) {
        if (getrandom(pool, sizeof pool, 0) != (ssize_t)sizeof pool)
            return -1;
        left = sizeof pool;
    }
    memcpy(out, pool + sizeof pool - left, n);
    memset(pool + sizeof pool - left, 0, n); /* each byte is handed out once */
    left -= n;
    return 0;
}

#define SSL_REQUEST_CODE 80877103
#define GSSENC_REQUEST_CODE 80877104

/* SSLRequest or GSSENCRequest with nothing after it, where no TLS is configured: 'N', as
 * _negotiate answers, and the login starts again at the startup packet (the bytes
 * before it are not replayed on a fall back; ``negotiated`` says they were answered).
 * 1: done; 0: fall back (TLS is the Python login's); -1: error. */
static int
login_refuse_encryption(ClientCore *self)
{
    if (self->rt == NULL)
        return 0;
    PyObject *context = PyObject_GetAttr(self->rt, s_ssl_context);
    if (context == NULL)
        return -1;
    int configured = context != Py_None;
    Py_DECREF(context);
    if (configured)
        return 0;
    if (login_write(self, PyBytes_FromStringAndSize("N", 1)) < 0)
        return -1;
    Py_CLEAR(self->login_buf);
    self->login_pos = 0;
    self->negotiated = 1;
    return 1;
}

/* _native_login_plan's first branch, for a packet whose plan is kept
 * (Runtime.login_plans) when the checks made at every login pass: the plan's keys.
 * NULL without an exception: the Python method's to answer. Under an hba file the
 * decision depends on the client's address and TLS too, and the plans are kept
 * under (packet, origin): never found here, so every such login asks Python. */
static PyObject *
login_kept_plan(ClientCore *self, PyObject *payload)
{
    PyObject *plans = PyObject_GetAttr(self->rt, s_login_plans);
    if (plans == NULL)
        return NULL;
    PyObject *plan = PyDict_CheckExact(plans) ? PyDict_GetItemWithError(plans, payload) : NULL;
    Py_XINCREF(plan);
    Py_DECREF(plans);
    if (plan == NULL)
        return NULL;
    PyObject *clients = PyObject_GetAttr(self->rt, s_clients);
    PyObject *logins = clients ? PyObject_GetAttr(self->rt, s_logins) : NULL;
    PyObject *config = logins ? PyObject_GetAttr(self->rt, s_config) : NULL;
    PyObject *limits = config ? PyObject_GetAttr(config, s_clients) : NULL;
    PyObject *max_conn = limits ? PyObject_GetAttr(limits, s_max_client_conn) : NULL;
    PyObject *draining = max_conn ? PyObject_GetAttr(self->rt, s_draining) : NULL;
    PyObject *tls = draining ? PyObject_GetAttr(config, s_tls) : NULL;
    PyObject *require = tls ? PyObject_GetAttr(tls, s_require) : NULL;
    PyObject *keys = NULL;
    if (require != NULL && PyAnySet_Check(clients) && PyDict_Check(logins)) {
        long long limit = PyLong_AsLongLong(max_conn);
        /* Runtime.logged_in() >= max_client_conn: logins in progress are capped apart */
        int refuse = (limit == -1 && PyErr_Occurred()) ? -1
                                                       : PySet_GET_SIZE(clients) - PyDict_GET_SIZE(logins) >= limit;
        if (refuse == 0)
            refuse = PyObject_IsTrue(draining);
        if (refuse == 0 && !self->tls)
            refuse = PyObject_IsTrue(require);
        PyObject *user = refuse == 0 ? PyObject_GetAttr(plan, s_user) : NULL;
        PyObject *database = user ? PyObject_GetAttr(plan, s_database) : NULL;
        keys = database ? PyObject_GetAttr(plan, s_keys) : NULL;
        if (keys != NULL) {
            Py_XSETREF(self->plan, Py_NewRef(plan));
            Py_XSETREF(self->user, Py_NewRef(user));
            Py_XSETREF(self->database, Py_NewRef(database));
        }
        Py_XDECREF(user);
        Py_XDECREF(database);
    }
    Py_DECREF(plan);
    Py_XDECREF(clients);
    Py_XDECREF(logins);
    Py_XDECREF(config);
    Py_XDECREF(limits);
    Py_XDECREF(max_conn);
    Py_XDECREF(draining);
    Py_XDECREF(tls);
    Py_XDECREF(require);
    return keys;
}

/* The startup packet: the plan, then AuthenticationSASL. 1: done; 0: fall back; -1: error. */
static int
login_startup(ClientCore *self, const char *packet, uint32_t length)
{
    if (be32(packet + 4) != 0x30000) /* protocol 3.0; SSLRequest, GSSENCRequest, CancelRequest... */
        return 0;
    PyObject *payload = PyBytes_FromStringAndSize(packet + 4, length - 4);
    if (payload == NULL)
        return -1;
    PyObject *keys = login_kept_plan(self, payload);
    if (keys == NULL && !PyErr_Occurred())
        keys = PyObject_CallMethodOneArg((PyObject *)self, s_native_login_plan, payload);
    Py_DECREF(payload);
    if (keys == NULL)
        return -1;
    int ok = PyTuple_CheckExact(keys) && PyTuple_GET_SIZE(keys) == 3;
    PyObject *stored = ok ? PyTuple_GET_ITEM(keys, 0) : NULL, *server = ok ? PyTuple_GET_ITEM(keys, 1) : NULL,
             *tail = ok ? PyTuple_GET_ITEM(keys, 2) : NULL;
    ok = ok && PyBytes_CheckExact(stored) && PyBytes_GET_SIZE(stored) == SCRAM_KEY_LEN &&
         PyBytes_CheckExact(server) && PyBytes_GET_SIZE(server) == SCRAM_KEY_LEN && PyBytes_CheckExact(tail) &&
         PyBytes_GET_SIZE(tail) <= (Py_ssize_t)sizeof self->scram->tail;
    if (ok) {
        ScramServer *s = self->scram = PyMem_Calloc(1, sizeof(ScramServer));
        if (s == NULL) {
            Py_DECREF(keys);
            PyErr_NoMemory();
            return -1;
        }
        memcpy(s->stored_key, PyBytes_AS_STRING(stored), SCRAM_KEY_LEN);
        memcpy(s->server_key, PyBytes_AS_STRING(server), SCRAM_KEY_LEN);
        s->tail_len = (size_t)PyBytes_GET_SIZE(tail);
        memcpy(s->tail, PyBytes_AS_STRING(tail), s->tail_len);
    }
    Py_DECREF(keys);
    if (!ok) /* None: not the common case */
        return 0;
    if (login_write(self, Py_NewRef(AUTH_SASL)) < 0)
        return -1;
    self->login_sent = 1;
    return 1;
}

/* SASLInitialResponse: SCRAM-SHA-256 and client-first, answered with SASLContinue. */
static int
login_initial(ClientCore *self, const char *body, uint32_t n)
{
    static const char mechanism[] = "SCRAM-SHA-256"; /* with its NUL: 14 bytes */
    unsigned char random[SCRAM_NONCE_BYTES];
    char nonce[SCRAM_NONCE_LEN];
    if (n < 18 || memcmp(body, mechanism, 14) != 0 || be32(body + 14) != n - 18)
        return 0;
    if (login_random(random, sizeof random) < 0)
        return 0;
    base64_encode(random, sizeof random, nonce);
    ScramServer *s = self->scram;
    if (scram_server_first(s, body + 18, n - 18, nonce) != SCRAM_OK)
        return 0;
    PyObject *message = PyBytes_FromStringAndSize(NULL, 9 + (Py_ssize_t)s->server_first_len);
    if (message == NULL)
        return -1;
    char *p = PyBytes_AS_STRING(message);
    p[0] = 'R';
    put_be32(p + 1, 8 + (uint32_t)s->server_first_len);
    put_be32(p + 5, 11); /* AuthenticationSASLContinue */
    memcpy(p + 9, s->server_first, s->server_first_len);
    if (login_write(self, message) < 0)
        return -1;
    self->login_sent = 2;
    return 1;
}

/* Whether the proof must wait for its (user, address)'s turn: _native_login_held, asked
 * only while the guard holds some pair (LoginGuard.pairs not empty), which is rare.
 * 1: held (fall back: _login_steps waits); 0: check it here; -1: error. */
static int
login_proof_held(ClientCore *self)
{
    PyObject *guard = PyObject_GetAttr(self->rt, s_guard);
    PyObject *pairs = guard ? PyObject_GetAttr(guard, s_pairs) : NULL;
    int rc = pairs == NULL ? -1 : 0;
    if (pairs != NULL && (!PyDict_Check(pairs) || PyDict_GET_SIZE(pairs) > 0)) {
        PyObject *held = PyObject_CallMethodNoArgs((PyObject *)self, s_native_login_held);
        rc = held == NULL ? -1 : PyObject_IsTrue(held);
        Py_XDECREF(held);
    }
    Py_XDECREF(guard);
    Py_XDECREF(pairs);
    return rc;
}

/* pool.clients += delta (a Pool's Python attribute): 0, or -1 with an exception set. */
static int
pool_count_client(PyObject *pool, long delta)
{
    PyObject *count = PyObject_GetAttr(pool, s_clients);
    PyObject *step = count ? PyLong_FromLong(delta) : NULL;
    Py_XSETREF(count, step ? PyNumber_Add(count, step) : NULL);
    Py_XDECREF(step);
    int rc = count != NULL && PyObject_SetAttr(pool, s_clients, count) == 0 ? 0 : -1;
    Py_XDECREF(count);
    return rc;
}

/* Runtime.register, for poold's own pids, with the runtime's own state: the next pid,
 * a secret from its list, ``by_key`` (by the key, pid and secret) and ``client.key``.
 * The BackendKeyData message goes to ``out`` (13 bytes). 0, or -1 with an exception set. */
static int
client_register(ClientCore *self, char *out)
{
    PyObject *pids = PyObject_GetAttr(self->rt, s_pids);
    PyObject *by_key = pids ? PyObject_GetAttr(self->rt, s_by_key) : NULL;
    PyObject *secrets = by_key ? PyObject_GetAttr(self->rt, s_secrets) : NULL;
    PyObject *key = NULL;
    int rc = -1;
    if (secrets == NULL || !PyDict_CheckExact(by_key) || !PyList_CheckExact(secrets)) {
        if (secrets != NULL)
            PyErr_SetString(PyExc_TypeError, "runtime.by_key and runtime._secrets: a dict and a list");
        goto done;
    }
    uint32_t p, secret;
    while (1) {
        PyObject *next = PyIter_Next(pids);
        if (next == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_RuntimeError, "runtime._pids ran out");
            goto done;
        }
        p = (uint32_t)PyLong_AsUnsignedLongMask(next) & 0x7FFFFFFF;
        Py_DECREF(next);
        if (p == 0)
            continue;
        if (PyList_GET_SIZE(secrets) == 0) {
            PyObject *r = PyObject_CallMethodNoArgs(self->rt, s_draw_secrets);
            if (r == NULL)
                goto done;
            Py_DECREF(r);
            if (PyList_GET_SIZE(secrets) == 0) {
                PyErr_SetString(PyExc_RuntimeError, "runtime._draw_secrets drew nothing");
                goto done;
            }
        }
        Py_ssize_t last = PyList_GET_SIZE(secrets) - 1;
        secret = (uint32_t)PyLong_AsUnsignedLongMask(PyList_GET_ITEM(secrets, last)) & 0x7FFFFFFF;
        if (PyErr_Occurred() || PyList_SetSlice(secrets, last, last + 1, NULL) < 0)
            goto done;
        Py_XSETREF(key, Py_BuildValue("(kk)", (unsigned long)p, (unsigned long)secret));
        if (key == NULL)
            goto done;
        int taken = PyDict_Contains(by_key, key);
        if (taken < 0)
            goto done;
        if (!taken)
            break;
    }
    if (PyDict_SetItem(by_key, key, (PyObject *)self) < 0)
        goto done;
    Py_XSETREF(self->key, Py_NewRef(key));
    out[0] = 'K';
    put_be32(out + 1, 12);
    put_be32(out + 5, p);
    put_be32(out + 9, secret);
    rc = 0;
done:
    Py_XDECREF(pids);
    Py_XDECREF(by_key);
    Py_XDECREF(secrets);
    Py_XDECREF(key);
    return rc;
}

static const char READY_IDLE[6] = {'Z', 0, 0, 0, 5, 'I'};

/* The proof checked: _native_login_done and _welcome where nothing waits, for a
 * plan whose welcome (LoginPlan.welcome: its pool, the AuthenticationOk and
 * ParameterStatus bytes, the client's own settings or None) was made for the
 * pool the registry holds now, open, in transaction mode. _native_login_done makes
 * it only once the pool knows its server's spelling of the plan's settings
 * (spellings.py), so what is sent here is what PostgreSQL would report. 1: done;
 * 0: the Python method's (anything else, session mode too: it leases a server
 * first); -1: error. */
static int
client_welcome(ClientCore *self, PyObject *sasl_final, PyObject *rest)
{
    if (self->rt == NULL || self->write == NULL)
        return 0;
    if (self->plan == NULL)
        return 0;
    PyObject *plan = Py_NewRef(self->plan);
    PyObject *welcome = NULL, *key = NULL, *registry = NULL, *pools = NULL, *defaults = NULL, *logins = NULL,
             *mode = NULL, *message = NULL;
    int rc = -1;
    if (plan == Py_None || (welcome = PyObject_GetAttr(plan, s_welcome)) == NULL)
        goto done;
    if (!PyTuple_CheckExact(welcome) || PyTuple_GET_SIZE(welcome) != 3) { /* None: not made yet */
        rc = 0;
        goto done;
    }
    PyObject *pool = PyTuple_GET_ITEM(welcome, 0), *settings = PyTuple_GET_ITEM(welcome, 1),
             *own = PyTuple_GET_ITEM(welcome, 2);
    if ((key = PyObject_GetAttr(plan, s_pool_key)) == NULL || (registry = PyObject_GetAttr(self->rt, s_pools)) == NULL ||
        (pools = PyObject_GetAttr(registry, s_pools)) == NULL)
        goto done;
    PyObject *current = PyDict_CheckExact(pools) ? PyDict_GetItemWithError(pools, key) : NULL;
    if (current == NULL && PyErr_Occurred())
        goto done;
    if (current != pool || !PyBytes_CheckExact(settings)) {
        rc = 0;
        goto done;
    }
    if ((defaults = PyObject_GetAttr(pool, s_defaults)) == NULL)
        goto done;
    if (defaults == Py_None) { /* not open yet: _enter_pool waits for it */
        rc = 0;
        goto done;
    }
    PyObject *pool_settings = PyObject_GetAttr(pool, s_settings);
    if (pool_settings == NULL)
        goto done;
    mode = PyObject_GetAttr(pool_settings, s_mode);
    Py_DECREF(pool_settings);
    if (mode == NULL)
        goto done;
    int session = PyObject_RichCompareBool(mode, SESSION, Py_EQ);
    if (session != 0) { /* session mode leases its server first: _enter_pool */
        rc = session < 0 ? -1 : 0;
        goto done;
    }
    /* the login is over: from here on, as _native_login_done's first branch */
    Py_CLEAR(self->plan);
    Py_XSETREF(self->pool, Py_NewRef(pool));
    if (pool_count_client(pool, 1) < 0)
        goto done;
    if ((logins = PyObject_GetAttr(self->rt, s_logins)) == NULL)
        goto done;
    if (PyDict_CheckExact(logins) && PyDict_DelItem(logins, (PyObject *)self) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_KeyError))
            goto done;
        PyErr_Clear();
    }
    self->session_mode = 0;
    if (own != Py_None) {
        PyObject *copy = PyDict_Copy(own); /* the session's own: on_server_parameter changes it */
        if (copy == NULL)
            goto done;
        Py_XSETREF(self->wanted, copy);
        Py_XSETREF(self->startup, Py_NewRef(own)); /* read, never changed: RESET ALL returns to it */
    }
    Py_ssize_t n_final = PyBytes_GET_SIZE(sasl_final), n_settings = PyBytes_GET_SIZE(settings);
    message = PyBytes_FromStringAndSize(NULL, n_final + n_settings + 13 + (Py_ssize_t)sizeof READY_IDLE);
    if (message == NULL)
        goto done;
    char *m = PyBytes_AS_STRING(message);
    memcpy(m, PyBytes_AS_STRING(sasl_final), (size_t)n_final);
    memcpy(m + n_final, PyBytes_AS_STRING(settings), (size_t)n_settings);
    if (client_register(self, m + n_final + n_settings) < 0)
        goto done;
    memcpy(m + n_final + n_settings + 13, READY_IDLE, sizeof READY_IDLE);
    if (call_done(PyObject_CallOneArg(self->write, message)) < 0)
        goto done;
    self->relaying = 1;
    rc = 1;
    if (PyBytes_GET_SIZE(rest) && call_done(Client_data_received(self, rest)) < 0)
        rc = -1;
done:
    Py_DECREF(plan);
    Py_XDECREF(welcome);
    Py_XDECREF(key);
    Py_XDECREF(registry);
    Py_XDECREF(pools);
    Py_XDECREF(defaults);
    Py_XDECREF(logins);
    Py_XDECREF(mode);
    Py_XDECREF(message);
    return rc;
}

static PyObject *
client_login(ClientCore *self, PyObject *data)
{
    if (!PyBytes_CheckExact(data)) {
        PyErr_SetString(PyExc_TypeError, "data_received takes bytes");
        return NULL;
    }
    if (self->login_buf == NULL)
        self->login_buf = Py_NewRef(data);
    else {
        PyBytes_Concat(&self->login_buf, data);
        if (self->login_buf == NULL)
            return NULL;
    }
    while (1) {
        if (PyBytes_GET_SIZE(self->login_buf) > LOGIN_MAX_BUFFER || self->write == NULL) /* no transport here */
            return login_fallback(self);
        const char *p = PyBytes_AS_STRING(self->login_buf) + self->login_pos;
        Py_ssize_t avail = PyBytes_GET_SIZE(self->login_buf) - self->login_pos;
        int rc;
        if (self->login_sent == 0) { /* the startup packet: a length, then the payload */
            if (avail < 4)
                Py_RETURN_NONE;
            uint32_t length = be32(p);
            if (length < 8 || length > LOGIN_MAX_STARTUP)
                return login_fallback(self);
            if (avail < length)
                Py_RETURN_NONE;
            uint32_t code = be32(p + 4);
            if (length == 8 && !self->negotiated && (code == SSL_REQUEST_CODE || code == GSSENC_REQUEST_CODE)) {
                if (avail > 8) /* bytes pipelined after it: the Python login refuses them */
                    return login_fallback(self);
                if ((rc = login_refuse_encryption(self)) <= 0)
                    return rc < 0 ? NULL : login_fallback(self);
                Py_RETURN_NONE;
            }
            if ((rc = login_startup(self, p, length)) <= 0)
                return rc < 0 ? NULL : login_fallback(self);
            self->login_pos += length;
            continue;
        }
        if (avail < 5)
            Py_RETURN_NONE;
        uint32_t length = be32(p + 1);
        if (p[0] != 'p' || length < 4 || length > SCRAM_MAX_MESSAGE + 64)
            return login_fallback(self);
        if (avail < 1 + (Py_ssize_t)length)
            Py_RETURN_NONE;
        if (self->login_sent == 1) {
            if ((rc = login_initial(self, p + 5, length - 4)) <= 0)
                return rc < 0 ? NULL : login_fallback(self);
            self->login_pos += 1 + length;
            continue;
        }
        /* SASLResponse: client-final, the proof */
        char final[2 + 44];
        size_t final_len;
        if ((rc = login_proof_held(self)) != 0)
            return rc < 0 ? NULL : login_fallback(self);
        if (scram_server_final(self->scram, p + 5, length - 4, final, &final_len) != SCRAM_OK)
            return login_fallback(self);
        PyObject *message = PyBytes_FromStringAndSize(NULL, 9 + (Py_ssize_t)final_len);
        PyObject *rest = PyBytes_FromStringAndSize(p + 1 + length, avail - 1 - (Py_ssize_t)length);
        if (message == NULL || rest == NULL) {
            Py_XDECREF(message);
            Py_XDECREF(rest);
            return NULL;
        }
        char *m = PyBytes_AS_STRING(message);
        m[0] = 'R';
        put_be32(m + 1, 8 + (uint32_t)final_len);
        put_be32(m + 5, 12); /* AuthenticationSASLFinal */
        memcpy(m + 9, final, final_len);
        login_reset(self);
        PyObject *result = NULL;
        rc = client_welcome(self, message, rest);
        if (rc > 0)
            result = Py_NewRef(Py_None);
        else if (rc == 0)
            result = PyObject_CallMethodObjArgs((PyObject *)self, s_native_login_done, message, rest, NULL);
        Py_DECREF(message);
        Py_DECREF(rest);
        return result;
    }
}

/* _relay: a chunk from the client, after login. */
static PyObject *
Client_data_received(ClientCore *self, PyObject *data)
{
    if (!self->relaying) {
        if (self->native_login)
            return client_login(self, data);
        return PyObject_CallMethodOneArg((PyObject *)self, s_login_data, data);
    }
    if (self->terminating) /* bytes after Terminate: PostgreSQL never reads them */
        Py_RETURN_NONE;
    StatsCore *stats = NULL;
    if (PyBytes_CheckExact(data) && !is_none(self->pool) && is_core(self->pool, &PoolCoreType) &&
        self->buffered != NULL && PyList_CheckExact(self->buffered))
        stats = stats_of(((PoolCore *)self->pool)->stats);
    if (stats == NULL)
        return PyObject_CallMethodOneArg((PyObject *)self, s_relay, data);
    /* A Query or Parse that may change the session's state (settings.look), from the
     * chunk's first whole message on, and the rest of a Query or Parse begun in an
     * earlier read. A message's start too short to look at (a header, a Query's or
     * Parse's first bytes) waits for the next read (self->head): ClientSession._relay. */
    PyObject *in;
    if (self->head != NULL && PyBytes_Check(self->head) && PyBytes_GET_SIZE(self->head)) {
        Py_ssize_t k = PyBytes_GET_SIZE(self->head);
        in = PyBytes_FromStringAndSize(NULL, k + PyBytes_GET_SIZE(data));
        if (in == NULL)
            return NULL;
        memcpy(PyBytes_AS_STRING(in), PyBytes_AS_STRING(self->head), (size_t)k);
        memcpy(PyBytes_AS_STRING(in) + k, PyBytes_AS_STRING(data), (size_t)PyBytes_GET_SIZE(data));
    }
    else {
        in = Py_NewRef(data);
    }
    Py_CLEAR(self->head);
    Py_ssize_t skip = 0, cut, n_in = PyBytes_GET_SIZE(in);
    long long limit = 0;
    int tail = scanner_in_progress(self->scanner, &skip, &limit);
    if (tail == -2) {
        Py_DECREF(in);
        return NULL;
    }
    Py_ssize_t at = skip < 0 ? 0 : skip < n_in ? skip : n_in;
    int look = may_carry_state(PyBytes_AS_STRING(in), n_in, at, tail, limit, &cut);
    if (cut < n_in) {
        self->head = PyBytes_FromStringAndSize(PyBytes_AS_STRING(in) + cut, n_in - cut);
        PyObject *kept = self->head != NULL ? PyBytes_FromStringAndSize(PyBytes_AS_STRING(in), cut) : NULL;
        Py_SETREF(in, kept);
        if (in == NULL)
            return NULL;
        if (cut == 0) {
            Py_DECREF(in);
            Py_RETURN_NONE;
        }
    }
    PyObject *result = client_relay(self, stats, in, look, at, tail);
    Py_DECREF(in);
    return result;
}

/* ClientSession._relay's rest, for a chunk ``data`` looked at (settings.look). */
static PyObject *
client_relay(ClientCore *self, StatsCore *stats, PyObject *data, int look, Py_ssize_t at, int tail)
{
    Py_ssize_t syncs, stop_at;
    int last;
    if (scanner_tally(self->scanner, data, &syncs, &stop_at, &last) < 0) {
        if (!PyErr_ExceptionMatches(ProtocolError))
            return NULL;
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        PyObject *result = PyObject_CallMethodOneArg((PyObject *)self, s_relay_error, value);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        return result;
    }
    if (last >= 0) /* messages sent since the last sync point */
        self->in_batch = !SYNC_COUNTED[last];
    PyObject *chunk;
    if (stop_at >= 0) { /* Terminate: not forwarded; the session ends */
        chunk = stop_at > 0 ? PyBytes_FromStringAndSize(PyBytes_AS_STRING(data), stop_at) : Py_NewRef(EMPTY);
        self->terminating = 1;
    }
    else {
        chunk = Py_NewRef(data);
    }
    if (chunk == NULL)
        return NULL;
    if (look && PyBytes_GET_SIZE(chunk)) { /* ClientSession._session_statement: what goes to the server */
        PyObject *from = PyLong_FromSsize_t(at), *kind = from ? PyLong_FromLong(tail) : NULL;
        if (kind == NULL) {
            Py_XDECREF(from);
            Py_DECREF(chunk);
            return NULL;
        }
        PyObject *args[4] = {(PyObject *)self, chunk, from, kind};
        Py_SETREF(chunk, PyObject_VectorcallMethod(s_session_statement, args, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                                   NULL));
        Py_DECREF(from);
        Py_DECREF(kind);
        if (chunk == NULL)
            return NULL;
        if (!PyBytes_CheckExact(chunk)) {
            Py_DECREF(chunk);
            PyErr_SetString(PyExc_TypeError, "_session_statement returns bytes");
            return NULL;
        }
    }
    if (self->terminating &&
        (syncs || self->buffered_syncs || (is_core(self->server, &ServerCoreType) && ((ServerCore *)self->server)->pending))) {
        /* in its stead: a COPY FROM STDIN ends (PostgreSQL ignores CopyFail elsewhere); _relay */
        PyBytes_Concat(&chunk, COPY_FAIL);
        if (chunk == NULL)
            return NULL;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(chunk);
    stats->bytes_in += n;
    stats->queries += syncs;
    int rc = 0;
    if (is_none(self->server)) {
        if (self->terminating && !(syncs || self->buffered_syncs)) {
            /* nothing to run: PostgreSQL rolls back an unsynced batch at Terminate */
        }
        else if (n && !(self->waiting || PyList_GET_SIZE(self->buffered))) {
            rc = client_lease_and_send(self, chunk, syncs); /* the first request of a transaction */
        }
        else if (n) {
            rc = client_buffer(self, chunk, syncs);
        }
    }
    else if (!is_core(self->server, &ServerCoreType) || ((ServerCore *)self->server)->write == NULL) {
        PyErr_SetString(PyExc_TypeError, "a client's server is a connected ServerCore");
        rc = -1;
    }
    else {
        ServerCore *server = (ServerCore *)Py_NewRef(self->server);
        if (syncs) {
            if (!server->pending) {
                server->busy_since = monotonic();
                if (is_idle(server->status))
                    self->xact_start = server->busy_since;
            }
            server->pending += syncs;
        }
        if (n)
            rc = client_forward(self, server, chunk, syncs);
        Py_DECREF(server);
    }
    Py_DECREF(chunk);
    if (rc < 0)
        return NULL;
    if (self->terminating) /* the session ends once what came before is answered */
        return PyObject_CallMethodNoArgs((PyObject *)self, s_end_after_requests);
    Py_RETURN_NONE;
}

/* on_server_ready: ReadyForQuery with nothing more owed. */
static PyObject *
client_server_ready(ClientCore *self, PyObject *status)
{
    if (!is_idle(status)) {
        if (self->terminating) /* the requests sent before Terminate are answered */
            return PyObject_CallMethodNoArgs((PyObject *)self, s_end_after_requests);
        Py_RETURN_NONE;
    }
    if (is_none(self->pool) || !is_core(self->pool, &PoolCoreType)) {
        PyErr_SetString(PyExc_TypeError, "on_server_ready: the client has no PoolCore");
        return NULL;
    }
    PoolCore *pool = (PoolCore *)self->pool;
    double now = monotonic();
    self->transactions += 1;
    StatsCore *stats = stats_of(pool->stats);
    if (stats != NULL) {
        stats->transactions += 1;
        observe(stats->xact, now - self->xact_start);
    }
    if (self->terminating)
        return PyObject_CallMethodNoArgs((PyObject *)self, s_end_after_requests);
    if (self->in_batch)
        Py_RETURN_NONE;
    int at_boundary = scanner_at_boundary(self->scanner);
    if (at_boundary <= 0)
        return at_boundary < 0 ? NULL : Py_NewRef(Py_None);
    PyObject *draining = PyObject_GetAttr(self->rt, s_draining);
    if (draining == NULL)
        return NULL;
    int is_draining = PyObject_IsTrue(draining);
    Py_DECREF(draining);
    if (is_draining < 0)
        return NULL;
    if (is_draining)
        return PyObject_CallMethodObjArgs((PyObject *)self, s_fatal, DRAIN_STATE, DRAIN_MESSAGE, NULL);
    if (self->session_mode || is_none(self->server))
        Py_RETURN_NONE;
    PyObject *link = self->server; /* the reference moves to this function */
    self->server = Py_NewRef(Py_None);
    int rc = 0;
    if (self->server_paused)
        rc = call_done(PyObject_CallMethodOneArg((PyObject *)self, s_unpause, link));
    if (rc == 0 && self->settle) /* learn the settings first: ClientSession._settle */
        rc = call_done(PyObject_CallMethodOneArg((PyObject *)self, s_settle, link));
    else if (rc == 0 && is_core(link, &ServerCoreType) && ((ServerCore *)link)->carries)
        /* no client's settings wait in the pool: ClientSession._release_settings */
        rc = call_done(PyObject_CallMethodOneArg((PyObject *)self, s_release_settings, link));
    else if (rc == 0) {
        if (is_core(link, &ServerCoreType))
            rc = pool_release(pool, (ServerCore *)link, now);
        else {
            PyErr_SetString(PyExc_TypeError, "on_server_ready: a ServerCore link");
            rc = -1;
        }
    }
    Py_DECREF(link);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
Client_on_server_ready(ClientCore *self, PyObject *status)
{
    return client_server_ready(self, status);
}

static PyObject *
Client_get_transport(ClientCore *self, void *closure)
{
    return Py_NewRef(self->transport ? self->transport : Py_None);
}

static int
Client_set_transport(ClientCore *self, PyObject *value, void *closure)
{
    return set_transport(&self->transport, &self->write, value);
}

/* A new session's state, as ClientCorePy.__init__ sets it: None, [], {}, zeros. */
static PyObject *
Client_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    ClientCore *self = (ClientCore *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->pool = Py_NewRef(Py_None);
    self->server = Py_NewRef(Py_None);
    self->buffered = PyList_New(0);
    self->wanted = PyDict_New();
    self->key = Py_NewRef(NO_KEY);
    self->user = Py_NewRef(EMPTY_STR);
    self->database = Py_NewRef(EMPTY_STR);
    self->startup = Py_NewRef(Py_None);
    self->pinned = Py_NewRef(Py_None);
    self->ps = Py_NewRef(Py_None);
    if (self->buffered == NULL || self->wanted == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

/* ClientSession(runtime): ClientCorePy.__init__'s rest, the runtime and the scanner
 * (the class's scanner_type, made through the C API when it is the native one). */
static int
Client_init(ClientCore *self, PyObject *args, PyObject *kwds)
{
    PyObject *runtime;
    if ((kwds != NULL && PyDict_GET_SIZE(kwds)) || !PyArg_UnpackTuple(args, "ClientSession", 1, 1, &runtime)) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "ClientSession takes the runtime, by position");
        return -1;
    }
    Py_XSETREF(self->rt, Py_NewRef(runtime));
    PyObject *config = PyObject_GetAttr(runtime, s_config);
    PyObject *clients = config ? PyObject_GetAttr(config, s_clients) : NULL;
    PyObject *max_length = clients ? PyObject_GetAttr(clients, s_max_message_size) : NULL;
    PyObject *type = max_length ? PyObject_GetAttr((PyObject *)Py_TYPE(self), s_scanner_type) : NULL;
    PyObject *scanner = NULL;
    if (type != NULL && framing != NULL && type == (PyObject *)framing->scanner_type) {
        long long n = PyLong_AsLongLong(max_length);
        if (!(n == -1 && PyErr_Occurred()))
            scanner = framing->new_scanner(1, n);
    }
    else if (type != NULL)
        scanner = PyObject_CallFunctionObjArgs(type, EMPTY, Py_True, max_length, NULL);
    Py_XDECREF(config);
    Py_XDECREF(clients);
    Py_XDECREF(max_length);
    Py_XDECREF(type);
    if (scanner == NULL)
        return -1;
    Py_XSETREF(self->scanner, scanner);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    self->connected_at = (double)ts.tv_sec + ts.tv_nsec * 1e-9;
    return 0;
}

/* asyncio.Protocol.connection_made: ClientCorePy.connection_made, with the C login
 * reading the client's first bytes. */
static PyObject *
Client_connection_made(ClientCore *self, PyObject *transport)
{
    if (self->rt == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "ClientSession was not given its runtime");
        return NULL;
    }
    if (set_transport(&self->transport, &self->write, transport) < 0)
        return NULL;
    PyObject *clients = PyObject_GetAttr(self->rt, s_clients);
    PyObject *logins = clients ? PyObject_GetAttr(self->rt, s_logins) : NULL;
    PyObject *now = logins ? PyFloat_FromDouble(monotonic()) : NULL; /* login_timeout: Runtime.expire_logins */
    int rc = now != NULL && PySet_Add(clients, (PyObject *)self) == 0 &&
             PyDict_SetItem(logins, (PyObject *)self, now) == 0;
    if (rc) { /* more logins than max_login_conn: Runtime.make_room_for_login closes the oldest */
        PyObject *config = PyObject_GetAttr(self->rt, s_config);
        PyObject *limits = config ? PyObject_GetAttr(config, s_clients) : NULL;
        PyObject *max_logins = limits ? PyObject_GetAttr(limits, s_max_login_conn) : NULL;
        long long limit = max_logins ? PyLong_AsLongLong(max_logins) : -1;
        rc = !PyErr_Occurred();
        if (rc && PyDict_GET_SIZE(logins) > limit)
            rc = call_done(PyObject_CallMethodOneArg(self->rt, s_make_room_for_login, now)) == 0;
        Py_XDECREF(config);
        Py_XDECREF(limits);
        Py_XDECREF(max_logins);
    }
    Py_XDECREF(clients);
    Py_XDECREF(logins);
    Py_XDECREF(now);
    if (!rc)
        return NULL;
    self->native_login = 1;
    Py_RETURN_NONE;
}

/* asyncio.Protocol.connection_lost: ClientCorePy.connection_lost, calling the same
 * Python methods for what is not the common end of a session. */
static PyObject *
Client_connection_lost(ClientCore *self, PyObject *exc)
{
    if (self->closed || self->rt == NULL)
        Py_RETURN_NONE;
    if (self->terminating) { /* requests sent before Terminate may keep the session: _outlive_client */
        PyObject *stays = PyObject_CallMethodNoArgs((PyObject *)self, s_outlive_client);
        int rc = stays == NULL ? -1 : PyObject_IsTrue(stays);
        Py_XDECREF(stays);
        if (rc != 0)
            return rc < 0 ? NULL : Py_NewRef(Py_None);
    }
    self->closed = 1;
    if (!self->relaying && call_done(PyObject_CallMethodNoArgs((PyObject *)self, s_end_login)) < 0)
        return NULL;
    /* Runtime.unregister */
    PyObject *clients = PyObject_GetAttr(self->rt, s_clients);
    PyObject *by_key = clients ? PyObject_GetAttr(self->rt, s_by_key) : NULL;
    int rc = by_key != NULL && PySet_Discard(clients, (PyObject *)self) >= 0;
    if (rc && PyTuple_Check(self->key) && PyTuple_GET_SIZE(self->key) == 2 && PyDict_Check(by_key)) {
        PyObject *holder = PyDict_GetItemWithError(by_key, self->key);
        if (holder == (PyObject *)self)
            rc = PyDict_DelItem(by_key, self->key) == 0;
        else if (holder == NULL && PyErr_Occurred())
            rc = 0;
    }
    Py_XDECREF(clients);
    Py_XDECREF(by_key);
    if (!rc)
        return NULL;
    if (!is_none(self->pool)) {
        PyObject *pool = Py_NewRef(self->pool);
        rc = pool_count_client(pool, -1) == 0;
        if (rc && self->waiting) {
            self->waiting = 0;
            rc = call_done(PyObject_CallMethodOneArg(pool, s_cancel_wait, (PyObject *)self)) == 0;
        }
        if (rc && !is_none(self->server)) {
            rc = call_done(PyObject_CallMethodObjArgs((PyObject *)self, s_hand_back, self->server, pool, NULL)) == 0;
            Py_XSETREF(self->server, Py_NewRef(Py_None));
        }
        Py_DECREF(pool);
        if (!rc)
            return NULL;
    }
    if (self->relaying)
        return PyObject_CallMethodNoArgs((PyObject *)self, s_session_ended);
    Py_RETURN_NONE;
}

static int
Client_traverse(ClientCore *self, visitproc visit, void *arg)
{
    Py_VISIT(self->transport);
    Py_VISIT(self->write);
    Py_VISIT(self->scanner);
    Py_VISIT(self->pool);
    Py_VISIT(self->server);
    Py_VISIT(self->buffered);
    Py_VISIT(self->wanted);
    Py_VISIT(self->startup);
    Py_VISIT(self->pinned);
    Py_VISIT(self->rt);
    Py_VISIT(self->login_buf);
    Py_VISIT(self->login);
    Py_VISIT(self->login_wait);
    Py_VISIT(self->plan);
    Py_VISIT(self->reader);
    Py_VISIT(self->key);
    Py_VISIT(self->ps);
    return 0;
}

static int
Client_clear(ClientCore *self)
{
    Py_CLEAR(self->transport);
    Py_CLEAR(self->write);
    Py_CLEAR(self->scanner);
    Py_CLEAR(self->pool);
    Py_CLEAR(self->server);
    Py_CLEAR(self->buffered);
    Py_CLEAR(self->head);
    Py_CLEAR(self->wanted);
    Py_CLEAR(self->startup);
    Py_CLEAR(self->pinned);
    Py_CLEAR(self->rt);
    login_reset(self);
    Py_CLEAR(self->login);
    Py_CLEAR(self->login_wait);
    Py_CLEAR(self->peer);
    Py_CLEAR(self->plan);
    Py_CLEAR(self->reader);
    Py_CLEAR(self->key);
    Py_CLEAR(self->user);
    Py_CLEAR(self->database);
    Py_CLEAR(self->ps);
    return 0;
}

static void
Client_dealloc(ClientCore *self)
{
    PyObject_GC_UnTrack(self);
    Client_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Client_methods[] = {
    {"data_received", (PyCFunction)Client_data_received, METH_O, "asyncio.Protocol.data_received"},
    {"connection_made", (PyCFunction)Client_connection_made, METH_O, "asyncio.Protocol.connection_made"},
    {"connection_lost", (PyCFunction)Client_connection_lost, METH_O, "asyncio.Protocol.connection_lost"},
    {"on_server", (PyCFunction)Client_on_server, METH_O, "pools.Waiter.on_server: the awaited link."},
    {"on_server_ready", (PyCFunction)Client_on_server_ready, METH_O,
     "ReadyForQuery with nothing more owed: count the transaction; release at 'I' in transaction mode."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Client_members[] = {
    {"scanner", T_OBJECT, offsetof(ClientCore, scanner), 0, NULL},
    {"pool", T_OBJECT, offsetof(ClientCore, pool), 0, NULL},
    {"server", T_OBJECT, offsetof(ClientCore, server), 0, NULL},
    {"buffered", T_OBJECT, offsetof(ClientCore, buffered), 0, NULL},
    {"_head", T_OBJECT, offsetof(ClientCore, head), 0, NULL},
    {"wanted", T_OBJECT, offsetof(ClientCore, wanted), 0, NULL},
    {"startup", T_OBJECT, offsetof(ClientCore, startup), 0, NULL},
    {"pinned", T_OBJECT, offsetof(ClientCore, pinned), 0, NULL},
    {"settle", T_BOOL, offsetof(ClientCore, settle), 0, NULL},
    {"rt", T_OBJECT, offsetof(ClientCore, rt), 0, NULL},
    {"buffered_syncs", T_PYSSIZET, offsetof(ClientCore, buffered_syncs), 0, NULL},
    {"transactions", T_PYSSIZET, offsetof(ClientCore, transactions), 0, NULL},
    {"xact_start", T_DOUBLE, offsetof(ClientCore, xact_start), 0, NULL},
    {"wait_start", T_DOUBLE, offsetof(ClientCore, wait_start), 0, NULL},
    {"relaying", T_BOOL, offsetof(ClientCore, relaying), 0, NULL},
    {"waiting", T_BOOL, offsetof(ClientCore, waiting), 0, NULL},
    {"terminating", T_BOOL, offsetof(ClientCore, terminating), 0, NULL},
    {"closed", T_BOOL, offsetof(ClientCore, closed), 0, NULL},
    {"in_batch", T_BOOL, offsetof(ClientCore, in_batch), 0, NULL},
    {"session_mode", T_BOOL, offsetof(ClientCore, session_mode), 0, NULL},
    {"ps", T_OBJECT, offsetof(ClientCore, ps), 0, NULL},
    {"ps_mid", T_BOOL, offsetof(ClientCore, ps_mid), 0, NULL},
    {"_server_paused", T_BOOL, offsetof(ClientCore, server_paused), 0, NULL},
    {"native_login", T_BOOL, offsetof(ClientCore, native_login), 0, NULL},
    {"_login", T_OBJECT, offsetof(ClientCore, login), 0, NULL},
    {"_login_wait", T_OBJECT, offsetof(ClientCore, login_wait), 0, NULL},
    {"_peer", T_OBJECT, offsetof(ClientCore, peer), 0, NULL},
    {"_plan", T_OBJECT, offsetof(ClientCore, plan), 0, NULL},
    {"_reader", T_OBJECT, offsetof(ClientCore, reader), 0, NULL},
    {"key", T_OBJECT, offsetof(ClientCore, key), 0, NULL},
    {"user", T_OBJECT, offsetof(ClientCore, user), 0, NULL},
    {"database", T_OBJECT, offsetof(ClientCore, database), 0, NULL},
    {"connected_at", T_DOUBLE, offsetof(ClientCore, connected_at), 0, NULL},
    {"tls", T_BOOL, offsetof(ClientCore, tls), 0, NULL},
    {"cancel_request", T_BOOL, offsetof(ClientCore, cancel_request), 0, NULL},
    {"_self_paused", T_BOOL, offsetof(ClientCore, self_paused), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef Client_getset[] = {
    {"transport", (getter)Client_get_transport, (setter)Client_set_transport, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ClientCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "poold._relaycore.ClientCore",
    .tp_doc = "A client session's hot-path state (client.ClientCorePy in C).",
    .tp_basicsize = sizeof(ClientCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = Client_new,
    .tp_init = (initproc)Client_init,
    .tp_traverse = (traverseproc)Client_traverse,
    .tp_clear = (inquiry)Client_clear,
    .tp_dealloc = (destructor)Client_dealloc,
    .tp_methods = Client_methods,
    .tp_members = Client_members,
    .tp_getset = Client_getset,
};

/* ------------------------------------------------------------------------ */

/* look(data, at=0, tail=-1): settings.look, for the differential test of the pair */
static PyObject *
Module_look(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t at = 0, cut;
    long tail = -1;
    long long limit = 0x3FFFFFFF; /* framing.MAX_MESSAGE_LENGTH */
    if (nargs < 1 || nargs > 4 || !PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "look(data: bytes, at: int = 0, tail: int = -1, limit: int = 2**30 - 1)");
        return NULL;
    }
    if (nargs >= 2 && (at = PyLong_AsSsize_t(args[1])) == -1 && PyErr_Occurred())
        return NULL;
    if (nargs >= 3 && (tail = PyLong_AsLong(args[2])) == -1 && PyErr_Occurred())
        return NULL;
    if (nargs == 4 && (limit = PyLong_AsLongLong(args[3])) == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    if (at < 0 || at > n) {
        PyErr_SetString(PyExc_ValueError, "look: at is within data");
        return NULL;
    }
    int look = may_carry_state(PyBytes_AS_STRING(args[0]), n, at, (int)tail, limit, &cut);
    return Py_BuildValue("(Nn)", PyBool_FromLong(look), cut);
}

/* ps_clean for the differential test against prepared.clean */
static PyObject *
module_ps_clean(PyObject *module, PyObject *data)
{
    if (!PyBytes_CheckExact(data)) {
        PyErr_SetString(PyExc_TypeError, "ps_clean: bytes");
        return NULL;
    }
    return PyBool_FromLong(ps_clean(data));
}

/* ps_rename_walk for the differential test against prepared.ClientStatements.rename:
 * (the renamed bytes, the statements bound), or None */
static PyObject *
module_ps_rename(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "ps_rename(names, lru, data)");
        return NULL;
    }
    PyObject *bound = PyList_New(0), *out;
    if (bound == NULL)
        return NULL;
    int rc = ps_rename_walk(args[0], args[1], args[2], bound, &out);
    PyObject *result = rc < 0 ? NULL : rc == 0 ? Py_NewRef(Py_None) : Py_BuildValue("(NO)", out, bound);
    Py_DECREF(bound);
    return result;
}

static PyMethodDef relaycore_functions[] = {
    {"look", (PyCFunction)(void (*)(void))Module_look, METH_FASTCALL, "settings.look in C."},
    {"ps_clean", (PyCFunction)module_ps_clean, METH_O, "prepared.clean in C (ClientSession._forward's test)."},
    {"ps_rename", (PyCFunction)(void (*)(void))module_ps_rename, METH_FASTCALL,
     "ClientStatements.rename's walk in C: (renamed bytes, statements bound) or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef relaycore_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "poold._relaycore",
    .m_doc = "The relay's per-transaction path in C (see the Python reference classes named in each type).",
    .m_size = -1,
    .m_methods = relaycore_functions,
};

#define INTERN(var, text)                                \
    do {                                                 \
        if ((var = PyUnicode_InternFromString(text)) == NULL) \
            return NULL;                                 \
    } while (0)

PyMODINIT_FUNC
PyInit__relaycore(void)
{
    INTERN(s_feed, "feed");
    INTERN(s_tally, "tally");
    INTERN(s_at_boundary, "at_boundary");
    INTERN(s_in_progress, "in_progress");
    INTERN(s_max_length, "max_length");
    INTERN(s_is_closing, "is_closing");
    INTERN(s_draining, "draining");
    INTERN(s_max_size, "max_size");
    INTERN(s_max_prepared_statements, "max_prepared_statements");
    INTERN(s_rewrite, "_rewrite");
    INTERN(s_ps, "ps");
    INTERN(s_names, "names");
    INTERN(s_lru, "lru");
    INTERN(s_name, "name");
    INTERN(s_registry, "registry");
    INTERN(s_hits, "hits");
    INTERN(s_move_to_end, "move_to_end");
    INTERN(s_bound, "bound");
    INTERN(s_on_frames, "_on_frames");
    INTERN(s_stream_corrupt, "_stream_corrupt");
    INTERN(s_login_data, "_login_data");
    INTERN(s_relay, "_relay");
    INTERN(s_relay_error, "_relay_error");
    INTERN(s_join, "join");
    INTERN(s_end_after_requests, "_end_after_requests");
    INTERN(s_outlive_client, "_outlive_client");
    INTERN(s_pause_reading, "pause_reading");
    INTERN(s_resume_reading, "resume_reading");
    INTERN(s_fatal, "_fatal");
    INTERN(s_unpause, "_unpause");
    INTERN(s_settle, "_settle");
    INTERN(s_release_settings, "_release_settings");
    INTERN(s_session_statement, "_session_statement");
    INTERN(s_give_back, "_give_back");
    INTERN(s_retire, "_retire");
    INTERN(s_set_aside, "_set_aside");
    INTERN(s_popleft, "popleft");
    INTERN(s_open, "open");
    INTERN(s_acquire_timeout, "acquire_timeout");
    INTERN(s_append, "append");
    INTERN(s_on_server, "on_server");
    INTERN(s_acquire_wait, "_acquire_wait");
    INTERN(s_write, "write");
    INTERN(s_native_login_plan, "_native_login_plan");
    INTERN(s_native_login_done, "_native_login_done");
    INTERN(s_native_login_fallback, "_native_login_fallback");
    INTERN(s_ssl_context, "ssl_context");
    INTERN(s_welcome, "welcome");
    INTERN(s_pool_key, "pool_key");
    INTERN(s_pools, "pools");
    INTERN(s_defaults, "defaults");
    INTERN(s_clients, "clients");
    INTERN(s_logins, "logins");
    INTERN(s_by_key, "by_key");
    INTERN(s_pids, "_pids");
    INTERN(s_secrets, "_secrets");
    INTERN(s_draw_secrets, "_draw_secrets");
    INTERN(s_mode, "mode");
    INTERN(s_settings, "settings");
    INTERN(s_config, "config");
    INTERN(s_login_plans, "login_plans");
    INTERN(s_max_client_conn, "max_client_conn");
    INTERN(s_tls, "tls");
    INTERN(s_require, "require");
    INTERN(s_user, "user");
    INTERN(s_database, "database");
    INTERN(s_keys, "keys");
    INTERN(s_max_message_size, "max_message_size");
    INTERN(s_scanner_type, "scanner_type");
    INTERN(s_end_login, "_end_login");
    INTERN(s_cancel_wait, "cancel_wait");
    INTERN(s_hand_back, "_hand_back");
    INTERN(s_session_ended, "_session_ended");
    INTERN(s_before_database_command, "_before_database_command");
    INTERN(s_max_login_conn, "max_login_conn");
    INTERN(s_make_room_for_login, "make_room_for_login");
    INTERN(s_guard, "guard");
    INTERN(s_pairs, "pairs");
    INTERN(s_native_login_held, "_native_login_held");
    if ((NO_KEY = Py_BuildValue("(ii)", 0, 0)) == NULL || (EMPTY_STR = PyUnicode_FromString("")) == NULL)
        return NULL;
    INTERN(SESSION, "session");
    /* 'R', length 23, 10 (AuthenticationSASL), "SCRAM-SHA-256", NUL, NUL */
    if ((AUTH_SASL = PyBytes_FromStringAndSize("R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0", 24)) == NULL)
        return NULL;
    if ((SYNC_POINTS = PyBytes_FromString("QSF")) == NULL || (TERMINATE = PyLong_FromLong('X')) == NULL ||
        (IDLE = PyBytes_FromString("I")) == NULL || (EMPTY = PyBytes_FromString("")) == NULL ||
        (COPY_FAIL = PyBytes_FromStringAndSize("f\0\0\0\x1ethe client sent Terminate", 31)) == NULL ||
        (DRAIN_STATE = PyUnicode_FromString("57P01")) == NULL ||
        (DRAIN_MESSAGE = PyUnicode_FromString("terminating connection: poold is draining")) == NULL)
        return NULL;
    SYNC_COUNTED['Q'] = SYNC_COUNTED['S'] = SYNC_COUNTED['F'] = 1;
    /* PyCapsule_Import walks attributes from the package down and imports only
     * the top one: _framing must be imported first, else the capsule is not
     * found when this module is imported before it (as the daemon does). */
    PyObject *framing_module = PyImport_ImportModule("poold.protocol._framing");
    if (framing_module != NULL) {
        Py_DECREF(framing_module);
        framing = (FramingCAPI *)PyCapsule_Import(FRAMING_CAPI_NAME, 0);
    }
    if (framing == NULL)
        PyErr_Clear(); /* _framing not built: the scanner is the Python one, called as methods */
    PyObject *errors = PyImport_ImportModule("poold.protocol.errors");
    if (errors == NULL)
        return NULL;
    ProtocolError = PyObject_GetAttrString(errors, "ProtocolError");
    Py_DECREF(errors);
    if (ProtocolError == NULL)
        return NULL;
    PyTypeObject *types[] = {&HistogramCoreType, &StatsCoreType, &ServerCoreType, &ClientCoreType, &PoolCoreType};
    const char *names[] = {"HistogramCore", "StatsCore", "ServerCore", "ClientCore", "PoolCore"};
    for (int i = 0; i < 5; i++)
        if (PyType_Ready(types[i]) < 0)
            return NULL;
    PyObject *m = PyModule_Create(&relaycore_module);
    if (m == NULL)
        return NULL;
    for (int i = 0; i < 5; i++) {
        if (PyModule_AddObjectRef(m, names[i], (PyObject *)types[i]) < 0) {
            Py_DECREF(m);
            return NULL;
        }
    }
    /* whether the native scanner is called through its C API (else as methods) */
    if (PyModule_AddObjectRef(m, "SCANNER_CAPI", framing != NULL ? Py_True : Py_False) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
