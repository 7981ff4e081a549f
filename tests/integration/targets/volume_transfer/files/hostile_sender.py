# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A malicious sender: ships the real receiver over SSH, then feeds it a crafted tar stream.

Usage: hostile_sender.py CASE PORT HOST_KEY PRIVATE_KEY DEST_PYTHON DEST_VOLUME OUTSIDE_DIR
Prints JSON {case, error} where error is the receiver's error message (None if it accepted the stream).
OUTSIDE_DIR is a directory outside the volume that the crafted members aim at.
"""
import io
import json
import os
import sys
import tarfile


def _collection_path():
    here = os.path.abspath(os.path.dirname(__file__))
    while here != '/':
        if os.path.basename(here) == 'ansible_collections':
            return os.path.dirname(here)
        here = os.path.dirname(here)
    raise SystemExit('not inside an ansible_collections tree')


sys.path.insert(0, _collection_path())
from ansible_collections.volumeops.docker.plugins.module_utils import _transfer  # noqa: E402


def add(tf, name, kind='file', data=b'x', target=None):
    info = tarfile.TarInfo(name)
    info.mtime = 1700000000
    if kind == 'file':
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
        return
    info.type = {'dir': tarfile.DIRTYPE, 'symlink': tarfile.SYMTYPE, 'hardlink': tarfile.LNKTYPE,
                 'chr': tarfile.CHRTYPE}[kind]
    info.mode = 0o755
    if target is not None:
        info.linkname = target
    if kind == 'chr':
        info.devmajor, info.devminor = 1, 3
    tf.addfile(info)


def crafted(case, outside):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w', format=tarfile.PAX_FORMAT) as tf:
        add(tf, '.', 'dir')
        if case == 'dotdot':
            add(tf, '../../../../../../..' + outside + '/dotdot', data=b'pwned')
        elif case == 'absolute':
            add(tf, outside + '/absolute', data=b'pwned')
        elif case == 'symlink_escape':
            add(tf, './link', 'symlink', target=outside)
            add(tf, './link/through_symlink', data=b'pwned')
        elif case == 'hardlink_escape':
            add(tf, './hl', 'hardlink', target=outside + '/victim')
        elif case == 'device':
            add(tf, './null', 'chr')
        elif case == 'truncated':
            add(tf, './a', data=b'a' * 100)
            data = buf.getvalue()
            return data[:1024 + 512]  # header of ./a and its data block, no end-of-archive
        else:
            raise SystemExit('unknown case ' + case)
    return buf.getvalue()


def main():
    case, port, host_key, key, dest_python, volume, outside = sys.argv[1:8]
    params = dict(dest_host='127.0.0.1', dest_port=int(port), dest_user='root', dest_host_key=host_key,
                  private_key=key, dest_python=dest_python, dest_volume=volume, migration_id='hostile-' + case,
                  volume='none', compression='none', timeout=30, existing='fail')
    s = _transfer.Sender(params, source_root=None)
    s._open()
    io_ = s.io
    io_.send_json(b'H', s._hello())
    io_.recv_expect(b'S')
    io_.recv_expect(b'e')  # the destination's summary (none: a fresh volume)
    io_.send_json(b'P', dict(pass_='full', source=dict(fingerprint='sha256:0', entries=2, bytes=1)))
    io_.recv_expect(b'R')
    error = None
    try:
        io_.send(b'D', crafted(case, outside))
        io_.send_json(b'Z', dict(tar_rc=0, error=None, warning=None))
        io_.send_json(b'V', dict(fingerprint='sha256:0', entries=2, bytes=1, content_digest=None))
        kind, payload = io_.recv_expect(b'F')
        final = _transfer._json(payload)
        error = None if final.get('ok') else final.get('msg')
    except _transfer.TransferError as exc:
        error = str(exc)
    except Exception as exc:
        error = s._remote_failure(exc)
    s.close()
    print(json.dumps(dict(case=case, error=error)))


if __name__ == '__main__':
    main()
