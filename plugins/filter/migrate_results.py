# Copyright (c) volumeops.docker contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The migrate role's results: migrate_pass_results (the figures and the verification of one transfer
pass of a pair) and migrate_summary_lines (the play's summary, one line per volume).

Python rather than Jinja templates in the role: Ansible compiles a task's templates again for every
task it runs.
"""

from __future__ import annotations

from ansible.module_utils.common.text.formatters import bytes_to_human
from ansible.module_utils.parsing.convert_bool import boolean


def _verification_problem(r, destination):
    """Why a final pass's result ``r`` does not prove a complete, verified copy, or ''."""
    if r.get('dest_changed_since_complete'):
        # Already migrated and written on the destination since, with the source unchanged since then: the
        # module copied nothing and says so; the two sides differ by design.
        return ''
    if boolean(r.get('verified', False), strict=False) and r.get('dest_state', '') == 'complete' \
            and r.get('source_fingerprint', '') == r.get('dest_fingerprint', '-'):
        return ''
    v = r['migrate__v']
    return ('Verification of %s -> %s:%s failed (verified=%s, destination state %s, source fingerprint %s, '
            'destination %s). The destination is not marked complete.'
            % (v['name'], destination, v['dest_name'], r.get('verified', '?'), r.get('dest_state', '?'),
               r.get('source_fingerprint', '?'), r.get('dest_fingerprint', '?')))


def migrate_pass_results(xfer, pair, destination, finalize, previous):
    """The figures of one transfer pass (``xfer``: the registered loop of volume_transfer), added to those of
    the pair's earlier pass (``previous``, a two_phase pair's warm pass), and the problems of a final pass.

    Per volume: bytes, bytes_sent and duration of all passes, final_duration, mb_per_s (the rate of the whole
    copy, as the summary shows it with the bytes and duration of all passes: a two_phase pair's last pass
    alone moved only the delta), pass_mb_per_s (each pass's own), changed (by any pass), verified, status
    (ok after the final pass, else staged). Returns ``{'results': [...], 'problems': [...]}``.
    """
    finalize = boolean(finalize, strict=False)
    results, problems = [], []
    for r in xfer.get('results') or []:
        v = r['migrate__v']
        prev = ([p for p in previous if p['volume'] == v['name']] + [{}])[0]
        duration = prev.get('duration', 0) + r.get('duration', 0)
        moved = bool(prev.get('changed', False) or r.get('changed', False))
        results.append({
            'source': pair['source'], 'destination': destination, 'volume': v['name'], 'dest_volume': v['dest_name'],
            'status': 'ok' if finalize else 'staged', 'changed': moved,
            'bytes': r.get('bytes', 0), 'bytes_sent': prev.get('bytes_sent', 0) + r.get('bytes_sent', 0),
            'duration': round(duration, 2), 'final_duration': round(r.get('duration', 0), 2),
            'mb_per_s': round(r.get('bytes', 0) / 1000000.0 / duration, 1) if moved and duration > 0 else 0,
            'pass_mb_per_s': list(prev.get('pass_mb_per_s', [])) + [r.get('mb_per_s', 0)],
            'verified': r.get('verified', False), 'verify': pair['verify'], 'strategy': pair['strategy'],
            'relayed': r.get('relayed', False),
            'note': 'already migrated, the destination written since' if r.get('dest_changed_since_complete') else '',
            'fingerprint': r.get('dest_fingerprint', ''),
        })
        if finalize:
            problem = _verification_problem(r, destination)
            if problem:
                problems.append(problem)
    return {'results': results, 'problems': problems}


def migrate_summary_lines(rows):
    """One line per summary row (a volume, or what failed beside the volumes: volume '-')."""
    out = []
    for r in rows:
        if r['status'] == 'ok':
            note = '' if r['changed'] else ' (unchanged%s)' % ((', ' + r['note']) if r.get('note') else '')
            out.append('%s:%s -> %s:%s  OK%s  %s in %.2fs (%.1f MB/s, %s sent%s)  downtime %.2fs  verified=%s (%s)' % (
                r['source'], r['volume'], r['destination'], r['dest_volume'], note, bytes_to_human(int(r['bytes'])),
                float(r['duration']), float(r['mb_per_s']), bytes_to_human(int(r['bytes_sent'])),
                ', relayed by the controller' if r.get('relayed') else '', float(r.get('downtime', 0)),
                r['verified'], r['verify']))
        elif r['volume'] == '-':
            out.append('%s -> %s  FAILED  %s' % (r['source'], r['destination'], (r.get('msg') or '').strip()))
        else:
            out.append('%s:%s -> %s  FAILED  %s' % (r['source'], r['volume'], r['destination'],
                                                    (r.get('msg') or '').strip()))
    return out or ['No volume was migrated.']


class FilterModule(object):
    def filters(self):
        return {'migrate_pass_results': migrate_pass_results, 'migrate_summary_lines': migrate_summary_lines}
