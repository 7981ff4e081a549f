"""Cut an uncompressed tar stream right after its N-th member (a clean file boundary, no end marker)
and write it zstd-compressed with a matching .sha256, like a stream that simply stopped.

Usage: cut_at_boundary.py SRC.tar.zst DEST.tar.zst
"""
import hashlib
import os
import subprocess
import sys
import tarfile

src, dest = sys.argv[1:3]
raw = subprocess.run(['zstd', '-dc', src], stdout=subprocess.PIPE, check=True).stdout
with open(dest + '.raw', 'wb') as f:
    f.write(raw)
with tarfile.open(dest + '.raw') as tf:
    members = tf.getmembers()
os.unlink(dest + '.raw')
cut = members[len(members) // 2]
end = cut.offset_data + ((cut.size + 511) // 512) * 512
comp = subprocess.run(['zstd', '-q', '-c'], input=raw[:end], stdout=subprocess.PIPE, check=True).stdout
with open(dest, 'wb') as f:
    f.write(comp)
with open(dest + '.sha256', 'w') as f:
    f.write('%s  %s\n' % (hashlib.sha256(comp).hexdigest(), os.path.basename(dest)))
print(dest)
