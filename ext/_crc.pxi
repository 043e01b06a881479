# The EN 13757-4 CRC-16 (polynomial 0x3D65, init 0, final xor 0xFFFF) for the compiled twins:
# one table and one loop, included by ext/_cwire.pyx and ext/_cstream.pyx (needs uint16_t, uint32_t).

cdef uint16_t _TABLE[256]


cdef void _fill_table() noexcept:
    cdef int byte, bit
    cdef uint32_t crc
    for byte in range(256):
        crc = <uint32_t>byte << 8
        for bit in range(8):
            crc = ((crc << 1) ^ 0x3D65) if crc & 0x8000 else (crc << 1)
        _TABLE[byte] = <uint16_t>(crc & 0xFFFF)


_fill_table()


cdef inline uint16_t _crc_update(uint16_t crc, const unsigned char *p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        crc = <uint16_t>((crc << 8) ^ _TABLE[(crc >> 8) ^ p[i]])
    return crc
