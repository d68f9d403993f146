# Dataset files on the device (edgebp/dataset.py): a file the host wrote reads back record for
# record in the order the host's epoch_order draws, a record is read without allocating, and
# a damaged, torn or out-of-range file is refused naming what is wrong. data_fixture (made by
# tests/test_ondata.py) holds the file, its records and the expected order.
import os
import sys

import data_fixture as fx

from devtest import ALLOC_CHECKED, no_alloc, skip
from edgebp import dataset
from edgebp.net import zeros

NAME = "dset_dev.ebd"


def _write(blob):
    f = open(NAME, "wb")
    try:
        f.write(blob)
    finally:
        f.close()


def _records(d, state):
    # every record of the order drawn from `state`, as one flat list
    x = zeros("h", fx.N_IN)
    t = zeros("h", fx.N_T)
    d.order(state)
    out = []
    f = open(NAME, "rb")
    try:
        for k in range(d.n):
            d.read(f, k, x, t)
            out += list(x) + list(t)
    finally:
        f.close()
    return out


def _refused(blob, words):
    _write(blob)
    try:
        dataset.Data(NAME, fx.N_IN, fx.N_T, fx.N_OUT)
    except dataset.DataError as e:
        assert words in str(e), str(e)
        return
    raise AssertionError("accepted a file with " + words)


def test_records_come_back_in_the_hosts_order():
    _write(fx.BLOB)
    d = dataset.Data(NAME, fx.N_IN, fx.N_T, fx.N_OUT)
    assert d.n == fx.N and d.size == len(fx.BLOB)
    assert bytes(d.tag) == fx.TAG
    assert _records(d, 0) == list(fx.RECORDS), "file order"
    rec = fx.N_IN + fx.N_T
    want = []
    for i in fx.ORDER:
        want += fx.RECORDS[i * rec:(i + 1) * rec]
    assert _records(d, fx.STATE) == want, "the shuffled order is not epoch_order's"
    os.remove(NAME)


def _cold_read_allocates():
    # Whether the filesystem itself allocates to read bytes not in its cache: the emulated
    # boards' block device is Python (their _boot.py slices a memoryview per block read);
    # rp2, esp32 and stm32 read their flash in C. (Not probed under heap_lock: a MemoryError
    # inside littlefs's read would leave its caches half-filled.)
    return ALLOC_CHECKED and sys.platform == "qemu"


def _open_ordered():
    _write(fx.BLOB)
    d = dataset.Data(NAME, fx.N_IN, fx.N_T, fx.N_OUT)
    d.order(fx.STATE)
    return d, zeros("h", fx.N_IN), zeros("h", fx.N_T)


def _is_record(x, t, k):
    rec = fx.N_IN + fx.N_T
    i = fx.ORDER[k]
    assert list(x) + list(t) == list(fx.RECORDS[i * rec:(i + 1) * rec]), k


def test_reading_a_record_allocates_nothing():
    if _cold_read_allocates():
        skip("this filesystem allocates to read its flash (a Python block device): "
             "test_a_cached_record_reads_without_allocating covers edgebp's part")
    d, x, t = _open_ordered()
    f = open(NAME, "rb")
    try:
        for k in (fx.N - 1, 3, 0, fx.N // 2):
            no_alloc(d.read, f, k, x, t)
            _is_record(x, t, k)
        no_alloc(d.order, fx.STATE)
    finally:
        f.close()
        os.remove(NAME)


def test_a_cached_record_reads_without_allocating():
    # the record's bytes already in the file's cache: seek, readinto and edgebp's own code
    d, x, t = _open_ordered()
    f = open(NAME, "rb")
    try:
        for k in (fx.N - 1, 0):
            d.read(f, k, x, t)
            no_alloc(d.read, f, k, x, t)
            _is_record(x, t, k)
        no_alloc(d.order, fx.STATE)
    finally:
        f.close()
        os.remove(NAME)


def test_the_servers_training_loop_allocates_nothing():
    # Server.learn_data, DATASET's loop: a record read, a step, for every record
    if _cold_read_allocates():
        skip("this filesystem allocates to read its flash (a Python block device)")
    from edgebp import ebp
    from edgebp.firmware.server import Server

    class Null:
        def readinto(self, buf, n):
            return 0

        def write(self, buf, n):
            return n

    s = Server(Null(), None, 256, 2, "test")
    net = ebp.load(fx.NET, s.kernels)
    s.install(net)
    d, x, t = _open_ordered()
    f = open(NAME, "rb")
    try:
        assert no_alloc(s.learn_data, 0, net, f, d, 0, fx.N)
        assert s.samples_in == fx.N and s.updates == fx.N // fx.BATCH
    finally:
        f.close()
        os.remove(NAME)
    s.close()


def test_damaged_torn_and_out_of_range_files_are_refused():
    blob = fx.BLOB
    bad = bytearray(blob)
    bad[fx.LAST_BLOCK + 5] ^= 0x01
    _refused(bytes(bad), "is damaged: its CRC fails")
    _refused(blob[0:len(blob) - 1], "is torn")
    _refused(blob[0:fx.LAST_BLOCK + 1], "is torn")
    bad = bytearray(blob)
    bad[3] ^= 0x20
    _refused(bytes(bad), "not an edgebp dataset")
    bad = bytearray(blob)
    bad[12] ^= 0x20
    _refused(bytes(bad), "damaged header")
    _refused(fx.MIN16, "-32768")
    _refused(fx.BIG_CLASS, "class index")
    _write(blob)
    try:
        dataset.Data(NAME, fx.N_IN + 1, fx.N_T)
    except dataset.DataError as e:
        assert "the net takes" in str(e)
    else:
        raise AssertionError("accepted samples of another width")
    os.remove(NAME)
