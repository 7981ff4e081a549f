"""Make damaged copies of a volumeops archive that still carry matching sidecars.

Usage: damage.py MODE SRC DEST
  cut   the tar stream cut after half of its members, with an end-of-archive marker added (GNU tar extracts
        it without an error), recompressed; a .sha256 sidecar computed over the result and the source's
        manifest sidecar copied: a checksum comparison alone finds nothing wrong
  flip  one byte in the middle of the compressed file changed, sidecars as for cut
  bare  the archive alone, without any sidecar
  stale the archive unchanged, with a .sha256 sidecar of other content (a stream that reads well, a wrong checksum)
  garbage the archive unchanged, with a .sha256 sidecar that is not in sha256sum format
  badmanifest the archive unchanged, its .sha256 sidecar right, a manifest sidecar that is not a manifest
"""
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile

DECOMPRESS = {'.tar.zst': ['zstd', '-dc'], '.tar.gz': ['gzip', '-dc'], '.tar': None}
COMPRESS = {'.tar.zst': ['zstd', '-q', '-c'], '.tar.gz': ['gzip', '-c'], '.tar': None}


def ext_of(path):
    for ext in ('.tar.zst', '.tar.gz', '.tar'):
        if path.endswith(ext):
            return ext
    raise SystemExit('not an archive name: %s' % path)


def pipe(argv, data):
    if argv is None:
        return data
    return subprocess.run(argv, input=data, stdout=subprocess.PIPE, check=True).stdout


def write_with_sidecars(src, dest, data):
    with open(dest, 'wb') as f:
        f.write(data)
    with open(dest + '.sha256', 'w') as f:
        f.write('%s  %s\n' % (hashlib.sha256(data).hexdigest(), os.path.basename(dest)))
    shutil.copyfile(src + '.manifest.json', dest + '.manifest.json')


def main():
    mode, src, dest = sys.argv[1:4]
    ext = ext_of(src)
    with open(src, 'rb') as f:
        packed = f.read()
    if mode == 'cut':
        raw = pipe(DECOMPRESS[ext], packed)
        with open(dest + '.raw', 'wb') as f:
            f.write(raw)
        try:
            with tarfile.open(dest + '.raw') as tf:
                members = tf.getmembers()
        finally:
            os.unlink(dest + '.raw')
        last = members[len(members) // 2]
        end = last.offset_data + ((last.size + 511) // 512) * 512
        write_with_sidecars(src, dest, pipe(COMPRESS[ext], raw[:end] + b'\0' * 1024))
    elif mode == 'flip':
        data = bytearray(packed)
        data[len(data) // 2] ^= 0xFF
        write_with_sidecars(src, dest, bytes(data))
    elif mode == 'bare':
        shutil.copyfile(src, dest)
    elif mode == 'stale':
        write_with_sidecars(src, dest, packed)
        with open(dest + '.sha256', 'w') as f:
            f.write('%s  %s\n' % (hashlib.sha256(b'other content').hexdigest(), os.path.basename(dest)))
    elif mode == 'garbage':
        write_with_sidecars(src, dest, packed)
        with open(dest + '.sha256', 'w') as f:
            f.write('garbage\n')
    elif mode == 'badmanifest':
        write_with_sidecars(src, dest, packed)
        with open(dest + '.manifest.json', 'w') as f:
            f.write('{"not": "a manifest"\n')
    else:
        raise SystemExit(__doc__)
    print(dest)


if __name__ == '__main__':
    main()
