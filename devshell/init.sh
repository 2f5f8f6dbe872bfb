#!/bin/bash
# devshell-init: converge a devshell's promised state, and check it.
#
#   devshell-init               init: converge, as root (idempotent: run it again, same state)
#   devshell-init --verify      print "FAIL <element>: <why>" per broken promise, exit with the count
#   devshell-init --session HASH [--session-id ID] [--as-root] [--script CONTENT | --script-base64 B64]
#                 [--script-id SHA]
#                               what the launcher runs at every entry, in one exec: init (skipped
#                               when HASH was converged before and verify still passes), verify,
#                               then the shell or script as dev. Exit 86: init or verify failed.
#   devshell-init --status      print why the last session failed, exit 1 if it did
#   devshell-init --idle        the container's own process (PATH from here, not the cell's env)
#   devshell-init --stop ID SIG send SIG to every process of session ID, KILL what is left after 2 s
#   devshell-init --bake        converge the image a locked devshell runs (accounts, sudoers, git's
#                               trust, dev's home link, the cell's setup), in a writable container
#
# Each promise has an init_* step and, right below it, the verify_* check of that step's result.
# Element names in FAIL lines are stable: suites and users grep them.
set -u
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

DEV=dev
DEV_UID=${DEVSHELL_DEV_UID:?DEVSHELL_DEV_UID is not set}
DEV_GID=${DEVSHELL_DEV_GID:?DEVSHELL_DEV_GID is not set}
DEV_HOME=${DEVSHELL_DEV_HOME:-/home/dev}
PATCHES=${DEVSHELL_PATCHES_MOUNT:-/patches}
CHECKOUT=${DEVSHELL_CHECKOUT_MOUNT:-/checkout}
# "ROLE=DEV:INO ...": the host directory each bind must be (recorded by the launcher, with
# the roles of spec.host_binds: checkout, patches, ai, memory).
BIND_IDS=${DEVSHELL_BIND_IDS:-}
GITCONFIG=/etc/gitconfig
# Where a session may start (Claude keys memory by its start directory): each gets a link.
START_DIRS="patches checkout workspace home"
WORKSPACE=${DEVSHELL_WORKSPACE:?DEVSHELL_WORKSPACE is not set}
CACHE=${DEVSHELL_CACHE_MOUNT:-}
AI_REPO=${DEVSHELL_AI_REPO:-}
AI_KEY=${DEVSHELL_AI_REPO_ENCODED:-}
MEMORY=${CACHE:+$CACHE/ai/memory/$AI_REPO/$AI_KEY}
# ro: skills and settings.json are read-only binds (the agent may not rewrite its own config).
AI_CONFIG=${DEVSHELL_AI_CONFIG:-rw}
# standard: dev has passwordless sudo. locked: never root (no sudo, no-new-privileges, a
# read-only root filesystem, sessions without capabilities), and dev's home is a link, baked
# into the image, to HOME_IN_VOLUME in the workspace volume.
PROFILE=${DEVSHELL_PROFILE:-standard}
HOME_IN_VOLUME=${DEVSHELL_HOME_IN_VOLUME:-}
SUDOERS=/etc/sudoers.d/devshell
SUDOERS_LINE="$DEV ALL=(ALL:ALL) NOPASSWD: ALL"
SETUP=/usr/local/libexec/devshell-setup
STATE=${DEVSHELL_STATE_DIR:?DEVSHELL_STATE_DIR is not set}
# host:port of the egress proxy under --network allow (egress.PROXY_ENV); empty otherwise.
PROXY=${DEVSHELL_PROXY:-}
PROXY_WAIT_SECONDS=10  # how long verify waits for the proxy to answer (squid after a restart)
APT_PROXY_CONF=/etc/apt/apt.conf.d/80devshell-egress
# Filesystems that already present host ownership: chown there is useless or slow.
MAPPED_FS=" virtiofs fakeowner osxfs fuse.grpcfuse "
# Filesystems whose inode numbers are not the host's: gVisor serves binds over 9p (its gofer),
# so the bind identity check cannot speak there either.
FOREIGN_INODE_FS=" 9p "

FAILURES=0
fail() { FAILURES=$((FAILURES + 1)); echo "FAIL $1: $2"; }
owner_of() { stat -c %u:%g "$1" 2>/dev/null; }
field() { getent "$1" "$2" | cut -d: -f"$3"; }

