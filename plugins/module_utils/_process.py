# -*- coding: utf-8 -*-
# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Starting the external commands (GNU tar, zstd, gzip) of the collection's pipelines.

Private to the collection. ``AnsibleModule.run_command`` is the usual way for a
module to run a command, but it reads the command's whole output into memory and
cannot join one process's output to another's input. The archive and transfer
pipelines stream gigabytes from tar through a compressor into this process (or
from this process through a decompressor into tar) with bounded memory, and the
transfer's receiver on the destination host runs without an AnsibleModule.
So they start their processes here, in one place, always from an argument list,
never through a shell. (``_tree`` starts its ``find`` itself: it imports nothing from
the collection, see its docstring.)
"""

from __future__ import annotations

import subprocess


def spawn(argv, **kwargs):
    """``subprocess.Popen(argv, **kwargs)``; ``argv`` is a list (no shell)."""
    if not isinstance(argv, (list, tuple)):
        raise TypeError('spawn() takes an argument list, not %s' % type(argv).__name__)
    # run_command cannot stream between processes (see the module's docstring).
    return subprocess.Popen(argv, **kwargs)  # pylint: disable=ansible-bad-function


def output(argv, stdin_data=None):
    """Run ``argv`` to its end: (exit status, stdout bytes, stderr bytes). ``stdin_data`` is written to its stdin."""
    proc = spawn(argv, stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(stdin_data)
    return proc.returncode, out, err
