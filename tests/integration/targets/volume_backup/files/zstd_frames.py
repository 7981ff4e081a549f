"""List the zstd frames of an archive, or cut it after its first frame (with a matching .sha256).

Parses the frame format (RFC 8878) itself, so the test does not depend on how the module wrote it.

Usage: zstd_frames.py count ARCHIVE          prints the number of frames
       zstd_frames.py cut ARCHIVE DEST       writes the first frame alone to DEST and DEST.sha256
"""
import hashlib
import os
import struct
import sys

MAGIC = 0xFD2FB528


def frame_ends(data):
    pos = 0
    while pos < len(data):
        (magic,) = struct.unpack_from('<I', data, pos)
        if magic != MAGIC:
            raise SystemExit('not a zstd frame at offset %d' % pos)
        desc = data[pos + 4]
        fcs_flag, single, checksum, dict_flag = desc >> 6, (desc >> 5) & 1, (desc >> 2) & 1, desc & 3
        pos += 5 + (0 if single else 1) + (0, 1, 2, 4)[dict_flag] + ((1 if single else 0), 2, 4, 8)[fcs_flag]
        while True:
            header = data[pos] | data[pos + 1] << 8 | data[pos + 2] << 16
            last, kind, size = header & 1, (header >> 1) & 3, header >> 3
            pos += 3 + (1 if kind == 1 else size)  # an RLE block stores one byte
            if last:
                break
        pos += 4 if checksum else 0
        yield pos


with open(sys.argv[2], 'rb') as f:
    archive = f.read()
ends = list(frame_ends(archive))
if ends[-1] != len(archive):
    raise SystemExit('trailing bytes after the last frame')
if sys.argv[1] == 'count':
    print(len(ends))
else:
    dest = sys.argv[3]
    with open(dest, 'wb') as f:
        f.write(archive[:ends[0]])
    with open(dest + '.sha256', 'w') as f:
        f.write('%s  %s\n' % (hashlib.sha256(archive[:ends[0]]).hexdigest(), os.path.basename(dest)))
    print(ends[0])
