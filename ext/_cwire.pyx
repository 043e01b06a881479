# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Compiled twin of ``wmbus_stream.wire._pywire`` (the readable specification).

Same public names, arguments, results, exception types and messages; ``tests/unit/test_twins.py``
holds the two twins to that with random and mutated input.

Strategy:

* Arguments are checked against ``wmbus_stream.wire.domain``, the one declared domain both
  twins share: exact ``bytes`` and plain ints in range are accepted here in C, anything else
  goes through the domain's validator, which refuses it (the same error as the pure twin) or
  returns the ``bytes`` or ``int`` to use. Past that point every value is in the domain, so
  the C code below needs no case the pure twin does not have.
* Every check runs on a ``const unsigned char *`` and a length. The checks are ``noexcept
  nogil`` C functions that return a detail code (``_E_*``) and, for CRC errors, the block
  number. Only the public single-frame functions turn a detail code into an exception, so
  ``check_batch`` never raises or catches inside its loop.
* CRC-16/EN-13757 uses a static 256-entry ``uint16_t`` table filled once at import.
* Frames are stripped into a stack buffer; a ``bytes`` object is allocated only for a
  telegram that passes the filters.
* ``Matcher`` keeps the filters as integer sets a C loop can test: a 32768-bit bitmap of
  15-bit manufacturer codes (``MANUFACTURER_MASK``), a 256-bit bitmap of device types and a
  sorted ``uint32_t`` array of IDs (binary search).
