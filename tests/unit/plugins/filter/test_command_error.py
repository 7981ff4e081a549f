from __future__ import annotations

import pytest

from ansible_collections.volumeops.docker.plugins.filter.command_error import FilterModule, command_error

STDERR = 'Traceback (most recent call last):\n  File "<string>", line 1\n\nOSError: [Errno 28] No space left\n' \
         'Shared connection to 10.0.0.2 closed.\n'


@pytest.mark.parametrize('result, lines, expected', [
    ({'rc': 1, 'stderr': STDERR}, 3, 'Traceback (most recent call last): File "<string>", line 1 '
                                     'OSError: [Errno 28] No space left'),
    ({'rc': 1, 'stderr': STDERR}, 1, 'OSError: [Errno 28] No space left'),
    ({'rc': 127, 'stderr': 'sh: 1: docker: not found\n'}, 3, 'sh: 1: docker: not found'),
    ({'rc': 0, 'stderr': 'a warning\n'}, 3, ''),                      # did not fail
    ({'unreachable': True, 'msg': 'timed out'}, 3, ''),             # did not run
    ({'rc': 2, 'stderr': ''}, 3, ''),
    ({'rc': 2}, 3, ''),
    ('not a result', 3, ''),
])
def test_command_error(result, lines, expected):
    assert command_error(result, lines) == expected


def test_filter_is_registered():
    assert FilterModule().filters() == {'command_error': command_error}
