# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Compiled twin of ``wmbus_stream.hes._pyreport`` (the readable specification of a report line).

Same public names, arguments, results, exception types and messages; ``tests/unit/test_report_twins.py``
holds the two twins to that with the vectors, the malformed lines and random mutations.

Strategy:

* ``_fast`` checks a whole line in C on its bytes (fixed field positions, character classes,
  the calendar, hex decoding into a stack buffer, the wired records and container, the
  L-field and the header equalities) and says only yes or no. A yes builds the
  ``ReportLine`` here; a no hands the line to the pure twin, which raises the error with
  its message (or, should the C checks be stricter than the pure ones, returns the line).
  So every error text comes from one place, and a disagreement can only cost speed;
  ``fast_line`` exposes the yes/no so the tests show there is none.
* ``ReportParser.feed`` splits a piece into lines with ``memchr`` and checks each one
  without making a Python object per line but the result.
* The ``ReportLine`` (a frozen slots dataclass of the pure twin) is allocated and its slots
  filled directly, through the offsets of its member descriptors read once at import,
  which skips the dataclass ``__init__`` and its frozen ``__setattr__`` per field; if the
  class is not laid out so, the ordinary constructor is used.
* Gateway serials repeat from line to line and manufacturers are few: the last serial and
  every manufacturer's letters are kept as ``str`` objects and reused.
* The digest is ``hashlib.sha256`` (OpenSSL), the same function as the pure twin's.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_Append
from cpython.ref cimport Py_INCREF, PyObject
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from cpython.unicode cimport PyUnicode_DecodeASCII
from libc.string cimport memchr, memcmp, memcpy

import hashlib

from wmbus_stream.errors import ReportError
from wmbus_stream.hes import _pyreport as _pure
from wmbus_stream.hes._pyreport import MAX_REPORT_LINE, STORE_COLUMNS, ReportLine

__all__ = ["MAX_REPORT_LINE", "STORE_COLUMNS", "ReportLine", "ReportParser", "check_line", "fast_line", "parse_line",
           "parse_report", "parse_wired", "store_rows"]

cdef extern from *:
    """
    #include "structmember.h"
    /* The byte offset of a writable object slot given its member descriptor, or -1. */
    static Py_ssize_t wmbs_slot_offset(PyObject *d) {
        PyMemberDef *m;
        if (!PyObject_TypeCheck(d, &PyMemberDescr_Type)) return -1;
        m = ((PyMemberDescrObject *)d)->d_member;
        if (m->type != T_OBJECT_EX || (m->flags & READONLY)) return -1;
        return m->offset;
    }
    /* A new instance of a type without calling __init__ (its slots are NULL). */
    static PyObject *wmbs_alloc(PyObject *type) {
        PyTypeObject *t = (PyTypeObject *)type;
        return t->tp_alloc(t, 0);
    }
    /* Store a new reference to v in the (empty) slot at offset of o. */
    static void wmbs_fill(PyObject *o, Py_ssize_t offset, PyObject *v) {
        PyObject **p = (PyObject **)((char *)o + offset);
        PyObject *old = *p;
        Py_INCREF(v);
        *p = v;
        Py_XDECREF(old);
    }
    /* The object in the (filled) slot at offset of o, borrowed. */
    static PyObject *wmbs_slot(PyObject *o, Py_ssize_t offset) {
        return *(PyObject **)((char *)o + offset);
    }
    """
    Py_ssize_t wmbs_slot_offset(object d)
    object wmbs_alloc(object type)
    void wmbs_fill(object o, Py_ssize_t offset, object v)
    PyObject *wmbs_slot(object o, Py_ssize_t offset)

cdef enum:
    WIRED_MAX = 512            # (MAX_REPORT_LINE - 41) // 2 bytes fit
    HEX_AT = 41                # the telegram field starts after 8+1+8+1+19+1+2+1 characters

cdef Py_ssize_t _MAX_LINE = MAX_REPORT_LINE
assert (MAX_REPORT_LINE - HEX_AT) // 2 <= WIRED_MAX

