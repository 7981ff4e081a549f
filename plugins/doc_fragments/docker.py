# -*- coding: utf-8 -*-
# Copyright: volumeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment(object):

    # Connection options shared by every module of the collection. Set them once
    # for a play with module_defaults and the action group
    # group/volumeops.docker.docker.
    DOCUMENTATION = r'''
options:
  docker_host:
    description:
      - The Docker daemon to talk to, as C(unix://path), C(tcp://host:port) or C(ssh://user@host).
      - As the docker CLI does, an environment variable below that is set to the empty string counts as not set.
      - The C(ssh://) transport of the docker SDK uses paramiko; the remote user must be allowed to use
        the remote daemon's socket.
      - Modules that read or write volume data directly on the mountpoint do so only when the daemon is
        local (a C(unix://) socket on the host the module runs on); otherwise they use a helper container.
      - If not set, the value of the E(DOCKER_HOST) environment variable is used, else C(unix:///var/run/docker.sock).
    type: str
    default: unix:///var/run/docker.sock
    aliases: [docker_url]
  tls:
    description:
      - Connect using TLS without verifying the daemon's certificate.
      - Ignored (TLS with verification is used) when O(validate_certs=true).
      - If not set, the value of the E(DOCKER_TLS) environment variable is used.
    type: bool
    default: false
  validate_certs:
    description:
      - Connect using TLS and verify the daemon's certificate.
      - If not set, the value of the E(DOCKER_TLS_VERIFY) environment variable is used.
    type: bool
    default: false
    aliases: [tls_verify]
  ca_path:
    description:
      - CA certificate used to verify the daemon's certificate.
      - If not set and E(DOCKER_CERT_PATH) is set, C(ca.pem) in that directory is used.
    type: path
    aliases: [ca_cert, tls_ca_cert, cacert_path]
  client_cert:
    description:
      - Client certificate presented to the daemon.
      - If not set and E(DOCKER_CERT_PATH) is set, C(cert.pem) in that directory is used.
    type: path
    aliases: [tls_client_cert, cert_path]
  client_key:
    description:
      - Key of the client certificate.
      - If not set and E(DOCKER_CERT_PATH) is set, C(key.pem) in that directory is used.
    type: path
    aliases: [tls_client_key, key_path]
  api_version:
    description:
      - Docker Engine API version to use, for example C(1.41).
      - V(auto) negotiates the newest version both sides support.
      - If not set, the value of the E(DOCKER_API_VERSION) environment variable is used.
    type: str
    default: auto
    aliases: [docker_api_version]
  timeout:
    description:
      - Seconds to wait for an answer from the Docker API; 1 or more (0 and negative values are refused).
      - If not set, the value of the E(DOCKER_TIMEOUT) environment variable is used.
    type: int
    default: 60
notes:
  - "Connection options can be set once per play with
    C(module_defaults: {group/volumeops.docker.docker: {docker_host: ...}})."
requirements:
  - docker (Python SDK) >= 7.0.0 on the managed host (C(apt install python3-docker) or C(pip install docker))
  - paramiko on the managed host when O(docker_host) uses C(ssh://)
'''
