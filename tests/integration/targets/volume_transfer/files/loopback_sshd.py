# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A throw-away sshd on 127.0.0.1 for the volume_transfer tests: own host key, own authorized key.

  loopback_sshd.py start DIR   -> prints JSON {port, host_key, private_key, pid}
  loopback_sshd.py cut DIR     -> kill the per-connection sshd processes (connection cut mid-transfer)
  loopback_sshd.py stop DIR    -> stop the listener and every session it started
"""
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time


def free_port():
    for dummy in range(50):
        port = random.randint(20000, 60000)
        with socket.socket() as s:
            try:
                s.bind(('127.0.0.1', port))
                return port
            except OSError:
                continue
    raise SystemExit('no free port')


def start(d):
    os.makedirs(d, mode=0o700, exist_ok=True)
    os.makedirs('/run/sshd', mode=0o755, exist_ok=True)
    hk = os.path.join(d, 'host_ed25519')
    ck = os.path.join(d, 'client_ed25519')
    for key in (hk, ck):
        if not os.path.exists(key):
            subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', 'volumeops-test', '-f', key], check=True)
    with open(ck + '.pub') as f:
        pub = f.read()
    with open(os.path.join(d, 'authorized_keys'), 'w') as f:
        f.write(pub)
    port = free_port()
    cfg = os.path.join(d, 'sshd_config')
    with open(cfg, 'w') as f:
        f.write('\n'.join([
            'ListenAddress 127.0.0.1:%d' % port, 'HostKey %s' % hk, 'PidFile %s' % os.path.join(d, 'sshd.pid'),
            'AuthorizedKeysFile %s' % os.path.join(d, 'authorized_keys'), 'PermitRootLogin prohibit-password',
            'PasswordAuthentication no', 'KbdInteractiveAuthentication no', 'UsePAM no', 'StrictModes no',
            'LogLevel VERBOSE', 'MaxSessions 20', 'MaxStartups 50', '']))
    subprocess.run(['/usr/sbin/sshd', '-f', cfg, '-E', os.path.join(d, 'sshd.log')], check=True)
    for dummy in range(100):
        try:
            socket.create_connection(('127.0.0.1', port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    with open(hk + '.pub') as f:
        host_key = ' '.join(f.read().split()[:2])
    with open(os.path.join(d, 'sshd.pid')) as f:
        pid = int(f.read().strip())
    print(json.dumps(dict(port=port, host_key=host_key, private_key=ck, pid=pid, dir=d)))


def children(pid):
    out = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % entry) as f:
                fields = f.read().rsplit(')', 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def listener_pid(d):
    try:
        with open(os.path.join(d, 'sshd.pid')) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def cut(d):
    pid = listener_pid(d)
    killed = []
    if pid:
        for child in children(pid):  # per-connection sshd processes; the receiver below them sees EOF
            try:
                os.kill(child, signal.SIGKILL)
                killed.append(child)
            except ProcessLookupError:
                pass
    print(json.dumps(dict(killed=killed)))


def stop(d):
    pid = listener_pid(d)
    if pid:
        for child in children(pid):
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    print(json.dumps(dict(stopped=pid)))


if __name__ == '__main__':
    {'start': start, 'cut': cut, 'stop': stop}[sys.argv[1]](sys.argv[2])
