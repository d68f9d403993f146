"""The wire fuzzer (host/bench/wirefuzz.py) keeps working: a tiny run cross-checked piece by
piece against edgebp.wire.Decoder, zlib and binascii, and the false accept it must find."""

import numpy as np

from edgebp.host.bench import wirefuzz


def test_a_small_run_agrees_with_the_decoder_on_every_piece(capsys):
    assert wirefuzz.main(["--frames", "1400", "--batch", "700", "--verify"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in out[1:]]
    assert [r[:2] for r in rows] == [[c, k] for c in ("crc16", "crc32")
                                     for k in wirefuzz.CLASSES + ["all"]]
    for r in rows:
        if r[1] == "all":
            assert r[2] == "1,400" and int(r[3].replace(",", "")) > 100


def test_the_doubled_code_byte_that_crc16_accepts_is_counted():
    # 04 d2 0a cf 01 01 with its last code byte doubled: d2 0a cf 00 00 00, a valid CRC-16
    for seg, crc16_ok in ((b"\x04\xd2\x0a\xcf\x01\x01", True),
                          (b"\x04\xd2\x0a\xcf\x01\x01\x01", True),
                          (b"\x04\xd2\x0a\xcf\x02\x05", False)):
        S = np.frombuffer(seg, np.uint8)[None, :]
        D, n, ok = wirefuzz.cobs_rows(S, np.array([len(seg)]))
        assert ok[0] and bytes(D[0, :n[0]]) == wirefuzz.ref_cobs(seg)[0]
        crc = wirefuzz.crc_rows(D, n - 2, "crc16")
        tail = int(D[0, n[0] - 2]) | int(D[0, n[0] - 1]) << 8
        assert (int(crc[0]) == tail) == crc16_ok
