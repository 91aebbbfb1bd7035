#!/usr/bin/env bash
# Install hubd on a systemd server from the checkout this script is in. Idempotent: run it
# again from a newer checkout to upgrade (a running hubd is restarted onto the new code).
#
#   sudo scripts/install.sh                        install or upgrade
#   sudo scripts/install.sh --uninstall            remove the unit, the venv, the command links
#   sudo scripts/install.sh --uninstall --purge    ... and /etc/hubd and /var/lib/hubd too
#
# DESTDIR=/some/dir stages everything under that directory instead of /: no systemctl, no
# group ownership, and users are created in DESTDIR/etc/passwd. The venv made there is only
# for inspection (its scripts name the staged interpreter). PYTHON picks the interpreter.
set -euo pipefail

usage() { sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "install.sh: $*" >&2; exit 1; }

mode=install
purge=0
for arg in "$@"; do
    case "$arg" in
        --uninstall) mode=uninstall ;;
        --purge) purge=1 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done
[[ $purge == 0 || $mode == uninstall ]] || die "--purge only goes with --uninstall"

src="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
root=""
if [[ -n "${DESTDIR:-}" ]]; then
    root="$(realpath -m "$DESTDIR")"
    [[ "$root" != / ]] || root=""
fi
python="${PYTHON:-python3}"

prefix="$root/opt/hubd"
venv="$prefix/venv"
unit="$root/etc/systemd/system/hubd.service"
sysusers="$root/etc/sysusers.d/hubd.conf"
etc="$root/etc/hubd"
state="$root/var/lib/hubd"
bindir="$root/usr/local/bin"
# The links point at the final location, also when staged.
links=(hubd hubctl)

build_dir=""
trap 'rm -rf "$build_dir"' EXIT

# systemctl only on the real root of a machine where systemd is PID 1
live=0
if [[ -z "$root" && -d /run/systemd/system ]]; then
    live=1
fi
if [[ -z "$root" && $EUID -ne 0 ]]; then
    die "run as root (or set DESTDIR=dir to stage the install into a directory)"
fi

install_hub() {
    "$python" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
        || die "$python must be Python 3.11+ with venv (Debian: apt-get install python3-venv)"

    install -d -m 0755 "$prefix"
    if [[ ! -x "$venv/bin/python" ]]; then
        "$python" -m venv "$venv"
    fi
    # Built from a clean copy: setuptools builds inside the source tree, and a stale build/
    # left there would carry deleted modules into the new install. A local directory is always
    # rebuilt and reinstalled, so this is also the upgrade.
    build_dir="$(mktemp -d)"
    tar -C "$src" --exclude='./.*' --exclude=./build --exclude=./dist --exclude='*.egg-info' \
        --exclude=__pycache__ --exclude=./state --exclude=./tests --exclude=./benchmarks \
        -cf - . | tar -C "$build_dir" -xf -
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "$build_dir"
    install -m 0644 "$src/README.md" "$prefix/README.md"
    # the shipped default, to compare with /etc/hubd/config.toml after an upgrade
    install -m 0644 "$src/config.toml" "$prefix/config.toml.example"
    install -d -m 0755 "$bindir"
    for name in "${links[@]}"; do
        ln -sfn "/opt/hubd/venv/bin/$name" "$bindir/$name"
    done

    install -D -m 0644 "$src/systemd/hubd.sysusers" "$sysusers"
    systemd-sysusers ${root:+--root="$root"} hubd.conf

    install -D -m 0644 "$src/systemd/hubd.service" "$unit"
    install -d -m 0755 "$etc"
    local new_config=0
    if [[ ! -e "$etc/config.toml" ]]; then
        install -m 0640 "$src/config.toml" "$etc/config.toml"
        if [[ -z "$root" ]]; then
            chgrp hubd "$etc/config.toml"
        fi
        new_config=1
    fi
    # Read by systemd (LoadCredential=) as root; the daemon gets its own copies.
    install -d -m 0700 "$etc/credentials"

    if ((live)); then
        systemctl daemon-reload
        systemctl try-restart hubd.service
    fi

    local state_note="kept your $etc/config.toml (compare with $prefix/config.toml.example)"
    if ((new_config)); then
        state_note="wrote the default $etc/config.toml"
    fi
    cat <<EOF
hubd $("$venv/bin/python" -c 'import daemon; print(daemon.__version__)') installed in $venv; $state_note.

Next steps:
  1. Edit /etc/hubd/config.toml, then check it:   hubd check-config /etc/hubd/config.toml
  2. Put the secrets in place, one file each (the directory is root-only):
       systemd-ask-password -n "1C password:" > /etc/hubd/credentials/onec_password
       systemd-ask-password -n "MoySklad token:" > /etc/hubd/credentials/moysklad_token
     (moysklad_password instead with moysklad.auth = "password"; grpc_token only with
     control.tcp_listen), then: chmod 0600 /etc/hubd/credentials/*
  3. Start it now and at boot:                 systemctl enable --now hubd
  4. Watch it:                                 journalctl -u hubd -f    or    hubctl logs -f
  5. Let an operator use hubctl:               usermod -aG hubd NAME    (then log in again)
EOF
}

remove_link() {
    local link="$1" target="$2"
    if [[ -L "$link" && "$(readlink "$link")" == "$target" ]]; then
        rm -f "$link"
    fi
}

uninstall_hub() {
    if ((live)) && systemctl cat hubd.service >/dev/null 2>&1; then
        systemctl disable --now hubd.service
    fi
    rm -f "$unit"
    for name in "${links[@]}"; do
        remove_link "$bindir/$name" "/opt/hubd/venv/bin/$name"
    done
    rm -rf "${venv:?}"
    rm -f "$prefix/README.md" "$prefix/config.toml.example"
    rmdir "$prefix" 2>/dev/null || true
    if ((purge)); then
        rm -rf "${etc:?}" "${state:?}"
        rm -f "$sysusers"
    fi
    if ((live)); then
        systemctl daemon-reload
        systemctl reset-failed hubd.service 2>/dev/null || true
    fi
    local kept="kept $etc and $state (remove them with --uninstall --purge)"
    if ((purge)); then
        kept="removed $etc and $state"
    fi
    # systemd-sysusers never deletes accounts; files owned by the uid could outlive it
    echo "hubd uninstalled; $kept. The system user and group hubd stay (userdel hubd)."
}

if [[ $mode == install ]]; then
    install_hub
else
    uninstall_hub
fi
