/*
 * Native FrameScanner: the same header walk as framing.PyFrameScanner, in C.
 *
 * framing.py holds the reference implementation and its theory of operation;
 * this file follows it line for line, so that one reads as the other. The
 * tests run the same fixtures and hypothesis properties against both.
 *
 * Why native: the relay feeds every chunk of every transaction through the
 * scanner. In Python the header walk costs about 1.3 us for a four-message
 * reply (RowDescription, DataRow, CommandComplete, ReadyForQuery) and 0.4 us
 * for a one-message query, a third of poold's own per-transaction work; here
 * it is a few tens of nanoseconds plus the frames handed back.
 *
 * Only the standard CPython API is used; no I/O, no allocation beyond the
 * returned frames and the carried bytes.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#include "framing_capi.h"

/* PostgreSQL's cap on any message (MaxAllocSize, 1 GiB - 1). */
#define MAX_MESSAGE_LENGTH 0x3FFFFFFFLL

typedef struct {
    PyObject_HEAD
    PyObject *carry;          /* bytes: an incomplete header, or a watched message in progress */
    Py_ssize_t skip;          /* body bytes of an unwatched message still to pass over */
    int has_pending;          /* a reported, unwatched message continues into later chunks */
    int pending_type;
    Py_ssize_t pending_start; /* its start, relative to the next chunk */
    int report_all;
    long long max_length;
    unsigned char watch[256];
} Scanner;

static PyTypeObject ScannerType;

/* The exception for a bad length, built by framing._bad_length so that the
 * classes and wording live in one place. */
