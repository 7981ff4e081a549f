# Copyright: (c) 2025, volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Multi-host test bench: N isolated "hosts" on one machine.

Each host is a network namespace joined to a bridge by a veth pair, plus a
private mount (and UTS) namespace held open by a tiny init process. Inside it
/run, /tmp, /root, /etc/ssh, /etc/docker, /var/lib/docker, /var/lib/containerd,
/var/backups and /srv are private per-host directories, and the host runs its
own dockerd (default socket, own data root) and its own sshd bound to its
address with its own host keys. Data can only move between hosts over the
network, as between real machines.

Why not `ip netns exec`: it remounts /sys for the new network namespace, which
hides the cgroup mounts and breaks dockerd. Hosts are entered with nsenter.

CLI:
  benchhosts.py up --hosts 2 [--state-dir DIR] [--net 77]
  benchhosts.py down [--state-dir DIR] [--net 77]
  benchhosts.py exec h1 -- docker volume ls
  benchhosts.py sshd stop|start h2
  benchhosts.py link down|up h2
  benchhosts.py status

Python:
  from benchhosts import Bench
  b = Bench('/var/lib/volumeops-bench'); b.up(2); b.exec('h1', ['docker', 'info']); b.down()

Standard library only (it runs before anything else is installed).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

DEFAULT_STATE_DIR = os.environ.get('VOLUMEOPS_BENCH_STATE', '/var/lib/volumeops-bench')
DEFAULT_NET = int(os.environ.get('VOLUMEOPS_BENCH_NET', '77'))
IMAGE = os.environ.get('VOLUMEOPS_TEST_IMAGE', 'volumeops-test/busybox:1')
# The interpreter Ansible uses on the bench hosts. VOLUMEOPS_HOST_PYTHON sets another one, e.g. to run
# the controller from a venv whose Python the hosts cannot see (a pyenv Python under /root, which each
# host mounts privately).
VENV_PYTHON = os.environ.get('VOLUMEOPS_HOST_PYTHON') or os.environ.get('VOLUMEOPS_VENV', '/opt/volumeops/venv') + '/bin/python'
MARKER = '.volumeops-bench'
ENV_TAG = 'VOLUMEOPS_BENCH_ID'

# Paths made private inside every host (per-host directory name, mount point).
PRIVATE_BINDS = (
    ('tmp', '/tmp'),
    ('root', '/root'),
    ('etc-ssh', '/etc/ssh'),
    ('etc-docker', '/etc/docker'),
    ('docker', '/var/lib/docker'),
    ('containerd', '/var/lib/containerd'),
    ('backups', '/var/backups'),
    ('srv', '/srv'),
)

# The init process of a host. It runs inside the new mount namespace, makes the
# private mounts, reports READY and then only keeps the namespaces alive.
INIT_SCRIPT = r'''#!/bin/sh
# volumeops bench host init: $1 = per-host dir, $2 = state dir, $3 = hostname
set -eu
H=$1
S=$2
hostname "$3"
# Drop the copies of the root namespace's mounts below the paths made private
# (e.g. the root dockerd's overlay mounts, other hosts' /run/netns files), so
# this namespace does not pin them.
for p in /run /tmp /root /etc/ssh /etc/docker /var/lib/docker /var/lib/containerd /var/backups /srv "$S"; do
    awk -v p="$p" '$5 == p || index($5, p "/") == 1 {print $5}' /proc/self/mountinfo \
        | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
done
mount -t tmpfs -o mode=755 bench-run /run
mkdir -p /run/sshd /run/lock /run/.benchhost
chmod 755 /run/sshd
# Stage the per-host dir first: the state dir may itself live below a path made private.
mount --bind "$H" /run/.benchhost
B=/run/.benchhost
mount --bind "$B/tmp" /tmp
mount --bind "$B/root" /root
mount --bind "$B/etc-ssh" /etc/ssh
mount --bind "$B/etc-docker" /etc/docker
mount --bind "$B/docker" /var/lib/docker
mount --bind "$B/containerd" /var/lib/containerd
mount --bind "$B/backups" /var/backups
mount --bind "$B/srv" /srv
umount "$B"
rmdir "$B"
# Hide the bench state dir (other hosts' data, the controller key) from this host.
if [ -d "$S" ]; then
    mount -t tmpfs -o mode=700,size=1m bench-hide "$S"
fi
echo READY
exec sleep infinity >/dev/null 2>&1 </dev/null
'''

