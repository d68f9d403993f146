"""How often a damaged wire frame passes as valid: the frame check of protocol 1 (CRC-16) and of
protocol 2 (CRC-32), on frames damaged the ways a bad cable damages them.

    python -m edgebp.host.bench.wirefuzz [--frames 10000000] [--seconds 600] [--seed 1]
                                         [--max-payload 40] [--verify]

Frames of random length (0..max-payload payload bytes, a third of them zero, as in int16
samples) are COBS-encoded with their delimiter, damaged, and laid end to end as one byte
stream; the stream is cut at its zeros, as the board's decoder cuts it, and every piece is
decoded and checked. A piece that passes the check but is not one of the frames sent is a
false accept. Damage classes, one per frame:

    flip      1-4 bits flipped anywhere (the delimiter too)
    drop      1-2 bytes lost (a lost delimiter joins the frame to the next one)
    double    1-2 bytes received twice
    insert    1-2 random bytes inserted
    truncate  the frame cut short, then a delimiter (a flush)
    splice    the head of one frame, then the tail of another from a random byte
    cable     every byte lost, damaged or doubled with 2% chance each (host/boards/lossy.py),
              at least one byte damaged

Decoding, the CRCs and the damage are numpy-vectorised over batches of frames; --verify also
runs every piece through edgebp.wire.Decoder and an independent COBS decoder with zlib's and
binascii's CRCs, and stops at the first disagreement (slow: for small counts). It prints a
table: frames, pieces that reached the check, false accepts and their rate per piece checked.
"""

from __future__ import annotations

import argparse
import binascii
import sys
import time
import zlib

import numpy as np

from edgebp import wire

CLASSES = ["flip", "drop", "double", "insert", "truncate", "splice", "cable"]
CHECKS = {"crc16": 2, "crc32": 4}  # trailer bytes


def _tables():
    t16 = np.zeros(256, np.uint32)
    t32 = np.zeros(256, np.uint32)
    for i in range(256):
        c = i << 8
        for _ in range(8):
            c = ((c << 1) ^ 0x1021) & 0xFFFF if c & 0x8000 else (c << 1) & 0xFFFF
        t16[i] = c
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        t32[i] = c
    return t16, t32


T16, T32 = _tables()


def crc_rows(D: np.ndarray, n: np.ndarray, check: str) -> np.ndarray:
    """The CRC of D[i, :n[i]] for every row i (uint32)."""
    N, W = D.shape
    if check == "crc16":
        crc = np.full(N, 0xFFFF, np.uint32)
        for j in range(min(W, int(n.max(initial=0)))):
            nxt = ((crc << 8) & 0xFF00) ^ T16[((crc >> 8) ^ D[:, j]) & 0xFF]
            crc = np.where(j < n, nxt, crc)
        return crc
    crc = np.full(N, 0xFFFFFFFF, np.uint32)
    for j in range(min(W, int(n.max(initial=0)))):
        nxt = (crc >> 8) ^ T32[(crc ^ D[:, j]) & 0xFF]
        crc = np.where(j < n, nxt, crc)
    return crc ^ np.uint32(0xFFFFFFFF)


def make_frames(rng, N: int, max_payload: int, check: str):
    """(raw rows, raw lengths, encoded rows with delimiter, encoded lengths)."""
    T = CHECKS[check]
    L = rng.integers(0, max_payload + 1, N)
    n = 2 + L + T
    W = 2 + max_payload + T
    raw = rng.integers(1, 256, (N, W)).astype(np.uint8)
    raw[rng.random((N, W)) < 1 / 3] = 0
    kinds = np.array(sorted(wire.TYPE_NAMES), np.uint8)
    raw[:, 1] = kinds[rng.integers(0, len(kinds), N)]
    col = np.arange(W)
    raw[col >= (n - T)[:, None]] = 0
    crc = crc_rows(raw, n - T, check)
    rows = np.arange(N)
    for k in range(T):
        raw[rows, n - T + k] = (crc >> (8 * k)) & 0xFF
    # COBS (frames are shorter than 254 bytes: no full blocks): each zero, and a virtual one
    # at the end, becomes the distance to the next
    zero = (raw == 0) & (col < n[:, None])
    pos = np.where(zero, col, n[:, None])
    nxt = np.minimum.accumulate(np.concatenate([pos[:, 1:], n[:, None]], axis=1)[:, ::-1],
                                axis=1)[:, ::-1]
    first = np.where(zero.any(1), zero.argmax(1), n)
    enc = np.zeros((N, W + 2), np.uint8)
    enc[:, 0] = first + 1
    enc[:, 1:W + 1] = np.where(zero, nxt - col, raw)
    enc[np.arange(W + 2)[None, :] >= (n + 1)[:, None]] = 0  # the delimiter and padding
    return raw, n, enc, n + 2


