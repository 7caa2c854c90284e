"""Compiled (numba) MinHash of normalised texts: word shingles, datasketch's ``sha1_hash32`` (the
first 4 bytes of SHA-1, little-endian), the MurmurHash3 finalizer and the affine32 permutations,
exactly as datasketch computes them. :func:`.fast.minhash_signatures` checks nothing else is
needed; the tests compare the values with datasketch's bit for bit.

All arithmetic is on uint64 masked to 32 bits (numba widens small integers)."""

from __future__ import annotations

import numpy as np
from numba import njit

M32 = np.uint64(0xFFFFFFFF)
SHINGLE_WORDS = 5
SHORT_SHINGLE_WORDS = 3
SHORT_TEXT_WORDS = 10


@njit(cache=True, inline="always")
def _rotl(x, n):  # type: ignore[no-untyped-def]
    return ((x << np.uint64(n)) | (x >> np.uint64(32 - n))) & M32


@njit(cache=True)
def _sha1_hash32(buf, start, end, w, pad):  # type: ignore[no-untyped-def]
    """``struct.unpack('<I', sha1(buf[start:end]).digest()[:4])[0]``."""
    h0 = np.uint64(0x67452301)
    h1 = np.uint64(0xEFCDAB89)
    h2 = np.uint64(0x98BADCFE)
    h3 = np.uint64(0x10325476)
    h4 = np.uint64(0xC3D2E1F0)
    length = end - start
    total = ((length + 8) // 64 + 1) * 64
    for i in range(length):
        pad[i] = buf[start + i]
    pad[length] = 0x80
    for i in range(length + 1, total - 8):
        pad[i] = 0
    bitlen = length * 8
    for i in range(8):
        pad[total - 1 - i] = (bitlen >> (8 * i)) & 0xFF
    for base in range(0, total, 64):
        for t in range(16):
            p = base + 4 * t
            w[t] = ((np.uint64(pad[p]) << np.uint64(24)) | (np.uint64(pad[p + 1]) << np.uint64(16))
                    | (np.uint64(pad[p + 2]) << np.uint64(8)) | np.uint64(pad[p + 3]))
        for t in range(16, 80):
            w[t] = _rotl(w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16], 1)
        a = h0
        b = h1
        c = h2
        d = h3
        e = h4
        for t in range(20):
            temp = (_rotl(a, 5) + ((b & c) | ((b ^ M32) & d)) + e + np.uint64(0x5A827999) + w[t]) & M32
            e, d, c, b, a = d, c, _rotl(b, 30), a, temp
        for t in range(20, 40):
            temp = (_rotl(a, 5) + (b ^ c ^ d) + e + np.uint64(0x6ED9EBA1) + w[t]) & M32
            e, d, c, b, a = d, c, _rotl(b, 30), a, temp
        for t in range(40, 60):
            temp = (_rotl(a, 5) + ((b & c) | (b & d) | (c & d)) + e + np.uint64(0x8F1BBCDC) + w[t]) & M32
            e, d, c, b, a = d, c, _rotl(b, 30), a, temp
        for t in range(60, 80):
            temp = (_rotl(a, 5) + (b ^ c ^ d) + e + np.uint64(0xCA62C1D6) + w[t]) & M32
            e, d, c, b, a = d, c, _rotl(b, 30), a, temp
        h0 = (h0 + a) & M32
        h1 = (h1 + b) & M32
        h2 = (h2 + c) & M32
        h3 = (h3 + d) & M32
        h4 = (h4 + e) & M32
    return (((h0 & np.uint64(0xFF)) << np.uint64(24)) | ((h0 & np.uint64(0xFF00)) << np.uint64(8))
            | ((h0 >> np.uint64(8)) & np.uint64(0xFF00)) | (h0 >> np.uint64(24)))


@njit(cache=True, inline="always")
def _update(acc, hv, a, b):  # type: ignore[no-untyped-def]
    hv = hv ^ (hv >> np.uint64(16))
    hv = (hv * np.uint64(0x85EBCA6B)) & M32
    hv = hv ^ (hv >> np.uint64(13))
    hv = (hv * np.uint64(0xC2B2AE35)) & M32
    hv = hv ^ (hv >> np.uint64(16))
    for k in range(a.shape[0]):
        acc[k] = min(acc[k], (hv * a[k] + b[k]) & M32)


@njit(cache=True)
def signatures(buf, starts, ends, a, b, out):  # type: ignore[no-untyped-def]
    """Fill ``out[i]`` with the MinHash of the shingles of ``buf[starts[i]:ends[i]]``."""
    longest = 0
    for i in range(starts.shape[0]):
        longest = max(longest, ends[i] - starts[i])
    pad = np.empty(longest + 72, dtype=np.uint8)
    w = np.empty(80, dtype=np.uint64)
    word_start = np.empty(longest // 2 + 2, dtype=np.int64)
    word_end = np.empty(longest // 2 + 2, dtype=np.int64)
    acc = np.empty(out.shape[1], dtype=np.uint64)
    for i in range(starts.shape[0]):
        acc[:] = M32
        s = starts[i]
        e = ends[i]
        n = 0
        pos = s
        while pos < e:
            while pos < e and buf[pos] == 32:
                pos += 1
            if pos >= e:
                break
            word_start[n] = pos
            while pos < e and buf[pos] != 32:
                pos += 1
            word_end[n] = pos
            n += 1
        size = SHINGLE_WORDS if n >= SHORT_TEXT_WORDS else SHORT_SHINGLE_WORDS
        if n < size:
            first = word_start[0] if n > 0 else s
            last = word_end[n - 1] if n > 0 else s
            _update(acc, _sha1_hash32(buf, first, last, w, pad), a, b)
        else:
            for j in range(n - size + 1):
                _update(acc, _sha1_hash32(buf, word_start[j], word_end[j + size - 1], w, pad), a, b)
        for k in range(out.shape[1]):
            out[i, k] = np.uint32(acc[k])
