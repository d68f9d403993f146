"""Write and read .ebp net files (the layout is documented in edgebp/ebp.py).

The board part is parsed here by the board's own parser (`edgebp.ebp.Loader`), so a file the
host accepts is exactly a file the board accepts, with the same error messages. What only the
host needs (float input normalisation, class names, the float hyper-parameters) goes in an
optional trailer after the board part, which boards never read:

    b"EBPH"  u32 length  UTF-8 JSON (length bytes)  u32 CRC-32 of the JSON
"""

from __future__ import annotations

import binascii
import json
import math
import struct
from dataclasses import asdict
from pathlib import Path

import numpy as np

from edgebp import ebp, fixed
from edgebp.ebp import EbpError
from edgebp.host.nets.inmap import InputMap
from edgebp.host.nets.qnet import Hyper, QuantNet
from edgebp.wire import crc16

__all__ = ["EbpError", "to_bytes", "write", "read", "from_bytes", "board_part", "hyper_block"]

TRAILER_MAGIC = b"EBPH"
_SEED_MASK = 0x3FFFFFFF


def _field(value: int, lo: int, hi: int, what: str) -> int:
    if not lo <= value <= hi:
        raise EbpError(f"{what} {value} outside {lo}..{hi}")
    return value


def hyper_block(hyper: Hyper) -> bytes:
    """The 12-byte fixed-point hyper block of the .ebp header and of SET_HYPER."""
    try:
        h = hyper.fixed()
    except ValueError as e:
        raise EbpError(f"hyper-parameters: {e}") from None
    return struct.pack(
        "<BBBBBBHI",
        _field(h["lr_m"], 0, 255, "learning-rate mantissa"),
        _field(h["lr_e"], 0, 255, "learning-rate exponent"),
        _field(h["mu"], 0, 255, "momentum"),
        _field(h["c_m"], 0, 255, "weight-decay mantissa"),
        _field(h["c_e"], 0, 255, "weight-decay exponent"),
        h["mode"],
        _field(h["batch"], 1, 65535, "batch"),
        h["seed"] & _SEED_MASK,
    )


