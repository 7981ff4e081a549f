# Copyright (c) volumeops.docker contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The command_error filter: why a command task failed, from the end of its stderr."""

from __future__ import annotations

import re

from collections.abc import Mapping

# What ssh adds after a command run with a tty, which is no part of the command's error.
SSH_NOISE = re.compile(r'^Shared connection to .* closed')


def command_error(result, lines=3):
    """The last ``lines`` non-empty lines of ``result``'s stderr, joined by spaces, when its command
    exited with a status other than 0; '' otherwise (no status: it did not run, or did not fail).

    A failed raw or command task's own msg says only "non-zero return code": its error is the end of
    its stderr.
    """
    if not isinstance(result, Mapping) or result.get('rc') in (None, 0):
        return ''
    kept = [line.strip() for line in (result.get('stderr') or '').splitlines()
            if line.strip() and not SSH_NOISE.match(line.strip())]
    return ' '.join(kept[-int(lines):]) if int(lines) > 0 else ''


class FilterModule(object):
    def filters(self):
        return {'command_error': command_error}