SSHD_CONFIG = '''# volumeops bench host {name}
ListenAddress {ip}
Port 22
HostKey /etc/ssh/ssh_host_ed25519_key
HostKey /etc/ssh/ssh_host_ecdsa_key
PidFile /run/sshd.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# The second file lets a test give the migrate role another path (migrate_dest_authorized_keys).
AuthorizedKeysFile /root/.ssh/authorized_keys /etc/ssh/authorized_keys.d/%u
StrictModes yes
UseDNS no
MaxStartups 100:30:200
MaxSessions 64
PrintMotd no
AcceptEnv LANG LC_*
Subsystem sftp /usr/lib/openssh/sftp-server
'''


class BenchError(Exception):
    pass


def _run(argv, check=True, input=None, capture=True, timeout=120, env=None):
    """Run argv (a list; never through a shell)."""
    try:
        proc = subprocess.run(
            argv, check=False, input=input, timeout=timeout, env=env,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None)
    except subprocess.TimeoutExpired:
        raise BenchError('timed out after %ss: %s' % (timeout, ' '.join(argv)))
    if check and proc.returncode != 0:
        err = proc.stderr.decode(errors='replace').strip() if capture and proc.stderr else ''
        raise BenchError('%s failed (rc=%d): %s' % (' '.join(argv), proc.returncode, err))
    return proc


def _log(msg):
    if os.environ.get('VOLUMEOPS_BENCH_QUIET') != '1':
        sys.stderr.write('[bench] %s\n' % msg)
        sys.stderr.flush()


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _ns_inode(path):
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _all_pids():
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            yield int(entry)


def _read(path, mode='r'):
    try:
        with open(path, mode) as f:
            return f.read()
    except OSError:
        return None