"""

from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.long cimport PyLong_AsLongAndOverflow, PyLong_CheckExact
from cpython.unicode cimport PyUnicode_CheckExact, PyUnicode_DecodeASCII
from libc.stdint cimport uint16_t, uint32_t
from libc.stdlib cimport free, malloc, qsort
from libc.string cimport memcpy, memset

from wmbus_stream.errors import ChecksumError, CrcError, HeaderError, LengthError
from wmbus_stream.wire import domain as _domain
from wmbus_stream.wire.domain import (
    CONTAINER_MAX,
    CRC,
    FILTER_DEVICE_TYPE,
    FILTER_ID,
    FILTER_MANUFACTURER,
    FILTER_MODE,
    FORMAT_A,
    FORMAT_B,
    FORMAT_NONE,
    HEADER,
    LENGTH,
    LONG_FORM,
    MANUFACTURER_MASK,
    OK,
)

__all__ = [
    "crc16",
    "strip_a",
    "strip_b",
    "check_telegram",
    "parse_header",
    "parse_cmex50",
    "rssi_code",
    "build_report",
    "Matcher",
    "check_batch",
    "OK", "CRC", "LENGTH", "HEADER", "FILTER_MANUFACTURER", "FILTER_DEVICE_TYPE", "FILTER_ID",
    "FILTER_MODE", "FORMAT_NONE", "FORMAT_A", "FORMAT_B", "MANUFACTURER_MASK", "CONTAINER_MAX",
    "LONG_FORM",
]

# The C code needs the domain's constants at compile time; the check below keeps them equal.
cdef enum:
    _MANUFACTURER_MASK = 0x7FFF
    _DEVICE_TYPE_MAX = 0xFF
    _MODE_MASK = 0xF
    _WIRED_ADDRESS_MAX = 0xFF
    _CONTAINER_MAX = 0xBF
    _LONG_FORM = 0x0F
    _FORMAT_NONE = 0
    _FORMAT_A = 1
    _FORMAT_B = 2

cdef enum:
    _OK = 0
    _CRC = 1
    _LENGTH = 2
    _FILTER_MANUFACTURER = 4
    _FILTER_DEVICE_TYPE = 5
    _FILTER_ID = 6
    _FILTER_MODE = 7

if ((_MANUFACTURER_MASK, _DEVICE_TYPE_MAX, _MODE_MASK, _WIRED_ADDRESS_MAX, _CONTAINER_MAX, _LONG_FORM,
     _FORMAT_NONE, _FORMAT_A, _FORMAT_B, _OK, _CRC, _LENGTH, _FILTER_MANUFACTURER, _FILTER_DEVICE_TYPE,
     _FILTER_ID, _FILTER_MODE)
        != (MANUFACTURER_MASK, _domain.DEVICE_TYPE_MAX, _domain.MODE_MASK, _domain.WIRED_ADDRESS_MAX,
            CONTAINER_MAX, LONG_FORM, FORMAT_NONE, FORMAT_A, FORMAT_B, OK, CRC, LENGTH, FILTER_MANUFACTURER,
            FILTER_DEVICE_TYPE, FILTER_ID, FILTER_MODE)):
    raise ImportError("ext/_cwire.pyx is out of date with wmbus_stream.wire.domain; rebuild it")

# Detail codes of the C checks: which rule failed, so the public functions can raise the
# same exception with the same message as the pure twin.
cdef enum:
    _E_NONE = 0
    _E_A_SHORT = 1
    _E_A_LMIN = 2
    _E_A_LEN = 3
    _E_A_CRC = 4
    _E_B_SHORT = 5
    _E_B_LEN = 6
    _E_B_EMPTY3 = 7
    _E_B_CRC2 = 8
    _E_B_CRC3 = 9
    _E_T_SHORT = 10
    _E_T_LEN = 11

cdef enum:
    _MAX_TELEGRAM = 256  # the longest telegram or stripped frame: L is one byte, plus L itself

include "_crc.pxi"


cdef inline bint _crc_ok(const unsigned char *p, Py_ssize_t n) noexcept nogil:
    # The stored CRC follows the block, high byte first.
    return (_crc_update(0, p, n) ^ 0xFFFF) == ((<uint16_t>p[n] << 8) | p[n + 1])


cdef inline int _result_of(int detail) noexcept nogil:
    if detail == _E_A_CRC or detail == _E_B_CRC2 or detail == _E_B_CRC3:
        return _CRC
    return _LENGTH


cdef int _strip_a(const unsigned char *f, Py_ssize_t n, unsigned char *out, Py_ssize_t *out_n,
                  int *block) noexcept nogil:
    cdef Py_ssize_t length, expected, pos, o, remaining, size
    cdef int b
    if n < 12:
        return _E_A_SHORT
    length = f[0]
    if length < 10:
        return _E_A_LMIN
    expected = 1 + length + 2 * (1 + ((length - 9 + 15) >> 4))
    if n != expected:
        return _E_A_LEN
    if not _crc_ok(f, 10):
        block[0] = 1
        return _E_A_CRC
    memcpy(out, f, 10)
    pos, o, b, remaining = 12, 10, 2, length - 9
    while remaining > 0:
        size = 16 if remaining > 16 else remaining
        if not _crc_ok(f + pos, size):
            block[0] = b
            return _E_A_CRC
        memcpy(out + o, f + pos, size)
        o += size
        pos += size + 2
        remaining -= size
        b += 1
    out_n[0] = o
    return _E_NONE


cdef int _strip_b(const unsigned char *f, Py_ssize_t n, unsigned char *out, Py_ssize_t *out_n,
                  int *block) noexcept nogil:
    if n < 13:
        return _E_B_SHORT
    if f[0] != n - 1:
        return _E_B_LEN
    if n <= 128:
        if not _crc_ok(f, n - 2):
            block[0] = 2
            return _E_B_CRC2
        memcpy(out, f, n - 2)
        out_n[0] = n - 2
    else:
        if n < 131:
            return _E_B_EMPTY3
        if not _crc_ok(f, 126):
            block[0] = 2
            return _E_B_CRC2
        if not _crc_ok(f + 128, n - 130):
            block[0] = 3
            return _E_B_CRC3
        memcpy(out, f, 126)
        memcpy(out + 126, f + 128, n - 130)
        out_n[0] = n - 4
    # Rewrite L to the format-A meaning (bytes after L without CRCs).
    out[0] = <unsigned char>(out_n[0] - 1)
    return _E_NONE


cdef inline int _check_telegram(const unsigned char *t, Py_ssize_t n) noexcept nogil:
    if n < 11:
        return _E_T_SHORT
    if t[0] != n - 1:
        return _E_T_LEN
    return _E_NONE


cdef object _frame_error(int detail, int block, const unsigned char *f, Py_ssize_t n):
    """The exception the pure twin raises for a detail code (messages kept identical)."""
    cdef int length = f[0] if n > 0 else 0
    if detail == _E_A_SHORT:
        return LengthError(f"format A frame of {n} bytes is shorter than the 12-byte first block")
    if detail == _E_A_LMIN:
        return LengthError(f"L-field {length} is below 10 (link header + CI)")
    if detail == _E_A_LEN:
        return LengthError(
            f"format A frame has {n} bytes but L-field {length} needs "
            f"{1 + length + 2 * (1 + (length - 9 + 15) // 16)}"
        )
    if detail == _E_A_CRC:
        return CrcError(f"CRC error in block {block} (format A)")
    if detail == _E_B_SHORT:
        return LengthError(f"format B frame of {n} bytes is shorter than 13 (header, CI, CRC)")
    if detail == _E_B_LEN:
        return LengthError(f"format B frame has {n} bytes but L-field {length} needs {length + 1}")
    if detail == _E_B_EMPTY3:
        return LengthError(f"format B frame of {n} bytes leaves an empty block 3")
    if detail == _E_B_CRC2:
        return CrcError("CRC error in block 2 (format B, blocks 1-2)")
    if detail == _E_B_CRC3:
        return CrcError("CRC error in block 3 (format B)")
    if detail == _E_T_SHORT:
        return LengthError(f"telegram of {n} bytes is shorter than 11 (L, link header, CI)")
    if detail == _E_T_LEN:
        return LengthError(f"telegram has {n} bytes but L-field {length} needs {length + 1}")
    return LengthError(f"frame of {n} bytes is invalid")


# -- the domain at the boundary: C accepts the common case, the domain module decides the rest --


cdef inline bytes _data(object value, str name):
    """``value`` itself when it is exact ``bytes``, else what ``domain.data`` makes of it (or raises)."""
    if PyBytes_CheckExact(value):
        return <bytes>value
    return _domain.data(value, name)


cdef inline long _integer(object value, str name, long low, long high) except? -1:
    """``value`` as a C long when it is a plain int in ``low..high``, else ``domain.integer``'s answer."""
    cdef int overflow = 0
    cdef long number
    if PyLong_CheckExact(value):
        number = PyLong_AsLongAndOverflow(value, &overflow)
        if not overflow and low <= number <= high:
            return number
    return _domain.integer(value, name, low, high)