def damage(rng, enc: np.ndarray, e: np.ndarray, cls: np.ndarray):
    """The damaged stream: (bytes, row of each byte, donor row of each row or -1)."""
    N, W = enc.shape
    col = np.arange(W)
    inside = col < e[:, None]
    flip = np.zeros((N, W), np.uint8)
    reps = inside.astype(np.int64)
    extra = np.zeros((N, W), np.uint8)  # xor on the second copy of a doubled byte

    def pick(mask_rows, k):
        # k[i] distinct positions in row i among its e[i] bytes, for the rows in mask_rows
        r = np.flatnonzero(mask_rows)
        keys = rng.random((len(r), W))
        keys[~inside[r]] = 2.0
        order = np.argsort(keys, axis=1)
        sel = np.arange(W)[None, :] < k[r, None]
        rr = np.repeat(r, sel.sum(1))
        return rr, order[sel]

    k12 = rng.integers(1, 3, N)
    kbits = np.minimum(rng.geometric(0.5, N), 4)
    r, c = pick(cls == 0, kbits)
    flip[r, c] ^= (1 << rng.integers(0, 8, len(r))).astype(np.uint8)
    r, c = pick(cls == 1, k12)
    reps[r, c] = 0
    r, c = pick(cls == 2, k12)
    reps[r, c] = 2
    r, c = pick(cls == 3, k12)
    reps[r, c] = 2
    extra[r, c] = rng.integers(1, 256, len(r))
    cut = np.floor(rng.random(N) * (e - 1)).astype(np.int64)  # keep bytes 0..cut-1
    t = cls == 4
    reps[t] = np.where((col[None, :] >= cut[t, None]) & (col[None, :] < (e[t] - 1)[:, None]),
                       0, reps[t])
    # the cable: every byte lost, damaged or doubled with 2% chance each
    cab = cls == 6
    u = rng.random((N, W))
    while True:
        hit = cab[:, None] & inside & (u < 0.06)
        none = cab & ~hit.any(1)
        if not none.any():
            break
        u[none] = rng.random((int(none.sum()), W))
    cab2 = cab[:, None] & inside
    reps[cab2 & (u < 0.02)] = 0
    m = cab2 & (u >= 0.02) & (u < 0.04)
    flip[m] ^= rng.integers(1, 256, int(m.sum())).astype(np.uint8)
    reps[cab2 & (u >= 0.04) & (u < 0.06)] = 2
    src = enc ^ flip
    # splices: row i's bytes before cut[i], then a donor row's bytes from a random point
    donor = np.full(N, -1)
    sp = np.flatnonzero(cls == 5)
    donor[sp] = rng.integers(0, N, len(sp))
    start = np.floor(rng.random(N) * (e - 1)).astype(np.int64)
    cut_sp = 1 + np.floor(rng.random(N) * (e - 1)).astype(np.int64)
    reps[sp] = np.where(col[None, :] < cut_sp[sp, None], reps[sp], 0)
    # lay the rows end to end; a splice's donor tail goes right after the splice's head
    counts = reps.sum(1)
    body = np.repeat(src.ravel(), reps.ravel())
    rows_of = np.repeat(np.repeat(np.arange(N), W), reps.ravel())
    # the second copy of a doubled byte takes `extra`
    cum = np.cumsum(reps.ravel()) - 1
    two = np.flatnonzero(reps.ravel() == 2)
    body[cum[two]] ^= extra.ravel()[two]
    ends = np.cumsum(counts)
    if len(sp):
        pieces = []
        rows = []
        prev = 0
        for i in sp:  # few: a Python loop over splices only
            pieces.append(body[prev:ends[i]])
            rows.append(rows_of[prev:ends[i]])
            d = donor[i]
            tail = enc[d, start[i]:e[d]]
            pieces.append(tail)
            rows.append(np.full(len(tail), i))
            prev = ends[i]
        pieces.append(body[prev:])
        rows.append(rows_of[prev:])
        body = np.concatenate(pieces)
        rows_of = np.concatenate(rows)
    return body, rows_of, donor