def board_part(qnet: QuantNet, hyper: Hyper | None = None) -> bytes:
    """The part of the file a board loads: header, layer table, parameters, CRCs."""
    L = qnet.L
    sizes = [int(n) for n in qnet.sizes]
    _field(L, 1, ebp.MAX_LAYERS, "layer count")
    for l, n in enumerate(sizes):
        _field(n, 1, ebp.MAX_WIDTH, "input width" if l == 0 else f"layer {l} width")
    for name in ("acts", "shift_w", "shift_d"):
        if len(getattr(qnet, name)) != L:
            raise EbpError(f"{name} has {len(getattr(qnet, name))} entries for {L} layers")
    if len(qnet.shift_a) != L + 1:
        raise EbpError(f"shift_a has {len(qnet.shift_a)} entries for {L + 1} activations")
    imap = qnet.in_map
    if imap is not None and imap.n != sizes[0]:
        raise EbpError(f"input map of {imap.n} inputs for a net of {sizes[0]}")
    adam = qnet.adam
    if adam is not None:
        if qnet.momentum:
            raise EbpError("Adam and momentum buffers together: Adam takes the place of "
                           "momentum")
        if len(adam) != 2:
            raise EbpError(f"Adam settings {adam!r} are not (c1, c2)")
        _field(adam[0], 0, 65535, "Adam c1")
        _field(adam[1], 0, 65535, "Adam c2")
    sdlm = qnet.sdlm
    if sdlm is not None:
        if qnet.momentum:
            raise EbpError("SDLM and momentum buffers together: SDLM takes the place of "
                           "momentum")
        if adam is not None:
            raise EbpError("Adam and SDLM together: a net has one optimiser")
        if len(sdlm) != 5 or len(sdlm[3]) != L or len(sdlm[4]) != L:
            raise EbpError(f"SDLM settings {sdlm!r} are not (mu_m, mu_e, gamma, fc, fh) with "
                           f"formats for {L} layers")
        _field(sdlm[0], 0, 255, "SDLM mu mantissa")
        _field(sdlm[1], 0, 255, "SDLM mu exponent")
        _field(sdlm[2], 0, 65535, "SDLM gamma")
        for l in range(L):
            _field(sdlm[3][l], 0, 255, f"layer {l + 1} SDLM fc")
            _field(sdlm[4][l], 0, 255, f"layer {l + 1} SDLM fh")
    dyn = qnet.dyn
    if dyn is not None:
        if adam is not None or sdlm is not None:
            raise EbpError("dynamic weight formats are for SGD, not "
                           f"{'Adam' if adam is not None else 'SDLM'}")
        if len(dyn) != 2 or len(dyn[0]) != L or len(dyn[1]) != L:
            raise EbpError(f"weight format windows {dyn!r} are not (lo, hi) for {L} layers")
        for l in range(L):
            _field(dyn[0][l], 0, 255, f"layer {l + 1} lowest weight format")
            _field(dyn[1][l], 0, 255, f"layer {l + 1} highest weight format")
    flags = ((ebp.FLAG_MOMENTUM if qnet.momentum else 0) | (ebp.FLAG_HYPER if hyper else 0)
             | (ebp.FLAG_INMAP if imap is not None else 0)
             | (ebp.FLAG_ADAM if adam is not None else 0)
             | (ebp.FLAG_SDLM if sdlm is not None else 0)
             | (ebp.FLAG_DYNFMT if dyn is not None else 0))
    head = bytearray()
    head += ebp.MAGIC
    head += struct.pack(
        "<BBBBHh", ebp.VERSION, L, _field(qnet.loss, 0, 255, "loss code"), flags,
        _field(qnet.batch_max, 1, ebp.MAX_BATCH, "batch_max"),
        _field(qnet.alpha_q, -32767, 32767, "alpha_q"),
    )
    head += hyper_block(hyper) if hyper else bytes(ebp.HYPER_LEN)
    head += struct.pack("<I", ebp.file_len(sizes, imap is not None, adam is not None,
                                           sdlm is not None, dyn is not None))
    head += struct.pack("<HBB", sizes[0], _field(qnet.shift_a[0], 0, 255, "shift_a[0]"),
                        _field(qnet.logit_k, 0, 255, "logit_k"))
    for l in range(L):
        head += struct.pack(
            "<HBBBB", sizes[l + 1],
            _field(qnet.acts[l], 0, 255, f"layer {l + 1} activation"),
            _field(qnet.shift_a[l + 1], 0, 255, f"layer {l + 1} shift_a"),
            _field(qnet.shift_w[l], 0, 255, f"layer {l + 1} shift_w"),
            _field(qnet.shift_d[l], 0, 255, f"layer {l + 1} shift_d"),
        )
    if adam is not None:
        # the board checks the ranges (edgebp.adam.check): _parse below says what it would
        head += struct.pack("<HH", *adam)
    if sdlm is not None:
        # likewise edgebp.sdlm.check and mu_in
        head += struct.pack("<BBH", sdlm[0], sdlm[1], sdlm[2])
        for l in range(L):
            head += struct.pack("<BB", sdlm[3][l], sdlm[4][l])
    if dyn is not None:
        # edgebp.dynfmt.check says whether the windows keep every format in the core's limits
        for l in range(L):
            head += struct.pack("<BB", dyn[0][l], dyn[1][l])
    head += struct.pack("<H", crc16(head, 0, len(head)))
    out = head
    for l in range(L):
        W = np.asarray(qnet.W[l])
        B = np.asarray(qnet.B[l])
        if W.shape != (sizes[l + 1], sizes[l]) or B.shape != (sizes[l + 1],):
            raise EbpError(f"layer {l + 1}: W is {W.shape} and B {B.shape}, expected "
                           f"({sizes[l + 1]}, {sizes[l]}) and ({sizes[l + 1]},)")
        for part, arr in (("weights", W), ("biases", B)):
            if arr.size and (arr.min() < -32767 or arr.max() > 32767):
                raise EbpError(f"layer {l + 1} {part} outside [-32767, 32767]")
            out += arr.astype("<i2").tobytes()
    if imap is not None:
        out += imap.section()
    out += struct.pack("<H", crc16(out, 0, len(out)))
    # what the board would say about it, said now (formats, learning rate, momentum, ...)
    _parse(bytes(out))
    return bytes(out)