def crc16(data, start=0, end=None):
    """CRC-16/EN-13757 (poly 0x3D65, init 0, final complement) of ``data[start:end]``, 0 <= start <= end <= len."""
    cdef bytes buf = _data(data, "data")
    cdef Py_ssize_t n = PyBytes_GET_SIZE(buf), first, last
    if end is None and PyLong_CheckExact(start) and start == 0:
        first, last = 0, n
    else:
        first, last = _domain.crc_range(start, end, n)
    return _crc_update(0, <const unsigned char *>PyBytes_AS_STRING(buf) + first, last - first) ^ 0xFFFF


def strip_a(frame):
    """Check every CRC of a frame-format-A frame and return the telegram without them."""
    cdef bytes buf = _data(frame, "frame")
    cdef unsigned char out[_MAX_TELEGRAM]
    cdef Py_ssize_t n = PyBytes_GET_SIZE(buf), out_n = 0
    cdef int block = 0
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(buf)
    cdef int detail = _strip_a(p, n, out, &out_n, &block)
    if detail:
        raise _frame_error(detail, block, p, n)
    return PyBytes_FromStringAndSize(<char *>out, out_n)


def strip_b(frame):
    """Check the CRCs of a frame-format-B frame; return the telegram with L in format-A meaning."""
    cdef bytes buf = _data(frame, "frame")
    cdef unsigned char out[_MAX_TELEGRAM]
    cdef Py_ssize_t n = PyBytes_GET_SIZE(buf), out_n = 0
    cdef int block = 0
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(buf)
    cdef int detail = _strip_b(p, n, out, &out_n, &block)
    if detail:
        raise _frame_error(detail, block, p, n)
    return PyBytes_FromStringAndSize(<char *>out, out_n)


