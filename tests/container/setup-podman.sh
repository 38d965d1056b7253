#!/usr/bin/env bash
# Prepare podman for tests/test_container.py and tests/stack/: packages, config, the base
# images and podman-compose.
#
# Run as root; safe to run again (each part is skipped when already done). There is no Docker
# engine on the CI machine and Docker Hub is out of reach, so:
#   - podman, runc and debootstrap come from Debian, and with them the CNI plugin dnsname:
#     without it a compose network has no DNS and `db` or `redis` never resolves;
#   - podman-compose comes from PyPI, into a virtualenv of its own in $ENTRYKIT_PODMAN_HOME
#     (CI makes the project's .venv anew), linked as /usr/local/bin/podman-compose;
#   - containers.conf / storage.conf live in $ENTRYKIT_PODMAN_HOME (default
#     /var/cache/entrykit-podman) and are used through CONTAINERS_CONF /
#     CONTAINERS_STORAGE_CONF, leaving /etc/containers alone;
#   - the Dockerfile's base image (python:3.11-slim-bookworm) is stood in for by a Debian
#     bookworm made with debootstrap from the mirror apt already uses, imported once and kept
#     in that storage, so later runs reuse it. It is also tagged debian:bookworm-slim, the
#     base of the stack's PostgreSQL and Redis images (infra/docker/postgres, redis).
# At the end it prints the variables the test needs; they are also written to
# $ENTRYKIT_PODMAN_HOME/env, which the test reads when they are not set.
set -euo pipefail

home="${ENTRYKIT_PODMAN_HOME:-/var/cache/entrykit-podman}"
base_image="${ENTRYKIT_BASE_IMAGE:-docker.io/library/python:3.11-slim-bookworm}"
debian_image="${ENTRYKIT_DEBIAN_IMAGE:-docker.io/library/debian:bookworm-slim}"
compose_version="${ENTRYKIT_PODMAN_COMPOSE_VERSION:-1.6.0}"
suite=bookworm

log() { printf 'setup-podman: %s\n' "$*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
    log "must run as root (apt-get, debootstrap)"
    exit 1
fi

mkdir -p "$home"
exec 9>"$home/.lock"
flock 9  # two CI jobs on one machine must not debootstrap into the same folder

# --- packages ---------------------------------------------------------------------------
need=()
for pkg in podman runc debootstrap fuse-overlayfs uidmap \
    golang-github-containernetworking-plugin-dnsname python3-venv; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
        || need+=("$pkg")
done
if ((${#need[@]})); then
    log "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# --- configuration ----------------------------------------------------------------------
# default_ulimits = []: podman's default nofile limit is above what this VM grants.
# runc + cgroupfs + file events: no systemd and cgroup v1 here.
cat >"$home/containers.conf" <<'EOF'
[containers]
default_ulimits = []
netns = "host"
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF

driver=overlay
if ! grep -qw overlay /proc/filesystems; then
    driver=vfs
fi
cat >"$home/storage.conf" <<EOF
[storage]
driver = "$driver"
graphroot = "$home/storage"
runroot = "/run/entrykit-podman${home//\//-}"
EOF

# Short names resolve to Docker Hub, as docker does, without an interactive prompt.
cat >"$home/registries.conf" <<'EOF'
unqualified-search-registries = ["docker.io"]
short-name-mode = "permissive"
EOF

cat >"$home/env" <<EOF
CONTAINERS_CONF=$home/containers.conf
CONTAINERS_STORAGE_CONF=$home/storage.conf
CONTAINERS_REGISTRIES_CONF=$home/registries.conf
ENTRYKIT_BASE_IMAGE=$base_image
PODMAN_COMPOSE=$home/compose-venv/bin/podman-compose
EOF
set -a
# shellcheck disable=SC1091
source "$home/env"
set +a

# --- base image -------------------------------------------------------------------------
if podman image exists "$base_image"; then
    log "base image $base_image present"
else
    tarball="$home/$suite-python.tar"
    if [[ ! -s $tarball ]]; then
        # The mirror apt uses here (deb822 or one-line sources).
        mirror=$(
            {
                awk '/^URIs:/ {print $2}' /etc/apt/sources.list.d/*.sources 2>/dev/null
                awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; break}}' \
                    /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null
            } | grep -v -- '-security' | grep -m1 -i debian || true
        )
        mirror="${mirror:-http://deb.debian.org/debian}"
        root="$home/rootfs"
        rm -rf "$root"
        log "debootstrap $suite from $mirror (a few minutes)"
        debootstrap --variant=minbase \
            --include=python3,python3-venv,python-is-python3,ca-certificates \
            "$suite" "$root" "$mirror" >"$home/debootstrap.log" 2>&1 \
            || { tail -n 30 "$home/debootstrap.log" >&2; exit 1; }
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
        tar -C "$root" --numeric-owner -cf "$tarball.part" .
        mv "$tarball.part" "$tarball"
        rm -rf "$root"
    fi
    log "importing $tarball as $base_image"
    podman import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        --quiet "$tarball" "$base_image" >/dev/null
fi

if ! podman image exists "$debian_image"; then
    log "tagging $base_image as $debian_image"
    podman tag "$base_image" "$debian_image"
fi

# --- podman-compose ---------------------------------------------------------------------
compose="$home/compose-venv/bin/podman-compose"
if ! "$compose" version 2>/dev/null | grep -q "podman-compose version $compose_version"; then
    log "installing podman-compose $compose_version from PyPI"
    rm -rf "$home/compose-venv"
    python3 -m venv "$home/compose-venv"
    "$home/compose-venv/bin/pip" install -q --disable-pip-version-check \
        "podman-compose==$compose_version" >"$home/compose-install.log" 2>&1 \
        || { tail -n 30 "$home/compose-install.log" >&2; exit 1; }
fi
ln -sf "$compose" /usr/local/bin/podman-compose

log "ready; the test needs:"
sed 's/^/export /' "$home/env"