def _parse(data: bytes) -> ebp.Loader:
    loader = ebp.Loader(len(data), mem_free=lambda: 1 << 62)
    loader.feed(data, 0, len(data))
    loader.finish()
    return loader


def _host_section(qnet: QuantNet, hyper: Hyper | None) -> dict:
    def floats(a):
        return None if a is None else np.asarray(a, np.float64).tolist()

    return {
        "in_offset": floats(qnet.in_offset),
        "in_scale": floats(qnet.in_scale),
        "classes": list(qnet.classes),
        "hyper": asdict(hyper) if hyper else None,
        **({"out_offset": floats(qnet.out_offset), "out_scale": float(qnet.out_scale)}
           if qnet.out_scale is not None else {}),
    }


def to_bytes(qnet: QuantNet, hyper: Hyper | None = None, trailer: bool = True) -> bytes:
    """The whole file; `trailer=False` gives only what a board loads."""
    core = board_part(qnet, hyper)
    if not trailer:
        return core
    text = json.dumps(_host_section(qnet, hyper), sort_keys=True).encode()
    crc = binascii.crc32(text) & 0xFFFFFFFF
    return core + TRAILER_MAGIC + struct.pack("<I", len(text)) + text + struct.pack("<I", crc)


def write(path: str | Path, qnet: QuantNet, hyper: Hyper | None = None) -> None:
    Path(path).write_bytes(to_bytes(qnet, hyper))


def _hyper_from_block(b: bytes) -> Hyper:
    lr_m, lr_e, mu, c_m, c_e, mode, batch, seed = struct.unpack("<BBBBBBHI", b)
    lr = lr_m * 2.0**-lr_e
    wd = (c_m * 2.0**-c_e) / lr if c_m and lr_m else 0.0
    rounding = "stochastic" if mode == fixed.STOCHASTIC else "nearest"
    return Hyper(lr=lr, momentum=mu / 256, weight_decay=wd, batch=batch, rounding=rounding,
                 seed=seed)


_HYPER_TYPES = {"lr": float, "momentum": float, "weight_decay": float, "batch": int,
                "rounding": str, "seed": int}


def _hyper_from_section(d) -> Hyper:
    # the JSON is the host's own, but a file is whatever is on the disk: check each field
    if not isinstance(d, dict) or not set(d) <= set(_HYPER_TYPES):
        raise EbpError("host section: bad hyper-parameters (expected an object with "
                       f"{', '.join(_HYPER_TYPES)})")
    for key, kind in _HYPER_TYPES.items():
        v = d.get(key)
        ok = v is None or (not isinstance(v, bool) and (
            isinstance(v, (int, float)) and math.isfinite(v) if kind is float
            else isinstance(v, kind)))
        if not ok:
            raise EbpError(f"host section: hyper-parameter {key} is {v!r}, not a "
                           f"{'number' if kind is float else kind.__name__}")
    return Hyper(**d)