_FIELDS = ("gateway", "meter_id", "date", "wired", "telegram", "receiver", "age_minutes", "rssi_code", "manufacturer",
           "version", "device_type", "ci", "access_number", "digest", "long_form")
assert _FIELDS == tuple(ReportLine.__dataclass_fields__), "ReportLine's fields changed: update _FIELDS and _make"
cdef Py_ssize_t _offsets[15]
cdef Py_ssize_t _store_offsets[13]
cdef Py_ssize_t _key_offsets[3]
cdef bint _direct = True
for _i, _name in enumerate(_FIELDS):
    _offsets[_i] = wmbs_slot_offset(ReportLine.__dict__.get(_name))
    if _offsets[_i] < 0:
        _direct = False
if _direct:
    for _i, _name in enumerate(STORE_COLUMNS):
        _store_offsets[_i] = _offsets[_FIELDS.index(_name)]
    for _i, _name in enumerate(("digest", "gateway", "date")):
        _key_offsets[_i] = _offsets[_FIELDS.index(_name)]

_sha256 = hashlib.sha256
_letters = [None] * 32768      # manufacturer code -> its three letters, made on first use
cdef bytes _HEXDIGITS = b"0123456789ABCDEF"
cdef signed char _NIBBLE[256]  # value of an uppercase hex digit, -1 for anything else
cdef signed char _ANYHEX[256]  # value of a hex digit of either case, -1 for anything else
for _i in range(256):
    _NIBBLE[_i] = -1
    _ANYHEX[_i] = -1
for _i in range(16):
    _NIBBLE[ord("0123456789ABCDEF"[_i])] = _i
    _ANYHEX[ord("0123456789ABCDEF"[_i])] = _i
    _ANYHEX[ord("0123456789abcdef"[_i])] = _i


cdef struct Line:
    Py_ssize_t wired_len
    Py_ssize_t tpos        # where the wireless telegram starts in the wired bytes
    Py_ssize_t tlen
    Py_ssize_t receiver    # offsets of the receiver record values, -1 when absent
    Py_ssize_t age
    Py_ssize_t rssi
    bint long_form
    unsigned char wired[WIRED_MAX]


cdef inline bint _digits(const unsigned char *p, int n) noexcept nogil:
    cdef int i
    for i in range(n):
        if p[i] < 48 or p[i] > 57:
            return False
    return True


cdef inline int _number(const unsigned char *p, int n) noexcept nogil:
    cdef int i, v = 0
    for i in range(n):
        v = v * 10 + (p[i] - 48)
    return v


cdef bint _date(const unsigned char *p) noexcept nogil:
    """``YYYY-MM-DD hh:mm:ss`` of a real date and time, as ``datetime.strptime`` accepts it."""
    cdef int year, month, day, days
    if not (_digits(p, 4) and p[4] == 45 and _digits(p + 5, 2) and p[7] == 45 and _digits(p + 8, 2) and p[10] == 32
            and _digits(p + 11, 2) and p[13] == 58 and _digits(p + 14, 2) and p[16] == 58 and _digits(p + 17, 2)):
        return False
    year = _number(p, 4)
    month = _number(p + 5, 2)
    day = _number(p + 8, 2)
    if year < 1 or month < 1 or month > 12 or day < 1:
        return False
    if month == 2:
        days = 29 if (year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)) else 28
    elif month == 4 or month == 6 or month == 9 or month == 11:
        days = 30
    else:
        days = 31
    return day <= days and _number(p + 11, 2) < 24 and _number(p + 14, 2) < 60 and _number(p + 17, 2) < 60


