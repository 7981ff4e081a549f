# -*- coding: utf-8 -*-
# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Helper containers: reach a volume's data through the Docker engine.

Used when the volume's mountpoint is not a local directory the module can open
(a non-local driver, a local volume with mount options, a daemon reached over
tcp:// or ssh://). The helper image is the user's (never pulled); it needs GNU
tar at /usr/bin/tar and python3 (for the fingerprint walk, the same code as
``_tree`` so both data paths produce identical manifests).

Streams go through the container's attached stdin/stdout (no TTY: a terminal
would turn LF into CRLF and corrupt binary data).
"""

from __future__ import annotations

import inspect
import json
import os
import re
import socket
import threading
import uuid

from ansible_collections.volumeops.docker.plugins.module_utils import _archive, _tree

MOUNT = '/volumeops/vol'
TAR = '/usr/bin/tar'
# TAR_MAIN exits with this plus GNU tar's own status (0, 1 or 2).
TAR_STATUS_BASE = 100
PYTHON = '/usr/bin/python3'
LABEL = 'io.volumeops.helper'


class HelperError(Exception):
    pass


class MergeStopped(HelperError):
    """A merge in the helper container failed part-way; ``changed`` paths of the volume were changed."""

    def __init__(self, msg, changed):
        super(MergeStopped, self).__init__(msg)
        self.changed = changed


def mount_points():
    """The mount points (bytes) of this process's mount namespace, from /proc/self/mountinfo; [] if unreadable."""
    try:
        with open('/proc/self/mountinfo', 'rb') as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    # The mount point is the fifth field; spaces and other bytes are octal escapes (\040).
    return [re.sub(br'\\([0-7]{3})', lambda m: bytes([int(m.group(1), 8)]), fields[4])
            for fields in (line.split(b' ') for line in lines) if len(fields) > 4]


def is_mount_point(path):
    """Whether ``path`` is a mount point in this process's mount namespace (bind mounts included, which
    os.path.ismount does not see when they come from the same filesystem)."""
    return os.fsencode(os.path.realpath(path)) in mount_points()


def local_path_error(name, driver, options, mountpoint):
    """Why data_path=local cannot use the volume's mountpoint now, or None.

    A volume with mount options (NFS, a bind mount, ...) or of another driver is mounted only while a
    container uses it; otherwise its directory on the host is an empty directory that is not its data
    (a backup of it would be empty, a restore into it invisible to containers).
    """
    if not _archive.mounted_only_in_use(driver, options) or (mountpoint and is_mount_point(mountpoint)):
        return None
    what = 'Volume %s (driver %s, options %s)' % (name, driver or 'local', json.dumps(options or {}, sort_keys=True))
    if not mountpoint:
        return ('%s would be mounted only while a container uses it: its directory on this host would not be its '
                'data. Use data_path=auto or data_path=helper (with helper_image).' % what)
    return ('%s is mounted only while a container uses it, and it is not mounted now: its directory %s on this '
            'host is not its data. Use data_path=auto or data_path=helper (with helper_image).' % (what, mountpoint))


def _tree_source():
    return inspect.getsource(_tree)


# The helper scripts' last argument: the FINGERPRINT_VERSION to compute (a stored fingerprint's, for comparisons).
FINGERPRINT_MAIN = '''
import json as _json, sys as _sys
_s = fingerprint(_sys.argv[1], exclude=_json.loads(_sys.argv[2]), skip_types=tuple(_json.loads(_sys.argv[3])),
                 version=int(_sys.argv[4]))
_sys.stdout.write(_json.dumps(_s.as_dict()))
'''

EXTRACT_MAIN = '''
import json as _json, os as _os, subprocess as _sp, sys as _sys
_staging = _sys.argv[1]
_os.mkdir(_staging, 0o700)
_rc = _sp.call(_json.loads(_sys.argv[2]), stdin=0)
if _rc == 0:
    _s = fingerprint(_staging, skip_types=tuple(_json.loads(_sys.argv[3])), version=int(_sys.argv[4]))
    _sys.stdout.write(_json.dumps(_s.as_dict()))
_sys.exit(_rc)
'''

