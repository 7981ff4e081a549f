# -*- coding: utf-8 -*-
# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Input checks shared by the modules; pure functions, unit-tested."""

from __future__ import annotations

import re

# Docker's own rule for volume (and container) names.
VOLUME_NAME_RE = re.compile(r'^[a-zA-Z0-9][a-zA-Z0-9_.-]+$')


def volume_name_error(name, what='volume name'):
    """None when ``name`` is a valid Docker volume name, else a message saying why not."""
    # fullmatch: with match(), `$` would accept a trailing newline ("data\n").
    if not isinstance(name, str) or not VOLUME_NAME_RE.fullmatch(name):
        return ('Invalid %s %r: Docker volume names must match [a-zA-Z0-9][a-zA-Z0-9_.-]+ '
                '(at least two characters, starting with a letter or digit).' % (what, name))
    return None


# The options the local volume driver of Docker 20.10 and later accepts on Linux, and the options each one
# needs beside it (the daemon's validOpts and mandatoryOpts); anything else fails "docker volume create".
LOCAL_DRIVER_OPTIONS = ('type', 'device', 'o', 'size')
LOCAL_DRIVER_REQUIRED = (('device', ('type',)), ('type', ('device',)), ('o', ('device', 'type')))


def local_driver_options_error(options):
    """None when the local driver accepts these option keys, else one message naming every problem."""
    options = options or {}
    problems = []
    unknown = sorted(k for k in options if k not in LOCAL_DRIVER_OPTIONS)
    if unknown:
        problems.append('unknown option(s) %s (it accepts only %s)'
                        % (', '.join(repr(k) for k in unknown), ', '.join(LOCAL_DRIVER_OPTIONS)))
    for key, needs in LOCAL_DRIVER_REQUIRED:
        missing = [n for n in needs if key in options and n not in options]
        if missing:
            problems.append('option %r needs %s too' % (key, ' and '.join(repr(n) for n in missing)))
    if not problems:
        return None
    return ('The local volume driver would refuse driver_options: %s. Nothing was changed.' % '; '.join(problems))


def stringify_labels(labels, what='labels'):
    """Labels as a str->str dict, or raise ValueError naming the key and value.

    ``what`` is the option's name as the user wrote it (``labels``, ``driver_options``).
    Booleans and floats are refused: YAML turns ``yes`` into True and ``1.0``
    into 1.0, whose string forms ('True', '1.0') are rarely what the user typed.
    The message is word for word community.docker's, so playbooks (and their
    tests) that match it keep working after switching modules.
    """
    result = {}
    for key, value in (labels or {}).items():
        if isinstance(value, bool) or isinstance(value, float):
            raise ValueError('The value %s for %r of %s is not a string or something than can be safely '
                             'converted to a string!' % (value, key, what))
        if isinstance(value, int):
            value = str(value)
        if value is None:
            value = ''
        if not isinstance(value, str):
            raise ValueError('The value %r for %r of %s is not a string.' % (value, key, what))
        result[str(key)] = value
    return result