cdef bint _wired(Line *out) noexcept nogil:
    """The checks of ``parse_wired`` on ``out.wired``; fills the offsets."""
    cdef const unsigned char *w = out.wired
    cdef Py_ssize_t n = out.wired_len, pos = 15, count
    cdef int next_record = 0
    cdef const unsigned char *t
    out.receiver = -1
    out.age = -1
    out.rssi = -1
    if n < 15 or w[0] != 0x08 or w[2] != 0x72:
        return False
    while True:
        if pos + 3 <= n and w[pos] == 0x0D and w[pos + 1] == 0xFD and w[pos + 2] == 0x3B:
            out.long_form = False
            break
        if pos < n and w[pos] == 0x0F:
            out.long_form = True
            break
        if pos + 2 <= n and w[pos] == 0x0C and w[pos + 1] == 0x78 and next_record <= 0:
            if pos + 6 > n:
                return False
            out.receiver = pos + 2
            pos += 6
            next_record = 1
        elif pos + 2 <= n and w[pos] == 0x02 and w[pos + 1] == 0x75 and next_record <= 1:
            if pos + 4 > n:
                return False
            out.age = pos + 2
            pos += 4
            next_record = 2
        elif pos + 3 <= n and w[pos] == 0x01 and w[pos + 1] == 0xFD and w[pos + 2] == 0x71 and next_record <= 2:
            if pos + 4 > n:
                return False
            out.rssi = pos + 3
            pos += 4
            next_record = 3
        else:
            return False
    if out.long_form:
        out.tpos = pos + 1
        out.tlen = n - pos - 1
    else:
        if pos + 4 > n:
            return False
        count = w[pos + 3]
        out.tpos = pos + 4
        out.tlen = count
        if pos + 4 + count > n:
            return False
        if pos + 4 + count < n and not (pos + 5 + count == n and (w[n - 1] == 0x0F or w[n - 1] == 0x1F)):
            return False
    t = w + out.tpos
    if out.tlen < 11 or t[0] != out.tlen - 1:
        return False
    if memcmp(t + 2, w + 7, 2) != 0 or memcmp(t + 8, w + 9, 2) != 0 or memcmp(t + 4, w + 3, 4) != 0:
        return False
    if out.rssi >= 0 and w[out.rssi] > 63:
        return False
    return True


cdef bint _fast(const unsigned char *p, Py_ssize_t n, Line *out) noexcept nogil:
    """Whether the pure twin's ``parse_line`` accepts these ASCII bytes; fills ``out`` if so."""
    cdef Py_ssize_t i, k
    cdef signed char hi, lo
    cdef const unsigned char *t
    if n < HEX_AT + 2 or n > _MAX_LINE or (n - HEX_AT) % 2:
        return False
    if not (_digits(p, 8) and p[8] == 59 and p[17] == 59 and p[37] == 59 and p[38] == 48 and p[39] == 48
            and p[40] == 59):
        return False
    for i in range(9, 17):
        if _ANYHEX[p[i]] < 0:
            return False
    if not _date(p + 18):
        return False
    k = 0
    for i in range(HEX_AT, n, 2):
        hi = _NIBBLE[p[i]]
        lo = _NIBBLE[p[i + 1]]
        if hi < 0 or lo < 0:
            return False
        out.wired[k] = <unsigned char>((hi << 4) | lo)
        k += 1
    out.wired_len = k
    if not _wired(out):
        return False
    # The meter ID of the line is the telegram's (bytes 4..7, most significant last), in either case.
    t = out.wired + out.tpos
    for i in range(4):
        if _ANYHEX[p[9 + 2 * i]] != (t[7 - i] >> 4) or _ANYHEX[p[10 + 2 * i]] != (t[7 - i] & 15):
            return False
    return True


cdef object _hex_reversed(const unsigned char *v):
    """Four little-endian bytes as 8 uppercase hex digits, most significant first."""
    cdef char text[8]
    cdef int i
    cdef const char *digits = _HEXDIGITS
    for i in range(4):
        text[2 * i] = digits[v[3 - i] >> 4]
        text[2 * i + 1] = digits[v[3 - i] & 15]
    return PyUnicode_DecodeASCII(text, 8, NULL)


cdef object _manufacturer(unsigned int code):
    cdef object letters = _letters[code]
    cdef char text[3]
    if letters is None:
        text[0] = <char>(((code >> 10) & 0x1F) + 64)
        text[1] = <char>(((code >> 5) & 0x1F) + 64)
        text[2] = <char>((code & 0x1F) + 64)
        letters = PyUnicode_DecodeASCII(text, 3, NULL)
        _letters[code] = letters
    return letters