def check_telegram(telegram):
    """Check the L-field of a telegram without link CRCs; return it (as ``bytes``)."""
    cdef bytes buf = _data(telegram, "telegram")
    cdef Py_ssize_t n = PyBytes_GET_SIZE(buf)
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(buf)
    cdef int detail = _check_telegram(p, n)
    if detail:
        raise _frame_error(detail, 0, p, n)
    return buf


cdef const char *_HEX = b"0123456789ABCDEF"


cdef inline str _bcd4(const unsigned char *p):
    """Eight hex digits of 4 bytes stored least significant first (meter ID, receiver address)."""
    cdef char text[8]
    cdef int i
    for i in range(4):
        text[2 * i] = _HEX[p[3 - i] >> 4]
        text[2 * i + 1] = _HEX[p[3 - i] & 0x0F]
    return PyUnicode_DecodeASCII(text, 8, NULL)


cdef inline object _require_header(Py_ssize_t n):
    if n < 11:
        raise LengthError(f"telegram of {n} bytes is shorter than 11 (L, link header, CI)")


def parse_header(telegram):
    """Link header of a checked telegram: (C, 15-bit manufacturer code, ID, version, device type, CI)."""
    cdef bytes buf = _data(telegram, "telegram")
    cdef const unsigned char *t = <const unsigned char *>PyBytes_AS_STRING(buf)
    _require_header(PyBytes_GET_SIZE(buf))
    return (t[1], (t[2] | (t[3] << 8)) & _MANUFACTURER_MASK, _bcd4(t + 4), t[8], t[9], t[10])


def parse_cmex50(frame):
    """Check a wired M-Bus long frame from a CMeX50-style receiver.

    Returns (body from C to the last data byte, receiver address or None, age in minutes or
    None, RSSI code or None, the wireless telegram of its 0D FD 3B container or 0F long form).
    """
    cdef bytes buf = _data(frame, "frame")
    cdef Py_ssize_t n = PyBytes_GET_SIZE(buf)
    cdef const unsigned char *f = <const unsigned char *>PyBytes_AS_STRING(buf)
    cdef const unsigned char *body
    cdef const unsigned char *t
    cdef Py_ssize_t length, pos, end, size, rest, start, i
    cdef unsigned int total = 0
    cdef int detail
    if n < 9 or f[0] != 0x68 or f[3] != 0x68 or f[1] != f[2]:
        raise LengthError("not a wired M-Bus long frame (68 L L 68)")
    length = f[1]
    if n != length + 6:
        raise LengthError(f"long frame has {n} bytes but L-field {length} needs {length + 6}")
    if f[n - 1] != 0x16:
        raise ChecksumError(f"long frame ends with 0x{f[n - 1]:02X}, not the stop byte 0x16")
    for i in range(4, n - 2):
        total += f[i]
    if (total & 0xFF) != f[n - 2]:
        raise ChecksumError(f"long frame checksum 0x{f[n - 2]:02X} is wrong")
    body = f + 4
    end = n - 6
    if body[0] != 0x08 or body[2] != 0x72:
        raise HeaderError(f"long frame is C=0x{body[0]:02X} CI=0x{body[2]:02X}, not RSP_UD 08/72")
    if end < 15:
        raise LengthError(f"RSP_UD body of {end} bytes is shorter than its 15-byte header")
    address = age = rssi = None
    pos = 15
    while pos < end:
        if body[pos] == 0x0C and pos + 6 <= end and body[pos + 1] == 0x78:
            address = _bcd4(body + pos + 2)
            pos += 6
        elif body[pos] == 0x02 and pos + 4 <= end and body[pos + 1] == 0x75:
            age = body[pos + 2] | (body[pos + 3] << 8)
            pos += 4
        elif body[pos] == 0x01 and pos + 4 <= end and body[pos + 1] == 0xFD and body[pos + 2] == 0x71:
            rssi = body[pos + 3]
            pos += 4
        elif body[pos] == 0x0D and pos + 4 <= end and body[pos + 1] == 0xFD and body[pos + 2] == 0x3B:
            size = body[pos + 3]
            if pos + 4 + size > end:
                raise LengthError(f"container of {size} bytes runs past the frame end")
            rest = end - (pos + 4 + size)
            if rest > 1 or (rest == 1 and body[end - 1] != 0x0F and body[end - 1] != 0x1F):
                raise HeaderError(f"{rest} unexpected bytes after the container record")
            start = pos + 4
            break
        elif body[pos] == _LONG_FORM:
            start = pos + 1
            size = end - start
            break
        else:
            raise HeaderError(
                f"unexpected record 0x{body[pos]:02X} at offset {pos}; expected 0C78, 0275, 01FD71, 0DFD3B or 0F"
            )
    else:
        raise HeaderError("long frame has no 0D FD 3B container or 0F long-form record")
    t = body + start
    detail = _check_telegram(t, size)
    if detail:
        raise _frame_error(detail, 0, t, size)
    # The telegram's M, ID, version and type must be the wired header's ID, M, version, type.
    if (t[2] != body[7] or t[3] != body[8] or t[4] != body[3] or t[5] != body[4]
            or t[6] != body[5] or t[7] != body[6] or t[8] != body[9] or t[9] != body[10]):
        raise HeaderError("container telegram's address does not match the wired header")
    return (PyBytes_FromStringAndSize(<char *>body, end), address, age, rssi,
            PyBytes_FromStringAndSize(<char *>t, size))