def _read_trailer(data: bytes, start: int) -> dict | None:
    rest = data[start:]
    if not rest:
        return None
    if len(rest) < 12 or rest[:4] != TRAILER_MAGIC:
        raise EbpError(f"{len(rest)} bytes after the net that are not a host section")
    (n,) = struct.unpack_from("<I", rest, 4)
    if len(rest) != 12 + n:
        raise EbpError(f"host section says {n} bytes of JSON but holds {len(rest) - 12}")
    text = rest[8:8 + n]
    (crc,) = struct.unpack_from("<I", rest, 8 + n)
    if binascii.crc32(text) & 0xFFFFFFFF != crc:
        raise EbpError("host section CRC mismatch")
    try:
        section = json.loads(text.decode())
    except (UnicodeDecodeError, ValueError) as e:
        raise EbpError(f"host section is not valid JSON: {e}") from None
    if not isinstance(section, dict):
        raise EbpError("host section is not a JSON object")
    return section


def from_bytes(data: bytes) -> tuple[QuantNet, Hyper | None]:
    """Parse a whole file; EbpError names what is wrong."""
    loader = _parse(data)
    net = loader.net
    assert net is not None
    section = _read_trailer(data, loader.n_bytes) or {}
    L = net.L
    Ws = [np.frombuffer(bytes(net.W[l]), "<i2").reshape(net.sizes[l + 1], net.sizes[l]).copy()
          for l in range(L)]
    Bs = [np.frombuffer(bytes(net.B[l]), "<i2").copy() for l in range(L)]

    def vector(name, n=net.sizes[0]):
        v = section.get(name)
        if v is None:
            return None
        try:
            a = np.asarray(v, np.float64)
            ok = np.broadcast_shapes(a.shape, (n,)) == (n,) and bool(np.all(np.isfinite(a)))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise EbpError(f"host section: {name} is not {n} finite numbers")
        return a

    out_offset, out_scale = vector("out_offset", net.sizes[-1]), section.get("out_scale")
    if (out_offset is None) != (out_scale is None) or not (
            out_scale is None or (isinstance(out_scale, (int, float))
                                  and math.isfinite(out_scale) and out_scale > 0)):
        raise EbpError("host section: out_offset and out_scale (a positive number) go "
                       "together")
    if out_scale is not None and (net.loss_kind != fixed.MSE or net.acts[-1] != fixed.IDENTITY):
        raise EbpError("host section: a target normalisation needs an mse net with an "
                       "identity output")

    classes = section.get("classes") or []
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise EbpError("host section: classes is not a list of names")
    qnet = QuantNet(
        sizes=list(net.sizes), acts=list(net.acts), shift_a=list(net.shift_a),
        shift_w=list(net.shift_w), shift_d=list(net.shift_d), loss=net.loss_kind, W=Ws, B=Bs,
        batch_max=net.batch_max, momentum=net.VW[0] is not None, alpha_q=net.alpha,
        in_offset=vector("in_offset"), in_scale=vector("in_scale"),
        classes=list(classes),
        out_offset=out_offset, out_scale=None if out_scale is None else float(out_scale),
        in_map=None if loader.inmap is None else InputMap.from_board(loader.inmap),
        adam=None if net.opt is None or net.opt.curv else (net.opt.c1, net.opt.c2),
        sdlm=None if net.opt is None or not net.opt.curv else (
            net.opt.mu_m, net.opt.mu_e, net.opt.gamma, tuple(net.opt.fc), tuple(net.opt.fh)),
        dyn=None if net.dyn is None else (tuple(net.dyn.lo), tuple(net.dyn.hi)),
        logit_k=net.logit_k,
    )
    hyper = None
    if loader.hyper is not None:
        hyper = _hyper_from_block(loader.hyper)
        if section.get("hyper"):
            hyper = _hyper_from_section(section["hyper"])
            if hyper_block(hyper) != loader.hyper:
                raise EbpError("host section hyper-parameters disagree with the header")
    elif section.get("hyper"):
        raise EbpError("host section has hyper-parameters but the header has none")
    return qnet, hyper


def read(path: str | Path) -> tuple[QuantNet, Hyper | None]:
    return from_bytes(Path(path).read_bytes())
