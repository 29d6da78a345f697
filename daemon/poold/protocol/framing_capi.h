/*
 * The native FrameScanner's C API, for the relay core (poold/_relaycore.c):
 * the walks of FrameScanner.tally and .feed, the at_boundary and resume tests, callable
 * without a method call, and a constructor. Exported by _framing as the capsule named below.
 */
#ifndef POOLD_FRAMING_CAPI_H
#define POOLD_FRAMING_CAPI_H

#include <Python.h>

#define FRAMING_CAPI_NAME "poold.protocol._framing._C_API"

typedef struct {
    PyTypeObject *scanner_type;
    /* tally(data, counted, stop): 0, or -1 with an exception set; stop_start is -1 when not stopped */
    int (*tally)(PyObject *scanner, const char *data, Py_ssize_t n, const unsigned char counted[256], int stop,
                 Py_ssize_t *count, Py_ssize_t *stop_start, int *last);
    /* feed(data): the frames list, or NULL with an exception set */
    PyObject *(*feed)(PyObject *scanner, const char *data, Py_ssize_t n);
    int (*at_boundary)(PyObject *scanner);
    /* FrameScanner(b"", report_all, max_length), without parsing arguments: a new reference or NULL */
    PyObject *(*new_scanner)(int report_all, long long max_length);
    /* resume: where the next chunk's first whole message starts: *skip body bytes of the
     * current message still to come, or the bytes of a cut header (borrowed; NULL if none) */
    PyObject *(*resume)(PyObject *scanner, Py_ssize_t *skip);
} FramingCAPI;

#endif