cdef int _rssi_code(object rssi_dbm) except -1:
    """The code of an RSSI in the domain (None or any int)."""
    cdef int overflow = 0
    cdef long dbm
    if rssi_dbm is None:
        return 0
    if not PyLong_CheckExact(rssi_dbm):
        rssi_dbm = _domain.rssi(rssi_dbm)  # an int subclass becomes an int; anything else raises
    dbm = PyLong_AsLongAndOverflow(rssi_dbm, &overflow)
    if overflow > 0 or (not overflow and dbm > -6):
        return 63
    if overflow < 0 or dbm <= -128:
        return 1
    return (dbm + 131) >> 1  # dbm + 131 > 0 here, so the shift is floor division


def rssi_code(rssi_dbm):
    """CMeX50 RSSI code: 0 unknown, 1..62 for dBm = 2*code - 130, 63 above -6 dBm."""
    return _rssi_code(rssi_dbm)


cdef inline int _nibble(Py_UCS4 ch) noexcept:
    cdef long c = <long>ch
    if 48 <= c <= 57:  # 0-9
        return c - 48
    if 65 <= c <= 70:  # A-F
        return c - 55
    if 97 <= c <= 102:  # a-f
        return c - 87
    return -1


cdef bint _receiver_address(object value, unsigned char *out) except -1:
    """Whether there is a receiver address; if so its 4 record bytes (least significant first) in ``out``."""
    cdef str text
    cdef int i, high, low
    if value is None:
        return False
    if PyUnicode_CheckExact(value) and len(<str>value) == 8:
        text = <str>value
        for i in range(4):
            high, low = _nibble(text[2 * i]), _nibble(text[2 * i + 1])
            if high < 0 or low < 0:
                break
            out[3 - i] = <unsigned char>((high << 4) | low)
        else:
            return True
    memcpy(out, PyBytes_AS_STRING(_domain.receiver_address(value)), 4)  # refuses what is not an address
    return True


