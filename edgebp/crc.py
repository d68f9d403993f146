# CRC-16 (CCITT: poly 0x1021, init 0xFFFF, no final xor) of the file formats, edgebp/ebp.py
# and edgebp/ckpt.py. Apart from the wire codec (edgebp/wire.py re-exports it), so that a
# board that only loads and runs a net (edgebp deploy --infer) needs no wire codec.


def _make_table():
    from array import array

    t = array("H", bytes(512))
    for i in range(256):
        c = i << 8
        for _ in range(8):
            c = ((c << 1) ^ 0x1021) if c & 0x8000 else (c << 1)
            c &= 0xFFFF
        t[i] = c
    return t


CRC_TABLE = _make_table()


def crc16(buf, start, end, crc=0xFFFF):
    t = CRC_TABLE
    for i in range(start, end):
        crc = ((crc << 8) & 0xFF00) ^ t[((crc >> 8) ^ buf[i]) & 0xFF]
    return crc