# verify runs at every entry, so it reads its facts once, with builtins and a single stat,
# instead of forking per check: accounts from /etc/passwd and /etc/group, and for every path
# it checks, owner, mode and link target (ST_OWNER, ST_MODE, ST_LINK; unset when missing).
# Files are read whole ($(<f) needs no fork) and split in memory: `read` in a loop costs a
# syscall or two per line, and the image's filesystem may be FUSE (fuse-overlayfs).
lines_of() {  # lines_of FILE: LINES=(its non-empty lines)
    local IFS=$'\n' content=
    content=$(<"$1") || true
    set -f
    LINES=($content)
    set +f
}
fields_of() {  # fields_of LINE: F=(its ':'-separated fields)
    local IFS=:
    set -f
    F=($1)
    set +f
}
load_facts() {
    local line path owner mode link
    PW_COUNT=0 PW_AT_UID=0 PW_UID= PW_GID= PW_HOME= GR_GID=
    lines_of /etc/passwd
    for line in "${LINES[@]+"${LINES[@]}"}"; do
        fields_of "$line"
        if [ "${F[0]}" = "$DEV" ]; then
            PW_COUNT=$((PW_COUNT + 1))
            [ "$PW_COUNT" = 1 ] && PW_UID=${F[2]:-} PW_GID=${F[3]:-} PW_HOME=${F[5]:-}
        fi
        [ "${F[2]:-}" = "$DEV_UID" ] && PW_AT_UID=$((PW_AT_UID + 1))
    done
    lines_of /etc/group
    for line in "${LINES[@]+"${LINES[@]}"}"; do
        [ "${line%%:*}" = "$DEV" ] && { fields_of "$line"; GR_GID=${F[2]:-}; break; }
    done
    declare -gA ST_OWNER=() ST_MODE=() ST_LINK=() ST_ID=()
    local IFS=$'\n' us=$'\037' stats id
    # find, not stat: coreutils' statx asks for AT_NO_AUTOMOUNT, which gVisor's (Debian's
    # runsc 20221219) refuses with EINVAL; find's fstatat works everywhere. Every path here
    # is absolute, so none reads as an option, and -P (the default) never follows a link.
    stats=$(find "$@" -maxdepth 0 -printf "%p\\037%D:%i\\037%U:%G\\037%m\\037%l\\n" 2>/dev/null)
    set -f  # host paths may hold * ? [
    for line in $stats; do  # path US dev:ino US owner US mode US link target (or nothing)
        path=${line%%"$us"*} line=${line#*"$us"}
        id=${line%%"$us"*} line=${line#*"$us"}
        owner=${line%%"$us"*} line=${line#*"$us"}
        mode=${line%%"$us"*} link=${line#*"$us"}
        ST_ID[$path]=$id ST_OWNER[$path]=$owner ST_MODE[$path]=$mode
        [ -z "$link" ] || ST_LINK[$path]=$link
    done
    set +f
}
owned_by_dev() { [ "${ST_OWNER[$1]:-}" = "$DEV_UID:$DEV_GID" ]; }
# dev_may BIT PATH: dev's permission (2 write, 1 search) on PATH from its owner and mode bits.
# ACLs and supplementary groups aside, this is what access(2) would say, without a fork.
dev_may() {
    local owner=${ST_OWNER[$2]:-} mode=${ST_MODE[$2]:-} bits
    [ -n "$owner" ] || return 1
    if [ "${owner%:*}" = "$DEV_UID" ]; then bits=$(((8#$mode >> 6) & 7))
    elif [ "${owner#*:}" = "$DEV_GID" ]; then bits=$(((8#$mode >> 3) & 7))
    else bits=$((8#$mode & 7)); fi
    ((bits & $1))
}
# dev can create files in DIR: search on every directory from ROOT (a mount point) down to
# DIR, write on DIR, and a writable mount (root's own -w is false only on a read-only one).
dev_can_write() {  # dev_can_write DIR [ROOT]
    local dir=${2:-$CACHE} part
    local -a parts=()
    [ "$1" = "$dir" ] || IFS=/ read -r -a parts <<<"${1#"$dir"/}"
    dev_may 1 "$dir" || return 1
    for part in "${parts[@]+"${parts[@]}"}"; do
        dir=$dir/$part
        dev_may 1 "$dir" || return 1
    done
    dev_may 2 "$1" && [ -w "$1" ]
}
links_to() { [ "${ST_LINK[$1]:-}" = "$2" ] && [ -d "$1" -o -f "$1" ]; }

# --- binds: each host directory is mounted exactly as the launcher checked it ---
# A path on the host can be swapped (a symlink for a directory) between the launcher's check
# and the engine's bind, by an agent process of another devshell; the inode cannot. Checked
# before init touches anything, and at every entry. Filesystems that present host files
# through a VM (MAPPED_FS) show other inode numbers: there the check cannot speak.
bind_target() {  # bind_target ROLE: REPLY=where that bind is mounted
    case $1 in
        checkout) REPLY=$CHECKOUT ;; patches) REPLY=$PATCHES ;; ai) REPLY=$CACHE/ai ;;
        memories) REPLY=$CACHE/ai/memory ;; memory) REPLY=$MEMORY ;; *) REPLY=/nonexistent/$1 ;;
    esac
}
verify_binds() {
    local pair target want
    for pair in $BIND_IDS; do
        bind_target "${pair%%=*}"
        target=$REPLY want=${pair#*=}
        mount_fs "$target"
        # A mount point where the spec put it, not one reached through a symlink that root
        # inside put in its way (mountinfo never follows links).
        [ -n "$REPLY" ] || { fail bind-identity "$target is not a mount point"; continue; }
        case $MAPPED_FS$FOREIGN_INODE_FS in *" $REPLY "*) continue ;; esac
        [ "${ST_ID[$target]:-missing}" = "$want" ] \
            || fail bind-identity "$target is ${ST_ID[$target]:-missing}, not the host directory $want that was checked"
    done
}

mount_options() {  # mount_options DIR: REPLY=the mount options of the mount at DIR
    local line point
    REPLY=
    [ -n "${MOUNTINFO+x}" ] || { lines_of /proc/self/mountinfo; MOUNTINFO=("${LINES[@]+"${LINES[@]}"}"); }
    for line in "${MOUNTINFO[@]+"${MOUNTINFO[@]}"}"; do  # 6th field: per-mount options
        point=${line#* * * * }
        [ "${point%% *}" = "$1" ] || continue
        point=${point#* }
        REPLY=${point%% *}
    done
}
mount_fs() {  # mount_fs DIR: REPLY=the filesystem type of the mount at DIR (empty if none)
    local line point
    REPLY=
    [ -n "${MOUNTINFO+x}" ] || { lines_of /proc/self/mountinfo; MOUNTINFO=("${LINES[@]+"${LINES[@]}"}"); }
    for line in "${MOUNTINFO[@]+"${MOUNTINFO[@]}"}"; do  # 5th field: mount point; fstype after " - "
        point=${line#* * * * }
        point=${point%% *}
        point=${point//\\040/ } point=${point//\\134/\\}  # mountinfo escapes ' ' and '\'
        [ "$point" = "$1" ] || continue
        REPLY=${line#* - }
        REPLY=${REPLY%% *}
    done
}

# --- dev group: the name dev at DEV_GID; an image's group already at that gid is renamed ---
init_group() {
    local owner
    owner=$(field group "$DEV_GID" 1)
    [ "$owner" = "$DEV" ] && return
    if [ -n "$owner" ]; then
        getent group "$DEV" >/dev/null && groupmod -n "devshell-old-$(field group "$DEV" 3)" "$DEV"
        groupmod -n "$DEV" "$owner"
    elif getent group "$DEV" >/dev/null; then
        groupmod -g "$DEV_GID" "$DEV"
    else
        groupadd -g "$DEV_GID" "$DEV"
    fi
}
verify_group() {
    [ "$GR_GID" = "$DEV_GID" ] || fail dev-group "group dev has gid '${GR_GID:-missing}', want $DEV_GID"
}

# --- dev user: one account named dev at DEV_UID; an image's user at that uid is renamed ---
init_user() {
    dedupe_accounts
    local owner
    owner=$(awk -F: -v u="$DEV_UID" '$3 == u { print $1; exit }' /etc/passwd)
    if [ "$owner" != "$DEV" ]; then
        if getent passwd "$DEV" >/dev/null; then
            if [ -n "$owner" ]; then
                usermod -l "devshell-old-$(field passwd "$DEV" 3)" "$DEV"
            else
                usermod -u "$DEV_UID" "$DEV"
            fi
        fi
        if [ -n "$owner" ]; then
            usermod -l "$DEV" "$owner"
        elif ! getent passwd "$DEV" >/dev/null; then
            useradd -M -u "$DEV_UID" -g "$DEV_GID" -d "$DEV_HOME" -s /bin/bash "$DEV"
        fi
    fi
    local old_home
    old_home=$(field passwd "$DEV" 6)
    [ "$(field passwd "$DEV" 4)" = "$DEV_GID" ] || usermod -g "$DEV_GID" "$DEV"
    [ "$(field passwd "$DEV" 7)" = /bin/bash ] || usermod -s /bin/bash "$DEV"
    [ "$old_home" = "$DEV_HOME" ] || usermod -d "$DEV_HOME" "$DEV"
    # Only when there is a password to drop: under locked the root filesystem is read-only
    # after the bake, and a converged account must need no write at all.
    [ -z "$(getent shadow "$DEV" | cut -d: -f2)" ] || passwd -d "$DEV" >/dev/null 2>&1 || true
    drop_aliases
    [ "$PROFILE" = locked ] || init_home "$old_home"  # locked: a link, made by init --bake
}
# Another account at dev's uid is a second name for dev (e.g. planted with useradd -o): drop it
# from passwd and shadow; its files, if any, are dev's already.
drop_aliases() {
    local aliases name file
    aliases=$(awk -F: -v u="$DEV_UID" -v n="$DEV" '$3 == u && $1 != n { print $1 }' /etc/passwd)
    for name in $aliases; do
        for file in /etc/passwd /etc/shadow; do
            awk -F: -v n="$name" '$1 != n' "$file" >"$file.devshell" && cat "$file.devshell" >"$file"
            rm -f "$file.devshell"
        done
    done
}
# A renamed account's home moves to /home/dev, unless the workspace volume is mounted inside
# it (runner's /home/runner/work/...): moving that would move the mount, so copy instead.
init_home() {
    local old=$1
    if [ ! -d "$DEV_HOME" ]; then
        if [ -n "$old" ] && [ "$old" != "$DEV_HOME" ] && [ -d "$old" ] \
            && [ "${WORKSPACE#"$old"/}" = "$WORKSPACE" ]; then
            mv "$old" "$DEV_HOME"
        else
            mkdir -p "$DEV_HOME"
            cp -a /etc/skel/. "$DEV_HOME"/ 2>/dev/null || true
        fi
    fi
    [ "$(owner_of "$DEV_HOME")" = "$DEV_UID:$DEV_GID" ] || chown -R "$DEV_UID:$DEV_GID" "$DEV_HOME"
}
# Hand-edited passwd/group files can carry a second 'dev' line: keep the one at the right id.
dedupe_accounts() {
    local file id
    for file in /etc/passwd /etc/group; do
        [ "$file" = /etc/passwd ] && id=$DEV_UID || id=$DEV_GID
        if [ "$(grep -c "^$DEV:" "$file")" -gt 1 ]; then
            awk -F: -v n="$DEV" -v id="$id" '
                $1 != n { print; next }
                { lines[++k] = $0; if ($3 == id && !keep) keep = k }
                END { if (!keep) keep = 1 } END { print lines[keep] }' "$file" > "$file.devshell"
            cat "$file.devshell" > "$file" && rm -f "$file.devshell"
        fi
    done
}
verify_user() {
    if [ "$PW_COUNT" = 0 ]; then fail dev-user "no account named dev"; return; fi
    [ "$PW_COUNT" = 1 ] || fail dev-unique "$PW_COUNT accounts named dev in /etc/passwd"
    [ "$PW_AT_UID" -le 1 ] || fail dev-unique "$PW_AT_UID accounts share uid $DEV_UID"
    [ "$PW_UID" = "$DEV_UID" ] || fail dev-uid "dev has uid $PW_UID, want $DEV_UID"
    [ "$PW_GID" = "$DEV_GID" ] || fail dev-gid "dev has primary gid $PW_GID, want $DEV_GID"
    [ "$PW_HOME" = "$DEV_HOME" ] || fail dev-home "dev's home is $PW_HOME, want $DEV_HOME"
    [ -d "$DEV_HOME" ] || fail dev-home "$DEV_HOME is missing"
    if [ "$PROFILE" = locked ]; then  # kept in the volume: the read-only root holds only a link
        [ "${ST_LINK[$DEV_HOME]:-}" = "$HOME_IN_VOLUME" ] \
            || fail dev-home "$DEV_HOME is not a link to $HOME_IN_VOLUME in the volume"
        owned_by_dev "$HOME_IN_VOLUME" || fail dev-home "$HOME_IN_VOLUME is not dev's"
    else
        owned_by_dev "$DEV_HOME" || fail dev-home "$DEV_HOME is not dev's"
    fi
}
# Under locked, dev's home is a link into the volume, made here in the image: the volume is
# not mounted while baking, so the directory it names is made by dev at the first session.
init_home_link() {
    [ "$(readlink "$DEV_HOME" 2>/dev/null)" = "$HOME_IN_VOLUME" ] && return
    rm -rf "$DEV_HOME" && ln -s "$HOME_IN_VOLUME" "$DEV_HOME"
}
init_home_in_volume() {  # as dev
    [ "$PROFILE" = locked ] && [ ! -d "$HOME_IN_VOLUME" ] || return 0
    mkdir -p "$HOME_IN_VOLUME" && cp -a /etc/skel/. "$HOME_IN_VOLUME"/ 2>/dev/null
    return 0
}

# --- sudo: passwordless, so the agent installs build deps with no host credential inside ---
# (standard). Under locked: no rule for dev, and no-new-privileges, so no setuid binary (sudo,
# su, or one an agent brings) raises privilege; the root filesystem is read-only.
init_sudoers() {
    if [ "$PROFILE" = locked ]; then
        [ ! -e "$SUDOERS" ] || rm -f "$SUDOERS"
        return 0
    fi
    [ -d /etc/sudoers.d ] || mkdir -p /etc/sudoers.d
    grep -Eq '^[@#]includedir /etc/sudoers.d' /etc/sudoers 2>/dev/null \
        || echo '#includedir /etc/sudoers.d' >>/etc/sudoers
    [ "$(cat "$SUDOERS" 2>/dev/null)" = "$SUDOERS_LINE" ] || echo "$SUDOERS_LINE" > "$SUDOERS"
    chown 0:0 "$SUDOERS" && chmod 0440 "$SUDOERS"
}
# status_field NAME: REPLY=the value of NAME: in this process's /proc/self/status (builtins)
status_field() {
    local line
    REPLY=
    [ -n "${STATUS_LINES+x}" ] || { lines_of /proc/self/status; STATUS_LINES=("${LINES[@]+"${LINES[@]}"}"); }
    for line in "${STATUS_LINES[@]+"${STATUS_LINES[@]}"}"; do
        case $line in "$1":*) REPLY=${line#"$1":}; REPLY=${REPLY//[[:space:]]/}; return ;; esac
    done
}
# --- seccomp: this process (and so the session it becomes) is under devshell's filter. The
# engine applies it to every process of the container; a runtime may not, to docker exec's:
# gVisor 20221219 (Debian's runsc) runs them unfiltered, and then setuid bits and FIFOs made
# in /patches reach the host. Such a session must not start. ---
verify_seccomp() {
    status_field Seccomp
    [ "$REPLY" = 2 ] || fail seccomp "this session runs without devshell's seccomp filter (Seccomp: ${REPLY:-?}): the runtime does not apply it to docker exec (gVisor); under --profile locked devshell installs it itself"
}
# Where the runtime left this docker exec unfiltered (gVisor), a locked devshell's init runs
# itself again under the profile's BPF (baked in by the launcher, devshell/seccomp_bpf.py),
# installed by perl's syscall(): prctl(PR_SET_NO_NEW_PRIVS) — locked has it already — then
# seccomp(SECCOMP_SET_MODE_FILTER). Everything the session starts inherits it. Not under
# standard: without CAP_SYS_ADMIN a filter needs no-new-privileges, which sudo cannot live with.
SECCOMP_BPF=/usr/local/libexec/devshell-seccomp.bpf
ensure_filtered() {
    if [ -n "${DEVSHELL_FILTER_TRIED:-}" ]; then unset DEVSHELL_FILTER_TRIED; return 0; fi
    [ "$PROFILE" = locked ] && [ -r "$SECCOMP_BPF" ] && command -v perl >/dev/null || return 0
    status_field Seccomp
    [ "$REPLY" != 2 ] || return 0
    unset STATUS_LINES
    local numbers  # prctl and seccomp
    case ${HOSTTYPE:-} in x86_64) numbers="157 317" ;; aarch64) numbers="167 277" ;; *) return 0 ;; esac
    export DEVSHELL_FILTER_TRIED=1  # once: if it did not take, verify says so
    # shellcheck disable=SC2086
    exec perl -e '
        my ($prctl, $seccomp, $file) = splice(@ARGV, 0, 3);
        open(my $f, "<:raw", $file) or die "devshell-init: $file: $!\n";
        my $program = do { local $/; <$f> };
        syscall($prctl, 38, 1, 0, 0, 0) == 0 or die "devshell-init: no_new_privs: $!\n";
        syscall($seccomp, 1, 0, pack("S x6 P", length($program) / 8, $program)) == 0
            or die "devshell-init: seccomp: $!\n";
        exec { $ARGV[0] } @ARGV or die "devshell-init: exec: $!\n";' $numbers "$SECCOMP_BPF" "$0" "$@"
}
verify_locked() {
    local line
    [ ! -e "$SUDOERS" ] && [ ! -L "$SUDOERS" ] || fail sudoers "$SUDOERS exists under the locked profile"
    status_field NoNewPrivs
    line=$REPLY
    # gVisor's status has no such line (it keeps the flag all the same): ask prctl, by setpriv.
    [ -n "$line" ] || line=$(setpriv --dump 2>/dev/null | sed -n 's/^no_new_privs: *//p')
    [ "${line//[[:space:]]/}" = 1 ] || fail no-new-privileges "the container does not set no-new-privileges"
    mount_options /
    case ,$REPLY, in *,ro,*) ;; *) fail read-only-root "/ is mounted ${REPLY:-?}, not read-only" ;; esac
}
verify_sudoers() {
    local line= included=no
    [ "$PROFILE" != locked ] || { verify_locked; return; }
    command -v sudo >/dev/null || fail sudoers "sudo is not installed in the image"
    lines_of /etc/sudoers
    for line in "${LINES[@]+"${LINES[@]}"}"; do
        case $line in [@#]includedir\ /etc/sudoers.d*) included=yes ;; esac
    done
    [ "$included" = yes ] || fail sudoers "/etc/sudoers does not include /etc/sudoers.d"
    { read -r line <"$SUDOERS"; } 2>/dev/null
    [ "$line" = "$SUDOERS_LINE" ] || fail sudoers "$SUDOERS lacks '$SUDOERS_LINE'"
    [ "${ST_MODE[$SUDOERS]:-}:${ST_OWNER[$SUDOERS]:-}" = 440:0:0 ] \
        || fail sudoers "$SUDOERS is not root's with mode 0440"
}

# --- /patches and /checkout: the drop dir the launcher made for dev, the user's checkout
# read-only. Nothing here changes a host file's owner or mode: the launcher gave dev the drop
# dir when it created it, and the checkout is the user's. git inside may clone the checkout,
# which belongs to another uid (the host user's).
checkout_trusted() {
    local line top=no git_dir=no
    lines_of "$GITCONFIG" 2>/dev/null
    for line in "${LINES[@]+"${LINES[@]}"}"; do
        case $line in
            $'\t'"directory = $CHECKOUT") top=yes ;;
            $'\t'"directory = $CHECKOUT/.git") git_dir=yes ;;
        esac
    done
    [ "$top:$git_dir" = yes:yes ]
}
init_checkout_trust() {
    checkout_trusted && return
    printf '[safe]\n\tdirectory = %s\n\tdirectory = %s\n' "$CHECKOUT" "$CHECKOUT/.git" >>"$GITCONFIG"
}
verify_patches() {
    dev_can_write "$PATCHES" "$PATCHES" \
        || fail patches-writable "dev cannot write $PATCHES (${ST_OWNER[$PATCHES]:-missing}, mode ${ST_MODE[$PATCHES]:-?})"
    [ ! -w "$CHECKOUT" ] || fail checkout-readonly "$CHECKOUT is writable: it must be a read-only bind"
    checkout_trusted || fail checkout-trusted "$GITCONFIG does not mark $CHECKOUT as a git safe.directory"
}

# --- workspace: the cell's volume; chown -R only when its top owner differs (it can be GBs) ---
owner_is_mapped() {
    mount_fs "$WORKSPACE"
    case $MAPPED_FS in *" $REPLY "*) [ -n "$REPLY" ] ;; *) return 1 ;; esac
}
init_workspace() {
    if ! owner_is_mapped && [ "$(owner_of "$WORKSPACE")" != "$DEV_UID:$DEV_GID" ]; then
        chown -R "$DEV_UID:$DEV_GID" "$WORKSPACE"  # -R never follows a symlink below the top
    fi
    # Under locked, dev's home in the volume is given back to dev (root of an earlier standard
    # session on this volume may have taken it). -h: if dev swaps it for a link meanwhile,
    # the link is what changes owner, never what it points to.
    if [ "$PROFILE" = locked ] && [ -d "$HOME_IN_VOLUME" ] && [ ! -L "$HOME_IN_VOLUME" ] \
        && ! owner_is_mapped && [ "$(owner_of "$HOME_IN_VOLUME")" != "$DEV_UID:$DEV_GID" ]; then
        chown -R -h "$DEV_UID:$DEV_GID" "$HOME_IN_VOLUME"
    fi
}
init_workdirs() {  # as dev
    local d
    for d in "${DEVSHELL_SRC:-}" "${DEVSHELL_BUILD:-}" "${DEVSHELL_CCACHE:-}" "${DEVSHELL_INSTALL:-}"; do
        [ -z "$d" ] || [ -d "$d" ] || mkdir -p "$d"
    done
}
verify_workspace() {
    if ! owner_is_mapped; then
        owned_by_dev "$WORKSPACE" \
            || fail workspace-owner "$WORKSPACE is ${ST_OWNER[$WORKSPACE]:-missing}, want $DEV_UID:$DEV_GID"
    fi
    local d
    for d in "${DEVSHELL_SRC:-}" "${DEVSHELL_BUILD:-}" "${DEVSHELL_CCACHE:-}" "${DEVSHELL_INSTALL:-}"; do
        [ -z "$d" ] || [ -d "$d" ] || fail workspace-dirs "$d is missing"
    done
}

# --- AI state on /cache: skills, settings.json and per-project memory, linked into ~/.claude ---
# Claude keys a project by its working directory with '/' -> '-': link all three a session may
# start in to the one memory dir of this host repository.
memory_link() {  # sets REPLY to ~/.claude/projects/<start dir with / -> ->/memory (no fork)
    local dir
    case $1 in
        patches) dir=$PATCHES ;; checkout) dir=$CHECKOUT ;; workspace) dir=$WORKSPACE ;; home) dir=$DEV_HOME ;;
    esac
    REPLY=$DEV_HOME/.claude/projects/${dir//\//-}/memory
}
link() {  # link TARGET NAME (as dev): a symlink; a real dir in the way is kept aside, not lost
    [ "$(readlink "$2")" = "$1" ] && return
    if [ -e "$2" ] && [ ! -L "$2" ]; then mv "$2" "$2.devshell-bak.$(date +%s)"; fi
    ln -sfn "$1" "$2"
}
# Everything under dev's home and the workspace's dirs is made by dev itself (init_as_dev):
# done as root, mkdir/install/ln would follow a symlink dev planted there and change the
# owner or mode of whatever it points to, a host-bound directory included.
init_ai() {
    [ -n "$CACHE" ] || return 0
    [ -d "$DEV_HOME/.claude/projects" ] || mkdir -p "$DEV_HOME/.claude/projects"
    link "$CACHE/ai/skills" "$DEV_HOME/.claude/skills"
    if [ -e "$CACHE/ai/settings.json" ]; then
        link "$CACHE/ai/settings.json" "$DEV_HOME/.claude/settings.json"
    fi
    local name project
    for name in $START_DIRS; do
        memory_link "$name"
        project=${REPLY%/memory}
        [ -d "$project" ] || mkdir -p "$project"
        link "$MEMORY" "$project/memory"
    done
}
verify_ai() {
    [ -n "$CACHE" ] || return 0
    if [ "$AI_CONFIG" = rw ]; then
        dev_can_write "$CACHE/ai/skills" || fail cache-writable "$CACHE/ai/skills is not writable by dev"
    fi
    if [ ! -d "$MEMORY" ]; then
        fail memory-dir "$MEMORY is missing"
    else
        dev_can_write "$MEMORY" || fail memory-dir "$MEMORY is not writable by dev"
    fi
    if [ "$AI_CONFIG" = ro ]; then  # a read-only bind: not even root inside may write it
        [ ! -w "$CACHE/ai" ] && [ ! -w "$CACHE/ai/skills" ] \
            || fail ai-config-ro "$CACHE/ai (skills, settings.json) is not a read-only bind"
    fi
    links_to "$DEV_HOME/.claude/skills" "$CACHE/ai/skills" \
        || fail skills-link "~/.claude/skills does not resolve to $CACHE/ai/skills"
    if [ -e "$CACHE/ai/settings.json" ]; then
        links_to "$DEV_HOME/.claude/settings.json" "$CACHE/ai/settings.json" \
            || fail settings-link "~/.claude/settings.json does not resolve to $CACHE/ai/settings.json"
    fi
    local name
    for name in $START_DIRS; do
        memory_link "$name"
        links_to "$REPLY" "$MEMORY" || fail "memory-link:$name" "$REPLY does not resolve to $MEMORY"
    done
}

