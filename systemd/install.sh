#!/usr/bin/env bash
# Install edge-agent as a systemd service from the repository this script lives in, or remove
# it (--uninstall). Running it again changes only what differs. See systemd/README.md.
set -euo pipefail
umask 022 # the venv and the config must be readable by the service's user

usage() {
	cat <<'EOF'
usage: systemd/install.sh [OPTIONS]
       systemd/install.sh --uninstall [--root DIR]

Installs edge-agent into /opt/edge-agent/venv, a default config into /etc/edge-agent/agent.toml
(an existing one is kept), the unit into /etc/systemd/system, creates the system user
edge-agent and its device groups, then enables and starts the service.

  --root DIR              install under DIR instead of / (also: ROOT=DIR). Skips creating the
                          user and running systemctl. The venv is built for DIR/opt/edge-agent and
                          runs from there only (a venv cannot be moved).
  --python PY             the Python (3.11 or newer) to build the venv from (default: python3)
  --extras LIST           the project's extras, comma-separated (default: "pi" on a Raspberry
                          Pi, none elsewhere; --extras '' for none)
  --system-site-packages  let the venv see PY's own packages (e.g. Raspberry Pi OS's
                          python3-lgpio and python3-gpiozero)
  --no-deps               install edge-agent alone, without its dependencies and without
                          fetching build tools: nothing is downloaded. Its dependencies must
                          then come from elsewhere (--system-site-packages); the tests use it.
  --uninstall             stop and disable the service, remove the venv, the unit and the
                          sysusers file; keep the config, the buffer (/var/lib/edge-agent) and
                          the user
  -h, --help              this text
EOF
}

say() { printf 'install.sh: %s\n' "$*"; }
die() {
	printf 'install.sh: %s\n' "$*" >&2
	exit 1
}

here=$(cd "$(dirname "$0")" && pwd)
src=$(dirname "$here")
ROOT=${ROOT:-}
python=python3
extras=auto
site_packages=
no_deps=
action=install

while [ $# -gt 0 ]; do
	case $1 in
	--root | --python | --extras)
		[ $# -ge 2 ] || die "$1 needs a value (see --help)"
		case $1 in
		--root) ROOT=$2 ;;
		--python) python=$2 ;;
		--extras) extras=$2 ;;
		esac
		shift 2
		;;
	--root=*) ROOT=${1#*=} && shift ;;
	--python=*) python=${1#*=} && shift ;;
	--extras=*) extras=${1#*=} && shift ;;
	--system-site-packages) site_packages=--system-site-packages && shift ;;
	--no-deps) no_deps=1 && shift ;;
	--uninstall) action=uninstall && shift ;;
	-h | --help) usage && exit 0 ;;
	*) die "unknown option: $1 (see --help)" ;;
	esac
done

# An empty ROOT (or /) is the live system; anything else is a directory to install into.
if [ -n "$ROOT" ] && [ "$ROOT" != / ]; then
	mkdir -p "$ROOT"
	ROOT=$(cd "$ROOT" && pwd)
	live=
else
	ROOT=
	live=1
	[ "$(id -u)" = 0 ] || die "installing into / needs root: run it with sudo, or give --root DIR"
fi

opt=$ROOT/opt/edge-agent
venv=$opt/venv
stamp=$venv/.edge-agent-install
etc=$ROOT/etc/edge-agent
config=$etc/agent.toml
unit_dir=$ROOT/etc/systemd/system
unit=$unit_dir/edge-agent.service
sysusers=$ROOT/etc/sysusers.d/edge-agent.conf
state=$ROOT/var/lib/edge-agent

# systemctl only on the live system, and only when systemd runs it (what sd_booted() checks).
systemd_reason=
if [ -z "$live" ]; then
	systemd_reason="a root prefix was given ($ROOT)"
elif [ ! -d /run/systemd/system ]; then
	systemd_reason="systemd is not running here (no /run/systemd/system)"
elif ! command -v systemctl >/dev/null; then
	systemd_reason="systemctl is missing"
fi

# Copy $1 to $2 with mode $3 unless $2 already has that content; sets changed when it copies.
# (Functions report through variables, not their status: `f && x` would turn off set -e in f.)
put() {
	if [ -f "$2" ] && cmp -s "$1" "$2"; then
		[ "$(stat -c %a "$2")" = "$3" ] || chmod "$3" "$2"
		say "unchanged: $2"
		return 0
	fi
	local verb=installed
	[ -e "$2" ] && verb=updated
	mkdir -p "$(dirname "$2")"
	install -m "$3" "$1" "$2.new"
	mv -f "$2.new" "$2"
	say "$verb: $2"
	changed=1
}

uninstall() {
	if [ -z "$systemd_reason" ]; then
		if systemctl cat edge-agent.service >/dev/null 2>&1; then
			systemctl disable --now --quiet edge-agent.service
			say "stopped and disabled edge-agent.service"
		fi
	else
		say "skipped systemctl: $systemd_reason"
		rm -f "$unit_dir/multi-user.target.wants/edge-agent.service"
	fi
	local path
	for path in "$unit" "$sysusers" "$opt"; do
		if [ -e "$path" ]; then
			rm -rf "$path"
			say "removed: $path"
		fi
	done
	if [ -z "$systemd_reason" ]; then
		systemctl daemon-reload
	fi
	if [ -d "$unit.d" ]; then
		say "kept your drop-ins: $unit.d"
	fi
	say "kept: $etc (the config) and $state (the buffer)"
	say "kept the user edge-agent and its groups (it owns the buffer): userdel edge-agent removes it"
	return 0
}

