# -*- coding: utf-8 -*-
# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Exclusion patterns: the metadata walk (_tree) and GNU tar (_archive.tar_create_argv) leave out the same entries."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

import pytest

from ansible_collections.volumeops.docker.plugins.module_utils import _archive, _tree

needs_gnu_tar = pytest.mark.skipif(not shutil.which('tar'), reason='needs GNU tar (the test bootstrap installs it)')


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / 'vol'
    for d in ('d/sub', 'd/.hd', 'cache/x', 'sub/cache', '.hd', 'a'):
        (root / d).mkdir(parents=True)
    for f in ('.hidden', 'a.log', 'b', 'c.txt', 'd/.h2', 'd/e.log', 'd/f', 'd/sub/z.tmp', 'd/.hd/q', 'sub/x.tmp',
              'sub/y', 'sub/deep.tmp', 'sub/cache/k', 'cache/x/z', 'cache/k', '.hd/q', 'x', 'a/b', 'ab.c', 'n\nl',
              'dot.', 'cache.d'):
        (root / f).write_bytes(b'-')
    (root / os.fsdecode(b'bad-\xff.log')).write_bytes(b'')
    os.symlink('nowhere', str(root / '.link'))
    s = socket.socket(socket.AF_UNIX)  # tar skips sockets, the archive's fingerprint leaves them out
    s.bind(str(root / 'sock'))
    s.close()
    return root


def _walked(root, patterns):
    return sorted(e.relpath for e in _tree.walk(str(root), exclude=patterns) if e.type != 's')


def _archived(root, patterns):
    """The member names GNU tar writes with tar_create_argv(exclude=patterns), walk style (b'.', b'./a')."""
    argv = _archive.tar_create_argv(str(root), exclude=patterns)
    stream = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=True).stdout
    listing = subprocess.run(['tar', '--list', '--file=-', '--quoting-style=c'],
                             input=stream, stdout=subprocess.PIPE, check=True).stdout
    names = []
    for line in listing.splitlines():
        # c quoting: "..." with C escapes (octal for bytes that are not printable).
        text = line.decode('ascii')[1:-1].encode('latin-1').decode('unicode_escape').encode('latin-1')
        text = text.rstrip(b'/')
        names.append(b'.' if text in (b'', b'.') else text)
    return sorted(names)


# The patterns the review tried (.* left out the root, and with it everything) and what the docs promise.
PATTERNS = [['.*'], ['*.*'], ['?'], ['*.log'], ['cache/'], ['sub/*.tmp'], ['*'], ['/cache'], ['./d/*'], ['*?'],
            ['?*'], ['[.]*'], ['*[.]*'], ['x'], ['d/sub'], ['[!a]'], ['.??*'], ['*.'], ['n?l'], ['*/*'],
            ['cache/*'], ['*.log', 'cache/*', 'tmpdir'], ['b*'], ['.h*'], ['?.*'], ['a/b'], ['*/x'], ['cache*'],
            ['[!.]*'], ['*[!.]']]


@needs_gnu_tar
@pytest.mark.parametrize('patterns', PATTERNS, ids=['+'.join(p) for p in PATTERNS])
def test_tar_archives_exactly_what_the_walk_sees(tree, patterns):
    walked = _walked(tree, patterns)
    assert walked[0] == b'.'  # the root is never excluded
    assert _archived(tree, patterns) == walked


def test_documented_meaning_of_the_patterns(tree):
    everything = set(_walked(tree, []))
    hidden = {b'./.hidden', b'./.hd', b'./.hd/q', b'./d/.h2', b'./d/.hd', b'./d/.hd/q', b'./.link'}
    assert everything - set(_walked(tree, ['.*'])) == hidden
    # A pattern with / is anchored at the root; * never matches /.
    assert everything - set(_walked(tree, ['sub/*.tmp'])) == {b'./sub/x.tmp', b'./sub/deep.tmp'}
    assert everything - set(_walked(tree, ['/cache'])) == {b'./cache', b'./cache/k', b'./cache/x', b'./cache/x/z'}
    # Without /: the name at any depth; a trailing / is ignored.
    assert set(_walked(tree, ['cache/'])) == set(_walked(tree, ['cache']))
    assert b'./sub/cache' not in _walked(tree, ['cache/'])
    one_char = set(_walked(tree, ['?']))
    assert b'./ab.c' in one_char and b'./sub' in one_char and b'./sub/deep.tmp' in one_char
    assert not one_char & {b'./b', b'./x', b'./d', b'./d/sub', b'./a', b'./sub/y'}
    # '*' leaves out everything but the root.
    assert _walked(tree, ['*']) == [b'.']


@pytest.mark.parametrize('pattern', ['', '/', './', '.', 'a\\*', '[^a]*', '[[:alpha:]]*', 'a[/]b'])
def test_patterns_the_two_sides_would_read_differently_are_refused(pattern):
    assert _tree.exclude_pattern_error(pattern)


@pytest.mark.parametrize('pattern', ['.*', '*.log', 'cache/', '/cache', 'sub/*.tmp', '[!.]*', '[]]x', 'a[b'])
def test_usual_patterns_are_accepted(pattern):
    assert _tree.exclude_pattern_error(pattern) is None


def test_walk_does_not_enter_other_filesystems(tmp_path, monkeypatch):
    # A mount point is a directory whose st_dev differs from its parent's; simulated with a
    # patched lstat (mounting needs privileges the unit tests do not assume).
    root = tmp_path / 'r'
    (root / 'mnt' / 'inner').mkdir(parents=True)
    (root / 'mnt' / 'data').write_bytes(b'x')
    (root / 'top').write_bytes(b'x')
    real_lstat = os.lstat

    class _St(object):
        def __init__(self, st):
            self._st = st

        def __getattr__(self, name):
            if name == 'st_dev':
                return self._st.st_dev + 1
            return getattr(self._st, name)

    def lstat(path, dir_fd=None):
        st = real_lstat(path, dir_fd=dir_fd) if dir_fd is not None else real_lstat(path)
        return _St(st) if os.fsencode(path) == b'mnt' else st
    monkeypatch.setattr(_tree.os, 'lstat', lstat)
    assert [e.relpath for e in _tree.walk(str(root))] == [b'.', b'./mnt', b'./top']
    assert [e.relpath for e in _tree.walk(str(root), one_file_system=False)] == [
        b'.', b'./mnt', b'./top', b'./mnt/data', b'./mnt/inner']