# --- egress (--network allow): the only way out is the proxy. The launcher made the network
# (internal, no host address) and checks from the host that the devshell is on it alone; here,
# at every entry: the proxy answers, and IPv6 is off. apt reads its proxy from its own
# configuration (sudo drops http_proxy from the environment). ---
init_egress() {
    [ -n "$PROXY" ] && [ "$PROFILE" != locked ] && [ -d /etc/apt/apt.conf.d ] || return 0
    local line="Acquire::http::Proxy \"http://$PROXY\"; Acquire::https::Proxy \"http://$PROXY\";"
    [ "$(cat "$APT_PROXY_CONF" 2>/dev/null)" = "$line" ] || echo "$line" > "$APT_PROXY_CONF"
}
proxy_answers() {  # a connect (bash's /dev/tcp: no fork); squid takes a moment after its start
    # Bounded in time, not in tries: a connect to a stopped proxy's address waits for ARP to
    # give up (seconds each), and fifty of those kept a failing session waiting a minute.
    local fd deadline=$((SECONDS + PROXY_WAIT_SECONDS))
    while :; do
        if { exec {fd}<>"/dev/tcp/${PROXY%:*}/${PROXY##*:}"; } 2>/dev/null; then
            exec {fd}>&-
            return 0
        fi
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}
verify_egress() {
    [ -n "$PROXY" ] || return 0
    proxy_answers || fail egress-proxy "the egress proxy $PROXY does not answer: nothing gets out (launch again to restart it)"
    local off=1
    { read -r off </proc/sys/net/ipv6/conf/all/disable_ipv6; } 2>/dev/null
    [ "$off" = 1 ] || fail egress-ipv6 "IPv6 is on: it would bypass the egress proxy"
    [ "$PROFILE" = locked ] || [ ! -d /etc/apt/apt.conf.d ] || [ -s "$APT_PROXY_CONF" ] \
        || fail egress-apt "$APT_PROXY_CONF is missing: apt would not use the egress proxy"
}