def cobs_rows(S: np.ndarray, m: np.ndarray):
    """COBS-decode each row S[i, :m[i]] (no zeros in it) as the board's Decoder does:
    (decoded rows, decoded lengths, ok) where not ok means the piece ended inside a block."""
    N, W = S.shape
    rows = np.arange(N)
    c = np.zeros(N, np.int64)
    prev = np.zeros(N, np.int64)
    M = np.zeros((N, W), bool)
    Z = np.zeros((N, W), bool)
    active = c < m
    while active.any():
        r = rows[active]
        cc = c[active]
        M[r, cc] = True
        Z[r, cc] = (cc > 0) & (prev[active] != 0xFF)
        code = S[r, cc].astype(np.int64)
        prev[active] = code
        c[active] = cc + code
        active = c < m
    ok = c == m
    col = np.arange(W)
    keep = (~M | Z) & (col[None, :] < m[:, None])
    V = np.where(M, 0, S)
    order = np.argsort(~keep, axis=1, kind="stable")
    D = np.take_along_axis(V, order, axis=1)
    n = keep.sum(1)
    D[col[None, :] >= n[:, None]] = 0
    return D, n, ok


def ref_cobs(seg: bytes):
    # COBS decoding as the paper defines it, byte by byte: (bytes, ok)
    out = bytearray()
    i = 0
    prev = 0
    while i < len(seg):
        code = seg[i]
        if i and prev != 0xFF:
            out.append(0)
        if i + code > len(seg):
            return bytes(out), False
        out += seg[i + 1:i + code]
        prev = code
        i += code
    return bytes(out), True


def run_batch(rng, N: int, max_payload: int, check: str, verify: bool):
    """Per class: (frames, pieces checked, false accepts)."""
    T = CHECKS[check]
    raw, n, enc, e = make_frames(rng, N, max_payload, check)
    cls = rng.integers(0, len(CLASSES), N)
    if verify:
        # the frames as sent decode to themselves, with wire.Decoder too
        for i in range(N):
            sent = bytes(enc[i, :e[i]])
            if check == "crc32" and sent != wire.frame(raw[i, 0], raw[i, 1],
                                                      bytes(raw[i, 2:n[i] - 4])):
                raise AssertionError(f"frame {i} is not wire.frame()'s")
            if ref_cobs(sent[:-1]) != (bytes(raw[i, :n[i]]), True):
                raise AssertionError(f"frame {i} does not decode")
    body, rows_of, donor = damage(rng, enc, e, cls)
    zeros = np.flatnonzero(body == 0)
    s0 = np.concatenate([[0], zeros[:-1] + 1])
    m = zeros - s0
    s0, m, zeros = s0[m > 0], m[m > 0], zeros[m > 0]
    W = int(m.max(initial=1))
    col = np.arange(W)
    idx = np.minimum(s0[:, None] + col[None, :], len(body) - 1)
    S = np.where(col[None, :] < m[:, None], body[idx], 0).astype(np.uint8)
    D, dn, ok = cobs_rows(S, m)
    checked = ok & (dn >= 2 + T)
    crc = crc_rows(D, np.maximum(dn - T, 0), check)
    rws = np.arange(len(D))
    tail = np.zeros(len(D), np.uint32)
    for k in range(T):
        tail |= D[rws, np.clip(dn - T + k, 0, W - 1)].astype(np.uint32) << np.uint32(8 * k)
    accept = checked & (crc == tail)
    # genuine: the piece is a frame that was sent (the row it starts in, ends in, or donated)
    Wr = raw.shape[1]

    def same(r):
        r = np.asarray(r)
        good = r >= 0
        rr = np.where(good, r, 0)
        eq = dn == n[rr]
        w = min(W, Wr)
        eq &= (D[:, :w] == raw[rr, :w]).all(1)
        return eq & good

    first = rows_of[s0]
    last = rows_of[zeros]
    genuine = same(first) | same(last) | same(donor[first]) | same(donor[last])
    false = accept & ~genuine
    owner = cls[last]
    if verify:
        _verify(S, m, D, dn, ok, accept, check)
    out = []
    for k in range(len(CLASSES)):
        sel = owner == k
        out.append((int((cls == k).sum()), int((checked & sel).sum()), int((false & sel).sum())))
    return out, body, false


