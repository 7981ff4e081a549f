# -*- coding: utf-8 -*-
# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""volume_backup's messages that join several: a tool's message without a full stop must not run into the next."""

from __future__ import annotations

from ansible_collections.volumeops.docker.plugins.modules import volume_backup


def test_each_failed_volume_ends_with_a_full_stop():
    errors = [dict(volume='a', error='tar failed on a (exit 2): tar: ./f: Cannot open: Permission denied'),
              dict(volume='b', error='Volume b does not exist; nothing was backed up.'),
              dict(volume='c', error='zstd failed (exit 1): zstd: error 70 : Write error : No space left on device  ')]
    assert volume_backup.failed_volumes_message(errors, 4, False) == (
        'The backup of 3 of 4 volumes failed (the others were backed up; no archive was expired): '
        '[a] tar failed on a (exit 2): tar: ./f: Cannot open: Permission denied. '
        '[b] Volume b does not exist; nothing was backed up. '
        '[c] zstd failed (exit 1): zstd: error 70 : Write error : No space left on device.')
    assert volume_backup.failed_volumes_message(errors[1:2], 2, True).startswith(
        'The backup of 1 of 2 volumes failed (the others were checked; ')


def test_sentence():
    assert volume_backup.sentence('unsupported format') == 'unsupported format.'
    assert volume_backup.sentence('done. ') == 'done.'
    assert volume_backup.sentence('really?') == 'really?'
