# Copyright (c) volumeops.docker contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The raw_argv filter: an argument list as a command line for ansible.builtin.raw, no argument shell-parsed."""

from __future__ import annotations

import base64

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.collections import is_sequence
from ansible.module_utils.common.text.converters import to_bytes

# Run by /bin/sh on the host with the base64 words as its arguments: each is decoded into "$@" in
# turn, then the list is executed as it is. The sentinel "." keeps trailing newlines, which $(...)
# would strip. No single quote in it: it is itself single-quoted on the command line.
EXEC_SCRIPT = ('for a do v=$(printf %s "$a" | base64 -d && echo .) || exit 126; '
               'set -- "$@" "${v%.}"; shift; done; exec "$@"')


def raw_argv(argv):
    """The command line that runs ``argv`` (a list of strings or numbers) through ansible.builtin.raw.

    raw hands its command to the SSH user's login shell. Quoting the arguments for that shell would
    put volume and container names into shell syntax, and its rules depend on which shell it is.
    Here the login shell sees only a constant script and single-quoted base64 words (letters,
    digits, ``+/=``), which every shell reads alike.
    """
    if isinstance(argv, str) or not is_sequence(argv) or not argv:
        raise AnsibleFilterError('raw_argv: expected a non-empty list of arguments, got %r' % (argv,))
    words = []
    for arg in argv:
        if isinstance(arg, bool) or not isinstance(arg, (str, int)):
            raise AnsibleFilterError('raw_argv: arguments must be strings or integers, got %r' % (arg,))
        words.append("'%s'" % base64.b64encode(to_bytes(str(arg), errors='surrogate_or_strict')).decode('ascii'))
    return "/bin/sh -c '%s' volumeops-exec %s" % (EXEC_SCRIPT, ' '.join(words))


class FilterModule(object):
    def filters(self):
        return {'raw_argv': raw_argv}