FINISH_MAIN = '''
import json as _json, os as _os, shutil as _shutil, sys as _sys
_root, _staging, _mode = _sys.argv[1:4]
if _mode == 'abort':
    if _os.path.lexists(_staging):
        _shutil.rmtree(_staging)
    if len(_sys.argv) > 5:
        # Creating and removing the staging directory touched the volume root: give its times back.
        _os.utime(_root, ns=tuple(_json.loads(_sys.argv[5])), follow_symlinks=False)
    _sys.exit(0)
# The restored tree is on disk before it replaces anything (a power loss right after must not leave
# empty files where the old content was). sync(2): the helper image may lack ctypes for syncfs.
_os.sync()
if _mode == 'merge':
    _st = _os.lstat(_staging)
    _moved = []
    try:
        merge_into(_staging, _root, _moved)
    except Exception as _exc:
        # A merge is not atomic: say how far it got (the volume changed when anything moved).
        _sys.stdout.write(_json.dumps({'merge_error': str(_exc), 'changed': len(_moved)}))
        _sys.exit(3)
    _shutil.rmtree(_staging)
    _os.utime(_root, ns=(_st.st_atime_ns, _st.st_mtime_ns))
else:
    # replace: renames only, rolled back on failure (see swap_in); the caller aborts on error.
    swap_in(_root, _staging)
_s = fingerprint(_root, skip_types=tuple(_json.loads(_sys.argv[4])))
_sys.stdout.write(_json.dumps(_s.as_dict()))
'''

SUBSET_MAIN = '''
import json as _json, sys as _sys
_paths = set(_p for _p in _sys.stdin.buffer.read().split(b'\\0') if _p)
_sys.stdout.write(_json.dumps(subset_summary(_sys.argv[1], _paths, version=int(_sys.argv[2])).as_dict()))
'''

LISTING_MAIN = '''
import json as _json, sys as _sys
for _rel, _r in sorted(listing(_sys.argv[1], tuple(_json.loads(_sys.argv[2]))).items()):
    _sys.stdout.write('%s %s\\n' % (_rel.hex(), _json.dumps(list(_r[:6]) + [_r[6].hex()])))
'''

# GNU tar with the read-ahead of _tree.ReadAhead beside it (argv: the volume's mount, tar's argv as JSON,
# the exclude patterns as JSON); the archive goes from tar straight to the container's stdout. Exits with
# TAR_STATUS_BASE + tar's status, so that a failure of this wrapper itself (Python exits 1 on an error) is
# never taken for tar's 1 ("a file changed as we read it").
TAR_MAIN = '''
import json as _json, subprocess as _sp, sys as _sys
try:
    _tar = _sp.Popen(_json.loads(_sys.argv[2]))
except Exception as _exc:
    _sys.stderr.write('cannot start tar: %s\\n' % _exc)
    _sys.exit(2)
_ahead = None
try:
    _ahead = ReadAhead(_sys.argv[1], _tar.pid, exclude=_json.loads(_sys.argv[3])).start()
except Exception:
    pass  # best effort, as on the host
_rc = _tar.wait()
if _ahead is not None:
    _ahead.stop()
_sys.exit(_BASE + (_rc if _rc >= 0 else 2))
'''.replace('_BASE', str(TAR_STATUS_BASE))

RECOVER_MAIN = '''
import json as _json, os as _os, sys as _sys
_actions = recover_swaps(_sys.argv[1])
_s = fingerprint(_sys.argv[1], exclude=_json.loads(_sys.argv[2]), skip_types=tuple(_json.loads(_sys.argv[3])),
                 version=int(_sys.argv[4]))
_d = _s.as_dict()
_d['recovered'] = _actions
_st = _os.lstat(_sys.argv[1])
_d['root_times'] = [_st.st_atime_ns, _st.st_mtime_ns]
_sys.stdout.write(_json.dumps(_d))
'''


def _script(main, with_merge=False):
    parts = [_tree_source()]
    if with_merge:
        # The tree-moving functions of _archive, run inside the helper with the same code as the local path.
        parts.append('import shutil\n\nclass _tree(object):\n    read_xattrs = staticmethod(read_xattrs)\n'
                     '    walk = staticmethod(walk)\n    entry_record = staticmethod(entry_record)\n'
                     '    type_code = staticmethod(type_code)\n    summarize = staticmethod(summarize)\n'
                     '    TreeSummary = TreeSummary\n'
                     '    FINGERPRINT_VERSION = FINGERPRINT_VERSION\n\n')
        parts.append('STAGING_MARKER = %r\nOLD_MARKER = %r\nREADY_MARKER = %r\n\n'
                     % (_archive.STAGING_MARKER, _archive.OLD_MARKER, _archive.READY_MARKER))
        parts.append('SKIP_TYPES = %r\n\n' % (_archive.SKIP_TYPES,))
        for fn in (_archive.remove_tree, _archive.merge_into, _archive.copy_dir_metadata, _archive._DirStat,
                   _archive.swap_in, _archive.is_real_dir, _archive.recover_swaps, _archive.subset_summary):
            parts.append(inspect.getsource(fn))
    parts.append(main)
    return '\n'.join(parts)