def _verify(S, m, D, dn, ok, accept, check):
    T = CHECKS[check]
    dec = wire.Decoder(4096)
    for i in range(len(S)):
        seg = bytes(S[i, :m[i]])
        ref, rok = ref_cobs(seg)
        if rok != bool(ok[i]) or (rok and ref != bytes(D[i, :dn[i]])):
            raise AssertionError(f"COBS disagrees on {seg.hex()}")
        if not rok or len(ref) < 2 + T:
            want = False
        elif check == "crc16":
            want = binascii.crc_hqx(ref[:-2], 0xFFFF) == int.from_bytes(ref[-2:], "little")
        else:
            want = zlib.crc32(ref[:-4]) == int.from_bytes(ref[-4:], "little")
        if want != bool(accept[i]):
            raise AssertionError(f"{check} check disagrees on {seg.hex()}")
        if check == "crc32":
            dec.feed(seg + b"\x00", 0, len(seg) + 1)
            if (dec.result > 0) != want or (want and bytes(dec.frame[:dec.result]) != ref[:-4]):
                raise AssertionError(f"wire.Decoder disagrees on {seg.hex()}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=10_000_000, help="damaged frames per check")
    ap.add_argument("--seconds", type=float, default=900.0, help="stop each check after this")
    ap.add_argument("--batch", type=int, default=200_000)
    ap.add_argument("--max-payload", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--checks", default="crc16,crc32")
    ap.add_argument("--verify", action="store_true", help="cross-check every piece (slow)")
    a = ap.parse_args(argv)
    if not 0 <= a.max_payload <= 240:
        ap.error("--max-payload must lie in 0..240 (frames without full COBS blocks)")
    print(f"{'check':6} {'class':9} {'frames':>11} {'checked':>11} {'false':>7} "
          f"{'per checked':>12}")
    for check in a.checks.split(","):
        if check not in CHECKS:
            ap.error(f"unknown check {check!r}: crc16 or crc32")
        rng = np.random.default_rng(a.seed)
        totals = np.zeros((len(CLASSES), 3), np.int64)
        done = 0
        t0 = time.monotonic()
        while done < a.frames and time.monotonic() - t0 < a.seconds:
            N = min(a.batch, a.frames - done)
            per, _, _ = run_batch(rng, N, a.max_payload, check, a.verify)
            totals += np.array(per)
            done += N
        for k, name in enumerate(CLASSES):
            f, c, x = totals[k]
            print(f"{check:6} {name:9} {f:11,} {c:11,} {x:7,} {x / max(c, 1):12.2e}")
        f, c, x = totals.sum(0)
        print(f"{check:6} {'all':9} {f:11,} {c:11,} {x:7,} {x / max(c, 1):12.2e}"
              f"   ({time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