# Root's part, then dev's part as dev: dev's part cannot change anything dev could not.
init_all() {
    init_group && init_user && init_sudoers && init_checkout_trust && init_workspace && init_egress || return
    setpriv --reuid="$DEV_UID" --regid="$DEV_GID" --init-groups -- "$0" --as-dev-init
}
init_as_dev() { cd / && init_workdirs && init_home_in_volume && init_ai; }
# The locked image: everything of init that writes the root filesystem, done once in a
# writable container and committed (the engine does that), so that a read-only root needs no
# write. The cell's setup runs here too, under the default runtime, where the network is.
bake() {
    init_group && init_user && init_sudoers && init_checkout_trust && init_home_link || return
    [ ! -x "$SETUP" ] || "$SETUP" || { echo "devshell-init: the cell's setup script failed" >&2; return 1; }
}
verify_all() { verify_group; verify_user; verify_sudoers; verify_seccomp; verify_patches; verify_workspace; verify_ai; verify_egress; }

binds_verified() {
    FAILURES=0
    local -a targets=()
    local pair
    for pair in $BIND_IDS; do bind_target "${pair%%=*}"; targets+=("$REPLY"); done
    [ ${#targets[@]} = 0 ] || load_facts "${targets[@]}"
    verify_binds
    return "$FAILURES"
}

verify() {
    FAILURES=0
    local -a paths=("$DEV_HOME" "$PATCHES" "$CHECKOUT" "$WORKSPACE" "$SUDOERS" ${HOME_IN_VOLUME:+"$HOME_IN_VOLUME"}) name pair
    if [ -n "$CACHE" ]; then
        paths+=("$DEV_HOME/.claude/skills" "$DEV_HOME/.claude/settings.json" "$CACHE" "$CACHE/ai"
            "$CACHE/ai/skills" "$CACHE/ai/memory" "$CACHE/ai/memory/$AI_REPO" "$MEMORY")
        for name in $START_DIRS; do memory_link "$name"; paths+=("$REPLY"); done
    fi
    for pair in $BIND_IDS; do bind_target "${pair%%=*}"; paths+=("$REPLY"); done
    load_facts "${paths[@]}"
    verify_binds
    verify_all
    return "$FAILURES"
}

# Run the session's program as dev (or root), after the state is proven.
enter() {
    local as_root=$1 has_script=$2 script=$3 script_id=$4
    local -a run
    if [ "$as_root" = yes ]; then
        export HOME=/root USER=root LOGNAME=root
        run=()
    else
        export HOME=$DEV_HOME USER=$DEV LOGNAME=$DEV SHELL=/bin/bash
        run=(setpriv --reuid="$DEV_UID" --regid="$DEV_GID" --init-groups)
        # locked: the session keeps no capability, not even in its bounding set, so nothing it
        # runs can hold one; no-new-privileges holds container-wide already, and once more here.
        # (Ambient ones go with the change from uid 0; gVisor cannot even name them.)
        [ "$PROFILE" != locked ] || run+=(--bounding-set=-all --inh-caps=-all --no-new-privs)
        run+=(--)
    fi
    if [ "$has_script" = no ]; then
        exec ${run[@]+"${run[@]}"} /bin/bash -l
    fi
    # Scripts are kept by content hash, root's and read-only to dev, so a script run again (CI,
    # benchmarks) is usually not written again. A kept copy runs only after its bytes were
    # compared with the ones this run brought: a stale or swapped copy is replaced, never run.
    # (Root inside could still swap it after the comparison: under passwordless sudo this
    # guards against mistakes and non-root agents, like --verify.)
    # Compared with builtins (no fork on the warm path); $(<f) drops trailing newlines, so the
    # script's are dropped too: a copy that differs only there runs the same program.
    local dir=$STATE/scripts file=$STATE/scripts/$script_id kept= want=$script
    if [ "$has_script" = base64 ]; then
        # Bytes that are not UTF-8 would not survive the docker CLI (it sends arguments as
        # JSON), so such a script comes in base64, and is always written anew (rare).
        [ -d "$dir" ] || install -d -m 0755 "$dir"
        printf %s "$script" | base64 -d >"$file.$$" && chmod 0755 "$file.$$" && mv -f "$file.$$" "$file" || exit 86
        exec ${run[@]+"${run[@]}"} "$file"
    fi
    while [ "${want%$'\n'}" != "$want" ]; do want=${want%$'\n'}; done
    [ -L "$file" ] || [ ! -f "$file" ] || { kept=$(<"$file"); } 2>/dev/null  # NULs: a swap
    if [ -z "$kept" ] || [ "$kept" != "$want" ]; then
        [ -d "$dir" ] || install -d -m 0755 "$dir"
        printf %s "$script" >"$file.$$" && chmod 0755 "$file.$$" && mv -f "$file.$$" "$file" || exit 86
    fi
    exec ${run[@]+"${run[@]}"} "$file"
}

# converged HASH: init ran for HASH and its promises still hold (the warm path: no fork).
converged() {
    local hash=$1 done=
    { read -r done <"$STATE/spec-hash"; } 2>/dev/null
    [ "$done" = "$hash" ] && verify >/dev/null
}

session() {
    local hash=$1 as_root=$2 has_script=$3 script=$4 script_id=$5 session_id=$6
    [ -d "$STATE/sessions" ] || mkdir -p "$STATE/sessions"
    # This exec's pid leads its session: recorded so that `--stop` finds what it starts. A
    # session that ends on its own leaves its record; they are swept now and then (a glob is
    # a builtin, so the warm path pays a fork only when there is something to sweep).
    local -a records=("$STATE"/sessions/*)
    [ ${#records[@]} -le 64 ] || sweep_sessions "${records[@]}"
    if [ -n "$session_id" ]; then
        echo $$ >"$STATE/sessions/$session_id"
        # A stop that came before the record was there left its mark instead (record, then
        # look for the mark; the stop marks, then reads the record: one of them sees the other).
        [ ! -e "$STATE/sessions/$session_id.stopped" ] || exit 143
    fi
    if ! converged "$hash"; then
        # One converging entry at a time: concurrent first entries would run useradd and
        # friends at once. The lock goes with this process (a killed entry cannot leave it
        # held), and is let go before the session starts, which would otherwise inherit it.
        exec 9>>"$STATE/lock"
        if ! flock -w 120 9; then
            echo "devshell-init: another entry has been converging for 120 s" >&2
            exit 86
        fi
        converged "$hash" || converge "$hash"
        exec 9>&-
    fi
    [ ! -e "$STATE/failure" ] || rm -f "$STATE/failure"
    # Its mtime is the last session `devshell status` shows; a builtin, so no fork here.
    { : >"$STATE/last-session"; } 2>/dev/null
    enter "$as_root" "$has_script" "$script" "$script_id"
}

converge() {
    local hash=$1 report
    rm -f "$STATE/spec-hash"
    if ! report=$(binds_verified); then  # before init acts on any mount
        printf '%s\n' "$report" > "$STATE/failure"
        printf 'devshell-init: a mount is not the directory the launcher checked:\n%s\n' "$report" >&2
        exit 86
    fi
    init_all >"$STATE/init.log" 2>&1
    if [ "$PROFILE" != locked ] && [ -x "$SETUP" ] && [ "$(cat "$STATE/setup-hash" 2>/dev/null)" != "$hash" ]; then
        if ! "$SETUP" >>"$STATE/init.log" 2>&1; then
            echo "setup script failed; see $STATE/init.log" > "$STATE/failure"
            echo "devshell-init: cell setup script failed (log: $STATE/init.log)" >&2
            exit 86
        fi
        echo "$hash" > "$STATE/setup-hash"
    fi
    if ! report=$(verify); then
        printf '%s\n' "$report" > "$STATE/failure"
        printf 'devshell-init: verify failed after init:\n%s\n' "$report" >&2
        exit 86
    fi
    echo "$hash" > "$STATE/spec-hash"
}

# sweep_sessions RECORD...: remove the records of sessions whose leader is gone.
sweep_sessions() {
    local record pid
    local -a stale=()
    for record in "$@"; do
        pid=
        { read -r pid <"$record"; } 2>/dev/null
        [ -n "$pid" ] && [ -d "/proc/$pid" ] || stale+=("$record")
    done
    [ ${#stale[@]} = 0 ] || rm -f "${stale[@]}"
}

# stop_session ID SIG: the host's launcher was interrupted; what it started must not run on.
# Each `docker exec` is a session leader (runc calls setsid), and the entry recorded its pid
# under ID: its session's members, and their descendants (a daemon that left the session keeps
# its parent chain until that parent dies), get SIG, then KILL if they are still there after 2 s.
# /proc/PID/stat, not environ: root inside lacks CAP_SYS_PTRACE, so dev's environ is not readable.
stop_session() {
    local id=$1 sig=$2 leader= stat pid rest ppid pgid sid n added=yes
    [ -d "$STATE/sessions" ] || mkdir -p "$STATE/sessions"
    : >"$STATE/sessions/$id.stopped"
    { read -r leader <"$STATE/sessions/$id"; } 2>/dev/null
    rm -f "$STATE/sessions/$id"
    case $leader in '' | *[!0-9]*) return 0 ;; esac
    local -A member=([$leader]=1) parent=()
    for stat in /proc/[0-9]*/stat; do
        { read -r rest <"$stat"; } 2>/dev/null || continue
        pid=${rest%% *} rest=${rest##*) }  # the name may hold spaces and ')': cut at the last
        read -r _ ppid pgid sid _ <<<"$rest"
        parent[$pid]=$ppid
        [ "$sid" != "$leader" ] && [ "$pgid" != "$leader" ] || member[$pid]=1
    done
    while [ $added = yes ]; do  # descendants, to a fixed point
        added=no
        for pid in "${!parent[@]}"; do
            [ -z "${member[$pid]:-}" ] && [ -n "${member[${parent[$pid]}]:-}" ] && { member[$pid]=1; added=yes; }
        done
    done
    kill -s "$sig" "${!member[@]}" 2>/dev/null
    for n in 1 2 3 4 5 6 7 8 9 10; do
        for pid in "${!member[@]}"; do [ -d "/proc/$pid" ] && break; pid=; done
        [ -n "$pid" ] || return 0
        sleep 0.2
    done
    kill -s KILL "${!member[@]}" 2>/dev/null
    return 0
}

main() {
    case "${1:-}" in
        "") binds_verified >&2 || return 86; init_all ;;  # never init over a wrong mount
        --as-dev-init) [ "$(id -u)" = "$DEV_UID" ] || { echo "devshell-init: --as-dev-init is dev's" >&2; return 2; }
            HOME=$DEV_HOME init_as_dev ;;
        --verify) ensure_filtered "$@"; verify ;;
        --status) [ ! -e "$STATE/failure" ] || { cat "$STATE/failure"; return 1; } ;;
        --idle) exec sleep infinity ;;
        --bake) bake ;;
        --stop)
            case ${2:-}:${3:-} in
                *[!0-9a-f:A-Z]* | :* | *:) echo "devshell-init: --stop needs a hex session id and a signal name" >&2; return 2 ;;
            esac
            stop_session "$2" "$3" ;;
        --session)
            ensure_filtered "$@"
            local hash=${2:?--session needs the spec hash} as_root=no has_script=no script= script_id= session_id=
            shift 2
            while [ $# -gt 0 ]; do
                case $1 in
                    --as-root) as_root=yes; shift ;;
                    --session-id) session_id=${2?--session-id needs an id}; shift 2 ;;
                    --script) has_script=yes script=${2?--script needs content}; shift 2 ;;
                    --script-base64) has_script=base64 script=${2?--script-base64 needs content}; shift 2 ;;
                    --script-id) script_id=${2?--script-id needs the content hash}; shift 2 ;;
                    *) echo "devshell-init: unknown argument $1" >&2; return 2 ;;
                esac
            done
            case $has_script:$script_id in
                no:*) ;;
                *:*[!0-9a-f]* | *:) echo "devshell-init: --script needs a hex --script-id" >&2; return 2 ;;
            esac
            case $session_id in *[!0-9a-f]*) echo "devshell-init: --session-id is hex" >&2; return 2 ;; esac
            session "$hash" "$as_root" "$has_script" "$script" "$script_id" "$session_id"
            ;;
        *) echo "usage: devshell-init [--verify | --status | --idle | --stop ID SIG | --session HASH [--session-id ID] [--as-root] [--script CONTENT | --script-base64 B64] [--script-id SHA]]" >&2; return 2 ;;
    esac
}

main "$@"