static PyObject *
bad_length(int t, long long length, long long limit)
{
    PyObject *mod = PyImport_ImportModule("poold.protocol.framing");
    if (mod == NULL)
        return NULL;
    PyObject *exc = PyObject_CallMethod(mod, "_bad_length", "iLL", t, length, limit);
    Py_DECREF(mod);
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

static int
append_frame(PyObject *frames, int t, Py_ssize_t start, Py_ssize_t end, PyObject *body)
{
    /* body: a new reference or NULL (None) */
    PyObject *frame = PyTuple_New(4);
    if (frame == NULL) {
        Py_XDECREF(body);
        return -1;
    }
    PyObject *pt = PyLong_FromLong(t);
    PyObject *ps = PyLong_FromSsize_t(start);
    PyObject *pe = PyLong_FromSsize_t(end);
    if (pt == NULL || ps == NULL || pe == NULL) {
        Py_XDECREF(pt);
        Py_XDECREF(ps);
        Py_XDECREF(pe);
        Py_XDECREF(body);
        Py_DECREF(frame);
        return -1;
    }
    if (body == NULL) {
        body = Py_None;
        Py_INCREF(body);
    }
    PyTuple_SET_ITEM(frame, 0, pt);
    PyTuple_SET_ITEM(frame, 1, ps);
    PyTuple_SET_ITEM(frame, 2, pe);
    PyTuple_SET_ITEM(frame, 3, body);
    int rc = PyList_Append(frames, frame);
    Py_DECREF(frame);
    return rc;
}

static void
set_carry(Scanner *self, PyObject *value)
{
    /* steals value (may be NULL for "nothing carried") */
    PyObject *old = self->carry;
    self->carry = value;
    Py_XDECREF(old);
}

/* Where the walk's messages go: a list of frames (feed), or counters (tally). */
typedef struct {
    PyObject *frames;         /* feed: the list; tally: NULL */
    unsigned char counted[256];
    int stop;                 /* tally: the type that ends the walk, or -1 */
    Py_ssize_t count;
    Py_ssize_t stop_start;
    int stopped;
    int last;                 /* tally: the type of the last message reported, or -1 */
} Sink;

/* Report one message; 1 when the walk must stop, -1 on error. body: new reference or NULL. */
static int
emit(Sink *sink, int t, Py_ssize_t start, Py_ssize_t end, PyObject *body)
{
    if (sink->frames != NULL)
        return append_frame(sink->frames, t, start, end, body);
    Py_XDECREF(body);
    if (t == sink->stop) {
        sink->stopped = 1;
        sink->stop_start = start;
        return 1;
    }
    sink->count += sink->counted[t];
    sink->last = t;
    return 0;
}

/* The walk of framing.PyFrameScanner.feed; 0, or -1 with an exception set. */
static int
walk(Scanner *self, const unsigned char *data, Py_ssize_t n, Sink *sink)
{
    PyObject *joined = NULL;
    Py_ssize_t pos = 0;
    int rc;

    if (self->skip) {
        if (self->skip > n) {
            self->skip -= n;
            if (self->has_pending)
                self->pending_start -= n;
            return 0;
        }
        pos = self->skip;
        self->skip = 0;
        if (self->has_pending) {
            self->has_pending = 0;
            rc = emit(sink, self->pending_type, self->pending_start, pos, NULL);
            if (rc)
                return rc < 0 ? -1 : 0;
        }
    }
    Py_ssize_t base = 0;
    if (self->carry != NULL) {
        /* Rare path: glue the carried bytes in front and shift offsets back.
         * (carry and skip are never both set, so pos is 0 here.) */
        base = PyBytes_GET_SIZE(self->carry);
        joined = PyBytes_FromStringAndSize(NULL, base + n);
        if (joined == NULL)
            return -1;
        memcpy(PyBytes_AS_STRING(joined), PyBytes_AS_STRING(self->carry), base);
        memcpy(PyBytes_AS_STRING(joined) + base, data, n);
        set_carry(self, NULL);
        data = (const unsigned char *)PyBytes_AS_STRING(joined);
        n = base + n;
    }
    while (n - pos >= 5) {
        int t = data[pos];
        int32_t length = (int32_t)(((uint32_t)data[pos + 1] << 24) | ((uint32_t)data[pos + 2] << 16) |
                                   ((uint32_t)data[pos + 3] << 8) | (uint32_t)data[pos + 4]);
        if (length < 4 || (long long)length > self->max_length) {
            bad_length(t, length, self->max_length);
            goto error;
        }
        Py_ssize_t end = pos + 1 + (Py_ssize_t)length;
        if (self->watch[t]) {
            if (end > n) {
                set_carry(self, PyBytes_FromStringAndSize((const char *)data + pos, n - pos));
                if (self->carry == NULL)
                    goto error;
                goto done;
            }
            PyObject *body = NULL;
            if (sink->frames != NULL) {
                body = PyBytes_FromStringAndSize((const char *)data + pos + 5, end - pos - 5);
                if (body == NULL)
                    goto error;
            }
            rc = emit(sink, t, pos - base, end - base, body);
            if (rc < 0)
                goto error;
            if (rc)
                goto done;
        }
        else if (end > n) {
            self->skip = end - n;
            if (self->report_all) {
                /* The start, re-expressed relative to the next chunk. */
                self->has_pending = 1;
                self->pending_type = t;
                self->pending_start = pos - n;
            }
            goto done;
        }
        else if (self->report_all) {
            rc = emit(sink, t, pos - base, end - base, NULL);
            if (rc < 0)
                goto error;
            if (rc)
                goto done;
        }
        pos = end;
    }
    if (pos < n) {
        set_carry(self, PyBytes_FromStringAndSize((const char *)data + pos, n - pos));
        if (self->carry == NULL)
            goto error;
    }
done:
    Py_XDECREF(joined);
    return 0;
error:
    Py_XDECREF(joined);
    return -1;
}

static PyObject *
Scanner_feed(Scanner *self, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Sink sink = {.frames = PyList_New(0), .stop = -1, .last = -1};
    if (sink.frames == NULL || walk(self, (const unsigned char *)view.buf, view.len, &sink) < 0) {
        Py_XDECREF(sink.frames);
        sink.frames = NULL;
    }
    PyBuffer_Release(&view);
    return sink.frames;
}

static PyObject *
Scanner_tally(Scanner *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "tally(data, counted, stop) takes 3 arguments");
        return NULL;
    }
    Py_buffer view, counted;
    int stop = (int)PyLong_AsLong(args[2]);
    if (stop == -1 && PyErr_Occurred())
        return NULL;
    if (PyObject_GetBuffer(args[1], &counted, PyBUF_SIMPLE) < 0)
        return NULL;
    Sink sink = {.frames = NULL, .stop = stop, .last = -1};
    memset(sink.counted, 0, sizeof(sink.counted));
    for (Py_ssize_t i = 0; i < counted.len; i++)
        sink.counted[((const unsigned char *)counted.buf)[i]] = 1;
    PyBuffer_Release(&counted);
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int rc = walk(self, (const unsigned char *)view.buf, view.len, &sink);
    PyBuffer_Release(&view);
    if (rc < 0)
        return NULL;
    if (sink.stopped)
        return Py_BuildValue("nni", sink.count, sink.stop_start, sink.last);
    return Py_BuildValue("nOi", sink.count, Py_None, sink.last);
}

/* The C API (framing_capi.h) for the relay core: tally and feed without a
 * method call, the same walks as the methods above. */
static int
capi_tally(PyObject *scanner, const char *data, Py_ssize_t n, const unsigned char counted[256], int stop,
           Py_ssize_t *count, Py_ssize_t *stop_start, int *last)
{
    Sink sink = {.frames = NULL, .stop = stop, .last = -1};
    memcpy(sink.counted, counted, sizeof(sink.counted));
    if (walk((Scanner *)scanner, (const unsigned char *)data, n, &sink) < 0)
        return -1;
    *count = sink.count;
    *stop_start = sink.stopped ? sink.stop_start : -1;
    *last = sink.last;
    return 0;
}

