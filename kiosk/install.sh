#!/bin/bash
# install.sh: install or update the TOSCA kiosk on this machine (Debian 12 with systemd), or stage its files
# under a directory with --root. `install.sh --help` says what it does.
set -eu
set -o pipefail
umask 022

usage() {
    cat <<'EOF'
Usage: install.sh [--root DIR] [--cpus N] [--wheels DIR]
       install.sh --help

Installs the TOSCA kiosk from this project directory. Run it as root on the kiosk machine.

  - creates the groups tosca-engineers (who may log in over SSH, to the remote console only, and use
    observe.sock) and tosca-records (who may read the records), and the system user tosca (primary group
    tosca-records, login shell /usr/local/bin/tosca-kiosk-session, home /var/lib/tosca) when they are
    missing; an existing tosca is given tosca-records as its primary group
  - creates a virtual environment /opt/tosca/venv and pip-installs this project into it
  - creates the data directory /var/lib/tosca (tosca:tosca-engineers, mode 0710) and gives what is in it
    to the group tosca-records
  - installs /etc/systemd/system/tosca-controller.service and its drop-in cpu-affinity.conf,
    /etc/systemd/system/getty@tty1.service.d/autologin.conf, /usr/local/bin/tosca-kiosk-session,
    /etc/tosca/kiosk.conf, /etc/ssh/sshd_config.d/00-tosca-engineers.conf (every SSH login runs
    /usr/local/bin/tosca-remote-session, also installed: the remote console, never a shell)
  - installs /etc/tosca/ports.json and /etc/udev/rules.d/99-tosca.rules only when they do not exist:
    an existing copy holds the rig's own ports and USB serial numbers and is NEVER overwritten
  - runs `tosca db upgrade --data-dir /var/lib/tosca` as tosca (creates or migrates the database,
    backing up an existing one first)
  - reloads systemd and udev, checks and reloads sshd, enables and starts tosca-controller.service and
    restarts getty@tty1.service so that tty1 logs tosca in (ending any login on tty1; when install.sh
    itself runs on tty1, tosca is logged in there once you log out)

Running it again is safe: files that have not changed are left as they are. It refuses to run while
tosca-controller.service is active: stop the console and the controller first, when no treatment is
running (systemctl stop getty@tty1.service tosca-controller.service).

Options:
  --root DIR    stage every file under DIR (DIR/etc/..., DIR/usr/local/bin/..., DIR/var/lib/tosca) with
                its mode, without root; skip everything that needs root or a running system (users and
                groups, ownership, the virtual environment and pip, the database, systemctl, udevadm,
                sshd) and print each skipped command
  --cpus N      the number of CPUs of the kiosk machine (default: the CPUs online here). The controller is
                pinned to the last one (N-1) and the console to the others
  --wheels DIR  install the project and its dependencies from the wheels in DIR only (no package index)
  -h, --help    show this help

Exit status: 0 done, 1 refused or failed, 2 usage error.
EOF
}

fail() {
    printf 'install.sh: %s\n' "$*" >&2
    exit 1
}

usage_error() {
    printf 'install.sh: %s\n' "$*" >&2
    printf "Try 'install.sh --help'.\n" >&2
    exit 2
}

# --- Names and paths (the units and the session script use the same ones) -------------------------------
TOSCA_USER=tosca
ENGINEERS_GROUP=tosca-engineers
RECORDS_GROUP=tosca-records
VENV=/opt/tosca/venv
TOSCA_BIN=$VENV/bin/tosca
DATA_DIR=/var/lib/tosca
CONF_DIR=/etc/tosca
SESSION_BIN=/usr/local/bin/tosca-kiosk-session
REMOTE_BIN=/usr/local/bin/tosca-remote-session
UNIT_DIR=/etc/systemd/system
CONTROLLER_UNIT=tosca-controller.service
GETTY_UNIT=getty@tty1.service
SSHD_DROP_IN=/etc/ssh/sshd_config.d/00-tosca-engineers.conf
UDEV_RULES=/etc/udev/rules.d/99-tosca.rules

KIOSK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROJECT_DIR=$(dirname "$KIOSK_DIR")

