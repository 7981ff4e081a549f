"""Write hostile archives (manifest first, then one attack) with valid .sha256 sidecars.

Usage: make_hostile.py DIR ESCAPE_TARGET
"""
import hashlib
import io
import json
import os
import sys
import tarfile

out_dir, escape = sys.argv[1], sys.argv[2]
MANIFEST = {'format': 'volumeops-archive', 'format_version': 1, 'volume': 'hostile', 'entries': 2,
            'bytes': 1, 'fingerprint': 'sha256:0', 'driver': 'local', 'driver_options': {}, 'labels': {}}


def member(tf, name, kind=tarfile.REGTYPE, data=b'', linkname=''):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mode = 0o644
    tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


CASES = {
    'absolute': lambda tf: member(tf, escape + '/abs', data=b'x'),
    'dotdot': lambda tf: member(tf, './../../../../../../' + escape.lstrip('/') + '/dotdot', data=b'x'),
    'symlink': lambda tf: (member(tf, './link', tarfile.SYMTYPE, linkname=escape),
                           member(tf, './link/through-symlink', data=b'x')),
    'hardlink': lambda tf: member(tf, './hard', tarfile.LNKTYPE, linkname=escape + '/target'),
    'device': lambda tf: member(tf, './dev', tarfile.CHRTYPE),
}

for case, build in CASES.items():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w', format=tarfile.PAX_FORMAT) as tf:
        member(tf, '.volumeops-manifest.json', data=json.dumps(MANIFEST).encode())
        info = tarfile.TarInfo('.')
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tf.addfile(info)
        build(tf)
    name = 'hostile%s_20250101T000000Z.tar' % case
    path = os.path.join(out_dir, name)
    with open(path, 'wb') as f:
        f.write(buf.getvalue())
    with open(path + '.sha256', 'w') as f:
        f.write('%s  %s\n' % (hashlib.sha256(buf.getvalue()).hexdigest(), name))
    print(path)
