# Copyright (c) volumeops.docker contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The name_list filter: a role input given as a list or as one comma-separated string, as a list."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.collections import is_sequence


def name_list(value):
    """Names from ``value``: a comma-separated string, a list, or nothing.

    Strings are split at commas (a list's items are not: a name or pattern in a list may hold a
    comma), trimmed, and empty ones dropped. Items that are not strings (e.g. per-volume dicts)
    are kept as they are. ``None`` gives an empty list.
    """
    if value is None:
        return []
    if isinstance(value, str):
        items = value.split(',')
    elif is_sequence(value):
        items = list(value)
    else:
        raise AnsibleFilterError('name_list: expected a list or a comma-separated string, got %s'
                                 % type(value).__name__)
    out = []
    for item in items:
        if isinstance(item, str):
            item = item.strip()
            if not item:
                continue
        out.append(item)
    return out


class FilterModule(object):
    def filters(self):
        return {'name_list': name_list}