# --- Arguments ------------------------------------------------------------------------------------------
ROOT=
CPUS=
WHEELS=
while [ $# -gt 0 ]; do
    case $1 in
        --root)
            [ $# -ge 2 ] || usage_error "--root needs a directory"
            ROOT=$2
            shift 2
            ;;
        --root=*)
            ROOT=${1#--root=}
            shift
            ;;
        --cpus)
            [ $# -ge 2 ] || usage_error "--cpus needs a number"
            CPUS=$2
            shift 2
            ;;
        --cpus=*)
            CPUS=${1#--cpus=}
            shift
            ;;
        --wheels)
            [ $# -ge 2 ] || usage_error "--wheels needs a directory"
            WHEELS=$2
            shift 2
            ;;
        --wheels=*)
            WHEELS=${1#--wheels=}
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            usage_error "unknown argument: $1"
            ;;
    esac
done

STAGED=no
if [ -n "$ROOT" ]; then
    STAGED=yes
    mkdir -p -- "$ROOT" || fail "cannot create the staging root $ROOT"
    ROOT=$(cd -- "$ROOT" && pwd)
    [ "$ROOT" != / ] || usage_error "--root / is this machine: run install.sh without --root, as root"
elif [ "$(id -u)" -ne 0 ]; then
    fail "must run as root to install the kiosk on this machine (or give --root DIR to stage the files in DIR)"
fi

if [ -z "$CPUS" ]; then
    CPUS=$(getconf _NPROCESSORS_ONLN)
fi
case $CPUS in
    '' | *[!0-9]* | 0*) usage_error "--cpus needs a whole number of 1 or more, not '$CPUS'" ;;
esac
if [ -n "$WHEELS" ] && [ ! -d "$WHEELS" ]; then
    usage_error "--wheels: no directory $WHEELS"
fi

# --- Helpers --------------------------------------------------------------------------------------------

# The path under the staging root (the path itself on a live install).
staged() {
    printf '%s%s' "$ROOT" "$1"
}

