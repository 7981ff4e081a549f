"""Collection-level checks: ansible-test sanity, ansible-lint, changelog lint,
and that the built collection tarball installs and works."""

from __future__ import annotations

import json
import subprocess
import tempfile
import uuid

import yaml

from suite_helpers import PYTHON_VERSION, assert_ok, run


def test_ansible_test_sanity(collection_root):
    # --local: no containers or delegation; the offline get-pip stand-in lets it
    # build its per-test virtual environments (see DEVELOPERS.md).
    proc = run(['ansible-test', 'sanity', '--local', '--python', PYTHON_VERSION, '--color', 'no'], cwd=collection_root)
    assert_ok(proc, 'ansible-test sanity')
    assert 'Running sanity test "validate-modules"' in proc.stdout


def test_no_sanity_ignores(collection_root):
    ignores = sorted(p.name for p in (collection_root / 'tests' / 'sanity').glob('ignore-*.txt')) \
        if (collection_root / 'tests' / 'sanity').is_dir() else []
    assert ignores == [], 'sanity ignore files must not exist: %s' % ignores


def test_ansible_lint_production(collection_root):
    targets = [p for p in ('roles', 'playbooks') if (collection_root / p).is_dir() and any((collection_root / p).iterdir())]
    if not targets:
        return
    proc = run(['ansible-lint', '--offline', '--profile', 'production', '--nocolor'] + targets, cwd=collection_root)
    assert_ok(proc, 'ansible-lint (production profile)')


def test_changelog_fragments_lint(collection_root):
    proc = run(['antsibull-changelog', 'lint'], cwd=collection_root)
    assert_ok(proc, 'antsibull-changelog lint')


def test_built_collection_installs_and_runs(collection_root):
    with tempfile.TemporaryDirectory() as tmp:
        proc = run(['ansible-galaxy', 'collection', 'build', '--output-path', tmp], cwd=collection_root)
        assert_ok(proc, 'ansible-galaxy collection build')
        tarball = '%s/volumeops-docker-0.1.0.tar.gz' % tmp
        listing = subprocess.run(['tar', '-tzf', tarball], stdout=subprocess.PIPE, text=True, check=True).stdout
        assert 'plugins/modules/volume.py' in listing
        assert 'tests/output' not in listing and '__pycache__' not in listing
        # Only the installed copy is visible: no sys.path scan (the suite's PYTHONPATH holds the
        # source tree), no default collection paths.
        env = {'ANSIBLE_COLLECTIONS_PATH': tmp + '/installed', 'ANSIBLE_COLLECTIONS_SCAN_SYS_PATH': 'false',
               'PYTHONPATH': ''}
        proc = run(['ansible-galaxy', 'collection', 'install', '-p', tmp + '/installed', tarball], cwd=tmp, env=env)
        assert_ok(proc, 'ansible-galaxy collection install')

        name = 'vobuild%s' % uuid.uuid4().hex[:8]
        subprocess.run(['docker', 'volume', 'create', '--label', 'built=yes', name], check=True,
                       stdout=subprocess.DEVNULL)
        try:
            # Run from a directory outside the source tree, with only the installed copy on the path.
            proc = run(['ansible', 'localhost', '-m', 'volumeops.docker.volume_info', '-a', 'name=%s' % name],
                       cwd=tmp, env=env)
            assert_ok(proc, 'running volume_info from the installed collection')
            # ad-hoc output: "localhost | SUCCESS => {json}"
            host = json.loads(proc.stdout[proc.stdout.index('{'):])
            assert host['exists'] is True
            assert host['volumes'][0]['labels'] == {'built': 'yes'}
            doc = run(['ansible-doc', '-t', 'module', 'volumeops.docker.volume_info'], cwd=tmp, env=env)
            assert_ok(doc, 'ansible-doc of the installed collection')
            assert 'usage' in doc.stdout and 'in_use_by' in doc.stdout
        finally:
            subprocess.run(['docker', 'volume', 'rm', name], check=False, stdout=subprocess.DEVNULL)


# Modules whose arguments are a free-form string: a template there is that string, not argsplat.
FREE_FORM = {'ansible.builtin.raw', 'ansible.builtin.command', 'ansible.builtin.shell', 'ansible.builtin.script',
             'ansible.builtin.include_tasks', 'ansible.builtin.import_tasks', 'ansible.builtin.include_vars',
             'ansible.builtin.include_role', 'ansible.builtin.import_playbook', 'volumeops.test.run'}


def _task_files(root):
    for base in ('roles', 'playbooks', 'tests/integration/targets'):
        yield from sorted((root / base).rglob('*.yml'))


def _merge_overrides(node, path, found):
    """Mappings that merge an anchor (<<) and give one of its keys again: a duplicate key to ansible-core 2.21."""
    if isinstance(node, yaml.MappingNode):
        merged, explicit = set(), set()
        for key, value in node.value:
            if key.tag == 'tag:yaml.org,2002:merge':
                sources = value.value if isinstance(value, yaml.SequenceNode) else [value]
                for src in sources:
                    merged.update(k.value for k, dummy in src.value)
            else:
                explicit.add(key.value)
        for key in sorted(merged & explicit):
            found.append('%s:%d: %s given again after a merge' % (path, node.start_mark.line + 1, key))
        for key, value in node.value:
            _merge_overrides(value, path, found)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _merge_overrides(item, path, found)


def test_task_files_pass_module_args_as_mappings(collection_root):
    """No task gives a module's whole arguments as one template ("argsplat", unsafe and warned about since
    ansible-core 2.19/2.21) or overrides a key it merged from a YAML anchor (a duplicate key to 2.21).
    Checked statically on every task file, whatever ansible-core runs the suite."""
    found = []
    for path in _task_files(collection_root):
        text = path.read_text()
        rel = path.relative_to(collection_root)
        _merge_overrides(yaml.compose(text), rel, found)
        tasks = yaml.safe_load(text)
        stack = list(tasks) if isinstance(tasks, list) else []
        while stack:
            task = stack.pop()
            if not isinstance(task, dict):
                continue
            for section in ('block', 'rescue', 'always', 'tasks', 'pre_tasks', 'post_tasks', 'handlers'):
                stack.extend(task.get(section) or [])
            for key, value in task.items():
                # Every module here is named by its FQCN (keywords have no dot); 'args' is the other way to pass them.
                if not (key == 'args' or '.' in key and key not in FREE_FORM):
                    continue
                if isinstance(value, str) and value.strip().startswith('{{') and value.strip().endswith('}}'):
                    found.append('%s: task %r gives %s its whole arguments as a template' % (rel, task.get('name'), key))
    assert not found, '\n'.join(found)