cdef class _Maker:
    """Builds ReportLines from checked lines; keeps the last gateway serial for the next line."""

    cdef object _gateway
    cdef char _serial[8]

    def __cinit__(self):
        self._gateway = None

    cdef object make(self, const unsigned char *p, Line *line):
        cdef const unsigned char *w = line.wired
        cdef const unsigned char *t = w + line.tpos
        cdef unsigned int ci = t[10]
        cdef Py_ssize_t index = -1
        cdef char ident[8]
        cdef int i
        if self._gateway is None or memcmp(self._serial, p, 8) != 0:
            memcpy(self._serial, p, 8)
            self._gateway = PyUnicode_DecodeASCII(<const char *>p, 8, NULL)
        for i in range(8):
            ident[i] = <char>(p[9 + i] - 32 if 97 <= p[9 + i] <= 102 else p[9 + i])
        telegram = PyBytes_FromStringAndSize(<const char *>t, line.tlen)
        if ci == 0x7A:
            index = 11
        elif ci == 0x72:
            index = 19
        elif 0x8C <= ci <= 0x8F:
            index = 12
        values = (
            self._gateway,
            PyUnicode_DecodeASCII(ident, 8, NULL),
            PyUnicode_DecodeASCII(<const char *>p + 18, 19, NULL),
            PyBytes_FromStringAndSize(<const char *>w, line.wired_len),
            telegram,
            _hex_reversed(w + line.receiver) if line.receiver >= 0 else None,
            (w[line.age] | (w[line.age + 1] << 8)) if line.age >= 0 else None,
            w[line.rssi] if line.rssi >= 0 else None,
            _manufacturer((t[2] | (t[3] << 8)) & 0x7FFF),
            t[8],
            t[9],
            ci,
            t[index] if 0 <= index < line.tlen else None,
            _sha256(telegram).hexdigest(),
            True if line.long_form else False,
        )
        return _make(values)


cdef object _make(tuple values):
    """A ReportLine of the 15 values in field order."""
    cdef int i
    if not _direct:
        return ReportLine(*values)
    obj = wmbs_alloc(ReportLine)
    for i in range(15):
        wmbs_fill(obj, _offsets[i], values[i])
    return obj


cdef class ReportParser:
    """Validates a report body while it arrives: ``feed`` pieces, then ``finish`` (see the pure twin)."""

    cdef public list lines
    cdef public object count
    cdef public object long_form
    cdef public bint ended
    cdef bytearray _partial
    cdef _Maker _maker
    cdef Line _line_buf

    def __init__(self):
        self.lines = []
        self.count = 0
        self.long_form = 0
        self.ended = False
        self._partial = bytearray()
        self._maker = _Maker()

    def take(self):
        """The lines validated since the last ``take``, so a caller can stage them and keep memory bounded."""
        lines = self.lines
        self.lines = []
        return lines

    def feed(self, data):
        """Validate the lines ``data`` completes; keep an unfinished last line for later."""
        if not isinstance(data, (bytes, bytearray)):
            data.find(b"\n", 0)  # what the pure twin calls: the same error for what has no find
        cdef bytes piece = data if PyBytes_CheckExact(data) else bytes(data)
        cdef const unsigned char *buf = <const unsigned char *>PyBytes_AS_STRING(piece)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(piece), start = 0, end
        cdef const unsigned char *hit
        cdef bytes raw
        while start < n:
            hit = <const unsigned char *>memchr(buf + start, 10, n - start)
            if hit == NULL:
                break
            end = hit - buf
            if len(self._partial):
                self._partial += piece[start:end]
                raw = bytes(self._partial)
                self._partial.clear()
                self._one(<const unsigned char *>PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw))
            else:
                self._one(buf + start, end - start)
            start = end + 1
        if start < n:
            self._partial += piece[start:]
        if len(self._partial) > _MAX_LINE:
            raise ReportError(self.count + 1, f"longer than {MAX_REPORT_LINE} bytes (a report line is about 600)")

    def finish(self):
        """The validated lines not yet taken, once the body has ended."""
        cdef bytes raw
        self.ended = True
        if len(self._partial):
            raw = bytes(self._partial)
            self._partial.clear()
            self._one(<const unsigned char *>PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw))
        return self.take()

    cdef int _one(self, const unsigned char *p, Py_ssize_t n) except -1:
        cdef Py_ssize_t m = n - 1 if n and p[n - 1] == 13 else n
        number = self.count + 1
        if _fast(p, m, &self._line_buf):
            line = self._maker.make(p, &self._line_buf)
        else:
            line = _pure.check_line(number, PyBytes_FromStringAndSize(<const char *>p, n))
        PyList_Append(self.lines, line)
        self.count = number
        if line.long_form:
            self.long_form += 1
        return 0