static PyObject *
capi_feed(PyObject *scanner, const char *data, Py_ssize_t n)
{
    Sink sink = {.frames = PyList_New(0), .stop = -1, .last = -1};
    if (sink.frames == NULL || walk((Scanner *)scanner, (const unsigned char *)data, n, &sink) < 0) {
        Py_XDECREF(sink.frames);
        return NULL;
    }
    return sink.frames;
}

static int
capi_at_boundary(PyObject *scanner)
{
    Scanner *self = (Scanner *)scanner;
    return self->skip == 0 && self->carry == NULL;
}

static PyObject *
Scanner_at_boundary(Scanner *self, void *closure)
{
    return PyBool_FromLong(self->skip == 0 && self->carry == NULL);
}

static int
capi_in_progress(PyObject *scanner, Py_ssize_t *skip, long long *max_length)
{
    Scanner *self = (Scanner *)scanner;
    *max_length = self->max_length;
    *skip = self->carry != NULL ? 0 : self->skip;
    return self->carry == NULL && self->skip && self->has_pending ? self->pending_type : -1;
}

static PyObject *
Scanner_in_progress(Scanner *self, void *closure)
{
    Py_ssize_t skip;
    long long max_length;
    int type = capi_in_progress((PyObject *)self, &skip, &max_length);
    return Py_BuildValue("(ni)", skip, type);
}

static PyObject *
Scanner_max_length(Scanner *self, void *closure)
{
    return PyLong_FromLongLong(self->max_length);
}

static int
Scanner_init(Scanner *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"watch", "report_all", "max_length", NULL};
    Py_buffer watch = {0};
    int report_all = 0;
    long long max_length = MAX_MESSAGE_LENGTH;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|y*pL", kwlist, &watch, &report_all, &max_length))
        return -1;
    memset(self->watch, 0, sizeof(self->watch));
    for (Py_ssize_t i = 0; i < watch.len; i++)
        self->watch[((const unsigned char *)watch.buf)[i]] = 1;
    if (watch.obj != NULL)
        PyBuffer_Release(&watch);
    self->report_all = report_all;
    self->max_length = max_length;
    set_carry(self, NULL);
    self->skip = 0;
    self->has_pending = 0;
    return 0;
}

static PyObject *
capi_new_scanner(int report_all, long long max_length)
{
    Scanner *self = (Scanner *)ScannerType.tp_alloc(&ScannerType, 0); /* zeroed: no watch, no carry */
    if (self == NULL)
        return NULL;
    self->report_all = report_all;
    self->max_length = max_length;
    return (PyObject *)self;
}

static void
Scanner_dealloc(Scanner *self)
{
    Py_XDECREF(self->carry);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Scanner_methods[] = {
    {"feed", (PyCFunction)Scanner_feed, METH_O,
     "feed(data) -> list of (type, start, end, body) frames, as framing.PyFrameScanner.feed."},
    {"tally", (PyCFunction)(void (*)(void))Scanner_tally, METH_FASTCALL,
     "tally(data, counted, stop) -> (count, stop_start, last_type), as framing.PyFrameScanner.tally."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Scanner_getset[] = {
    {"at_boundary", (getter)Scanner_at_boundary, NULL,
     "True when the stream so far ends exactly at a message boundary.", NULL},
    {"max_length", (getter)Scanner_max_length, NULL, "The longest message this scanner takes.", NULL},
    {"in_progress", (getter)Scanner_in_progress, NULL,
     "(bytes still to come of the message the stream is inside, its type or -1), as "
     "framing.PyFrameScanner.in_progress.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ScannerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "poold.protocol._framing.FrameScanner",
    .tp_doc = "Finds message boundaries in a typed-message stream (native; see framing.PyFrameScanner).",
    .tp_basicsize = sizeof(Scanner),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Scanner_init,
    .tp_dealloc = (destructor)Scanner_dealloc,
    .tp_methods = Scanner_methods,
    .tp_getset = Scanner_getset,
};

static struct PyModuleDef framing_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "poold.protocol._framing",
    .m_doc = "Native FrameScanner for the relay's hot path.",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__framing(void)
{
    if (PyType_Ready(&ScannerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&framing_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&ScannerType);
    if (PyModule_AddObject(m, "FrameScanner", (PyObject *)&ScannerType) < 0) {
        Py_DECREF(&ScannerType);
        Py_DECREF(m);
        return NULL;
    }
    static FramingCAPI capi;
    capi.scanner_type = &ScannerType;
    capi.tally = capi_tally;
    capi.feed = capi_feed;
    capi.at_boundary = capi_at_boundary;
    capi.new_scanner = capi_new_scanner;
    capi.in_progress = capi_in_progress;
    PyObject *capsule = PyCapsule_New(&capi, FRAMING_CAPI_NAME, NULL);
    if (capsule == NULL || PyModule_AddObject(m, "_C_API_v2", capsule) < 0) {
        Py_XDECREF(capsule);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