class Bench:
    """A set of namespaced hosts h1..hN on bridge vobr0 (10.<net>.0.0/24)."""

    def __init__(self, state_dir=DEFAULT_STATE_DIR, net=DEFAULT_NET):
        self.state_dir = os.path.abspath(state_dir)
        self.net = int(net)
        if self.state_dir == '/run' or self.state_dir.startswith('/run/'):
            raise BenchError('the state dir cannot be below /run (each host gets a private /run)')
        if not 1 <= self.net <= 254:
            raise BenchError('net must be 1..254')
        # The contract names the default bridge vobr0; other nets get their own.
        self.bridge = 'vobr0' if self.net == 77 else 'vobr%d' % self.net
        self.prefix = 'vob%d-' % self.net
        self.comment = 'volumeops-bench-%d' % self.net
        self.controller_ip = '10.%d.0.1' % self.net
        self.tag = '%s:%d' % (self.state_dir, self.net)

    # ---- naming ---------------------------------------------------------------
    @staticmethod
    def host_names(n):
        return ['h%d' % i for i in range(1, n + 1)]

    def ip(self, host):
        return '10.%d.0.%d' % (self.net, 10 + int(host[1:]))

    def netns(self, host):
        return self.prefix + host

    def veth(self, host):
        return self.prefix + host  # root side; the peer is eth0 inside the host

    def host_dir(self, host):
        return os.path.join(self.state_dir, host)

    @property
    def inventory(self):
        return os.path.join(self.state_dir, 'inventory.ini')

    @property
    def key(self):
        return os.path.join(self.state_dir, 'controller_key')

    @property
    def known_hosts(self):
        return os.path.join(self.state_dir, 'known_hosts')

    @property
    def hosts(self):
        state = self._state()
        return list(state.get('hosts', [])) if state else []

    def _state(self):
        data = _read(os.path.join(self.state_dir, 'state.json'))
        return json.loads(data) if data else {}

    def init_pid(self, host):
        data = _read(os.path.join(self.host_dir(host), 'init.pid'))
        if not data:
            raise BenchError('host %s is not up (no init.pid in %s)' % (host, self.state_dir))
        pid = int(data)
        if not _pid_alive(pid):
            raise BenchError('host %s is down (init %d is gone)' % (host, pid))
        return pid

    def host_key(self, host, key_type='ed25519'):
        """The host's public key as '<type> <base64>'."""
        data = _read(os.path.join(self.host_dir(host), 'etc-ssh', 'ssh_host_%s_key.pub' % key_type))
        if not data:
            raise BenchError('no %s host key for %s' % (key_type, host))
        return ' '.join(data.split()[:2])

    # ---- running things inside a host ----------------------------------------
    def enter_argv(self, host):
        return ['nsenter', '-t', str(self.init_pid(host)), '-m', '-n', '-u', '--wd=/']

    def _env(self):
        env = dict(os.environ)
        env[ENV_TAG] = self.tag
        env.pop('DOCKER_HOST', None)
        env.setdefault('PATH', '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin')
        return env

    def exec(self, host, argv, check=True, input=None, capture=True, timeout=600):
        """Run argv inside host; returns CompletedProcess (stdout/stderr bytes when captured)."""
        return _run(self.enter_argv(host) + ['--'] + list(argv), check=check, input=input,
                    capture=capture, timeout=timeout, env=self._env())

    def popen(self, host, argv, **kwargs):
        kwargs.setdefault('env', self._env())
        return subprocess.Popen(self.enter_argv(host) + ['--'] + list(argv), **kwargs)

    def ssh_argv(self, host, user='root'):
        """ssh command line the controller uses (pinned known_hosts, no prompts)."""
        return ['ssh', '-i', self.key, '-o', 'UserKnownHostsFile=%s' % self.known_hosts,
                '-o', 'StrictHostKeyChecking=yes', '-o', 'BatchMode=yes',
                '-o', 'ConnectTimeout=10', '%s@%s' % (user, self.ip(host))]

    # ---- bring up --------------------------------------------------------------
    def up(self, n=2, load_image=True, image=IMAGE):
        if os.geteuid() != 0:
            raise BenchError('the bench needs root')
        if not 1 <= n <= 50:
            raise BenchError('hosts must be 1..50')
        started = time.time()
        self._lock()
        try:
            self._teardown()
            try:
                self._up(n, load_image, image)
            except BaseException:
                _log('bring-up failed; tearing down (logs were in %s)' % self.state_dir)
                self._print_logs()
                self._teardown()
                raise
        finally:
            self._unlock()
        _log('%d host(s) up in %.1fs; inventory %s' % (n, time.time() - started, self.inventory))
        return self

    def _up(self, n, load_image, image):
        hosts = self.host_names(n)
        self._claim()
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        with open(os.path.join(self.state_dir, MARKER), 'w') as f:
            f.write('volumeops multi-host bench state dir; removed by benchhosts.py down\n')
        with open(os.path.join(self.state_dir, 'state.json'), 'w') as f:
            json.dump({'hosts': hosts, 'net': self.net, 'bridge': self.bridge}, f)
        _run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', 'volumeops-bench-controller',
              '-f', self.key])
        # Needed as mount points; harmless when they exist.
        for _sub, target in PRIVATE_BINDS:
            os.makedirs(target, exist_ok=True)

        _run(['ip', 'link', 'add', self.bridge, 'type', 'bridge'])
        _run(['ip', 'addr', 'add', '%s/24' % self.controller_ip, 'dev', self.bridge])
        _run(['ip', 'link', 'set', self.bridge, 'up'])
        # The root dockerd sets FORWARD to DROP and bridge netfilter sends bridged
        # frames through it: without this, host-to-host traffic is silently dropped.
        for chain in ('FORWARD',):
            _run(['iptables', '-I', chain, '1', '-i', self.bridge, '-o', self.bridge,
                  '-m', 'comment', '--comment', self.comment, '-j', 'ACCEPT'])

        docker_image = None
        if load_image:
            docker_image = os.path.join(self.state_dir, 'image.tar')
            _run(['docker', 'save', '-o', docker_image, image], timeout=300)

        with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, n)) as pool:
            futures = [pool.submit(self._up_host, h, docker_image) for h in hosts]
            errors = []
            for fut in futures:
                try:
                    fut.result()
                except Exception as exc:  # collect all, report together
                    errors.append(str(exc))
            if errors:
                raise BenchError('; '.join(errors))
        if docker_image:
            os.unlink(docker_image)

        pub = _read(self.key + '.pub')
        with open(self.known_hosts, 'w') as f:
            for h in hosts:
                for kt in ('ed25519', 'ecdsa'):
                    f.write('%s %s\n' % (self.ip(h), self.host_key(h, kt)))
        with open(self.inventory, 'w') as f:
            f.write('# generated by tests/bench/benchhosts.py\n[bench]\n')
            for h in hosts:
                f.write('%s ansible_host=%s\n' % (h, self.ip(h)))
            f.write('\n[bench:vars]\nansible_user=root\n')
            f.write('ansible_ssh_private_key_file=%s\n' % self.key)
            f.write("ansible_ssh_common_args='-o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes'\n"
                    % self.known_hosts)
            f.write('ansible_python_interpreter=%s\n' % VENV_PYTHON)
        del pub
        # Every host must be reachable by SSH from the controller with the pinned keys.
        for h in hosts:
            self._wait(lambda h=h: _run(self.ssh_argv(h) + ['true'], check=False, timeout=20).returncode == 0,
                       30, 'ssh to %s' % h)

    def _up_host(self, host, docker_image):
        hdir = self.host_dir(host)
        ns = self.netns(host)
        ip = self.ip(host)
        for sub, _target in PRIVATE_BINDS:
            os.makedirs(os.path.join(hdir, sub), exist_ok=True)
        os.chmod(os.path.join(hdir, 'tmp'), 0o1777)
        os.chmod(os.path.join(hdir, 'root'), 0o700)
        os.makedirs(os.path.join(hdir, 'root', '.ssh'), mode=0o700, exist_ok=True)
        os.makedirs(os.path.join(hdir, 'log'), exist_ok=True)
        etc_ssh = os.path.join(hdir, 'etc-ssh')
        for name in ('ssh_config', 'moduli'):
            if os.path.exists(os.path.join('/etc/ssh', name)):
                shutil.copy2(os.path.join('/etc/ssh', name), etc_ssh)
        os.makedirs(os.path.join(etc_ssh, 'ssh_config.d'), exist_ok=True)
        for kt in ('ed25519', 'ecdsa'):
            _run(['ssh-keygen', '-q', '-t', kt, '-N', '', '-C', 'root@%s' % host,
                  '-f', os.path.join(etc_ssh, 'ssh_host_%s_key' % kt)])
        with open(os.path.join(etc_ssh, 'sshd_config'), 'w') as f:
            f.write(SSHD_CONFIG.format(name=host, ip=ip))
        auth = os.path.join(hdir, 'root', '.ssh', 'authorized_keys')
        shutil.copyfile(self.key + '.pub', auth)
        os.chmod(auth, 0o600)
        init = os.path.join(hdir, 'init.sh')
        with open(init, 'w') as f:
            f.write(INIT_SCRIPT)

        # Network: netns + veth pair (root side on the bridge, eth0 inside).
        _run(['ip', 'netns', 'add', ns])
        _run(['ip', 'link', 'add', self.veth(host), 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns])
        _run(['ip', 'link', 'set', self.veth(host), 'master', self.bridge])
        _run(['ip', 'link', 'set', self.veth(host), 'up'])
        for argv in (['link', 'set', 'lo', 'up'],
                     ['addr', 'add', '%s/24' % ip, 'dev', 'eth0'],
                     ['link', 'set', 'eth0', 'up'],
                     ['route', 'add', 'default', 'via', self.controller_ip]):
            _run(['ip', '-n', ns] + argv)

        # Mount (+UTS) namespace held by the init process.
        proc = subprocess.Popen(
            ['nsenter', '--net=/run/netns/%s' % ns, 'unshare', '--mount', '--uts',
             '--propagation', 'private', '/bin/sh', init, hdir, self.state_dir, host],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=open(os.path.join(hdir, 'log', 'init.log'), 'wb'),
            start_new_session=True, env=self._env(), cwd='/')
        line = proc.stdout.readline().strip()
        proc.stdout.close()
        if line != b'READY':
            raise BenchError('%s: init failed (see %s/log/init.log): %s'
                             % (host, hdir, (_read(os.path.join(hdir, 'log', 'init.log')) or '').strip()))
        with open(os.path.join(hdir, 'init.pid'), 'w') as f:
            f.write('%d\n' % proc.pid)

        # dockerd: own data root (the private /var/lib/docker), default socket in the
        # private /run, no bridge/iptables (the bench owns the network), cgroupfs driver
        # because dockerd cannot find a systemd hierarchy it likes here, and a cgroup
        # parent of its own so each host's containers are found (and accounted) apart.
        dlog = open(os.path.join(hdir, 'log', 'dockerd.log'), 'wb')
        self.popen(host, ['dockerd', '--bridge=none', '--iptables=false', '--ip-masq=false',
                          '--exec-opt', 'native.cgroupdriver=cgroupfs',
                          '--cgroup-parent', '/%s%s' % (self.prefix, host)],
                   stdin=subprocess.DEVNULL, stdout=dlog, stderr=dlog, start_new_session=True)
        dlog.close()
        self.sshd_start(host)
        self._wait(lambda: self.exec(host, ['docker', 'version', '--format', '{{.Server.Version}}'],
                                     check=False, timeout=20).returncode == 0,
                   60, 'dockerd on %s' % host)
        if docker_image:
            with open(docker_image, 'rb') as f:
                _run(self.enter_argv(host) + ['--', 'docker', 'load'], input=f.read(), timeout=300,
                     env=self._env())

    @staticmethod
    def _wait(pred, timeout, what):
        deadline = time.time() + timeout
        while True:
            try:
                if pred():
                    return
            except BenchError:
                pass
            if time.time() > deadline:
                raise BenchError('timed out waiting for %s' % what)
            time.sleep(0.2)

    # ---- faults ----------------------------------------------------------------
    def sshd_pids(self, host):
        return [pid for pid in self.host_pids(host)
                if (_read('/proc/%d/comm' % pid) or '').strip() == 'sshd' and not _zombie(pid)]

    def sshd_start(self, host):
        """Start the host's sshd (no-op when its listener runs) and wait until it answers."""
        pidfile = (_read('/proc/%d/root/run/sshd.pid' % self.init_pid(host)) or '').strip()
        if not (pidfile.isdigit() and int(pidfile) in self.sshd_pids(host)):
            self.exec(host, ['/usr/sbin/sshd', '-f', '/etc/ssh/sshd_config', '-E', '/run/sshd.log'])
        self._wait(lambda: self._tcp_ok(self.ip(host), 22), 20, 'sshd on %s' % host)

    def sshd_stop(self, host):
        """Stop the host's sshd: the listener AND every open session (cuts live transfers)."""
        pids = self.sshd_pids(host)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._wait(lambda: not self.sshd_pids(host), 10, 'sshd on %s to stop' % host)
        return pids

    def link_down(self, host):
        _run(['ip', 'link', 'set', self.veth(host), 'down'])

    def link_up(self, host):
        _run(['ip', 'link', 'set', self.veth(host), 'up'])

    @staticmethod
    def _tcp_ok(ip, port, timeout=1.0):
        try:
            with socket.create_connection((ip, port), timeout=timeout) as s:
                s.settimeout(timeout)
                return s.recv(4).startswith(b'SSH')
        except OSError:
            return False

    # ---- processes of a host ---------------------------------------------------
    def host_pids(self, host):
        """Processes in the host's network namespace (dockerd, containerd, sshd, sessions...)."""
        ino = _ns_inode('/run/netns/%s' % self.netns(host))
        if ino is None:
            return []
        me = os.getpid()
        pids = []
        for pid in _all_pids():
            if pid == me:
                continue
            try:
                if os.stat('/proc/%d/ns/net' % pid).st_ino == ino:
                    pids.append(pid)
            except OSError:
                pass
        return pids

    def _stray_pids(self):
        """Processes of this bench found by the tag in their environment or their cgroup."""
        tag = ('%s=%s' % (ENV_TAG, self.tag)).encode()
        cg = ('/%s' % self.prefix).encode()
        me = os.getpid()
        found = []
        for pid in _all_pids():
            if pid == me or _zombie(pid):
                continue
            env = _read('/proc/%d/environ' % pid, 'rb') or b''
            cgroups = _read('/proc/%d/cgroup' % pid, 'rb') or b''
            if tag in env.split(b'\0') or (b':' + cg) in cgroups:
                found.append(pid)
        return found

    # ---- tear down -------------------------------------------------------------
    def down(self):
        self._lock()
        try:
            self._teardown()
        finally:
            self._unlock()
        _log('bench down')

    def _netns_names(self):
        try:
            return [n for n in os.listdir('/run/netns') if n.startswith(self.prefix)]
        except OSError:
            return []

    @property
    def _owner_file(self):
        return '/run/volumeops-bench/net-%d' % self.net

    def _check_owner(self):
        """Refuse to touch a subnet that a live bench with another state dir uses."""
        owner = (_read(self._owner_file) or '').strip()
        if owner and owner != self.state_dir and self._netns_names():
            raise BenchError('net %d (bridge %s, 10.%d.0.0/24) is in use by the bench in %s; '
                             'use another --net (env VOLUMEOPS_BENCH_NET) or take that one down first'
                             % (self.net, self.bridge, self.net, owner))

    def _claim(self):
        os.makedirs(os.path.dirname(self._owner_file), exist_ok=True)
        with open(self._owner_file, 'w') as f:
            f.write(self.state_dir + '\n')

    def _teardown(self):
        """Remove everything of this bench, including leftovers of an interrupted run."""
        self._check_owner()
        victims = set(self._stray_pids())
        for ns in self._netns_names():
            host = ns[len(self.prefix):]
            victims.update(self.host_pids(host))
        victims.discard(os.getpid())
        self._kill(victims)
        for ns in self._netns_names():
            _run(['ip', 'netns', 'delete', ns], check=False)
        out = _run(['ip', '-o', 'link', 'show'], check=False).stdout.decode()
        for line in out.splitlines():
            parts = line.split(':')
            if len(parts) > 1:
                name = parts[1].strip().split('@')[0]
                if name.startswith(self.prefix) or name == self.bridge:
                    _run(['ip', 'link', 'delete', name], check=False)
        self._iptables_clean()
        self._cgroups_clean()
        if (_read(self._owner_file) or '').strip() in ('', self.state_dir):
            try:
                os.unlink(self._owner_file)
            except OSError:
                pass
        if os.path.isdir(self.state_dir):
            if os.listdir(self.state_dir) and not os.path.exists(os.path.join(self.state_dir, MARKER)) \
                    and os.listdir(self.state_dir) != ['.lock']:
                raise BenchError('%s exists and is not a bench state dir; not removing it' % self.state_dir)
            for entry in os.listdir(self.state_dir):
                if entry == '.lock':
                    continue
                path = os.path.join(self.state_dir, entry)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.unlink(path)

    @staticmethod
    def _kill(pids):
        pids = [p for p in pids if _pid_alive(p)]
        for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + wait
            while time.time() < deadline:
                pids = [p for p in pids if _pid_alive(p) and not _zombie(p)]
                if not pids:
                    return
                time.sleep(0.05)

    def _iptables_clean(self):
        out = _run(['iptables', '-S', 'FORWARD'], check=False).stdout.decode()
        for line in out.splitlines():
            if self.comment in line and line.startswith('-A '):
                rule = line.split()[1:]
                rule = [a.strip('"') for a in rule]
                _run(['iptables', '-D'] + rule, check=False)

    def _cgroups_clean(self):
        base = '/sys/fs/cgroup'
        try:
            controllers = os.listdir(base)
        except OSError:
            return
        for ctl in controllers:
            root = os.path.join(base, ctl)
            try:
                names = [n for n in os.listdir(root) if n.startswith(self.prefix)]
            except OSError:
                continue
            for name in names:
                for dirpath, _dirs, _files in sorted(os.walk(os.path.join(root, name)), reverse=True):
                    try:
                        os.rmdir(dirpath)
                    except OSError:
                        pass

    # ---- locking (one bring-up/tear-down of a state dir at a time) ------------
    def _lock(self):
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        self._lockf = open(os.path.join(self.state_dir, '.lock'), 'w')
        fcntl.flock(self._lockf, fcntl.LOCK_EX)

    def _unlock(self):
        lockf = getattr(self, '_lockf', None)
        if lockf:
            fcntl.flock(lockf, fcntl.LOCK_UN)
            lockf.close()
            self._lockf = None
            if not os.path.exists(os.path.join(self.state_dir, MARKER)):
                try:
                    os.unlink(os.path.join(self.state_dir, '.lock'))
                    os.rmdir(self.state_dir)
                except OSError:
                    pass

    def _print_logs(self):
        for h in self.hosts:
            for name in ('init.log', 'dockerd.log'):
                data = _read(os.path.join(self.host_dir(h), 'log', name))
                if data:
                    _log('--- %s %s (last lines)\n%s' % (h, name, '\n'.join(data.splitlines()[-15:])))


