#!/bin/sh
# Installs a build of apr on this host:
#   PREFIX/bin/{apr,apr-coord,apr-worker}
#   UNITDIR/apr-coord.service        (paths in it rewritten to PREFIX)
#   SYSCONFDIR/apr/apr.conf          (only when there is none: a host's own
#                                     configuration is never overwritten)
# and, only for a real install (root, no DESTDIR, the default PREFIX), the
# system user and group `apr` and MODELDIR for the models.
#
#   sh deploy/install.sh                         # make first; as root
#   PREFIX=/tmp/apr sh deploy/install.sh         # a trial tree, no user made
#   DESTDIR=/tmp/pkg sh deploy/install.sh        # staged for packaging
#
# Variables: BUILD (build), PREFIX (/usr/local), DESTDIR (empty),
# UNITDIR (PREFIX/lib/systemd/system), SYSCONFDIR (PREFIX/etc),
# MODELDIR (/var/lib/apr/models).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
BUILD=${BUILD:-$here/../build}
DEFAULT_PREFIX=/usr/local
PREFIX=${PREFIX:-$DEFAULT_PREFIX}
DESTDIR=${DESTDIR:-}
UNITDIR=${UNITDIR:-$PREFIX/lib/systemd/system}
SYSCONFDIR=${SYSCONFDIR:-$PREFIX/etc}
MODELDIR=${MODELDIR:-/var/lib/apr/models}

die() { echo "install.sh: $*" >&2; exit 2; }

# These paths end up in the unit file: absolute, and nothing that systemd
# (a '%' is a specifier, blanks split ExecStart=) or the sed below would read
# as syntax.
for v in PREFIX UNITDIR SYSCONFDIR MODELDIR; do
    eval "p=\$$v"
    case "$p" in
        /*) ;;
        *) die "$v must be an absolute path, got '$p'" ;;
    esac
    case "$p" in
        *[!A-Za-z0-9/._+-]*) die "$v: '$p' has characters a unit file cannot take (use [A-Za-z0-9/._+-])" ;;
    esac
done

for b in apr apr-coord apr-worker; do
    [ -x "$BUILD/$b" ] || die "$BUILD/$b is missing: run make first (or set BUILD)"
done
for f in apr-coord.service apr.conf; do
    [ -f "$here/$f" ] || die "$here/$f is missing"
done

echo "install.sh: installing into ${DESTDIR}${PREFIX}"
install -d "$DESTDIR$PREFIX/bin" "$DESTDIR$UNITDIR" "$DESTDIR$SYSCONFDIR/apr"
for b in apr apr-coord apr-worker; do
    # copy then rename, so a running apr-coord that restarts a worker never
    # execs a half-written apr-worker
    install -m 0755 "$BUILD/$b" "$DESTDIR$PREFIX/bin/.$b.new"
    mv -f "$DESTDIR$PREFIX/bin/.$b.new" "$DESTDIR$PREFIX/bin/$b"
done

sed -e "s|/usr/local/bin/|$PREFIX/bin/|g" \
    -e "s|/usr/local/etc/apr/|$SYSCONFDIR/apr/|g" \
    "$here/apr-coord.service" >"$DESTDIR$UNITDIR/.apr-coord.service.new"
chmod 0644 "$DESTDIR$UNITDIR/.apr-coord.service.new"
mv -f "$DESTDIR$UNITDIR/.apr-coord.service.new" "$DESTDIR$UNITDIR/apr-coord.service"
echo "install.sh: unit $DESTDIR$UNITDIR/apr-coord.service"

conf="$DESTDIR$SYSCONFDIR/apr/apr.conf"
if [ -e "$conf" ]; then
    echo "install.sh: kept the existing $conf (the shipped example is deploy/apr.conf)"
else
    sed -e "s|/usr/local/bin/|$PREFIX/bin/|g" -e "s|/usr/local/etc/apr/|$SYSCONFDIR/apr/|g" \
        -e "s|/var/lib/apr/models/|$MODELDIR/|g" \
        "$here/apr.conf" >"$conf"
    chmod 0644 "$conf"
    echo "install.sh: config $conf (edit model = before starting)"
fi

real=no
[ "$(id -u)" = 0 ] && [ -z "$DESTDIR" ] && [ "$PREFIX" = "$DEFAULT_PREFIX" ] && real=yes
if [ "$real" = no ]; then
    [ -n "$DESTDIR" ] && install -d "$DESTDIR$MODELDIR"
    echo "install.sh: not a real install (needs root, no DESTDIR, PREFIX=$DEFAULT_PREFIX):" \
        "user 'apr' and $MODELDIR not created, systemd not told"
    exit 0
fi

if ! getent passwd apr >/dev/null; then
    useradd --system --user-group --home-dir /var/lib/apr --no-create-home \
        --shell /usr/sbin/nologin --comment "apr inference server" apr
    echo "install.sh: created system user apr"
fi
# root owns the models: the service reads them but cannot change them
install -d -m 0755 /var/lib/apr
install -d -m 0750 -g apr "$MODELDIR"
echo "install.sh: put models in $MODELDIR (readable by group apr)"
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    echo "install.sh: next: systemctl enable --now apr-coord"
else
    echo "install.sh: systemd is not running here: start apr-coord by hand or on a systemd host"
fi