class Helper(object):
    """Runs short-lived containers of ``image`` with one volume mounted at /volumeops/vol."""

    def __init__(self, client, image):
        self.client = client
        self.api = client.api
        self.image = image
        self.recovered = []
        self.root_times = {}  # volume -> [atime_ns, mtime_ns] of its root, from fingerprint(recover=True)

    def _create(self, volume, argv, read_only, stdin=False):
        binds = {volume: {'bind': MOUNT, 'mode': 'ro' if read_only else 'rw'}}
        # CAP_SYS_ADMIN: without it trusted.* xattrs are invisible (backup would drop them) and
        # cannot be set (restore); the container has no network and runs only tar/python3.
        # No logging driver: the container's stdout is the volume's data (a backup's tar stream), which the
        # daemon would otherwise also write to the container's log (json-file: JSON-escaped, several times its
        # size, on the Docker host's disk) or ship to a central log service (syslog, fluentd, ...). The attach
        # stream this module reads does not need a log.
        host_config = self.api.create_host_config(binds=binds, network_mode='none', cap_add=['SYS_ADMIN'],
                                                  log_config={'type': 'none', 'config': {}})
        name = 'volumeops-helper-%s' % uuid.uuid4().hex[:12]
        c = self.api.create_container(self.image, command=argv, user='0:0', stdin_open=stdin,
                                      tty=False, network_disabled=True, host_config=host_config,
                                      labels={LABEL: 'true'}, name=name, entrypoint=[],
                                      working_dir='/')
        return c['Id']

    def _remove(self, cid):
        try:
            self.api.remove_container(cid, force=True)
        except Exception:  # best effort; the container is labelled for manual cleanup
            pass

    def run(self, volume, argv, read_only=True, stdin_chunks=None, stdout_consumer=None):
        """Run argv in a helper container; return (exit code, stdout bytes, stderr text).

        ``stdin_chunks``: bytes chunks written to the container's stdin (then closed).
        ``stdout_consumer``: called with each stdout chunk instead of collecting it.
        """
        from docker.utils import socket as docker_socket
        cid = self._create(volume, argv, read_only, stdin=stdin_chunks is not None)
        out, err = [], []
        feed_error = []
        try:
            params = {'stdout': 1, 'stderr': 1, 'stream': 1}
            if stdin_chunks is not None:
                params['stdin'] = 1
            sock = self.api.attach_socket(cid, params=params)
            raw = getattr(sock, '_sock', sock)
            self.api.start(cid)
            feeder = None
            if stdin_chunks is not None:
                def _feed():
                    try:
                        for chunk in stdin_chunks:
                            raw.sendall(chunk)
                    except Exception as exc:
                        feed_error.append(exc)
                    finally:
                        try:
                            raw.shutdown(socket.SHUT_WR)
                        except OSError:
                            pass
                feeder = threading.Thread(target=_feed)
                feeder.daemon = True
                feeder.start()
            for stream_id, data in docker_socket.frames_iter(sock, False):
                if stream_id == docker_socket.STDOUT:
                    if stdout_consumer is not None:
                        stdout_consumer(data)
                    else:
                        out.append(data)
                else:
                    err.append(data)
            if feeder is not None:
                feeder.join()
            rc = self.api.wait(cid).get('StatusCode')
            try:
                sock.close()
            except Exception:
                pass
        finally:
            self._remove(cid)
        if feed_error:
            exc = feed_error[0]
            # A socket error while feeding means the container stopped reading: its exit status and
            # stderr say why (for example tar's "No space left on device"). A rejected stream is ours.
            if isinstance(exc, _archive.ArchiveError) or not isinstance(exc, OSError) or rc == 0:
                raise exc
        return rc, b''.join(out), b''.join(err).decode('utf-8', 'replace').strip()[-4000:]

    def fingerprint(self, volume, exclude=None, recover=False, version=_tree.FINGERPRINT_VERSION):
        """TreeSummary of the volume. ``recover``: first resolve what an interrupted restore left behind
        (``_archive.recover_swaps``; mounts the volume read-write), the actions go to ``self.recovered``."""
        if recover:
            argv = [PYTHON, '-c', _script(RECOVER_MAIN, with_merge=True), MOUNT]
        else:
            argv = [PYTHON, '-c', _script(FINGERPRINT_MAIN), MOUNT]
        argv += [json.dumps(list(exclude or [])), json.dumps(list(_archive.SKIP_TYPES)), str(version)]
        rc, out, err = self.run(volume, argv, read_only=not recover)
        if rc != 0:
            raise HelperError('The fingerprint walk in the helper container failed (exit %s): %s' % (rc, err))
        data = json.loads(out.decode('utf-8'))
        self.recovered = data.get('recovered', [])
        if 'root_times' in data:
            self.root_times[volume] = data['root_times']
        return _tree.TreeSummary(data['fingerprint'], data['entries'], data['bytes'])

    def subset_fingerprint(self, volume, paths, version=_tree.FINGERPRINT_VERSION):
        """``_archive.subset_summary`` of the volume (``paths``: bytes relative paths, b'.' for the root)."""
        argv = [PYTHON, '-c', _script(SUBSET_MAIN, with_merge=True), MOUNT, str(version)]
        data = b'\0'.join(sorted(paths)) + b'\0'
        chunks = [data[i:i + _archive.CHUNK] for i in range(0, len(data), _archive.CHUNK)]
        rc, out, err = self.run(volume, argv, read_only=True, stdin_chunks=chunks)
        if rc != 0:
            raise HelperError('The fingerprint walk in the helper container failed (exit %s): %s' % (rc, err))
        data = json.loads(out.decode('utf-8'))
        return _tree.TreeSummary(data['fingerprint'], data['entries'], data['bytes'])

    def listing(self, volume):
        """``_tree.listing`` of the volume (sockets left out), from a metadata walk in the helper container."""
        argv = [PYTHON, '-c', _script(LISTING_MAIN), MOUNT, json.dumps(list(_archive.SKIP_TYPES))]
        rc, out, err = self.run(volume, argv, read_only=True)
        if rc != 0:
            raise HelperError('Listing the volume in the helper container failed (exit %s): %s' % (rc, err))
        result = {}
        for line in out.splitlines():
            rel, record = line.split(b' ', 1)
            code, size, mtime_ns, mode, uid, gid, link = json.loads(record.decode('ascii'))
            result[bytes.fromhex(rel.decode('ascii'))] = (code, size, mtime_ns, mode, uid, gid, bytes.fromhex(link))
        return result

    def backup_chunks(self, volume, exclude=None):
        """runner(consumer) streams GNU tar's archive of the volume to consumer and returns (tar's exit status,
        stdout, stderr); the files are read ahead of tar (TAR_MAIN)."""
        tar_argv = _archive.tar_create_argv(MOUNT, exclude=exclude, tar=TAR)
        argv = [PYTHON, '-c', _script(TAR_MAIN), MOUNT, json.dumps(tar_argv), json.dumps(exclude or [])]

        def runner(consumer):
            rc, out, err = self.run(volume, argv, read_only=True, stdout_consumer=consumer)
            if rc is None or not TAR_STATUS_BASE <= rc <= TAR_STATUS_BASE + 2:
                raise HelperError('GNU tar in the helper container did not run to its end (exit %s): %s' % (rc, err))
            return rc - TAR_STATUS_BASE, out, err
        return runner

    def extract(self, volume, staging_name, chunks, version=_tree.FINGERPRINT_VERSION):
        """Extract the (already validated) tar stream ``chunks`` into MOUNT/staging_name; returns TreeSummary."""
        staging = MOUNT + '/' + staging_name
        argv = [PYTHON, '-c', _script(EXTRACT_MAIN), staging, json.dumps(_archive.tar_extract_argv(staging, tar=TAR)),
                json.dumps(list(_archive.SKIP_TYPES)), str(version)]
        rc, out, err = self.run(volume, argv, read_only=False, stdin_chunks=chunks)
        if rc != 0:
            if _archive.is_no_space(err):
                detail = [line for line in err.splitlines() if _archive.is_no_space(line)][:1]
                raise HelperError(_archive.NO_SPACE_RESTORE % 'the volume' + ' (%s)' % ''.join(detail))
            raise HelperError('Extracting in the helper container failed (exit %s): %s' % (rc, err))
        data = json.loads(out.decode('utf-8'))
        return _tree.TreeSummary(data['fingerprint'], data['entries'], data['bytes'])

    def finish(self, volume, staging_name, mode):
        """mode: replace | merge | abort. Returns the final TreeSummary (None for abort)."""
        argv = [PYTHON, '-c', _script(FINISH_MAIN, with_merge=True), MOUNT, MOUNT + '/' + staging_name, mode,
                json.dumps(list(_archive.SKIP_TYPES))]
        if mode == 'abort' and volume in self.root_times:
            argv.append(json.dumps(self.root_times[volume]))
        rc, out, err = self.run(volume, argv, read_only=False)
        if rc == 3 and mode == 'merge':
            try:
                data = json.loads(out.decode('utf-8'))
            except ValueError:
                data = None
            if isinstance(data, dict) and 'merge_error' in data:
                raise MergeStopped('Merging into the volume failed: %s' % data['merge_error'], int(data['changed']))
        if rc != 0:
            raise HelperError('Finishing the restore in the helper container failed (exit %s): %s' % (rc, err))
        if mode == 'abort':
            return None
        data = json.loads(out.decode('utf-8'))
        return _tree.TreeSummary(data['fingerprint'], data['entries'], data['bytes'])