# The source files that make the installed package, hashed with how it is installed: a run
# with the same hash leaves the venv alone.
source_stamp() {
	(
		cd "$src"
		find pyproject.toml README.md agent drivers -type f \
			! -name '*.pyc' ! -path '*/__pycache__/*' -exec sha256sum {} + | LC_ALL=C sort -k 2
		"$python" -c 'import sys; print(sys.executable, sys.version)'
		echo "extras=$extras site_packages=$site_packages no_deps=$no_deps"
	) | sha256sum | cut -d ' ' -f 1
}

# Everything that can stop the install is checked before anything is changed.
preflight() {
	if ! grep -qs '^name = "edge-agent"$' "$src/pyproject.toml"; then
		die "$src is not the edge-agent repository (run the install.sh inside it)"
	fi
	"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
		die "$python: edge-agent needs Python 3.11 or newer (choose one with --python)"
	# The venv runs on PY's installation, which the service must be able to see.
	local base
	base=$("$python" -c 'import sys; print(sys.base_prefix)')
	case $base in
	/root | /root/* | /home/* | /run/user/*)
		[ -z "$live" ] || die "$python lives in $base, which ProtectHome= hides from the service: choose a system Python with --python (e.g. /usr/bin/python3)"
		say "warning: $python lives in $base, which ProtectHome= hides from the service: fine for a test, not for a board"
		;;
	esac
	if [ -n "$live" ] && ! command -v systemd-sysusers >/dev/null; then
		die "systemd-sysusers is missing: create the user yourself (useradd --system edge-agent, in groups dialout i2c gpio spi) and run this again"
	fi
}

install_venv() {
	local want
	want=$(source_stamp)
	if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] &&
		"$venv/bin/edge-agent" --version >/dev/null 2>&1; then
		say "unchanged: $venv ($("$venv/bin/edge-agent" --version))"
		return 0
	fi
	# Built in a copy: building in the repository would leave build/ and *.egg-info there.
	work=$(mktemp -d)
	trap 'rm -rf "$work"' EXIT
	mkdir "$work/src"
	tar -C "$src" --exclude=__pycache__ -cf - pyproject.toml README.md agent drivers |
		tar -C "$work/src" -xf -
	local pip=(--quiet --disable-pip-version-check)
	say "building $venv from $src${extras:+ with extras [$extras]}${no_deps:+ without dependencies}"
	mkdir -p "$opt"
	"$python" -m venv --clear ${site_packages:+"$site_packages"} "$venv"
	if [ -n "$no_deps" ]; then
		# Nothing from the network: the wheel is built with PY's own setuptools.
		"$python" -m pip wheel "${pip[@]}" --no-deps --no-build-isolation --no-index \
			--wheel-dir "$work/dist" "$work/src"
		"$venv/bin/python" -m pip install "${pip[@]}" --no-warn-script-location --no-deps --no-index "$work"/dist/*.whl
	else
		"$venv/bin/python" -m pip install "${pip[@]}" --no-warn-script-location "$work/src${extras:+[$extras]}"
	fi
	rm -rf "$work"
	echo "$want" >"$stamp"
	changed=1
	say "installed: $venv ($("$venv/bin/edge-agent" --version))"
}

install_config() {
	if [ -e "$config" ]; then
		say "kept: $config"
		return 0
	fi
	local device
	device=$(uname -n | cut -d . -f 1 | tr -c 'A-Za-z0-9_\n-' -)
	mkdir -p "$etc"
	chmod 0755 "$etc"
	sed "s/@DEVICE_ID@/${device:-edge-agent}/" "$here/agent.toml" >"$config.new"
	chmod 0644 "$config.new"
	mv "$config.new" "$config"
	changed=1
	say "installed: $config (device_id \"${device:-edge-agent}\"; edit it for your sensors)"
}

install_user() {
	if [ -n "$live" ]; then
		systemd-sysusers "$sysusers"
		say "user edge-agent in groups: $(id -nG edge-agent)"
	else
		say "skipped creating the user edge-agent and the groups dialout i2c gpio spi: a root prefix was given; systemd-sysusers creates them from $sysusers at boot"
	fi
}

if [ "$action" = uninstall ]; then
	uninstall
	exit 0
fi

preflight
if [ "$extras" = auto ]; then
	extras=
	case $(tr -d '\0' 2>/dev/null </proc/device-tree/model || true) in
	"Raspberry Pi"*) extras=pi ;;
	esac
fi

changed=
put "$here/edge-agent.sysusers" "$sysusers" 0644
install_user
install_venv
install_config
put "$here/edge-agent.service" "$unit" 0644

if [ -n "$systemd_reason" ]; then
	say "skipped systemctl: $systemd_reason; on the target run: systemctl daemon-reload && systemctl enable --now edge-agent"
else
	if ! "$venv/bin/edge-agent" check -c "$config"; then
		say "warning: the service will not start until $config is fixed (exit status 2 is not restarted)"
	fi
	systemctl daemon-reload
	systemctl enable --quiet edge-agent.service
	verb=start
	[ -n "$changed" ] && verb=restart # new code, unit or config: the running agent must pick it up
	systemctl "$verb" edge-agent.service ||
		die "edge-agent.service did not start: journalctl -u edge-agent -n 50 shows why"
	say "edge-agent.service is enabled and running (journalctl -u edge-agent shows its logs)"
fi