def build_report(telegram, receiver_address, rssi_dbm, wired_address):
    """The wired RSP_UD telegram of the report (spec section 5) for a checked wireless telegram.

    ``receiver_address`` is 8 digits or None, ``wired_address`` 0..255. Telegrams longer than
    CONTAINER_MAX bytes follow LONG_FORM instead of a container record.
    """
    cdef bytes buf = _data(telegram, "telegram")
    cdef unsigned char address[4]
    cdef bint has_address = _receiver_address(receiver_address, address)
    cdef unsigned char code = _rssi_code(rssi_dbm)
    cdef unsigned char wired = _integer(wired_address, "wired_address", 0, _WIRED_ADDRESS_MAX)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(buf), size, o
    cdef const unsigned char *t = <const unsigned char *>PyBytes_AS_STRING(buf)
    cdef bytes out
    cdef unsigned char *w
    if n < 11 or n > 255:
        raise LengthError(f"telegram of {n} bytes does not fit the container (11..255)")
    size = 15 + (6 if has_address else 0) + 4 + (4 if n <= _CONTAINER_MAX else 1) + n
    out = PyBytes_FromStringAndSize(NULL, size)
    w = <unsigned char *>PyBytes_AS_STRING(out)
    w[0], w[1], w[2] = 0x08, wired, 0x72
    memcpy(w + 3, t + 4, 4)   # ID
    memcpy(w + 7, t + 2, 2)   # manufacturer
    memcpy(w + 9, t + 8, 2)   # version, device type
    memset(w + 11, 0, 4)      # access number, status, signature
    o = 15
    if has_address:
        w[o], w[o + 1] = 0x0C, 0x78
        memcpy(w + o + 2, address, 4)
        o += 6
    w[o], w[o + 1], w[o + 2], w[o + 3] = 0x01, 0xFD, 0x71, code
    o += 4
    if n <= _CONTAINER_MAX:
        w[o], w[o + 1], w[o + 2], w[o + 3] = 0x0D, 0xFD, 0x3B, <unsigned char>n
        o += 4
    else:
        w[o] = _LONG_FORM
        o += 1
    memcpy(w + o, t, n)
    return out


cdef int _cmp_u32(const void *a, const void *b) noexcept nogil:
    cdef uint32_t x = (<const uint32_t *>a)[0], y = (<const uint32_t *>b)[0]
    return (x > y) - (x < y)


cdef class Matcher:
    """The four filters of spec section 4 compiled to integer sets; empty means no filter.

    ``manufacturers`` holds 15-bit manufacturer codes (0..MANUFACTURER_MASK), ``device_types``
    bytes, ``ids`` the 4 ID bytes read little-endian, ``modes`` a radio-mode mask (0..MODE_MASK).
    """

    cdef readonly frozenset manufacturers
    cdef readonly frozenset device_types
    cdef readonly frozenset ids
    cdef readonly object modes
    cdef long _modes
    cdef bint _has_manufacturers, _has_device_types, _has_ids
    cdef unsigned char _manufacturer_bits[4096]
    cdef unsigned char _device_type_bits[32]
    cdef uint32_t *_ids
    cdef Py_ssize_t _id_count

    def __cinit__(self, *args, **kwargs):
        self._ids = NULL
        self._id_count = 0

    def __dealloc__(self):
        free(self._ids)

    def __init__(self, manufacturers, device_types, ids, modes):
        cdef Py_ssize_t count = 0
        cdef long k
        cdef uint32_t key
        self.manufacturers = _domain.codes(manufacturers, "manufacturers", _MANUFACTURER_MASK)
        self.device_types = _domain.codes(device_types, "device_types", _DEVICE_TYPE_MAX)
        self.ids = _domain.codes(ids, "ids", _domain.ID_MAX)
        self.modes = _domain.integer(modes, "modes", 0, _MODE_MASK)
        self._modes = self.modes
        self._has_manufacturers = len(self.manufacturers) > 0
        self._has_device_types = len(self.device_types) > 0
        self._has_ids = len(self.ids) > 0
        memset(self._manufacturer_bits, 0, sizeof(self._manufacturer_bits))
        memset(self._device_type_bits, 0, sizeof(self._device_type_bits))
        for k in self.manufacturers:
            self._manufacturer_bits[k >> 3] |= 1 << (k & 7)
        for k in self.device_types:
            self._device_type_bits[k >> 3] |= 1 << (k & 7)
        free(self._ids)
        self._ids = <uint32_t *>malloc((len(self.ids) + 1) * sizeof(uint32_t))
        if self._ids == NULL:
            raise MemoryError()
        for key in self.ids:
            self._ids[count] = key
            count += 1
        qsort(self._ids, count, sizeof(uint32_t), _cmp_u32)
        self._id_count = count

    def __repr__(self):
        return (f"Matcher(manufacturers={set(self.manufacturers)!r}, device_types={set(self.device_types)!r}, "
                f"ids={len(self.ids)} ids, modes={self.modes!r})")

    cdef inline bint _has_id(self, uint32_t key) noexcept nogil:
        cdef Py_ssize_t lo = 0, hi = self._id_count, mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if self._ids[mid] < key:
                lo = mid + 1
            else:
                hi = mid
        return lo < self._id_count and self._ids[lo] == key

    cdef int _verdict(self, const unsigned char *t, long mode) noexcept nogil:
        """The verdict on a telegram of at least 11 bytes (every caller checks that first)."""
        cdef unsigned int code
        if self._has_manufacturers:
            code = (t[2] | (t[3] << 8)) & _MANUFACTURER_MASK
            if not (self._manufacturer_bits[code >> 3] >> (code & 7)) & 1:
                return _FILTER_MANUFACTURER
        if self._has_device_types:
            if not (self._device_type_bits[t[9] >> 3] >> (t[9] & 7)) & 1:
                return _FILTER_DEVICE_TYPE
        if self._has_ids:
            if not self._has_id(t[4] | (<uint32_t>t[5] << 8) | (<uint32_t>t[6] << 16) | (<uint32_t>t[7] << 24)):
                return _FILTER_ID
        if self._modes and mode and not (mode & self._modes):
            return _FILTER_MODE
        return _OK

    def __reduce__(self):
        return (Matcher, (self.manufacturers, self.device_types, self.ids, self.modes))

    def verdict(self, telegram, mode):
        """0 when accepted, else the result code of the first filter that rejects."""
        cdef bytes buf = _data(telegram, "telegram")
        cdef long c_mode = _integer(mode, "mode", 0, _MODE_MASK)
        _require_header(PyBytes_GET_SIZE(buf))
        return self._verdict(<const unsigned char *>PyBytes_AS_STRING(buf), c_mode)


