# Benchmark helper, not part of the collection's plugins: an Ansible callback that writes how
# long each task took (wall clock on the controller, first host start to last host result) to
# the JSON file named by VOLUMEOPS_TASK_TIMES. bench_migrate.py enables it for its playbook run
# so that the results say where the playbook's time goes.
from __future__ import annotations

DOCUMENTATION = r"""
name: volumeops_task_times
type: aggregate
short_description: Write per-task wall-clock times to a JSON file (benchmark helper)
description:
  - Writes a list of C({task, seconds}) in run order to the file named by E(VOLUMEOPS_TASK_TIMES).
requirements:
  - enabled in callbacks_enabled
"""

import json
import os
import time

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'aggregate'
    CALLBACK_NAME = 'volumeops_task_times'
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self._current = None
        self._rows = []
        self._start = time.monotonic()

    def _close(self):
        if self._current is not None:
            name, started = self._current
            self._rows.append({'task': name, 'seconds': round(time.monotonic() - started, 3)})
            self._current = None

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._close()
        self._current = (task.get_name(), time.monotonic())

    def v2_playbook_on_handler_task_start(self, task):
        self.v2_playbook_on_task_start(task, False)

    def v2_playbook_on_stats(self, stats):
        self._close()
        path = os.environ.get('VOLUMEOPS_TASK_TIMES')
        if path:
            with open(path, 'w') as handle:
                json.dump({'tasks': self._rows, 'since_start': round(time.monotonic() - self._start, 3)}, handle)
