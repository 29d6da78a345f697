/*
 * The native FrameScanner's C API, for the relay core (poold/_relaycore.c):
 * the walks of FrameScanner.tally and .feed, the at_boundary and in_progress tests, callable
 * without a method call, and a constructor. Exported by _framing as the capsule named below.
 */
#ifndef POOLD_FRAMING_CAPI_H
#define POOLD_FRAMING_CAPI_H

#include <Python.h>

#define FRAMING_CAPI_NAME "poold.protocol._framing._C_API_v2" /* a new name for each change of the struct */

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
    /* in_progress: the message the stream is inside: *skip its bytes still to come (0 at a
     * boundary or after a cut header); its type, or -1 (none, or not a report_all scanner);
     * and *max_length, the longest message the scanner takes */
    int (*in_progress)(PyObject *scanner, Py_ssize_t *skip, long long *max_length);
} FramingCAPI;

#endif