# Run a command on a live install; with --root print it instead.
live() {
    if [ "$STAGED" = yes ]; then
        printf 'skipped (--root):'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

# Create a directory (and missing parents) with MODE; an existing directory is left as it is.
make_dir() {
    local mode=$1 path
    path=$(staged "$2")
    if [ ! -d "$path" ]; then
        install -d -m "$mode" -- "$path"
    fi
}

# put MODE SOURCE TARGET: install SOURCE as TARGET with MODE (root:root on a live install) unless TARGET
# already has that content; sets CHANGED to yes or no.
put() {
    local mode=$1 source=$2 target=$3 path
    path=$(staged "$target")
    make_dir 0755 "$(dirname "$target")"
    if [ -f "$path" ] && cmp -s -- "$source" "$path"; then
        chmod "$mode" -- "$path"
        CHANGED=no
        echo "unchanged: $target"
    else
        install -m "$mode" -- "$source" "$path"
        CHANGED=yes
        echo "installed: $target"
    fi
}

# put_once MODE SOURCE TARGET: install SOURCE as TARGET only when TARGET does not exist; an existing TARGET
# (rig-specific settings) is not touched at all.
put_once() {
    local mode=$1 source=$2 target=$3 path
    path=$(staged "$target")
    if [ -e "$path" ] || [ -L "$path" ]; then
        echo "kept: $target (exists; never overwritten)"
        return
    fi
    make_dir 0755 "$(dirname "$target")"
    install -m "$mode" -- "$source" "$path"
    echo "installed: $target"
}

for file in tosca-controller.service getty@tty1.service.d/autologin.conf tosca-kiosk-session \
    tosca-remote-session sshd_config.d/00-tosca-engineers.conf 99-tosca.rules ports.json; do
    [ -f "$KIOSK_DIR/$file" ] || fail "missing $KIOSK_DIR/$file"
done
[ -f "$PROJECT_DIR/pyproject.toml" ] || fail "no pyproject.toml in $PROJECT_DIR (install.sh belongs in kiosk/)"

# --- Refuse to change a running kiosk -------------------------------------------------------------------
if [ "$STAGED" = no ]; then
    command -v systemctl >/dev/null 2>&1 || fail "systemctl not found: the kiosk needs systemd"
    if systemctl is-active --quiet "$CONTROLLER_UNIT"; then
        fail "$CONTROLLER_UNIT is running. When no treatment is running, stop the console and the controller \
(systemctl stop $GETTY_UNIT $CONTROLLER_UNIT), then run install.sh again"
    fi
fi

WORK=$(mktemp -d)
trap 'rm -rf -- "$WORK"' EXIT

# --- Groups and the kiosk user --------------------------------------------------------------------------
# Everything tosca creates (the database and its journal files, session folders, logs) belongs to its
# primary group, tosca-records, with group read (umask 027): the remote console, run as an engineer's own
# Unix user in that group, reads the records; only tosca writes them. tosca is not in tosca-engineers (the
# controller's service alone gets that group, to give it observe.sock), so it is no SSH user.
if [ "$STAGED" = no ]; then
    for group in dialout video "$ENGINEERS_GROUP" "$RECORDS_GROUP"; do
        if ! getent group "$group" >/dev/null; then
            groupadd --system "$group"
            echo "created group $group"
        fi
    done
    if getent passwd "$TOSCA_USER" >/dev/null; then
        usermod --shell "$SESSION_BIN" --gid "$RECORDS_GROUP" "$TOSCA_USER"
    else
        useradd --system --gid "$RECORDS_GROUP" --home-dir "$DATA_DIR" --no-create-home \
            --shell "$SESSION_BIN" --comment "TOSCA kiosk" "$TOSCA_USER"
        echo "created user $TOSCA_USER"
    fi
else
    live groupadd --system "$ENGINEERS_GROUP"
    live groupadd --system "$RECORDS_GROUP"
    live useradd --system --gid "$RECORDS_GROUP" --home-dir "$DATA_DIR" --no-create-home \
        --shell "$SESSION_BIN" --comment "TOSCA kiosk" "$TOSCA_USER"
fi

# --- Data directory: tosca's, and engineers may pass through it to observe.sock and the records ---------
make_dir 0755 "$(dirname "$DATA_DIR")"
install -d -m 0710 -- "$(staged "$DATA_DIR")"
live chown "$TOSCA_USER:$ENGINEERS_GROUP" "$DATA_DIR"
# What an earlier install made under tosca's own group (its sockets keep theirs: the controller sets them).
live find "$DATA_DIR" -mindepth 1 ! -type s ! -group "$RECORDS_GROUP" -exec chgrp -h "$RECORDS_GROUP" {} +

# --- Software -------------------------------------------------------------------------------------------
if [ "$STAGED" = no ]; then
    make_dir 0755 "$(dirname "$VENV")"
    python3 -m venv "$VENV" || fail "python3 -m venv failed (Debian: apt-get install python3-venv)"
    if [ -n "$WHEELS" ]; then
        "$VENV/bin/pip" install --no-input --no-index --find-links "$WHEELS" "$PROJECT_DIR"
    else
        "$VENV/bin/pip" install --no-input "$PROJECT_DIR"
    fi
    [ -x "$TOSCA_BIN" ] || fail "$TOSCA_BIN was not installed"
else
    live python3 -m venv "$VENV"
    live "$VENV/bin/pip" install --no-input "$PROJECT_DIR"
fi

# --- Files ----------------------------------------------------------------------------------------------
put 0644 "$KIOSK_DIR/tosca-controller.service" "$UNIT_DIR/$CONTROLLER_UNIT"

# The controller on the last CPU, the console on the others.
controller_cpu=$((CPUS - 1))
console_cpus=
if [ "$CPUS" -ge 3 ]; then
    console_cpus=0-$((CPUS - 2))
elif [ "$CPUS" -eq 2 ]; then
    console_cpus=0
fi
cat >"$WORK/cpu-affinity.conf" <<EOF
# Written by install.sh for a machine with $CPUS CPUs: the controller runs on the last one.
# The console runs on the others (TOSCA_CONSOLE_CPUS in /etc/tosca/kiosk.conf).
[Service]
CPUAffinity=$controller_cpu
EOF
put 0644 "$WORK/cpu-affinity.conf" "$UNIT_DIR/$CONTROLLER_UNIT.d/cpu-affinity.conf"

put 0644 "$KIOSK_DIR/getty@tty1.service.d/autologin.conf" "$UNIT_DIR/$GETTY_UNIT.d/autologin.conf"
getty_changed=$CHANGED
put 0755 "$KIOSK_DIR/tosca-kiosk-session" "$SESSION_BIN"
put 0755 "$KIOSK_DIR/tosca-remote-session" "$REMOTE_BIN"

make_dir 0755 "$CONF_DIR"
cat >"$WORK/kiosk.conf" <<EOF
# Written by install.sh; read by $SESSION_BIN (shell syntax).
# CPUs the console is pinned to: all but the controller's (CPU $controller_cpu of $CPUS). Empty: not pinned.
TOSCA_CONSOLE_CPUS=$console_cpus
EOF
put 0644 "$WORK/kiosk.conf" "$CONF_DIR/kiosk.conf"
put_once 0644 "$KIOSK_DIR/ports.json" "$CONF_DIR/ports.json"

put 0644 "$KIOSK_DIR/sshd_config.d/00-tosca-engineers.conf" "$SSHD_DROP_IN"
sshd_changed=$CHANGED
put_once 0644 "$KIOSK_DIR/99-tosca.rules" "$UDEV_RULES"

# --- Database -------------------------------------------------------------------------------------------
# `tosca db upgrade` refuses while a console holds the database: stop the kiosk console on tty1 first
# (the controller is not running, so nothing can emit). Not when this script itself runs on tty1.
on_tty1=no
if [ "$(tty 2>/dev/null || true)" = /dev/tty1 ]; then
    on_tty1=yes
fi
getty_stopped=no
if [ "$STAGED" = no ] && [ "$on_tty1" = no ] && systemctl is-active --quiet "$GETTY_UNIT"; then
    systemctl stop "$GETTY_UNIT"
    getty_stopped=yes
fi
(
    umask 027
    cd /
    live runuser -u "$TOSCA_USER" -- "$TOSCA_BIN" db upgrade --data-dir "$DATA_DIR"
)

# --- systemd, udev, sshd --------------------------------------------------------------------------------
live systemctl daemon-reload
if [ "$STAGED" = no ] && ! command -v udevadm >/dev/null 2>&1; then
    echo "note: udevadm not found; $UDEV_RULES applies once udev runs"
else
    live udevadm control --reload-rules
    live udevadm trigger --subsystem-match=tty --action=add
fi

if [ "$STAGED" = no ]; then
    if command -v sshd >/dev/null 2>&1; then
        if ! grep -Eqs '^[[:space:]]*Include[[:space:]]+/etc/ssh/sshd_config\.d/\*\.conf' /etc/ssh/sshd_config; then
            echo "WARNING: /etc/ssh/sshd_config does not include /etc/ssh/sshd_config.d/*.conf;" \
                "$SSHD_DROP_IN has no effect until it does" >&2
        fi
        if ! sshd -t; then
            if [ "$sshd_changed" = yes ]; then
                rm -f -- "$SSHD_DROP_IN"
                fail "sshd -t rejects the configuration with $SSHD_DROP_IN, so it was removed again; sshd was not reloaded"
            fi
            fail "sshd -t rejects the configuration; sshd was not reloaded"
        fi
        if [ "$sshd_changed" = yes ]; then
            systemctl try-reload-or-restart ssh.service
        fi
    else
        echo "note: sshd is not installed; $SSHD_DROP_IN applies once openssh-server is"
    fi
else
    live sshd -t
    live systemctl try-reload-or-restart ssh.service
fi

live systemctl enable --now "$CONTROLLER_UNIT"
live systemctl enable "$GETTY_UNIT"
if [ "$STAGED" = no ]; then
    if [ "$on_tty1" = yes ]; then
        echo "This runs on tty1: log out, and tty1 logs $TOSCA_USER in to the TOSCA console."
    elif [ "$getty_stopped" = yes ] || [ "$getty_changed" = yes ]; then
        systemctl restart "$GETTY_UNIT"
    else
        systemctl start "$GETTY_UNIT"
    fi
else
    live systemctl restart "$GETTY_UNIT"
fi

# --- What is left for a person to do --------------------------------------------------------------------
if grep -q 'FILL-IN-' "$(staged "$UDEV_RULES")"; then
    echo "WARNING: $UDEV_RULES still has FILL-IN placeholders: put the rig's USB vendor IDs, product IDs" \
        "and serial numbers in it (see kiosk/README.md); until then the controller cannot open the rig." >&2
fi
echo "done${ROOT:+ (staged under $ROOT)}"