def check_line(number, raw):
    """Validate report line ``number`` given as its bytes without LF (a CR before it is dropped); ReportError if bad."""
    cdef Line line
    cdef const unsigned char *p
    cdef Py_ssize_t n
    if PyBytes_CheckExact(raw):
        p = <const unsigned char *>PyBytes_AS_STRING(raw)
        n = PyBytes_GET_SIZE(raw)
        if n and p[n - 1] == 13:
            n -= 1
        if _fast(p, n, &line):
            return _Maker().make(p, &line)
    return _pure.check_line(number, raw)


def fast_line(raw):
    """Whether the C checks alone accept these line bytes (no CR, no LF): for the tests that compare the twins."""
    cdef Line line
    cdef bytes data = bytes(raw)
    return bool(_fast(<const unsigned char *>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), &line))


def parse_line(text):
    """Validate one report line (without its line break); raises ValueError with the reason."""
    cdef Line line
    cdef bytes data
    if type(text) is str and text.isascii():
        data = text.encode("ascii")
        if _fast(<const unsigned char *>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), &line):
            return _Maker().make(<const unsigned char *>PyBytes_AS_STRING(data), &line)
    return _pure.parse_line(text)


def parse_wired(wired):
    """Check a report's wired RSP_UD telegram: (receiver address, age, RSSI code, wireless telegram, long form)."""
    cdef Line line
    cdef const unsigned char *w
    if PyBytes_CheckExact(wired) and PyBytes_GET_SIZE(wired) <= WIRED_MAX:
        line.wired_len = PyBytes_GET_SIZE(wired)
        memcpy(line.wired, PyBytes_AS_STRING(wired), line.wired_len)
        if _wired(&line):
            w = line.wired
            return (
                _hex_reversed(w + line.receiver) if line.receiver >= 0 else None,
                (w[line.age] | (w[line.age + 1] << 8)) if line.age >= 0 else None,
                w[line.rssi] if line.rssi >= 0 else None,
                PyBytes_FromStringAndSize(<const char *>w + line.tpos, line.tlen),
                True if line.long_form else False,
            )
    return _pure.parse_wired(wired)


def store_rows(lines):
    """The STORE_COLUMNS tuples of lines, and their keys (digest;gateway;date;...) as bytes for a POST's fingerprint."""
    cdef list rows = []
    cdef list keys = []
    cdef Py_ssize_t i
    cdef PyObject *value
    if not _direct:
        return _pure.store_rows(lines)
    for line in lines:
        if type(line) is not ReportLine:
            return _pure.store_rows(lines)
        row = PyTuple_New(13)
        for i in range(13):
            value = wmbs_slot(line, _store_offsets[i])
            if value == NULL:
                return _pure.store_rows(lines)  # a slot never set: the pure twin says what is missing
            Py_INCREF(<object>value)
            PyTuple_SET_ITEM(row, i, <object>value)
        PyList_Append(rows, row)
        for i in range(3):
            value = wmbs_slot(line, _key_offsets[i])
            if value == NULL:
                return _pure.store_rows(lines)
            PyList_Append(keys, <object>value)
    return rows, ";".join(keys).encode("ascii")


def parse_report(body):
    """Validate a whole report body (see ReportParser); raises ReportError for the first bad line."""
    parser = ReportParser()
    parser.feed(body)
    return parser.finish()