def check_batch(frames, frame_format, matcher, mode=0):
    """Check and filter a sequence of frames of one FORMAT_*; result codes and the accepted telegrams."""
    cdef tuple items = tuple(_domain.frames(frames))  # a snapshot: the loop below reads it unchecked
    cdef int fmt = _integer(frame_format, "frame_format", _FORMAT_NONE, _FORMAT_B)
    cdef Matcher fast = matcher if type(matcher) is Matcher else _domain.matcher(matcher, Matcher)
    cdef long c_mode = _integer(mode, "mode", 0, _MODE_MASK)
    cdef Py_ssize_t count = len(items), i, n, out_n
    cdef int detail, block, result
    cdef unsigned char out[_MAX_TELEGRAM]
    cdef const unsigned char *p
    cdef unsigned char *codes_p
    cdef bytes buf
    cdef list telegrams = [None] * count
    codes = bytearray(count)
    codes_p = <unsigned char *>PyByteArray_AS_STRING(codes)
    for i in range(count):
        frame = items[i]
        buf = <bytes>frame if PyBytes_CheckExact(frame) else _domain.data(frame, f"frames[{i}]")
        p = <const unsigned char *>PyBytes_AS_STRING(buf)
        n = PyBytes_GET_SIZE(buf)
        block = 0
        out_n = n
        if fmt == _FORMAT_A:
            detail = _strip_a(p, n, out, &out_n, &block)
        elif fmt == _FORMAT_B:
            detail = _strip_b(p, n, out, &out_n, &block)
        else:
            detail = _check_telegram(p, n)
        if detail:
            codes_p[i] = _result_of(detail)
            continue
        # A checked telegram has at least 11 bytes, all _verdict reads.
        result = fast._verdict(p if fmt == _FORMAT_NONE else out, c_mode)
        codes_p[i] = result
        if result == _OK:
            telegrams[i] = buf if fmt == _FORMAT_NONE else PyBytes_FromStringAndSize(<char *>out, out_n)
    return bytes(codes), telegrams