def _zombie(pid):
    stat = _read('/proc/%d/stat' % pid) or ''
    return ') Z' in stat


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
    parser.add_argument('--state-dir', default=DEFAULT_STATE_DIR)
    parser.add_argument('--net', type=int, default=DEFAULT_NET,
                        help='second octet of the bench subnet (default 77: 10.77.0.0/24 on vobr0)')
    sub = parser.add_subparsers(dest='cmd', required=True)
    p_up = sub.add_parser('up')
    p_up.add_argument('--hosts', type=int, default=2)
    p_up.add_argument('--no-image', action='store_true', help='do not load the test image')
    sub.add_parser('down')
    sub.add_parser('status')
    p_exec = sub.add_parser('exec')
    p_exec.add_argument('host')
    p_exec.add_argument('argv', nargs=argparse.REMAINDER)
    for name in ('sshd', 'link'):
        p = sub.add_parser(name)
        p.add_argument('action', choices=('stop', 'start') if name == 'sshd' else ('down', 'up'))
        p.add_argument('host')
    args = parser.parse_args(argv)
    bench = Bench(args.state_dir, args.net)
    try:
        if args.cmd == 'up':
            bench.up(args.hosts, load_image=not args.no_image)
            print(bench.inventory)
        elif args.cmd == 'down':
            bench.down()
        elif args.cmd == 'status':
            for h in bench.hosts:
                try:
                    pid = bench.init_pid(h)
                    sshd = 'up' if Bench._tcp_ok(bench.ip(h), 22) else 'down'
                    print('%s %s up init=%d sshd=%s' % (h, bench.ip(h), pid, sshd))
                except BenchError as exc:
                    print('%s %s %s' % (h, bench.ip(h), exc))
        elif args.cmd == 'exec':
            cmd = args.argv[1:] if args.argv[:1] == ['--'] else args.argv
            if not cmd:
                parser.error('exec needs a command after --')
            proc = subprocess.run(bench.enter_argv(args.host) + ['--'] + cmd, env=bench._env(), check=False)
            return proc.returncode
        elif args.cmd == 'sshd':
            (bench.sshd_stop if args.action == 'stop' else bench.sshd_start)(args.host)
        elif args.cmd == 'link':
            (bench.link_down if args.action == 'down' else bench.link_up)(args.host)
    except BenchError as exc:
        sys.stderr.write('benchhosts: %s\n' % exc)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
